"""The Handle REST write surface, for Handle clients (pyhandle, HANDLE.NET tools) unchanged.

Hooked into ``registrar/app.py``: ``GET /api/handles/{handle}`` (read your writes),
and ``PUT``/``DELETE`` of ``/api/handles/{handle}`` when the ``Authorization``
header is Handle's (``Basic``); cityid's own signed writes (``CityID-Ed25519``)
keep their path in ``app.py``, and stay the stronger one.

A Handle-authenticated write is authenticated against the admin's ``HS_SECKEY``
and authorised by ``HS_ADMIN`` values (``handle_auth``), then logged as a
:class:`~cityid.ops.Custodial` operation the registrar signs with its custodial
key, naming the admin that authenticated. The namespace accepts it only while the
prefix's owner grants that key custody for that admin (:class:`~cityid.ops.Custody`,
checked in ``cityid/authority.py``): without a grant the write is refused, and a
revocation stops the next one.

Query options, as HANDLE.NET takes them: ``overwrite=false`` (refuse to replace an
existing handle, or an existing value with ``index=``), ``index=N`` (repeatable:
write or, with DELETE, remove only those values), ``mintNewSuffix=true`` (PUT on
``PREFIX/``: the registrar picks the next free minted suffix).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from aiohttp import web

from cityid.errors import (
    AuthorityError,
    CityIdError,
    ConflictError,
    LedgerError,
    NotFoundError,
    OperationError,
    RecordError,
    SignatureError,
)
from cityid.httpedge import EDGE_KEY, EdgeRefusal
from cityid.identifiers import Identifier, mint_suffix, parse_identifier, parse_prefix
from cityid.keys import SigningKey
from cityid.ops import Custodial, Delete, Mint, MintItem, Operation, SignedOperation, Update, now
from cityid.records import Record, Value, values_from_json

from . import handle_auth as ha
from .core import Registrar
from .handle_records import RecordIndex

#: Failed Handle authentications one client may make in WINDOW_S before it waits.
MAX_FAILURES = 10
WINDOW_S = 60.0
#: A PUT body is one record's values as JSON; a record is at most 8 KiB packed.
MAX_PUT_BODY = 256 * 1024
#: Suffixes ``mintNewSuffix`` makes: ``H`` + 7 digits + check character.
MINT_LETTERS, MINT_WIDTH = "H", 7


class TooManyFailures(EdgeRefusal):
    rule = "too-many-failures"
    status = 429


class FailureLimiter:
    """Failed Handle authentications per client address, in a sliding window."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = WINDOW_S) -> None:
        self.limit, self.window = limit, window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, t: float) -> deque[float]:
        q = self._failures.get(client)
        if q is None:
            return deque()
        while q and q[0] <= t - self.window:
            q.popleft()
        if not q:
            del self._failures[client]
        return q

    def check(self, client: str) -> None:
        t = time.monotonic()
        q = self._recent(client, t)
        if len(q) >= self.limit:
            e = TooManyFailures(
                f"{len(q)} failed authentications from {client} in {self.window:g} s: wait "
                "before trying again",
            )
            e.retry_after = max(1, int(q[0] + self.window - t) + 1)
            raise e

    def failed(self, client: str) -> None:
        if len(self._failures) > 100_000:  # a flood of addresses: start over, stay bounded
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())


class HandleApi:
    def __init__(self, reg: Registrar) -> None:
        self.reg = reg
        self.records = RecordIndex(reg.log)
        self.limiter = FailureLimiter()
        self._custody_key: SigningKey | None = None

    def custody_key(self) -> SigningKey:
        if self._custody_key is None:
            path = self.reg.config.custody_key_file
            if path is None or not path.exists():
                raise AuthorityError(
                    "this registrar has no custodial key, so it cannot write for Handle "
                    "clients: write one (cityid keygen), name it custody_key in "
                    "registrar.toml, and have the prefix owner grant it custody "
                    "(docs/handle.md)",
                    rule="no-custodial-key",
                )
            self._custody_key = SigningKey.read(path)
        return self._custody_key

    async def record(self, ident: Identifier) -> Record | None:
        for attempt in (1, 2):
            await asyncio.to_thread(self.records.catch_up)  # the first one reads the whole log
            try:
                return self.records.record(self.reg.namespace, ident)
            except LedgerError as e:
                # Written since the catch-up began, its batch maybe still on its way: once
                # more, then Handle's "server too busy" (503, responseCode 3).
                if e.rule != "not-yet-logged" or attempt == 2:
                    raise
        raise AssertionError("unreachable")


HANDLE_API_KEY: web.AppKey[HandleApi] = web.AppKey("handle_api", HandleApi)


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/json", headers=headers
    )


async def get_handle(request: web.Request) -> web.Response:
    """The current record, as the resolver answers it, from this registrar's own log."""
    api = request.app[HANDLE_API_KEY]
    asked = request.match_info["id"]
    ident = parse_identifier(asked)
    record = await api.record(ident)
    if record is None:
        version, _ = api.reg.version(ident)
        why = "was deleted" if version else "is not registered"
        raise NotFoundError(f"{ident} {why}", rule="deleted" if version else "not-found")
    body = record.to_json(asked.strip())
    return _json(200, body, ETag=f'"v{api.reg.version(ident)[0]}"')


async def _authenticated(request: web.Request, api: HandleApi) -> ha.Credentials:
    client = request.remote or "?"
    api.limiter.check(client)
    try:
        creds = ha.parse_basic(request.headers["Authorization"])
        try:
            admin = parse_identifier(creds.handle)
        except CityIdError:
            admin = None
        record = await api.record(admin) if admin is not None else None
        # PBKDF2 is slow on purpose: off the event loop, which goes on serving.
        await asyncio.to_thread(ha.authenticate, creds, record)
    except SignatureError:
        api.limiter.failed(client)
        raise
    return creds


async def _submit(api: HandleApi, creds: ha.Credentials, op: Operation) -> int:
    signed = SignedOperation.sign(Custodial(creds.admin, op), api.custody_key())  # type: ignore[arg-type]
    receipts = await api.reg.submit([signed.encode()], [signed])
    return receipts[0].index


def _indexes(request: web.Request) -> set[int]:
    out = set()
    for v in request.query.getall("index", []):
        if not v.isdigit() or len(v) > 10:
            raise OperationError(f"index {v!r} must be a positive integer", rule="index")
        out.add(int(v))
    return out


def _flag(request: web.Request, name: str, default: bool) -> bool:
    v = request.query.get(name)
    return default if v is None else v.lower() not in ("false", "0")


async def _target(request: web.Request, api: HandleApi) -> Identifier:
    asked = request.match_info["id"]
    if not _flag(request, "mintNewSuffix", False):
        return parse_identifier(asked)
    prefix = parse_prefix(asked.rstrip("/"))
    n = api.reg.namespace.next_number(prefix, MINT_LETTERS, MINT_WIDTH)
    return Identifier(prefix, mint_suffix(MINT_LETTERS, n, MINT_WIDTH))


async def put_handle(request: web.Request) -> web.Response:
    api = request.app[HANDLE_API_KEY]
    creds = await _authenticated(request, api)
    ident = await _target(request, api)
    overwrite = _flag(request, "overwrite", True)
    indexes = _indexes(request)
    t = now()
    sent = await read_values(request, t)
    version, alive = api.reg.version(ident)
    where = str(ident)
    try:
        if ident.is_prefix_record:
            raise OperationError(
                "a prefix record is written by its parent's signed operations, not by PUT",
                rule="use-delegate",
            )
        prefix_record = await api.record(ident.prefix.record_id)
        if alive:
            current = await api.record(ident)
            assert current is not None
            record = _merged(current, sent, indexes, overwrite) if indexes else sent
            if not indexes and not overwrite:
                raise ConflictError(f"{ident} already exists", rule="already-exists")
            bits = ha.change_bits(current, record)
            ha.require(creds.admin, (current, prefix_record), bits, where)
            op: Operation = Update(ident, version, record, t)
        else:
            where = str(ident.prefix.record_id)
            ha.require(creds.admin, (prefix_record,), [ha.ADD_HANDLE], where)
            record = ha.with_creator_admin(sent, creds.admin, t)
            op = Mint(ident.prefix, (MintItem(ident.suffix, version, record),), t)
        index = await _submit(api, creds, op)
    except AuthorityError as e:
        _count(request, api, e)
        raise
    status = 200 if alive else 201
    return _json(
        status,
        {
            "responseCode": 1,
            "handle": _echo(request, ident),
            "version": version + 1,
            "index": index,
        },
        ETag=f'"v{version + 1}"',
    )


def _count(request: web.Request, api: HandleApi, e: AuthorityError) -> None:
    # An admin probing for what it may do fails like a wrong secret; a missing grant is
    # the prefix owner's to fix, not the client's fault.
    if e.rule == "insufficient-permissions":
        api.limiter.failed(request.remote or "?")


async def read_values(request: web.Request, timestamp: int) -> Record:
    """The Handle values a PUT carries (a ``values`` array, or ``{"values": [...]}``)."""
    async with request.app[EDGE_KEY].body(request, MAX_PUT_BODY) as body:
        raw = await body.read()
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"body is not JSON: {e}", rule="json") from e
    return values_from_json(payload, timestamp=timestamp)


def _echo(request: web.Request, ident: Identifier) -> str:
    # The handle as asked (Handle clients compare it), unless the registrar named it.
    return str(ident) if _flag(request, "mintNewSuffix", False) else request.match_info["id"]


def _merged(current: Record, sent: Record, indexes: set[int], overwrite: bool) -> Record:
    """``current`` with the values of ``sent`` at ``indexes`` written over it."""
    have = {v.index: v for v in current.values}
    for v in sent.values:
        if v.index not in indexes:
            continue
        if v.index in have and not overwrite:
            raise ConflictError(f"value {v.index} already exists", rule="value-exists")
        have[v.index] = v
    return Record(tuple(sorted(have.values(), key=_by_index)))


def _by_index(v: Value) -> int:
    return v.index


async def delete_handle(request: web.Request) -> web.Response:
    api = request.app[HANDLE_API_KEY]
    creds = await _authenticated(request, api)
    ident = parse_identifier(request.match_info["id"])
    indexes = _indexes(request)
    version, alive = api.reg.version(ident)
    current = await api.record(ident) if alive else None
    if current is None:
        raise NotFoundError(
            f"{ident} {'was deleted' if version else 'is not registered'}",
            rule="deleted" if version else "not-found",
        )
    records = (current, await api.record(ident.prefix.record_id))
    try:
        if indexes:
            gone = {v.index for v in current.values} & indexes
            if gone != indexes:
                missing = ", ".join(map(str, sorted(indexes - gone)))
                # Handle's answer for a value that is not there: 400 with responseCode 200.
                return _json(
                    400,
                    {
                        "responseCode": 200,
                        "handle": request.match_info["id"],
                        "message": f"{ident} has no value at index {missing}",
                        "rule": "value-not-found",
                    },
                )
            record = Record(tuple(v for v in current.values if v.index not in indexes))
            ha.require(creds.admin, records, ha.change_bits(current, record), str(ident))
            op: Operation = Update(ident, version, record, now())
        else:
            ha.require(creds.admin, records, [ha.DELETE_HANDLE], str(ident))
            op = Delete(ident, version, now())
        index = await _submit(api, creds, op)
    except AuthorityError as e:
        _count(request, api, e)
        raise
    return _json(200, {"responseCode": 1, "handle": request.match_info["id"], "index": index})


def announce(app: web.Application) -> dict[str, str]:
    """The custodial key, for ``GET /`` (what a prefix owner grants custody to)."""
    try:
        return {"custody_key": str(app[HANDLE_API_KEY].custody_key().verifier)}
    except AuthorityError:
        return {}


def add_routes(app: web.Application, reg: Registrar) -> None:
    app[HANDLE_API_KEY] = HandleApi(reg)
    app.router.add_get("/api/handles/{id:.+}", get_handle)


__all__ = ["HANDLE_API_KEY", "FailureLimiter", "add_routes", "delete_handle", "put_handle"]
