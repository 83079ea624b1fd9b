"""The registrar's HTTP edge (aiohttp): parse, hand to the engine, encode the answer.

Routes:

* ``POST /api/ops``: a msgpack array of signed leaves, or a stream of them
  (``application/x-cityid-leaves``); either is decoded while it arrives; all
  accepted or none. Answers the receipts and the checkpoint once the batch is
  published.
* ``PUT /api/handles/{id}``, ``DELETE /api/handles/{id}``: the Handle-style write
  API (JSON values, ``If-Match`` version, signature header: see ``auth``).
* ``GET /api/version/{id}``: the current version a writer must name.
* ``GET /log/...``: the ledger as tlog-tiles static files.
* ``GET /healthz``, ``GET /metrics``, ``GET /``: liveness, counters, what this
  registrar hosts.
* applications for child prefixes, their review and the ``/apply`` form:
  :mod:`registrar.apply_http` (docs/onboarding.md).

Every body is read through the process's :class:`~cityid.httpedge.Edge`, and only
once what the headers say has been checked (content type, signature header,
version, size): a body that could not be accepted is never read. Typed errors are
mapped to Handle response codes once, in ``_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any

import msgpack
from aiohttp import web

from cityid import handle
from cityid.errors import (
    AuthenticationRequired,
    CityIdError,
    ConflictError,
    LedgerError,
    OperationError,
    SignatureError,
)
from cityid.handle import error_body
from cityid.httpedge import EDGE_KEY, Edge, EdgeRefusal, edge_middleware, use_server_name
from cityid.identifiers import Identifier, parse_identifier, parse_prefix
from cityid.ops import (
    MAX_LEAF,
    Delete,
    Mint,
    MintItem,
    Operation,
    SignedOperation,
    Update,
)
from cityid.records import Record

from . import handle_api
from .apply_http import add_application_routes
from .auth import parse_auth_header, parse_if_match
from .core import LEAVES, MAX_BODY, MAX_OPS_PER_REQUEST, Registrar, not_found, too_many_ops
from .handle_auth import CHALLENGES, is_handle_auth

log = logging.getLogger("cityid.registrar")

REGISTRAR_KEY: web.AppKey[Registrar] = web.AppKey("registrar", Registrar)
MSGPACK = "application/msgpack"
JSON = "application/json"
FEED_SLICE = 64 * 1024
STREAM_BUFFER = 2 * (MAX_LEAF + FEED_SLICE)  # a partial leaf and the slice after it
#: A Handle-style write signed for one of this many versions before the current one
#: is named a replay (``stale-version``) rather than a forgery.
REPLAY_WINDOW = 8

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _error(exc: CityIdError, ident: str | None = None) -> web.Response:
    status, body = error_body(exc, ident)
    if isinstance(exc, AuthenticationRequired):
        resp = _json(status, body)
        for challenge in CHALLENGES:  # the schemes this registrar takes, one a field
            resp.headers.add("WWW-Authenticate", challenge)
        return resp
    if not isinstance(exc, EdgeRefusal):
        return _json(status, body)
    # Refused at the edge, for the request's form or the server's load: HTTP says which.
    busy = exc.status in (429, 503)
    body["responseCode"] = handle.SERVER_TOO_BUSY if busy else handle.INVALID_REQUEST
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
    resp = _json(exc.status, body, **headers)
    if exc.close:
        resp.force_close()
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CityIdError as e:
        return _error(e, request.match_info.get("id"))


async def post_ops(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    streamed = request.content_type == LEAVES
    if not streamed and request.content_type != MSGPACK:
        raise OperationError(
            f"POST /api/ops takes {MSGPACK} (an array of signed leaves) or {LEAVES} "
            "(a stream of leaves)",
            rule="content-type",
        )
    if reg.broken is not None:  # before reading a body that could not be written
        raise LedgerError(reg.broken, rule="registrar-stopped")
    async with request.app[EDGE_KEY].body(request, MAX_BODY) as body:
        leaves, decoded = await read_leaves(body, streamed=streamed, first=_checker(reg))
        # A streamed upload took its time already: its batch need not wait for others.
        receipts = await reg.submit(leaves, decoded, flush=streamed)
    return _json(
        200,
        {
            "responseCode": 1,
            "receipts": [r.to_json() for r in receipts],
            "checkpoint": receipts[0].checkpoint.decode(),
        },
    )


def _checker(reg: Registrar) -> Callable[[SignedOperation], None]:
    """A read-only check of a request's first operation against the namespace as it is.

    A request is checked and applied in order once its body is in (``admit``), so
    its first operation depends on nothing else in it: if it fails against the
    state now, the request would have been refused had it arrived whole now, and
    the rest of the body need not be read. Passing proves nothing: ``admit``
    checks everything again.
    """

    def check(signed: SignedOperation) -> None:
        reg.namespace.check(signed, log=reg.config.origin)

    return check


class _LeafReader:
    """The leaves of a ``POST /api/ops`` body, decoded and verified as each one is whole.

    Two framings: a msgpack array of ``bin`` leaves (``application/msgpack``), or
    ``bin`` leaves then ``nil`` (``application/x-cityid-leaves``). Stateless: it
    touches no namespace, so a refused body has changed nothing.
    """

    def __init__(
        self, streamed: bool, first: Callable[[SignedOperation], None] | None = None
    ) -> None:
        self.streamed = streamed
        self.first = first
        self.unpacker = msgpack.Unpacker(
            max_buffer_size=STREAM_BUFFER,
            # A stream refuses an oversized leaf as framing (as it always has); an array's
            # leaf reaches the decoder, which names it leaf-too-large.
            max_bin_len=MAX_LEAF if streamed else STREAM_BUFFER,
            max_str_len=0,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self.fed = 0
        self.expected: int | None = None  # the array's length, once its header is in
        self.ended = False
        self.leaves: list[bytes] = []
        self.decoded: list[SignedOperation] = []

    @property
    def framing(self) -> str:
        return "a stream of leaves" if self.streamed else "a msgpack array of binary leaves"

    def feed(self, chunk: bytes) -> None:
        # In slices, each taken out before the next goes in: the unpacker's buffer then
        # holds at most a partial leaf and one slice, whatever size the reads come in.
        view = memoryview(chunk)
        for start in range(0, len(view), FEED_SLICE):
            piece = view[start : start + FEED_SLICE]
            self.unpacker.feed(piece)
            self.fed += len(piece)
            self._drain()

    def _drain(self) -> None:
        u = self.unpacker
        if not self.streamed and self.expected is None:
            try:
                self.expected = u.read_array_header()
            except msgpack.OutOfData:
                return
            if self.expected > MAX_OPS_PER_REQUEST:
                raise too_many_ops(self.expected)
            self.ended = self.expected == 0
        while True:
            try:
                obj = u.unpack()
            except msgpack.OutOfData:
                return
            self._take(obj)

    def _take(self, obj: object) -> None:
        if self.ended:
            raise OperationError("data after the end of the leaves", rule="encoding")
        if obj is None and self.streamed:
            self.ended = True
            return
        if type(obj) is not bytes:
            raise OperationError(f"the body must be {self.framing}", rule="encoding")
        if len(self.leaves) == MAX_OPS_PER_REQUEST:
            raise too_many_ops(MAX_OPS_PER_REQUEST + 1)
        try:
            signed = SignedOperation.decode(obj)
            if not self.leaves and self.first is not None:
                self.first(signed)
        except CityIdError as e:
            if self.streamed or (self.expected or 0) > 1:
                e.args = (f"operation {len(self.leaves)}: {e.message}",)
            raise
        self.decoded.append(signed)
        self.leaves.append(obj)
        if len(self.leaves) == self.expected:
            self.ended = True

    def finish(self) -> tuple[list[bytes], list[SignedOperation]]:
        if not self.ended:
            end = "its end marker" if self.streamed else "its last leaf"
            raise OperationError(
                f"the body ended before {end} (an aborted upload?): nothing was applied",
                rule="truncated",
            )
        if self.unpacker.tell() != self.fed:
            raise OperationError("data after the end of the leaves", rule="encoding")
        return self.leaves, self.decoded


async def read_leaves(
    chunks: AsyncIterable[bytes],
    *,
    streamed: bool,
    first: Callable[[SignedOperation], None] | None = None,
) -> tuple[list[bytes], list[SignedOperation]]:
    """Read a ``POST /api/ops`` body, decoding each leaf as it arrives.

    Each leaf is decoded and checked (canonical form, values, signature) while
    the rest is still on its way, and the first one is also given to ``first``
    (the registrar's read-only authority check), so a body that is not signed,
    or signed by a key that may do nothing, is refused at its first leaf, not
    after 64 MiB. A body that ends early, has anything after its end, or breaks
    a limit is refused as a whole.
    """
    reader = _LeafReader(streamed, first)
    try:
        async for chunk in chunks:
            reader.feed(chunk)
            await asyncio.sleep(0)  # a leaf's checks take ms: let other requests in
    except CityIdError:
        raise  # a leaf's own fault, already named (some are ValueErrors too)
    except (ValueError, msgpack.FormatError, msgpack.StackError, msgpack.BufferFull) as e:
        why = str(e) or type(e).__name__
        raise OperationError(f"the body is not {reader.framing}: {why}", rule="encoding") from e
    return reader.finish()


def _target(request: web.Request) -> Identifier:
    return parse_identifier(request.match_info["id"])


def _signed(
    key: bytes,
    sig: bytes,
    made: Callable[[int], Sequence[Operation]],
    prev: int,
    named: bool,
) -> SignedOperation:
    """The operation a Handle-style write was signed for, its signature verified.

    ``made(v)`` rebuilds the operations the request could have been signed for
    at version ``v``, the one the server builds now first; ``prev`` is the
    version the request names (``If-Match``, then ``named``) or else the
    current one. A request that names no version and was signed for one of the
    :data:`REPLAY_WINDOW` versions before the current one is a replay, refused as
    ``stale-version`` rather than as a forgery. (One that names its version is
    rebuilt exactly, and the namespace calls a replay stale itself.)
    """
    signed = SignedOperation(made(prev)[0], key, sig)
    try:
        signed.verify()
    except SignatureError:
        if named:
            raise
        for old in range(prev - 1, max(-1, prev - 1 - REPLAY_WINDOW), -1):
            for op in made(old):
                try:
                    SignedOperation(op, key, sig).verify()
                except SignatureError:
                    continue
                raise ConflictError(
                    f"{op.target} is at version {prev} but this request was signed for "
                    f"version {old}: a replay",
                    rule="stale-version",
                ) from None
        raise
    return signed


async def get_version(request: web.Request) -> web.Response:
    ident = _target(request)
    ns = request.app[REGISTRAR_KEY].namespace
    version, alive = ns.version(ident)
    body: dict[str, Any] = {"handle": str(ident), "version": version, "exists": alive}
    if ident.is_prefix_record and ident.named_prefix is not None:
        body["key_version"] = ns.key_version(ident.named_prefix)
        st = ns.prefixes.get(ident.named_prefix)
        body["custody_version"] = st.custody_version if st is not None else 0
    return _json(200, body, ETag=f'"v{version}"')


async def get_next(request: web.Request) -> web.Response:
    """The first free number for minted suffixes ``letters`` + ``width`` digits."""
    prefix = parse_prefix(request.match_info["prefix"])
    letters = request.query.get("letters", "").upper()
    try:
        width = int(request.query.get("width", "7"))
    except ValueError as e:
        raise OperationError("width must be an integer", rule="field") from e
    nxt = request.app[REGISTRAR_KEY].namespace.next_number(prefix, letters, width)
    return _json(200, {"prefix": str(prefix), "letters": letters, "width": width, "next": nxt})


async def put_handle(request: web.Request) -> web.Response:
    if is_handle_auth(request.headers.get("Authorization")):
        return await handle_api.put_handle(request)
    reg = request.app[REGISTRAR_KEY]
    ident = _target(request)
    # Everything the headers can refuse is refused before the body is read.
    key, sig, time = parse_auth_header(request.headers.get("Authorization"))
    if request.content_type != JSON:
        raise OperationError(
            f"PUT /api/handles takes {JSON} (the Handle values), not {request.content_type}",
            rule="content-type",
        )
    named = parse_if_match(request.headers.get("If-Match"))
    overwrite = request.query.get("overwrite", "true").lower() != "false"
    record = await handle_api.read_values(request, time)
    version, alive = reg.version(ident)
    if alive and not overwrite:
        raise ConflictError(f"{ident} already exists (version {version})", rule="already-exists")
    if ident.is_prefix_record and not alive:
        raise OperationError(
            "a prefix is created by its parent's delegate operation, not by PUT",
            rule="use-delegate",
        )
    prev = version if named is None else named

    def made(p: int) -> list[Operation]:
        return _put_ops(ident, p, record, time, alive=alive)

    signed = _signed(key, sig, made, prev, named is not None)
    receipts = await reg.submit([signed.encode()], [signed])
    created = not alive
    return _json(
        201 if created else 200,
        {
            "responseCode": 1,
            "handle": str(ident),
            "version": prev + 1,
            "index": receipts[0].index,
        },
        ETag=f'"v{prev + 1}"',
    )


def _put_ops(
    ident: Identifier, prev: int, record: Record, time: int, *, alive: bool
) -> list[Operation]:
    """The operations a PUT signed for version ``prev`` may have been, the one the server
    builds now first: an update of a live identifier, a mint of a new or deleted one."""
    update = Update(ident, prev, record, time)
    mint = Mint(ident.prefix, (MintItem(ident.suffix, prev, record),), time)
    return [update, mint] if alive else [mint, update]


async def delete_handle(request: web.Request) -> web.Response:
    if is_handle_auth(request.headers.get("Authorization")):
        return await handle_api.delete_handle(request)
    reg = request.app[REGISTRAR_KEY]
    ident = _target(request)
    key, sig, time = parse_auth_header(request.headers.get("Authorization"))
    version, alive = reg.version(ident)
    if not alive:
        raise not_found(ident, version, key)
    named = parse_if_match(request.headers.get("If-Match"))
    prev = version if named is None else named
    signed = _signed(key, sig, lambda p: [Delete(ident, p, time)], prev, named is not None)
    receipts = await reg.submit([signed.encode()], [signed])
    return _json(200, {"responseCode": 1, "handle": str(ident), "index": receipts[0].index})


async def healthz(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    if reg.broken:
        return _json(503, {"status": "failed", "reason": reg.broken})
    return _json(200, {"status": "ok", "size": reg.log.size})


async def metrics(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    lines = request.app[EDGE_KEY].prometheus("cityid_registrar")
    lines += [
        "# HELP cityid_registrar_log_size Entries in this registrar's log (signed size).",
        "# TYPE cityid_registrar_log_size gauge",
        f"cityid_registrar_log_size {reg.log.size}",
        "# HELP cityid_registrar_up 1 while the registrar accepts writes, 0 once a batch failed.",
        "# TYPE cityid_registrar_up gauge",
        f"cityid_registrar_up {int(reg.broken is None)}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def info(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    return _json(
        200,
        {
            "origin": reg.config.origin,
            "log_key": str(reg.log.verifier),
            "size": reg.log.size,
            "hosts": [{"prefix": str(a.prefix), "key": str(a.key)} for a in reg.config.anchors],
            **handle_api.announce(request.app),
            "log": "/log/",
        },
    )


def make_app(reg: Registrar, edge: Edge | None = None) -> web.Application:
    """The registrar's application; ``edge`` bounds its bodies and counts its refusals."""
    app = web.Application(
        client_max_size=MAX_BODY, middlewares=[edge_middleware, errors_middleware]
    )
    use_server_name()
    app[REGISTRAR_KEY] = reg
    app[EDGE_KEY] = edge or Edge("registrar")
    app.router.add_post("/api/ops", post_ops)
    app.router.add_get("/api/version/{id:.+}", get_version)
    app.router.add_get("/api/next/{prefix}", get_next)
    app.router.add_put("/api/handles/{id:.+}", put_handle)
    app.router.add_delete("/api/handles/{id:.+}", delete_handle)
    handle_api.add_routes(app, reg)  # GET /api/handles, and Handle's own authentication
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", info)
    try:
        from ledger.http import add_tile_routes
    except ImportError:  # pragma: no cover - the ledger's HTTP module is part of the package
        log.warning("ledger.http missing: the log is not served")
    else:
        add_tile_routes(app, "/log", reg.log_dir)

    async def on_startup(_: web.Application) -> None:
        await reg.start()

    async def on_cleanup(_: web.Application) -> None:
        await reg.aclose()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    add_application_routes(app, reg)  # after on_startup: its store opens once the log is
    return app
