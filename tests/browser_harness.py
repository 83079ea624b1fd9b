"""Helpers for the browser tests: a real system, Debian's Chromium, a fake camera.

* :func:`running_system`: ``cityid up`` in a temporary data directory on free
  loopback ports (``test_up.write_config``/``start``/``stop``), with what the
  tests need to know about it (resolver URL, sample identifier, its logs).
* :func:`launch`: Debian's ``/usr/bin/chromium`` through Playwright (never a
  browser that Playwright downloads), headless, with a fresh profile, and a
  context that lets requests reach loopback only.
* :func:`write_y4m`: a PNG as the frames of a YUV4MPEG2 (C420) video, which
  Chromium's ``--use-file-for-fake-video-capture`` plays as the camera.
* :class:`PageWatch`: console errors, uncaught page errors and CSP violations
  seen by a page.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from test_up import start, stop, write_config

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def fake_camera_args(video: Path) -> list[str]:
    """Chromium flags that grant the camera and play ``video`` (.y4m) as its picture."""
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]


try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser tests skip and say why
    expect = None


def why_no_browser() -> str:
    """Why the browser tests cannot run here, or "" when they can."""
    if expect is None:
        return "playwright is not installed: pip install -e '.[test]'"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} is not installed: apt-get install chromium "
            "(scripts/install-test-tools.sh does it as root)"
        )
    return ""


# -- the system under test ------------------------------------------------------------------


@dataclass
class System:
    base: str  # the resolver, http://127.0.0.1:PORT
    sample: str  # the sample identifier (a minted asset with URL and GEO values)
    ready: dict[str, str]
    logs: list[dict[str, Any]] = field(default_factory=list)  # the resolver's followed logs

    def log_of(self, origin: str) -> dict[str, Any]:
        return next(lg for lg in self.logs if lg["origin"] == origin)


def get_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def running_system(tmp: Path, assets: int = 20) -> Iterator[System]:
    """``cityid up`` with a small demo, for as long as the block runs."""
    data = tmp / "data"
    ports = write_config(data, assets=assets)
    proc, ready = start(data, tmp)
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        status = get_json(base + "/")
        yield System(base=base, sample=ready["sample"], ready=ready, logs=status["logs"])
    finally:
        stop(proc)


# -- the browser --------------------------------------------------------------------------


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def launch(pw: Any, extra_args: list[str] | None = None) -> Any:
    """Debian's Chromium, headless; Playwright gives it a fresh temporary profile."""
    return pw.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=[*ARGS, *(extra_args or [])]
    )


def new_context(browser: Any, **kwargs: Any) -> Any:
    """A context whose requests may reach loopback only (data: and blob: stay local)."""
    context = browser.new_context(viewport={"width": 900, "height": 900}, **kwargs)

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or _loopback(url):
            route.continue_()
        else:
            route.abort("blockedbyclient")

    context.route("**/*", only_loopback)
    return context


_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


class PageWatch:
    """Records what a page complains about: console errors, page errors, CSP violations."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.errors: list[str] = []
        page.add_init_script(_WATCH_CSP)
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _on_console(self, msg: Any) -> None:
        if msg.type in ("error", "warning") or "Content Security Policy" in msg.text:
            self.console.append(f"{msg.type}: {msg.text}")

    def csp_violations(self) -> list[str]:
        found = list(self.page.evaluate("window.__cspViolations || []"))
        return found + [c for c in self.console if "Content Security Policy" in c]

    def problems(self) -> list[str]:
        errors = [c for c in self.console if c.startswith("error:")]
        return errors + self.errors + self.csp_violations()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# -- the fake camera's video ----------------------------------------------------------------


def write_y4m(
    png: Path,
    out: Path,
    *,
    size: tuple[int, int] = (640, 480),
    frames: int = 5,
    lead: int = 0,
    fps: int = 10,
) -> Path:
    """``png`` centred on a white frame of ``size``, as ``frames`` identical YUV4MPEG2 frames.

    ``lead`` blank (white) frames come first: Chromium plays the file from its start
    when a page opens the camera, then loops it, so a test sees the scanner
    scanning for ``lead / fps`` seconds before the code appears.

    Y4M is a text header line, then per frame ``FRAME\\n`` and the Y, Cb and Cr
    planes, 8 bits each; C420 subsamples Cb and Cr by two in both directions.
    Pillow's YCbCr is the JPEG (full-range BT.601) conversion, hence ``C420jpeg``;
    the chroma planes are box-filtered to half size (the average of each 2x2 block).
    """
    width, height = size
    assert width % 2 == 0 and height % 2 == 0, "4:2:0 needs even dimensions"
    with Image.open(png) as img:
        code = img.convert("RGB")
    # Fit the code into 80% of the frame's height, keeping its modules square.
    side = int(min(width, height) * 0.8)
    if max(code.size) > side or max(code.size) < side // 2:
        scale = side / max(code.size)
        code = code.resize(
            (round(code.width * scale), round(code.height * scale)), Image.Resampling.NEAREST
        )
    frame = Image.new("RGB", size, "white")
    frame.paste(code, ((width - code.width) // 2, (height - code.height) // 2))
    y, cb, cr = frame.convert("YCbCr").split()
    half = (width // 2, height // 2)
    planes = (
        y.tobytes()
        + cb.resize(half, Image.Resampling.BOX).tobytes()
        + cr.resize(half, Image.Resampling.BOX).tobytes()
    )
    assert len(planes) == width * height * 3 // 2
    blank = bytes([255]) * (width * height) + bytes([128]) * (width * height // 2)
    with out.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode("ascii"))
        for i in range(lead + frames):
            f.write(b"FRAME\n")
            f.write(blank if i < lead else planes)
    return out
