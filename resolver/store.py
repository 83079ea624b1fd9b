"""The resolver's Redis layout: dense, Valkey-Cluster-safe, rebuilt from the logs at will.

Redis is a cache of what the logs say (DESIGN.md §6). Every command on the hot
path touches one key, so the layout works unchanged on Valkey/Redis Cluster;
lookups issued in one event-loop pass go out as one pipeline.

Keys (``P`` a canonical prefix, ``S`` a suffix; no ``{...}`` hash tags on
purpose, so one big prefix spreads over every slot of a cluster):

``i:P:<bits>:<bucket>``  hash: field ``S`` -> ``[version, deleted, origin_id, leaf_index,
                         record]`` (msgpack; ``record`` is the canonical record bytes, nil
                         when deleted). ``bucket`` is the top ``bits`` bits of
                         BLAKE2b-64(``S``), so each bucket stays a small listpack.
``r:P:<letters>:<width>`` sorted set of range mints, all score 0, ordered by member:
                         ``<start zero-padded to width> ":" msgpack([count, origin_id,
                         leaf_index, template])``. A minted suffix finds its range with
                         one ``ZREVRANGEBYLEX``; an explicit ``i:`` entry overrides it.
``m:P``                  msgpack ``[bits, count, [[letters, width]...], revoked]``: how
                         ``P``'s identifiers are laid out. Readers cache it for
                         ``meta_ttl`` seconds and re-check it in the same pipeline.
``p:P``                  the prefix record ``0.NA/P``: msgpack ``[version, deleted,
                         origin_id, leaf_index, record, key, host_id]``.
``l:<origin>``           hash, one per followed log: the sync cursor (``size``, ``root``,
                         ``note``, ``applied``) and status (``url``, ``key``, ``state``,
                         ``reason``, ``updated_at``).
``b:<origin>``           list, newest first, of the last :data:`RECENT_BATCHES` checkpoints
                         sync applied from that log (msgpack :class:`Batch`): the
                         explorer's history, since a log serves only its latest.
``meta:origins``         hash ``o:<origin>`` -> id and ``i:<id>`` -> origin: values name
                         their log by a small integer.
``meta:epoch``           set when sync starts filling an empty Redis; its absence means
                         Redis lost its data and must be rebuilt.
``meta:leader``          the sync leader lock (``SET NX PX``, renewed by a one-key script).
``meta:gc``              bucket levels left behind by a resize, deleted after a grace time.
``meta:stats``           hash ``<kind>/<host:pid>`` -> msgpack ``[time, {counter: value}]``:
                         what sync and DNS processes publish for /metrics (``stats.py``).

Bucket sizing: a prefix starts with one bucket; when its explicit count passes
``fill << bits`` the writer copies it to a level with more bits, flips ``m:P``,
writes both levels for a grace period (readers cache ``m:P`` for at most
``meta_ttl``), then deletes the old level. ``fill`` is half of
``hash-max-listpack-entries``, which :meth:`Writer.prepare` raises to 512 (and
``hash-max-listpack-value`` to 1024) with ``CONFIG SET`` where the server allows
it; where it does not, buckets are sized to the server's limit. A bucket that
outgrows its listpack still works, it only takes more memory.

A prefix whose delegation (or an ancestor's) is revoked keeps its entries, but
``m:P`` says ``revoked`` and lookups answer a tombstone.

Invalidation: after each write, sync publishes on ``cityid:inv`` a msgpack list
of the canonical identifiers changed; ``P/*`` means "anything under ``P``" (a
range mint, a revocation) and ``*`` means "everything" (a rebuild, or a
subscriber that reconnected and may have missed messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
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
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cityid.errors import CityIdError, IdentifierError, RecordError
from cityid.identifiers import Identifier, Prefix, parse_minted
from cityid.records import Record, render_template

log = logging.getLogger("cityid.resolver.store")

CHANNEL = "cityid:inv"
ORIGINS = "meta:origins"
EPOCH = "meta:epoch"
LEADER = "meta:leader"
GC = "meta:gc"
ALL = "*"

MAX_BITS = 24  # 16M buckets per prefix: ~1.6 billion identifiers at a fill of 100
LISTPACK_ENTRIES = 512
LISTPACK_VALUE = 1024
MAX_FILL = 128
MAX_BATCH = 10_000  # lookups per pipeline
RECENT_BATCHES = 20  # checkpoints remembered per log for the explorer
BATCH_SAMPLE = 5  # identifiers named per remembered checkpoint
PUBLISH_CHUNK = 1000  # identifiers per invalidation message
COPY_CHUNK = 256  # buckets read per round trip while resizing

# What an unreachable Redis raises. A cluster client's RedisClusterException (no
# reachable node, a slot no node serves) is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


class StoreError(CityIdError):
    """Redis is unreachable or holds something this layout did not write."""

    rule = "store"


# -- the layout: pure functions -------------------------------------------------------


def bucket_of(suffix: str, bits: int) -> int:
    """The bucket of ``suffix`` among ``2**bits``: stable across processes and versions."""
    if bits == 0:
        return 0
    h = int.from_bytes(hashlib.blake2b(suffix.encode(), digest_size=8).digest(), "big")
    return h >> (64 - bits)


def bits_for(count: int, fill: int) -> int:
    """The fewest bucket bits that keep ``count`` entries at ``fill`` or fewer per bucket."""
    bits = 0
    while count > fill << bits and bits < MAX_BITS:
        bits += 1
    return bits


def id_key(prefix: str, bits: int, bucket: int) -> str:
    return f"i:{prefix}:{bits}:{bucket}"


def range_key(prefix: str, letters: str, width: int) -> str:
    return f"r:{prefix}:{letters}:{width}"


def meta_key(prefix: str) -> str:
    return f"m:{prefix}"


def prefix_key(prefix: str) -> str:
    return f"p:{prefix}"


def log_key(origin: str) -> str:
    return f"l:{origin}"


def batches_key(origin: str) -> str:
    return f"b:{origin}"


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def _range_bound(number: int, width: int) -> bytes:
    # Members start with the zero-padded start and ':' (0x3a); ';' (0x3b) sorts
    # right after, so "(<n>;" bounds every range starting at or below n.
    return b"(" + f"{number:0{width}d}".encode() + b";"


@dataclass(slots=True)
class PrefixMeta:
    """How one prefix's identifiers are laid out (``m:P``)."""

    bits: int = 0
    count: int = 0
    ranges: frozenset[tuple[str, int]] = frozenset()
    revoked: bool = False

    def encode(self) -> bytes:
        return _pack([self.bits, self.count, [list(r) for r in sorted(self.ranges)], self.revoked])

    @classmethod
    def decode(cls, data: bytes | None) -> PrefixMeta:
        if data is None:
            return cls()
        try:
            bits, count, ranges, revoked = _unpack(data)
            return cls(int(bits), int(count), frozenset((r[0], int(r[1])) for r in ranges), revoked)
        except (ValueError, TypeError, msgpack.ExtraData) as e:
            raise StoreError(f"m: entry is not a prefix layout: {e}", rule="store-format") from e

    def layout(self) -> tuple[int, frozenset[tuple[str, int]]]:
        return self.bits, self.ranges


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


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where sync stands in one log: its last trusted checkpoint and entries applied."""

    origin: str
    size: int
    root: bytes
    note: bytes
    applied: int
    url: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    """A checkpoint sync verified and applied: entries ``start..end-1`` of its log.

    One checkpoint may seal several of the registrar's batches when sync catches up;
    the explorer shows what this resolver verified, not the registrar's bookkeeping.
    """

    start: int
    end: int
    root: bytes
    applied_at: float  # Unix seconds
    identifiers: int  # identifier records written (created, changed or deleted)
    prefixes: int  # prefix records written
    ranges: int  # range mints
    sample: tuple[str, ...]  # the first few identifiers written

    def encode(self) -> bytes:
        return _pack([self.start, self.end, self.root, self.applied_at, self.identifiers,
                      self.prefixes, self.ranges, list(self.sample)])  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Batch:
        start, end, root, at, ids, pfx, rng, sample = _unpack(data)
        return cls(start, end, root, at, ids, pfx, rng, tuple(sample))


# -- what writers send ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdChange:
    prefix: str
    suffix: str
    version: int
    deleted: bool
    origin: str
    leaf_index: int
    record: bytes | None  # canonical record bytes; None when deleted


@dataclass(frozen=True, slots=True)
class RangeChange:
    prefix: str
    letters: str
    width: int
    start: int
    count: int
    template: bytes
    origin: str
    leaf_index: int


@dataclass(frozen=True, slots=True)
class PrefixChange:
    prefix: str
    version: int
    deleted: bool
    origin: str
    leaf_index: int
    record: bytes | None
    key: bytes
    host: str


@dataclass(frozen=True, slots=True)
class RevokeChange:
    """Mark every identifier under ``prefix`` revoked (or no longer)."""

    prefix: str
    revoked: bool


Change = IdChange | RangeChange | PrefixChange | RevokeChange


# -- the store (readers) --------------------------------------------------------------


@dataclass(slots=True)
class _Ask:
    prefix: str  # the prefix whose layout governs the answer
    ident: str
    suffix: str | None  # None: a prefix record lookup
    minted: tuple[str, int, int] | None  # letters, number, width
    future: asyncio.Future[Entry | None]


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
        self._origins: dict[int, str] = {}
        self._queue: list[_Ask] = []
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

    def writer(self, *, resize_grace: float = 10.0) -> Writer:
        return Writer(self, resize_grace=resize_grace)

    def metrics(self) -> dict[str, int]:
        return dict(self.counters)

    # -- lookups, coalesced ---------------------------------------------------------

    async def lookup(self, ident: Identifier) -> Entry | None:
        """The entry of ``ident`` (``0.NA/P`` too), or None if Redis has none."""
        named = ident.named_prefix
        if named is not None:
            return await self.lookup_prefix(named)
        minted: tuple[str, int, int] | None = None
        try:
            m = parse_minted(ident.suffix)
            minted = (m.letters, m.number, m.width)
        except IdentifierError:
            pass
        return await self._ask(str(ident.prefix), str(ident), ident.suffix, minted)

    async def lookup_prefix(self, prefix: Prefix) -> Entry | None:
        """The prefix record ``0.NA/P`` of ``prefix``."""
        p = str(prefix)
        return await self._ask(p, f"0.NA/{p}", None, None)

    async def prefix_info(self, prefix: Prefix) -> PrefixInfo | None:
        """The delegation of ``prefix``: its key, hosting log and HS_SITE urls."""
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
        version, deleted, oid, leaf, rec, key, host_id = _unpack(raw)
        await self._ensure_origins({oid, host_id})
        revoked = PrefixMeta.decode(meta_raw).revoked
        record = None if rec is None else Record.decode(rec)
        site = record.first("HS_SITE") if record is not None else None
        sites = dict(site.data) if site is not None and not isinstance(site.data, str) else {}
        gone = bool(deleted) or revoked
        entry = Entry(f"0.NA/{p}", version, gone, None if gone else record,
                      self._origins[oid], leaf)  # fmt: skip
        return PrefixInfo(entry, key, self._origins[host_id], sites, gone)

    def _ask(
        self, prefix: str, ident: str, suffix: str | None, minted: tuple[str, int, int] | None
    ) -> asyncio.Future[Entry | None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Entry | None] = loop.create_future()
        self._queue.append(_Ask(prefix, ident, suffix, minted, fut))
        self.counters["lookups_total"] += 1
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

    async def _flush(self, batch: list[_Ask]) -> None:
        try:
            await self._run(batch)
        except REDIS_ERRORS as e:
            err = StoreError(f"redis: {e}", rule="redis-unavailable")
            for a in batch:
                if not a.future.done():
                    a.future.set_exception(err)
        except Exception as e:  # a corrupt value must not strand the other lookups
            for a in batch:
                if not a.future.done():
                    a.future.set_exception(e)

    def _stale(self, prefix: str, now: float) -> bool:
        cached = self._meta.get(prefix)
        return cached is None or now - cached[0] > self.meta_ttl

    def _layout(self, prefix: str) -> PrefixMeta:
        cached = self._meta.get(prefix)
        return cached[1] if cached is not None else PrefixMeta()

    async def _run(self, asks: list[_Ask]) -> None:
        # Two passes at most: the first uses the cached layout (or the default one
        # bucket) and re-reads stale layouts in the same round trip; asks whose
        # layout turned out different are asked again with the fresh one.
        for attempt in range(2):
            now = time.monotonic()
            stale = sorted({a.prefix for a in asks if attempt == 0 and self._stale(a.prefix, now)})
            pipe = self._r.pipeline(transaction=False)
            for p in stale:
                pipe.get(meta_key(p))
            used: list[PrefixMeta] = []
            sizes: list[int] = []
            for a in asks:
                meta = self._layout(a.prefix)
                used.append(meta)
                if a.suffix is None:
                    pipe.get(prefix_key(a.prefix))
                    sizes.append(1)
                    continue
                pipe.hget(id_key(a.prefix, meta.bits, bucket_of(a.suffix, meta.bits)), a.suffix)
                if a.minted is not None and (a.minted[0], a.minted[2]) in meta.ranges:
                    letters, number, width = a.minted
                    pipe.zrevrangebylex(
                        range_key(a.prefix, letters, width),
                        _range_bound(number, width), b"-", start=0, num=1,
                    )  # fmt: skip
                    sizes.append(2)
                else:
                    sizes.append(1)
            res = await pipe.execute()
            self.counters["round_trips_total"] += 1
            for p, raw in zip(stale, res, strict=False):
                self._meta[p] = (now, PrefixMeta.decode(raw))
            pos = len(stale)
            answers: list[tuple[_Ask, PrefixMeta, list[Any]]] = []
            redo: list[_Ask] = []
            for a, meta, n in zip(asks, used, sizes, strict=True):
                got, pos = res[pos : pos + n], pos + n
                fresh = self._layout(a.prefix)
                if a.suffix is not None and fresh.layout() != meta.layout():
                    redo.append(a)
                else:
                    answers.append((a, fresh, got))
            await self._ensure_origins(_origin_ids(answers))
            for a, meta, got in answers:
                if not a.future.done():
                    a.future.set_result(self._answer(a, meta, got))
            asks = redo
            if not asks:
                return
        for a in asks:  # the layout changed twice within one lookup: rare, answer "retry"
            if not a.future.done():
                a.future.set_exception(StoreError("layout changed; retry", rule="retry"))

    def _answer(self, a: _Ask, meta: PrefixMeta, got: list[Any]) -> Entry | None:
        raw = got[0]
        if a.suffix is None:
            if raw is None:
                return None
            version, deleted, oid, leaf, rec, _key, _host = _unpack(raw)
            return _entry(a.ident, version, bool(deleted) or meta.revoked, rec,
                          self._origins[oid], leaf)  # fmt: skip
        if raw is not None:
            version, deleted, oid, leaf, rec = _unpack(raw)
            return _entry(a.ident, version, bool(deleted) or meta.revoked, rec,
                          self._origins[oid], leaf)  # fmt: skip
        if len(got) < 2 or not got[1] or a.minted is None:
            return None
        member: bytes = got[1][0]
        start_s, _, payload = member.partition(b":")
        count, oid, leaf, template = _unpack(payload)
        number = a.minted[1]
        if not int(start_s) <= number < int(start_s) + count:
            return None
        if meta.revoked:
            return Entry(a.ident, 1, True, None, self._origins[oid], leaf)
        tpl = Record.decode(template)
        try:
            record = render_template(tpl, suffix=a.suffix, id=a.ident)
        except RecordError:
            # The registrar checks templates; an unrenderable one is served as written.
            record = tpl
        return Entry(a.ident, 1, False, record, self._origins[oid], leaf)

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
        """Per followed log: origin, size, root, state, reason, updated_at; and Redis health."""
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
            res = await pipe.execute()
        except REDIS_ERRORS as e:
            return {"redis": False, "error": str(e), "logs": [], "epoch": None, "leader": None}
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
                }
            )
        epoch, leader = res[-2], res[-1]
        return {
            "redis": True,
            "epoch": epoch.decode() if epoch else None,
            "leader": leader.decode() if leader else None,
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
            if item == ALL:
                # A rebuild may number the origins differently: forget them too.
                self._meta.clear()
                self._origins.clear()
            elif item.endswith("/*"):
                self._meta.pop(item[:-2], None)
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
                first = False
                backoff = 0.05
                while not self._closed:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    try:
                        idents = [str(x) for x in _unpack(msg["data"])]
                    except (ValueError, TypeError, msgpack.ExtraData):
                        log.warning("ignoring a malformed invalidation message")
                        continue
                    self._deliver(idents)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as e:
                self.counters["subscribe_reconnects_total"] += 1
                log.warning("invalidation channel lost (%s); reconnecting", e)
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


def _origin_ids(answers: list[tuple[_Ask, PrefixMeta, list[Any]]]) -> set[int]:
    ids: set[int] = set()
    for _, _, got in answers:
        if got[0] is not None:
            ids.add(_unpack(got[0])[2])
        elif len(got) > 1 and got[1]:
            ids.add(_unpack(got[1][0].partition(b":")[2])[1])
    return ids


def _entry(
    ident: str, version: int, deleted: bool, rec: bytes | None, origin: str, leaf: int
) -> Entry:
    record = None if deleted or rec is None else Record.decode(rec)
    return Entry(ident, version, deleted, record, origin, leaf)


# -- the writer (sync) ----------------------------------------------------------------


def _id_value(c: IdChange, oid: int) -> bytes:
    return _pack([c.version, c.deleted, oid, c.leaf_index, None if c.deleted else c.record])


def _range_member(c: RangeChange, oid: int) -> bytes:
    return f"{c.start:0{c.width}d}:".encode() + _pack([c.count, oid, c.leaf_index, c.template])


def _prefix_value(c: PrefixChange, oid: int, host: int) -> bytes:
    rec = None if c.deleted else c.record
    return _pack([c.version, c.deleted, oid, c.leaf_index, rec, c.key, host])


class Writer:
    """The write half, for the one sync leader: idempotent pipelined writes.

    A batch is written in two round trips: the data (idempotent overwrites of
    whole values), then the layout updates, the log cursor and the
    invalidations. The cursor never gets ahead of the data, so after a crash
    sync replays from the cursor and rewrites the same bytes.
    """

    def __init__(self, store: Store, *, resize_grace: float = 10.0) -> None:
        self.store = store
        self._r = store._r
        self.resize_grace = resize_grace
        self.fill = 64
        self._oid: dict[str, int] = {}
        self._meta: dict[str, PrefixMeta] = {}
        self._old: dict[str, list[tuple[int, float]]] = defaultdict(list)

    async def prepare(self) -> None:
        """Tune listpack limits where allowed; load origin ids and pending clean-ups."""
        entries = await self._tune()
        # Mean fill stays between fill/2 and fill; a quarter of the limit leaves
        # room for the unlucky buckets above the mean.
        self.fill = max(8, min(MAX_FILL, entries // 4))
        raw = await self._r.hgetall(ORIGINS)
        self._oid = {k[2:].decode(): int(v) for k, v in raw.items() if k.startswith(b"o:")}
        self._old.clear()
        for f, deadline in (await self._r.hgetall(GC)).items():
            p, _, bits = f.decode().rpartition(" ")
            self._old[p].append((int(bits), float(deadline)))

    async def _tune(self) -> int:
        # A cluster client sends CONFIG to one node unless told: tune every primary.
        nodes: list[Any] = [None]
        if self.store._cluster:
            await self._r.initialize()
            nodes = self._r.get_primaries() or [None]
        try:
            return min([await self._tune_node(n) for n in nodes])
        except ResponseError as e:
            # Managed services often disable CONFIG: size buckets for their default.
            log.warning("cannot tune listpack limits (%s); buckets sized for 128 entries", e)
            return 128

    async def _tune_node(self, node: Any) -> int:
        kw: dict[str, Any] = {} if node is None else {"target_nodes": node}
        cur = await self._r.config_get("hash-max-listpack-*", **kw)
        have = {k if isinstance(k, str) else k.decode(): int(v) for k, v in cur.items()}
        if have.get("hash-max-listpack-entries", 128) < LISTPACK_ENTRIES:
            await self._r.config_set("hash-max-listpack-entries", LISTPACK_ENTRIES, **kw)
        if have.get("hash-max-listpack-value", 64) < LISTPACK_VALUE:
            await self._r.config_set("hash-max-listpack-value", LISTPACK_VALUE, **kw)
        cur = await self._r.config_get("hash-max-listpack-entries", **kw)
        return int(next(iter(cur.values())))

    # -- epoch and leadership -----------------------------------------------------------

    async def epoch(self) -> str | None:
        raw = await self._r.get(EPOCH)
        return raw.decode() if raw else None

    async def new_epoch(self) -> str:
        value = os.urandom(8).hex()
        await self._r.set(EPOCH, value)
        await self.publish([ALL])
        return value

    async def acquire(self, owner: str, ttl_ms: int) -> bool:
        if await self._r.set(LEADER, owner, nx=True, px=ttl_ms):
            return True
        return await self.renew(owner, ttl_ms)

    async def renew(self, owner: str, ttl_ms: int) -> bool:
        return bool(await self._r.eval(_RENEW, 1, LEADER, owner, ttl_ms))

    async def release(self, owner: str) -> None:
        await self._r.eval(_RELEASE, 1, LEADER, owner)

    # -- cursors and status -------------------------------------------------------------

    async def read_cursor(self, origin: str) -> Cursor | None:
        h = await self._r.hgetall(log_key(origin))
        if not h or b"note" not in h:
            return None
        g = {k.decode(): v for k, v in h.items()}
        return Cursor(origin, int(g["size"]), g["root"], g["note"], int(g["applied"]),
                      g.get("url", b"").decode(), g.get("key", b"").decode())  # fmt: skip

    async def set_status(self, origin: str, state: str, reason: str = "", url: str = "") -> None:
        fields: dict[str, Any] = {"state": state, "reason": reason, "updated_at": time.time()}
        if url:
            fields["url"] = url
        pipe = self._r.pipeline(transaction=False)
        self._register(pipe, [origin])
        pipe.hset(log_key(origin), mapping=fields)
        await pipe.execute()

    async def publish(self, idents: Sequence[str]) -> None:
        pipe = self._r.pipeline(transaction=False)
        later = self._queue_publish(pipe, idents)
        if len(pipe) > 0:
            await pipe.execute()
        await self._publish_now(later)

    def _queue_publish(self, pipe: Any, idents: Sequence[str]) -> list[bytes]:
        """Queue the invalidations of ``idents`` on ``pipe``; return those to send after it.

        A cluster pipeline refuses PUBLISH (it has no key), so there they are sent
        one by one once the pipeline has run; any node relays them to the others.
        """
        msgs = [_pack(list(idents[i : i + PUBLISH_CHUNK]))
                for i in range(0, len(idents), PUBLISH_CHUNK)]  # fmt: skip
        if self.store._cluster:
            return msgs
        for m in msgs:
            pipe.publish(CHANNEL, m)
        return []

    async def _publish_now(self, msgs: list[bytes]) -> None:
        for m in msgs:
            await self._r.publish(CHANNEL, m)

    def _register(self, pipe: Any, origins: Iterable[str]) -> None:
        for o in origins:
            if o not in self._oid:
                n = self._oid[o] = len(self._oid)
                pipe.hset(ORIGINS, mapping={f"o:{o}": n, f"i:{n}": o})

    # -- writing ------------------------------------------------------------------------

    async def _metas(self, prefixes: Iterable[str]) -> None:
        need = sorted(p for p in set(prefixes) if p not in self._meta)
        if not need:
            return
        pipe = self._r.pipeline(transaction=False)
        for p in need:
            pipe.get(meta_key(p))
        for p, raw in zip(need, await pipe.execute(), strict=True):
            self._meta[p] = PrefixMeta.decode(raw)

    async def apply(
        self, changes: Sequence[Change], cursor: Cursor | None = None, *, state: str = "ok",
        reason: str = "", start: int | None = None,
    ) -> None:  # fmt: skip
        """Write ``changes`` (later ones win), then the cursor, then the invalidations.

        With ``start`` (the size of the cursor this one replaces), the checkpoint is also
        remembered in the log's recent batches.
        """
        origins: list[str] = []
        for c in changes:
            if not isinstance(c, RevokeChange):
                origins.append(c.origin)
            if isinstance(c, PrefixChange):
                origins.append(c.host)
        if cursor is not None:
            origins.append(cursor.origin)
        await self._metas(c.prefix for c in changes if not isinstance(c, PrefixChange))
        ids: dict[tuple[str, str], IdChange] = {}
        ranges: dict[tuple[str, str, int, int], RangeChange] = {}
        pfx: dict[str, PrefixChange] = {}
        revoke: dict[str, bool] = {}
        inval: dict[str, None] = {}
        for c in changes:
            if isinstance(c, IdChange):
                ids[(c.prefix, c.suffix)] = c
                inval[f"{c.prefix}/{c.suffix}"] = None
            elif isinstance(c, RangeChange):
                ranges[(c.prefix, c.letters, c.width, c.start)] = c
                inval[f"{c.prefix}/*"] = None
            elif isinstance(c, PrefixChange):
                pfx[c.prefix] = c
                inval[f"0.NA/{c.prefix}"] = None
            else:
                revoke[c.prefix] = c.revoked
                inval[f"{c.prefix}/*"] = None

        pipe = self._r.pipeline(transaction=False)
        self._register(pipe, origins)
        base = len(pipe)
        buckets: dict[str, dict[str, bytes]] = defaultdict(dict)
        owner: dict[str, str] = {}
        shadow: dict[str, dict[str, bytes]] = defaultdict(dict)
        now = time.time()
        for (p, s), c in ids.items():
            value = _id_value(c, self._oid[c.origin])
            bits = self._meta[p].bits
            key = id_key(p, bits, bucket_of(s, bits))
            buckets[key][s] = value
            owner[key] = p
            # Readers may still use a level a resize left behind: keep it current.
            for old_bits, deadline in self._old.get(p, ()):
                if deadline > now:
                    shadow[id_key(p, old_bits, bucket_of(s, old_bits))][s] = value
        counted = []
        for key, mapping in buckets.items():
            pipe.hset(key, mapping=mapping)
            counted.append(owner[key])
        for key, mapping in shadow.items():
            pipe.hset(key, mapping=mapping)
        for (p, letters, width, _), rc in ranges.items():
            member = _range_member(rc, self._oid[rc.origin])
            pipe.zadd(range_key(p, letters, width), {member: 0})
        for p, pc in pfx.items():
            pipe.set(prefix_key(p), _prefix_value(pc, self._oid[pc.origin], self._oid[pc.host]))
        if len(pipe) > 0:
            res = await pipe.execute()
        else:
            res = []

        changed: set[str] = set()
        for p, added in zip(counted, res[base:], strict=False):
            if added:
                self._meta[p].count += int(added)
                changed.add(p)
        for (p, letters, width, _), _rc in ranges.items():
            meta = self._meta[p]
            if (letters, width) not in meta.ranges:
                meta.ranges = meta.ranges | {(letters, width)}
                changed.add(p)
        for p, flag in revoke.items():
            if self._meta[p].revoked != flag:
                self._meta[p].revoked = flag
                changed.add(p)
        pipe = self._r.pipeline(transaction=False)
        for p in sorted(changed):
            pipe.set(meta_key(p), self._meta[p].encode())
        if cursor is not None:
            pipe.hset(log_key(cursor.origin), mapping=_cursor_fields(cursor, state, reason))
            if start is not None and cursor.size > start:
                sample = [k for k in inval if not k.endswith("/*")][:BATCH_SAMPLE]
                batch = Batch(start, cursor.size, cursor.root, time.time(), len(ids), len(pfx),
                              len(ranges), tuple(sample))  # fmt: skip
                pipe.lpush(batches_key(cursor.origin), batch.encode())
                pipe.ltrim(batches_key(cursor.origin), 0, RECENT_BATCHES - 1)
        later = self._queue_publish(pipe, list(inval))
        if len(pipe) > 0:
            await pipe.execute()
        await self._publish_now(later)
        for p in sorted(changed):
            meta = self._meta[p]
            if bits_for(meta.count, self.fill) > meta.bits:
                await self._resize(p, meta)

    async def _resize(self, p: str, meta: PrefixMeta) -> None:
        """Copy ``p``'s buckets to a level with more bits, flip ``m:P``, retire the old level."""
        old = meta.bits
        new = bits_for(meta.count, self.fill)
        keys = [id_key(p, old, b) for b in range(1 << old)]
        count = 0
        for i in range(0, len(keys), COPY_CHUNK):
            pipe = self._r.pipeline(transaction=False)
            for k in keys[i : i + COPY_CHUNK]:
                pipe.hgetall(k)
            out: dict[str, dict[bytes, bytes]] = defaultdict(dict)
            for mapping in await pipe.execute():
                for f, v in mapping.items():
                    out[id_key(p, new, bucket_of(f.decode(), new))][f] = v
                    count += 1
            pipe = self._r.pipeline(transaction=False)
            for k, mapping in out.items():
                pipe.hset(k, mapping=mapping)
            if out:
                await pipe.execute()
        meta.bits, meta.count = new, count
        # Flip first, then record the old level for deletion: a crash in between
        # leaks a level until the next rebuild, never deletes the live one.
        await self._r.set(meta_key(p), meta.encode())
        deadline = time.time() + self.resize_grace
        if self.resize_grace > 0:
            await self._r.hset(GC, f"{p} {old}", deadline)
            self._old[p].append((old, deadline))
        else:
            await self._unlink(keys)
        self.store.counters["resizes_total"] += 1
        log.info("prefix %s: %d identifiers, buckets 2^%d -> 2^%d", p, count, old, new)

    async def _unlink(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            pipe = self._r.pipeline(transaction=False)
            for k in keys[i : i + 1000]:
                # One key per command: cluster-safe. Not pipe.unlink(): a cluster
                # pipeline's is a coroutine that splits keys by slot, never queued.
                pipe.execute_command("UNLINK", k)
            await pipe.execute()

    async def gc(self, now: float | None = None) -> int:
        """Delete bucket levels whose grace time has passed; return how many."""
        now = time.time() if now is None else now
        done = 0
        for p, levels in list(self._old.items()):
            for bits, deadline in list(levels):
                if deadline <= now:
                    await self._unlink([id_key(p, bits, b) for b in range(1 << bits)])
                    await self._r.hdel(GC, f"{p} {bits}")
                    levels.remove((bits, deadline))
                    done += 1
            if not levels:
                del self._old[p]
        return done


def _cursor_fields(c: Cursor, state: str, reason: str) -> dict[str, Any]:
    return {
        "size": c.size,
        "root": c.root,
        "note": c.note,
        "applied": c.applied,
        "url": c.url,
        "key": c.key,
        "state": state,
        "reason": reason,
        "updated_at": time.time(),
    }


__all__ = [
    "ALL",
    "CHANNEL",
    "REDIS_ERRORS",
    "Batch",
    "Change",
    "Cursor",
    "Entry",
    "IdChange",
    "PrefixChange",
    "PrefixInfo",
    "PrefixMeta",
    "RangeChange",
    "RevokeChange",
    "Store",
    "StoreError",
    "Writer",
    "bits_for",
    "bucket_of",
]
