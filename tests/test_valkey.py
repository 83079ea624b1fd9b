"""EmbeddedValkey: a real private server on a free loopback port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cityid.valkey import EmbeddedValkey, ValkeyError, _ping, find_binary


def answers(port: int) -> bool:
    return _ping("127.0.0.1", port, timeout=0.5)


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
    assert server.port is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
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
