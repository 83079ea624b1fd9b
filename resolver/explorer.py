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
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from aiohttp import web

from cityid.errors import CityIdError
from cityid.identifiers import Identifier, IdentifierError, Prefix, parse_identifier
from ledger.checkpoint import Checkpoint
from ledger.cosignature import cosignature_timestamp
from ledger.note import parse_note

from . import i18n, pages
from .encode import choose, page_headers
from .layout import StoreError
from .store import Store

#: The resolver's public base URL, as the app knows it (set by ``resolver.http.make_app``).
PUBLIC_URL_KEY: web.AppKey[str] = web.AppKey("public_url", str)

#: What the explorer reads besides the store: the resolver's (briefly reused) status.
Status = Callable[[], Awaitable[dict[str, Any]]]

MAX_LOGS = 200  # logs listed on one page; the JSON status at / has them all
MAX_QUERY = 1024
SUMMARY_TTL = 1.0  # seconds the explorer's reading of Redis is reused


class NotAnIdentifier(IdentifierError):
    """A search that is plainly not an identifier (a word, another site's URL)."""

    rule = "not-an-identifier"


EXAMPLE = "MA.156.1301.02/W0000127R"


def from_url(q: str, hosts: Collection[str]) -> str:
    """The identifier in a pasted or scanned resolver URL (any case: a 2D code's is upper
    case), ``q`` itself when it is not a URL. Only this resolver's URLs (``hosts``)."""
    if not q.lower().startswith(("http://", "https://")):
        return q
    parts = urlsplit(q)
    host = parts.netloc.lower()
    if hosts and host not in hosts:
        raise NotAnIdentifier(
            f"{q} is an address on {host}, not on this resolver: paste the identifier itself "
            f"(the part after the host, such as {EXAMPLE})"
        )
    path = unquote(parts.path).strip("/")
    for api in ("api/handles/", "api/proofs/"):
        path = path.removeprefix(api)
    return path


def search_target(q: str, hosts: Collection[str] = ()) -> Identifier:
    """The identifier a search box entry names: ``P/S``, ``0.NA/P``, a bare prefix ``P``,
    or a URL of this resolver (``hosts``: its ``host[:port]`` names) naming one of them."""
    q = from_url(q.strip(), hosts)
    try:
        return parse_identifier(q)
    except IdentifierError as e:
        if "/" in q:
            raise
        try:
            return parse_identifier(f"0.NA/{Prefix.parse(q)}")
        except CityIdError:
            raise _not_an_identifier(q) from e


def _not_an_identifier(q: str) -> NotAnIdentifier:
    return NotAnIdentifier(
        f"{q!r} is not an identifier: an identifier is a prefix of dot-separated node codes, "
        f"a slash and a suffix, such as {EXAMPLE}; a prefix alone, such as MA.156.1301, "
        "finds the prefix's record"
    )


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


def _hosts(request: web.Request) -> set[str]:
    """This resolver's names: the one asked for, and the public one the 2D codes carry."""
    hosts = {request.host.lower()}
    public = request.app.get(PUBLIC_URL_KEY, "")
    if public:
        hosts.add(urlsplit(public).netloc.lower())
    return hosts


async def _unknown_prefix(store: Store, prefix: Prefix) -> bool:
    try:
        return await store.lookup_prefix(prefix) is None
    except StoreError:
        return False  # the landing page says what is wrong with the store


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
                ident = search_target(q, _hosts(request))
                if ident.is_prefix_record and "/" not in q.strip():
                    # A bare word parses as a one-node prefix: only one that exists is a find.
                    named = ident.named_prefix
                    assert named is not None
                    if await _unknown_prefix(store, named):
                        raise _not_an_identifier(q.strip())
            except CityIdError as e:
                error = f"{e.message} [rule: {e.rule}]"
                status = 400
            else:
                where = "/" + quote(str(ident), safe="/") + "?noredirect"
                asked_lang = i18n.chosen(request.query.get("lang"))
                if asked_lang:
                    where += f"&lang={asked_lang}"
                return web.Response(
                    status=303, headers={"Location": where, "Cache-Control": "no-store"}
                )
        logs, redis_up = await summaries()
        lang = i18n.request_lang(request.query.get("lang"), request.headers.get("Accept-Language"))[
            0
        ]
        body = pages.explorer_page(logs, redis_up=redis_up, q=q[:MAX_QUERY], error=error, lang=lang)
        headers = dict(page_headers(choose(None, True, lang)))
        headers["Cache-Control"] = "no-cache"
        return web.Response(status=status, body=body, headers=headers)

    router.add_get("/explorer", explorer, name="explorer")


__all__ = ["add_routes", "checkpoint_view", "from_url", "log_summaries", "search_target"]
