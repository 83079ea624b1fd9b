"""A lean HTTP/1.1 front for the requests that dominate: ``GET /{id}`` and
``GET /api/handles/{id}``.

Scanning a 2D code is a plain ``GET /PREFIX/SUFFIX``; its answer is a 302 that
the resolver derives from its cache slot (:meth:`Resolver.cached
<resolver.answers.Resolver.cached>`). This protocol parses only what that answer
depends on (the request line, ``Accept``, ``If-None-Match``, ``Connection``) and
writes the answer at once; a miss is queued with the other misses of this
event-loop pass (:meth:`Resolver.submit <resolver.answers.Resolver.submit>`),
which asks the store for all of them in one round trip and calls back
:meth:`FastProtocol._answered` with each reply. Everything it does not recognise
as that simple case is handed, unread, to aiohttp on the same connection (the
socket's protocol is swapped and the buffered bytes replayed), so the full
application keeps answering every other route, every method, odd headers,
bodies, HTTP/1.0 and malformed requests. A connection never comes back from
aiohttp, which keeps the hand-off trivially correct.

Requests on one connection are answered in order (pipelining): while a miss is
looked up the following requests wait in the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import time
from collections.abc import Callable
from email.utils import formatdate

from cityid.httpedge import RefusalLog

from .answers import Resolver
from .encode import HANDLE_API, REDIRECT, REDIRECT_ZH, choose
from .i18n import ZH, negotiate
from .metrics import STATUSES
from .reply import Reply, etag_matches

MAX_HEAD = 8190  # aiohttp's own limit: longer heads go to it for a proper 4xx
MAX_BUFFER = 65536  # pause reading a pipelining client beyond this
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle
HEAD_TIMEOUT = 10.0  # seconds to finish sending request headers (slowloris)
# The simple case, whole: GET or HEAD of /{id} or /api/handles/{id} (an identifier has a
# slash after its prefix; the application's own pages are single segments, and other
# /api/ and /hrls/ routes are its own), no query, no escapes, HTTP/1.1, well-formed header fields
# (RFC 9110 §5.1 tokens, a colon, no bare CR or LF). Anything else goes to aiohttp.
_SIMPLE = re.compile(
    rb"(GET|HEAD) /(?:(api/handles/)|(?!api/|hrls/))([^\x00-\x20\x7f?%/]+/[^\x00-\x20\x7f?%]*)"
    rb" HTTP/1\.1((?:\r\n[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*)*)\r\n\r\n"
)
_BODY = re.compile(rb"\r\n(?:content-length|transfer-encoding|upgrade|expect):")
_WANTED = re.compile(
    rb"\r\n(accept|accept-language|if-none-match|connection):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n|$)",
    re.I,
)
_RESOLVE, _HANDLES = "resolve", "handles"  # metrics routes, as the aiohttp app names them

_date = [0, b""]
_INCOMPLETE = Reply.make(
    400,
    [("Content-Type", "application/json")],
    b'{"message":"the request head ended before its blank line","rule":"http"}',
)
_BARE_LF = Reply.make(
    400,
    [("Content-Type", "application/json")],
    b'{"message":"a line of the request head ends in a bare LF: HTTP/1.1 lines end in CRLF",'
    b'"rule":"http"}',
)


@functools.lru_cache(maxsize=256)
def _chinese(accept_language: bytes) -> bool:
    """Whether a page for this ``Accept-Language`` is in Chinese (a browser sends the same
    header on every request: one dict lookup each)."""
    return negotiate(accept_language.decode("latin-1")) == ZH


def _bare_lf(buf: bytes, start: int, end: int) -> bool:
    """Whether a line of ``buf[start:end]`` ends in LF alone (never the end of a head)."""
    return buf.count(b"\n", start, end) != buf.count(b"\r\n", start, end)


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
        "_pending",
        "_started",
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
        # The miss being looked up: its route, HEAD, If-None-Match and Connection: close.
        self._pending: tuple[str, bool, bytes | None, bool] = ("", False, None, False)

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
        self._gone = True  # an answer still being looked up is dropped
        self.front.conns.discard(self)

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
                if _bare_lf(buf, pos, n):
                    self._refuse(_BARE_LF, "bare-lf", "a request head line ends in a bare LF")
                    return
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
        m = _SIMPLE.fullmatch(buf, start, end + 4)
        if m is None:
            if _bare_lf(buf, start, end):
                # A line ending in a bare LF: say so (400) rather than guess where it ends.
                self._refuse(_BARE_LF, "bare-lf", "a request head line ends in a bare LF")
            else:
                self._handoff(buf[start:])  # not the simple case: aiohttp answers it
            return False
        method, api, raw, fields = m.groups()
        low = fields.lower()
        # RFC 9112 §3.2: HTTP/1.1 without Host is a 400 (aiohttp's); a body or a protocol
        # switch is aiohttp's too.
        if b"\r\nhost:" not in low or _BODY.search(low) is not None:
            self._handoff(buf[start:])
            return False
        accept = inm = language = None
        close = False
        if low.count(b"\r\n") > 1:  # more fields than Host (wrk, curl -H'': Host alone)
            for name, value in _WANTED.findall(fields):
                name = name.lower()
                if name == b"accept" and accept is None:
                    accept = value
                elif name == b"if-none-match" and inm is None:
                    inm = value
                elif name == b"accept-language" and language is None:
                    language = value
                elif name == b"connection":
                    close = close or b"close" in value.lower()
                else:  # the same field twice: aiohttp decides what that means
                    self._handoff(buf[start:])
                    return False
        if api:
            route, rep = _HANDLES, HANDLE_API  # a plain Handle API read, whatever Accept says
        else:
            route = _RESOLVE
            rep = choose(accept.decode("latin-1"), False) if accept else REDIRECT
            # Only a page has words: a Chinese reader's miss or error page is in Chinese.
            if language is not None and rep == REDIRECT and _chinese(language):
                rep = REDIRECT_ZH
        asked = raw.decode("utf-8", "replace")
        # ASCII-only upper case: str.upper() maps some non-ASCII letters onto ASCII
        # ("ß" -> "SS"), which would alias another identifier's slot.
        reply = self.front.cached(raw.upper().decode("latin-1"), asked, rep)
        if reply is not None:
            self.front.hit(route, reply.status)
            self._write(reply, method == b"HEAD", inm, close)
            return not close
        # A miss, or a page to render: answered with this loop pass's other misses, in order.
        self._busy = True
        self._pending = (route, method == b"HEAD", inm, close)
        self.front.resolver.submit(asked, rep, self._answered)
        return True

    def _answered(self, reply: Reply) -> None:
        """The answer to the request this connection waits for (:meth:`Resolver.submit`)."""
        if self._gone:
            return
        route, head, inm, close = self._pending
        self.front.miss(route, reply.status)
        # After an internal error, start afresh on a new connection.
        close = close or self._closing or reply.status == 500
        self._write(reply, head, inm, close)
        self._busy = False
        if not close:
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
            t.write(b"".join((reply.wire_304(), date_line(), conn)))
        elif head:
            t.write(b"".join((reply.wire, date_line(), conn)))
        else:
            t.write(b"".join((reply.wire, date_line(), conn, reply.body)))
        if close:
            self._gone = True
            t.close()

    # -- leaving --------------------------------------------------------------------------

    def _refuse(self, reply: Reply, reason: str, detail: str) -> None:
        """Answer a request the fast path refuses itself, count and log it, and close."""
        t = self.transport
        assert t is not None
        peer = t.get_extra_info("peername")
        self.front.refusals.refused(reason, str(peer[0]) if peer else None, detail)
        self._write(reply, False, None, True)

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

    def __init__(
        self,
        resolver: Resolver,
        app_protocol: Callable[[], asyncio.Protocol],
        refusals: RefusalLog,
    ) -> None:
        self.resolver = resolver
        self.app_protocol = app_protocol
        self.refusals = refusals  # the same log (and count) as aiohttp's refusals
        self.conns: set[FastProtocol] = set()
        self.cached = resolver.cached
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
        # cache hit/miss and store counters were counted by Resolver.slots
        self.resolver.metrics.request(route, status)
        self._cells[self._base + self._fast] += 1

    def handed(self) -> None:
        self._cells[self._base + self._handoffs] += 1

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
