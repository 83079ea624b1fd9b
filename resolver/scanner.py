"""The scanner page: the browser's camera reads a 2D code and opens its landing page.

``GET /scan`` is a static page with two scripts from this resolver: ``/scan.js``
(ours) and ``/jsqr.js`` (the jsQR decoder, vendored from the npm package
``jsqr``: see the header of ``static/jsqr.js`` and ``static/jsqr.LICENSE``).
The script decodes with the browser's ``BarcodeDetector`` where it reads QR
codes, else with jsQR, from the camera or from a chosen photo, and opens the
identifier's landing page (``/PREFIX/SUFFIX?noredirect``) on this resolver,
whichever resolver the code names. Nothing is built: the files are served as
they are in the package, read once when the routes are registered.

The page sends a strict Content-Security-Policy: scripts only from this
origin (no inline script), inline style, nothing else loaded, no connections.
"""

from __future__ import annotations

import functools

from aiohttp import web

from . import assets
from .cache import Reply

#: The page's policy: its two scripts from this origin and its own <style>;
#: the camera's stream is a MediaStream object (srcObject), not a URL, and a
#: photo is decoded from an ImageBitmap, so no media, image or connect source.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
JS = "text/javascript; charset=utf-8"
HTML = "text/html; charset=utf-8"

# route name -> (path, file in resolver/static, content type, extra headers)
FILES: dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]] = {
    "scan": (
        "/scan",
        "scan.html",
        HTML,
        (
            ("Content-Security-Policy", CSP),
            ("Permissions-Policy", "camera=(self), microphone=(), geolocation=()"),
            ("Referrer-Policy", "no-referrer"),
        ),
    ),
    "scan-js": ("/scan.js", "scan.js", JS, ()),
    "jsqr-js": ("/jsqr.js", "jsqr.js", JS, ()),
}


@functools.cache
def replies() -> dict[str, Reply]:
    """Each route's answer, built once from the package's files."""
    return {
        name: assets.file_reply(f"static/{filename}", ctype, extra)
        for name, (_, filename, ctype, extra) in FILES.items()
    }


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /scan``, ``/scan.js`` and ``/jsqr.js`` (and HEAD)."""
    answers = replies()
    for name, (path, *_) in FILES.items():
        router.add_get(path, assets.handler(answers[name]), name=name)
