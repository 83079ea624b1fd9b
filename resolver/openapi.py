"""The resolver's HTTP API as an OpenAPI 3.1 document, served at ``/openapi.json``.

The document, ``resolver/openapi.json``, is written by hand next to the code it
describes (:func:`resolver.http.make_app` and its handlers); ``tests/test_openapi.py``
checks that every route of the app is in it and runs schemathesis against a live
resolver to check the answers match it. It is read from the package once, when the
route is registered, and served as stored bytes with an ETag (``If-None-Match``
gets 304) and CORS, so any web page or client generator may fetch it.
"""

from __future__ import annotations

import functools

from aiohttp import web

from . import assets
from .cache import Reply


@functools.cache
def reply() -> Reply:
    """The answer holding ``openapi.json`` as shipped in the package."""
    return assets.file_reply("openapi.json", "application/json")


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /openapi.json`` (and HEAD), named ``openapi``."""
    router.add_get("/openapi.json", assets.handler(reply()), name="openapi")
