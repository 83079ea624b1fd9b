"""``cityid up`` supervises its Valkey: ``kill -9`` it and everything comes back by itself.

A real ``cityid up`` on free loopback ports (tests/test_up.py's helpers), its real
valkey-server child killed with SIGKILL, and real HTTP/DNS clients: ids that resolved
before resolve again (read from the reloaded append-only file, not from a cache), and
a mint acknowledged after the kill becomes resolvable, with no restart of ``cityid up``.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import redis
from test_up import CLI, start, stop, write_config

from cityid.identifiers import mint_suffix, parse_identifier

CITY = "MA.156.1301"
#: Seconds until every check passes: the restart backoff (0.25 s, doubling for a server that
#: fails again within a minute, so up to 30 s), the AOF reload, the resolver's reconnects
#: (sync backs off up to 2 s), one sync poll.
RECOVERY_BOUND = 30.0


def valkey_child(pid: int) -> int | None:
    """The pid of the valkey-server that process ``pid`` started, if one runs."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                stat = Path(f"/proc/{child}/stat").read_text()
            except OSError:
                continue  # it just ended
            # "pid (comm) state ...": a killed child nobody reaped is a zombie, not a server.
            comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1]
            if comm == "valkey-server" and state.split()[0] != "Z":
                return int(child)
    return None


def kill_and_hold_port(up_pid: int, port: int) -> tuple[int, socket.socket]:
    """SIGKILL cityid up's valkey-server and bind its port before the supervisor restarts
    it (it waits 0.25 s): returns the killed pid and the socket holding the port."""
    for _ in range(5):  # should the restart win the race, kill the new server too
        pid = valkey_child(up_pid)
        assert pid is not None, "cityid up runs no valkey-server child"
        os.kill(pid, signal.SIGKILL)
        squatter = socket.socket()
        # As a server binds: the killed server's connections linger in TIME_WAIT.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                squatter.bind(("127.0.0.1", port))
                squatter.listen()
                return pid, squatter
            except OSError:
                time.sleep(0.005)  # the dying server still holds it, or its successor does
        squatter.close()
    raise AssertionError(f"could not hold port {port} after killing valkey-server")


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("Location", "")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def asset(dept: str, n: int) -> str:
    """A demo asset of cityid up's first start (``assets`` spread over 7 departments)."""
    return f"{CITY}.{dept}/{mint_suffix('A', n, 7)}"


def test_killed_valkey_is_restarted_and_the_resolver_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ports = write_config(data, assets=70)  # 10 per department
    proc, ready = start(data, tmp_path)
    try:
        # The ready file names the server, never its password (kept 0600 beside the AOF).
        port = int(ready["redis"].rsplit(":", 1)[1].split("/")[0])
        secret = data / "valkey" / "password"
        assert secret.stat().st_mode & 0o777 == 0o600
        password = secret.read_text().strip()
        assert password and password not in json.dumps(ready) and ":***@" in ready["redis"]
        stranger = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
        try:
            stranger.set("i:x", "y")
            raise AssertionError("an unauthenticated client wrote to the resolver's Valkey")
        except redis.AuthenticationError:
            pass
        finally:
            stranger.close()
        owner = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        epoch = owner.get("meta:epoch")
        owner.close()
        assert epoch

        seen = [asset("01", n) for n in range(5)]
        for ident in seen:  # resolved (and cached) before the kill
            status, location = http_get(ports["http"], f"/{ident}")
            assert status == 302 and location.endswith(ident.split("/")[1]), (ident, status)
        # Never asked before: only a server holding the data can answer them.
        unseen = [
            [asset(d, n) for d in ("03", "05", "07") for n in range(k, k + 2)] for k in (0, 2)
        ]

        def resolves(idents: list[str]) -> bool:
            for ident in idents:
                status, location = http_get(ports["http"], f"/{ident}")
                if status != 302 or not location.endswith(ident.split("/")[1]):
                    return False
            return True

        def wait(check: Callable[[], bool], since: float, what: str) -> float:
            while not check():
                assert proc.poll() is None, "cityid up died"
                if time.monotonic() - since > RECOVERY_BOUND:
                    raise AssertionError(f"{what}: not recovered within {RECOVERY_BOUND:.0f} s; "
                                         f"valkey pid {valkey_child(proc.pid)}")  # fmt: skip
                time.sleep(0.2)
            return time.monotonic() - since

        # 1. kill -9: a new server on the same port, with the same data, at once.
        old = valkey_child(proc.pid)
        assert old is not None, "cityid up runs no valkey-server child"
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        took = wait(lambda: valkey_child(proc.pid) not in (None, old)
                    and resolves(seen + unseen[0]), killed, "after kill -9")  # fmt: skip
        print(f"resolving again {took:.1f} s after kill -9 of valkey-server")

        # 2. kill -9 and hold the port, so that the restarts fail for a while: a mint goes
        # in meanwhile, and becomes resolvable once the server is back.
        old, squatter = kill_and_hold_port(proc.pid, port)
        try:
            # The registrar acknowledges a mint while the cache is down (it needs none)...
            after = f"{CITY}.02/AFTER-KILL"
            r = subprocess.run(
                [*CLI, "id", "mint", after, "--key", str(data / "keys" / "dept-02.key"),
                 "--registrar", ready["city"], "--url", "https://after.example/kill"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            # ...and the resolver says "not now" for what it cannot read, never "no such id".
            assert http_get(ports["http"], f"/{unseen[1][0]}")[0] == 503
            assert valkey_child(proc.pid) is None
        finally:
            squatter.close()
        freed = time.monotonic()
        minted = (302, "https://after.example/kill")
        took = wait(lambda: resolves(seen + unseen[1]) and http_get(ports["http"], f"/{after}")
                    == minted, freed, "after the port was freed")  # fmt: skip
        print(f"the mint made while Valkey was down resolves {took:.1f} s after its port is free")

        # Same port, same password: the data came back from the append-only file (a
        # rebuild from the logs would have started a new epoch).
        owner = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
        assert owner.get("meta:epoch") == epoch
        owner.close()
        # And DNS answers from the restarted server too.
        name = parse_identifier(unseen[1][-1]).dns_name("cityid.test")
        answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1",
                               port=ports["dns"], timeout=5)  # fmt: skip
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    finally:
        out = stop(proc)
    assert "killed by SIGKILL; restarting it on 127.0.0.1:" in out
    assert f"could not be restarted: port {port} on 127.0.0.1 is taken" in out
    assert "valkey-server restarted on" in out and "append-only file" in out
    assert password not in out  # the banner shows the URL without it
    assert f"(password in {secret})" in out
