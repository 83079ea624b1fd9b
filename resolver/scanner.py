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
import json
import re
from html import escape
from importlib import resources

from aiohttp import web

from . import assets, i18n
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

PAGE_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("Permissions-Policy", "camera=(self), microphone=(), geolocation=()"),
    ("Referrer-Policy", "no-referrer"),
    ("Vary", "Accept-Language"),
)
_FIELD = re.compile(r"\{\{([\w.]+)\}\}")

# route name -> (path, file in resolver/static, content type, extra headers)
FILES: dict[str, tuple[str, str, str, tuple[tuple[str, str], ...]]] = {
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


def fill(template: str, lang: str) -> str:
    """``static/scan.html`` in ``lang``: each ``{{key}}`` is a text of :mod:`resolver.i18n`
    (escaped), or one of the page's own fields; ``{{messages}}`` is the script's texts,
    as JSON data (never executed: the policy allows no inline script)."""
    other = i18n.ZH if lang == i18n.EN else i18n.EN
    words = {k.removeprefix("js."): i18n.t(lang, k) for k in i18n.TEXT[i18n.EN] if k[:3] == "js."}
    fields = {
        "tag": i18n.TAGS[lang],
        "code": lang,
        "other": other,
        "other.tag": i18n.TAGS[other],
        "other.name": i18n.NAMES[other],
        # "<" escaped: the data cannot end its <script> element.
        "messages": json.dumps(words, ensure_ascii=False).replace("<", "\\u003c"),
    }
    return _FIELD.sub(lambda m: fields.get(m[1]) or escape(i18n.t(lang, m[1])), template)


@functools.cache
def pages() -> dict[str, Reply]:
    """The scanner page in each language, built once from ``static/scan.html``."""
    template = resources.files("resolver").joinpath("static/scan.html").read_text("utf-8")
    return {
        lang: assets.fixed_reply(
            fill(template, lang).encode(),
            HTML,
            (*PAGE_HEADERS, ("Content-Language", i18n.TAGS[lang])),
        )
        for lang in i18n.LANGS
    }


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /scan`` (in the reader's language), ``/scan.js`` and ``/jsqr.js``."""
    answers = replies()
    by_lang = pages()

    async def scan(request: web.Request) -> web.Response:
        lang, _ = i18n.request_lang(
            request.query.get("lang"), request.headers.get("Accept-Language")
        )
        return assets.respond(by_lang[lang], request)

    router.add_get("/scan", scan, name="scan")
    for name, (path, *_) in FILES.items():
        router.add_get(path, assets.handler(answers[name]), name=name)
