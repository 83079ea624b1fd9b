"""The pages people see, in a real browser: Debian's headless Chromium driven by Playwright.

One ``cityid up`` (small demo, free loopback ports) serves every test in this
module. Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``, which
``scripts/install-test-tools.sh`` does as root); Playwright never downloads a
browser. Without either, the browser tests skip and say why. The browser may
reach loopback only. Screenshots go to ``test-artifacts/browser/``.

The camera test plays the sample's 2D code, made by ``cityid qr`` and turned
into a Y4M video, as Chromium's fake camera; the photo test gives the same PNG
to the page's file input. Both end on the sample's landing page, opened by the
scanner's script.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from browser_harness import (
    ARTIFACTS,
    PageWatch,
    System,
    expect,
    fake_camera_args,
    launch,
    new_context,
    running_system,
    screenshot,
    why_no_browser,
    write_y4m,
)

WHY_NO_BROWSER = why_no_browser()
needs_browser = pytest.mark.skipif(bool(WHY_NO_BROWSER), reason=WHY_NO_BROWSER)
TIMEOUT_MS = 20_000  # the longest any page may take to do what a test waits for
DECODERS = ("BarcodeDetector", "jsQR")


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("browser-system")) as s:
        yield s


@pytest.fixture(scope="module")
def qr_png(system: System, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's 2D code as ``cityid qr`` prints it: the upper-case resolver URL."""
    out = tmp_path_factory.mktemp("browser-qr") / "sample.png"
    r = subprocess.run(
        [sys.executable, "-m", "cityid.cli", "qr", system.sample,
         "--resolver", system.base, "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    b = launch(playwright)
    yield b
    b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = new_context(browser)
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


# -- helpers --------------------------------------------------------------------------------


def dd(page: Any, term: str) -> Any:
    """The <dd> right after the <dt> that reads ``term``."""
    dt = page.locator("dt", has_text=re.compile(rf"^\s*{re.escape(term)}\s*$"))
    return dt.locator("xpath=following-sibling::dd[1]")


def landing(system: System) -> str:
    return f"{system.base}/{system.sample}?noredirect"


def wait_for_landing(page: Any, system: System, asked: str = "") -> None:
    """Until the page is the sample's landing page on this resolver (path = identifier).

    ``asked``: the identifier as the code gave it, which the scanner keeps as it is.
    """
    want = f"/{asked or system.sample}"
    page.wait_for_url(
        lambda url: url.startswith(system.base) and urlsplit(url).path == want,
        timeout=TIMEOUT_MS,
    )
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().strip() == system.sample


def decoder_of(page: Any) -> str:
    expect(page.locator("#decoder")).not_to_be_empty()
    return page.locator("#decoder").inner_text().strip()


def report_decoder(record_property: Any, name: str, decoder: str) -> None:
    """Say which decoder the scanner used (``pytest -s`` prints it; junit keeps it)."""
    record_property("decoder", decoder)
    print(f"\n{name}: the scanner decoded with {decoder}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.decoder.txt").write_text(decoder + "\n")


# -- the scanner's HTTP answers (no browser needed) -----------------------------------------


def test_scanner_files_are_served_with_their_types_and_policy(system: System) -> None:
    def get(path: str, **headers: str) -> tuple[int, Any, bytes]:
        req = urllib.request.Request(system.base + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    status, headers, body = get("/scan")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert b'<script src="scan.js"' in body and b'<script src="jsqr.js"' in body
    assert b"<script>" not in body  # no inline script: the policy would refuse it
    for path in ("/scan.js", "/jsqr.js"):
        status, headers, body = get(path)
        assert status == 200, path
        assert headers["Content-Type"] == "text/javascript; charset=utf-8", path
        assert headers["Cache-Control"].startswith("public, max-age="), path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        etag = headers["ETag"]
        assert get(path, **{"If-None-Match": etag})[0] == 304, path
    head = body[:1200].decode()
    assert "jsQR 1.4.0" in head and "jsqr@1.4.0" in head and "Apache License" in head


# -- (a) the landing page -------------------------------------------------------------------


@needs_browser
def test_landing_page_of_the_sample(page: Any, system: System) -> None:
    watch = PageWatch(page)
    resp = page.goto(landing(system))
    assert resp is not None and resp.status == 200
    assert page.locator("h1").inner_text().strip() == system.sample

    # The values: the sample asset has a URL and a GEO point.
    types = [t.strip() for t in page.locator("table tr td:nth-child(2)").all_inner_texts()]
    assert "URL" in types and "GEO" in types, types

    # Where the answer comes from: its log, verified, at the size sync verified, cosigned.
    origin = dd(page, "log").inner_text().strip()
    log = system.log_of(origin)
    assert dd(page, "checkpoint size").inner_text().strip() == str(log["size"])
    assert "verified" in dd(page, "status").inner_text()
    cosigned = dd(page, "cosigned by").inner_text()
    assert "witness-1.cityid.test" in cosigned and "witness-2.cityid.test" in cosigned

    # The 2D code: an inline SVG of the upper-case resolver URL, which a decoder reads back.
    qr = page.locator(".qr svg")
    assert qr.count() == 1
    url = page.locator(".qr small").inner_text().strip()
    assert url == f"{system.base}/{system.sample}".upper()
    try:
        import zxingcpp
        from PIL import Image
    except ImportError:  # pragma: no cover - zxing-cpp is in the test extra
        pass
    else:
        with Image.open(io.BytesIO(qr.screenshot())) as img:
            texts = [b.text for b in zxingcpp.read_barcodes(img)]
        assert texts == [url]

    screenshot(page, "landing-page")
    assert watch.problems() == []


# -- (b) the scanner page ---------------------------------------------------------------------


@needs_browser
def test_scanner_page_loads_clean(page: Any, system: System, record_property: Any) -> None:
    watch = PageWatch(page)
    resp = page.goto(system.base + "/scan")
    assert resp is not None and resp.status == 200
    assert page.locator("h1").inner_text().startswith("Scan")
    decoder = decoder_of(page)
    assert decoder in DECODERS
    report_decoder(record_property, "scanner-page", decoder)
    # Without a camera the page says so, and offers a photo instead.
    expect(page.locator("#status")).not_to_have_text(re.compile(r"^Starting"))
    assert page.locator("#status").inner_text().strip()
    assert page.locator("#photo").get_attribute("type") == "file"
    assert page.evaluate("typeof window.jsQR") == "function"
    screenshot(page, "scanner-page")
    assert watch.problems() == []


# -- (c) the camera -------------------------------------------------------------------------


@needs_browser
def test_camera_scan_opens_the_landing_page(
    playwright: Any, system: System, qr_png: Path, tmp_path: Path, record_property: Any
) -> None:
    video = write_y4m(qr_png, tmp_path / "sample.y4m", lead=15, frames=5)
    camera = launch(playwright, fake_camera_args(video))
    try:
        context = new_context(camera, permissions=["camera"])
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        watch = PageWatch(page)
        t0 = time.monotonic()
        page.goto(system.base + "/scan")
        decoder = decoder_of(page)
        report_decoder(record_property, "camera-scan", decoder)
        expect(page.locator("#status")).to_have_text(re.compile(r"^(Scanning|Found)"))
        # The video opens on 1.5 s of blank frames: the page is still scanning here
        # (unless this machine is very slow, when the code may already have been read).
        if urlsplit(page.url).path == "/scan":
            screenshot(page, "camera-scan-before")
        wait_for_landing(page, system)
        took = time.monotonic() - t0
        print(f"camera scan: landing page after {took:.1f} s")
        assert urlsplit(page.url).query == "noredirect&lang=en"  # the reader's language kept
        screenshot(page, "camera-scan-after")
        assert watch.problems() == []
        context.close()
    finally:
        camera.close()


# -- (d) a photo --------------------------------------------------------------------------


@needs_browser
@pytest.mark.parametrize("code", ["cityid-qr", "other-resolver", "bare-identifier"])
def test_photo_scan_opens_the_landing_page(
    page: Any, system: System, qr_png: Path, tmp_path: Path, code: str
) -> None:
    """A photo of the code ``cityid qr`` prints; of a code printed for another resolver
    (it still names the identifier: its page opens here); of a bare identifier in
    lower case (kept as given: the resolver folds it)."""
    import segno

    asked = system.sample
    if code == "cityid-qr":
        png = qr_png
    else:
        png = tmp_path / f"{code}.png"
        if code == "other-resolver":
            text = f"HTTPS://RESOLVER.EXAMPLE/{system.sample}"
        else:
            text = asked = system.sample.lower()
        segno.make_qr(text, error="m").save(str(png), scale=8, border=4)
    watch = PageWatch(page)
    page.goto(system.base + "/scan")
    assert decoder_of(page) in DECODERS
    expect(page.locator("#status")).not_to_have_text(re.compile(r"^Starting"))
    screenshot(page, f"photo-scan-{code}-before")
    page.set_input_files("#photo", str(png))
    wait_for_landing(page, system, asked)
    assert urlsplit(page.url).query == "noredirect&lang=en"
    screenshot(page, f"photo-scan-{code}-after")
    assert watch.problems() == []


@needs_browser
def test_photo_of_something_else_is_shown_as_text(
    page: Any, system: System, tmp_path: Path
) -> None:
    import segno

    png = tmp_path / "other.png"
    segno.make_qr("<b>not an identifier</b> https://example.org/a/b/c", error="m").save(
        str(png), scale=8
    )
    watch = PageWatch(page)
    page.goto(system.base + "/scan")
    decoder_of(page)
    page.set_input_files("#photo", str(png))
    expect(page.locator("#status")).to_have_text(re.compile(r"^Not a cityid code"))
    assert urlsplit(page.url).path == "/scan"
    result = page.locator("#result")
    assert result.inner_text() == "<b>not an identifier</b> https://example.org/a/b/c"
    assert result.locator("b").count() == 0  # text, never markup
    screenshot(page, "photo-scan-not-cityid")
    assert watch.problems() == []


# -- (e) the ledger explorer and the landing page's map ------------------------------------


@needs_browser
def test_explorer_lists_the_logs_and_finds_an_identifier(page: Any, system: System) -> None:
    watch = PageWatch(page)
    resp = page.goto(system.base + "/explorer")
    assert resp is not None and resp.status == 200
    assert "Ledger explorer" in page.locator("h1").inner_text()
    assert len(system.logs) == 2  # the root's log and Shijiazhuang's
    for log in system.logs:
        # One section (the innermost that names it) per followed log, with its size.
        sections = page.locator("section").filter(has_text=log["origin"])
        innermost = sections.filter(has_not=page.locator("section"))
        assert innermost.count() == 1, log["origin"]
        text = innermost.inner_text()
        assert re.search(rf"(?<![\d,.]){log['size']}(?![\d,.])", text), (log, text)
    screenshot(page, "explorer")
    form = page.locator("form").filter(has=page.locator("input[name=q]"))
    assert form.count() >= 1
    box = form.first.locator("input[name=q]")
    box.fill(system.sample)
    box.press("Enter")
    wait_for_landing(page, system)
    screenshot(page, "explorer-search-result")
    assert watch.problems() == []


@needs_browser
def test_landing_page_maps_the_geo_point(page: Any, system: System) -> None:
    watch = PageWatch(page)
    page.goto(landing(system))
    types = [t.strip() for t in page.locator("table tr td:nth-child(2)").all_inner_texts()]
    assert "GEO" in types
    point = page.locator("svg.map circle.point")
    assert point.count() >= 1
    assert page.locator("svg.map").first.is_visible()
    screenshot(page, "landing-page-map")
    assert watch.problems() == []


# -- (f) on a phone: 390 px wide, where most scans happen (issue 16) ------------------------

PHONE = {"width": 390, "height": 844}

# The characters after which each line of ``el``'s text breaks.
_BREAKS_JS = """(el) => {
  const out = []; let prev = null, top = null;
  const walk = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    for (let i = 0; i < n.length; i++) {
      const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + 1);
      const rect = r.getClientRects()[0];
      if (!rect || !n.data[i].trim()) continue;
      if (top !== null && rect.top > top + 2) out.push(prev);
      top = rect.top; prev = n.data[i];
    }
  }
  return out;
}"""


@contextlib.contextmanager
def phone_page(browser: Any, locale: str) -> Iterator[Any]:
    """A page 390 px wide in a fresh context whose browser asks for ``locale``."""
    context = new_context(browser, locale=locale)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        page.set_viewport_size(PHONE)
        yield page
    finally:
        context.close()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    with phone_page(browser, "en-US") as page:
        yield page


@pytest.fixture
def zh_phone(browser: Any) -> Iterator[Any]:
    with phone_page(browser, "zh-CN") as page:
        yield page


def fits_the_screen(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page is {width} px wide on a {PHONE['width']} px screen"


def box(locator: Any) -> dict[str, float]:
    b = locator.bounding_box()
    assert b is not None
    return dict(b)


@needs_browser
def test_landing_page_on_a_phone(phone: Any, system: System) -> None:
    watch = PageWatch(phone)
    resp = phone.goto(landing(system))
    assert resp is not None and resp.status == 200
    fits_the_screen(phone)
    card = box(phone.locator("table.values").locator(".."))
    # The values: each data cell has the card's width, and a GEO point stays on one line.
    for row in phone.locator("table.values tr").filter(has=phone.locator("td.data")).all():
        data = box(row.locator("td.data"))
        assert data["width"] >= card["width"] - 40, (data, card)
        if row.locator("td.head.mono").inner_text().strip() == "GEO":
            assert data["height"] < 30, f"the GEO value wraps: {data}"
    # The 2D code: a card across the screen, its code centred, its caption broken only
    # after a '/' or a '.'.
    qr, main = box(phone.locator(".qr")), box(phone.locator("main"))
    assert qr["width"] >= main["width"] - 30, (qr, main)
    code = box(phone.locator(".qr svg"))
    assert abs(code["x"] + code["width"] / 2 - PHONE["width"] / 2) < 8, code
    breaks = phone.locator(".qr small").evaluate(_BREAKS_JS)
    assert all(c in "/." for c in breaks), breaks
    # The map fills its card.
    svg, map_card = box(phone.locator("svg.map")), box(phone.locator("svg.map").locator(".."))
    assert svg["width"] >= map_card["width"] - 40, (svg, map_card)
    screenshot(phone, "phone-landing-page")
    assert watch.problems() == []


@needs_browser
def test_explorer_on_a_phone(phone: Any, system: System) -> None:
    watch = PageWatch(phone)
    phone.goto(system.base + "/explorer")
    fits_the_screen(phone)
    for section in phone.locator("section.card").all():
        right = box(section)["x"] + box(section)["width"]
        for when in section.locator(".when").all():
            b = box(when)
            assert b["x"] + b["width"] <= right, ("a timestamp runs past its card", b, right)
        # Example identifiers wrap between links, never inside one.
        for link in section.locator(".ids a").all():
            assert link.evaluate("(a) => a.getClientRects().length") == 1, link.inner_text()
    text = phone.locator("main").inner_text()
    assert " 1 identifiers" not in text and not re.search(r"(\d[\d,]*)–\1\b", text)
    # A batch of minted assets offers one of them as an example.
    examples = phone.locator(".ids a").all_inner_texts()
    assert any(not e.startswith("0.NA/") for e in examples), examples
    screenshot(phone, "phone-explorer")
    assert watch.problems() == []


@needs_browser
def test_not_found_page_on_a_phone_offers_search_and_a_way_back(phone: Any, system: System) -> None:
    watch = PageWatch(phone)
    prefix = system.sample.split("/")[0]
    resp = phone.goto(f"{system.base}/{prefix}/NEVER-MINTED")
    assert resp is not None and resp.status == 404
    fits_the_screen(phone)
    screenshot(phone, "phone-not-found")
    box_ = phone.locator("form.search input[name=q]")
    box_.fill(system.sample.lower())
    box_.press("Enter")
    wait_for_landing(phone, system)
    phone.go_back()
    phone.locator("a.home").click()
    phone.wait_for_url(lambda url: urlsplit(url).path == "/")
    # The 404 itself is the one error the console reports (the page's own status).
    assert [p for p in watch.problems() if "status of 404" not in p] == []


@needs_browser
def test_chinese_pages_on_a_phone(zh_phone: Any, system: System) -> None:
    page = zh_phone
    watch = PageWatch(page)
    page.goto(landing(system))
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    assert "数据值" in page.locator("main").inner_text()
    fits_the_screen(page)
    screenshot(page, "phone-landing-page-zh")
    page.goto(system.base + "/explorer")
    assert "账本浏览" in page.locator("h1").inner_text()
    fits_the_screen(page)
    screenshot(page, "phone-explorer-zh")
    # The switch: the same page in English.
    page.locator("nav a.lang").click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().strip() == "Ledger explorer"
    assert watch.problems() == []


# A permission prompt nobody answers: getUserMedia neither resolves nor rejects.
# (Playwright's Chromium answers prompts itself, so the prompt is held open here.)
_PROMPT_PENDING = """
navigator.mediaDevices.getUserMedia = () => new Promise(() => {});
"""


@needs_browser
def test_scanner_explains_a_pending_camera_prompt(phone: Any, system: System) -> None:
    """The camera prompt is left unanswered: after a short wait the page says what to do."""
    phone.add_init_script(_PROMPT_PENDING)
    phone.goto(system.base + "/scan")
    expect(phone.locator("#status")).to_have_text(
        re.compile(r"Allow the camera.*or pick a photo"), timeout=6000
    )
    fits_the_screen(phone)
    screenshot(phone, "phone-scanner-waiting")


@needs_browser
def test_scanner_in_chinese(zh_phone: Any, system: System) -> None:
    """The scanner page and its script's messages follow the language, with the switch."""
    page = zh_phone
    watch = PageWatch(page)
    page.add_init_script(_PROMPT_PENDING)
    resp = page.goto(system.base + "/scan")
    assert resp is not None and resp.headers["content-language"] == "zh-Hans"
    assert "扫描" in page.locator("h1").inner_text()
    expect(page.locator("#status")).to_have_text(re.compile("允许使用摄像头"), timeout=6000)
    screenshot(page, "phone-scanner-zh")
    page.locator("nav a.lang").click()
    page.wait_for_load_state("load")
    assert page.locator("h1").inner_text().startswith("Scan")
    assert watch.problems() == []
