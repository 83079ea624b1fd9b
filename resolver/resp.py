"""A pipelining RESP connection for the two paths where redis-py's command objects cost
more than the commands: sync's bulk writes and the resolver's cache misses.

hiredis (redis-py's own C parser) packs every command and parses every reply; this
module only frames them on one asyncio connection. Commands are sent as soon as
they are given and replies are matched to callers in order, so several batches may
be in flight at once on one socket (redis-py's pipelines wait for each other).

Plain servers only (``redis://``, ``unix://``, with AUTH and SELECT from the URL):
:func:`supports` says when to use it; for TLS or a cluster the callers keep
redis-py, which routes and encrypts. A lost connection fails the batches in
flight with :class:`redis.exceptions.ConnectionError` (one of the store's
``REDIS_ERRORS``) and the next batch reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: One command: its name and arguments (str, bytes or int), as hiredis packs them.
Command = Sequence[str | bytes | int]

_READ = 1 << 16


def supports(url: str, cluster: bool) -> bool:
    """Whether ``url`` is a server this module can talk to (plain TCP or a unix socket)."""
    return not cluster and url.split("://", 1)[0] in ("redis", "unix")


async def pipeline(raw: RespPipe | None, client: Any, commands: Sequence[Command]) -> list[Any]:
    """Run ``commands`` as one pipeline (not a transaction); their replies in order.

    Through ``raw`` where the server allows it (see :func:`supports`), else through
    redis-py's ``client`` (a cluster client routes each command to its slot).
    """
    if not commands:
        return []
    if raw is not None:
        return await raw.execute(commands)
    pipe = client.pipeline(transaction=False)
    for c in commands:
        pipe.execute_command(*c)
    return list(await pipe.execute())


class RespPipe:
    """One connection; :meth:`execute` sends a batch of commands and returns their replies."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._opts: dict[str, Any] = parse_url(url)
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Lock | None = None
        # Batches sent and not yet answered, oldest first: (reply count, future).
        self._waiting: collections.deque[tuple[int, asyncio.Future[list[Any]]]] = (
            collections.deque()
        )
        self._pump: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` and return their replies in order; an error reply raises
        :class:`redis.exceptions.ResponseError` (after every reply of the batch is read)."""
        if not commands:
            return []
        writer = await self._connected()
        assert self._loop is not None
        # The loop as kept, and a timer rather than wait_for: on Python 3.11 every
        # get_running_loop() is a getpid() system call, and this runs for every batch.
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._waiting.append((len(commands), fut))
        pack = hiredis.pack_command
        writer.write(b"".join([pack(tuple(c)) for c in commands]))
        timer = self._loop.call_later(self._timeout + 0.001 * len(commands), self._expire, fut)
        try:
            replies = await fut
        finally:
            timer.cancel()
        for r in replies:
            if isinstance(r, hiredis.ReplyError):
                raise ResponseError(str(r))
        return replies

    def _expire(self, fut: asyncio.Future[list[Any]]) -> None:
        if not fut.done():  # the connection is no good: every batch on it fails
            self._drop(RedisTimeoutError(f"no reply within {self._timeout:.1f} s"))

    async def close(self) -> None:
        self._closed = True
        self._drop(RedisConnectionError("connection closed"))

    # -- the connection ---------------------------------------------------------------------

    async def _connected(self) -> asyncio.StreamWriter:
        if self._writer is not None and not self._writer.is_closing():
            return self._writer
        if self._closed:
            raise RedisConnectionError("connection closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                await self._open()
        assert self._writer is not None
        return self._writer

    async def _open(self) -> None:
        o = self._opts
        self._loop = asyncio.get_running_loop()
        try:
            if "path" in o:
                conn = asyncio.open_unix_connection(o["path"], limit=_READ)
            else:
                conn = asyncio.open_connection(o.get("host", "localhost"), o.get("port", 6379),
                                               limit=_READ)  # fmt: skip
            reader, writer = await asyncio.wait_for(conn, self._timeout)
        except (OSError, TimeoutError) as e:
            raise RedisConnectionError(f"cannot connect to Redis: {e}") from e
        # The handshake, answered before anything else is sent.
        hello: list[Command] = []
        if o.get("password"):
            user = o.get("username")
            hello.append(("AUTH", user, o["password"]) if user else ("AUTH", o["password"]))
        if o.get("db"):
            hello.append(("SELECT", int(o["db"])))
        self._reader, self._writer = reader, writer
        self._pump = self._loop.create_task(self._read(reader))
        if hello:
            fut: asyncio.Future[list[Any]] = self._loop.create_future()
            self._waiting.append((len(hello), fut))
            writer.write(b"".join(hiredis.pack_command(tuple(c)) for c in hello))
            try:
                replies = await asyncio.wait_for(asyncio.shield(fut), self._timeout)
            except TimeoutError as e:
                self._drop(RedisTimeoutError("no answer to AUTH/SELECT"))
                raise RedisTimeoutError("no answer to AUTH/SELECT") from e
            bad = [r for r in replies if isinstance(r, hiredis.ReplyError)]
            if bad:
                self._drop(RedisConnectionError(str(bad[0])))
                raise RedisConnectionError(f"Redis refused the connection: {bad[0]}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        waiting = self._waiting
        got: list[Any] = []
        try:
            while True:
                data = await reader.read(_READ)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                parser.feed(data)
                while waiting:
                    reply = parser.gets()
                    if reply is False:
                        break
                    got.append(reply)
                    count, fut = waiting[0]
                    if len(got) == count:
                        waiting.popleft()
                        if not fut.done():
                            fut.set_result(got)
                        got = []
        except asyncio.CancelledError:
            raise
        except (OSError, RedisConnectionError, hiredis.ProtocolError) as e:
            err = e if isinstance(e, RedisConnectionError) else RedisConnectionError(str(e))
            self._drop(err, reading=False)

    def _drop(self, err: Exception, *, reading: bool = True) -> None:
        """Close the connection and fail every batch in flight with ``err``."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
        if reading and self._pump is not None:
            self._pump.cancel()
        self._pump = None
        while self._waiting:
            _, fut = self._waiting.popleft()
            if not fut.done():
                fut.set_exception(err)
                with contextlib.suppress(Exception):
                    fut.exception()  # retrieved: its caller re-raises it


__all__ = ["Command", "RespPipe", "supports"]
