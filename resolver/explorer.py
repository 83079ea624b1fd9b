"""The ledger explorer: every followed log's latest checkpoint, its recent batches, a search box.

``GET /explorer`` shows what this resolver verified, read from Redis (sync writes
each log's cursor and its recent checkpoints there). ``GET /explorer?q=ID`` is the
search box: a valid identifier, or a bare prefix (its ``0.NA/`` record), is sent
to its landing page with a 303; anything else gets the page back with the rule
it breaks (400).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from cityid.errors import CityIdError
from cityid.identifiers import Identifier, IdentifierError, Prefix, parse_identifier
from ledger.checkpoint import Checkpoint
from ledger.cosignature import cosignature_timestamp
from ledger.note import parse_note

from . import pages
from .layout import StoreError
from .store import Store

#: What the explorer reads besides the store: the resolver's (briefly reused) status.
Status = Callable[[], Awaitable[dict[str, Any]]]

MAX_LOGS = 200  # logs listed on one page; the JSON status at / has them all
MAX_QUERY = 1024
SUMMARY_TTL = 1.0  # seconds the explorer's reading of Redis is reused


def search_target(q: str) -> Identifier:
    """The identifier a search box entry names: ``P/S``, ``0.NA/P``, or a bare prefix ``P``."""
    q = q.strip()
    try:
        return parse_identifier(q)
    except IdentifierError as e:
        if "/" in q:
            raise
        try:
            return parse_identifier(f"0.NA/{Prefix.parse(q)}")
        except CityIdError:
            raise e from None


def checkpoint_view(note: bytes | None) -> pages.CheckpointView | None:
    """A stored checkpoint note as pages show it (sync verified it before storing it)."""
    if not note:
        return None
    try:
        text, sigs = parse_note(note)
        cp = Checkpoint.parse(text)
    except CityIdError:
        return None
    cosigners = []
    for sig in sigs:
        if sig.name == cp.origin:
            continue
        try:
            ts: int | None = cosignature_timestamp(sig)
        except CityIdError:
            ts = None
        cosigners.append((sig.name, ts))
    return pages.CheckpointView(
        cp.size,
        base64.b64encode(cp.root).decode(),
        tuple(s.name for s in sigs),
        tuple(cosigners),
    )


async def _log_summary(store: Store, lg: dict[str, object]) -> pages.LogSummary:
    origin = str(lg["origin"])
    try:
        note, batches = await asyncio.gather(store.checkpoint(origin), store.recent_batches(origin))
    except StoreError:
        note, batches = None, []
    return pages.LogSummary(
        origin=origin,
        url=str(lg.get("url") or ""),
        state=str(lg.get("state") or "pending"),
        reason=str(lg.get("reason") or ""),
        updated_at=float(lg.get("updated_at") or 0.0),  # type: ignore[arg-type]
        checkpoint=checkpoint_view(note),
        batches=tuple(batches),
    )


async def log_summaries(store: Store, status: Status) -> tuple[list[pages.LogSummary], bool]:
    """Every followed log (up to :data:`MAX_LOGS`), and whether Redis answered."""
    st = await status()
    logs = list(st.get("logs", []))[:MAX_LOGS]
    summaries = await asyncio.gather(*(_log_summary(store, lg) for lg in logs))
    return list(summaries), bool(st.get("redis"))


def add_routes(router: web.UrlDispatcher, store: Store, status: Status) -> None:
    # Reused for a second: reloads and crawlers cost Redis two reads per log at most
    # once a second, however many arrive.
    memo: list[tuple[float, tuple[list[pages.LogSummary], bool]]] = []

    async def summaries() -> tuple[list[pages.LogSummary], bool]:
        now = time.monotonic()
        if not memo or now - memo[0][0] > SUMMARY_TTL:
            memo[:] = [(now, await log_summaries(store, status))]
        return memo[0][1]

    async def explorer(request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        error, status = "", 200
        if q.strip():
            try:
                if len(q) > MAX_QUERY:
                    raise IdentifierError(
                        f"{len(q)} characters is longer than any identifier", rule="too-long"
                    )
                ident = search_target(q)
            except CityIdError as e:
                error = f"{e.message} [rule: {e.rule}]"
                status = 400
            else:
                where = "/" + quote(str(ident), safe="/") + "?noredirect"
                return web.Response(
                    status=303, headers={"Location": where, "Cache-Control": "no-store"}
                )
        logs, redis_up = await summaries()
        body = pages.explorer_page(logs, redis_up=redis_up, q=q[:MAX_QUERY], error=error)
        return web.Response(
            status=status,
            body=body,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": pages.CSP,
                "Cache-Control": "no-cache",
            },
        )

    router.add_get("/explorer", explorer, name="explorer")


__all__ = ["add_routes", "checkpoint_view", "log_summaries", "search_target"]
