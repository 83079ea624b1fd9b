"""The resolver's HTTP API as an OpenAPI document, served at ``/openapi.json``."""

from __future__ import annotations

from aiohttp import web


def add_routes(router: web.UrlDispatcher) -> None:
    """Register ``GET /openapi.json`` (to be filled in)."""
