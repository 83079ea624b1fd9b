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
from .i18n import t
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
    for vtype in types:
        v = record.first(vtype)
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
    lang: str = i18n.EN,
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
    apply = (f'<a href="{escape(apply_url)}">{t(lang, "disc.apply")}</a>' if apply_url
             else escape(t(lang, "disc.apply_at")))  # fmt: skip
    summary = t(lang, "disc.summary", prefixes=f"{len(rows):,}", ids=f"{total:,}")
    head = (
        f"<h1>{escape(t(lang, 'home.title'))}</h1>"
        f"<p class=sub>{escape(summary)} {apply}</p>" + _form("", lang)
    )
    if cities is None:
        middle = f"<div class=card><p class=sub>{escape(note or 'No search index.')}</p></div>"
        table = ""
    else:
        svg = maps.pins_svg(pins, CHINA, label="delegated cities", width=MAP_WIDTH)
        th = "".join(f"<th>{t(lang, k)}</th>" for k in ("disc.prefix", "disc.name",
                                                         "disc.identifiers"))  # fmt: skip
        th = f"<tr>{th}<th></th></tr>"
        middle = f"<div class=card id=overview-map>{svg}</div>"
        table = (
            f"<h2>{t(lang, 'disc.publishing')}</h2><div class=card id=publishing>"
            f"<table>{th}{''.join(busy)}</table>"
            f"<details><summary>{t(lang, 'disc.all', n=f'{len(rows):,}')}</summary>"
            f"<table>{th}{''.join(rows)}</table></details></div>"
        )
    api = (
        "<p class=sub>API: <code>/PREFIX/SUFFIX</code>, <code>/api/handles/ID</code>, "
        '<code>/api/search</code>, <code>/api/prefixes/P</code>: <a href="/openapi.json">'
        "openapi.json</a>.</p>"
    )
    return head + middle + _logs(logs, redis_up, lang) + _batches(batches, lang) + table + api


def _form(q: str, lang: str, hidden: Mapping[str, str] | None = None) -> str:
    """The search box; ``hidden``: the other parameters of the search it repeats."""
    keep = "".join(f'<input type=hidden name="{escape(k)}" value="{escape(v)}">'
                   for k, v in (hidden or {}).items() if k not in ("q", "cursor"))  # fmt: skip
    return (
        '<form class=search action="/search" method=get role=search>'
        f'<input name=q aria-label="{t(lang, "disc.search")}" value="{escape(q)}" '
        f'placeholder="{escape(t(lang, "disc.placeholder"))}">{keep}'
        f"<input type=hidden name=lang value={lang}>"
        f"<button>{t(lang, 'disc.search')}</button></form>"
    )


def _batches(batches: Sequence[tuple[str, Any]], lang: str) -> str:
    rows = []
    for origin, b in batches:
        sample = "".join(f'<a class=mono href="{escape(_link(i))}">{escape(i)}</a>'
                         for i in b.sample[:1])  # fmt: skip
        rows.append(
            f"<tr><td class=data>{escape(origin)}</td><td class=n>{b.end - b.start:,}</td>"
            f"<td class=data>{sample}</td></tr>"
        )
    h2 = f"<h2>{t(lang, 'disc.batches')}</h2>"
    if not rows:
        return f"{h2}<div class=card><p class=sub>{t(lang, 'disc.none_yet')}</p></div>"
    th = "".join(f"<th>{t(lang, k)}</th>" for k in ("disc.log", "disc.entries", "disc.example"))
    return (
        f"{h2}<div class=card><table><tr>{th}</tr>{''.join(rows)}</table>"
        f'<p><a href="/explorer?lang={lang}">{t(lang, "disc.all_batches")}</a></p></div>'
    )


def _logs(logs: Sequence[Mapping[str, Any]], redis_up: bool, lang: str) -> str:
    rows = "".join(
        f"<tr><td class=data>{escape(str(lg.get('origin', '')))}</td>"
        f"<td class=n>{escape(str(lg.get('size', '')))}</td>"
        f"<td class={'ok' if lg.get('state') == 'ok' else 'bad'}>"
        f"{escape(str(lg.get('state', '')))}</td>"
        f"<td>{escape(str(lg.get('reason', '')))}</td></tr>"
        for lg in logs
    )
    redis = (f"<span class=ok>{t(lang, 'home.up')}</span>" if redis_up
             else f"<span class=bad>{t(lang, 'home.down')}</span>")  # fmt: skip
    th = "".join(f"<th>{t(lang, k)}</th>"
                 for k in ("disc.log", "home.size", "home.state", "home.reason"))  # fmt: skip
    return (
        f"<h2>{t(lang, 'disc.verification')}</h2><div class=card id=logs>"
        f"<p>{t(lang, 'home.redis')}: {redis}</p><table><tr>{th}</tr>{rows}</table></div>"
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
                         resolver.options.apply_url, note, lang)  # fmt: skip
    return pages.page(t(lang, "home.title"), body, lang, pages.switch_to("/", lang))


# -- search results ----------------------------------------------------------------------------


def results_body(args: Mapping[str, str], hits: Sequence[search_index.Hit], cursor: str,
                 error: str = "", lang: str = i18n.EN) -> str:  # fmt: skip
    form = _form(args.get("q", ""), lang, args)
    h1 = f"<h1>{t(lang, 'disc.search')}</h1>"
    if error:
        return f"{h1}{form}<div class=card><p class=bad>{escape(error)}</p></div>"
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
                                      ("cursor", cursor), ("lang", lang)])  # fmt: skip
        more = f'<p><a rel=next href="{escape(nxt)}">{t(lang, "disc.next")}</a></p>'
    shown = t(lang, "disc.shown", n=len(rows)) + (t(lang, "disc.more") if cursor else "")
    found = f"<p class=sub>{escape(shown)}</p>"
    table = (f"<ol id=hits>{''.join(rows)}</ol>" if rows
             else f"<p class=sub>{t(lang, 'disc.nothing')}</p>")  # fmt: skip
    mapped = (f"<div class=card id=hits-map>{maps.pins_svg(pins, label='hits')}</div>"
              if pins else "")  # fmt: skip
    return f"{h1}{form}{found}{mapped}<div class=card>{table}{more}</div>"


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
    body = pages.page(t(lang, "disc.search"), results_body(args, hits, cursor, error, lang),
                      lang, switch)  # fmt: skip
    headers = dict(page_headers(choose(None, True, lang)))
    headers["Cache-Control"] = "no-store"
    if status == 503:
        headers["Retry-After"] = "2"
    return web.Response(status=status, body=body, headers=headers)


# -- nearby, on the landing page -----------------------------------------------------------------


async def nearby_html(searcher: Searcher, entry: Entry, lang: str = i18n.EN) -> str:
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
    more = "/search?" + urlencode({"near": f"{point[0]},{point[1]}", "radius": "5",
                                   "lang": lang})  # fmt: skip
    return (
        f"<h2>{t(lang, 'disc.nearby')}</h2><div class=card id=nearby>"
        f"<p class=sub>{t(lang, 'disc.within', km=f'{NEARBY_KM:g}')}</p>"
        f'<ul>{"".join(rows)}</ul><p><a href="{escape(more)}">{t(lang, "disc.more_here")}</a>'
        "</p></div>"
    )


RESOLVER_KEY: web.AppKey[Any] = web.AppKey("search-pages-resolver", object)


def add_routes(app: web.Application, resolver: Any) -> None:
    app[RESOLVER_KEY] = resolver
    app.router.add_get("/search", search_page, name="search-page")
