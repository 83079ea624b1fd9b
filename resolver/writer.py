"""Sync's half of the store: idempotent pipelined writes of what it verified.

The layout is :mod:`resolver.layout`'s. Bulk writes go out packed by hiredis on a
connection of their own where the server allows (:mod:`resolver.resp`), through
redis-py's pipelines otherwise (a cluster, TLS).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from . import membership
from .layout import (
    ALL,
    ANCHORS,
    CHANNEL,
    COPY_CHUNK,
    EPOCH,
    GC,
    LAYOUT,
    LAYOUT_VERSION,
    LEADER,
    LISTPACK_ENTRIES,
    LISTPACK_VALUE,
    MAX_FILL,
    NAMED_MINT,
    ORIGINS,
    PUBLISH_CHUNK,
    READY,
    RECENT_BATCHES,
    Batch,
    Change,
    Cursor,
    IdChange,
    MintChange,
    PrefixChange,
    PrefixMeta,
    RangeChange,
    RevokeChange,
    as_bin,
    batches_key,
    bits_for,
    children_key,
    cursor_fields,
    filter_key,
    flat,
    id_head,
    id_key,
    id_value,
    log_key,
    meta_key,
    pack,
    prefix_key,
    prefix_value,
    range_key,
    range_member,
)
from .resp import Command, RespPipe, pipeline, supports

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("cityid.resolver.writer")

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('del', KEYS[1]) else return 0 end"
)


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
        # Each prefix's filter as Redis holds it (read once, then kept in step here):
        # a batch's bits are set here and whole blocks written, not bit by bit.
        self._blooms: dict[str, bytearray] = {}
        # Bulk writes go out packed by hiredis on a connection of their own where the
        # server allows (resolver.resp); through redis-py's pipelines otherwise.
        self._raw = RespPipe(store._url, timeout=max(store._timeout, 10.0)) if supports(
            store._url, store._cluster) else None  # fmt: skip

    async def close(self) -> None:
        if self._raw is not None:
            await self._raw.close()

    async def _execute(self, commands: Sequence[Command]) -> list[Any]:
        return await pipeline(self._raw, self._r, commands)

    async def prepare(self) -> None:
        """Tune listpack limits where allowed; load origin ids and pending clean-ups."""
        entries = await self._tune()
        # Mean fill stays between fill/2 and fill; a quarter of the limit leaves
        # room for the unlucky buckets above the mean.
        self.fill = max(8, min(MAX_FILL, entries // 4))
        raw = await self._r.hgetall(ORIGINS)
        self._oid = {k[2:].decode(): int(v) for k, v in raw.items() if k.startswith(b"o:")}
        self._old.clear()
        self._blooms.clear()
        for f, deadline in (await self._r.hgetall(GC)).items():
            p, _, bits = f.decode().rpartition(" ")
            self._old[p].append((int(bits), float(deadline)))

    async def tune(self) -> None:
        """Set the listpack limits again (a restarted server forgets a ``CONFIG SET``)."""
        await self._tune()

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

    async def layout(self) -> str | None:
        """The layout version the data in Redis was written in (None: none said)."""
        raw = await self._r.get(LAYOUT)
        return raw.decode() if raw else None

    async def new_epoch(self) -> str:
        value = os.urandom(8).hex()
        await self._execute([("SET", LAYOUT, LAYOUT_VERSION), ("SET", EPOCH, value)])
        await self.publish([ALL])
        return value

    async def purge(self) -> int:
        """Delete everything this layout names but the leader lock; return how many keys.

        For data written in another layout: readers cannot read it, and a rebuild
        into the same key names would mix with it. The resolver owns its database.
        """
        gone = 0
        await self._execute([("DEL", EPOCH), ("DEL", READY)])  # readers: "not ready" now
        for pattern in ("i:*", "r:*", "m:*", "p:*", "f:*", "c:*", "l:*", "b:*", "meta:*"):
            batch: list[Command] = []
            async for key in self._r.scan_iter(match=pattern, count=1000):
                if key != LEADER.encode():
                    batch.append(("UNLINK", key))
                if len(batch) >= 1000:
                    gone += len(batch)
                    await self._execute(batch)
                    batch = []
            gone += len(batch)
            await self._execute(batch)
        self._oid.clear()
        self._meta.clear()
        self._old.clear()
        self._blooms.clear()
        return gone

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
                      g.get("url", b"").decode(), g.get("key", b"").decode(),
                      g.get("ready") == b"1")  # fmt: skip

    async def set_status(self, origin: str, state: str, reason: str = "", url: str = "") -> None:
        fields: dict[str, Any] = {"state": state, "reason": reason, "updated_at": time.time()}
        if url:
            fields["url"] = url
        pipe = self._r.pipeline(transaction=False)
        self._register(pipe, [origin])
        pipe.hset(log_key(origin), mapping=fields)
        await pipe.execute()

    async def publish(self, idents: Sequence[str]) -> None:
        cmds: list[Command] = []
        later = self._publish_cmds(cmds, idents)
        await self._execute(cmds)
        await self._publish_now(later)

    def _publish_cmds(self, cmds: list[Command], idents: Sequence[str]) -> list[bytes]:
        """Add the invalidations of ``idents`` to ``cmds``; return those to send after them.

        A cluster pipeline refuses PUBLISH (it has no key), so there they are sent
        one by one once the pipeline has run; any node relays them to the others.
        """
        msgs = [pack(list(idents[i : i + PUBLISH_CHUNK]))
                for i in range(0, len(idents), PUBLISH_CHUNK)]  # fmt: skip
        if self.store._cluster:
            return msgs
        cmds += (("PUBLISH", CHANNEL, m) for m in msgs)
        return []

    async def _publish_now(self, msgs: list[bytes]) -> None:
        for m in msgs:
            await self._r.publish(CHANNEL, m)

    def _register(self, pipe: Any, origins: Iterable[str]) -> None:
        cmds: list[Command] = []
        self._register_cmds(cmds, origins)
        for c in cmds:
            pipe.execute_command(*c)

    def _register_cmds(self, cmds: list[Command], origins: Iterable[str]) -> None:
        for o in origins:
            if o not in self._oid:
                n = self._oid[o] = len(self._oid)
                cmds.append(("HSET", ORIGINS, f"o:{o}", n, f"i:{n}", o))

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

    async def mark_ready(self, origin: str) -> None:
        """Say that sync has caught up with log ``origin`` in this epoch."""
        await self._r.hset(log_key(origin), "ready", 1)

    async def set_anchors(self, anchors: dict[str, str]) -> None:
        """Which log delegates under each root prefix (readers settle misses with it)."""
        if anchors:
            await self._r.hset(ANCHORS, mapping=anchors)

    async def set_ready(self) -> None:
        """Say that every followed log has caught up (cleared by ``apply(unready=True)``)."""
        await self._r.set(READY, 1)

    async def apply(
        self, changes: Sequence[Change], cursor: Cursor | None = None, *, state: str = "ok",
        reason: str = "", batch: Batch | None = None, unready: bool = False,
    ) -> None:  # fmt: skip
        """Write ``changes`` (later ones win), then the cursor, then the invalidations.

        ``batch``: a checkpoint to remember in the log's recent batches. ``unready``:
        clear ``meta:ready`` before anything else is written (the changes name a log
        not yet followed, whose names must answer "not ready" until it has caught up).
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
        # Identifier writes in order (a later change of one identifier wins: its field
        # comes later in the same HSET, or in a later one), grouped by bucket.
        ids: list[tuple[str, str, bytes]] = []  # prefix, suffix, value
        ranges: dict[tuple[str, str, int, int], RangeChange] = {}
        pfx: dict[str, PrefixChange] = {}
        revoke: dict[str, bool] = {}
        inval: dict[str, None] = {}
        oid = self._oid
        cmds: list[Command] = []
        self._register_cmds(cmds, origins)
        for c in changes:
            if isinstance(c, MintChange):
                head = id_head(oid[c.origin], c.leaf_index)
                p = c.prefix
                ids += ((p, s, head[v] + as_bin(r)) for s, v, r in c.items)
                if len(c.items) <= NAMED_MINT:
                    inval.update((f"{p}/{s}", None) for s, _, _ in c.items)
                else:
                    # New identifiers: only answers "not registered" under P can be stale
                    # (and readers read P's filter again). A re-mint of a deleted one
                    # replaces its tombstone: named one by one.
                    inval[f"{p}/+"] = None
                    inval.update((f"{p}/{s}", None) for s, v, _ in c.items if v > 1)
            elif isinstance(c, IdChange):
                ids.append((c.prefix, c.suffix, id_value(c, oid[c.origin])))
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

        await self._presize(p for p, _, _ in ids)
        if unready:
            cmds.insert(0, ("DEL", READY))
        base = len(cmds)
        # Identifier writes grouped by bucket, and each suffix into its prefix's filter
        # (before anyone is told it exists): one hash of the suffix gives both, since a
        # suffix's filter block is its bucket (resolver.membership).
        await self._load_blooms({p for p, _, _ in ids})
        buckets: dict[tuple[str, int], list[Any]] = {}
        touched: dict[str, set[int]] = {}
        offsets = membership.offsets
        last, bits, bloom, blocks = "", 0, bytearray(), set()
        for p, s, value in ids:
            if p != last:
                last, bits, bloom = p, self._meta[p].bits, self._blooms[p]
                blocks = touched.setdefault(p, set())
            offs = offsets(s, bits)
            for o in offs:
                bloom[o >> 3] |= 0x80 >> (o & 7)
            b = offs[0] // membership.BLOCK_BITS
            blocks.add(b)
            fields = buckets.get((p, b))
            if fields is None:
                fields = buckets[p, b] = ["HSET", id_key(p, bits, b)]
            fields += (s, value)
        counted = [p for p, _ in buckets]
        cmds += buckets.values()
        cmds += self._filter_cmds(touched)
        for p in pfx:
            parent, _, node = p.rpartition(".")
            if parent:
                cmds.append(("SADD", children_key(parent), node))
        for (p, letters, width, _), rc in ranges.items():
            member = range_member(rc, oid[rc.origin])
            cmds.append(("ZADD", range_key(p, letters, width), 0, member))
        for p, pc in pfx.items():
            cmds.append(("SET", prefix_key(p), prefix_value(pc, oid[pc.origin], oid[pc.host])))
        res = await self._execute(cmds)

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
        cmds = [("SET", meta_key(p), self._meta[p].encode()) for p in sorted(changed)]
        if cursor is not None:
            fields = cursor_fields(cursor, state, reason)
            cmds.append(("HSET", log_key(cursor.origin), *flat(fields)))
            if batch is not None:
                cmds.append(("LPUSH", batches_key(cursor.origin), batch.encode()))
                cmds.append(("LTRIM", batches_key(cursor.origin), 0, RECENT_BATCHES - 1))
        later = self._publish_cmds(cmds, list(inval))
        await self._execute(cmds)
        await self._publish_now(later)
        for p in sorted(changed):
            meta = self._meta[p]
            if bits_for(meta.count, self.fill) > meta.bits:
                await self._resize(p, meta)

    def _filter_cmds(self, touched: dict[str, set[int]]) -> list[Command]:
        """The commands that write the filter blocks ``touched`` (per prefix), or the
        whole filter of a prefix if most of its blocks were."""
        cmds: list[Command] = []
        size = membership.BLOCK_BYTES
        for p, blocks in touched.items():
            bloom = self._blooms[p]
            if len(blocks) * 4 > len(bloom) // size:
                cmds.append(("SET", filter_key(p), bytes(bloom)))
            else:
                key, view = filter_key(p), memoryview(bloom)
                for b in sorted(blocks):
                    cmds.append(("SETRANGE", key, b * size, bytes(view[b * size : (b + 1) * size])))
        return cmds

    async def _load_blooms(self, prefixes: Iterable[str]) -> None:
        need = sorted(p for p in prefixes if p not in self._blooms)
        if not need:
            return
        got = await self._execute([("GET", filter_key(p)) for p in need])
        for p, raw in zip(need, got, strict=True):
            bloom = bytearray(raw or b"")
            # Redis keeps a string as long as its last byte written: the rest are zeros.
            bloom += bytes(max(0, membership.size(self._meta[p].bits) - len(bloom)))
            self._blooms[p] = bloom

    async def _presize(self, prefixes: Iterable[str]) -> None:
        """Resize before writing when a batch's new identifiers will outgrow their buckets.

        Sized for twice what is coming: a bulk load then copies each identifier about
        once in all, rather than twice. Not more: a bucket is a key, and every key costs
        Valkey some hundreds of bytes however few identifiers it holds (measured: four
        times cost 26 bytes an identifier more at 200,000).
        """
        incoming: dict[str, int] = defaultdict(int)
        for p in prefixes:
            incoming[p] += 1
        for p, n in incoming.items():
            meta = self._meta[p]
            if bits_for(meta.count + n, self.fill) > meta.bits:
                await self._resize(p, meta, bits_for(2 * (meta.count + n), self.fill))

    async def _resize(self, p: str, meta: PrefixMeta, bits: int | None = None) -> None:
        """Copy ``p``'s buckets to a level with more bits, flip ``m:P``, retire the old level."""
        old = meta.bits
        new = max(bits or 0, bits_for(meta.count, self.fill))
        keys = [id_key(p, old, b) for b in range(1 << old)]
        count = 0
        bloom = bytearray(membership.size(new))  # the filter, sized for the new level
        for i in range(0, len(keys), COPY_CHUNK):
            got = await self._execute([("HGETALL", k) for k in keys[i : i + COPY_CHUNK]])
            out: dict[int, list[Any]] = {}
            for reply in got:
                # HGETALL's reply: a flat [field, value, ...] (raw), or a dict (redis-py).
                if isinstance(reply, dict):
                    pairs: Iterable[tuple[bytes, bytes]] = reply.items()
                else:
                    pairs = zip(reply[::2], reply[1::2], strict=True)
                for f, v in pairs:
                    offs = membership.offsets(f.decode(), new)  # its bucket is its block
                    for o in offs:
                        bloom[o >> 3] |= 0x80 >> (o & 7)
                    b = offs[0] // membership.BLOCK_BITS
                    fields = out.get(b)
                    if fields is None:
                        fields = out[b] = ["HSET", id_key(p, new, b)]
                    fields += (f, v)
                    count += 1
            await self._execute(list(out.values()))
        meta.bits, meta.count = new, count
        # Flip first, then record the old level for deletion: a crash in between
        # leaks a level until the next rebuild, never deletes the live one. Readers
        # drop their cached layout of P at once ("P/#"), so the old level is read
        # only by lookups already in flight, and for at most ``meta_ttl`` by a reader
        # that missed the message.
        # The filter of the new level first: a reader that sees the new layout finds a
        # filter of its size (one that sees the old size waits for the message).
        self._blooms[p] = bloom
        cmds: list[Command] = [("SET", filter_key(p), bytes(bloom)),
                               ("SET", meta_key(p), meta.encode())]  # fmt: skip
        later = self._publish_cmds(cmds, [f"{p}/#"])
        await self._execute(cmds)
        await self._publish_now(later)
        deadline = time.time() + self.resize_grace
        if count == 0:
            pass  # sized before its first write: no level to retire
        elif self.resize_grace > 0:
            await self._r.hset(GC, f"{p} {old}", deadline)
            self._old[p].append((old, deadline))
        else:
            await self._unlink(keys)
        self.store.counters["resizes_total"] += 1
        log.info("prefix %s: %d identifiers, buckets 2^%d -> 2^%d", p, count, old, new)

    async def _unlink(self, keys: Sequence[str]) -> None:
        for i in range(0, len(keys), 1000):
            # One key per command: cluster-safe.
            await self._execute([("UNLINK", k) for k in keys[i : i + 1000]])

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
