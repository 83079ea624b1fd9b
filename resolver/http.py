"""The resolver's HTTP front end: doi.org-style redirects and the Handle REST API.

One request's way through, for every route::

    request -> parse (identifier, representation) -> lookup (cache, else store)
            -> encode (a Reply, memoised in the cache slot) -> reply

:class:`Resolver` is that path, shared by the aiohttp application built here
and by the lean fast path (:mod:`resolver.fastpath`), which answers plain
``GET /{id}`` from the same cache and hands everything else to this app.

Routes:

* ``GET /{id}``: 302 to the first URL value; ``Accept: application/json``
  gets the record in the Handle JSON shape; a record without a URL, or
  ``?noredirect``, gets the HTML landing page (JSON if asked). 404 unknown,
  400 malformed (naming the rule; a minted-looking suffix whose check
  character is wrong says so), 410 deleted (the tombstone: the log leaf that
  deleted it, with its proof).
* ``GET /api/handles/{id}``: the Handle REST answer, with ``type``, ``index``,
  ``pretty``, ``callback`` (JSONP) and ``auth`` (bypass the cache).
* ``GET /api/proofs/{id}``: the ``c2sp.org/tlog-proof`` of the leaf that set
  the current record, the leaf itself in its ``extra`` line.
* ``GET /metrics`` (Prometheus text), ``GET /healthz``, ``GET /``.
* ``OPTIONS`` anywhere: CORS preflight. Any other method: 405; the resolver is
  read-only, and a write is never redirected.

Every answer is ``HEAD``-able, carries ``Access-Control-Allow-Origin: *``,
and successful ones an ``ETag`` (version and representation) and
``Cache-Control: max-age`` (the smallest TTL of the values); ``If-None-Match``
gets 304. Typed errors become answers in one place, :func:`problem`, through
:func:`cityid.handle.error_body`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import mmap
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from cityid.errors import CityIdError, LedgerError, NotFoundError, OperationError
from cityid.handle import VALUES_NOT_FOUND, error_body
from cityid.identifiers import Identifier, IdentifierError, parse_identifier, parse_minted
from cityid.records import Record
from ledger.client import LogClient
from ledger.tlogproof import TlogProof

from . import assets, explorer, maps, openapi, pages, scanner, stats
from .cache import Reply, ResponseCache, Slot
from .store import REDIS_ERRORS, Entry, Store, StoreError, log_key

log = logging.getLogger("cityid.resolver.http")

JSON = "application/json"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
# Representations of one identifier, the keys of a cache slot's replies.
REDIRECT, RECORD_JSON, PAGE = "redirect", "json", "html"
MAX_ECHO = 512  # characters of a bad request echoed back in an error body
MAX_FILTERS = 32
NO_STORE = "no-store"
_CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(?:\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,7}")
_TYPE_RE = re.compile(r"[A-Za-z0-9_./-]{1,64}")
_MINTED_LOOK = re.compile(r"[A-Z]*[0-9]+[0-9A-Z]")
# RFC 3986 reserved and unreserved characters, and '%' (keep existing escapes).
_URI_SAFE = ":/?#[]@!$&'()*+,;=-._~%"


@dataclass(slots=True)
class ServeOptions:
    """How one serving process behaves (from ``resolver.toml`` or the command line)."""

    public_url: str = ""  # base of the URL in 2D codes; default http://<listen>
    cache_size: int = 100_000  # identifiers per process
    # Only a safety net: sync's invalidations arrive first, and the store replays
    # "*" after a lost subscription. Short TTLs turn a big hot set into a constant
    # refresh load on Redis (a million entries at 300 s is 3,300 lookups/s).
    cache_ttl: float = 3600.0
    negative_ttl: float = 5.0  # 404s: short, so a new mint shows at once anyway
    page_ttl: float = 30.0  # HTML pages show the checkpoint size, which moves
    status_ttl: float = 1.0  # how long a sync status read is reused
    proof_cache: int = 256
    fast_path: bool = True


# -- metrics ---------------------------------------------------------------------------

ROUTES = ("resolve", "handles", "proofs", "metrics", "healthz", "index", "other")
STATUSES = (200, 204, 302, 304, 400, 404, 405, 410, 500, 503, 0)  # 0: any other
COUNTERS = (
    "cache_hits",
    "cache_misses",
    "cache_stale",
    "store_lookups",
    "store_errors",
    "fast_requests",
    "handoffs",
)


class Metrics:
    """Counters in a flat int64 array, one row per worker process.

    The server maps one shared anonymous region before starting its workers;
    each worker writes only its own row (no locks: aligned 8-byte stores are
    atomic), and ``/metrics`` in any worker sums every row, so a scrape that
    SO_REUSEPORT sends to one worker still sees the whole server.
    """

    _REQ: ClassVar[dict[tuple[str, int], int]] = {
        (r, s): i for i, (r, s) in enumerate((r, s) for r in ROUTES for s in STATUSES)
    }
    _CTR: ClassVar[dict[str, int]] = {
        name: len(ROUTES) * len(STATUSES) + i for i, name in enumerate(COUNTERS)
    }
    ROW = len(ROUTES) * len(STATUSES) + len(COUNTERS)

    def __init__(self, region: mmap.mmap | None = None, worker: int = 0, workers: int = 1) -> None:
        self.workers = workers
        self._region = region if region is not None else mmap.mmap(-1, 8 * self.ROW * workers)
        self.cells = memoryview(self._region).cast("q")
        self.base = worker * self.ROW

    @classmethod
    def region(cls, workers: int) -> mmap.mmap:
        """A zeroed region shared with processes forked or spawned after it (MAP_SHARED)."""
        return mmap.mmap(-1, 8 * cls.ROW * workers)

    def request_index(self, route: str, status: int) -> int:
        i = self._REQ.get((route, status))
        return i if i is not None else self._REQ[(route if route in ROUTES else "other", 0)]

    def counter_index(self, name: str) -> int:
        return self._CTR[name]

    def request(self, route: str, status: int) -> None:
        self.cells[self.base + self.request_index(route, status)] += 1

    def inc(self, name: str, n: int = 1) -> None:
        self.cells[self.base + self._CTR[name]] += n

    def totals(self) -> list[int]:
        cells, row = self.cells, self.ROW
        return [sum(cells[w * row + i] for w in range(self.workers)) for i in range(row)]

    def counter(self, name: str) -> int:
        return self.totals()[self._CTR[name]]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- representation choice -------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _prefers_json(accept: str) -> bool:
    """Whether ``accept`` ranks application/json above text/html (RFC 9110 §12.5.1).

    Total on any input: a range that does not parse is ignored, never an error,
    so a garbled header gets the default (the redirect or the page).
    """
    best: dict[str, tuple[int, float]] = {}  # type -> (specificity, q) of the best match
    for item in accept.split(",")[:32]:
        media, *params = item.strip().split(";")
        media = media.strip().lower()
        if media.count("/") != 1:
            continue
        q = 1.0
        for p in params:
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0 or math.isnan(q):
                    q = 0.0
        for want in ("application/json", "text/html"):
            top, sub = want.split("/")
            mt, ms = media.split("/")
            if (mt, ms) == (top, sub):
                spec = 2
            elif mt == top and ms == "*":
                spec = 1
            elif (mt, ms) == ("*", "*"):
                spec = 0
            else:
                continue
            if want not in best or spec > best[want][0]:
                best[want] = (spec, q)
    q_json = best.get("application/json", (0, 0.0))[1]
    q_html = best.get("text/html", (0, 0.0))[1]
    return q_json > q_html


def choose(accept: str | None, noredirect: bool) -> str:
    """The representation of ``GET /{id}``: the redirect, the JSON record or the page."""
    if accept and "json" in accept and len(accept) <= 1024 and _prefers_json(accept):
        return RECORD_JSON
    return PAGE if noredirect else REDIRECT


# -- encoding: pure functions from an answer to a Reply ---------------------------------


def _max_age(record: Record | None, default: int) -> str:
    ttls = [v.ttl for v in record.values] if record is not None else []
    return f"max-age={min(ttls) if ttls else default}"


def _dumps(body: dict[str, Any], pretty: bool = False) -> bytes:
    if pretty:
        return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def location(url: str) -> str:
    """``url`` as a URI for the ``Location`` header (RFC 3987 §3.1: IRI to URI).

    Records may hold IRIs (a Chinese path, an internationalised host); a header
    is ASCII: the host goes to its IDNA (xn--) form, everything else non-ASCII
    is percent-encoded as UTF-8. ASCII URLs, the usual case, pass unchanged.
    """
    if url.isascii():
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        try:
            netloc = netloc.encode("idna").decode("ascii")
        except UnicodeError:
            netloc = quote(netloc, safe=_URI_SAFE)
    rest = urlunsplit(("", "", parts.path, parts.query, parts.fragment))
    return f"{parts.scheme}://{netloc}{quote(rest, safe=_URI_SAFE)}"


def encode_redirect(entry: Entry, url: str) -> Reply:
    assert entry.record is not None
    return Reply.make(
        302,
        [
            ("Location", location(url)),
            ("Content-Type", HTML),
            ("Cache-Control", _max_age(entry.record, 300)),
            ("Vary", "Accept"),
        ],
        pages.redirect_body(url),
        etag=f'"v{entry.version}-r"',
    )


def encode_record(
    entry: Entry, record: Record, *, code: int = 1, pretty: bool = False, callback: str = ""
) -> Reply:
    """The Handle REST body of ``record`` (all of ``entry``'s values, or a selection)."""
    body = _dumps(record.to_json(entry.ident, code), pretty)
    ctype = JSON
    if callback:
        # The comment keeps a crafted callback from being read as a Flash/SWF header.
        body = b"/**/" + callback.encode() + b"(" + body + b");"
        ctype = "application/javascript; charset=utf-8"
    tag = f'"v{entry.version}-j"' if (code == 1 and not pretty and not callback) else None
    return Reply.make(
        200,
        [("Content-Type", ctype), ("Cache-Control", _max_age(record, 300)), ("Vary", "Accept")],
        body,
        etag=tag,
    )


def problem(exc: CityIdError, asked: str) -> tuple[int, dict[str, Any]]:
    """The one place a typed error becomes an HTTP status and a Handle body."""
    if isinstance(exc, StoreError):
        # Redis unreachable is "server too busy" (3 -> 503) in Handle terms; the
        # store's error class is not in cityid.handle's table (see the report).
        exc = LedgerError(exc.message, rule=exc.rule)
    return error_body(exc, asked[:MAX_ECHO])


_TITLES = {400: "Bad identifier", 404: "Not registered", 410: "Deleted", 503: "Unavailable"}


def encode_problem(
    exc: CityIdError, asked: str, rep: str, *, cache_control: str = NO_STORE
) -> Reply:
    status, body = problem(exc, asked)
    return _error_reply(status, body, rep, asked, cache_control)


def _error_reply(
    status: int, body: dict[str, Any], rep: str, asked: str, cache_control: str
) -> Reply:
    headers = [("Cache-Control", cache_control), ("Vary", "Accept")]
    if rep == RECORD_JSON:
        return Reply.make(status, [("Content-Type", JSON), *headers], _dumps(body))
    page = pages.error_page(
        status,
        _TITLES.get(status, "Error"),
        str(body.get("message", "")),
        asked=asked[:MAX_ECHO],
        rule=str(body.get("rule", "")),
    )
    return Reply.make(
        status, [("Content-Type", HTML), ("Content-Security-Policy", pages.CSP), *headers], page
    )


def encode_gone(entry: Entry, asked: str, rep: str, negative_ttl: int) -> Reply:
    """410: the identifier existed and its deletion is in the log (the signed tombstone)."""
    exc = NotFoundError(f"{entry.ident} was deleted (version {entry.version})", rule="deleted")
    _, body = problem(exc, asked)
    body |= {
        "deleted": True,
        "version": entry.version,
        "origin": entry.origin,
        "leafIndex": entry.leaf_index,
        "proof": f"/api/proofs/{entry.ident}",
    }
    # Handle has no "gone": the code stays 100 (not found) for Handle clients,
    # and HTTP says 410 because the log proves it once existed (DESIGN §5).
    return _error_reply(410, body, rep, asked, f"max-age={negative_ttl}")


def _values_not_found(entry: Entry, pretty: bool, callback: str) -> Reply:
    return encode_record(entry, Record(()), code=VALUES_NOT_FOUND, pretty=pretty, callback=callback)


# -- the resolver -----------------------------------------------------------------------


def _parse(asked: str) -> Identifier:
    if len(asked) > 4 * 255:
        # Longer than any identifier can be: refuse before doing any work on it.
        raise IdentifierError(
            f"{len(asked)} characters is longer than any identifier", rule="too-long"
        )
    return parse_identifier(asked)


class Resolver:
    """parse -> lookup -> encode, with the cache in front; shared by both front ends."""

    def __init__(
        self,
        store: Store,
        options: ServeOptions | None = None,
        *,
        metrics: Metrics | None = None,
        base_url: str = "http://127.0.0.1:8080",
    ) -> None:
        self.store = store
        self.options = options or ServeOptions()
        o = self.options
        self.cache = ResponseCache(o.cache_size, ttl=o.cache_ttl, negative_ttl=o.negative_ttl)
        self.metrics = metrics or Metrics()
        self.base_url = (o.public_url or base_url).rstrip("/")
        self._status: tuple[float, dict[str, Any]] | None = None
        self._proofs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._clients: dict[tuple[str, str, str], LogClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._proof_sem = asyncio.Semaphore(4)
        store.subscribe(self._invalidate)

    def _invalidate(self, idents: list[str]) -> None:
        self.cache.invalidate(idents)
        for ident in idents:
            if ident.endswith("/*"):
                # A revocation of P also covers P's own record.
                self.cache.invalidate([f"0.NA/{ident[:-2]}"])

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        if self._session is not None:
            await self._session.close()

    # -- lookup ---------------------------------------------------------------------------

    async def slot(self, ident: Identifier, *, fresh: bool = False) -> Slot:
        """The cache slot of ``ident``, refreshed from the store if expired (or ``fresh``)."""
        key = str(ident)
        slot = self.cache.get(key)
        if slot is not None and not fresh and slot.fresh:
            self.metrics.inc("cache_hits")
            return slot
        self.metrics.inc("cache_misses")
        self.metrics.inc("store_lookups")
        seen = self.cache.seq
        try:
            entry = await self.store.lookup(ident)
        except StoreError:
            self.metrics.inc("store_errors")
            if slot is not None:
                # Stale beats nothing while Redis is away (healthz says degraded).
                self.metrics.inc("cache_stale")
                return slot
            raise
        new = self.cache.put(key, entry)
        if seen != self.cache.seq:
            # An invalidation arrived while we read: what we read may predate it.
            new.expires = min(new.expires, time.monotonic() + 0.25)
        return new

    # -- answers ----------------------------------------------------------------------------

    async def answer(self, asked: str, rep: str) -> Reply:
        """The reply to ``GET /{asked}`` in representation ``rep``; never raises CityIdError."""
        try:
            ident = _parse(asked)
            slot = await self.slot(ident)
        except CityIdError as e:
            return encode_problem(e, asked, rep)
        key = str(ident)
        memo = slot.replies.get(rep)
        if (
            memo is not None
            and (memo.expires is None or memo.expires > time.monotonic())
            and (asked == key or memo.status < 400)
        ):
            return memo
        reply = await self._encode(slot, ident, asked, rep)
        # Error bodies echo the identifier as asked: memoise the canonical spelling's only.
        if asked == key or reply.status < 400:
            slot.replies[rep] = reply
        return reply

    async def _encode(self, slot: Slot, ident: Identifier, asked: str, rep: str) -> Reply:
        entry = slot.entry
        neg = int(self.options.negative_ttl)
        if entry is None:
            return encode_problem(
                self._not_found(ident), asked, rep, cache_control=f"max-age={neg}"
            )
        if entry.deleted or entry.record is None:
            return encode_gone(entry, asked, rep, neg)
        if rep == RECORD_JSON:
            return encode_record(entry, entry.record)
        urls = entry.record.urls()
        if rep == REDIRECT and urls:
            return encode_redirect(entry, urls[0])
        return await self._page(entry)

    @staticmethod
    def _not_found(ident: Identifier) -> CityIdError:
        # A minted-looking suffix that fails its check character was mistyped or
        # misread: say that (400) rather than "not registered" (404).
        if not ident.is_prefix_record and _MINTED_LOOK.fullmatch(ident.suffix):
            try:
                parse_minted(ident.suffix)
            except IdentifierError as e:
                return IdentifierError(f"{ident} is not registered, and {e.message}", rule=e.rule)
        return NotFoundError(f"{ident} is not registered", rule="not-found")

    async def _page(self, entry: Entry) -> Reply:
        # One event-loop pass: the store sends the prefix lookups in one pipeline.
        view, area = await asyncio.gather(self.log_view(entry), self.area(entry))
        body = pages.landing_page(
            entry,
            view,
            area=area,
            resolver_url=f"{self.base_url}/{entry.ident}".upper(),
            proof_url=f"/api/proofs/{entry.ident}",
            json_url=f"/api/handles/{entry.ident}",
        )
        reply = Reply.make(
            200,
            [
                ("Content-Type", HTML),
                ("Content-Security-Policy", pages.CSP),
                ("Cache-Control", _max_age(entry.record, 300)),
                ("Vary", "Accept"),
            ],
            body,
            etag=f'"v{entry.version}-h{view.checkpoint.size if view.checkpoint else 0}"',
        )
        return reply.until(time.monotonic() + self.options.page_ttl)

    async def area(self, entry: Entry) -> maps.Area | None:
        """The nearest ancestor prefix record's extent and centre, for the map of a GEO point.

        Only for records with a GEO value; the lookups share the store's batched read.
        """
        if entry.record is None or entry.record.first("GEO") is None:
            return None
        ident = parse_identifier(entry.ident)
        own = ident.named_prefix or ident.prefix
        chain = own.ancestors()
        try:
            found = await asyncio.gather(*(self.store.lookup_prefix(p) for p in chain))
        except StoreError:
            return None
        areas = [maps.area_of(e.record) for e in found if e is not None and e.record is not None]
        return next((a for a in areas if a.box is not None), None) or next(
            (a for a in areas if a.centre is not None), None
        )

    async def log_view(self, entry: Entry) -> pages.LogView:
        """Where ``entry`` comes from: its log, the checkpoint sync verified, who cosigned it."""
        status = await self.status()
        state = next((lg for lg in status.get("logs", []) if lg["origin"] == entry.origin), None)
        try:
            note = await self.store.checkpoint(entry.origin)
        except StoreError:
            note = None
        return pages.LogView(
            entry.origin,
            entry.leaf_index,
            checkpoint=explorer.checkpoint_view(note),
            state=str(state["state"])
            if state
            else ("unknown" if status["redis"] else "unreachable"),
            reason=str(state["reason"]) if state else "",
        )

    async def status(self, *, max_age: float | None = None) -> dict[str, Any]:
        """``store.status()``, reused for ``status_ttl`` (pages, metrics and healthz read it)."""
        max_age = self.options.status_ttl if max_age is None else max_age
        now = time.monotonic()
        if self._status is not None and now - self._status[0] < max_age:
            return self._status[1]
        try:
            st = await asyncio.wait_for(self.store.status(), 3.0)
        except (TimeoutError, StoreError, OSError) as e:
            st = {"redis": False, "error": str(e) or "timed out", "logs": []}
        self._status = (time.monotonic(), st)
        return st

    # -- Handle API -------------------------------------------------------------------------

    async def handle_api(
        self,
        asked: str,
        types: Sequence[str],
        indexes: Sequence[str],
        *,
        pretty: bool,
        callback: str,
        auth: bool,
    ) -> Reply:
        try:
            if callback and not _CALLBACK_RE.fullmatch(callback):
                raise OperationError(
                    "callback must be a JavaScript name such as handleAnswer or app.cb "
                    "(letters, digits, _ and $, dotted, at most 64 characters a part)",
                    rule="callback",
                )
            want_types, want_indexes = _filters(types, indexes)
            ident = _parse(asked)
            plain = not (want_types or want_indexes or pretty or callback or auth)
            if plain:
                return await self.answer(asked, RECORD_JSON)
            slot = await self.slot(ident, fresh=auth)
        except CityIdError as e:
            return encode_problem(e, asked, RECORD_JSON)
        entry = slot.entry
        if entry is None or entry.deleted or entry.record is None:
            return await self._encode(slot, ident, asked, RECORD_JSON)
        record = entry.record
        if want_types or want_indexes:
            record = record.select(want_types, want_indexes)
            if not record.values:
                return _values_not_found(entry, pretty, callback)
        return encode_record(entry, record, pretty=pretty, callback=callback)

    # -- proofs -----------------------------------------------------------------------------

    async def proof(self, asked: str) -> Reply:
        """The tlog-proof of the leaf that set ``asked``'s current entry, leaf in ``extra``."""
        try:
            ident = _parse(asked)
            slot = await self.slot(ident)
            entry = slot.entry
            if entry is None:
                raise self._not_found(ident)
            data = await self._proof_bytes(entry)
        except CityIdError as e:
            return encode_problem(e, asked, RECORD_JSON)
        return Reply.make(
            200,
            [("Content-Type", TEXT), ("Cache-Control", "max-age=60")],
            data,
            etag=f'"v{entry.version}-p{TlogProof.parse(data).checkpoint.size}"',
        )

    async def _proof_bytes(self, entry: Entry) -> bytes:
        store = self.store
        note = await store.checkpoint(entry.origin)
        url = await store.log_url(entry.origin)
        raw_key = await store.redis.hget(log_key(entry.origin), "key")
        if note is None or not url or not raw_key:
            raise LedgerError(
                f"log {entry.origin} has no verified checkpoint in this resolver yet",
                rule="not-synced",
            )
        vkey = raw_key.decode()
        cache_key = (entry.ident, entry.version, hash(note))
        got = self._proofs.get(cache_key)
        if got is not None:
            self._proofs.move_to_end(cache_key)
            return got
        async with self._proof_sem:
            client = self._client(entry.origin, url, vkey)
            # Sync verified this note against the full witness policy before storing
            # it; re-checking the log signature here costs one verification and
            # catches a cache that was written by something else.
            cp = client.policy.check(note, origin=entry.origin)
            if entry.leaf_index >= cp.size:
                raise LedgerError(
                    f"leaf {entry.leaf_index} is not yet under the verified checkpoint",
                    rule="not-synced",
                )
            proof = await client.tlog_proof(entry.leaf_index, cp, note)
            leaf = b""
            async for _, data in client.entries(entry.leaf_index, entry.leaf_index + 1, cp):
                leaf = data
        out = TlogProof(proof.index, proof.proof, proof.note, leaf).encode()
        self._proofs[cache_key] = out
        while len(self._proofs) > self.options.proof_cache:
            self._proofs.popitem(last=False)
        return out

    def _client(self, origin: str, url: str, vkey: str) -> LogClient:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        key = (origin, url, vkey)
        client = self._clients.get(key)
        if client is None:
            client = LogClient(url, vkey, self._session, origin=origin, cache_tiles=64)
            self._clients[key] = client
        return client

    # -- health and metrics -----------------------------------------------------------------

    async def health(self) -> tuple[int, dict[str, Any]]:
        st = await self.status(max_age=0.25)
        reasons = []
        if not st.get("redis"):
            reasons.append(f"redis unreachable: {st.get('error', '')}".strip())
        for lg in st.get("logs", []):
            if lg.get("state") == "alarm":
                reasons.append(f"log {lg['origin']} in alarm: {lg.get('reason', '')}")
        body: dict[str, Any] = {
            "status": "degraded" if reasons else "ok",
            "redis": bool(st.get("redis")),
            "logs": [
                {k: lg.get(k) for k in ("origin", "size", "state", "reason")}
                for lg in st.get("logs", [])
            ],
            "cached": len(self.cache),
        }
        if reasons:
            body["reasons"] = reasons
            body["serving"] = "cached answers only" if not st.get("redis") else "yes"
        return (503 if reasons else 200), body

    async def prometheus(self) -> bytes:
        totals = self.metrics.totals()
        lines = [
            "# HELP cityid_resolver_requests_total HTTP requests answered, by route and status.",
            "# TYPE cityid_resolver_requests_total counter",
        ]
        for (route, status), i in Metrics._REQ.items():
            if totals[i]:
                s = str(status) if status else "other"
                lines.append(
                    f'cityid_resolver_requests_total{{route="{route}",status="{s}"}} {totals[i]}'
                )
        helps = {
            "cache_hits": "answers served from the in-process cache",
            "cache_misses": "answers that needed a store lookup",
            "cache_stale": "expired answers served because Redis was unreachable",
            "store_lookups": "lookups sent to the store (coalesced into pipelines)",
            "store_errors": "lookups that failed because Redis was unreachable",
            "fast_requests": "requests answered by the lean fast path",
            "handoffs": "connections handed from the fast path to the full application",
        }
        for name, i in Metrics._CTR.items():
            metric = f"cityid_resolver_{name}_total"
            lines += [f"# HELP {metric} {helps[name]}.", f"# TYPE {metric} counter"]
            lines.append(f"{metric} {totals[i]}")
        lines += [
            "# HELP cityid_resolver_cache_entries Identifiers cached in the answering process.",
            "# TYPE cityid_resolver_cache_entries gauge",
            f"cityid_resolver_cache_entries {len(self.cache)}",
            "# HELP cityid_resolver_workers Serving processes sharing the port.",
            "# TYPE cityid_resolver_workers gauge",
            f"cityid_resolver_workers {self.metrics.workers}",
        ]
        st = await self.status()
        lines += [
            "# HELP cityid_sync_redis_up Whether Redis answered the last status read.",
            "# TYPE cityid_sync_redis_up gauge",
            f"cityid_sync_redis_up {int(bool(st.get('redis')))}",
            "# HELP cityid_sync_log_size Size of the last checkpoint sync verified, per log.",
            "# TYPE cityid_sync_log_size gauge",
        ]
        logs = st.get("logs", [])
        for lg in logs:
            lines.append(f'cityid_sync_log_size{{origin="{_label(lg["origin"])}"}} {lg["size"]}')
        lines += [
            "# HELP cityid_sync_log_applied Entries of each log applied to Redis.",
            "# TYPE cityid_sync_log_applied gauge",
        ]
        for lg in logs:
            lines.append(
                f'cityid_sync_log_applied{{origin="{_label(lg["origin"])}"}} {lg.get("applied", 0)}'
            )
        lines += [
            "# HELP cityid_sync_log_state 1 for each log's current sync state.",
            "# TYPE cityid_sync_log_state gauge",
        ]
        for lg in logs:
            for state in ("ok", "alarm", "unreachable", "pending"):
                lines.append(
                    f'cityid_sync_log_state{{origin="{_label(lg["origin"])}",state="{state}"}} '
                    f"{int(lg.get('state') == state)}"
                )
        # Sync and DNS processes publish their own counters in Redis (resolver/stats.py).
        try:
            entries = await asyncio.wait_for(stats.read(self.store.redis), 2.0)
        except (TimeoutError, *REDIS_ERRORS):
            entries = []
        lines += stats.prometheus_lines(entries)
        return ("\n".join(lines) + "\n").encode()


def _filters(types: Sequence[str], indexes: Sequence[str]) -> tuple[list[str], list[int]]:
    if len(types) + len(indexes) > MAX_FILTERS:
        raise OperationError(f"at most {MAX_FILTERS} type and index filters", rule="filters")
    for t in types:
        if not _TYPE_RE.fullmatch(t):
            raise OperationError(
                f"type {t[:80]!r} must be 1-64 of A-Z a-z 0-9 _ . / -", rule="type"
            )
    out: list[int] = []
    for i in indexes:
        if not (i.isascii() and i.isdigit() and len(i) <= 10):
            raise OperationError(f"index {i[:80]!r} must be a positive integer", rule="index")
        out.append(int(i))
    # Known types are upper case in records (URL, EMAIL...); Handle clients send either.
    return [t.upper() if t.upper() in _KNOWN else t for t in types], out


_KNOWN = {"URL", "EMAIL", "DESC", "GEO", "HS_ADMIN", "HS_PUBKEY", "HS_SITE", "NS", "NAME"}


# -- aiohttp ------------------------------------------------------------------------------

RESOLVER_KEY: web.AppKey[Resolver] = web.AppKey("resolver", Resolver)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALLOW = "GET, HEAD, OPTIONS"


def _route(request: web.Request) -> str:
    name = request.match_info.route.name
    return name if name in ROUTES else "other"


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Method policy, CORS preflight, metrics and the last line of defence."""
    resolver = request.app[RESOLVER_KEY]
    route = _route(request)
    if request.method == "OPTIONS":
        resp: web.StreamResponse = web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Methods": ALLOW,
                "Access-Control-Allow-Headers": "Accept, If-None-Match, Content-Type",
                "Access-Control-Max-Age": "86400",
                "Allow": ALLOW,
            },
        )
    elif request.method not in ("GET", "HEAD"):
        # Read-only: writes go to the registrar, and are never redirected there.
        body = {
            "message": f"{request.method} is not allowed: the resolver is read-only; write "
            "through the registrar's /api/handles",
            "rule": "read-only",
        }
        resp = web.Response(
            status=405,
            body=_dumps(body),
            content_type="application/json",
            headers={"Allow": ALLOW, "Access-Control-Allow-Origin": "*"},
        )
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = web.Response(
                status=e.status,
                body=_dumps({"message": e.reason, "rule": "http"}),
                content_type="application/json",
                headers={"Access-Control-Allow-Origin": "*"},
            )
        except Exception:
            log.exception("unexpected error answering %s", request.path_qs[:200])
            status, err = error_body(CityIdError("internal error", rule="internal"))
            resp = web.Response(status=status, body=_dumps(err), content_type="application/json")
    resolver.metrics.request(route, resp.status)
    return resp


async def get_id(request: web.Request) -> web.Response:
    resolver = request.app[RESOLVER_KEY]
    rep = choose(request.headers.get("Accept"), "noredirect" in request.query)
    return assets.respond(await resolver.answer(request.match_info["id"], rep), request)


async def get_handle(request: web.Request) -> web.Response:
    q = request.query
    reply = await request.app[RESOLVER_KEY].handle_api(
        request.match_info["id"],
        q.getall("type", []),
        q.getall("index", []),
        pretty="pretty" in q and q.get("pretty", "").lower() not in ("false", "0"),
        callback=q.get("callback", ""),
        auth="auth" in q and q.get("auth", "").lower() not in ("false", "0"),
    )
    return assets.respond(reply, request)


async def get_proof(request: web.Request) -> web.Response:
    reply = await request.app[RESOLVER_KEY].proof(request.match_info["id"])
    return assets.respond(reply, request)


async def healthz(request: web.Request) -> web.Response:
    status, body = await request.app[RESOLVER_KEY].health()
    return web.Response(
        status=status,
        body=_dumps(body),
        content_type="application/json",
        headers={"Cache-Control": NO_STORE, "Access-Control-Allow-Origin": "*"},
    )


async def metrics(request: web.Request) -> web.Response:
    body = await request.app[RESOLVER_KEY].prometheus()
    return web.Response(
        body=body,
        headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
            "Cache-Control": NO_STORE,
        },
    )


async def index(request: web.Request) -> web.Response:
    st = await request.app[RESOLVER_KEY].status()
    if choose(request.headers.get("Accept"), True) == RECORD_JSON:
        body = _dumps({"service": "cityid resolver", **st})
        return web.Response(body=body, content_type="application/json")
    page = pages.index_page(st.get("logs", []), bool(st.get("redis")))
    return web.Response(
        body=page,
        headers={"Content-Type": HTML, "Content-Security-Policy": pages.CSP},
    )


async def no_favicon(request: web.Request) -> web.Response:
    return web.Response(status=404, headers={"Cache-Control": "max-age=86400"})


def make_app(resolver: Resolver) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=1024)
    app[RESOLVER_KEY] = resolver
    r = app.router
    r.add_get("/", index, name="index")
    r.add_get("/healthz", healthz, name="healthz")
    r.add_get("/metrics", metrics, name="metrics")
    r.add_get("/favicon.ico", no_favicon)
    # [\s\S], not '.': an identifier with a line break (%0A) is still answered (400, or
    # stripped like other surrounding white space), not left unrouted (a bare 404).
    r.add_get(r"/api/handles/{id:[\s\S]+}", get_handle, name="handles")
    r.add_get(r"/api/proofs/{id:[\s\S]+}", get_proof, name="proofs")
    # The application's own pages are single path segments: no identifier is (it has a slash).
    explorer.add_routes(r, resolver)
    openapi.add_routes(r)
    scanner.add_routes(r)
    r.add_get(r"/{id:[\s\S]+}", get_id, name="resolve")
    # Other methods reach the middleware (405 or the CORS preflight) on every path.
    r.add_route("*", "/{tail:.*}", _unreachable)
    return app


async def _unreachable(request: web.Request) -> web.Response:  # pragma: no cover
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD", "OPTIONS"])
