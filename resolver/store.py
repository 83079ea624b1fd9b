"""Read identifiers from Redis, as :mod:`resolver.layout` lays them out.

Lookups issued in one event-loop pass go out as one pipeline; each answer is
what sync verified and stored (:func:`cityid.records.decode_trusted`). A miss is
final once sync has caught up with the log that would hold the name; before,
it is :class:`~resolver.layout.NotReadyError` (see the layout's notes on
readiness). Sync's invalidations arrive through :meth:`Store.subscribe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgpack
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cityid.errors import RecordError
from cityid.identifiers import Identifier, Prefix, has_valid_check, split_minted
from cityid.records import Record, decode_trusted, render_template

from . import membership
from .layout import (
    ALL,
    ANCHORS,
    CHANNEL,
    EPOCH,
    LEADER,
    LISTPACK_ENTRIES,
    LISTPACK_VALUE,
    MAX_BATCH,
    MAX_FILTER_BYTES,
    ORIGINS,
    READY,
    RECENT_BATCHES,
    REDIS_ERRORS,
    RELOAD_INTERVAL,
    Batch,
    Change,
    Cursor,
    IdChange,
    MintChange,
    NotReadyError,
    PrefixChange,
    PrefixMeta,
    RangeChange,
    RevokeChange,
    StoreError,
    batches_key,
    bits_for,
    bucket_of,
    children_key,
    filter_key,
    id_key,
    log_key,
    meta_key,
    prefix_key,
    range_bound,
    range_key,
    unpack,
)
from .resp import Command, RespPipe, pipeline, supports
from .writer import Writer

log = logging.getLogger("cityid.resolver.store")


# -- what readers get -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    ident: str  # canonical identifier
    version: int
    deleted: bool  # a tombstone (HTTP 410)
    record: Record | None  # None when deleted
    origin: str  # log origin holding the leaf
    leaf_index: int


@dataclass(frozen=True, slots=True)
class PrefixInfo:
    """A delegated prefix: its record entry, key, the log hosting its content, its sites."""

    entry: Entry
    key: bytes
    host: str
    sites: dict[str, str]
    revoked: bool


# -- the store (readers) --------------------------------------------------------------


@dataclass(slots=True)
class Ask:
    """One lookup, as :meth:`Store.fetch` takes it (:func:`ask_id`, :func:`ask_prefix`)."""

    prefix: str  # the prefix whose layout governs the answer
    ident: str
    suffix: str | None  # None: a prefix record lookup
    minted: tuple[str, int, int] | None  # letters, number, width


def ask_prefix(prefix: Prefix) -> Ask:
    """The lookup of the prefix record ``0.NA/P``."""
    p = str(prefix)
    return Ask(p, f"0.NA/{p}", None, None)


def ask_id(ident: Identifier) -> Ask:
    """The lookup of ``ident`` (``0.NA/P`` too)."""
    named = ident.named_prefix
    if named is not None:
        return ask_prefix(named)
    # Its shape only: the check character is verified if the prefix has ranges at all.
    return Ask(str(ident.prefix), str(ident), ident.suffix, split_minted(ident.suffix))


#: What :meth:`Store.fetch` answers for each lookup: the entry, None (not registered,
#: and sync says that is final), or the error of that lookup alone.
Answer = Entry | None | StoreError


class _Members:
    """What this process knows of the suffixes and child nodes of one prefix.

    ``bloom`` is the prefix's filter as read (``f:P``) plus every suffix since
    announced; ``children`` its child nodes. Until it is loaded, while a reload is
    due (``stale``: a bulk mint, whose suffixes were not named one by one) or when
    its size does not match the layout in use, it is not consulted. Messages that
    arrive while a read is in flight are kept in ``pending`` and applied to what
    the read returns: nothing announced is ever missing from a filter in use.
    """

    __slots__ = ("bits", "bloom", "children", "loaded_at", "loading", "pending", "stale",
                 "unnamed")  # fmt: skip

    def __init__(self) -> None:
        self.bits = -1
        self.bloom: bytearray | None = None
        self.children: set[str] = set()
        self.loading = False
        self.stale = True
        self.loaded_at = 0.0
        self.pending: list[str] = []  # "S" (a suffix) or "/N" (a child node)
        self.unnamed = 0  # bulk writes and new layouts announced: a read older is stale

    def outdated(self) -> None:
        """Suffixes were written unnamed (a bulk mint) or the layout changed: read again."""
        self.stale = True
        self.unnamed += 1

    def note(self, item: str) -> None:
        """A suffix (or ``/N``, a child node) sync has just written."""
        if self.loading:
            self.pending.append(item)
        elif self.bloom is not None:
            self._apply(item)

    def _apply(self, item: str) -> None:
        if item.startswith("/"):
            self.children.add(item[1:])
        elif self.bloom is not None:
            membership.add(self.bloom, item, self.bits)

    def install(
        self, bits: int, raw: bytes | None, children: Iterable[bytes], unnamed: int
    ) -> None:
        """What a read returned, begun when :attr:`unnamed` was ``unnamed``."""
        bloom = bytearray(raw or b"")
        # Redis grows a string only as far as its highest bit set: the rest are zeros.
        bloom += bytes(membership.size(bits) - len(bloom))
        self.bits, self.bloom = bits, bloom
        self.children = {c.decode() for c in children}
        for item in self.pending:
            self._apply(item)
        self.pending.clear()
        # A bulk write announced while this was read may be missing from it: not usable.
        self.stale = unnamed != self.unnamed


def _client(url: str, cluster: bool, timeout: float) -> Any:
    opts: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **opts)
    return aioredis.Redis.from_url(url, health_check_interval=5, **opts)


class Store:
    """Read identifiers from Redis; :meth:`writer` gives sync its write half."""

    def __init__(
        self, client: Any, url: str, *, cluster: bool, meta_ttl: float, timeout: float
    ) -> None:
        self._r = client
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self.meta_ttl = meta_ttl
        self._meta: dict[str, tuple[float, PrefixMeta]] = {}
        self._ready = (-1.0, False)  # (when read, meta:ready): re-read after meta_ttl
        # While not ready, per prefix: (when read, None if a miss is final, else why not).
        self._settled: dict[str, tuple[float, StoreError | None]] = {}
        self._members: dict[str, _Members] = {}  # per prefix: see _Members
        self.reload_interval = RELOAD_INTERVAL  # between two reads of one prefix's filter
        self._member_bytes = 0
        self._origins: dict[int, str] = {}
        self._queue: list[tuple[Ask, asyncio.Future[Entry | None]]] = []
        # Lookups go out packed by hiredis where the server allows (resolver.resp).
        self._raw = RespPipe(url, timeout=timeout) if supports(url, cluster) else None
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._callbacks: list[Callable[[list[str]], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.counters: dict[str, int] = defaultdict(int)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        cluster: bool = False,
        meta_ttl: float = 1.0,
        timeout: float = 2.0,
    ) -> Store:
        """Connect to ``url`` (``redis://``); ``cluster=True`` for a Redis/Valkey Cluster."""
        store = cls(_client(url, cluster, timeout), url, cluster=cluster, meta_ttl=meta_ttl,
                    timeout=timeout)  # fmt: skip
        with contextlib.suppress(*REDIS_ERRORS):
            await store._load_origins()  # not fatal: lookups retry once Redis is up
        return store

    @property
    def redis(self) -> Any:
        """The underlying client (for tools and tests)."""
        return self._r

    async def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        with contextlib.suppress(*REDIS_ERRORS):
            await self._r.aclose()
        if self._raw is not None:
            await self._raw.close()

    def writer(self, *, resize_grace: float = 10.0) -> Writer:
        return Writer(self, resize_grace=resize_grace)

    def metrics(self) -> dict[str, int]:
        return dict(self.counters)

    # -- lookups, coalesced ---------------------------------------------------------

    async def lookup(self, ident: Identifier) -> Entry | None:
        """The entry of ``ident`` (``0.NA/P`` too), or None if Redis has none.

        Lookups made in one event-loop pass share one round trip (:meth:`fetch`).
        """
        return await self._ask(ask_id(ident))

    async def lookup_prefix(self, prefix: Prefix) -> Entry | None:
        """The prefix record ``0.NA/P`` of ``prefix``."""
        return await self._ask(ask_prefix(prefix))

    async def prefix_info(self, prefix: Prefix) -> PrefixInfo | None:
        """The delegation of ``prefix``: its key, hosting log and service URLs (CITYID_SITE)."""
        p = str(prefix)
        pipe = self._r.pipeline(transaction=False)
        pipe.get(prefix_key(p))
        pipe.get(meta_key(p))
        try:
            raw, meta_raw = await pipe.execute()
        except REDIS_ERRORS as e:
            raise StoreError(f"redis: {e}", rule="redis-unavailable") from e
        if raw is None:
            return None
        version, deleted, oid, leaf, rec, key, host_id = unpack(raw)
        await self._ensure_origins({oid, host_id})
        revoked = PrefixMeta.decode(meta_raw).revoked
        record = None if rec is None else Record.decode(rec)
        sites = dict(record.sites()) if record is not None else {}
        gone = bool(deleted) or revoked
        entry = Entry(f"0.NA/{p}", version, gone, None if gone else record,
                      self._origins[oid], leaf)  # fmt: skip
        return PrefixInfo(entry, key, self._origins[host_id], sites, gone)

    def _ask(self, ask: Ask) -> asyncio.Future[Entry | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Entry | None] = loop.create_future()
        self._queue.append((ask, fut))
        if not self._scheduled:
            # Run after every task already runnable in this pass has queued its lookup.
            self._scheduled = True
            loop.call_soon(self._start_flush)
        return fut

    def _start_flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[tuple[Ask, asyncio.Future[Entry | None]]]) -> None:
        try:
            answers: list[Answer] = await self.fetch([a for a, _ in batch])
        except Exception as e:  # redis away (StoreError), or a bug: no lookup is stranded
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), answer in zip(batch, answers, strict=True):
            if fut.done():
                continue
            if isinstance(answer, StoreError):
                fut.set_exception(answer)
            else:
                fut.set_result(answer)

    def _stale(self, prefix: str, now: float) -> bool:
        cached = self._meta.get(prefix)
        return cached is None or now - cached[0] > self.meta_ttl

    def _layout(self, prefix: str) -> PrefixMeta:
        cached = self._meta.get(prefix)
        return cached[1] if cached is not None else PrefixMeta()

    async def _execute(self, commands: list[Command]) -> list[Any]:
        return await pipeline(self._raw, self._r, commands)

    async def fetch(self, asks: Sequence[Ask]) -> list[Answer]:
        """Every lookup of ``asks`` in one round trip (two if a layout moved): answers in order.

        Raises :class:`StoreError` when Redis does not answer at all; an error that
        concerns one answer (a name whose log is still loading, a corrupt value) is
        that answer.
        """
        self.counters["lookups_total"] += len(asks)
        try:
            return await self._fetch(asks)
        except REDIS_ERRORS as e:
            raise StoreError(f"redis: {e}", rule="redis-unavailable") from e

    async def _fetch(self, asks: Sequence[Ask]) -> list[Answer]:
        # Two passes at most: the first uses the cached layout (or the default one
        # bucket) and re-reads stale layouts in the same round trip; asks whose
        # layout turned out different are asked again with the fresh one.
        out: list[Answer] = [None] * len(asks)
        now = time.monotonic()
        if self._ready[1] and now - self._ready[0] <= self.meta_ttl:
            # Names nobody minted, under prefixes this process knows: no round trip.
            todo = [i for i, a in enumerate(asks) if not self._absent(a, now)]
            self.counters["filtered_total"] += len(asks) - len(todo)
            if not todo:
                return out
        else:
            todo = list(range(len(asks)))
        for attempt in range(2):
            now = time.monotonic()
            stale = sorted({asks[i].prefix for i in todo} if attempt == 0 else ())
            stale = [p for p in stale if self._stale(p, now)]
            cmds: list[Command] = [("GET", meta_key(p)) for p in stale]
            check_ready = now - self._ready[0] > self.meta_ttl
            if check_ready:
                cmds.append(("GET", READY))
            used: list[PrefixMeta] = []
            sizes: list[int] = []
            for i in todo:
                a = asks[i]
                meta = self._layout(a.prefix)
                used.append(meta)
                if a.suffix is None:
                    cmds.append(("GET", prefix_key(a.prefix)))
                    sizes.append(1)
                    continue
                bits = meta.bits
                cmds.append(("HGET", id_key(a.prefix, bits, bucket_of(a.suffix, bits)), a.suffix))
                if (
                    a.minted is not None
                    and (a.minted[0], a.minted[2]) in meta.ranges
                    and has_valid_check(a.suffix)
                ):
                    letters, number, width = a.minted
                    cmds.append(("ZREVRANGEBYLEX", range_key(a.prefix, letters, width),
                                 range_bound(number, width), b"-", "LIMIT", 0, 1))  # fmt: skip
                    sizes.append(2)
                else:
                    sizes.append(1)
            res = await self._execute(cmds)
            self.counters["round_trips_total"] += 1
            for p, raw in zip(stale, res, strict=False):
                self._meta[p] = (now, PrefixMeta.decode(raw))
            pos = len(stale)
            if check_ready:
                self._ready = (now, res[pos] is not None)
                if self._ready[1]:
                    self._settled.clear()
                pos += 1
            redo: list[int] = []
            got_all: list[tuple[int, PrefixMeta, list[Any]]] = []
            for i, meta, n in zip(todo, used, sizes, strict=True):
                got, pos = res[pos : pos + n], pos + n
                fresh = self._layout(asks[i].prefix)
                if asks[i].suffix is not None and fresh.layout() != meta.layout():
                    redo.append(i)
                else:
                    got_all.append((i, fresh, got))
            await self._ensure_origins(_origin_ids(got_all))
            for i, meta, got in got_all:
                try:
                    out[i] = self._answer(asks[i], meta, got)
                except StoreError as e:  # this answer's own fault: the others stand
                    out[i] = e
            todo = redo
            if not todo:
                break
        for i in todo:  # the layout changed twice within one lookup: rare, answer "retry"
            out[i] = StoreError("layout changed; retry", rule="retry")
        if not self._ready[1]:
            await self._settle(asks, out)
        return out

    def _answer(self, a: Ask, meta: PrefixMeta, got: list[Any]) -> Entry | None:
        raw = got[0]
        if a.suffix is None:
            if raw is None:
                return None
            version, deleted, oid, leaf, rec, _key, _host = unpack(raw)
            return _entry(a.ident, version, bool(deleted) or meta.revoked, rec,
                          self._origins[oid], leaf)  # fmt: skip
        if raw is not None:
            version, deleted, oid, leaf, rec = unpack(raw)
            return _entry(a.ident, version, bool(deleted) or meta.revoked, rec,
                          self._origins[oid], leaf)  # fmt: skip
        if len(got) < 2 or not got[1] or a.minted is None:
            return None
        member: bytes = got[1][0]
        start_s, _, payload = member.partition(b":")
        count, oid, leaf, template = unpack(payload)
        number = a.minted[1]
        if not int(start_s) <= number < int(start_s) + count:
            return None
        if meta.revoked:
            return Entry(a.ident, 1, True, None, self._origins[oid], leaf)
        tpl = _stored_record(a.ident, template, self._origins[oid], leaf)
        try:
            record = render_template(tpl, suffix=a.suffix, id=a.ident)
        except RecordError:
            # The registrar checks templates; an unrenderable one is served as written.
            record = tpl
        return Entry(a.ident, 1, False, record, self._origins[oid], leaf)

    # -- membership: the misses answered without a round trip ----------------------------

    def _absent(self, a: Ask, now: float) -> bool:
        """True only if ``a`` is surely not in Redis: its prefix's filter (or its parent's
        children) says so, and the layout it was read for is the one in use."""
        if a.suffix is None:  # a prefix record: is it a child of its parent?
            parent, _, node = a.prefix.rpartition(".")
            m = self._members_of(parent, now)
            return m is not None and node not in m.children
        m = self._members_of(a.prefix, now)
        if m is None:
            return False
        cached = self._meta.get(a.prefix)
        if cached is None or now - cached[0] > self.meta_ttl:
            return False  # the layout is re-read with the lookup: ask Redis
        meta = cached[1]
        if meta.bits != m.bits:
            m.outdated()
            return False
        if a.minted is not None and (a.minted[0], a.minted[2]) in meta.ranges:
            return False  # perhaps in a range: those are not in the filter
        assert m.bloom is not None
        return not membership.may_contain(m.bloom, a.suffix, m.bits)

    def _members_of(self, prefix: str, now: float) -> _Members | None:
        """The usable membership of ``prefix``, or None (and a read of it started)."""
        m = self._members.get(prefix)
        if m is not None and not m.stale and not m.loading:
            return m
        if m is None:
            if self._member_bytes >= MAX_FILTER_BYTES or not prefix:
                return None
            m = self._members[prefix] = _Members()
        if not m.loading and now - m.loaded_at >= self.reload_interval and not self._closed:
            m.loading = True
            task = asyncio.get_running_loop().create_task(self._load_members(prefix, m))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return None

    async def _load_members(self, prefix: str, m: _Members) -> None:
        unnamed = m.unnamed
        try:
            reads: list[Command] = [("GET", meta_key(prefix)), ("GET", filter_key(prefix))]
            reads.append(("SMEMBERS", children_key(prefix)))
            raw_meta, raw, children = await self._execute(reads)
            bits = PrefixMeta.decode(raw_meta).bits
            if raw is not None and len(raw) > membership.size(bits):
                raise StoreError("the filter was resized while read", rule="retry")
            if m is not self._members.get(prefix):
                return  # dropped meanwhile ("*")
            before = len(m.bloom) if m.bloom is not None else 0
            m.install(bits, raw, children, unnamed)
            self._member_bytes += len(m.bloom or b"") - before
        except (*REDIS_ERRORS, StoreError, ValueError):
            m.stale = True  # read again later; lookups ask Redis meanwhile
        finally:
            m.loading = False
            m.loaded_at = time.monotonic()

    def _note_written(self, item: str) -> None:
        """Keep the filters in step with one invalidation message."""
        if item == ALL:
            self._members.clear()
            self._member_bytes = 0
            return
        if item.startswith("0.NA/"):
            parent, _, node = item[5:].rpartition(".")
            m = self._members.get(parent)
            if m is not None:
                m.note("/" + node)
            return
        prefix, _, suffix = item.partition("/")
        m = self._members.get(prefix)
        if m is None:
            return
        if suffix in ("+", "#"):  # suffixes not named, or a new layout: read it again
            m.outdated()
        elif suffix != "*":
            m.note(suffix)

    async def _settle(self, asks: Sequence[Ask], out: list[Answer]) -> None:
        """Turn the misses that may not be final into :class:`NotReadyError` (see the notes)."""
        now = time.monotonic()
        misses = [(i, _holder(asks[i])) for i, e in enumerate(out) if e is None]
        need = sorted({h for _, h in misses if not self._settled_at(h, now)})
        if need:
            await self._read_settled(need, now)
        for i, holder in misses:
            why = self._settled[holder][1]
            if why is not None:
                out[i] = type(why)(f"{asks[i].ident}: {why.message}", rule=why.rule)

    def _settled_at(self, holder: str, now: float) -> bool:
        got = self._settled.get(holder)
        return got is not None and now - got[0] <= min(self.meta_ttl, 0.25)

    async def _read_settled(self, holders: list[str], now: float) -> None:
        # Every prefix at or above each holder, its record's host, and the anchors.
        chains = {h: _chain(h) for h in holders}
        prefixes = sorted({p for c in chains.values() for p in c})
        pipe = self._r.pipeline(transaction=False)
        for p in prefixes:
            pipe.get(prefix_key(p))
        pipe.hgetall(ANCHORS)
        res = await pipe.execute()
        hosts: dict[str, int] = {}
        for p, raw in zip(prefixes, res, strict=False):
            if raw is not None:
                hosts[p] = int(unpack(raw)[6])
        await self._ensure_origins(hosts.values())
        anchors = {k.decode(): v.decode() for k, v in res[-1].items()}
        log_of: dict[str, str | None] = {}
        for h, chain in chains.items():
            held = next((self._origins[hosts[p]] for p in chain if p in hosts), None)
            if held is None:
                held = next((anchors[p] for p in chain if p in anchors), None)
            log_of[h] = held  # None: under no root this resolver follows
        origins = sorted({o for o in log_of.values() if o is not None})
        pipe = self._r.pipeline(transaction=False)
        for o in origins:
            pipe.hmget(log_key(o), ["ready", "state", "reason"])
        why: dict[str | None, StoreError | None] = {None: None}
        for o, (ready, state, reason) in zip(origins, await pipe.execute(), strict=True):
            if ready == b"1":
                why[o] = None
            elif state == b"alarm":
                # Stopped before catching up: what its later entries hold is unknown.
                why[o] = StoreError(
                    f"the log {o} that holds it is in alarm and no longer followed "
                    f"({(reason or b'').decode(errors='replace')[:200]})",
                    rule="log-alarm",
                )
            else:
                why[o] = NotReadyError(
                    f"this resolver is still loading the log {o} that holds it; ask again soon"
                )
        if len(self._settled) > 10_000:
            self._settled.clear()
        for h, o in log_of.items():
            self._settled[h] = (now, why[o])

    async def _load_origins(self) -> None:
        raw = await self._r.hgetall(ORIGINS)
        self._origins = {int(k[2:]): v.decode() for k, v in raw.items() if k.startswith(b"i:")}

    async def _ensure_origins(self, ids: Iterable[int]) -> None:
        if any(i not in self._origins for i in ids):
            await self._load_origins()
            missing = [i for i in ids if i not in self._origins]
            if missing:
                raise StoreError(f"origin ids {missing} are not in {ORIGINS}", rule="store-format")

    # -- logs and health --------------------------------------------------------------

    async def checkpoint(self, origin: str) -> bytes | None:
        """The last verified checkpoint note of the log ``origin``."""
        try:
            note: bytes | None = await self._r.hget(log_key(origin), "note")
        except REDIS_ERRORS as e:
            raise StoreError(f"redis: {e}", rule="redis-unavailable") from e
        return note or None

    async def recent_batches(self, origin: str, count: int = RECENT_BATCHES) -> list[Batch]:
        """The last checkpoints sync applied from log ``origin``, newest first."""
        try:
            raw = await self._r.lrange(batches_key(origin), 0, count - 1)
        except REDIS_ERRORS as e:
            raise StoreError(f"redis: {e}", rule="redis-unavailable") from e
        out = []
        for item in raw:
            try:
                out.append(Batch.decode(item))
            except (ValueError, TypeError, msgpack.UnpackException):
                log.warning("unreadable batch entry in %s skipped", batches_key(origin))
        return out

    async def log_url(self, origin: str) -> str | None:
        """Where the tiles of log ``origin`` are served."""
        try:
            url: bytes | None = await self._r.hget(log_key(origin), "url")
        except REDIS_ERRORS as e:
            raise StoreError(f"redis: {e}", rule="redis-unavailable") from e
        return url.decode() if url else None

    async def status(self) -> dict[str, Any]:
        """Per followed log: origin, size, root, state, reason, updated_at, ready; and Redis
        health, and whether sync has caught up with every log (``ready``)."""
        try:
            origins = await self._r.hgetall(ORIGINS)
            names = sorted(
                (int(v), k[2:].decode()) for k, v in origins.items() if k.startswith(b"o:")
            )
            pipe = self._r.pipeline(transaction=False)
            for _, origin in names:
                pipe.hgetall(log_key(origin))
            pipe.get(EPOCH)
            pipe.get(LEADER)
            pipe.get(READY)
            res = await pipe.execute()
        except REDIS_ERRORS as e:
            return {"redis": False, "error": str(e), "logs": [], "epoch": None, "leader": None,
                    "ready": False}  # fmt: skip
        logs = []
        for (_, origin), h in zip(names, res, strict=False):
            g = {k.decode(): v for k, v in h.items()}
            logs.append(
                {
                    "origin": origin,
                    "size": int(g.get("size", b"0")),
                    "applied": int(g.get("applied", b"0")),
                    "root": (g.get("root") or b"").hex(),
                    "url": g.get("url", b"").decode(),
                    "state": g.get("state", b"pending").decode(),
                    "reason": g.get("reason", b"").decode(),
                    "updated_at": float(g.get("updated_at", b"0")),
                    "ready": g.get("ready") == b"1",
                }
            )
        epoch, leader, ready = res[-3:]
        return {
            "redis": True,
            "epoch": epoch.decode() if epoch else None,
            "leader": leader.decode() if leader else None,
            "ready": ready is not None,  # sync has caught up with every log it follows
            "logs": logs,
        }

    # -- invalidation -------------------------------------------------------------------

    def subscribe(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback(identifiers)`` whenever sync changes them (see module notes).

        After a lost connection (a Redis restart) the callback gets ``["*"]``:
        messages may have been missed, so every cached answer is suspect.
        """
        self._callbacks.append(callback)
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def _deliver(self, idents: list[str]) -> None:
        for item in idents:
            self._note_written(item)
            if item == ALL:
                # A rebuild may number the origins differently: forget them too.
                self._meta.clear()
                self._origins.clear()
            elif item.endswith("/*") or item.endswith("/#"):
                self._meta.pop(item[:-2], None)
        idents = [i for i in idents if not i.endswith("/#")]  # a layout, not an answer
        if not idents:
            return
        for cb in self._callbacks:
            try:
                cb(idents)
            except Exception:
                log.exception("invalidation callback failed")

    def _pubsub_urls(self) -> list[str]:
        """Where to subscribe, in order: the configured URL, then (in a cluster) every
        other node the client knows, so losing one node does not stop invalidations."""
        urls = [self._url]
        if self._cluster:
            with contextlib.suppress(Exception):
                parts = urlsplit(self._url)
                auth = parts.netloc.rpartition("@")[0]
                for node in self._r.get_nodes():
                    netloc = f"{auth}@" if auth else ""
                    netloc += (
                        f"[{node.host}]:{node.port}"
                        if ":" in node.host
                        else (f"{node.host}:{node.port}")
                    )
                    url = urlunsplit(parts._replace(netloc=netloc))
                    if url not in urls:
                        urls.append(url)
        return urls

    async def _listen(self) -> None:
        backoff = 0.05
        first = True
        attempt = 0
        lost = 0  # reconnections since the channel was last live (one log line per outage)
        said = 0.0
        while not self._closed:
            # Pub/sub needs a plain connection; in a cluster PUBLISH reaches every node, so
            # any node will do: after a failure, the next one is tried.
            urls = self._pubsub_urls()
            url = urls[attempt % len(urls)]
            conn = aioredis.Redis.from_url(url, socket_connect_timeout=self._timeout)
            ps = conn.pubsub()
            try:
                await ps.subscribe(CHANNEL)
                if not first:
                    self._deliver([ALL])
                if lost:
                    log.warning("invalidation channel back after %d reconnection attempts", lost)
                first = False
                backoff = 0.05
                lost = 0
                while not self._closed:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        idents = [str(x) for x in unpack(msg["data"])]
                    except (ValueError, TypeError, msgpack.ExtraData):
                        log.warning("ignoring a malformed invalidation message")
                        continue
                    self._deliver(idents)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as e:
                self.counters["subscribe_reconnects_total"] += 1
                now = time.monotonic()
                if lost == 0 or now - said > 60:  # once per outage, then once a minute
                    said = now
                    more = f" (attempt {lost + 1})" if lost else ""
                    log.warning("invalidation channel lost (%s); reconnecting%s", e, more)
                lost += 1
                first = False
                attempt += 1
            finally:
                with contextlib.suppress(Exception):
                    await ps.aclose()
                with contextlib.suppress(Exception):
                    await conn.aclose()
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)


def _holder(a: Ask) -> str:
    """The prefix whose host log decides whether ``a`` exists: the prefix of an identifier,
    the parent of a prefix record (the delegation is written in the parent's log)."""
    if a.suffix is not None:
        return a.prefix
    return a.prefix.rpartition(".")[0] or a.prefix


def _chain(prefix: str) -> list[str]:
    """``prefix`` and every prefix above it, nearest first: ``A.B.C``, ``A.B``, ``A``."""
    nodes = prefix.split(".")
    return [".".join(nodes[:n]) for n in range(len(nodes), 0, -1)]


def _origin_ids(answers: list[tuple[int, PrefixMeta, list[Any]]]) -> set[int]:
    ids: set[int] = set()
    for _, _, got in answers:
        if got[0] is not None:
            ids.add(unpack(got[0])[2])
        elif len(got) > 1 and got[1]:
            ids.add(unpack(got[1][0].partition(b":")[2])[1])
    return ids


def _entry(
    ident: str, version: int, deleted: bool, rec: bytes | None, origin: str, leaf: int
) -> Entry:
    record = None if deleted or rec is None else _stored_record(ident, rec, origin, leaf)
    return Entry(ident, version, deleted, record, origin, leaf)


def _stored_record(ident: str, data: bytes, origin: str, leaf: int) -> Record:
    """A record as sync stored it: checked then (every value, canonical form), not again."""
    try:
        return decode_trusted(data)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise StoreError(
            f"{ident}: the record stored for {origin} entry {leaf} does not decode ({e}); "
            "Redis holds something sync did not write",
            rule="store-format",
        ) from e


# -- the writer (sync) ----------------------------------------------------------------


# The store's public face: the layout's types and the writer, for those who use both.
__all__ = [
    "ALL",
    "CHANNEL",
    "LISTPACK_ENTRIES",
    "LISTPACK_VALUE",
    "REDIS_ERRORS",
    "Answer",
    "Ask",
    "Batch",
    "Change",
    "Cursor",
    "Entry",
    "IdChange",
    "MintChange",
    "NotReadyError",
    "PrefixChange",
    "PrefixInfo",
    "PrefixMeta",
    "RangeChange",
    "RevokeChange",
    "Store",
    "StoreError",
    "Writer",
    "ask_id",
    "ask_prefix",
    "bits_for",
    "bucket_of",
]
