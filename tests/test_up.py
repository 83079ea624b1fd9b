"""``cityid up`` as a user meets it: a real process, real ports, Ctrl-C, restart."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from cityid.demo import APPLICANTS
from cityid.identifiers import parse_identifier
from cityid.valkey import free_port

CLI = [sys.executable, "-m", "cityid.cli"]


def write_config(data: Path, assets: int = 300) -> dict[str, int]:
    ports = {name: free_port() for name in ("root", "city", "w1", "w2", "http", "dns")}
    data.mkdir(parents=True, exist_ok=True)
    (data / "cityid.toml").write_text(
        f"""
[root]
listen = "127.0.0.1:{ports["root"]}"
[city]
listen = "127.0.0.1:{ports["city"]}"
[witnesses]
listen = ["127.0.0.1:{ports["w1"]}", "127.0.0.1:{ports["w2"]}"]
quorum = 2
[resolver]
http = "127.0.0.1:{ports["http"]}"
dns = "127.0.0.1:{ports["dns"]}"
[demo]
assets = {assets}
"""
    )
    return ports


def start(data: Path, tmp: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    ready = tmp / f"ready-{time.monotonic_ns()}.json"
    proc = subprocess.Popen(
        [*CLI, "up", "--data", str(data), "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.communicate(timeout=10)[0] if proc.poll() is not None else ""
            proc.kill()
            pytest.fail(f"cityid up did not come up: {out}")
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_up_fresh_then_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = write_config(data, assets=300)
    proc, ready = start(data, tmp_path)
    try:
        sample = ready["sample"]
        # The resolver answers from what sync verified: a redirect over HTTP...
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=10)
        conn.request("GET", f"/{sample}")
        resp = conn.getresponse()
        assert resp.status == 302
        assert resp.getheader("Location", "").endswith(f"/{sample.split('/')[1]}")
        conn.close()
        # ...and TXT records over DNS, plus NXDOMAIN for a name that was never minted.
        name = parse_identifier(sample).dns_name("cityid.test")
        answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1",
                               port=ports["dns"], timeout=5)  # fmt: skip
        txt = b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)
        assert b"URL=https://" in txt
        missing = dns.query.udp(
            dns.message.make_query("zz1." + name.split(".", 1)[1], "TXT"), "127.0.0.1",
            port=ports["dns"], timeout=5,
        )  # fmt: skip
        assert missing.rcode() == dns.rcode.NXDOMAIN and missing.authority
        # Which server answered, as `resolver dns serve` says it (CH TXT id.server).
        ident = dns.query.udp(dns.message.make_query("id.server.", "TXT", rdclass="CH"),
                              "127.0.0.1", port=ports["dns"], timeout=5)  # fmt: skip
        assert ident.answer and b"".join(ident.answer[0][0].strings).endswith(b"/up")
        # DNSSEC: the trust anchor `cityid up` wrote validates its answers, as its banner says.
        assert (data / "keys" / "dnssec.key").stat().st_mode & 0o077 == 0
        if shutil.which("delv"):
            delv = subprocess.run(
                ["delv", "@127.0.0.1", "-p", str(ports["dns"]), "-a",
                 str(data / "dnssec-anchor.conf"), "+root=cityid.test", "TXT", name],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert delv.stdout.startswith("; fully validated"), delv.stdout + delv.stderr
        v = get_json(f"{ready['city']}/api/version/{sample}")
        assert v == {"handle": sample, "version": 1, "exists": True}
        root = get_json(f"{ready['root']}/")
        # one delegation per prefecture-level city but the demo's applicants
        assert root["size"] == 344 - len(APPLICANTS)
        city_cp = urllib.request.urlopen(f"{ready['city']}/log/checkpoint").read().decode()
        assert city_cp.startswith("sjz.cityid.test/log\n")
        # quorum = 2: both witnesses cosigned the published checkpoint
        assert "— witness-1.cityid.test " in city_cp and "— witness-2.cityid.test " in city_cp
        # One scrape shows the HTTP front and what the sync and DNS halves published.
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/metrics").read()
        text = metrics.decode()
        for family in (
            "cityid_resolver_requests_total",
            "cityid_dns_queries_total{instance=",
            "cityid_sync_rebuilds_total{instance=",
            "cityid_sync_leader{instance=",
        ):
            assert family in text, family  # fmt: skip
    finally:
        out = stop(proc)
    assert "cityid is up" in out and "sample identifier" in out and "cityid: stopped" in out
    assert "DNSSEC anchor       cityid.test. IN DS " in out and "delv @127.0.0.1" in out
    assert "█" in out  # the terminal QR code

    # The logs verify offline with the independent audit command.
    for role in ("root", "city"):
        r = subprocess.run(
            [*CLI, "ledger", "verify", str(data / role / "log"),
             "--key", str(data / role / "log.vkey")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("ok: ")

    # A second start reuses everything: no new leaves, same sample.
    proc, ready2 = start(data, tmp_path)
    try:
        assert get_json(f"{ready2['root']}/")["size"] == 344 - len(APPLICANTS)
        assert ready2["sample"] == ready["sample"]
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("taken", "setting"),
    [("root", "[root] listen"), ("http", "[resolver] http"), ("dns", "[resolver] dns")],
)
def test_up_port_in_use(tmp_path: Path, taken: str, setting: str) -> None:
    data = tmp_path / "data"
    ports = write_config(data, assets=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[taken]))
        s.listen()
        r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert r.returncode == 1
    # Which address, which setting to change, in which file: not another command's flag.
    assert f"127.0.0.1:{ports[taken]}" in r.stderr and setting in r.stderr, r.stderr
    assert "cityid.toml" in r.stderr and "--listen" not in r.stderr
    assert "Traceback" not in r.stderr


def test_up_corrupt_config(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cityid.toml").write_text("[root\nlisten = 1")
    r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1
    assert "not valid TOML" in r.stderr and "rule: corrupt-data" in r.stderr
    assert "Traceback" not in r.stderr
    # A misspelt key would silently keep its default: it is refused, with the right one.
    (data / "cityid.toml").write_text('[resolver]\nhtpp = "127.0.0.1:1"\n')
    r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and "rule: bad-config" in r.stderr, r.stderr
    assert "resolver.htpp (did you mean 'http'?" in r.stderr and "Traceback" not in r.stderr
    # A listen address that is not HOST:PORT is named before anything starts.
    (data / "cityid.toml").write_text('[witnesses]\nlisten = ["127.0.0.1:1", "localhost"]\n')
    r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert r.returncode == 1 and "rule: bad-config" in r.stderr, r.stderr
    assert "[witnesses] listen has 'localhost', which is not HOST:PORT" in r.stderr


def test_up_refuses_second_instance(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_config(data, assets=0)
    proc, _ = start(data, tmp_path)
    try:
        r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                           timeout=60)  # fmt: skip
        assert r.returncode == 1
        assert "already running" in r.stderr and "rule: data-in-use" in r.stderr
    finally:
        stop(proc)


@pytest.mark.parametrize(
    ("setting", "expect"),
    [
        ('binary = "/nonexistent/valkey-server"', "cannot run /nonexistent/valkey-server"),
        ('url = "redis://127.0.0.1:1/0"', "127.0.0.1:1"),
        ('url = "not-a-url"', "not-a-url"),
    ],
)
def test_up_missing_valkey_says_what_to_do(tmp_path: Path, setting: str, expect: str) -> None:
    data = tmp_path / "data"
    write_config(data, assets=0)
    with (data / "cityid.toml").open("a") as f:
        f.write(f"[valkey]\n{setting}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                       timeout=120, env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "[rule: " in r.stderr


def test_up_names_what_is_corrupt_in_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_config(data, assets=0)
    proc, _ = start(data, tmp_path)
    stop(proc)
    pristine = tmp_path / "pristine"
    shutil.copytree(data, pristine)

    def up() -> str:
        r = subprocess.run([*CLI, "up", "--data", str(data)], capture_output=True, text=True,
                           timeout=120)  # fmt: skip
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        return r.stderr

    (data / "city" / "log" / "checkpoint").write_text("garbage")
    err = up()
    assert f"the city registrar cannot open its data in {data / 'city'}" in err
    assert "Restore that directory from a backup" in err and "rule: note-format" in err
    assert "listen" not in err  # nothing to do with its address

    shutil.rmtree(data)
    shutil.copytree(pristine, data)
    (data / "keys" / "city-admin.key").write_text("xx")
    err = up()
    assert f"key file {data / 'keys' / 'city-admin.key'}:" in err and "rule: skey-format" in err


def test_up_killed_takes_its_valkey_with_it(tmp_path: Path) -> None:
    """SIGKILL reaches no cleanup code: the kernel must stop the private Valkey (which
    runs in its own session so that Ctrl-C does not stop it before the registrars)."""
    data = tmp_path / "data"
    write_config(data, assets=0)
    proc, ready = start(data, tmp_path)
    port = int(ready["redis"].rsplit(":", 1)[1].split("/")[0])
    proc.kill()
    proc.wait(10)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            break  # nothing listens any more
        assert time.monotonic() < deadline, f"the Valkey on port {port} outlived cityid up"
        time.sleep(0.1)
    # And the data directory starts again at once, with what it held.
    proc, again = start(data, tmp_path)
    stop(proc)
    assert again["sample"] == ready["sample"]


def test_up_rebuilds_a_lost_valkey_before_it_says_ready(tmp_path: Path) -> None:
    """The Valkey directory deleted between two starts: the resolver refills it from the
    logs, and ``cityid up`` says it is up only once every log is loaded, so nothing it
    holds is answered "does not exist" (nor "not ready") after the banner."""
    from cityid.identifiers import mint_suffix

    data = tmp_path / "data"
    ports = write_config(data, assets=3500)  # 500 assets in each of the 7 departments
    proc, _ = start(data, tmp_path)
    stop(proc)
    shutil.rmtree(data / "valkey")
    proc, ready = start(data, tmp_path)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=10)
        for dept in ("01", "04", "07"):
            for n in (0, 499):
                conn.request("GET", f"/MA.156.1301.{dept}/{mint_suffix('A', n, 7)}")
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 302, (dept, n, resp.status)
        conn.request("GET", f"/MA.156.1301.07/{mint_suffix('A', 500, 7)}")  # never minted
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 404
        conn.close()
        name = parse_identifier(ready["sample"]).dns_name("cityid.test")
        answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1",
                               port=ports["dns"], timeout=5)  # fmt: skip
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer
        health = get_json(f"http://127.0.0.1:{ports['http']}/healthz")
        assert health["status"] == "ok" and all(lg["ready"] for lg in health["logs"])
    finally:
        out = stop(proc)
    assert "redis holds no resolver state: rebuilding it from the logs" in out
    assert out.index("loading the logs") < out.index("cityid is up")
