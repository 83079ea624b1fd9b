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
import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

from .cache import Reply, etag_matches

#: The page's policy: its two scripts from this origin and its own <style>;
#: the camera's stream is a MediaStream object (srcObject), not a URL, and a
#: photo is decoded from an ImageBitmap, so no media, image or connect source.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: Short: the page and its scripts change together on an upgrade, and the
#: ETag makes revalidation a 304.
CACHE_CONTROL = "public, max-age=300"
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
    static = resources.files("resolver").joinpath("static")
    out: dict[str, Reply] = {}
    for name, (_, filename, ctype, extra) in FILES.items():
        body = static.joinpath(filename).read_bytes()
        etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
        headers = (("Content-Type", ctype), ("Cache-Control", CACHE_CONTROL), *extra)
        out[name] = Reply.make(200, headers, body, etag=etag)
    return out


def _handler(reply: Reply) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        inm = request.headers.get("If-None-Match")
        if inm is not None and reply.etag is not None and etag_matches(inm, reply.etag):
            return web.Response(status=304, headers=reply.headers_304())
        return web.Response(status=200, headers=reply.headers, body=reply.body)

    return handle


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /scan``, ``/scan.js`` and ``/jsqr.js`` (and HEAD)."""
    answers = replies()
    for name, (path, *_) in FILES.items():
        router.add_get(path, _handler(answers[name]), name=name)
