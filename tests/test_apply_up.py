"""Onboarding in ``cityid up`` (free loopback ports): the demo's pending applications, the
banner's apply URLs, and a city and a department approved, then minting, then resolving
over HTTP and DNS within a second of the approval."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from test_up import CLI, start, stop, write_config

from cityid.identifiers import parse_identifier

pytestmark = pytest.mark.timeout(240)
SYNC_LAG = 1.0  # seconds from the approval's acknowledgment to the resolver's answer


def run(*args: str) -> str:
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def dns_rcode(name: str, port: int) -> tuple[int, bytes]:
    answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=port, timeout=5)
    txt = b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)
    return answer.rcode(), txt


def approve_then_resolve(
    node: str, key: Path, registrar: str, resolver: str, dns_port: int
) -> float:
    """Approve ``node``'s application; how long until the resolver answers for it over HTTP
    and DNS."""
    url = f"{resolver}/api/handles/0.NA/{node}"
    name = parse_identifier(f"0.NA/{node}").dns_name("cityid.test")
    assert http_status(url) == 404 and dns_rcode(name, dns_port)[0] == dns.rcode.NXDOMAIN
    out = run("applications", "approve", node, "--key", str(key), "--registrar", registrar)
    t0 = time.monotonic()
    assert out.startswith("approved"), out
    while http_status(url) != 200 or dns_rcode(name, dns_port)[0] != dns.rcode.NOERROR:
        assert time.monotonic() - t0 < 10, f"{node} not served 10 s after its approval"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_up_onboarding(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = write_config(data, assets=50)
    resolver = f"http://127.0.0.1:{ports['http']}"
    proc, ready = start(data, tmp_path)
    lags = {}
    try:
        keys = data / "keys"
        root, city = ready["root"], ready["city"]
        listed = run("applications", "list", "--status", "pending", "--key",
                     str(keys / "root-admin.key"), "--registrar", root)  # fmt: skip
        assert "MA.156.1306" in listed and "保定市" in listed and "MA.156.1302" in listed
        lags["city"] = approve_then_resolve(
            "MA.156.1306", keys / "root-admin.key", root, resolver, ports["dns"]
        )
        lags["department"] = approve_then_resolve(
            "MA.156.1301.08", keys / "city-admin.key", city, resolver, ports["dns"]
        )
        # Each applicant mints with its own key; the resolver serves it over HTTP and DNS.
        for ident, key, registrar in (
            ("MA.156.1306/PARK-1", keys / "cities" / "1306.key", root),
            ("MA.156.1301.08/PARK-2", keys / "dept-08.key", city),
        ):
            run("id", "mint", ident, "--key", str(key), "--registrar", registrar,
                "--url", f"https://parks.example/{ident[-1]}")  # fmt: skip
            t0 = time.monotonic()
            while http_status(f"{resolver}/api/handles/{ident}") != 200:
                assert time.monotonic() - t0 < 10, ident
                time.sleep(0.02)
            rcode, txt = dns_rcode(parse_identifier(ident).dns_name("cityid.test"), ports["dns"])
            assert rcode == dns.rcode.NOERROR and b"https://parks.example/" in txt
    finally:
        out = stop(proc)
    print(f"approval to resolvable (HTTP and DNS): {lags}")
    assert f"{root}/apply" in out and f"{city}/apply" in out
    assert "pending applications for MA.156.1306, MA.156.1302, MA.156.1301.08" in out
    assert all(lag < SYNC_LAG for lag in lags.values()), lags
