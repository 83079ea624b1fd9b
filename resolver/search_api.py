"""Discovery over HTTP: search, Handle's prefix listing, B2HANDLE's reverse lookup, prefixes.

Routes (docs/discovery.md has the parameters and answers):

* ``GET /api/search``: ``q`` (words, ``"quoted words"``, ``*`` wildcards), ``type``,
  ``prefix`` (a subtree), ``near=LAT,LON&radius=KM``, ``bbox=S,W,N,E``, ``limit`` (at
  most 1000), ``cursor``, ``records=true``.
* ``GET /api/handles?prefix=P&page=&pageSize=``: Handle.Net's listing, in its shape.
* ``GET /hrls/handles?URL=...``, ``GET /hrls/handles/{prefix}?...``, ``GET /hrls/ping``:
  the B2HANDLE reverse-lookup servlet that pyhandle's ``search_handle`` calls.
* ``GET /api/prefixes/{P}``: a prefix's children, counts, log, status and extent.

Queries read the index (:mod:`resolver.search_index`) read-only, in worker threads
(one connection each), every one under a deadline. Bad input is a typed error
(400 naming the rule); an overrun deadline is 503 with ``Retry-After``, counted in
``/metrics`` (``cityid_resolver_search_deadline_total``). Errors become answers in
the resolver's one place, :func:`resolver.encode.encode_problem`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from cityid.errors import CityIdError, NotFoundError

from . import assets, search_index
from .answers import Resolver
from .encode import JSON, NO_STORE, RECORD_JSON, dumps, encode_problem
from .reply import Reply
from .search_index import (
    MAX_LIMIT,
    Query,
    QueryError,
    SearchBusy,
    decode_trusted,
    parse_limit,
    parse_prefix,
    term,
)
from .search_reader import Searcher

MAX_DEPTH = 10_000  # page * pageSize a page-numbered listing may reach; deeper: use a cursor
#: What a client of B2HANDLE's servlet may search by (any value type works the same way).
HRLS_RESERVED = {"limit", "page", "retrieverecords"}


def _reply(body: dict[str, Any] | list[Any], status: int = 200) -> Reply:
    data = dumps(body)  # type: ignore[arg-type]
    head = [("Content-Type", JSON), ("Cache-Control", NO_STORE),
            ("Access-Control-Allow-Origin", "*")]  # fmt: skip
    return Reply.make(status, head, data)


def _values(record: bytes) -> list[dict[str, Any]]:
    return [v.to_json() for v in decode_trusted(record).values]


def handler(
    answer: Callable[[web.Request, Searcher], Awaitable[Reply]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A route whose typed errors become answers (400 naming the rule, 503 + Retry-After)."""

    async def handle(request: web.Request) -> web.Response:
        try:
            reply = await answer(request, request.app[RESOLVER_KEY].searcher)
        except CityIdError as e:
            if isinstance(e, SearchBusy):
                request.app[RESOLVER_KEY].metrics.inc("search_deadline")
            reply = encode_problem(e, request.path_qs, RECORD_JSON)
        return assets.respond(reply, request)

    return handle


# -- /api/search ---------------------------------------------------------------------------


async def search(request: web.Request, searcher: Searcher) -> Reply:
    args = request.query
    q = search_index.parse_query(args)
    records = search_index.flag(args, "records")
    hits, cursor = await searcher.run(search_index.search, q)
    results = [
        {"handle": h.handle, **({"values": _values(h.record)} if records else {})} for h in hits
    ]
    body: dict[str, Any] = {"count": len(results), "results": results, "next": cursor or None}
    if cursor:
        rest = [(k, v) for k, v in args.items() if k != "cursor"]
        body["next_url"] = f"/api/search?{urlencode([*rest, ('cursor', cursor)])}"
    return _reply(body)


# -- Handle.Net's listing ------------------------------------------------------------------


def _page_args(args: MultiMapping[str], size_name: str, default: int) -> tuple[int, int]:
    size = parse_limit(args.get(size_name), default, size_name)
    raw = args.get("page", "0")
    if not raw.isdigit() or len(raw) > 9:
        raise QueryError(f"page={raw[:20]!r} is not a whole number", rule="bad-page")
    page = int(raw)
    if page * size > MAX_DEPTH:
        raise QueryError(
            f"page {page} of {size} is past the first {MAX_DEPTH:,} results: search with "
            "/api/search and its cursor to go further",
            rule="page-too-deep",
        )
    return page, size


async def list_handles(request: web.Request, searcher: Searcher) -> Reply:
    args = request.query
    if "prefix" not in args:
        raise QueryError("give prefix=P to list the identifiers under P", rule="no-prefix")
    prefix = args["prefix"]
    # Handle.Net names a prefix by its handle, 0.NA/P; plain P is taken too.
    bare = parse_prefix(prefix[5:] if prefix.upper().startswith("0.NA/") else prefix)
    page, size = _page_args(args, "pageSize", MAX_LIMIT)
    total, handles = await searcher.run(search_index.page, bare, page, size)
    return _reply({"responseCode": 1, "prefix": bare, "totalCount": str(total), "page": page,
                   "pageSize": size, "handles": handles})  # fmt: skip


# -- B2HANDLE reverse lookup ----------------------------------------------------------------


def hrls_query(args: MultiMapping[str], prefix: str = "") -> tuple[Query, int, int, bool]:
    """A reverse lookup: every parameter but ``limit``, ``page`` and ``retrieverecords`` is
    TYPE=pattern (``*`` wildcards, whole values, any case), all of them to match. Returns the
    query, how many hits to skip, how many to give, and whether with their records."""
    fields = {}
    for k, v in args.items():
        if k.lower() in HRLS_RESERVED:
            continue
        vtype = search_index.parse_types([k])[0]
        if vtype in fields:
            raise QueryError(f"{vtype} is given twice", rule="duplicate-key")
        fields[vtype] = term(search_index.bounded(vtype, v, search_index.MAX_QUERY), whole=True)
    if not fields:
        raise QueryError("give at least one TYPE=pattern, e.g. URL=*example.org*",
                         rule="empty-query")  # fmt: skip
    page, size = _page_args(args, "limit", MAX_LIMIT)
    exact = parse_prefix(prefix) if prefix else ""
    q = Query(fields=fields, exact_prefix=exact, limit=min(MAX_LIMIT, (page + 1) * size))
    return q, page * size, size, search_index.flag(args, "retrieverecords")


async def _hrls(request: web.Request, searcher: Searcher, prefix: str) -> Reply:
    q, skip, size, records = hrls_query(request.query, prefix)
    hits: list[search_index.Hit] = []
    after = ""
    # A page deep in the results is walked to, MAX_LIMIT hits at a time (MAX_DEPTH bounds it).
    while len(hits) < skip + size:
        got, after = await searcher.run(search_index.search, dataclasses.replace(q, after=after))
        hits += got
        if not after:
            break
    chosen = hits[skip : skip + size]
    if records:
        return _reply({h.handle: [{"type": v["type"], "data": v["data"]["value"]}
                                  for v in _values(h.record)] for h in chosen})  # fmt: skip
    return _reply([h.handle for h in chosen])


async def hrls_search(request: web.Request, searcher: Searcher) -> Reply:
    return await _hrls(request, searcher, "")


async def hrls_search_prefix(request: web.Request, searcher: Searcher) -> Reply:
    return await _hrls(request, searcher, request.match_info["prefix"])


async def hrls_ping(request: web.Request) -> web.Response:
    return web.Response(text="OK", headers={"Access-Control-Allow-Origin": "*"})


# -- /api/prefixes/{P} ----------------------------------------------------------------------


async def prefix_info(request: web.Request, searcher: Searcher) -> Reply:
    prefix = parse_prefix(request.match_info["prefix"])
    info = await searcher.run(search_index.prefix_summary, prefix)
    if info is None:
        raise NotFoundError(f"prefix {prefix} is not delegated here", rule="not-found")
    resolver = request.app[RESOLVER_KEY]
    logs = {entry.get("origin"): entry for entry in (await resolver.status()).get("logs", [])}
    log = logs.get(info.get("log"))
    if log is not None:
        info["log_status"] = {k: log.get(k) for k in ("state", "size", "reason") if k in log}
    info["search"] = f"/api/search?prefix={prefix}"
    info["listing"] = f"/api/handles?prefix={prefix}"
    return _reply(info)


# -- wiring ---------------------------------------------------------------------------------

RESOLVER_KEY: web.AppKey[Resolver] = web.AppKey("search-resolver", Resolver)


def add_routes(app: web.Application, resolver: Resolver) -> None:
    """The discovery routes, before the application's catch-all identifier route."""
    app[RESOLVER_KEY] = resolver
    r = app.router
    r.add_get("/api/search", handler(search), name="search")
    r.add_get("/api/handles", handler(list_handles), name="search-listing")
    r.add_get("/api/prefixes/{prefix}", handler(prefix_info), name="search-prefixes")
    r.add_get("/hrls/ping", hrls_ping, name="search-ping")
    r.add_get("/hrls/handles", handler(hrls_search), name="search-hrls")
    r.add_get("/hrls/handles/{prefix}", handler(hrls_search_prefix), name="search-hrls-prefix")
