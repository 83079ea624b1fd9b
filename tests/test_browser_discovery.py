"""The discovery pages in a real browser: the national overview, search results, nearby.

One ``cityid up`` (the demo, free loopback ports) and Debian's headless Chromium, as
``test_browser.py`` runs them (``browser_harness``); the browser reaches loopback only.
What the pages show is checked against the JSON APIs of the same resolver.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import test_browser
from browser_harness import (
    PageWatch,
    System,
    expect,
    get_json,
    new_context,
    running_system,
    safe_name,
    screenshot,
    why_no_browser,
)

WHY_NO_BROWSER = why_no_browser()
pytestmark = [
    pytest.mark.skipif(bool(WHY_NO_BROWSER), reason=WHY_NO_BROWSER),
    pytest.mark.timeout(300),
]
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("discovery-system"), assets=300) as s:
        yield s


# The browser and its pages, as test_browser.py makes them (fixtures).
playwright = test_browser.playwright
browser = test_browser.browser
page = test_browser.page


def fits(page: Any) -> None:
    """Nothing wider than the viewport: no sideways scrolling at phone width."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.viewport_size["width"], width


def sample_point(system: System) -> tuple[float, float]:
    record = get_json(f"{system.base}/api/handles/{system.sample}")
    geo = next(v for v in record["values"] if v["type"] == "GEO")["data"]["value"]
    lat, lon = geo.split(",")
    return float(lat), float(lon)


def test_home_is_a_national_overview(page: Any, system: System) -> None:
    watch = PageWatch(page)
    page.goto(system.base + "/")
    # Every delegated city with a GB/T 2260 code is a pin on the map, its code and count.
    pins = page.locator("#overview-map svg.map a.pin")
    expect(pins.first).to_be_visible()
    # Each pin names its city's code and count (labelled on the map when it has identifiers).
    titles = pins.locator("title").all_text_contents()
    city = get_json(f"{system.base}/api/prefixes/MA.156.1301")
    held = city["identifiers_in_subtree"]
    assert held > 0 and f"1301 石家庄市: {held:,} identifiers" in titles, titles[:5]
    labels = pins.locator("text").all_text_contents()
    assert f"1301 · {held:,}" in labels
    assert all(re.fullmatch(r"\d{4} · [\d,]+", label) for label in labels), labels
    # The prefixes publishing identifiers, the sample's among them, with its count.
    sample_prefix = system.sample.split("/")[0]
    dept = get_json(f"{system.base}/api/prefixes/{sample_prefix}")
    row = page.locator("#publishing > table tr", has_text=sample_prefix)
    expect(row.locator("td").nth(2)).to_have_text(f"{dept['identifiers']:,}")
    # Each log's verification status, recent batches, a search box, a link to apply.
    logs = page.locator("#logs tr")
    expect(logs).to_have_count(len(system.logs) + 1)
    expect(page.locator("#logs td.ok").first).to_have_text("ok")
    expect(page.get_by_role("heading", name="Recent batches")).to_be_visible()
    apply = page.get_by_role("link", name="Apply for a code")
    assert urlsplit(apply.get_attribute("href") or "").path == "/apply"
    screenshot(page, "discovery-home")
    # A pin is a link to the city's prefix record.
    page.locator('#overview-map a.pin[href="/0.NA/MA.156.1301?noredirect"] circle').click()
    page.wait_for_url(re.compile(r"/0\.NA/MA\.156\.1301\?noredirect$"))
    assert watch.problems() == []


def test_search_from_the_home_page_lists_and_maps_hits(page: Any, system: System) -> None:
    watch = PageWatch(page)
    page.goto(system.base + "/")
    page.locator("form.search input[name=q]").fill("sjz")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"/search\?q=sjz&lang=en$"))
    want = get_json(f"{system.base}/api/search?q=sjz&limit=25")  # the page's size
    rows = page.locator("#hits li > a")
    expect(rows).to_have_count(want["count"])
    assert rows.all_inner_texts() == [r["handle"] for r in want["results"]]
    # The hits with a place are pins on the map.
    expect(page.locator("#hits-map a.pin").first).to_be_visible()
    assert page.locator("#hits-map a.pin").count() >= 1
    if want["next"]:
        expect(page.get_by_role("link", name="Next page")).to_be_visible()
    screenshot(page, "discovery-search")
    assert watch.problems() == []
    # Bad input: the page again (400), naming the rule.
    resp = page.goto(system.base + "/search?q=%22unbalanced")
    assert resp is not None and resp.status == 400
    expect(page.locator(".card .bad")).to_contain_text("unbalanced-quotes")


def test_landing_page_lists_what_is_nearby(page: Any, system: System) -> None:
    lat, lon = sample_point(system)
    around = get_json(f"{system.base}/api/search?" + urlencode(
        {"near": f"{lat},{lon}", "radius": "10", "limit": "1000"}))  # fmt: skip
    others = {r["handle"] for r in around["results"]} - {system.sample}
    assert others, "the demo's sample has no neighbour within 10 km"
    page.goto(f"{system.base}/{system.sample}?noredirect")
    items = page.locator("#nearby li a")
    expect(items.first).to_be_visible()
    shown = items.all_inner_texts()
    assert set(shown) <= others and len(shown) == min(10, len(others))
    page.get_by_role("link", name="More around here").click()
    page.wait_for_url(re.compile(r"/search\?near="))
    expect(page.locator("#hits-map a.pin").first).to_be_visible()


PAGES = ["/", "/search?q=sjz", "/search?q=%22x", "/search?near=38.04,114.5&radius=50"]


@pytest.mark.parametrize("path", PAGES)
def test_readable_at_phone_width(browser: Any, system: System, path: str) -> None:
    context = new_context(browser)
    try:
        page = context.new_page()
        page.set_viewport_size(PHONE)
        page.goto(system.base + path)
        page.wait_for_load_state("load")
        fits(page)
        screenshot(page, f"discovery-390-{safe_name(path)}")
    finally:
        context.close()
