"""The store's cluster mode on a real 3-master Valkey Cluster (tests/cluster_harness.py).

Every test writes through the store's own write API (what sync does) or runs a
real sync, over ``Store.connect(url, cluster=True)``, and checks that what it
wrote lands on every master and reads back: lookups, ranges, prefix records,
tombstones, bucket resizes and their clean-up, invalidations across nodes, log
status, the leader lock, /metrics through ``meta:stats``, and the HTTP front.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import cluster_harness
import pytest
import redis
import test_resolver_http as th
import test_resolver_sync as ts

from cityid.identifiers import mint_suffix, parse_identifier, parse_prefix
from cityid.ops import MintRange
from cityid.records import Record, Value
from cityid.valkey import free_port
from resolver import stats
from resolver.http import Resolver, ServeOptions
from resolver.server import start_http
from resolver.store import (
    CHANNEL,
    Batch,
    Cursor,
    IdChange,
    PrefixChange,
    PrefixMeta,
    RangeChange,
    RevokeChange,
    Store,
    StoreError,
    bits_for,
)

pytestmark = pytest.mark.timeout(60)

valkey_cluster = cluster_harness.valkey_cluster  # the session fixture
world = ts.world  # real logs served on loopback (test_resolver_sync)

P = "MA.156.1301.02"
ORIGIN = "sjz.cityid.test/log"
TS = 1_700_000_000


def url_record(url: str) -> bytes:
    return Record.of([Value.make(1, "URL", url, timestamp=TS)]).encode()


def id_change(suffix: str, version: int = 1, *, leaf: int = 7, deleted: bool = False) -> IdChange:
    rec = None if deleted else url_record(f"https://water.sjz.example/m/{suffix}")
    return IdChange(P, suffix, version, deleted, ORIGIN, leaf, rec)


@pytest.fixture
def cluster(valkey_cluster: str) -> Iterator[str]:
    """The session cluster's seed URL, every master flushed before and after the test."""
    cluster_harness.flushall(valkey_cluster)
    yield valkey_cluster
    cluster_harness.flushall(valkey_cluster)


@pytest.fixture
async def stores(cluster: str) -> AsyncIterator[Any]:
    made: list[Store] = []

    async def make(url: str = cluster, **kw: Any) -> Store:
        made.append(await Store.connect(url, cluster=True, **kw))
        return made[-1]

    yield make
    for s in made:
        await asyncio.wait_for(s.close(), 5)


def node_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}"


def keys_by_node(url: str, match: str = "*") -> dict[int, list[bytes]]:
    """Every key of every master, read on that master alone."""
    out = {}
    for port in cluster_harness.masters(url):
        r = redis.Redis(host="127.0.0.1", port=port)
        out[port] = sorted(r.scan_iter(match=match, count=1000))
        r.close()
    return out


async def test_writes_spread_over_every_master_and_read_back(stores: Any, cluster: str) -> None:
    store = await stores(meta_ttl=0)  # no subscriber here: re-read layouts every time
    writer = store.writer(resize_grace=30)
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    # CONFIG on a cluster client goes to one node unless told: every master is tuned.
    for port in cluster_harness.masters(cluster):
        r = redis.Redis(host="127.0.0.1", port=port)
        assert r.config_get("hash-max-listpack-value")["hash-max-listpack-value"] == "1024"
        r.close()
    writer.fill = 16  # small buckets: several resizes with few identifiers
    tpl = url_record("https://assets.example/{suffix}")
    suffixes = [mint_suffix("A", n, 6) for n in range(2000)]
    for i in range(0, len(suffixes), 100):  # in small batches: the buckets resize twice
        await writer.apply([id_change(s, leaf=n) for n, s in enumerate(suffixes[i : i + 100], i)])
    await writer.apply([
        RangeChange(P, "W", 7, 100, 300, tpl, ORIGIN, 9),
        PrefixChange(P, 1, False, ORIGIN, 2, url_record("https://p.example"), bytes(32), ORIGIN),
        id_change("GONE", 2, leaf=11, deleted=True),
    ])  # fmt: skip

    meta = PrefixMeta.decode(await store.redis.get(f"m:{P}"))
    # Sized ahead of the batches (twice what came): never fewer bits than needed.
    assert meta.count == 2001 and bits_for(2001, 16) <= meta.bits <= bits_for(2 * 2001, 16)
    entries = await asyncio.gather(*(store.lookup(parse_identifier(f"{P}/{s}")) for s in suffixes))
    for n, (e, s) in enumerate(zip(entries, suffixes, strict=True)):
        assert e is not None and e.ident == f"{P}/{s}" and e.leaf_index == n and not e.deleted
        assert e.record is not None and e.record.urls() == [f"https://water.sjz.example/m/{s}"]
    assert store.counters["round_trips_total"] <= 3  # one pipeline, split by slot
    w = mint_suffix("W", 150, 7)
    e = await store.lookup(parse_identifier(f"{P}/{w}"))
    assert e is not None and e.record is not None
    assert e.record.urls() == [f"https://assets.example/{w}"] and e.leaf_index == 9
    assert await store.lookup(parse_identifier(f"{P}/{mint_suffix('W', 400, 7)}")) is None
    gone = await store.lookup(parse_identifier(f"{P}/GONE"))
    assert gone is not None and gone.deleted and gone.version == 2 and gone.record is None
    assert await store.lookup(parse_identifier(f"{P}/NOPE")) is None
    info = await store.prefix_info(parse_prefix(P))
    assert info is not None and info.host == ORIGIN and info.entry.leaf_index == 2

    # The buckets of one prefix land on every master (no hash tags on purpose).
    live = keys_by_node(cluster, f"i:{P}:{meta.bits}:*")
    assert len(live) == 3 and all(len(keys) > 10 for keys in live.values()), live
    # Every bucket that holds an identifier (at ~8 a bucket, hardly any is empty).
    assert (1 << meta.bits) - 8 <= sum(len(k) for k in live.values()) <= 1 << meta.bits
    assert all(keys for keys in keys_by_node(cluster).values())

    # Revocation answers tombstones; un-revoking restores the answers.
    await writer.apply([RevokeChange(P, True)])
    e = await store.lookup(parse_identifier(f"{P}/{suffixes[0]}"))
    assert e is not None and e.deleted
    await writer.apply([RevokeChange(P, False)])
    e = await store.lookup(parse_identifier(f"{P}/{suffixes[0]}"))
    assert e is not None and not e.deleted

    # Old levels wait for their grace time, then go from every master.
    old = {int(k.split(b":")[2]) for ks in keys_by_node(cluster, f"i:{P}:*").values() for k in ks}
    assert meta.bits in old and len(old) > 1
    assert await store.redis.hlen("meta:gc") == len(old) - 1
    assert await writer.gc() == 0
    assert await writer.gc(now=10**12) == len(old) - 1
    left = keys_by_node(cluster, f"i:{P}:*")
    assert {int(k.split(b":")[2]) for ks in left.values() for k in ks} == {meta.bits}
    assert await store.redis.hlen("meta:gc") == 0
    entries = await asyncio.gather(*(store.lookup(parse_identifier(f"{P}/{s}")) for s in suffixes))
    assert all(e is not None for e in entries)


async def test_invalidations_cross_nodes(stores: Any, cluster: str) -> None:
    first, _, third = cluster_harness.masters(cluster)
    reader = await stores(node_url(third))  # subscribes on the third master
    writing = await stores(node_url(first))
    writer = writing.writer()
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    got: asyncio.Queue[list[str]] = asyncio.Queue()
    reader.subscribe(got.put_nowait)
    r = redis.Redis(host="127.0.0.1", port=third)
    deadline = time.monotonic() + 5
    while r.pubsub_numsub(CHANNEL)[0][1] == 0:
        assert time.monotonic() < deadline, "the reader never subscribed"
        await asyncio.sleep(0.01)
    r.close()
    tpl = url_record("https://x.example/{suffix}")
    await writer.apply([id_change("F1"), RangeChange(P, "G", 3, 0, 10, tpl, ORIGIN, 1)])
    assert await asyncio.wait_for(got.get(), 3) == [f"{P}/F1", f"{P}/*"]
    many = [f"{P}/N{n}" for n in range(2500)]  # three messages of PUBLISH_CHUNK at most
    await writer.publish(many)
    parts = [await asyncio.wait_for(got.get(), 3) for _ in range(3)]
    assert [x for part in parts for x in part] == many
    await writer.new_epoch()
    assert await asyncio.wait_for(got.get(), 3) == ["*"]


async def test_status_cursor_batches_and_leader_lock(stores: Any) -> None:
    store = await stores()
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    assert await writer.epoch() is None
    epoch = await writer.new_epoch()
    assert await writer.epoch() == epoch
    note = b"sjz.cityid.test/log\n5\nroot\n\n- sig\n"
    cur = Cursor(ORIGIN, 5, b"\x01" * 32, note, 5, "http://127.0.0.1:9/log", "vk")
    first = Batch(0, 5, cur.root, time.time(), 2, 0, 0, (f"{P}/B1", f"{P}/B2"))
    await writer.apply([id_change("B1"), id_change("B2")], cur, batch=first)
    cur2 = Cursor(ORIGIN, 8, b"\x02" * 32, note, 8, "http://127.0.0.1:9/log", "vk")
    await writer.apply([id_change("B3")], cur2, batch=Batch(5, 8, cur2.root, time.time(), 1, 0, 0,
                                                                (f"{P}/B3",)))  # fmt: skip
    assert await store.checkpoint(ORIGIN) == note
    assert await store.log_url(ORIGIN) == "http://127.0.0.1:9/log"
    assert await store.checkpoint("other") is None
    assert await writer.read_cursor(ORIGIN) == cur2
    newest, older = await store.recent_batches(ORIGIN)
    assert (newest.start, newest.end, newest.identifiers) == (5, 8, 1)
    assert (older.start, older.end, older.sample) == (0, 5, (f"{P}/B1", f"{P}/B2"))
    await writer.set_status(ORIGIN, "alarm", "fork: two roots")
    await writer.set_status("root.cityid.test/log", "pending", url="http://127.0.0.1:8/log")
    st = await store.status()
    assert st["redis"] is True and st["epoch"] == epoch and st["leader"] is None
    assert [(lg["origin"], lg["size"], lg["state"]) for lg in st["logs"]] == [
        (ORIGIN, 8, "alarm"), ("root.cityid.test/log", 0, "pending"),
    ]  # fmt: skip

    assert await writer.acquire("a", 5000)
    assert await writer.acquire("a", 5000)  # re-entrant for its owner
    assert not await writer.acquire("b", 5000)
    assert not await writer.renew("b", 5000)
    assert await writer.renew("a", 5000)
    assert (await store.status())["leader"] == "a"
    await writer.release("b")  # not the owner: no effect
    assert not await writer.acquire("b", 5000)
    await writer.release("a")
    assert await writer.acquire("b", 5000)


async def test_http_explorer_and_metrics_over_a_cluster(stores: Any) -> None:
    store = await stores()
    writer = store.writer()
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    await th.populate(writer)
    r = store.redis
    counts = {"queries": 41}
    task = asyncio.create_task(stats.publish(r, "dns", lambda: counts))
    resolver = Resolver(store, ServeOptions())
    server = await start_http(resolver, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/{th.BUS}", allow_redirects=False) as resp:
                assert resp.status == 302 and resp.headers["Location"] == th.URL1_LOCATION
            minted = mint_suffix("A", 5, 7)
            async with http.get(f"{base}/{th.PFX}/{minted}", allow_redirects=False) as resp:
                assert resp.headers["Location"] == f"https://assets.example/{minted}"
            async with http.get(f"{base}/{th.PFX}/GONE", allow_redirects=False) as resp:
                assert resp.status == 410
            async with http.get(f"{base}/explorer") as resp:
                assert resp.status == 200 and th.ORIGIN in await resp.text()
            for _ in range(100):
                if await r.hexists(stats.STATS_KEY, f"dns/{stats.instance_name()}"):
                    break
                await asyncio.sleep(0.02)
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            assert f'cityid_dns_queries{{instance="{stats.instance_name()}"}} 41' in text
            assert f'cityid_sync_log_size{{origin="{th.ORIGIN}"}} 11' in text
            assert "cityid_sync_redis_up 1" in text
            async with http.get(f"{base}/healthz") as resp:
                body = await resp.json()
                assert body["redis"] is True
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
        await server.close()
        await resolver.close()
    assert await r.hlen(stats.STATS_KEY) == 0  # a clean stop removes its entry


async def test_sync_follows_real_logs_into_a_cluster(world: ts.World, stores: Any) -> None:
    store = await stores()
    sync = world.make_sync(store)
    tpl = ts.rec("https://water.sjz.example/meter/{suffix}")
    world.append(
        world.city,
        world.mint("HYDRANT-1", *(f"H{n}" for n in range(300))),
        (MintRange(ts.CITY, "W", 0, 100, 7, tpl, TS), world.city_admin),
    )
    try:
        await asyncio.wait_for(sync.sync_once(), 20)
        await asyncio.wait_for(sync.sync_once(), 20)  # the city log, learnt in pass one
        h = await ts.lookup(store, f"{ts.CITY}/HYDRANT-1")
        assert h is not None and h.origin == ts.CITY_ORIGIN and h.leaf_index == 0
        w5 = mint_suffix("W", 5, 7)
        e = await ts.lookup(store, f"{ts.CITY}/{w5}")
        assert e.record.urls() == [f"https://water.sjz.example/meter/{w5}"]
        found = await asyncio.gather(*(ts.lookup(store, f"{ts.CITY}/H{n}") for n in range(300)))
        assert all(x is not None for x in found)
        st = await store.status()
        assert ts.states(st) == {ts.ROOT_ORIGIN: "ok", ts.CITY_ORIGIN: "ok"}
        assert await store.checkpoint(ts.CITY_ORIGIN) == world.city.checkpoint_note
        assert len(await store.recent_batches(ts.CITY_ORIGIN)) == 1
        # Run in the background, see a new checkpoint, and stop promptly.
        await sync.start()
        world.append(world.city, world.mint("LATE-1"))
        await ts.eventually(lambda: ts._present(store, f"{ts.CITY}/LATE-1"), 10)
    finally:
        t0 = time.monotonic()
        await asyncio.wait_for(sync.stop(), 10)
        assert time.monotonic() - t0 < 5
    assert (await store.status())["leader"] is None


async def test_cancelled_calls_leave_the_cluster_client_consistent(stores: Any) -> None:
    store = await stores()
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    suffixes = [f"C{n}" for n in range(600)]
    await writer.apply([id_change(s, leaf=n) for n, s in enumerate(suffixes)])
    r = store.redis

    async def busy() -> None:
        while True:
            pipe = r.pipeline(transaction=False)
            for n in range(2000):
                pipe.hget(f"i:{P}:{n % 64}:0", "x")
                pipe.get(f"m:{P}")
            await pipe.execute()
            await r.hgetall("meta:origins")

    for delay in (0, 0.0005, 0.001, 0.002, 0.005, 0.01):
        task = asyncio.create_task(busy())
        await asyncio.sleep(delay)
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
        # No reply left behind on a connection for the next caller to read as its own.
        entries = await asyncio.wait_for(
            asyncio.gather(*(store.lookup(parse_identifier(f"{P}/{s}")) for s in suffixes)), 5
        )
        assert [e.leaf_index if e else None for e in entries] == list(range(600)), delay
        assert PrefixMeta.decode(await r.get(f"m:{P}")).count == 600


async def test_an_unreachable_cluster_is_a_store_error_not_a_crash() -> None:
    port = free_port("127.0.0.1")
    store = await asyncio.wait_for(Store.connect(node_url(port), cluster=True, timeout=0.5), 5)
    try:
        with pytest.raises(StoreError) as e:
            await asyncio.wait_for(store.lookup(parse_identifier(f"{P}/X")), 5)
        assert e.value.rule == "redis-unavailable"
        st = await asyncio.wait_for(store.status(), 5)
        assert st["redis"] is False and st["logs"] == []
    finally:
        await asyncio.wait_for(store.close(), 5)


async def test_invalidations_survive_losing_the_subscribed_node() -> None:
    """Its own cluster: one master is killed, so the session's cluster stays whole."""
    import msgpack

    with cluster_harness.ValkeyCluster() as c:
        reader = await Store.connect(c.url, cluster=True, timeout=1.0)
        try:
            got: asyncio.Queue[list[str]] = asyncio.Queue()
            reader.subscribe(got.put_nowait)
            seed = redis.Redis(host="127.0.0.1", port=c.ports[0])
            deadline = time.monotonic() + 5
            while seed.pubsub_numsub(CHANNEL)[0][1] == 0:
                assert time.monotonic() < deadline, "the reader never subscribed"
                await asyncio.sleep(0.01)
            seed.close()
            c.procs[0].kill()  # the node the subscription is on
            c.procs[0].wait(5)
            # Reconnected elsewhere: everything cached is suspect, then messages flow again.
            assert await asyncio.wait_for(got.get(), 10) == ["*"]
            live = [redis.Redis(host="127.0.0.1", port=p) for p in c.ports[1:]]
            deadline = time.monotonic() + 10
            while not (on := [r for r in live if r.pubsub_numsub(CHANNEL)[0][1]]):
                assert time.monotonic() < deadline, "nobody resubscribed on a live node"
                await asyncio.sleep(0.05)
            on[0].publish(CHANNEL, msgpack.packb([f"{P}/AFTER"], use_bin_type=True))
            for r in live:
                r.close()
            assert await asyncio.wait_for(got.get(), 5) == [f"{P}/AFTER"]
            assert reader.counters["subscribe_reconnects_total"] >= 1
        finally:
            await reader.close()


async def test_dns_answers_over_a_cluster(stores: Any) -> None:
    """The DNS front over a cluster store, with the namespace of tests/test_dns.py."""
    import dns.asyncquery
    import dns.message
    import dns.rcode
    import test_dns as td

    from resolver.dns.answers import ZoneConfig
    from resolver.dns.server import DnsServer, start_dns

    store = await stores()
    await td.populate(store)
    server = DnsServer(store, ZoneConfig.make(td.APEX, [td.ROOT]))
    listeners = await start_dns(server, "127.0.0.1", 0)
    try:
        port = listeners.port
        q = dns.message.make_query(td.name(td.W127), "TXT", use_edns=0, payload=1232)
        r = await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=3)
        txt = b"".join(b"".join(rd.strings) for rrset in r.answer for rd in rrset)
        assert r.rcode() == dns.rcode.NOERROR and b"things.sjz.example" in txt
        r = await dns.asyncquery.tcp(dns.message.make_query(td.name(td.BIG), "TXT"),
                                     "127.0.0.1", port=port, timeout=3)  # fmt: skip
        assert len(r.answer[0]) == 32
        gone = await dns.asyncquery.udp(dns.message.make_query(td.name(td.GONE), "TXT"),
                                        "127.0.0.1", port=port, timeout=3)  # fmt: skip
        assert gone.rcode() == dns.rcode.NXDOMAIN and gone.authority
    finally:
        await listeners.close()
        await server.close()
