"""The registrar's HTTP edge (aiohttp): parse, hand to the engine, encode the answer.

Routes:

* ``POST /api/ops``: a msgpack array of signed leaves, or a stream of them
  (``application/x-cityid-leaves``, decoded while it arrives); all accepted or
  none. Answers the receipts and the checkpoint once the batch is published.
* ``PUT /api/handles/{id}``, ``DELETE /api/handles/{id}``: the Handle-style write
  API (JSON values, ``If-Match`` version, signature header: see ``auth``).
* ``GET /api/version/{id}``: the current version a writer must name.
* ``GET /log/...``: the ledger as tlog-tiles static files.
* ``GET /healthz``, ``GET /``: liveness and what this registrar hosts.

Typed errors are mapped to Handle response codes once, in ``_error``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgpack
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from cityid.errors import CityIdError, ConflictError, LedgerError, OperationError, RecordError
from cityid.handle import error_body
from cityid.identifiers import Identifier, parse_identifier, parse_prefix
from cityid.ops import MAX_LEAF, Delete, Mint, MintItem, SignedOperation, Update
from cityid.records import values_from_json

from .auth import parse_auth_header, parse_if_match
from .core import LEAVES, MAX_OPS_PER_REQUEST, Registrar, not_found, too_many_ops

log = logging.getLogger("cityid.registrar")

REGISTRAR_KEY: web.AppKey[Registrar] = web.AppKey("registrar", Registrar)
MAX_BODY = 64 * 1024 * 1024
MSGPACK = "application/msgpack"
STREAM_CHUNK = 64 * 1024
STREAM_BUFFER = 2 * (MAX_LEAF + STREAM_CHUNK)  # a partial leaf and the chunk after it

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


def _error(exc: CityIdError, handle: str | None = None) -> web.Response:
    status, body = error_body(exc, handle)
    return _json(status, body)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except CityIdError as e:
        return _error(e, request.match_info.get("id"))


async def post_ops(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    if request.content_type == LEAVES:
        if reg.broken is not None:  # before reading a body that could not be written
            raise LedgerError(reg.broken, rule="registrar-stopped")
        leaves, decoded = await read_leaf_stream(request)
        # The upload took its time already: its batch need not wait for others.
        receipts = await reg.submit(leaves, decoded, flush=True)
    elif request.content_type == MSGPACK:
        body = await request.read()
        try:
            leaves = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise OperationError(f"body is not msgpack: {e}", rule="encoding") from e
        if not isinstance(leaves, list) or not all(isinstance(x, bytes) for x in leaves):
            raise OperationError("body must be a msgpack array of binary leaves", rule="encoding")
        receipts = await reg.submit(leaves)
    else:
        raise OperationError(
            f"POST /api/ops takes {MSGPACK} (an array of signed leaves) or {LEAVES} "
            "(a stream of leaves)",
            rule="content-type",
        )
    return _json(
        200,
        {
            "responseCode": 1,
            "receipts": [r.to_json() for r in receipts],
            "checkpoint": receipts[0].checkpoint.decode(),
        },
    )


async def read_leaf_stream(request: web.Request) -> tuple[list[bytes], list[SignedOperation]]:
    """Read an ``application/x-cityid-leaves`` body, decoding each leaf as it arrives.

    The body is msgpack bin objects, one per leaf, then nil. Each leaf is
    decoded and checked (canonical form, values, signature) while the rest is
    still on its way; nothing touches the namespace here. A body that ends
    before its nil (an aborted upload), has anything after it, or breaks a
    limit is refused as a whole.
    """
    unpacker = msgpack.Unpacker(
        max_buffer_size=STREAM_BUFFER,
        max_bin_len=MAX_LEAF,
        max_str_len=0,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    leaves: list[bytes] = []
    decoded: list[SignedOperation] = []
    ended = False
    received = 0
    try:
        async for chunk in request.content.iter_chunked(STREAM_CHUNK):
            received += len(chunk)
            if received > MAX_BODY:
                raise OperationError(
                    f"the body is over {MAX_BODY:,} bytes: send fewer leaves per request",
                    rule="too-large",
                )
            unpacker.feed(chunk)
            for obj in unpacker:
                if ended:
                    raise OperationError("data after the end of the leaves", rule="encoding")
                if obj is None:
                    ended = True
                    continue
                if type(obj) is not bytes:
                    raise OperationError(
                        "the body must be msgpack binary leaves, then nil", rule="encoding"
                    )
                if len(leaves) == MAX_OPS_PER_REQUEST:
                    raise too_many_ops(MAX_OPS_PER_REQUEST + 1)
                try:
                    decoded.append(SignedOperation.decode(obj))
                except CityIdError as e:
                    e.args = (f"operation {len(leaves)}: {e.message}",)
                    raise
                leaves.append(obj)
            await asyncio.sleep(0)  # a leaf's checks take ms: let other requests in
    except CityIdError:
        raise
    except (ValueError, msgpack.FormatError, msgpack.StackError, msgpack.BufferFull) as e:
        raise OperationError(f"the body is not a stream of leaves: {e}", rule="encoding") from e
    except (ConnectionError, HttpProcessingError, aiohttp.ClientPayloadError) as e:
        raise OperationError(
            f"the upload was cut short ({e}): nothing was applied", rule="truncated"
        ) from e
    if not ended:
        raise OperationError(
            "the body ended before its end marker (an aborted upload?): nothing was applied",
            rule="truncated",
        )
    if unpacker.tell() != received:
        raise OperationError("data after the end of the leaves", rule="encoding")
    return leaves, decoded


def _target(request: web.Request) -> Identifier:
    return parse_identifier(request.match_info["id"])


async def get_version(request: web.Request) -> web.Response:
    ident = _target(request)
    ns = request.app[REGISTRAR_KEY].namespace
    version, alive = ns.version(ident)
    body: dict[str, Any] = {"handle": str(ident), "version": version, "exists": alive}
    if ident.is_prefix_record and ident.named_prefix is not None:
        body["key_version"] = ns.key_version(ident.named_prefix)
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
    reg = request.app[REGISTRAR_KEY]
    ident = _target(request)
    key, sig, time = parse_auth_header(request.headers.get("Authorization"))
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"body is not JSON: {e}", rule="json") from e
    record = values_from_json(payload, timestamp=time)
    version, alive = reg.version(ident)
    prev = parse_if_match(request.headers.get("If-Match"))
    overwrite = request.query.get("overwrite", "true").lower() != "false"
    if alive and not overwrite:
        raise ConflictError(f"{ident} already exists (version {version})", rule="already-exists")
    if ident.is_prefix_record and not alive:
        raise OperationError(
            "a prefix is created by its parent's delegate operation, not by PUT",
            rule="use-delegate",
        )
    prev = version if prev is None else prev
    if alive:
        op: Update | Mint = Update(ident, prev, record, time)
    else:
        op = Mint(ident.prefix, (MintItem(ident.suffix, prev, record),), time)
    receipts = await reg.submit([SignedOperation(op, key, sig).encode()])
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


async def delete_handle(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    ident = _target(request)
    key, sig, time = parse_auth_header(request.headers.get("Authorization"))
    version, alive = reg.version(ident)
    if not alive:
        raise not_found(ident, version, key)
    prev = parse_if_match(request.headers.get("If-Match"))
    op = Delete(ident, version if prev is None else prev, time)
    receipts = await reg.submit([SignedOperation(op, key, sig).encode()])
    return _json(200, {"responseCode": 1, "handle": str(ident), "index": receipts[0].index})


async def healthz(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    if reg.broken:
        return _json(503, {"status": "failed", "reason": reg.broken})
    return _json(200, {"status": "ok", "size": reg.log.size})


async def info(request: web.Request) -> web.Response:
    reg = request.app[REGISTRAR_KEY]
    return _json(
        200,
        {
            "origin": reg.config.origin,
            "log_key": str(reg.log.verifier),
            "size": reg.log.size,
            "hosts": [{"prefix": str(a.prefix), "key": str(a.key)} for a in reg.config.anchors],
            "log": "/log/",
        },
    )


def make_app(reg: Registrar) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors_middleware])
    app[REGISTRAR_KEY] = reg
    app.router.add_post("/api/ops", post_ops)
    app.router.add_get("/api/version/{id:.+}", get_version)
    app.router.add_get("/api/next/{prefix}", get_next)
    app.router.add_put("/api/handles/{id:.+}", put_handle)
    app.router.add_delete("/api/handles/{id:.+}", delete_handle)
    app.router.add_get("/healthz", healthz)
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
    return app
