"""A lean HTTP/1.1 front for the one request that dominates: ``GET /{id}``.

Scanning a 2D code is a plain ``GET /PREFIX/SUFFIX``; its answer is a 302
already encoded in the cache. This protocol parses only what that answer
depends on (the request line, ``Accept``, ``If-None-Match``, ``Connection``),
looks the identifier up in the cache and writes the stored bytes; a miss goes
through :meth:`Resolver.answer` like any other request. Everything it does not
recognise as that simple case is handed, unread, to aiohttp on the same
connection (the socket's protocol is swapped and the buffered bytes replayed),
so the full application keeps answering every other route, every method, odd
headers, bodies, HTTP/1.0 and malformed requests. A connection never comes
back from aiohttp, which keeps the hand-off trivially correct.

Requests on one connection are answered in order (pipelining): while a miss is
looked up the following requests wait in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from email.utils import formatdate

from cityid.errors import CityIdError

from .cache import Reply, etag_matches
from .http import RECORD_JSON, REDIRECT, STATUSES, Resolver, choose, encode_problem, log

MAX_HEAD = 8190  # aiohttp's own limit: longer heads go to it for a proper 4xx
MAX_BUFFER = 65536  # pause reading a pipelining client beyond this
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle
HEAD_TIMEOUT = 10.0  # seconds to finish sending request headers (slowloris)
_STRIP = b" \t"
_API_HANDLES = b"/api/handles/"
_RESOLVE, _HANDLES = "resolve", "handles"  # metrics routes, as the aiohttp app names them

_date = [0, b""]
_INCOMPLETE = Reply.make(
    400,
    [("Content-Type", "application/json")],
    b'{"message":"the request head ended before its blank line","rule":"http"}',
)


def date_line() -> bytes:
    """``Date: ...\\r\\n`` for the current second (RFC 9110 §6.6.1), built once a second."""
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date[1]  # type: ignore[return-value]


class FastProtocol(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_busy",
        "_closing",
        "_gone",
        "_last",
        "_paused",
        "_started",
        "_task",
        "front",
        "transport",
    )

    def __init__(self, front: FastFront) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._busy = False  # a miss is being looked up: later requests wait
        self._closing = False  # close once the answer in flight is written
        self._gone = False  # handed to aiohttp, or closed
        self._paused = False
        self._last = 0.0
        self._started = 0.0  # when the head now in the buffer began to arrive
        self._task: asyncio.Task[None] | None = None

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._last = self.front.now()
        self.front.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self.front.conns.discard(self)
        if self._task is not None:
            self._task.cancel()

    def eof_received(self) -> bool:
        if self._busy:
            self._closing = True
            return True  # keep the write side open for the answer in flight
        if self._buf and not self._gone and self.transport is not None:
            # Half a request and then EOF: say why rather than hang up silently.
            self._gone = True
            self.transport.write(_INCOMPLETE.wire + date_line() + b"Connection: close\r\n\r\n")
            self.transport.write(_INCOMPLETE.body)
        return False

    def data_received(self, data: bytes) -> None:
        if self._gone:
            return
        self._last = self.front.now()
        if not self._buf:
            self._started = self._last
        self._buf = self._buf + data if self._buf else data
        if self._busy:
            if len(self._buf) > MAX_BUFFER and not self._paused:
                self._paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._process()

    # -- the loop over buffered requests -----------------------------------------------------

    def _process(self) -> None:
        buf = self._buf
        pos = 0
        n = len(buf)
        while pos < n and not self._busy and not self._gone:
            end = buf.find(b"\r\n\r\n", pos, pos + MAX_HEAD + 4)
            if end < 0:
                if n - pos > MAX_HEAD:
                    self._handoff(buf[pos:])  # aiohttp answers the oversized head
                    return
                break
            if not self._one(buf, pos, end):
                return
            pos = end + 4
        self._buf = buf[pos:] if pos < n else b""
        if self._buf:
            self._started = self._last
        if self._paused and not self._busy and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def _one(self, buf: bytes, start: int, end: int) -> bool:
        """Answer the request in ``buf[start:end]``; False if the connection left us."""
        line_end = buf.find(b"\r\n", start, end)
        if line_end < 0:
            line_end = end
        parts = buf[start:line_end].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            self._handoff(buf[start:])
            return False
        method, target = parts[0], parts[1]
        if method == b"GET":
            head = False
        elif method == b"HEAD":
            head = True
        else:
            self._handoff(buf[start:])
            return False
        # Every identifier has a slash after its prefix; the application's own pages
        # (/, /explorer, /scan, /openapi.json, ...) are single segments and never do.
        if target[:1] != b"/" or b"?" in target or b"%" in target or target.find(b"/", 1) < 0:
            self._handoff(buf[start:])
            return False
        if target.startswith(b"/api/"):
            if not target.startswith(_API_HANDLES):
                self._handoff(buf[start:])
                return False
            # A plain Handle API read is the cached JSON record, whatever Accept says.
            route, raw = _HANDLES, target[len(_API_HANDLES) :]
        else:
            route, raw = _RESOLVE, target[1:]
        accept = inm = None
        close = host = False
        if line_end < end:
            for h in buf[line_end + 2 : end].split(b"\r\n"):
                name, sep, value = h.partition(b":")
                if not sep or not name or name[-1:] in _STRIP or name[:1] in _STRIP:
                    self._handoff(buf[start:])  # obs-fold or a malformed field
                    return False
                name = name.lower()
                if name == b"accept":
                    accept = value.strip(_STRIP)
                elif name == b"if-none-match":
                    inm = value.strip(_STRIP)
                elif name == b"host":
                    host = True
                elif name == b"connection":
                    close = b"close" in value.lower()
                elif name in (b"transfer-encoding", b"upgrade", b"expect") or (
                    name == b"content-length" and value.strip(_STRIP) != b"0"
                ):
                    self._handoff(buf[start:])  # a body or a protocol switch
                    return False
        if not host:
            self._handoff(buf[start:])  # RFC 9112 §3.2: HTTP/1.1 without Host is a 400
            return False
        if route is _HANDLES:
            rep = RECORD_JSON
        else:
            rep = choose(accept.decode("latin-1"), False) if accept else REDIRECT
        up = raw.upper()
        front = self.front
        slot = front.cache_get(up.decode("latin-1"))
        if slot is not None and slot.fresh:
            reply = slot.replies.get(rep)
            if reply is not None and reply.expires is None and (up == raw or reply.status < 400):
                front.hit(route, reply.status)
                self._write(reply, head, inm, close)
                return not close
        # A miss, an error to encode or a page to render: the full path, in order.
        self._busy = True
        asked = raw.decode("utf-8", "replace")
        self._task = asyncio.get_running_loop().create_task(
            self._slow(route, asked, rep, head, inm, close)
        )
        return True

    async def _slow(
        self, route: str, asked: str, rep: str, head: bool, inm: bytes | None, close: bool
    ) -> None:
        front = self.front
        try:
            reply = await front.resolver.answer(asked, rep)
        except Exception:  # never a traceback on the wire; aiohttp's edge logs the same way
            front.log_error(asked)
            close = True
            reply = front.internal_error(rep)
        if self._gone:
            return
        front.miss(route, reply.status)
        self._write(reply, head, inm, close or self._closing)
        self._task = None
        self._busy = False
        if not (close or self._closing):
            self._process()

    def _write(self, reply: Reply, head: bool, inm: bytes | None, close: bool) -> None:
        t = self.transport
        assert t is not None
        conn = b"Connection: close\r\n\r\n" if close else b"\r\n"
        if (
            inm is not None
            and reply.etag is not None
            and etag_matches(inm.decode("latin-1"), reply.etag)
        ):
            t.write(reply.wire_304() + date_line() + conn)
        elif head:
            t.write(reply.wire + date_line() + conn)
        else:
            t.write(reply.wire + date_line() + conn + reply.body)
        if close:
            self._gone = True
            t.close()

    # -- leaving --------------------------------------------------------------------------

    def _handoff(self, data: bytes) -> None:
        """Give this connection, and the bytes not yet answered, to aiohttp for good."""
        t = self.transport
        assert t is not None
        self._gone = True
        self.front.conns.discard(self)
        self.front.handed()
        proto = self.front.app_protocol()
        if self._paused:
            t.resume_reading()
        t.set_protocol(proto)
        proto.connection_made(t)
        if data:
            proto.data_received(data)

    def idle_for(self, now: float) -> float:
        return -1.0 if self._busy else now - self._last

    def sweep(self, now: float) -> None:
        """Close an idle keep-alive connection, or one that sends its head too slowly."""
        if self._busy or self._gone or self.transport is None:
            return
        if (self._buf and now - self._started > HEAD_TIMEOUT) or now - self._last > IDLE_TIMEOUT:
            self._gone = True
            self.transport.close()

    def close_when_idle(self) -> None:
        if self._busy:
            self._closing = True
        elif not self._gone and self.transport is not None:
            self._gone = True
            self.transport.close()


class FastFront:
    """The fast path's shared state in one worker: the resolver, its connections, metrics."""

    def __init__(self, resolver: Resolver, app_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.resolver = resolver
        self.app_protocol = app_protocol
        self.conns: set[FastProtocol] = set()
        self.cache_get = resolver.cache.get
        m = resolver.metrics
        self._cells, self._base = m.cells, m.base
        self._index = {
            (r, s): m.request_index(r, s) for r in (_RESOLVE, _HANDLES) for s in STATUSES
        }
        self._hits = m.counter_index("cache_hits")
        self._fast = m.counter_index("fast_requests")
        self._handoffs = m.counter_index("handoffs")
        self.now = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None

    def protocol(self) -> FastProtocol:
        return FastProtocol(self)

    def hit(self, route: str, status: int) -> None:
        cells, base = self._cells, self._base
        cells[base + self._index[(route, status)]] += 1
        cells[base + self._hits] += 1
        cells[base + self._fast] += 1

    def miss(self, route: str, status: int) -> None:
        # cache hit/miss and store counters were counted by Resolver.slot
        self.resolver.metrics.request(route, status)
        self._cells[self._base + self._fast] += 1

    def handed(self) -> None:
        self._cells[self._base + self._handoffs] += 1

    def log_error(self, asked: str) -> None:
        log.exception("unexpected error answering /%s", asked[:200])

    def internal_error(self, rep: str) -> Reply:
        return encode_problem(CityIdError("internal error", rule="internal"), "", rep)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = time.monotonic()
            for c in list(self.conns):
                c.sweep(now)

    async def close(self, timeout: float = 10.0) -> None:
        """Stop: close idle connections now, busy ones after their answer, then wait."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for c in list(self.conns):
            c.close_when_idle()
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()
