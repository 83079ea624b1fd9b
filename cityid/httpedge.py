"""The HTTP edge of the registrar and the witness: bounded connections, bounded bodies,
one counted line per refused request.

aiohttp parses and answers; this module bounds what a client can hold.

**Connections.** :class:`EdgeSite` serves an ``aiohttp.web.AppRunner`` through a
thin protocol (:class:`_Conn`) around each of aiohttp's request handlers. A
connection is in one of three states:

- *idle*: no request in progress and none arriving. Closed after
  ``idle_timeout`` (a keep-alive client that went quiet, or one that connected
  and never spoke).
- *head*: bytes of a request arrived but it has not reached the application.
  Closed ``head_timeout`` after its first byte however slowly the rest trickles
  in (slowloris), with a 408.
- *busy*: the application holds a request (:func:`edge_middleware` marks it).
  The edge leaves it alone; reading a body has its own deadline
  (:meth:`Edge.body`).

The number of connections is capped below the process's ``RLIMIT_NOFILE``, so
``accept()`` never meets ``EMFILE``. At the cap a new connection closes the one
that made no progress for longest (an idle or unfinished one) *early*, as nginx
reuses keep-alive connections when it runs out: a flood of idle sockets cannot
keep ``/healthz`` out. Only when every connection is busy is the newcomer
refused. This needs an event loop that hands each accepted socket to its
protocol at once, as uvloop (every cityid server's loop) does; asyncio's own
loop accepts up to a backlog of sockets before any of them reaches the edge.

**Bodies.** :meth:`Edge.body` is the one way a handler reads a request body:
identity encoding only, ``Content-Length`` checked against the route's limit
before a byte is read, the bytes reserved from a budget shared by every request
of the process (503 with ``Retry-After`` when it is spent), and a deadline that
a stalled or trickling upload cannot stretch.

**Refusals.** Every refused request (malformed HTTP, a head too slow, a body too
big or too slow, the budget spent, the connection cap) is counted by reason for
``/metrics`` and logged as one line, rate-limited. :class:`RefusalLog` stands in
for aiohttp's protocol logger, where a client's fault used to be a traceback;
the resolver uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import StreamReader, web, web_response
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)

from .errors import CityIdError

MiB = 1024 * 1024
#: The one ``Server`` value of every cityid HTTP answer: no product or version to fingerprint.
SERVER = "cityid"


def use_server_name() -> None:
    """Make :data:`SERVER` aiohttp's default ``Server`` header in this process.

    Also for the answers aiohttp gives before any application sees the request (the
    400 to malformed HTTP it refuses itself), which no ``on_response_prepare`` hook
    reaches. aiohttp has no setting for it; its response module reads this default
    as it prepares each answer.
    """
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]


def _plain_reply(status: str, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (
        f"HTTP/1.1 {status}\r\nServer: {SERVER}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


#: Written to a client whose request head took longer than ``head_timeout``.
_HEAD_TIMEOUT_REPLY = _plain_reply("408 Request Timeout", "the request head did not arrive in time")


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """What one server process lets its clients hold. The defaults suit a registrar."""

    idle_timeout: float = 75.0  # s a connection may sit with no request (as the resolver)
    head_timeout: float = 10.0  # s from a request's first byte to the end of its head
    body_timeout: float = 30.0  # s a body may stall before it is refused (408)
    body_min_rate: int = 32 * 1024  # B/s a body must average after that grace
    max_connections: int = 10_000  # per process, and always below RLIMIT_NOFILE...
    fd_reserve: int = 128  # ...by this many: log files, tiles, connections to witnesses
    body_budget: int = 320 * MiB  # bytes of request bodies held at once, all requests
    small_body: int = 1 * MiB  # bodies up to this size may use the whole budget;
    small_reserve: int = 64 * MiB  # larger ones (or chunked) leave them this much
    retry_after: int = 5  # s, in a 503 when the budget is spent

    def connection_cap(self) -> int:
        """``max_connections``, lowered to leave ``fd_reserve`` descriptors free."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        room = soft - self.fd_reserve if soft > 2 * self.fd_reserve else soft // 2
        return max(1, min(self.max_connections, room))


# -- refusals ---------------------------------------------------------------------------


class EdgeRefusal(CityIdError):
    """A request refused at the edge, before the application judged it."""

    rule = "refused"
    status = 400
    retry_after: int | None = None
    close = False  # the connection cannot carry another request after this


class BodyTooLarge(EdgeRefusal):
    rule = "too-large"
    status = 413


class UnsupportedEncoding(EdgeRefusal):
    rule = "content-encoding"
    status = 415


class BodyTimeout(EdgeRefusal):
    rule = "body-timeout"
    status = 408
    close = True


class BodyTruncated(EdgeRefusal):
    rule = "truncated"
    status = 400
    close = True


class Overloaded(EdgeRefusal):
    """Every byte the process may hold for request bodies is taken: come back later."""

    rule = "busy"
    status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def client_fault(exc: BaseException | None) -> str | None:
    """The refusal reason when ``exc`` is a client's fault in HTTP framing, else None.

    aiohttp wraps a body's framing or encoding error in ``RequestPayloadError``;
    the parser's error is its cause.
    """
    seen = 0
    while exc is not None and seen < 4:
        if isinstance(exc, BadHttpMethod):
            return "bad-method"
        if isinstance(exc, BadStatusLine):
            return "bad-request-line"
        if isinstance(exc, InvalidURLError):
            return "bad-target"
        if isinstance(exc, InvalidHeader):
            return "bad-header"
        if isinstance(exc, LineTooLong):
            return "too-long"
        if isinstance(exc, PayloadEncodingError | web.RequestPayloadError):
            return "bad-body"
        if isinstance(exc, HttpProcessingError):
            return "malformed"
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


class _Bucket:
    """A token bucket: ``burst`` at once, then ``rate`` per second."""

    __slots__ = ("_last", "burst", "clock", "rate", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self._last = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


#: Called with (reason, answered): ``answered`` is False when the request had
#: its answer already (an unread body found broken while aiohttp drained it).
OnRefused = Callable[[str, bool], None]


class RefusalLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's protocol logger, where a client's fault is one counted, rate-limited line.

    Give it to ``web.AppRunner(logger=...)``. aiohttp logs a malformed request
    as ``exception("Error handling request from %s", peer, exc_info=exc)``: a
    traceback each, thousands under a fuzzer. Those become ``refused <reason>
    from <peer>: <what>``, at most ``burst`` lines at once then ``rate`` a
    second, each saying how many were not logged since the last; every one is
    passed to ``on_refused``. A client that hung up is a debug line. Any other
    exception is a bug and keeps its traceback.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        on_refused: OnRefused | None = None,
        rate: float = 1.0,
        burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(logger, {})
        self.on_refused = on_refused
        self._bucket = _Bucket(rate, burst, clock)
        self.unlogged = 0

    def refused(self, reason: str, peer: str | None, detail: str, *, answered: bool = True) -> None:
        """Count one refusal and log it if the rate allows."""
        if self.on_refused is not None:
            self.on_refused(reason, answered)
        if not self._bucket.take():
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more not logged)" if self.unlogged else ""
        self.unlogged = 0
        self.logger.info("refused %s from %s: %s%s", reason, peer or "?", _one_line(detail), more)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        info = kwargs.get("exc_info")
        if info is True:
            info = sys.exc_info()
        exc = info[1] if isinstance(info, tuple) else info
        if not isinstance(exc, BaseException):
            exc = None
        if exc is not None:
            answered = str(msg).startswith("Error handling request")
            peer = str(args[0]) if answered and args else None
            reason = client_fault(exc)
            if reason is not None:
                detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                self.refused(reason, peer, str(detail), answered=answered)
                return
            if isinstance(exc, ConnectionError):
                kwargs.pop("exc_info")
                self.logger.debug("client went away: %s", _one_line(str(exc)))
                return
        super().log(level, msg, *args, **kwargs)


# -- the byte budget ---------------------------------------------------------------------


class ByteBudget:
    """Bytes of request bodies held at once by one process (a single event loop: no lock).

    A body reserves its declared length (the route's limit when chunked) before
    it is read and gives it back when its handler is done. Bodies over
    ``small`` may not take the last ``reserve`` bytes, so small writes still
    get in while large uploads fill the rest.
    """

    def __init__(self, limit: int, *, small: int, reserve: int, retry_after: int) -> None:
        if not 0 <= reserve < limit:
            raise ValueError("the small-body reserve must be below the budget")
        self.limit, self.small, self.reserve, self.retry_after = limit, small, reserve, retry_after
        self.used = 0

    def ceiling(self, n: int) -> int:
        """The most a body of ``n`` bytes may find in use with it."""
        return self.limit if n <= self.small else self.limit - self.reserve

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes, or raise :class:`Overloaded`; :meth:`give` them back."""
        if self.used + n > self.ceiling(n):
            raise Overloaded(
                f"the server holds {self.used:,} bytes of other uploads; a body of {n:,} "
                f"bytes does not fit now: retry in {self.retry_after} s",
                self.retry_after,
            )
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n


# -- the edge ------------------------------------------------------------------------------


class Edge:
    """One server process's HTTP edge: its connections, its body budget, its refusals."""

    def __init__(self, service: str, limits: EdgeLimits | None = None) -> None:
        self.service = service
        self.limits = limits = limits or EdgeLimits()
        self.cap = limits.connection_cap()
        # Connections in order of their last progress (connected, or a request
        # begun or ended): the front is the first to go early.
        self.conns: dict[_Conn, None] = {}
        self.accepted = 0
        self.closed: Counter[str] = Counter()
        self.refusals_by_reason: Counter[str] = Counter()
        self.budget = ByteBudget(
            limits.body_budget,
            small=limits.small_body,
            reserve=limits.small_reserve,
            retry_after=limits.retry_after,
        )
        self.log = RefusalLog(
            logging.getLogger(f"cityid.{service}.http"), on_refused=self._count_refusal
        )
        self.now = time.monotonic
        self._sweeper: asyncio.Task[None] | None = None

    def _count_refusal(self, reason: str, answered: bool) -> None:
        self.refusals_by_reason[reason] += 1

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner``: the refusal log, no access log, and no
        decompression (a gzip body is refused, never inflated: no zip bombs)."""
        return {"logger": self.log, "access_log": None, "auto_decompress": False}

    # -- connections -------------------------------------------------------------------

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], _Conn]:
        return lambda: _Conn(self, inner())

    def admit(self, conn: _Conn) -> bool:
        """Make room for ``conn``: False if every connection is busy (refuse it)."""
        self.accepted += 1
        if len(self.conns) >= self.cap:
            victim = next((c for c in self.conns if not c.busy), None)
            if victim is None:
                self.log.refused(
                    "over-capacity", conn.peer, f"all {len(self.conns)} connections are busy"
                )
                return False
            self.closed["evicted"] += 1
            victim.shut()
        self.conns[conn] = None
        return True

    def progressed(self, conn: _Conn) -> None:
        if conn in self.conns:
            del self.conns[conn]
            self.conns[conn] = None

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.limits.head_timeout / 4, self.limits.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep(self.now())

    def sweep(self, now: float) -> None:
        """Close connections past their idle or head timeout."""
        limits = self.limits
        for c in list(self.conns):
            if c.busy:
                continue
            if c.head_since is not None and now - c.head_since > limits.head_timeout:
                self.log.refused(
                    "head-timeout", c.peer, f"no complete head in {limits.head_timeout:g} s"
                )
                c.shut(_HEAD_TIMEOUT_REPLY)
            elif c.head_since is None and now - c.last > limits.idle_timeout:
                self.closed["idle"] += 1
                c.shut()

    # -- bodies ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def body(self, request: web.Request, limit: int) -> AsyncIterator[Body]:
        """Admit ``request``'s body (at most ``limit`` bytes) and hold its bytes for the block.

        Refused before anything is read: a ``Content-Encoding`` other than
        identity (415), a ``Content-Length`` over ``limit`` (413), a body that
        does not fit the budget now (503, ``Retry-After``).
        """
        try:
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise UnsupportedEncoding(
                    f"Content-Encoding {encoding[:40]!r} is not accepted: send the body as is"
                )
            declared = request.content_length
            if declared is not None and declared > limit:
                raise BodyTooLarge(f"the body is {declared:,} bytes, over {limit:,}")
            need = 0 if not request.body_exists else limit if declared is None else declared
            if need > self.budget.ceiling(need):
                raise BodyTooLarge(f"a body of {need:,} bytes is over this server's budget")
            self.budget.take(need)
        except EdgeRefusal as e:
            self.log.refused(e.rule, request.remote, e.message)
            raise
        try:
            yield Body(self, request, limit)
        finally:
            self.budget.give(need)

    def prometheus(self, prefix: str) -> list[str]:
        """The edge's counters in the Prometheus text format, named ``<prefix>_http_...``."""
        p = f"{prefix}_http"
        lines = [
            f"# HELP {p}_connections Client connections open now.",
            f"# TYPE {p}_connections gauge",
            f"{p}_connections {len(self.conns)}",
            f"# HELP {p}_connection_limit Connections kept open at most (below RLIMIT_NOFILE).",
            f"# TYPE {p}_connection_limit gauge",
            f"{p}_connection_limit {self.cap}",
            f"# HELP {p}_connections_accepted_total Connections accepted.",
            f"# TYPE {p}_connections_accepted_total counter",
            f"{p}_connections_accepted_total {self.accepted}",
            f"# HELP {p}_connections_closed_total Connections closed by the server with no "
            "request in progress: idle too long, or evicted at the cap for a new one.",
            f"# TYPE {p}_connections_closed_total counter",
        ]
        lines += [
            f'{p}_connections_closed_total{{reason="{r}"}} {self.closed[r]}'
            for r in ("idle", "evicted")
        ]
        lines += [
            f"# HELP {p}_refused_total Requests refused at the HTTP edge, by reason.",
            f"# TYPE {p}_refused_total counter",
        ]
        lines += [
            f'{p}_refused_total{{reason="{r}"}} {n}'
            for r, n in sorted(self.refusals_by_reason.items())
        ]
        lines += [
            f"# HELP {p}_body_bytes_reserved Bytes of request bodies being read or held.",
            f"# TYPE {p}_body_bytes_reserved gauge",
            f"{p}_body_bytes_reserved {self.budget.used}",
            f"# HELP {p}_body_budget_bytes Bytes of request bodies held at once at most.",
            f"# TYPE {p}_body_budget_bytes gauge",
            f"{p}_body_budget_bytes {self.budget.limit}",
        ]
        return lines


class Body:
    """A request body, read within its deadline and its limit: ``async for chunk in body``."""

    __slots__ = ("deadline_base", "edge", "limit", "received", "request")

    def __init__(self, edge: Edge, request: web.Request, limit: int) -> None:
        self.edge, self.request, self.limit = edge, request, limit
        self.received = 0
        self.deadline_base = edge.now() + edge.limits.body_timeout

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        """The next piece of the body as it arrives.

        The body may stall ``body_timeout`` seconds; past that it must average
        ``body_min_rate`` bytes a second, each byte buying time, so a client
        trickling an upload cannot hold its reservation for hours.
        """
        limits = self.edge.limits
        try:
            deadline = self.deadline_base + self.received / limits.body_min_rate
            try:
                async with asyncio.timeout(max(0.0, deadline - self.edge.now())):
                    chunk = await self.request.content.readany()
            except TimeoutError as e:
                raise BodyTimeout(
                    f"the body stalled after {self.received:,} bytes: send at least "
                    f"{limits.body_min_rate:,} bytes a second"
                ) from e
            except (HttpProcessingError, web.RequestPayloadError, ConnectionError) as e:
                raise BodyTruncated(
                    f"the body was cut short or malformed after {self.received:,} bytes "
                    f"({_one_line(str(e), 120)}): nothing was applied"
                ) from e
            if not chunk:
                raise StopAsyncIteration
            self.received += len(chunk)
            if self.received > self.limit:
                raise BodyTooLarge(f"the body is over {self.limit:,} bytes")
            return chunk
        except EdgeRefusal as e:
            self.edge.log.refused(e.rule, self.request.remote, e.message)
            raise

    async def read(self) -> bytes:
        """The whole body (for small ones: the caller's ``limit`` bounds it)."""
        return b"".join([c async for c in self])


# -- one connection ------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """aiohttp's handler for one connection, with the edge watching its state."""

    __slots__ = (
        "admitted",
        "busy",
        "edge",
        "head_since",
        "inner",
        "last",
        "peer",
        "pending",
        "transport",
        "unread",
    )

    def __init__(self, edge: Edge, inner: asyncio.Protocol) -> None:
        self.edge = edge
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.peer: str | None = None
        self.admitted = False  # aiohttp's handler has the connection
        self.busy = False  # the application holds a request
        self.pending = False  # bytes arrived while busy: the next request's, maybe
        self.head_since: float | None = None  # first byte of a head not yet dispatched
        self.last = edge.now()
        self.unread: StreamReader | None = None  # a body answered before it was read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if not self.edge.admit(self):
            transport.abort()  # type: ignore[attr-defined]
            return
        self.admitted = True
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.conns.pop(self, None)
        if self.admitted:
            self.inner.connection_lost(exc)
        if self.unread is not None:
            # aiohttp drains a body left unread for up to 10 s, and does not notice
            # that its client went away meanwhile: end it now.
            self.unread.feed_eof()
            self.unread = None

    def data_received(self, data: bytes) -> None:
        if self.busy:
            self.pending = True
        elif self.head_since is None:
            self.head_since = self.edge.now()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- what the middleware and the edge tell it --------------------------------------

    def begin(self) -> None:
        self.busy, self.pending, self.head_since, self.unread = True, False, None, None
        self.edge.progressed(self)

    def end(self) -> None:
        self.busy = False
        self.last = self.edge.now()
        self.head_since = self.last if self.pending else None
        self.pending = False
        self.edge.progressed(self)

    def shut(self, last_words: bytes = b"") -> None:
        """Close now, ``last_words`` written first; aiohttp hears of it in connection_lost."""
        self.edge.conns.pop(self, None)  # its descriptor is as good as free
        t = self.transport
        if t is not None and not t.is_closing():
            if last_words:
                t.write(last_words)
            t.close()


def _conn_of(request: web.Request) -> _Conn | None:
    t = request.transport
    proto = t.get_protocol() if t is not None else None
    return proto if isinstance(proto, _Conn) else None


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Any]
) -> web.StreamResponse:
    """Mark the connection busy while the application holds its request."""
    conn = _conn_of(request)
    if conn is None:  # served without an EdgeSite (e.g. a plain TCPSite in a test)
        return await handler(request)  # type: ignore[no-any-return]
    conn.begin()
    try:
        resp: web.StreamResponse = await handler(request)
    finally:
        conn.end()
    if not request.content.is_eof():
        conn.unread = request.content
        if resp.keep_alive is False and request.transport is not None:
            # A refusal that closes the connection (a stalled body, say) need not wait
            # for the rest of the body, as aiohttp would for up to 10 s: answer, close.
            await resp.prepare(request)
            await resp.write_eof()
            request.transport.close()
    return resp


EDGE_KEY: web.AppKey[Edge] = web.AppKey("edge", Edge)


class EdgeSite(web.BaseSite):
    """An aiohttp site on ``host:port`` whose connections go through ``edge``."""

    __slots__ = ("_bound", "_edge", "_host", "_port", "_reuse_address")

    def __init__(
        self,
        runner: web.BaseRunner,
        edge: Edge,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        reuse_address: bool | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._edge, self._host, self._port = edge, host, port
        self._reuse_address = reuse_address
        self._bound: int | None = None

    @property
    def port(self) -> int:
        return self._bound if self._bound is not None else self._port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._edge.protocol_factory(server),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )
        if self._server.sockets:
            self._bound = int(self._server.sockets[0].getsockname()[1])
        self._edge.start()

    async def stop(self) -> None:
        self._edge.stop()
        await super().stop()
