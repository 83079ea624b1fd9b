"""The discovery pages: the national overview (home), search results, nearby identifiers.

* ``GET /`` (HTML): every delegated city on an offline SVG map, placed from the bundled
  GB/T 2260 coordinates (``cityid/data/adcodes.csv``) with its code and identifier
  count; a search box; the recent batches; each log's verification status; a link to
  apply for a code.
* ``GET /search``: ``/api/search``'s parameters; a list of hits and a map of those
  with a GEO point or GEO_BOX; bad input is the page again, naming the rule (400).
* The landing page of an identifier with a GEO point lists what is registered near it.

Markup is plain (``.card``, tables, ``form.search``, ``svg.map``) so the resolver's
page styles apply. Everything is read from the search index and the status sync
keeps in Redis; nothing here writes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from cityid import demo
from cityid.errors import CityIdError
from cityid.records import Record

from . import explorer, i18n, maps, pages, search_index
from .encode import choose, page_headers
from .maps import Box, Pin
from .search_index import Circle, Query, QueryError
from .search_reader import Searcher
from .store import Entry

log = logging.getLogger("cityid.resolver.search")

COUNTRY = "MA.156"  # the prefix whose four-digit children are GB/T 2260 cities
CHINA = Box(17.0, 72.5, 54.5, 135.5)  # the overview map's view
MAP_WIDTH = 640  # px: the SVG scales down to the page (svg.map's max-width)
NEARBY_KM = 10.0
NEARBY = 10  # the nearest this many within NEARBY_KM
NEARBY_SCAN = 500  # candidates ranked by distance at most
RECENT = 8  # batches on the overview
PAGE_LIMIT = 25  # hits on a page of /search unless limit= says


@functools.cache
def city_places() -> dict[str, tuple[str, float, float]]:
    """Four-digit city node -> (name, lat, lon) from the bundled GB/T 2260 table."""
    rows = demo.divisions()
    out: dict[str, tuple[str, float, float]] = {}
    for city in demo.cities(rows):
        centre = demo._centre(city, rows)  # the city's point, else its districts' mean
        if centre is not None:
            out[city.code[:4]] = (city.name, *centre)
    return out


def _first_text(record: Record, *types: str) -> str:
    for t in types:
        v = record.first(t)
        if v is not None and isinstance(v.data, str):
            return v.data
    return ""


def _link(handle: str) -> str:
    return f"/{quote(handle, safe='/.')}?noredirect"


# -- the national overview -------------------------------------------------------------------


def overview_body(
    cities: Sequence[tuple[str, int]] | None,
    logs: Sequence[Mapping[str, Any]],
    redis_up: bool,
    batches: Sequence[tuple[str, Any]],
    apply_url: str,
    note: str = "",
) -> str:
    """The home page's body. ``cities``: (prefix, identifiers) of every delegated prefix, or
    None without an index; ``batches``: (origin, Batch), newest first."""
    places = city_places()
    pins: list[Pin] = []
    rows: list[str] = []  # every delegated prefix
    busy: list[str] = []  # those holding identifiers
    total = 0
    # A city's count on the map is its subtree's: its departments hold its identifiers.
    subtree = dict(cities or ())
    for prefix, count in cities or ():
        parent = prefix.rpartition(".")[0]
        while parent:
            if parent in subtree:
                subtree[parent] += count
            parent = parent.rpartition(".")[0]
    for prefix, count in cities or ():
        total += count
        node = prefix.removeprefix(COUNTRY + ".")
        place = places.get(node) if prefix.startswith(COUNTRY + ".") else None
        name = place[0] if place else ""
        if place is not None:
            # Labelled when it holds identifiers: a province's cities would overlap otherwise
            # (every pin has them in its title, and the table below lists them all).
            held = subtree[prefix]
            label = f"{node} · {held:,}" if held else ""
            pins.append(Pin(place[1], place[2], label, _link(f"0.NA/{prefix}"),
                            f"{node} {name}: {held:,} identifiers"))  # fmt: skip
        search = "/search?" + urlencode({"prefix": prefix})
        rows.append(
            f'<tr><td class=mono><a href="{escape(_link(f"0.NA/{prefix}"))}">{escape(prefix)}'
            f"</a></td><td>{escape(name)}</td><td class=n>{count:,}</td>"
            f'<td><a href="{escape(search)}">search</a></td></tr>'
        )
        if count:
            busy.append(rows[-1])
    apply = (f'<a href="{escape(apply_url)}">Apply for a code</a>' if apply_url
             else "Apply for a code at the root registrar's <code>/apply</code>")  # fmt: skip
    head = (
        "<h1>cityid</h1>"
        f"<p class=sub>{len(rows):,} prefixes delegated, {total:,} identifiers. {apply}.</p>"
        '<form class=search action="/search" method=get role=search>'
        '<input name=q aria-label="search" placeholder="words, https://example.org/*, ...">'
        "<button>Search</button></form>"
    )
    if cities is None:
        middle = f"<div class=card><p class=sub>{escape(note or 'No search index.')}</p></div>"
        table = ""
    else:
        svg = maps.pins_svg(pins, CHINA, label="delegated cities", width=MAP_WIDTH)
        th = "<tr><th>prefix</th><th>name</th><th>identifiers</th><th></th></tr>"
        middle = f"<div class=card id=overview-map>{svg}</div>"
        table = (
            f"<h2>Publishing</h2><div class=card id=publishing><table>{th}{''.join(busy)}</table>"
            f"<details><summary>All {len(rows):,} delegated prefixes</summary>"
            f"<table>{th}{''.join(rows)}</table></details></div>"
        )
    api = (
        "<p class=sub>API: <code>/PREFIX/SUFFIX</code>, <code>/api/handles/ID</code>, "
        '<code>/api/search</code>, <code>/api/prefixes/P</code>: <a href="/openapi.json">'
        "openapi.json</a>.</p>"
    )
    return head + middle + _logs(logs, redis_up) + _batches(batches) + table + api


def _batches(batches: Sequence[tuple[str, Any]]) -> str:
    rows = []
    for origin, b in batches:
        sample = "".join(f'<a class=mono href="{escape(_link(i))}">{escape(i)}</a>'
                         for i in b.sample[:1])  # fmt: skip
        rows.append(
            f"<tr><td class=data>{escape(origin)}</td><td class=n>{b.end - b.start:,}</td>"
            f"<td class=data>{sample}</td></tr>"
        )
    if not rows:
        return "<h2>Recent batches</h2><div class=card><p class=sub>None yet.</p></div>"
    return (
        "<h2>Recent batches</h2><div class=card><table><tr><th>log</th><th>entries</th>"
        f"<th>for example</th></tr>{''.join(rows)}</table>"
        '<p><a href="/explorer">All batches in the ledger explorer</a></p></div>'
    )


def _logs(logs: Sequence[Mapping[str, Any]], redis_up: bool) -> str:
    rows = "".join(
        f"<tr><td class=data>{escape(str(lg.get('origin', '')))}</td>"
        f"<td class=n>{escape(str(lg.get('size', '')))}</td>"
        f"<td class={'ok' if lg.get('state') == 'ok' else 'bad'}>"
        f"{escape(str(lg.get('state', '')))}</td>"
        f"<td>{escape(str(lg.get('reason', '')))}</td></tr>"
        for lg in logs
    )
    redis = "<span class=ok>up</span>" if redis_up else "<span class=bad>unreachable</span>"
    return (
        f"<h2>Verification</h2><div class=card id=logs><p>Redis: {redis}</p>"
        "<table><tr><th>log</th><th>size</th><th>state</th><th>reason</th></tr>"
        f"{rows}</table></div>"
    )


async def overview(resolver: Any, st: Mapping[str, Any], lang: str = i18n.EN) -> bytes:
    """The home page, from the index (its cities) and Redis (logs and their batches)."""
    searcher: Searcher = resolver.searcher
    cities: list[tuple[str, int]] | None = None
    note = "This resolver keeps no search index: no map of cities."
    if searcher.enabled:
        try:
            cities = await searcher.run(search_index.delegated)
        except CityIdError as e:
            note = e.message
    summaries, _ = await explorer.log_summaries(resolver.store, resolver.status)
    batches = sorted(((s.origin, b) for s in summaries for b in s.batches),
                     key=lambda ob: -ob[1].applied_at)[:RECENT]  # fmt: skip
    body = overview_body(cities, st.get("logs", []), bool(st.get("redis")), batches,
                         resolver.options.apply_url, note)  # fmt: skip
    return pages.page("cityid: national overview", body, lang, pages.switch_to("/", lang))


# -- search results ----------------------------------------------------------------------------


def results_body(args: Mapping[str, str], hits: Sequence[search_index.Hit], cursor: str,
                 error: str = "") -> str:  # fmt: skip
    q = args.get("q", "")
    form = (
        '<form class=search action="/search" method=get role=search>'
        f'<input name=q aria-label="search" value="{escape(q)}">'
        + "".join(
            f'<input type=hidden name="{escape(k)}" value="{escape(v)}">'
            for k, v in args.items()
            if k not in ("q", "cursor")
        )
        + "<button>Search</button></form>"
    )
    if error:
        return f"<h1>Search</h1>{form}<div class=card><p class=bad>{escape(error)}</p></div>"
    rows: list[str] = []
    pins: list[Pin] = []
    for h in hits:
        record = search_index.decode_trusted(h.record)
        what = _first_text(record, "NAME", "DESC")
        url = _first_text(record, "URL")
        # A list, not a table: a URL needs the whole width of a phone.
        rows.append(
            f'<li><a class=mono href="{escape(_link(h.handle))}">{escape(h.handle)}</a> '
            f"{escape(what)}"
            + (f'<br><small style="overflow-wrap:anywhere">{escape(url)}</small>' if url else "")
            + "</li>"
        )
        for v in record.values:
            box = search_index.extent(v.type, v.data)
            if box is not None:
                lat, lon = (box[0] + box[1]) / 2, (box[2] + box[3]) / 2
                pins.append(Pin(lat, lon, "", _link(h.handle), f"{h.handle} {what}"))
                break
    more = ""
    if cursor:
        nxt = "/search?" + urlencode([*((k, v) for k, v in args.items() if k != "cursor"),
                                      ("cursor", cursor)])  # fmt: skip
        more = f'<p><a rel=next href="{escape(nxt)}">Next page</a></p>'
    found = (f"<p class=sub>{len(rows)} shown{' (more on the next page)' if cursor else ''}."
             "</p>")  # fmt: skip
    table = f"<ol id=hits>{''.join(rows)}</ol>" if rows else "<p class=sub>Nothing found.</p>"
    mapped = (f"<div class=card id=hits-map>{maps.pins_svg(pins, label='hits')}</div>"
              if pins else "")  # fmt: skip
    return f"<h1>Search</h1>{form}{found}{mapped}<div class=card>{table}{more}</div>"


async def search_page(request: web.Request) -> web.Response:
    resolver = request.app[RESOLVER_KEY]
    args = {k: v for k, v in request.query.items() if k != "lang"}  # lang: the page's only
    status = 200
    hits: list[search_index.Hit] = []
    cursor = error = ""
    if args:  # no parameter at all: the empty form
        try:
            q = search_index.parse_query(request.query)
            if "limit" not in args:  # a page a reader scrolls, not an API client's batch
                q = dataclasses.replace(q, limit=PAGE_LIMIT)
            hits, cursor = await resolver.searcher.run(search_index.search, q)
        except QueryError as e:
            error, status = f"{e.message} [rule: {e.rule}]", 400
        except CityIdError as e:
            status = 404 if e.rule == "no-search-index" else 503
            error = f"{e.message} [rule: {e.rule}]"
            if e.rule == "search-deadline":
                resolver.metrics.inc("search_deadline")
    lang, _ = i18n.request_lang(request.query.get("lang"), request.headers.get("Accept-Language"))
    switch = pages.switch_to("/search", lang, *(f"{k}={quote(v, safe='')}"
                                                for k, v in args.items()))  # fmt: skip
    body = pages.page("cityid: search", results_body(args, hits, cursor, error), lang, switch)
    headers = dict(page_headers(choose(None, True, lang)))
    headers["Cache-Control"] = "no-store"
    if status == 503:
        headers["Retry-After"] = "2"
    return web.Response(status=status, body=body, headers=headers)


# -- nearby, on the landing page -----------------------------------------------------------------


async def nearby_html(searcher: Searcher, entry: Entry) -> str:
    """The :data:`NEARBY` identifiers nearest ``entry``'s GEO point within :data:`NEARBY_KM`,
    as a card (of the first :data:`NEARBY_SCAN` in the circle: the index orders by name)."""
    if not searcher.enabled or entry.record is None:
        return ""
    geo = entry.record.first("GEO")
    point = maps.parse_point(geo.data) if geo is not None else None
    if point is None:
        return ""
    q = Query(near=Circle(point[0], point[1], NEARBY_KM), limit=NEARBY_SCAN)
    try:
        hits, _ = await searcher.run(search_index.search, q)
    except CityIdError as e:
        log.debug("nearby %s: %s", entry.ident, e.message)
        return ""
    ranked = []
    for h in hits:
        if h.handle == entry.ident:
            continue
        record = search_index.decode_trusted(h.record)
        km = search_index.distance_km(record, point[0], point[1])
        if km is not None:
            ranked.append((km, h.handle, _first_text(record, "NAME", "DESC")))
    rows = [
        f'<li><a class=mono href="{escape(_link(handle))}">{escape(handle)}</a> '
        f"{escape(what)} <span class=sub>{km:.1f} km</span></li>"
        for km, handle, what in sorted(ranked)[:NEARBY]
    ]
    if not rows:
        return ""
    more = "/search?" + urlencode({"near": f"{point[0]},{point[1]}", "radius": "5"})
    return (
        f"<h2>Nearby</h2><div class=card id=nearby><p class=sub>Within {NEARBY_KM:g} km.</p>"
        f'<ul>{"".join(rows)}</ul><p><a href="{escape(more)}">More around here</a></p></div>'
    )


RESOLVER_KEY: web.AppKey[Any] = web.AppKey("search-pages-resolver", object)


def add_routes(app: web.Application, resolver: Any) -> None:
    app[RESOLVER_KEY] = resolver
    app.router.add_get("/search", search_page, name="search-page")
