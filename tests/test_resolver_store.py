"""The resolver's Redis layout, on a real Valkey: round trips, ranges, growth, coalescing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from cityid.identifiers import mint_suffix, parse_identifier, parse_prefix
from cityid.records import Record, Value
from resolver.store import (
    Cursor,
    IdChange,
    PrefixChange,
    RangeChange,
    RevokeChange,
    Store,
    Writer,
    bits_for,
    bucket_of,
)

pytestmark = pytest.mark.timeout(60)

P = "MA.156.1301.02"
ORIGIN = "sjz.cityid.test/log"
TS = 1_700_000_000


def url_record(url: str) -> Record:
    return Record.of([Value.make(1, "URL", url, timestamp=TS)])


def id_change(suffix: str, version: int = 1, *, leaf: int = 7, deleted: bool = False) -> IdChange:
    rec = None if deleted else url_record(f"https://water.sjz.example/m/{suffix}").encode()
    return IdChange(P, suffix, version, deleted, ORIGIN, leaf, rec)


@pytest.fixture
async def store(redis_db: str) -> AsyncIterator[Store]:
    s = await Store.connect(redis_db)
    yield s
    await s.close()


@pytest.fixture
async def writer(store: Store) -> Writer:
    w = store.writer(resize_grace=0)
    await w.prepare()
    await w.set_ready()  # as sync says once caught up: a miss is final
    return w


def logical_dump(url: str) -> dict[bytes, Any]:
    """Every key's content, type by type (DUMP bytes depend on listpack internals)."""
    r = redis.Redis.from_url(url)
    out: dict[bytes, Any] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"hash":
            h = r.hgetall(key)
            h.pop(b"updated_at", None)
            out[key] = h
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            out[key] = r.get(key)
        else:
            out[key] = kind
    r.close()
    return out


def test_layout_functions_are_stable() -> None:
    # The bucket function is part of the storage format: it must never change.
    assert bucket_of("W0000127R", 0) == 0
    assert bucket_of("W0000127R", 8) == bucket_of("W0000127R", 16) >> 8
    assert bits_for(0, 128) == 0 and bits_for(128, 128) == 0 and bits_for(129, 128) == 1
    assert bits_for(10**6, 128) == 13


async def test_identifier_round_trip(store: Store, writer: Writer) -> None:
    await writer.apply([id_change("W0000127R", 1, leaf=42)])
    e = await store.lookup(parse_identifier(f"{P.lower()}/w0000127r"))
    assert e is not None
    assert e.ident == f"{P}/W0000127R"
    assert (e.version, e.deleted, e.origin, e.leaf_index) == (1, False, ORIGIN, 42)
    assert e.record == url_record("https://water.sjz.example/m/W0000127R")
    assert await store.lookup(parse_identifier(f"{P}/NOPE")) is None
    await writer.apply([id_change("W0000127R", 2, leaf=43, deleted=True)])
    e = await store.lookup(parse_identifier(f"{P}/W0000127R"))
    assert e is not None and e.deleted and e.record is None and e.version == 2


async def test_prefix_record_round_trip(store: Store, writer: Writer) -> None:
    rec = Record.of(
        [
            Value.make(1, "NAME", "Traffic", timestamp=TS),
            Value.make(2, "HS_SITE", {"ledger": "https://ledger.sjz.example/log"}, timestamp=TS),
        ]
    )
    key = bytes(range(32))
    await writer.apply([PrefixChange(P, 1, False, "root.cityid.test/log", 3, rec.encode(), key,
                                     ORIGIN)])  # fmt: skip
    e = await store.lookup(parse_identifier(f"0.NA/{P}"))
    assert e is not None and e.ident == f"0.NA/{P}" and e.record == rec
    assert e.origin == "root.cityid.test/log" and e.leaf_index == 3
    info = await store.prefix_info(parse_prefix(P))
    assert info is not None and info.key == key and info.host == ORIGIN
    assert info.sites == {"ledger": "https://ledger.sjz.example/log"} and not info.revoked
    assert await store.lookup_prefix(parse_prefix("MA.156.9999")) is None


async def test_range_resolves_every_suffix_and_explicit_entries_override(
    store: Store, writer: Writer
) -> None:
    tpl = Record.of([Value.make(1, "URL", "https://water.sjz.example/{suffix}", timestamp=TS)])
    await writer.apply([RangeChange(P, "W", 7, 100, 300, tpl.encode(), ORIGIN, 9)])
    idents = [parse_identifier(f"{P}/{mint_suffix('W', n, 7)}") for n in range(100, 400)]
    entries = await asyncio.gather(*(store.lookup(i) for i in idents))
    for ident, e in zip(idents, entries, strict=True):
        assert e is not None and not e.deleted and e.version == 1 and e.leaf_index == 9
        assert e.record is not None and e.record.urls() == [
            f"https://water.sjz.example/{ident.suffix}"
        ]
    outside = [mint_suffix("W", 99, 7), mint_suffix("W", 400, 7), mint_suffix("W", 150, 8),
               mint_suffix("X", 150, 7), "W0000150"]  # fmt: skip
    for s in outside:
        assert await store.lookup(parse_identifier(f"{P}/{s}")) is None, s
    # An update and a delete of range members are explicit entries: they win.
    s1, s2 = mint_suffix("W", 150, 7), mint_suffix("W", 151, 7)
    await writer.apply([id_change(s1, 2, leaf=10), id_change(s2, 2, leaf=11, deleted=True)])
    e1 = await store.lookup(parse_identifier(f"{P}/{s1}"))
    e2 = await store.lookup(parse_identifier(f"{P}/{s2}"))
    assert e1 is not None and e1.version == 2 and e1.leaf_index == 10
    assert e1.record is not None and e1.record.urls() == [f"https://water.sjz.example/m/{s1}"]
    assert e2 is not None and e2.deleted and e2.version == 2
    # One sorted-set member for the whole range.
    r = store.redis
    assert await r.zcard(f"r:{P}:W:7") == 1


async def test_buckets_grow_and_every_identifier_stays_reachable(
    store: Store, writer: Writer, redis_db: str
) -> None:
    writer.fill = 16  # small buckets: several resizes with few identifiers
    suffixes = [mint_suffix("A", n, 6) for n in range(3000)]
    for i in range(0, len(suffixes), 400):
        await writer.apply([id_change(s) for s in suffixes[i : i + 400]])
    meta = await store.redis.get(f"m:{P}")
    from resolver.store import PrefixMeta

    m = PrefixMeta.decode(meta)
    # Sized ahead of the writes (twice what came): never fewer bits than needed.
    assert m.count == 3000 and bits_for(3000, 16) <= m.bits <= bits_for(2 * 3000, 16)
    entries = await asyncio.gather(*(store.lookup(parse_identifier(f"{P}/{s}")) for s in suffixes))
    assert all(
        e is not None and e.ident.endswith(s) for e, s in zip(entries, suffixes, strict=True)
    )
    keys = [k async for k in store.redis.scan_iter(match=f"i:{P}:*")]
    assert {k.split(b":")[2] for k in keys} == {str(m.bits).encode()}  # grace 0: old ones gone
    # Small buckets stay listpacks: that is where the density comes from.
    for k in keys[:20]:
        assert await store.redis.object("encoding", k) == b"listpack"


async def test_resize_tells_readers_to_read_the_new_layout(store: Store) -> None:
    w = store.writer(resize_grace=30)
    await w.prepare()
    await w.set_ready()  # as sync says once caught up: a miss is final
    w.fill = 8
    first = mint_suffix("A", 0, 6)
    await w.apply([id_change(first)])
    heard: asyncio.Queue[list[str]] = asyncio.Queue()
    store.subscribe(heard.put_nowait)
    for _ in range(100):  # until the subscription is live
        await w.publish(["probe"])
        with contextlib.suppress(TimeoutError):
            if await asyncio.wait_for(heard.get(), 0.05) == ["probe"]:
                break
    store.meta_ttl = 3600  # only the message may make this reader read the layout again
    assert await store.lookup(parse_identifier(f"{P}/{first}")) is not None  # bits 0, cached
    await w.apply([id_change(mint_suffix("A", n, 6)) for n in range(1, 21)])  # 21 > 8: resize
    assert [b for b, _ in w._old[P]] == [0]
    late = mint_suffix("A", 99, 6)
    await w.apply([id_change(late)])
    said: list[str] = []
    while f"{P}/{late}" not in said:
        said += await asyncio.wait_for(heard.get(), 3)
    assert f"{P}/#" not in said  # a layout message changes no answer: callbacks never see it
    # The old level is left as it was at the flip (in-flight readers finish on it) ...
    assert await store.redis.hget(f"i:{P}:0:0", late) is None
    # ... and this reader, told of the new layout, finds the late write in it.
    e = await store.lookup(parse_identifier(f"{P}/{late}"))
    assert e is not None and e.ident == f"{P}/{late}"
    assert await w.gc() == 0
    assert await w.gc(now=10**12) == 1
    assert not await store.redis.exists(f"i:{P}:0:0")
    assert await store.redis.hlen("meta:gc") == 0


async def test_writes_are_idempotent(store: Store, writer: Writer, redis_db: str) -> None:
    tpl = Record.of([Value.make(1, "URL", "https://x.example/{suffix}", timestamp=TS)])
    changes = [
        id_change("B1"),
        id_change("B2", 3, deleted=True),
        RangeChange(P, "C", 4, 0, 1000, tpl.encode(), ORIGIN, 5),
        PrefixChange(P, 1, False, ORIGIN, 1, tpl.encode(), bytes(32), ORIGIN),
        RevokeChange(P, False),
    ]
    cur = Cursor(ORIGIN, 9, bytes(32), b"note\n", 9, "http://127.0.0.1:1/log", "k")
    await writer.apply(changes, cur)
    first = logical_dump(redis_db)
    await writer.apply(changes, cur)
    w2 = store.writer(resize_grace=0)
    await w2.prepare()
    await w2.set_ready()  # as sync says once caught up: a miss is final
    await w2.apply(changes, cur)
    assert logical_dump(redis_db) == first


async def test_revoked_prefix_answers_tombstones(store: Store, writer: Writer) -> None:
    await writer.apply([id_change("D1")])
    await writer.apply([RevokeChange(P, True)])
    store.meta_ttl = 0  # no subscriber here: re-read the layout every time
    e = await store.lookup(parse_identifier(f"{P}/D1"))
    assert e is not None and e.deleted and e.record is None
    await writer.apply([RevokeChange(P, False)])
    e = await store.lookup(parse_identifier(f"{P}/D1"))
    assert e is not None and not e.deleted


def _info(url: str) -> tuple[int, int]:
    r = redis.Redis.from_url(url)
    stats = r.info("stats")
    calls = r.info("commandstats").get("cmdstat_hget", {}).get("calls", 0)
    r.close()
    return int(stats["total_reads_processed"]), int(calls)


async def test_concurrent_lookups_share_one_round_trip(
    store: Store, writer: Writer, redis_db: str
) -> None:
    suffixes = [f"E{n}" for n in range(1000)]
    await writer.apply([id_change(s) for s in suffixes])
    await store.lookup(parse_identifier(f"{P}/E0"))  # learn the prefix layout
    trips = store.counters["round_trips_total"]
    reads, hgets = _info(redis_db)
    entries = await asyncio.gather(*(store.lookup(parse_identifier(f"{P}/{s}")) for s in suffixes))
    reads2, hgets2 = _info(redis_db)
    assert all(e is not None for e in entries)
    assert store.counters["round_trips_total"] - trips == 1
    assert hgets2 - hgets == 1000
    # The server saw one pipeline: a handful of socket reads (16 KiB each), not 1000
    # (and the prefix's filter read once, beside it).
    assert reads2 - reads <= 16, reads2 - reads


async def test_invalidations_reach_subscribers(store: Store, writer: Writer) -> None:
    got: asyncio.Queue[list[str]] = asyncio.Queue()
    store.subscribe(got.put_nowait)
    await asyncio.sleep(0.2)  # let the subscription land
    tpl = Record.of([Value.make(1, "URL", "https://x.example/{suffix}", timestamp=TS)])
    await writer.apply([id_change("F1"), RangeChange(P, "G", 3, 0, 10, tpl.encode(), ORIGIN, 1)])
    msg = await asyncio.wait_for(got.get(), 2)
    assert msg == [f"{P}/F1", f"{P}/*"]


async def test_cursor_status_and_checkpoint(store: Store, writer: Writer) -> None:
    note = b"sjz.cityid.test/log\n5\nroot\n\n- sig\n"
    cur = Cursor(ORIGIN, 5, b"\x01" * 32, note, 5, "http://127.0.0.1:9/log", "vk")
    await writer.apply([], cur)
    assert await store.checkpoint(ORIGIN) == note
    assert await store.log_url(ORIGIN) == "http://127.0.0.1:9/log"
    assert await store.checkpoint("other") is None and await store.log_url("other") is None
    assert await writer.read_cursor(ORIGIN) == cur
    await writer.set_status(ORIGIN, "alarm", "fork: two roots")
    st = await store.status()
    assert st["redis"] is True
    (one,) = st["logs"]
    assert (one["origin"], one["size"], one["state"], one["reason"]) == (
        ORIGIN, 5, "alarm", "fork: two roots",
    )  # fmt: skip
    assert one["root"] == "01" * 32 and one["updated_at"] > 0


async def test_leader_lock(writer: Writer) -> None:
    assert await writer.acquire("a", 5000)
    assert await writer.acquire("a", 5000)  # re-entrant for its owner
    assert not await writer.acquire("b", 5000)
    assert not await writer.renew("b", 5000)
    await writer.release("b")  # not the owner: no effect
    assert not await writer.acquire("b", 5000)
    await writer.release("a")
    assert await writer.acquire("b", 5000)
