"""Membership filters: names nobody minted are answered without Redis, and nothing
sync wrote is ever answered as absent (real Valkey, real pub/sub, hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid.identifiers import parse_identifier
from cityid.records import Record, Value
from resolver import membership
from resolver.layout import NAMED_MINT, bucket_of
from resolver.store import IdChange, MintChange, PrefixChange, Store

P = "MA.156.1301.02"
ORIGIN = "sjz.test/log"
REC = Record.of([Value.make(1, "URL", "https://x.example/", timestamp=1)]).encode()
SUFFIX = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)


@settings(max_examples=300)
@given(st.sets(SUFFIX, max_size=300), st.integers(0, 6), st.lists(SUFFIX, max_size=50))
def test_a_filter_never_forgets_what_was_added(
    added: set[str], bits: int, others: list[str]
) -> None:
    bloom = membership.build(added, bits)
    assert len(bloom) == membership.size(bits)
    assert all(membership.may_contain(bloom, s, bits) for s in added)
    # And the bits are where Redis counts them: the offsets' bytes and masks.
    for s in list(added)[:5]:
        for o in membership.offsets(s, bits):
            assert bloom[o >> 3] & (0x80 >> (o & 7))
    del others


@settings(max_examples=500)
@given(SUFFIX, st.integers(0, 24))
def test_a_suffix_filter_block_is_its_bucket(suffix: str, bits: int) -> None:
    # The writer hashes each suffix once and takes its bucket from its first offset:
    # the layout's bucket and the filter's block must stay one and the same.
    assert membership.offsets(suffix, bits)[0] // membership.BLOCK_BITS == bucket_of(suffix, bits)


def test_false_positives_stay_rare_at_the_fill_a_resize_allows() -> None:
    n = 128 * 16  # 128 a bucket over 16 buckets: the fullest a level gets
    bloom = membership.build((f"K-{i}" for i in range(n)), 4)
    hits = sum(membership.may_contain(bloom, f"X-{i}", 4) for i in range(20_000))
    assert hits / 20_000 < 0.04  # ~2% at 8 bits an identifier, 5 probes


# -- through the store --------------------------------------------------------------------


async def _heard(store: Store) -> asyncio.Queue[list[str]]:
    q: asyncio.Queue[list[str]] = asyncio.Queue()
    store.subscribe(q.put_nowait)
    return q


async def _until(q: asyncio.Queue[list[str]], item: str) -> None:
    said: list[str] = []
    while item not in said:
        said += await asyncio.wait_for(q.get(), 5)


async def _live(writer: Any, q: asyncio.Queue[list[str]]) -> None:
    for _ in range(200):  # until the subscription hears what is published
        await writer.publish(["probe/1"])
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(q.get(), 0.05)
            if "probe/1" in got:
                return
    raise AssertionError("the subscription never went live")


async def _filters_ready(store: Store, prefix: str) -> None:
    for _ in range(200):
        await store.lookup(parse_identifier(f"{prefix}/WARM-UP"))
        m = store._members.get(prefix)
        if m is not None and not m.stale and not m.loading:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the filter never loaded")


async def test_a_flood_of_unminted_names_costs_no_round_trip(redis_db: str) -> None:
    store = await Store.connect(redis_db)
    try:
        w = store.writer(resize_grace=0)
        await w.prepare()
        await w.set_ready()
        w.fill = 16
        city = Record.of([Value.make(1, "NAME", "x", timestamp=1)]).encode()
        await w.apply([PrefixChange(P, 1, False, ORIGIN, 0, city, b"\x01" * 32, ORIGIN)])
        await w.apply([MintChange(P, ORIGIN, 1, [(f"L{i}", 1, REC) for i in range(500)])])
        q = await _heard(store)
        await _live(w, q)
        await _filters_ready(store, P)
        trips = store.counters["round_trips_total"]
        flood = [parse_identifier(f"{P}/Z{i}X") for i in range(2000)]
        got = await asyncio.gather(*(store.lookup(i) for i in flood))
        assert all(e is None for e in got)
        assert store.counters["filtered_total"] >= 1900  # ~2% false positives at most
        assert store.counters["round_trips_total"] - trips <= 1
        # A random node under P is no child of P: no round trip for its prefix record.
        before = store.counters["round_trips_total"]
        assert await store.lookup(parse_identifier(f"0.NA/{P}.XYZ9")) is None
        assert store.counters["round_trips_total"] == before
        # What exists is found.
        found = await asyncio.gather(*(store.lookup(parse_identifier(f"{P}/L{i}"))
                                       for i in range(500)))  # fmt: skip
        assert all(e is not None for e in found)
    finally:
        await store.close()


@st.composite
def histories(draw: Any) -> list[tuple[str, list[str]]]:
    """Writes as sync makes them: single mints (named), bulk mints (``P/+``), children."""
    steps = []
    for n in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["one", "bulk", "child"]))
        if kind == "one":
            steps.append(("one", [draw(SUFFIX)]))
        elif kind == "bulk":
            steps.append(("bulk", draw(st.lists(SUFFIX, min_size=1, max_size=120, unique=True))))
        else:
            steps.append(("child", [f"N{n}{draw(st.integers(0, 99))}"]))
    return steps


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories())
def test_nothing_written_is_ever_answered_absent(
    redis_db: str, history: list[tuple[str, list[str]]]
) -> None:
    redis.Redis.from_url(redis_db).flushdb()
    asyncio.run(_history(redis_db, history))


async def _history(url: str, history: list[tuple[str, list[str]]]) -> None:
    reader, writing = await Store.connect(url), await Store.connect(url)
    reader.reload_interval = 0  # read a stale filter again at once: it is in use sooner
    try:
        w = writing.writer(resize_grace=0)
        await w.prepare()
        await w.set_ready()
        w.fill = 8  # resizes (new filter sizes) among the writes
        city = Record.of([Value.make(1, "NAME", "x", timestamp=1)]).encode()
        await w.apply([PrefixChange(P, 1, False, ORIGIN, 0, city, b"\x01" * 32, ORIGIN)])
        q = await _heard(reader)
        await _live(w, q)
        await _filters_ready(reader, P)  # from here, the reader answers from its filter
        minted: set[str] = set()
        children: set[str] = set()
        leaf = 1
        for kind, names in history:
            leaf += 1
            if kind == "one":
                fresh = [s for s in names if s not in minted]
                await w.apply([IdChange(P, s, 1, False, ORIGIN, leaf, REC) for s in fresh])
                minted.update(fresh)
                last = f"{P}/{fresh[-1]}" if fresh else None
            elif kind == "bulk":
                fresh = [s for s in names if s not in minted]
                if fresh:
                    await w.apply([MintChange(P, ORIGIN, leaf, [(s, 1, REC) for s in fresh])])
                minted.update(fresh)
                # Announced one by one up to NAMED_MINT, as "P/+" beyond.
                last = (f"{P}/+" if len(fresh) > NAMED_MINT else f"{P}/{fresh[-1]}") if fresh \
                    else None  # fmt: skip
            else:
                node = names[0]
                await w.apply([PrefixChange(f"{P}.{node}", 1, False, ORIGIN, leaf, city,
                                            b"\x02" * 32, ORIGIN)])  # fmt: skip
                children.add(node)
                last = f"0.NA/{P}.{node}"
            if last is not None:
                await _until(q, last)  # what a worker has heard when it answers
            await _filters_ready(reader, P)  # and answered from its filter, not from Redis
            filtered = reader.counters["filtered_total"]
            assert await reader.lookup(parse_identifier(f"{P}/never-minted_0")) is None
            for s in sorted(minted):
                e = await reader.lookup(parse_identifier(f"{P}/{s}"))
                assert e is not None, (s, kind)
            for node in children:
                e = await reader.lookup(parse_identifier(f"0.NA/{P}.{node}"))
                assert e is not None, node
            assert reader.counters["filtered_total"] > filtered  # the filter was in use
    finally:
        await reader.close()
        await writing.close()


def test_the_writer_keeps_filters_and_children_in_redis(redis_db: str) -> None:
    async def go() -> None:
        store = await Store.connect(redis_db)
        w = store.writer(resize_grace=0)
        await w.prepare()
        w.fill = 8
        names = [f"S{i}" for i in range(100)]  # several resizes
        for i in range(0, 100, 10):
            await w.apply([IdChange(P, s, 1, False, ORIGIN, 1, REC) for s in names[i : i + 10]])
        await w.apply([PrefixChange(f"{P}.77", 1, False, ORIGIN, 2, REC, b"\x01" * 32, ORIGIN)])
        await store.close()

    asyncio.run(go())
    r = redis.Redis.from_url(redis_db)
    from resolver.layout import PrefixMeta

    bits = PrefixMeta.decode(r.get(f"m:{P}")).bits
    bloom = r.get(f"f:{P}") or b""
    bloom += bytes(membership.size(bits) - len(bloom))
    assert all(membership.may_contain(bloom, f"S{i}", bits) for i in range(100))
    assert r.smembers(f"c:{P}") == {b"77"}
    r.close()


pytestmark = pytest.mark.timeout(120)
