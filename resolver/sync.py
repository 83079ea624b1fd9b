"""Verified sync: follow the root log and every log it delegates to, and fill Redis.

Per poll (every ``poll_interval``, 200 ms by default), for every followed log:

1. fetch its checkpoint (``Cache-Control: no-cache``) and check it against the
   log's policy: the log key's signature and the witness quorum;
2. prove it consistent with the last checkpoint trusted (kept in Redis, so a
   restart still notices a fork);
3. read the new entries from entry bundles, each proven to hash to a leaf of
   the checkpoint's tree (:class:`ledger.client.LogClient`);
4. decode each operation (strict, signature checked) and apply it to the
   in-memory :class:`~cityid.authority.Namespace` with ``log=<origin>``, which
   checks its authority back to the root anchor;
5. write the effects to Redis in pipelines, then the log's cursor (trusted
   checkpoint and entries applied), on that log's own key.

Logs are learnt from ``Delegate`` operations with an ``origin``: the ledger URL
is the ``ledger`` URL of the delegation's ``CITYID_SITE`` value (else its
``registrar`` URL + ``/log``; ``log_urls`` overrides either), and the log's
checkpoint key is the ``CITYID_PUBKEY`` value named after the origin (else the
delegated key under the origin's name). Every log is held to the witness quorum
of ``child_policy`` (default: the root policy's witnesses and quorum).

A fork, a bad signature, a missing quorum, a bad proof or bundle, a malformed
operation or an unauthorised one puts that log in state ``alarm``: an ERROR
line, a counter, the reason in Redis, and no more reads from it until sync
restarts. Nothing from the bad part is written (entries are applied a chunk at
a time, and only entries before the bad one are). Other logs keep syncing.
Unreachable logs are retried every poll (state ``unreachable``).

Work comes in *slices*: the entries read are verified, applied and written to
Redis together with the log's cursor, a slice at a time, each about
:data:`SLICE_BYTES` of leaves (a few thousand identifiers, some tens of ms of
work) and at most ``chunk`` entries. So a million-identifier CSV never holds the
event loop for long, a failed write is retried from the last slice written (the
cursor), never from the start of the batch, and progress is monotonic.

Every entry is checked as the registrar checked it (signature, canonical form,
every value of every record, authority), once: a mint's records are checked
without building objects and stored as the bytes that were signed
(:func:`cityid.ops.decode_for_replay`), and the store's readers trust what sync
wrote (:func:`cityid.records.decode_trusted`).

Restarts: the namespace lives in memory, so sync replays every log into it on
start. Entries below the Redis cursor were verified when they were written, and
the new checkpoint is proven consistent with the cursor's, so they are decoded
without re-checking signatures and not rewritten: a restart costs one read of
the logs. An empty Redis (no ``meta:epoch``: a flush, or a restart without
persistence) is refilled from the logs alone. One sync per Redis writes: the
leader holds ``meta:leader`` (``SET NX PX``), renewed by a task of its own every
quarter of its lifetime, whatever the work in progress.

Readiness: a log is *ready* once sync has caught up with a checkpoint of it in
this epoch (``ready`` in its ``l:`` hash), and ``meta:ready`` is set while every
followed log is ready. Until then the store answers "not ready" rather than "does
not exist" for names the pending logs may hold (:mod:`resolver.store`).

Ordering across logs: there is none in the logs themselves, so sync applies a
parent log's entries before its children's in each poll, and on replay applies
each log up to its current size in discovery order. A parent that re-keys or
revokes a child hosted elsewhere therefore takes effect for the child entries
read after it; operations under a revoked prefix are skipped (counted), not
alarmed, since the child's registrar may not know yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from cityid.authority import Namespace
from cityid.errors import (
    AuthorityError,
    CityIdError,
    ConflictError,
    ForkError,
    KeyFormatError,
    NoteError,
    NotFoundError,
    ProofError,
    SignatureError,
    TileError,
    WitnessError,
)
from cityid.identifiers import Prefix, mint_suffix
from cityid.keys import VerifierKey
from cityid.ops import (
    Custody,
    Delegate,
    Delete,
    Mint,
    MintRange,
    Operation,
    RotateKey,
    Update,
    content_of,
    decode_for_replay,
)
from cityid.records import Record
from ledger.checkpoint import Checkpoint
from ledger.client import LogClient
from ledger.note import parse_note
from ledger.policy import LogEntry, Policy, as_policy

from . import stats
from .config import ResolverConfig
from .layout import (
    LAYOUT_VERSION,
    REDIS_ERRORS,
    Batch,
    Change,
    Cursor,
    IdChange,
    MintChange,
    PrefixChange,
    RangeChange,
    RevokeChange,
    StoreError,
)
from .search_writer import Indexer
from .store import Store
from .writer import Writer

log = logging.getLogger("cityid.resolver.sync")

CHUNK = 1024  # at most this many entries verified, applied and written together
SLICE_BYTES = 128 * 1024  # leaf bytes per slice: ~2,500 CSV-minted identifiers, tens of ms
BATCH_SAMPLE = 5  # identifiers named per remembered checkpoint (the explorer's history)


def _add_sample(sample: list[str], ident: str) -> None:
    """Name ``ident`` among a checkpoint's examples, identifiers before prefix records.

    A checkpoint that delegates prefixes and then mints assets shows some of each:
    once the sample is full, an identifier takes the place of the last prefix
    record, as long as one other prefix record stays.
    """
    if ident in sample:
        return
    if len(sample) < BATCH_SAMPLE:
        sample.append(ident)
        return
    if ident.startswith("0.NA/"):
        return
    records = [i for i, s in enumerate(sample) if s.startswith("0.NA/")]
    if len(records) > 1:
        del sample[records[-1]]
        sample.append(ident)


# Failures that say nothing about the log's honesty: retry on the next poll.
TRANSIENT = {"tile-fetch", "tile-missing", "bundle-missing", "checkpoint-fetch"}


class SyncError(CityIdError):
    rule = "sync"


class _LostLead(Exception):
    """Another sync holds the lock, or Redis lost our data: start a new session."""


class _Bad(Exception):
    def __init__(self, index: int, error: CityIdError) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


@dataclass(slots=True)
class LogState:
    """One followed log, as this sync knows it."""

    origin: str
    url: str | None
    vkey: VerifierKey
    via: str = ""  # the delegation that named it
    client: LogClient | None = None
    trusted: Checkpoint | None = None  # last checkpoint verified (or read from the cursor)
    note: bytes = b""
    applied: int = 0  # entries applied to the in-memory namespace
    written: int = 0  # entries whose effects are in Redis
    indexed: int = 0  # entries whose effects are in the search index
    saved: tuple[int, bytes] | None = None  # (size, root) of the cursor in Redis
    loaded: bool = False
    ready: bool = False  # caught up with a checkpoint in this epoch (marked in Redis)
    batch: Batch | None = None  # what the slices written so far of ``trusted`` held
    state: str = "pending"
    reason: str = ""
    updated_at: float = 0.0


def _site_url(record: Record) -> str | None:
    site = record.sites()
    if site.get("ledger"):
        return str(site["ledger"]).rstrip("/")
    if site.get("registrar"):
        return str(site["registrar"]).rstrip("/") + "/log"
    return None


def _log_vkey(record: Record, origin: str, key: bytes) -> VerifierKey:
    for text in record.pubkeys():
        with contextlib.suppress(KeyFormatError):
            vk = VerifierKey.parse(text)
            if vk.name == origin:
                return vk
    return VerifierKey(origin, key)


def _alarm_kind(e: CityIdError) -> str:
    if isinstance(e, ForkError):
        return "fork"
    if isinstance(e, NoteError | WitnessError | SignatureError):
        return "signature"
    if isinstance(e, TileError | ProofError):
        return "proof"
    if isinstance(e, AuthorityError | ConflictError | NotFoundError):
        return "authority"
    return "operation"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Sync:
    """Follow the logs from ``root_log_url`` and keep ``store`` in step with them."""

    def __init__(
        self,
        store: Store,
        root_log_url: str,
        root_policy_or_vkey: Policy | VerifierKey | str,
        root_anchor: tuple[Prefix, bytes],
        root_origin: str | None = None,
        poll_interval: float = 0.2,
        *,
        child_policy: Policy | None = None,
        log_urls: Mapping[str, str] | None = None,
        lock_ttl: float = 10.0,
        chunk: int = CHUNK,
        resize_grace: float = 10.0,
        instance: str | None = None,
        index_path: str = "",
    ) -> None:
        self.store = store
        self.root_policy = as_policy(root_policy_or_vkey)
        self.root_origin = root_origin or self.root_policy.logs[0].origin
        self.root_url = root_log_url.rstrip("/")
        self.root_anchor = root_anchor
        self.poll_interval = poll_interval
        self.child_policy = child_policy or self.root_policy
        self.log_urls = {k: v.rstrip("/") for k, v in (log_urls or {}).items()}
        self.lock_ttl = lock_ttl
        self.chunk = max(1, chunk)
        self.resize_grace = resize_grace
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        root_vkey = next(
            (e.vkey for e in self.root_policy.logs if e.origin == self.root_origin), None
        )
        if root_vkey is None:
            raise SyncError(f"the root policy has no key for log {self.root_origin!r}")
        self._root_vkey = root_vkey
        # The search index (resolver.search_writer): written from the same verified
        # entries as Redis, right after each slice; "" for none.
        anchor_prefix, anchor_key = root_anchor
        trust = f"{self.root_origin} {anchor_prefix} {anchor_key.hex()}"
        self.index = Indexer(index_path, trust) if index_path else None
        self._indexing: asyncio.Future[None] | None = None  # the index write in flight
        self._http: aiohttp.ClientSession | None = None
        self._writer: Writer | None = None
        self._epoch: str | None = None
        self._active = False
        self._leader = False
        self._redis_up = False
        self._renewed = 0.0
        self._task: asyncio.Task[None] | None = None
        self._stats: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._lease_lost = False
        self._all_ready = False
        self._stop = asyncio.Event()
        self.counters: dict[str, int] = defaultdict(int)
        self.last_poll = 0.0
        self._reset()

    @classmethod
    def from_config(cls, store: Store, cfg: ResolverConfig) -> Sync:
        """A sync as ``resolver.toml`` describes it."""
        policy = cfg.witnesses()
        return cls(
            store,
            cfg.root_log_url,
            policy,
            cfg.root_anchor(),
            cfg.origin,
            cfg.poll_interval_ms / 1000,
            child_policy=policy,
            log_urls=cfg.log_urls,
            lock_ttl=cfg.lock_ttl_ms / 1000,
            chunk=cfg.chunk,
            resize_grace=cfg.resize_grace_s,
            index_path=cfg.search_index_path(),
        )

    # -- state --------------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget everything but the configuration: the next poll replays every log."""
        prefix, key = self.root_anchor
        self.namespace = Namespace()
        self.namespace.add_anchor(prefix, key, self.root_origin)
        self.logs: dict[str, LogState] = {}
        root = LogState(self.root_origin, self.root_url, self._root_vkey, via="root")
        self.logs[root.origin] = root
        self._connect(root)

    def _policy(self, state: LogState) -> Policy:
        if state.origin == self.root_origin:
            return self.root_policy
        # Every log answers to the same witnesses; its own key signs its checkpoints.
        return dataclasses.replace(self.child_policy, logs=(LogEntry(state.vkey, state.url),))

    def _connect(self, state: LogState) -> None:
        state.client = None
        if state.url:
            state.client = LogClient(
                state.url, self._policy(state), self._http, origin=state.origin
            )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Run in the background until :meth:`stop`."""
        self._stop.clear()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run())
        # Counters for any resolver's /metrics (this process serves none of its own).
        self._stats = loop.create_task(
            stats.publish(self.store.redis, "sync", self.process_metrics)
        )
        self._keeper = loop.create_task(self._keep_lease())

    async def stop(self) -> None:
        self._stop.set()
        for task in (self._task, self._stats, self._keeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._stats = self._keeper = None
        if self._writer is not None and self._leader:
            with contextlib.suppress(*REDIS_ERRORS):
                await self._writer.release(self.instance)
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        self._leader = self._active = False
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.index is not None:
            await self._drain_index()
            self.index.close()

    async def run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                t0 = time.monotonic()
                if not await self.sync_once():
                    await self._sleep(min(1.0, self.lock_ttl / 4))
                    continue
                backoff = 0.05
                await self._sleep(self.poll_interval - (time.monotonic() - t0))
            except asyncio.CancelledError:
                raise
            except (*REDIS_ERRORS, StoreError) as e:
                self._active = False
                self.counters["sync_redis_errors_total"] += 1
                if self._redis_up:
                    log.warning(
                        "redis unavailable (%s); serving stops updating until it is back", e
                    )
                self._redis_up = False
                await self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except _LostLead as e:
                self._active = self._leader = False
                self.counters["sync_sessions_lost_total"] += 1
                log.warning("sync session ended: %s", e)
            except Exception:
                self._active = False
                self.counters["sync_errors_total"] += 1
                log.exception("sync poll failed")
                await self._sleep(1.0)

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), seconds)

    async def sync_once(self) -> bool:
        """One poll of every log; False if another sync is the leader."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
            for state in self.logs.values():
                self._connect(state)
        if not self._active and not await self._begin():
            return False
        await self._poll()
        return True

    async def _begin(self) -> bool:
        """Become the leader and line up with what Redis holds."""
        writer = self._writer or self.store.writer(resize_grace=self.resize_grace)
        if self.index is not None and not self.index.is_open:
            await asyncio.to_thread(self.index.open)
        if not await writer.acquire(self.instance, int(self.lock_ttl * 1000)):
            if self._leader:
                log.warning("sync lock taken by another instance; standing by")
            self._leader = False
            return False
        self._renewed = time.monotonic()
        self._lease_lost = False
        first = not self._leader
        self._leader = True
        self._redis_up = True
        epoch = await writer.epoch()
        if epoch is not None and await writer.layout() != LAYOUT_VERSION:
            log.warning("redis holds data in another layout than this resolver's: deleting "
                        "it to rebuild from the logs")  # fmt: skip
            log.warning("deleted %d keys of the old layout", await writer.purge())
            epoch = None
        if epoch is None or epoch != self._epoch or not await self._in_step(writer):
            # Fresh writer: its layout cache describes the Redis it was made for.
            await writer.close()
            writer = self.store.writer(resize_grace=self.resize_grace)
            await writer.prepare()
            if epoch is None:
                self.counters["sync_rebuilds_total"] += 1
                log.warning("redis holds no resolver state: rebuilding it from the logs")
                epoch = await writer.new_epoch()
            elif not first:
                log.warning("redis state differs from this sync's: replaying the logs")
            self._epoch = epoch
            self._all_ready = False
            self._reset()
        else:
            # A server restarted with its data (AOF) keeps the epoch but forgets the
            # listpack limits: buckets written without them would leave their listpacks.
            await writer.tune()
        await writer.set_anchors({str(self.root_anchor[0]): self.root_origin})
        self._writer = writer
        self._active = True
        return True

    async def _in_step(self, writer: Writer) -> bool:
        for state in self.logs.values():
            if not state.loaded:
                continue
            cur = await writer.read_cursor(state.origin)
            if (cur.applied if cur else 0) != state.written:
                return False
        return True

    async def _keep_lease(self) -> None:
        """Renew the leader lock every quarter of its lifetime, apart from the work.

        The work itself only checks the outcome (:meth:`_lease`): however long a
        replay, the lock is renewed on time as long as the loop turns, and every
        slice of work yields to it.
        """
        while not self._stop.is_set():
            await self._sleep(self.lock_ttl / 4)
            writer = self._writer
            if not self._leader or writer is None or self._lease_lost:
                continue
            try:
                await self._renew(writer)
            except REDIS_ERRORS as e:
                # Not lost yet: the lock lives until its lifetime ends; retried next time.
                log.debug("sync lock renewal failed: %s", e)

    async def _renew(self, writer: Writer) -> None:
        if await writer.renew(self.instance, int(self.lock_ttl * 1000)):
            self._renewed = time.monotonic()
        else:
            self._lease_lost = True

    async def _lease(self) -> Writer:
        """The writer, while this sync still holds the leader lock (else :class:`_LostLead`)."""
        writer = self._writer
        assert writer is not None
        if not self._lease_lost and time.monotonic() - self._renewed > self.lock_ttl / 2:
            await self._renew(writer)  # the keeper is late: the loop was held somewhere
        if self._lease_lost:
            raise _LostLead("the sync lock expired or was taken over")
        return writer

    # -- one poll -------------------------------------------------------------------------

    async def _poll(self) -> None:
        writer = await self._lease()
        if await writer.epoch() != self._epoch:
            self._active = False
            raise _LostLead("redis lost its data (or another sync rebuilt it)")
        self.counters["sync_polls_total"] += 1
        live = [s for s in self.logs.values() if s.client is not None and s.state != "alarm"]
        got = await asyncio.gather(*(self._fetch(s) for s in live), return_exceptions=True)
        fetched: dict[str, Any] = {s.origin: r for s, r in zip(live, got, strict=True)}
        done: set[str] = set()
        # Parents first; logs learnt during this pass are read in the same pass.
        while True:
            todo = [s for o, s in self.logs.items() if o not in done]
            if not todo:
                break
            for state in todo:
                done.add(state.origin)
                await self._follow(state, fetched.get(state.origin))
        await writer.gc()  # bucket levels a resize left behind, once their grace is over
        if not self._all_ready and all(s.ready for s in self.logs.values()):
            await (await self._lease()).set_ready()
            self._all_ready = True
            log.info("every log has caught up (%d logs)", len(self.logs))
        self.last_poll = time.time()

    async def _fetch(self, state: LogState) -> tuple[Checkpoint, bytes]:
        assert state.client is not None
        return await state.client.fetch_checkpoint()

    async def _follow(self, state: LogState, fetched: Any) -> None:
        if state.state == "alarm":
            return
        if state.client is None:
            await self._mark(state, "unreachable", f"no ledger URL for {state.origin}")
            return
        try:
            if not state.loaded:
                await self._load(state)
            if fetched is None:
                fetched = await self._fetch(state)
            if isinstance(fetched, BaseException):
                raise fetched
            cp, note = fetched
            await self._advance(state, cp, note)
            await self._mark(state, "ok")
        except (*REDIS_ERRORS, StoreError, _LostLead):
            raise
        except _Bad as bad:
            await self._alarm(state, bad.error, bad.index)
        except CityIdError as e:
            if e.rule in TRANSIENT:
                self.counters["sync_fetch_errors_total"] += 1
                await self._mark(state, "unreachable", f"{e.rule}: {e.message}")
            else:
                await self._alarm(state, e)
        except Exception as e:
            # A bug, not evidence against the log: retry it next poll, keep the others going.
            self.counters["sync_errors_total"] += 1
            log.exception("log %s: unexpected error", state.origin)
            await self._mark(state, "unreachable", f"internal error: {e!r}"[:500])

    async def _load(self, state: LogState) -> None:
        """Take the log's trusted checkpoint and progress from its Redis cursor."""
        assert self._writer is not None
        cur = await self._writer.read_cursor(state.origin)
        if cur is not None:
            text, _ = parse_note(cur.note)  # verified when it was stored
            cp = Checkpoint.parse(text)
            state.trusted, state.note = cp, cur.note
            state.written, state.saved = cur.applied, (cp.size, cp.root)
            state.ready = cur.ready
        state.indexed = self.index.applied(state.origin) if self.index is not None else 1 << 62
        state.loaded = True

    async def _index(self, state: LogState, changes: list[Change], end: int) -> None:
        """Write a slice's effects to the search index while the next slice is decoded and
        written to Redis: one index write in flight at a time, in order, so lookups never
        wait for the index (it runs in a thread, and SQLite works without the GIL)."""
        await self._drain_index()
        index = self.index
        assert index is not None

        async def write() -> None:
            await index.write(changes, state.origin, end)
            state.indexed = index.applied(state.origin)

        self._indexing = asyncio.ensure_future(write())

    async def _drain_index(self) -> None:
        """Wait for the index write in flight, if any (its cursor then moves).

        Shielded: a sync cancelled meanwhile (``stop``) leaves the write running, and
        waits for it again before it closes the index under the thread.
        """
        task = self._indexing
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._indexing = None

    async def _advance(self, state: LogState, cp: Checkpoint, note: bytes) -> None:
        try:
            await self._advance_log(state, cp, note)
        finally:
            await self._drain_index()

    async def _advance_log(self, state: LogState, cp: Checkpoint, note: bytes) -> None:
        client = state.client
        assert client is not None
        if state.trusted is not None:
            await client.check_consistency(state.trusted, cp)
        if state.trusted is None or cp.size > state.trusted.size:
            state.trusted, state.note = cp, note
        trusted, note = state.trusted, state.note
        if state.applied < trusted.size:
            # One read of the new entries (bundles fetched ahead of use), applied and
            # written a slice at a time: the cursor moves with every slice.
            first, leaves, size = state.applied, [], 0
            async for _, leaf in client.entries(state.applied, trusted.size, trusted):
                leaves.append(leaf)
                size += len(leaf)
                if size >= SLICE_BYTES or len(leaves) >= self.chunk:
                    await self._apply(state, first, leaves, trusted, note)
                    first, leaves, size = state.applied, [], 0
                    await asyncio.sleep(0)  # whatever else shares the loop runs now
            if leaves:
                await self._apply(state, first, leaves, trusted, note)
        if state.saved != (trusted.size, trusted.root) and state.applied >= state.written:
            await self._write(state, [], trusted, note, state.written)
        if not state.ready and state.applied >= trusted.size:
            await self._lease()
            assert self._writer is not None
            await self._writer.mark_ready(state.origin)
            state.ready = True
            log.info("log %s caught up at %d entries", state.origin, trusted.size)

    async def _apply(
        self, state: LogState, start: int, leaves: list[bytes], cp: Checkpoint, note: bytes
    ) -> None:
        """Apply verified ``leaves`` (from ``start``): namespace first, then Redis, or neither."""
        ns = self.namespace
        changes: list[Change] = []
        indexed: list[Change] = []  # the effects the search index does not hold yet
        low = min(state.written, state.indexed)
        found: list[Delegate] = []
        bad: _Bad | None = None
        n = 0
        with ns.transaction():  # a failed Redis write rolls the namespace back too
            for k, leaf in enumerate(leaves):
                index = start + k
                try:
                    signed = decode_for_replay(leaf, verified=index < state.written)
                    op = content_of(signed.op)  # a custodial write: the write it carries
                    revoked_before = self._was_revoked(op)
                    ns.apply(signed, log=state.origin)
                except AuthorityError as e:
                    if e.rule != "prefix-revoked":
                        bad = _Bad(index, e)
                        break
                    self.counters["sync_ops_skipped_revoked_total"] += 1
                    log.warning("%s entry %d skipped: %s", state.origin, index, e.message)
                    n += 1
                    continue
                except CityIdError as e:
                    bad = _Bad(index, e)
                    break
                n += 1
                if isinstance(op, Delegate) and op.origin and op.origin != state.origin:
                    found.append(op)
                if index >= low:
                    effects = self._effects(op, state.origin, index, revoked_before)
                    if index >= state.written:
                        changes.extend(effects)
                    if index >= state.indexed:
                        indexed.extend(effects)
            end = start + n
            self.counters["sync_entries_applied_total"] += n
            if end > state.written:
                # A log learnt here starts pending: not "ready" before its prefix shows.
                await self._write(state, changes, cp, note, end, unready=bool(found))
        if self.index is not None and end > state.indexed:
            await self._index(state, indexed, end)
        state.applied = end
        for op in found:
            self._discover(op)
        if bad is not None:
            raise bad

    async def _write(
        self,
        state: LogState,
        changes: list[Change],
        cp: Checkpoint,
        note: bytes,
        applied: int,
        *,
        unready: bool = False,
    ) -> None:
        writer = await self._lease()
        cursor = Cursor(state.origin, cp.size, cp.root, note, applied, state.url or "",
                        str(state.vkey))  # fmt: skip
        batch = self._tally(state, changes, cp, applied)
        if unready:
            self._all_ready = False
        await writer.apply(changes, cursor, batch=batch, unready=unready)
        self.counters["sync_writes_total"] += 1
        state.written, state.saved = applied, (cp.size, cp.root)
        state.state, state.reason, state.updated_at = "ok", "", time.time()

    def _tally(
        self, state: LogState, changes: list[Change], cp: Checkpoint, applied: int
    ) -> Batch | None:
        """Add a slice to what its checkpoint held; the whole of it once its last slice is in."""
        start = state.saved[0] if state.saved else 0
        if cp.size <= start:
            return None
        b = state.batch
        if b is None or b.end != cp.size:
            b = Batch(start, cp.size, cp.root, 0.0, 0, 0, 0, ())
        sample = list(b.sample)
        ids = pfx = rng = 0
        for c in changes:
            if isinstance(c, MintChange):
                ids += len(c.items)
                for it in c.items[:BATCH_SAMPLE]:
                    _add_sample(sample, f"{c.prefix}/{it[0]}")
            elif isinstance(c, IdChange):
                ids += 1
                _add_sample(sample, f"{c.prefix}/{c.suffix}")
            elif isinstance(c, PrefixChange):
                pfx += 1
                _add_sample(sample, f"0.NA/{c.prefix}")
            elif isinstance(c, RangeChange):
                rng += 1
                _add_sample(sample, f"{c.prefix}/{mint_suffix(c.letters, c.start, c.width)}")
        b = dataclasses.replace(b, identifiers=b.identifiers + ids, prefixes=b.prefixes + pfx,
                                ranges=b.ranges + rng, sample=tuple(sample))  # fmt: skip
        if applied < cp.size:
            state.batch = b
            return None
        state.batch = None
        return dataclasses.replace(b, applied_at=time.time())

    # -- effects ----------------------------------------------------------------------------

    def _was_revoked(self, op: Operation) -> bool:
        if isinstance(op, Delegate):
            st = self.namespace.prefixes.get(op.prefix)
            return st is not None and st.revoked
        return False

    def _effects(self, op: Operation, origin: str, index: int, was_revoked: bool) -> list[Change]:
        ns = self.namespace
        if isinstance(op, Custody):
            return []  # who may write, not what resolves
        if isinstance(op, Mint):
            items = [(it.suffix, it.prev + 1, it.record.encode()) for it in op.items]
            return [MintChange(str(op.prefix), origin, index, items)]
        if isinstance(op, MintRange):
            return [
                RangeChange(str(op.prefix), op.letters, op.width, op.start, op.count,
                            op.template.encode(), origin, index)
            ]  # fmt: skip
        if isinstance(op, Delegate | RotateKey):
            st = ns.prefixes[op.prefix]
            out: list[Change] = [
                PrefixChange(str(op.prefix), st.version, st.revoked, origin, index,
                             st.record.encode(), st.key, st.host)
            ]  # fmt: skip
            return out + (self._revocations(op.prefix) if was_revoked else [])
        assert isinstance(op, Update | Delete)
        named = op.ident.named_prefix
        deleted = isinstance(op, Delete)
        record = op.record.encode() if isinstance(op, Update) else None
        if named is None:
            p = str(op.ident.prefix)
            return [IdChange(p, op.ident.suffix, op.prev + 1, deleted, origin, index, record)]
        st = ns.prefixes[named]
        change = PrefixChange(str(named), st.version, deleted, origin, index,
                              st.record.encode(), st.key, st.host)  # fmt: skip
        return [change, *(self._revocations(named) if deleted else [])]

    def _revocations(self, top: Prefix) -> list[Change]:
        """Whether each prefix at or below ``top`` now sits under a revoked delegation."""
        prefixes = self.namespace.prefixes
        out: list[Change] = []
        for p in sorted(p for p in prefixes if p.is_within(top)):
            revoked = any(prefixes[a].revoked for a in p.ancestors() if a in prefixes)
            out.append(RevokeChange(str(p), revoked))
        return out

    def _discover(self, op: Delegate) -> None:
        origin = op.origin
        assert origin is not None
        if origin == self.root_origin:
            return
        url = self.log_urls.get(origin) or _site_url(op.record)
        vkey = _log_vkey(op.record, origin, op.key)
        state = self.logs.get(origin)
        if state is None:
            state = LogState(origin, url, vkey, via=str(op.prefix))
            self.logs[origin] = state
            self._connect(state)
            log.info("following log %s at %s (delegation of %s)", origin, url, op.prefix)
            return
        if (url and url != state.url) or vkey != state.vkey:
            log.info("log %s: delegation of %s moves it to %s, key %s", origin, op.prefix, url,
                     vkey)  # fmt: skip
            state.url = url or state.url
            state.vkey = vkey
            self._connect(state)

    # -- status ------------------------------------------------------------------------------

    async def _mark(self, state: LogState, new: str, reason: str = "") -> None:
        if (state.state, state.reason) == (new, reason):
            return
        if new == "unreachable" and state.state != "unreachable":
            log.warning("log %s unreachable: %s", state.origin, reason)
        state.state, state.reason, state.updated_at = new, reason, time.time()
        assert self._writer is not None
        await self._writer.set_status(state.origin, new, reason, state.url or "")

    async def _alarm(self, state: LogState, e: CityIdError, index: int | None = None) -> None:
        where = f" at entry {index}" if index is not None else ""
        reason = f"{e.rule}{where}: {e.message}"
        kind = _alarm_kind(e)
        self.counters["sync_alarms_total"] += 1
        self.counters[f"sync_alarms_{kind}_total"] += 1
        log.error("ALARM log %s (%s): %s; no longer following it", state.origin, kind, reason)
        state.state, state.reason, state.updated_at = "alarm", reason, time.time()
        assert self._writer is not None
        await self._writer.set_status(state.origin, "alarm", reason, state.url or "")

    def status(self) -> dict[str, Any]:
        """This sync's view: leadership, Redis, and per log its state and progress."""
        return {
            "leader": self._leader,
            "redis": self._redis_up,
            "epoch": self._epoch,
            "last_poll": self.last_poll,
            "logs": [
                {
                    "origin": s.origin,
                    "url": s.url,
                    "via": s.via,
                    "size": s.trusted.size if s.trusted else 0,
                    "root": s.trusted.root.hex() if s.trusted else "",
                    "applied": s.applied,
                    "written": s.written,
                    "ready": s.ready,
                    "state": s.state,
                    "reason": s.reason,
                    "updated_at": s.updated_at,
                }
                for s in self.logs.values()
            ],
        }

    @property
    def healthy(self) -> bool:
        return self._redis_up and all(s.state == "ok" for s in self.logs.values())

    def process_metrics(self) -> dict[str, int | float]:
        """What this process alone knows (counters, leadership, last poll): per-log sizes and
        states are in Redis, where every resolver's /metrics reads them."""
        return {k: v for k, v in self.metrics().items() if "{" not in k and k != "sync_redis_up"}

    def metrics(self) -> dict[str, int | float]:
        """Counters and gauges for /metrics; keys may carry Prometheus labels."""
        out: dict[str, int | float] = dict(self.counters)
        for name in ("sync_alarms_total", "sync_redis_errors_total", "sync_rebuilds_total",
                     "sync_sessions_lost_total"):  # fmt: skip
            out.setdefault(name, 0)
        if self.index is not None:
            out["sync_index_errors_total"] = self.index.errors
        out["sync_leader"] = int(self._leader)
        out["sync_redis_up"] = int(self._redis_up)
        out["sync_last_poll_timestamp_seconds"] = self.last_poll
        states: dict[str, int] = defaultdict(int)
        for s in self.logs.values():
            states[s.state] += 1
            label = f'origin="{_label(s.origin)}"'
            out[f"sync_log_size{{{label}}}"] = s.trusted.size if s.trusted else 0
            out[f"sync_log_applied{{{label}}}"] = s.applied
            out[f"sync_log_alarm{{{label}}}"] = int(s.state == "alarm")
        for st in ("ok", "alarm", "unreachable", "pending"):
            out[f'sync_logs{{state="{st}"}}'] = states.get(st, 0)
        return out
