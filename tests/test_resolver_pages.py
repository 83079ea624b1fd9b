"""The people's pages over real sockets: the landing page's map and the ledger explorer.

The map is checked by geometry (the point's marker lies inside the city's
extent where the projection puts it), the explorer by what sync wrote to a real
Valkey, both through the fast path's hand-off and through aiohttp alone.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from test_resolver_http import LOG_KEY, ORIGIN, PFX, ROOT, TS, Served, _note, _record, _serve

from cityid.errors import RecordError
from cityid.records import Record, Value
from resolver.maps import Area, Box, Projection, map_svg, parse_box
from resolver.store import Batch, Cursor, IdChange, PrefixChange

CITY = "MA.156.1301"
BOX = "37.45,113.55,38.77,115.5"
BUS = f"{PFX}/BUS-STOP-17"  # GEO 38.04,114.51 (populate)


def _floats(svg: str, tag: str, cls: str) -> dict[str, float]:
    m = re.search(rf'<{tag} class="{cls}"([^>]*)>', svg)
    assert m, f"no <{tag} class={cls}> in the map"
    return {k: float(v) for k, v in re.findall(r'([\w-]+)="(-?[0-9.]+)"', m.group(1))}


# -- the map, as a pure function -------------------------------------------------------------


def test_map_puts_the_point_where_the_projection_says_inside_the_extent() -> None:
    area = Area("Shijiazhuang <b>", Box(37.45, 113.55, 38.77, 115.5), (38.04, 114.51))
    svg = map_svg((38.2, 114.9), area, label='x"y')
    point, extent = _floats(svg, "circle", "point"), _floats(svg, "rect", "extent")
    assert extent["x"] <= point["cx"] <= extent["x"] + extent["width"]
    assert extent["y"] <= point["cy"] <= extent["y"] + extent["height"]
    # The same projection, recomputed: west to east is left to right, north is up.
    width, height = (
        int(_floats(svg, "svg", "map")["width"]),
        int(_floats(svg, "svg", "map")["height"]),
    )
    view = Box(*_view_of(svg))
    pr = Projection(view, width, height)
    assert (point["cx"], point["cy"]) == pr.xy(38.2, 114.9)
    assert "Shijiazhuang &lt;b&gt;" in svg and "<b>" not in svg and "x&quot;y" in svg
    assert "°N" in svg and "°E" in svg and " km</text>" in svg


def _view_of(svg: str) -> tuple[float, float, float, float]:
    # The view is the extent plus the point plus the centre, with margins for the labels.
    area = Area("", Box(37.45, 113.55, 38.77, 115.5), (38.04, 114.51))
    from resolver.maps import _view

    view, _ = _view((38.2, 114.9), area)
    return view.south, view.west, view.north, view.east


def _texts(svg: str) -> list[tuple[dict[str, float], str]]:
    out = []
    for attrs, text in re.findall(r"<text([^>]*)>([^<]*)</text>", svg):
        out.append(({k: float(v) for k, v in re.findall(r'([\w-]+)="(-?[0-9.]+)"', attrs)}, text))
    return out


@pytest.mark.parametrize(
    ("box", "point"),
    [
        (Box(37.45, 113.55, 38.77, 115.5), (38.2, 114.9)),  # Shijiazhuang: wider than tall
        (Box(30.1, 120.0, 30.2, 120.05), (30.15, 120.02)),  # a small, tall district
    ],
)
def test_map_labels_stay_clear_of_the_extent(box: Box, point: tuple[float, float]) -> None:
    """No latitude label under the dashed extent, and the scale bar's above it (issue 16)."""
    svg = map_svg(point, Area("C", box, None))
    extent = _floats(svg, "rect", "extent")
    char = 6.0  # px per character at font-size 10, generously
    for attrs, text in _texts(svg):
        if text.endswith(("°N", "°S")):
            assert attrs["x"] + char * len(text) < extent["x"], (text, attrs, extent)
        elif text.endswith(" km"):
            assert attrs["y"] + 3 < extent["y"], (text, attrs, extent)
            assert attrs["x"] < float(re.search(r'class="scale"[^>]*><line x1="([0-9.]+)"', svg)[1])
        elif text.endswith(("°E", "°W")):
            assert attrs["y"] - 10 > extent["y"] + extent["height"], (text, attrs, extent)


def test_map_without_an_extent_and_outside_it() -> None:
    alone = map_svg((-33.86, 151.21))  # no area: a 0.1° square around the point
    assert 'class="point"' in alone and 'class="extent"' not in alone
    labels = re.findall(r"<text[^>]*>([^<]*)</text>", alone)
    assert any(t.endswith("°S") for t in labels) and any(t.endswith("°E") for t in labels)
    assert not any("-" in t for t in labels), labels  # hemispheres by letter, not sign
    # A point outside its city's extent widens the view: both stay on the map.
    area = Area("C", Box(38.0, 114.0, 38.1, 114.1), None)
    svg = map_svg((39.0, 115.0), area)
    point, extent = _floats(svg, "circle", "point"), _floats(svg, "rect", "extent")
    size = _floats(svg, "svg", "map")
    assert 0 < point["cx"] < size["width"] and 0 < point["cy"] < size["height"]
    assert point["cx"] > extent["x"] + extent["width"] and point["cy"] < extent["y"]


def test_geo_box_values_are_checked_and_canonical() -> None:
    v = Value.make(6, "geo_box", "37.450000,113.55,38.77,115.5", timestamp=TS)
    assert (
        v.type == "GEO_BOX"
        and v.data == BOX
        and parse_box(v.data) == Box(37.45, 113.55, 38.77, 115.5)
    )
    for bad, rule in [
        ("1,2,3", "geo-syntax"),
        ("38.9,113.8,37.5,115.5", "geo-range"),  # south above north
        ("37.5,115.8,38.9,113.5", "geo-range"),  # west east of east
        ("37.5,113.8,91,115.5", "geo-range"),
        ("a,b,c,d", "geo-syntax"),
    ]:
        with pytest.raises(RecordError) as e:
            Value.make(6, "GEO_BOX", bad, timestamp=TS)
        assert e.value.rule == rule, bad


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture(params=[True, False], ids=["fastpath", "aiohttp"])
async def city(request: pytest.FixtureRequest, redis_db: str) -> AsyncIterator[Served]:
    """The served department of test_resolver_http, with its city's prefix record and a
    second checkpoint that sync-style writes remember as a batch."""
    async for s in _serve(redis_db, request.param):
        city_record = _record(
            Value.make(1, "NAME", "Shijiazhuang", timestamp=TS),
            Value.make(2, "GEO", "38.04,114.51", timestamp=TS),
            Value.make(6, "GEO_BOX", BOX, timestamp=TS),
        )
        lamp = _record(Value.make(1, "URL", "https://lamps.example/1", timestamp=TS))
        changes = [
            PrefixChange(CITY, 1, False, ORIGIN, 11, city_record, bytes(32), ORIGIN),
            IdChange(PFX, "LAMP-1", 1, False, ORIGIN, 12, lamp),
        ]
        cursor = Cursor(ORIGIN, 13, ROOT, _note(13), 13, "http://127.0.0.1:9/log",
                        str(LOG_KEY.verifier))  # fmt: skip
        batch = Batch(11, 13, ROOT, time.time(), 1, 1, 0, (f"0.NA/{CITY}", f"{PFX}/LAMP-1"))
        await s.writer.apply(changes, cursor, batch=batch)
        s.resolver.cache.invalidate([BUS])
        yield s


async def test_landing_page_draws_the_point_inside_the_city(city: Served) -> None:
    status, h, page = await city.get(f"/{BUS}?noredirect", Accept="text/html")
    text = page.decode()
    assert status == 200 and "default-src 'none'" in h["Content-Security-Policy"]
    svg = text[
        text.index('<svg class="map"') : text.index("</svg>", text.index('<svg class="map"'))
    ]
    point, extent = _floats(svg, "circle", "point"), _floats(svg, "rect", "extent")
    assert extent["x"] < point["cx"] < extent["x"] + extent["width"]
    assert extent["y"] < point["cy"] < extent["y"] + extent["height"]
    assert "Shijiazhuang" in svg and "inside Shijiazhuang's extent" in text
    assert not re.search(r"<(script|link|img|iframe|object)\b|\bsrc=", text)
    # A record without GEO has no map.
    status, _, page = await city.get(f"/{PFX}/NO-URL", Accept="text/html")
    assert status == 200 and b'class="map"' not in page


async def test_explorer_lists_logs_checkpoints_and_recent_batches(city: Served) -> None:
    status, h, page = await city.get("/explorer")
    text = page.decode()
    assert status == 200 and h["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in h["Content-Security-Policy"]
    assert "<h1>Ledger explorer</h1>" in text
    section = text[text.index(f'data-origin="{ORIGIN}"') :]
    assert "<dd class=size>13</dd>" in section and "witness.test" in section
    assert "http://127.0.0.1:9/log/checkpoint" in section
    # The batch written for entries 11-12: leaves 11-12, one identifier and one prefix record.
    assert '<td class="n head" data-label="leaves">11&ndash;12</td>' in section
    assert '<td class=small data-label="entries">2</td>' in section
    assert "1 identifier, 1 prefix record<" in section  # singular for one
    assert f'href="/{PFX}/LAMP-1?noredirect&amp;lang=en"' in section
    assert '<form class=search action="/explorer"' in text and "name=q" in text


@pytest.mark.parametrize(
    ("q", "where"),
    [
        ("ma.156.1301.02/bus-stop-17", f"/{BUS}?noredirect"),
        (f"  {BUS} ", f"/{BUS}?noredirect"),
        ("MA.156.1301", f"/0.NA/{CITY}?noredirect"),
        (f"0.NA/{CITY}", f"/0.NA/{CITY}?noredirect"),
    ],
)
async def test_explorer_search_goes_to_the_landing_page(city: Served, q: str, where: str) -> None:
    status, h, _ = await city.get(f"/explorer?q={q}")
    assert status == 303 and h["Location"] == where
    status, _, page = await city.get(where, Accept="text/html")
    assert status == 200 and b"<h1>" in page


async def test_explorer_search_refuses_what_is_not_an_identifier(city: Served) -> None:
    status, _, page = await city.get("/explorer?q=<script>alert(1)</script>")
    text = page.decode()
    assert status == 400 and "rule:" in text and "role=alert" in text
    assert "<script>" not in text and "&lt;script&gt;" in text
    status, _, page = await city.get("/explorer?q=" + "A" * 5000)
    assert status == 400 and b"too-long" in page


# -- what a newcomer meets (issue 16) ---------------------------------------------------------


async def test_one_server_value_everywhere_without_versions(city: Served) -> None:
    for path in ("/", "/explorer", "/scan", "/openapi.json", f"/api/proofs/{BUS}", f"/{BUS}",
                 f"/{PFX}/NEVER", "/favicon.ico", "/robots.txt", f"/{BUS}?noredirect"):  # fmt: skip
        _, h, _ = await city.get(path)
        assert h.getall("Server") == ["cityid"], (path, h.getall("Server"))
    # A head aiohttp refuses itself, before any application or hook sees it.
    host, port = city.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
    head = (await asyncio.wait_for(reader.read(65536), 5)).split(b"\r\n\r\n")[0]
    writer.close()
    status, *fields = head.decode("latin-1").split("\r\n")
    assert status.split()[1] == "400" and "Server: cityid" in fields, head


async def test_favicon_and_robots_are_served(city: Served) -> None:
    status, h, body = await city.get("/favicon.ico")
    assert status == 200 and h["Content-Type"] == "image/x-icon"
    assert body[:6] == b"\x00\x00\x01\x00\x01\x00" and b"\x89PNG\r\n\x1a\n" in body
    assert "max-age" in h["Cache-Control"] and h["ETag"]
    status, h, body = await city.get("/robots.txt")
    assert status == 200 and h["Content-Type"].startswith("text/plain")
    assert body.startswith(b"User-agent: *\n")


async def test_a_prefix_without_a_slash_goes_to_its_page(city: Served) -> None:
    status, h, _ = await city.get(f"/{CITY.lower()}", Accept="text/html")
    assert status == 302 and h["Location"] == f"/0.NA/{CITY}?noredirect"
    status, h, _ = await city.get(f"/{CITY}", Accept="application/json")
    assert status == 302 and h["Location"] == f"/0.NA/{CITY}"
    # A word that is no known prefix: the error page, with a search box and a way back.
    status, _, page = await city.get("/GARBAGE", Accept="text/html")
    text = page.decode()
    assert status == 400 and '<form class=search action="/explorer"' in text
    assert 'href="/"' in text


@pytest.mark.parametrize("how", ["pasted", "scanned"])
async def test_explorer_search_takes_a_url_of_this_resolver(city: Served, how: str) -> None:
    url = f"{city.base}/{BUS.lower()}?noredirect" if how == "pasted" else f"{city.base}/{BUS}"
    if how == "scanned":
        url = url.upper()  # a 2D code's URL is all upper case
    status, h, _ = await city.get("/explorer?" + urlencode({"q": url}))
    assert status == 303 and h["Location"] == f"/{BUS}?noredirect"


async def test_explorer_says_plainly_what_is_not_an_identifier(city: Served) -> None:
    status, _, page = await city.get("/explorer?q=garbage")
    text = page.decode()
    assert status == 400 and "&#x27;garbage&#x27; is not an identifier" in text
    assert "not-an-identifier" in text and "0.NA/GARBAGE" not in text
    q = urlencode({"q": f"https://elsewhere.example/{BUS}"})
    status, _, page = await city.get(f"/explorer?{q}")
    assert status == 400 and b"not on this resolver" in page


# -- languages ----------------------------------------------------------------------------------


async def test_pages_follow_accept_language_with_a_switch(city: Served) -> None:
    zh = {"Accept": "text/html", "Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
    status, h, page = await city.get(f"/{BUS}?noredirect", **zh)
    text = page.decode()
    assert status == 200 and "<html lang=zh-Hans>" in text and "数据值" in text
    assert h["Content-Language"] == "zh-Hans" and "Accept-Language" in h["Vary"]
    # The switch: this page in English, whatever the browser prefers.
    assert f'<a class=lang href="/{BUS}?noredirect&amp;lang=en"' in text
    status, h, page = await city.get(f"/{BUS}?noredirect&lang=en", **zh)
    assert status == 200 and h["Content-Language"] == "en" and b"<h2>Values</h2>" in page
    etag_en = h["ETag"]
    _, h, _ = await city.get(f"/{BUS}?noredirect&lang=zh")
    assert h["ETag"] != etag_en  # two representations, two tags
    # English by default, and for a language there are no pages in.
    for lang in ("", "fr-FR,fr;q=0.9"):
        _, h, page = await city.get(f"/{BUS}?noredirect", **{"Accept-Language": lang})
        assert h["Content-Language"] == "en" and b"<html lang=en>" in page


async def test_error_pages_and_explorer_in_chinese(city: Served) -> None:
    zh = {"Accept": "text/html", "Accept-Language": "zh"}
    # A miss on the fast path (no query): the 404 page in Chinese, with a search box.
    status, h, page = await city.get(f"/{PFX}/NEVER-MINTED", **zh)
    text = page.decode()
    assert status == 404 and "未注册" in text and h["Content-Language"] == "zh-Hans"
    assert "<input type=hidden name=lang value=zh>" in text
    # A redirect is a redirect in any language.
    status, h, _ = await city.get(f"/{PFX}/LAMP-1", **zh)
    assert status == 302 and h["Location"] == "https://lamps.example/1"
    status, h, page = await city.get("/explorer", **zh)
    assert status == 200 and "账本浏览" in page.decode() and "Accept-Language" in h["Vary"]
    status, h, _ = await city.get(f"/explorer?q={BUS}&lang=zh")
    assert status == 303 and h["Location"] == f"/{BUS}?noredirect&lang=zh"
    status, h, page = await city.get("/?lang=zh", Accept="text/html")
    assert status == 200 and "cityid 解析服务" in page.decode()


def test_city_names_in_both_scripts() -> None:
    from cityid.placenames import both_scripts, english_name
    from resolver.pages import _map_card

    assert english_name("石家庄市") == "Shijiazhuang" and english_name("西安市") == "Xi'an"
    assert both_scripts("石家庄市") == "石家庄市 Shijiazhuang"
    assert both_scripts("Traffic management") == "Traffic management"
    record = Record((Value.make(1, "GEO", "38.04,114.51", timestamp=TS),))
    card = _map_card(BUS, record, Area("石家庄市", parse_box(BOX), None), "en")
    assert "inside 石家庄市 Shijiazhuang" in card and ">石家庄市 Shijiazhuang</text>" in card


@pytest.mark.parametrize(
    ("header", "lang"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        ("zh-TW", "zh"),
        ("en-US,en;q=0.9,zh;q=0.5", "en"),
        ("de, zh;q=0.1", "zh"),  # the only one of ours it takes
        ("zh;q=0, en", "en"),  # q=0: not acceptable
        ("fr", "en"),
        ("", "en"),
        ("zh;q=x, ;;, ,=", "en"),  # garbled: ignored, never an error
        ("*", "en"),
    ],
)
def test_accept_language_negotiation(header: str, lang: str) -> None:
    from resolver.i18n import negotiate, request_lang

    assert negotiate(header) == lang
    assert request_lang("zh", header) == ("zh", False)  # the switch wins
    assert request_lang("xx", header) == (lang, True)


def test_every_text_has_both_languages() -> None:
    from resolver.i18n import TEXT

    assert TEXT["en"].keys() == TEXT["zh"].keys()
