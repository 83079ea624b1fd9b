"""The resolver's HTTP application (aiohttp): doi.org-style redirects and the Handle REST API.

Every identifier route goes through :class:`~resolver.answers.Resolver`
(parse -> lookup -> encode); the lean fast path (:mod:`resolver.fastpath`) answers
plain ``GET /{id}`` from the same resolver and hands everything else to this app.

Routes:

* ``GET /{id}``: 302 to the first URL value; ``Accept: application/json``
  gets the record in the Handle JSON shape; a record without a URL, or
  ``?noredirect``, gets the HTML landing page (JSON if asked). 404 unknown,
  400 malformed (naming the rule; a minted-looking suffix whose check
  character is wrong says so), 410 deleted (the tombstone: the log leaf that
  deleted it, with its proof).
  ``?urlappend=TEXT`` appends TEXT to the redirect's URL, as the Handle proxy does
  (only while the URL stays on its site). A record without URL whose HS_ALIAS names a
  handle: 301 to that handle on this resolver.
* ``GET /api/handles/{id}``: the Handle REST answer, with ``type``, ``index``,
  ``pretty``, ``callback`` (JSONP) and ``auth`` (bypass the cache).
* ``GET /api/proofs/{id}``: the ``c2sp.org/tlog-proof`` of the leaf that set
  the current record, the leaf itself in its ``extra`` line.
* ``GET /metrics`` (Prometheus text), ``GET /healthz``, ``GET /``.
* ``OPTIONS`` anywhere: CORS preflight. Any other method: 405; the resolver is
  read-only, and a write is never redirected.

Every answer is ``HEAD``-able, carries ``Access-Control-Allow-Origin: *``,
and successful ones an ``ETag`` (version and representation) and
``Cache-Control: max-age`` (the smallest TTL of the values); ``If-None-Match``
gets 304. Typed errors become answers in one place,
:func:`resolver.encode.problem`, through :func:`cityid.handle.error_body`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from cityid.errors import CityIdError
from cityid.handle import INVALID_REQUEST, error_body
from cityid.httpedge import use_server_name
from cityid.identifiers import Prefix

from . import assets, explorer, favicon, i18n, openapi, scanner, search_api, search_pages
from .answers import Resolver, ServeOptions, log
from .encode import NO_STORE, RECORD_JSON, choose, dumps, location, page_headers
from .layout import StoreError
from .metrics import ROUTES, Metrics
from .reply import Reply

# -- aiohttp ------------------------------------------------------------------------------

RESOLVER_KEY: web.AppKey[Resolver] = web.AppKey("resolver", Resolver)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOW = "GET, HEAD, OPTIONS"


def _route(request: web.Request) -> str:
    name = (request.match_info.route.name or "").partition("-")[0]  # search-*: "search"
    return name if name in ROUTES else "other"


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Method policy, CORS preflight, metrics and the last line of defence."""
    resolver = request.app[RESOLVER_KEY]
    route = _route(request)
    if request.method == "OPTIONS":
        resp: web.StreamResponse = web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": ALLOW,
                "Access-Control-Allow-Headers": "Accept, If-None-Match, Content-Type",
                "Access-Control-Max-Age": "86400",
                "Allow": ALLOW,
            },
        )
    elif request.method not in ("GET", "HEAD"):
        # Read-only: writes go to the registrar, and are never redirected there. HANDLE.NET
        # answers a method it does not serve with 405 and responseCode 4 (protocol error).
        body = {
            "responseCode": INVALID_REQUEST,
            "message": f"{request.method} is not allowed: the resolver is read-only; write "
            "through the registrar's /api/handles",
            "rule": "read-only",
        }
        resp = web.Response(
            status=405,
            body=dumps(body),
            content_type="application/json",
            headers={"Allow": ALLOW, "Access-Control-Allow-Origin": "*"},
        )
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = web.Response(
                status=e.status,
                body=dumps({"responseCode": INVALID_REQUEST, "message": e.reason, "rule": "http"}),
                content_type="application/json",
                headers={"Access-Control-Allow-Origin": "*"},
            )
        except Exception:
            log.exception("unexpected error answering %s", request.path_qs[:200])
            status, err = error_body(CityIdError("internal error", rule="internal"))
            resp = web.Response(status=status, body=dumps(err), content_type="application/json")
    resolver.metrics.request(route, resp.status)
    return resp


async def get_id(request: web.Request) -> web.StreamResponse:
    resolver = request.app[RESOLVER_KEY]
    moved = await prefix_page(request)
    if moved is not None:
        return moved
    lang, _ = request_lang(request)
    rep = choose(request.headers.get("Accept"), "noredirect" in request.query, lang)
    resp = assets.respond(await resolver.answer(request.match_info["id"], rep), request)
    tail = request.query.get("urlappend")
    if tail and resp.status == 302:
        # The Handle proxy's ?urlappend=: the text goes after the URL, as long as it stays
        # on the same site (an "@evil.example" would otherwise make the host a user name).
        target = location(resp.headers["Location"] + tail)
        if urlsplit(target)[:2] == urlsplit(resp.headers["Location"])[:2]:
            resp.headers["Location"] = target
            resp.headers["Cache-Control"] = NO_STORE
            resp.headers.popall("ETag", None)
    return resp


async def get_handle(request: web.Request) -> web.Response:
    q = request.query
    reply = await request.app[RESOLVER_KEY].handle_api(
        request.match_info["id"],
        q.getall("type", []),
        q.getall("index", []),
        pretty="pretty" in q and q.get("pretty", "").lower() not in ("false", "0"),
        callback=q.get("callback", ""),
        auth="auth" in q and q.get("auth", "").lower() not in ("false", "0"),
    )
    return assets.respond(reply, request)


async def get_proof(request: web.Request) -> web.Response:
    reply = await request.app[RESOLVER_KEY].proof(request.match_info["id"])
    return assets.respond(reply, request)


async def healthz(request: web.Request) -> web.Response:
    status, body = await request.app[RESOLVER_KEY].health()
    return web.Response(
        status=status,
        body=dumps(body),
        content_type="application/json",
        headers={"Cache-Control": NO_STORE, "Access-Control-Allow-Origin": "*"},
    )


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[RESOLVER_KEY].prometheus()
    return web.Response(
        body=body,
        headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
            "Cache-Control": NO_STORE,
        },
    )


async def index(request: web.Request) -> web.Response:
    st = await request.app[RESOLVER_KEY].status()
    if choose(request.headers.get("Accept"), True) == RECORD_JSON:
        body = dumps({"service": "cityid resolver", **st})
        return web.Response(body=body, content_type="application/json")
    lang, _ = request_lang(request)
    page = await search_pages.overview(request.app[RESOLVER_KEY], st, lang)
    return web.Response(body=page, headers=dict(page_headers(choose(None, True, lang))))


def request_lang(request: web.Request) -> tuple[str, bool]:
    """The language of the page for ``request``: its ``?lang=``, else its Accept-Language."""
    return i18n.request_lang(request.query.get("lang"), request.headers.get("Accept-Language"))


#: Crawlers may read pages, not the APIs (each identifier's JSON and proof is a request).
ROBOTS = b"User-agent: *\nDisallow: /api/\nDisallow: /metrics\n"


def _fixed(body: bytes, content_type: str) -> Reply:
    return assets.fixed_reply(body, content_type, cache_control="public, max-age=86400")


async def prefix_page(request: web.Request) -> web.StreamResponse | None:
    """``/P`` for a prefix ``P`` this resolver knows: to its record's page, ``/0.NA/P``
    (what the explorer's search does with a bare prefix); None for anything else."""
    asked = request.match_info["id"].strip()
    if "/" in asked:
        return None
    try:
        prefix = Prefix.parse(asked)
    except CityIdError:
        return None
    try:
        known = await request.app[RESOLVER_KEY].store.lookup_prefix(prefix)
    except StoreError:
        return None
    if known is None:
        return None
    html = choose(request.headers.get("Accept"), True) != RECORD_JSON
    where = f"/{prefix.record_id}" + ("?noredirect" if html else "")
    return web.Response(
        status=302, headers={"Location": where, "Cache-Control": "max-age=300", "Vary": "Accept"}
    )


def make_app(resolver: Resolver) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=1024)
    app[RESOLVER_KEY] = resolver
    use_server_name()  # as the fast path's pre-encoded heads say
    app[explorer.PUBLIC_URL_KEY] = resolver.base_url
    r = app.router
    r.add_get("/", index, name="index")
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get("/favicon.ico", assets.handler(_fixed(favicon.ico(), "image/x-icon")))
    r.add_get("/robots.txt", assets.handler(_fixed(ROBOTS, "text/plain; charset=utf-8")))
    # [\s\S], not '.': an identifier with a line break (%0A) is still answered (400, or
    # stripped like other surrounding white space), not left unrouted (a bare 404).
    r.add_get(r"/api/handles/{id:[\s\S]+}", get_handle, name="handles")
    r.add_get(r"/api/proofs/{id:[\s\S]+}", get_proof, name="proofs")
    # The application's own pages are single path segments: no identifier is (it has a slash).
    explorer.add_routes(r, resolver.store, resolver.status)
    openapi.add_routes(r)
    scanner.add_routes(r)
    search_api.add_routes(app, resolver)
    search_pages.add_routes(app, resolver)
    r.add_get(r"/{id:[\s\S]+}", get_id, name="resolve")
    # Other methods reach the middleware (405 or the CORS preflight) on every path.
    r.add_route("*", "/{tail:.*}", _unreachable)
    return app


async def _unreachable(request: web.Request) -> web.Response:  # pragma: no cover
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "OPTIONS"])


__all__ = ["Metrics", "Resolver", "ServeOptions", "make_app"]
