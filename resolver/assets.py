"""Fixed answers from files in the package, and the one way a stored Reply is sent.

The OpenAPI document and the scanner's page and scripts are files shipped in
``resolver/``: each is read once, when its route is registered (a missing file
fails at start, not on a request), and served as stored bytes with an ETag, so a
revalidation is a 304.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources

from aiohttp import web

from .cache import Reply, etag_matches

#: Short: these files change with the code, on an upgrade; the ETag makes revalidation a 304.
CACHE_CONTROL = "public, max-age=300"


def respond(reply: Reply, request: web.Request) -> web.Response:
    """``reply`` as an aiohttp response; an ``If-None-Match`` that matches gets 304."""
    inm = request.headers.get("If-None-Match")
    if inm is not None and reply.etag is not None and etag_matches(inm, reply.etag):
        return web.Response(status=304, headers=reply.headers_304())
    return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


def file_reply(path: str, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """The 200 answer holding package file ``resolver/<path>``, with an ETag of its bytes."""
    body = resources.files("resolver").joinpath(path).read_bytes()
    return fixed_reply(body, content_type, headers)


def fixed_reply(
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[str, str]] = (),
    *,
    cache_control: str = CACHE_CONTROL,
) -> Reply:
    """The 200 answer holding ``body``, made once, with an ETag of its bytes."""
    etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
    head = (("Content-Type", content_type), ("Cache-Control", cache_control), *headers)
    return Reply.make(200, head, body, etag=etag)


def handler(reply: Reply) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return respond(reply, request)

    return handle
