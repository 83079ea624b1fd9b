"""Serve a log directory over HTTP exactly as c2sp.org/tlog-tiles lays it out.

The log directory *is* the static layout (``checkpoint``, ``tile/...``), so any
static file server or CDN can serve it; this module is the reference server
with the headers the spec asks for:

- ``checkpoint``: ``text/plain; charset=utf-8``, ``Cache-Control: no-cache``
  (it changes with every batch; caches must revalidate, and the ETag makes that
  a cheap 304), so no client sees a checkpoint more than a moment old.
- full tiles and entry bundles: ``application/octet-stream``,
  ``Cache-Control: public, max-age=31536000, immutable``: their bytes never
  change, so a CDN may keep them forever.
- partial tiles and bundles (``.p/<W>``): the bytes behind one partial path
  never change either, but they are superseded by the full tile, so they get a
  day: long enough to absorb load, short enough not to pin garbage in caches.
- entry bundles are gzip-compressed when the client accepts it (the spec's
  SHOULD); hash tiles are random bytes and are not.

Only paths that :func:`ledger.tiles.parse_tile_path` accepts are mapped to
files, and the file path is rebuilt from the parsed tile, never from the URL,
so ``..``, ``.private/`` and anything else in the directory are unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from cityid.errors import TileError

from .tiles import TILE_WIDTH, parse_tile_path

CHECKPOINT_TYPE = "text/plain; charset=utf-8"
TILE_TYPE = "application/octet-stream"
CACHE_CHECKPOINT = "no-cache"
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_PARTIAL = "public, max-age=86400"
# Public, read-only data: let browser-based verifiers fetch it too.
COMMON_HEADERS = {"Access-Control-Allow-Origin": "*", "X-Content-Type-Options": "nosniff"}


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _not_found(what: str) -> web.Response:
    return web.Response(
        status=404,
        text=f"not found: {what}\n",
        content_type="text/plain",
        headers=COMMON_HEADERS,
    )


def tiles_routes(log_dir: str | os.PathLike[str], prefix: str = "") -> list[web.RouteDef]:
    """Routes serving ``<prefix>/checkpoint`` and ``<prefix>/tile/...`` from ``log_dir``."""
    root = Path(log_dir)
    prefix = prefix.rstrip("/")

    async def checkpoint(request: web.Request) -> web.StreamResponse:
        data = await asyncio.to_thread(_read, root / "checkpoint")
        if data is None:
            return _not_found("checkpoint")
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {
            **COMMON_HEADERS,
            "Content-Type": CHECKPOINT_TYPE,
            "Cache-Control": CACHE_CHECKPOINT,
            "ETag": etag,
        }
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, headers=headers)

    async def tile(request: web.Request) -> web.StreamResponse:
        rel = "tile/" + request.match_info["path"]
        try:
            tp = parse_tile_path(rel)
        except TileError:
            return _not_found(rel[:200])
        # Rebuilt from the parsed coordinates: only canonical tile paths reach disk.
        canonical = tp.path()
        data = await asyncio.to_thread(_read, root.joinpath(*canonical.split("/")))
        if data is None:
            return _not_found(canonical)
        full = tp.width == TILE_WIDTH
        resp = web.Response(
            body=data,
            headers={
                **COMMON_HEADERS,
                "Content-Type": TILE_TYPE,
                "Cache-Control": CACHE_IMMUTABLE if full else CACHE_PARTIAL,
            },
        )
        if tp.is_entries:
            # Caches must key on the encoding even when this reply is identity.
            resp.headers["Vary"] = "Accept-Encoding"
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                resp.enable_compression(web.ContentCoding.gzip)
        return resp

    return [
        web.get(f"{prefix}/checkpoint", checkpoint),
        web.get(f"{prefix}/tile/{{path:.+}}", tile),
    ]


def add_tile_routes(app: web.Application, prefix: str, log_dir: str | os.PathLike[str]) -> None:
    """Mount the tlog-tiles routes of ``log_dir`` under ``prefix`` on ``app``."""
    app.add_routes(tiles_routes(log_dir, prefix))


def tiles_app(log_dir: str | os.PathLike[str], prefix: str = "") -> web.Application:
    """A stand-alone app serving one log."""
    app = web.Application()
    add_tile_routes(app, prefix, log_dir)
    return app


@contextlib.asynccontextmanager
async def serve_app(
    app: web.Application,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_timeout: float = 2.0,
) -> AsyncIterator[str]:
    """Run ``app`` on ``host:port`` (0: a free port) and yield its base URL.

    For tests and embedding: binds where it is told (loopback by default) and
    on exit waits at most ``shutdown_timeout`` seconds for requests in flight.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
