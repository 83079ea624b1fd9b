"""The scanner page: the browser's camera reads a 2D code and opens its landing page."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /scan`` and its scripts (to be filled in)."""
