"""The pipelining RESP connection (resolver/resp.py) against a real Valkey."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cityid.valkey import EmbeddedValkey
from resolver.resp import RespPipe, supports


def test_which_servers_it_talks_to() -> None:
    assert supports("redis://:pw@127.0.0.1:6379/0", cluster=False)
    assert supports("unix:///run/valkey.sock?db=1", cluster=False)
    assert not supports("rediss://127.0.0.1:6380/0", cluster=False)  # TLS: redis-py's
    assert not supports("redis://127.0.0.1:7000/0", cluster=True)  # a cluster routes


async def test_batches_in_flight_get_their_own_replies_in_order(redis_db: str) -> None:
    pipe = RespPipe(redis_db)
    try:
        await pipe.execute([("SET", f"k{i}", i) for i in range(100)])
        batches = [[("GET", f"k{i}"), ("INCR", f"n{j}")] for j in range(50) for i in (j, j + 50)]
        got = await asyncio.gather(*(pipe.execute(b) for b in batches))
        for b, replies in zip(batches, got, strict=True):
            assert replies[0] == str(b[0][1])[1:].encode()
            assert isinstance(replies[1], int)
        # An error reply raises, after its batch is read: the connection stays in step.
        with pytest.raises(ResponseError):
            await pipe.execute([("SET", "s", "x"), ("INCR", "s"), ("GET", "s")])
        assert await pipe.execute([("GET", "s")]) == [b"x"]
        assert await pipe.execute([]) == []
    finally:
        await pipe.close()


async def test_auth_from_the_url_and_a_wrong_password(redis_db: str) -> None:
    pipe = RespPipe(redis_db)  # the session's server requires the password in its URL
    try:
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.close()
    scheme, _, rest = redis_db.partition("://")
    host = rest.rpartition("@")[2]
    wrong = RespPipe(f"{scheme}://:not-the-password@{host}")
    try:
        with pytest.raises(RedisConnectionError, match="refused"):
            await wrong.execute([("PING",)])
    finally:
        await wrong.close()


async def test_a_reply_that_never_comes_times_out_and_the_next_batch_reconnects(
    redis_db: str,
) -> None:
    pipe = RespPipe(redis_db, timeout=0.3)
    try:
        with pytest.raises(RedisTimeoutError):
            await pipe.execute([("BLPOP", "nothing-here", 5)])  # blocks 5 s server side
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.close()


async def test_a_server_that_dies_fails_the_batch_and_one_that_returns_is_used() -> None:
    server = EmbeddedValkey()
    server.start()
    port = server.port
    pipe = RespPipe(server.url, timeout=2.0)
    try:
        assert await pipe.execute([("SET", "a", 1)]) == [b"OK"]
        server.stop()
        with pytest.raises(RedisConnectionError):
            await pipe.execute([("PING",)])
        server = EmbeddedValkey(port=port)
        server.start()
        assert await pipe.execute([("PING",)]) == [b"PONG"]
    finally:
        await pipe.close()
        server.stop()
