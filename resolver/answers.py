"""The resolver's one path for an identifier, shared by both HTTP front ends::

    request -> parse (identifier, representation) -> lookup (the cache, else the
            store: every miss of one event-loop pass in one round trip)
            -> encode (derived from the cache slot) -> reply

:meth:`Resolver.cached` answers from a fresh cache slot with no I/O (the fast
path calls it inline for every ``GET /{id}``). :meth:`Resolver.submit` queues
anything else; once per event-loop pass the queue becomes one batch, one task
and one :meth:`Store.fetch <resolver.store.Store.fetch>` (:meth:`answers`),
and each request's callback gets its reply: no task or future per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from cityid.errors import CityIdError, LedgerError, NotFoundError, OperationError
from cityid.identifiers import IdentifierError, parse_identifier, parse_minted, split_minted
from cityid.records import PUBKEY, SITE
from ledger.client import LogClient
from ledger.tlogproof import TlogProof

from . import explorer, maps, pages, search_pages, stats
from .cache import ABSENT, RECORD, ResponseCache, kind, location_of, read
from .encode import (
    AS_PAGE,
    HANDLE_API,
    JSON_REPS,
    PAGE,
    PAGE_ZH,
    RECORD_JSON,
    REDIRECT,
    REDIRECT_ZH,
    TEXT,
    encode_gone,
    encode_problem,
    encode_record,
    encode_redirect,
    lang_of,
    max_age,
    page_headers,
    record_json,
    redirect,
    values_not_found,
)
from .layout import MAX_BATCH, REDIS_ERRORS, StoreError, log_key
from .metrics import Metrics
from .reply import Reply
from .search_reader import Searcher
from .store import Ask, Entry, Store, ask_id

log = logging.getLogger("cityid.resolver.http")

MAX_FILTERS = 32
MAX_BATCHES = 1  # store round trips in flight at once (see Resolver._flush)
BATCH_STALL = 0.05  # seconds a batch may hold the next one back
MAX_MEMO = 1024  # pages and error answers kept encoded: the hottest few only
_CALLBACK_RE = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]{0,63}(?:\.[A-Za-z_$][A-Za-z0-9_$]{0,63}){0,7}")
_TYPE_RE = re.compile(r"[A-Za-z0-9_./-]{1,64}")
_MINTED_LOOK = re.compile(r"[A-Z]*[0-9]+[0-9A-Z]")
# What parse_identifier accepts, in the shape nearly every request has: ASCII nodes
# and suffix, nothing to strip, not 0.NA (tests/test_resolver_cache.py checks the two agree).
_PLAIN_ID = re.compile(r"[0-9A-Za-z]{1,63}(?:\.[0-9A-Za-z]{1,63}){0,31}/[0-9A-Za-z_-]{1,63}")


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
    search_index: str = ""  # the search index file sync writes (resolver.search_api reads it)
    search_deadline: float = 2.0  # seconds a search may take before it is stopped (503)
    apply_url: str = ""  # where the home page sends a city to apply for its code


def ask_of(asked: str) -> Ask:
    """The store lookup of ``asked`` (any case); :class:`IdentifierError` if it is none."""
    if len(asked) > 4 * 255:
        # Longer than any identifier can be: refuse before doing any work on it.
        raise IdentifierError(
            f"{len(asked)} characters is longer than any identifier", rule="too-long"
        )
    if _PLAIN_ID.fullmatch(asked):
        # parse_identifier would accept it as it is, upper-cased: skip its objects.
        key = asked.upper()
        prefix, _, suffix = key.partition("/")
        if prefix != "0.NA":
            return Ask(prefix, key, suffix, split_minted(suffix))
    return ask_id(parse_identifier(asked))


def _not_found(key: str) -> CityIdError:
    # A minted-looking suffix that fails its check character was mistyped or
    # misread: say that (400) rather than "not registered" (404).
    prefix, _, suffix = key.partition("/")
    if prefix != "0.NA" and _MINTED_LOOK.fullmatch(suffix):
        try:
            parse_minted(suffix)
        except IdentifierError as e:
            return IdentifierError(f"{key} is not registered, and {e.message}", rule=e.rule)
    return NotFoundError(f"{key} is not registered", rule="not-found")


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
        self._neg_age = int(o.negative_ttl)
        # Answers not derived on each use (pages, errors), by (identifier, representation),
        # with the slot they came from: valid while the cache still holds that slot.
        self._memo: OrderedDict[tuple[str, str], tuple[bytes, Reply]] = OrderedDict()
        self._queue: list[tuple[str, str, Callable[[Reply], object]]] = []
        self._flushing: asyncio.Handle | None = None  # the next _flush, once scheduled
        self._batches: set[asyncio.Task[None]] = set()
        self.max_batches = MAX_BATCHES
        self._status: tuple[float, dict[str, Any]] | None = None
        self._proofs: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._clients: dict[tuple[str, str, str], LogClient] = {}
        self._session: aiohttp.ClientSession | None = None
        self._proof_sem = asyncio.Semaphore(4)
        self.searcher = Searcher(o.search_index, o.search_deadline)
        store.subscribe(self._invalidate)

    def _invalidate(self, idents: list[str]) -> None:
        self.cache.invalidate(idents)
        for ident in idents:
            if ident.endswith("/*"):
                # A revocation of P also covers P's own record.
                self.cache.invalidate([f"0.NA/{ident[:-2]}"])

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
        for task in list(self._batches):
            task.cancel()
        self.searcher.close()
        for client in self._clients.values():
            await client.close()
        if self._session is not None:
            await self._session.close()

    # -- answers from the cache: no I/O -------------------------------------------------------

    def cached(self, key: str, asked: str, rep: str) -> Reply | None:
        """The reply from ``key``'s fresh slot, or None (not cached, expired, or a page
        to render). ``key`` is the canonical identifier, ``asked`` its spelling."""
        got = self.cache.fresh(key)
        return None if got is None else self._from_slot(got[0], got[1], key, asked, rep)

    def _from_slot(
        self, blob: bytes, s: tuple[Any, ...], key: str, asked: str, rep: str
    ) -> Reply | None:
        kind = s[7]
        if kind == RECORD:
            if rep in JSON_REPS:
                # As asked (Handle clients compare), less the white space the parser ignores.
                return record_json(asked.strip(), s[3], s[5], blob[s[12] :])
            if s[9] and rep in (REDIRECT, REDIRECT_ZH):
                loc, esc = location_of(blob, s)
                return redirect(loc, esc, s[5], s[3])
            if rep in (REDIRECT, REDIRECT_ZH):
                alias = self._alias(key, blob)
                if alias is not None:
                    return alias
            rep = AS_PAGE[rep]  # no URL, or ?noredirect: the landing page
        elif asked != key:
            return self._error(key, blob, asked, rep)  # echoes the spelling: not kept
        memo = self._memo.get((key, rep))
        if memo is not None and memo[0] is blob:
            reply = memo[1]
            if reply.expires is None or reply.expires > time.monotonic():
                self._memo.move_to_end((key, rep))
                return reply
        if kind == RECORD:
            return None
        reply = self._error(key, blob, asked, rep)
        self._keep(key, rep, blob, reply)
        return reply

    def _alias(self, key: str, blob: bytes) -> Reply | None:
        """301 to the handle an HS_ALIAS value of a record without URL names, if any."""
        entry = self.cache.entry(key, blob)
        alias = entry.record.first("HS_ALIAS") if entry and entry.record else None
        if entry is None or alias is None or not isinstance(alias.data, str):
            return None
        try:
            target = parse_identifier(alias.data)
        except IdentifierError:
            return None  # not a handle this resolver knows how to name: the landing page
        return encode_redirect(entry, f"{self.base_url}/{target}", alias=True)

    def _error(self, key: str, blob: bytes, asked: str, rep: str) -> Reply:
        """404 (not registered) or 410 (deleted), for ``asked`` as spelt."""
        if kind(blob) == ABSENT:
            return encode_problem(
                _not_found(key), asked, rep, cache_control=f"max-age={self._neg_age}"
            )
        entry = self.cache.entry(key, blob)
        assert entry is not None and entry.deleted
        return encode_gone(entry, asked, rep, self._neg_age)

    def _keep(self, key: str, rep: str, blob: bytes, reply: Reply) -> None:
        self._memo[(key, rep)] = (blob, reply)
        if len(self._memo) > MAX_MEMO:
            self._memo.popitem(last=False)

    # -- answers through the store: one round trip per event-loop pass ---------------------

    def submit(self, asked: str, rep: str, done: Callable[[Reply], object]) -> None:
        """Answer ``asked`` in ``rep`` together with the other requests waiting;
        ``done(reply)`` is called with the answer (never with an exception)."""
        self._queue.append((asked, rep, done))
        if self._flushing is None:
            loop = asyncio.get_running_loop()
            if len(self._batches) < self.max_batches:
                # After every request already readable in this loop pass has queued.
                self._flushing = loop.call_soon(self._flush)
            else:
                # When a batch comes back (_batch_done), but not later than this.
                self._flushing = loop.call_later(BATCH_STALL, self._flush)

    def _flush(self) -> None:
        # While max_batches are out, requests wait for one to come back and go in the next:
        # under load, batches grow with the load instead of round trips multiplying (each
        # costs this process and Redis far more than one lookup in it), and a request waits
        # at most one round trip more (BATCH_STALL if Redis stops answering).
        self._flushing = None
        loop = asyncio.get_running_loop()
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = loop.create_task(self._answer_batch(queue[start : start + MAX_BATCH]))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        if self._queue:
            if self._flushing is not None:
                self._flushing.cancel()
            self._flushing = asyncio.get_running_loop().call_soon(self._flush)

    async def _answer_batch(self, batch: list[tuple[str, str, Callable[[Reply], object]]]) -> None:
        try:
            replies = await self.answers([(asked, rep) for asked, rep, _ in batch])
        except Exception:  # a bug: every request still gets an answer, never a traceback
            log.exception("unexpected error answering %d requests", len(batch))
            replies = [internal_error(rep) for _, rep, _ in batch]
        for (asked, _, done), reply in zip(batch, replies, strict=True):
            try:
                done(reply)
            except Exception:
                log.exception("unexpected error sending the answer to /%s", asked[:200])

    async def answer(self, asked: str, rep: str) -> Reply:
        """The reply to ``GET /{asked}`` in representation ``rep``; never raises CityIdError."""
        try:
            key = ask_of(asked).ident
        except CityIdError as e:
            return encode_problem(e, asked, rep)
        reply = self.cached(key, asked, rep)
        if reply is not None:
            self.metrics.inc("cache_hits")
            return reply
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.submit(asked, rep, lambda r: fut.done() or fut.set_result(r))
        return await fut

    async def answers(self, items: Sequence[tuple[str, str]]) -> list[Reply]:
        """The replies to ``GET /{asked}`` in each ``(asked, representation)``: every
        lookup they need in one round trip."""
        out: list[Reply | None] = [None] * len(items)
        asks: dict[str, Ask] = {}
        keys: list[str | None] = []
        for i, (asked, rep) in enumerate(items):
            try:
                a = ask_of(asked)
            except CityIdError as e:
                out[i] = encode_problem(e, asked, rep)
                keys.append(None)
                continue
            asks.setdefault(a.ident, a)
            keys.append(a.ident)
        slots = dict(zip(asks, await self.slots(list(asks.values())), strict=True))
        for i, key in enumerate(keys):
            if key is None:
                continue
            asked, rep = items[i]
            slot = slots[key]
            if isinstance(slot, StoreError):
                out[i] = encode_problem(slot, asked, rep)
                continue
            reply = self._from_slot(slot, read(slot), key, asked, rep)
            out[i] = reply if reply is not None else await self._page(key, slot, AS_PAGE[rep])
        return out  # type: ignore[return-value]

    async def slots(self, asks: Sequence[Ask], *, fresh: bool = False) -> list[bytes | StoreError]:
        """The cache slot of each lookup; those missing or expired (all, if ``fresh``) are
        read from the store in one round trip and cached. A lookup the store could not
        answer is its error, or the expired slot if there was one (stale beats nothing
        while Redis is away; healthz says degraded)."""
        cache = self.cache
        out: list[bytes | StoreError] = []
        todo: list[int] = []
        old: list[bytes | None] = []
        now = time.monotonic()
        for a in asks:
            blob = cache.get(a.ident)
            out.append(blob)  # type: ignore[arg-type]
            if blob is None or fresh or read(blob)[0] <= now:
                todo.append(len(out) - 1)
                old.append(blob)
        m = self.metrics
        if len(asks) > len(todo):
            m.inc("cache_hits", len(asks) - len(todo))
        if not todo:
            return out
        m.inc("cache_misses", len(todo))
        m.inc("store_lookups", len(todo))
        seen = cache.seq
        try:
            got = await self.store.fetch([asks[i] for i in todo])
        except StoreError as e:
            got = [e] * len(todo)
        # An invalidation arrived while we read: what we read may predate it.
        ttl = 0.25 if seen != cache.seq else None
        for i, before, answer in zip(todo, old, got, strict=True):
            if isinstance(answer, StoreError):
                m.inc("store_errors")
                if before is not None:
                    m.inc("cache_stale")
                    out[i] = before
                else:
                    out[i] = answer
            else:
                out[i] = cache.put(asks[i].ident, answer, ttl=ttl)
        return out

    # -- pages ------------------------------------------------------------------------------

    async def _page(self, key: str, blob: bytes, rep: str = PAGE) -> Reply:
        entry = self.cache.entry(key, blob)
        assert entry is not None and entry.record is not None
        # One event-loop pass: the store sends the prefix lookups in one pipeline.
        view, area, nearby = await asyncio.gather(
            self.log_view(entry),
            self.area(entry),
            search_pages.nearby_html(self.searcher, entry, lang_of(rep)),
        )
        body = pages.landing_page(
            entry,
            view,
            area=area,
            resolver_url=f"{self.base_url}/{entry.ident}".upper(),
            proof_url=f"/api/proofs/{entry.ident}",
            json_url=f"/api/handles/{entry.ident}",
            nearby=nearby,
            lang=lang_of(rep),
        )
        reply = Reply.make(
            200,
            [*page_headers(rep), ("Cache-Control", f"max-age={max_age(entry.record)}")],
            body,
            # One tag per language: the two pages are different representations.
            etag=f'"v{entry.version}-h{"z" if rep == PAGE_ZH else ""}'
            f'{view.checkpoint.size if view.checkpoint else 0}"',
        ).until(time.monotonic() + self.options.page_ttl)
        self._keep(key, rep, blob, reply)
        return reply

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
            a = ask_of(asked)
            if not (want_types or want_indexes or pretty or callback or auth):
                return await self.answer(asked, HANDLE_API)
            slot = (await self.slots([a], fresh=auth))[0]
            if isinstance(slot, StoreError):
                raise slot
        except CityIdError as e:
            return encode_problem(e, asked, HANDLE_API)
        entry = self.cache.entry(a.ident, slot)
        if entry is None or entry.deleted or entry.record is None:
            return self._error(a.ident, slot, asked, HANDLE_API)
        record = entry.record
        if want_types or want_indexes:
            record = record.select(want_types, want_indexes)
            if not record.values:
                return values_not_found(entry, asked.strip(), pretty, callback)
        return encode_record(entry, record, asked=asked.strip(), pretty=pretty, callback=callback)

    # -- proofs -----------------------------------------------------------------------------

    async def proof(self, asked: str) -> Reply:
        """The tlog-proof of the leaf that set ``asked``'s current entry, leaf in ``extra``."""
        try:
            a = ask_of(asked)
            slot = (await self.slots([a]))[0]
            if isinstance(slot, StoreError):
                raise slot
            entry = self.cache.entry(a.ident, slot)
            if entry is None:
                raise _not_found(a.ident)
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
            elif st.get("redis") and not lg.get("ready"):
                reasons.append(
                    f"log {lg['origin']} still loading ({lg.get('applied', 0):,} of "
                    f"{lg.get('size', 0):,} entries): what it holds is answered 'not ready'"
                )
        body: dict[str, Any] = {
            "status": "degraded" if reasons else "ok",
            "redis": bool(st.get("redis")),
            "logs": [
                {k: lg.get(k) for k in ("origin", "size", "state", "reason", "ready")}
                for lg in st.get("logs", [])
            ],
            "cached": len(self.cache),
        }
        if reasons:
            body["reasons"] = reasons
            body["serving"] = "cached answers only" if not st.get("redis") else "yes"
        return (503 if reasons else 200), body

    async def prometheus(self) -> bytes:
        lines = self.metrics.lines(len(self.cache))
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


def internal_error(rep: str) -> Reply:
    return encode_problem(CityIdError("internal error", rule="internal"), "", rep)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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


_KNOWN = {
    "URL",
    "EMAIL",
    "DESC",
    "GEO",
    "HS_ADMIN",
    "HS_PUBKEY",
    "HS_SITE",
    "NS",
    "NAME",
    SITE,
    PUBKEY,
}


__all__ = ["Resolver", "ServeOptions", "ask_of", "internal_error"]
