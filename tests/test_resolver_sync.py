"""Verified sync end to end: real logs served over loopback HTTP, a real Valkey, no mocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from cityid.identifiers import Identifier, Prefix, mint_suffix
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintItem,
    MintRange,
    Operation,
    SignedOperation,
    Update,
)
from cityid.records import Record, Value
from cityid.valkey import find_binary, free_port
from ledger.checkpoint import Checkpoint
from ledger.http import serve_app, tiles_app
from ledger.note import sign_note
from ledger.storage import Log
from resolver.config import ConfigError, ResolverConfig
from resolver.layout import LAYOUT_VERSION
from resolver.store import Batch, Store, StoreError
from resolver.sync import Sync

pytestmark = pytest.mark.timeout(60)

ROOT = Prefix.parse("MA.156")
CITY = ROOT.child("1301")
SIBLING = ROOT.child("1302")
ROOT_ORIGIN = "root.cityid.test/log"
CITY_ORIGIN = "sjz.cityid.test/log"
TS = 1_700_000_000


def rec(url: str, *extra: tuple[str, Any]) -> Record:
    values = [Value.make(1, "URL", url, timestamp=TS)]
    values += [Value.make(i + 2, t, d, timestamp=TS) for i, (t, d) in enumerate(extra)]
    return Record.of(values)


def point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


@dataclass
class World:
    tmp: Path
    root_log_key: SigningKey
    city_log_key: SigningKey
    root_admin: SigningKey
    city_admin: SigningKey
    sibling_admin: SigningKey
    root: Log
    city: Log
    root_url: str = ""
    city_url: str = ""

    def append(self, log: Log, *ops: tuple[Operation, SigningKey]) -> None:
        log.append([SignedOperation.sign(op, key).encode() for op, key in ops])

    def mint(self, *suffixes: str, key: SigningKey | None = None) -> tuple[Operation, SigningKey]:
        items = tuple(MintItem(s, 0, rec(f"https://water.sjz.example/{s}")) for s in suffixes)
        return Mint(CITY, items, TS), key or self.city_admin

    def make_sync(self, store: Store, **kw: Any) -> Sync:
        kw = {"poll_interval": 0.05, "resize_grace": 0, "lock_ttl": 2.0} | kw
        anchor = (ROOT, self.root_admin.public_key)
        return Sync(store, self.root_url, self.root_log_key.verifier, anchor, **kw)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    keys = {n: SigningKey.generate(n) for n in (ROOT_ORIGIN, CITY_ORIGIN, "root", "city", "sib")}
    root = Log.create(tmp_path / "root-a", keys[ROOT_ORIGIN], ROOT_ORIGIN)
    city = Log.create(tmp_path / "city-a", keys[CITY_ORIGIN], CITY_ORIGIN)
    point(tmp_path / "root", tmp_path / "root-a")
    point(tmp_path / "city", tmp_path / "city-a")
    w = World(tmp_path, keys[ROOT_ORIGIN], keys[CITY_ORIGIN], keys["root"], keys["city"],
              keys["sib"], root, city)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        w.root_url = await stack.enter_async_context(serve_app(tiles_app(tmp_path / "root")))
        w.city_url = await stack.enter_async_context(serve_app(tiles_app(tmp_path / "city")))
        city_record = Record.of(
            [
                Value.make(1, "NAME", "Shijiazhuang", timestamp=TS),
                Value.make(2, "CITYID_SITE", {"ledger": w.city_url}, timestamp=TS),
                Value.make(3, "CITYID_PUBKEY", str(w.city_log_key.verifier), timestamp=TS),
            ]
        )
        sib_record = Record.of([Value.make(1, "NAME", "Tangshan", timestamp=TS)])
        w.append(
            root,
            (
                Delegate(CITY, 0, w.city_admin.public_key, CITY_ORIGIN, city_record, TS),
                w.root_admin,
            ),
            (Delegate(SIBLING, 0, w.sibling_admin.public_key, None, sib_record, TS), w.root_admin),
        )
        yield w
    root.close()
    city.close()


@pytest.fixture
async def stores(redis_db: str) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    made: list[Store] = []

    async def make() -> Store:
        made.append(await Store.connect(redis_db))
        return made[-1]

    yield make
    for s in made:
        await s.close()


@pytest.fixture
async def syncs() -> AsyncIterator[list[Sync]]:
    running: list[Sync] = []
    yield running
    for s in running:
        await s.stop()


async def lookup(store: Store, text: str) -> Any:
    prefix, suffix = text.split("/")
    return await store.lookup(Identifier(Prefix.parse(prefix), suffix))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if await check():
                return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout} s")


def data_dump(url: str) -> dict[bytes, Any]:
    """Every key sync writes, by content (leases, epochs and timestamps left out)."""
    r = redis.Redis.from_url(url)
    out: dict[bytes, Any] = {}
    for key in r.scan_iter(count=1000):
        if key in (b"meta:epoch", b"meta:leader"):
            continue
        kind = r.type(key)
        if kind == b"hash":
            h = r.hgetall(key)
            h.pop(b"updated_at", None)
            out[key] = h
        elif kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = r.smembers(key)
        elif kind == b"list":  # the explorer's recent batches: when they were applied varies
            out[key] = [replace(Batch.decode(b), applied_at=0) for b in r.lrange(key, 0, -1)]
        else:
            out[key] = r.get(key)
    r.close()
    return out


def states(status: dict[str, Any]) -> dict[str, str]:
    return {log["origin"]: log["state"] for log in status["logs"]}


async def test_end_to_end_delegation_mint_update_delete(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    dept = CITY.child("02")
    dept_key = SigningKey.generate("dept")
    tpl = rec("https://water.sjz.example/meter/{suffix}")
    world.append(
        world.city,
        world.mint("HYDRANT-1", mint_suffix("A", 1, 5)),
        (MintRange(CITY, "W", 0, 100, 7, tpl, TS), world.city_admin),
        (Delegate(dept, 0, dept_key.public_key, None, rec("https://traffic.sjz.example"), TS),
         world.city_admin),
    )  # fmt: skip
    assert await sync.sync_once()

    city = await store.lookup_prefix(CITY)
    assert city is not None and city.origin == ROOT_ORIGIN and city.leaf_index == 0
    info = await store.prefix_info(CITY)
    assert (
        info is not None and info.host == CITY_ORIGIN and info.sites == {"ledger": world.city_url}
    )
    assert info.key == world.city_admin.public_key
    sib = await store.prefix_info(SIBLING)
    assert sib is not None and sib.host == ROOT_ORIGIN
    d = await store.prefix_info(dept)
    assert d is not None and d.entry.origin == CITY_ORIGIN and d.host == CITY_ORIGIN
    h = await lookup(store, f"{CITY}/HYDRANT-1")
    assert h.version == 1 and h.origin == CITY_ORIGIN and h.leaf_index == 0
    assert h.record.urls() == ["https://water.sjz.example/HYDRANT-1"]
    w5 = mint_suffix("W", 5, 7)
    e = await lookup(store, f"{CITY}/{w5}")
    assert e.record.urls() == [f"https://water.sjz.example/meter/{w5}"] and e.leaf_index == 1
    assert await lookup(store, f"{CITY}/{mint_suffix('W', 100, 7)}") is None

    world.append(
        world.city,
        (Update(Identifier(CITY, "HYDRANT-1"), 1, rec("https://water.sjz.example/v2"), TS),
         world.city_admin),
        (Update(Identifier(CITY, w5), 1, rec("https://water.sjz.example/w5"), TS),
         world.city_admin),
    )  # fmt: skip
    await sync.sync_once()
    h = await lookup(store, f"{CITY}/HYDRANT-1")
    assert (
        h.version == 2 and h.leaf_index == 3 and h.record.urls() == ["https://water.sjz.example/v2"]
    )
    e = await lookup(store, f"{CITY}/{w5}")
    assert e.version == 2 and e.record.urls() == ["https://water.sjz.example/w5"]
    # Each checkpoint applied is remembered for the explorer, newest first.
    newest, older = await store.recent_batches(CITY_ORIGIN)
    assert (newest.start, newest.end) == (3, 5) and (older.start, older.end) == (0, 3)
    assert newest.identifiers == 2 and set(newest.sample) == {f"{CITY}/HYDRANT-1", f"{CITY}/{w5}"}
    assert older.ranges == 1 and older.prefixes == 1 and older.sample[0] == f"{CITY}/HYDRANT-1"
    # A range mint is shown by its first identifier, among the examples.
    assert any(s.startswith(f"{CITY}/W") and len(s) == len(f"{CITY}/{w5}") for s in older.sample)

    world.append(
        world.city,
        (Delete(Identifier(CITY, "HYDRANT-1"), 2, TS), world.city_admin),
        (Delete(Identifier(CITY, mint_suffix("W", 6, 7)), 1, TS), world.city_admin),
    )
    await sync.sync_once()
    h = await lookup(store, f"{CITY}/HYDRANT-1")
    assert h.deleted and h.record is None and h.version == 3
    assert (await lookup(store, f"{CITY}/{mint_suffix('W', 6, 7)}")).deleted
    st = await store.status()
    assert states(st) == {ROOT_ORIGIN: "ok", CITY_ORIGIN: "ok"}
    assert {log["origin"]: log["size"] for log in st["logs"]} == {ROOT_ORIGIN: 2, CITY_ORIGIN: 7}
    assert await store.checkpoint(CITY_ORIGIN) == world.city.checkpoint_note
    assert await store.log_url(CITY_ORIGIN) == world.city_url
    m = sync.metrics()
    assert m["sync_alarms_total"] == 0 and m["sync_leader"] == 1
    assert m[f'sync_log_applied{{origin="{CITY_ORIGIN}"}}'] == 7


async def test_new_checkpoint_seen_within_a_second(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    store = await stores()
    sync = world.make_sync(store, poll_interval=0.2)
    syncs.append(sync)
    world.append(world.city, world.mint("FIRST"))
    await sync.start()
    await eventually(lambda: _present(store, f"{CITY}/FIRST"))
    for n in range(3):
        world.append(world.city, world.mint(f"LATE-{n}"))
        took = await eventually(lambda n=n: _present(store, f"{CITY}/LATE-{n}"), timeout=5)
        assert took < 1.0, took


async def _present(store: Store, text: str) -> bool:
    return await lookup(store, text) is not None


async def test_replay_is_idempotent_and_rebuilds_an_empty_redis(
    world: World, stores: Any, syncs: list[Sync], redis_db: str
) -> None:
    tpl = rec("https://water.sjz.example/meter/{suffix}")
    world.append(
        world.city,
        world.mint("P-1", "P-2", "P-3"),
        (MintRange(CITY, "W", 0, 1000, 7, tpl, TS), world.city_admin),
        (Update(Identifier(CITY, "P-1"), 1, rec("https://water.sjz.example/p1v2"), TS),
         world.city_admin),
        (Delete(Identifier(CITY, "P-2"), 1, TS), world.city_admin),
    )  # fmt: skip
    first = world.make_sync(await stores())
    await first.sync_once()
    await first.stop()
    before = data_dump(redis_db)
    assert any(k.startswith(b"i:") for k in before) and any(k.startswith(b"r:") for k in before)

    redis.Redis.from_url(redis_db).flushdb()
    second = world.make_sync(await stores())
    await second.sync_once()
    assert second.counters["sync_rebuilds_total"] == 1
    await second.stop()
    assert data_dump(redis_db) == before

    # A restart over a full Redis replays the logs into memory and writes nothing...
    store = await stores()
    third = world.make_sync(store)
    syncs.append(third)
    await third.sync_once()
    assert third.counters["sync_writes_total"] == 0 and third.counters["sync_rebuilds_total"] == 0
    assert data_dump(redis_db) == before
    # ...and knows the namespace: the next operation checks and lands.
    world.append(world.city, (Update(Identifier(CITY, "P-3"), 1, rec("https://x.example/3"), TS),
                              world.city_admin))  # fmt: skip
    await third.sync_once()
    assert (await lookup(store, f"{CITY}/P-3")).version == 2


async def test_tampered_bundle_is_refused_and_other_logs_keep_syncing(
    world: World, stores: Any, syncs: list[Sync], caplog: pytest.LogCaptureFixture
) -> None:
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    world.append(world.city, world.mint("GOOD-1"))
    await sync.sync_once()
    world.append(world.city, world.mint("EVIL-1"))
    bundle = world.tmp / "city-a" / "tile" / "entries" / "000.p" / "2"
    data = bundle.read_bytes()
    assert b"EVIL-1" in data
    bundle.write_bytes(data.replace(b"EVIL-1", b"EVIL-2"))  # same length: a well-formed bundle
    await sync.sync_once()
    assert "ALARM" in caplog.text and CITY_ORIGIN in caplog.text
    for s in ("EVIL-1", "EVIL-2"):
        assert await lookup(store, f"{CITY}/{s}") is None
    assert await lookup(store, f"{CITY}/GOOD-1") is not None  # the verified state is served
    st = await store.status()
    city = next(log for log in st["logs"] if log["origin"] == CITY_ORIGIN)
    assert city["state"] == "alarm" and "bundle-mismatch" in city["reason"] and city["size"] == 1
    assert sync.metrics()["sync_alarms_proof_total"] == 1
    # The root log keeps syncing.
    new = Delegate(ROOT.child("1303"), 0, os.urandom(32), None, rec("https://x.example"), TS)
    world.append(world.root, (new, world.root_admin))
    await sync.sync_once()
    assert await store.lookup_prefix(ROOT.child("1303")) is not None
    assert states(await store.status())[ROOT_ORIGIN] == "ok"


async def test_forged_checkpoint_and_fork_are_refused(
    world: World, stores: Any, syncs: list[Sync], redis_db: str
) -> None:
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    world.append(world.city, world.mint("C-1"))
    await sync.sync_once()
    # The root log's server now serves a checkpoint signed by an impostor key.
    impostor = SigningKey.generate(ROOT_ORIGIN)
    forged = Checkpoint(ROOT_ORIGIN, world.root.size + 5, os.urandom(32))
    (world.tmp / "root-a" / "checkpoint").write_bytes(sign_note(forged.text(), impostor))
    # The city log's server now serves another history, signed by the right key.
    other = Log.create(world.tmp / "city-b", world.city_log_key, CITY_ORIGIN)
    world.append(other, world.mint("FORK-1"), world.mint("FORK-2"), world.mint("FORK-3"))
    point(world.tmp / "city", world.tmp / "city-b")
    before = data_dump(redis_db)
    await sync.sync_once()
    st = states(await store.status())
    assert st == {ROOT_ORIGIN: "alarm", CITY_ORIGIN: "alarm"}
    reasons = {log.origin: log.reason for log in sync.logs.values()}
    assert "note-no-known-signature" in reasons[ROOT_ORIGIN]
    assert "fork" in reasons[CITY_ORIGIN]
    m = sync.metrics()
    assert m["sync_alarms_signature_total"] == 1 and m["sync_alarms_fork_total"] == 1
    after = data_dump(redis_db)
    for key in after:  # only the two logs' status fields changed
        if not key.startswith(b"l:"):
            assert after[key] == before[key], key
    assert await lookup(store, f"{CITY}/FORK-1") is None
    assert await lookup(store, f"{CITY}/C-1") is not None
    other.close()


async def test_unauthorised_operation_raises_an_alarm(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    # Appended straight to the city's log file: no registrar would accept it.
    world.append(
        world.city,
        world.mint("OK-1"),
        world.mint("SIB-1", key=world.sibling_admin),
        world.mint("OK-2"),
    )
    await sync.sync_once()
    assert await lookup(store, f"{CITY}/OK-1") is not None
    # Nothing at or after the bad entry is served, nor said not to exist: the log
    # stopped before sync caught up with it, so what it holds there is unknown.
    for suffix in ("SIB-1", "OK-2"):
        with pytest.raises(StoreError) as err:
            await lookup(store, f"{CITY}/{suffix}")
        assert err.value.rule == "log-alarm" and CITY_ORIGIN in err.value.message
    city = sync.logs[CITY_ORIGIN]
    assert city.state == "alarm" and "sibling-key at entry 1" in city.reason
    st = await store.status()
    stored = next(log for log in st["logs"] if log["origin"] == CITY_ORIGIN)
    assert stored["state"] == "alarm" and stored["applied"] == 1
    assert sync.metrics()["sync_alarms_authority_total"] == 1
    assert not sync.healthy


async def test_revoked_city_answers_tombstones_and_its_log_is_skipped(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    store = await stores()
    store.meta_ttl = 0
    sync = world.make_sync(store)
    syncs.append(sync)
    world.append(world.city, world.mint("R-1"))
    await sync.sync_once()
    world.append(world.root, (Delete(CITY.record_id, 1, TS), world.root_admin))
    world.append(world.city, world.mint("R-2"))  # the city has not heard yet
    await sync.sync_once()
    assert (await lookup(store, f"{CITY}/R-1")).deleted
    assert (await store.lookup_prefix(CITY)).deleted
    assert await lookup(store, f"{CITY}/R-2") is None
    assert sync.logs[CITY_ORIGIN].state == "ok"
    assert sync.counters["sync_ops_skipped_revoked_total"] == 1


async def test_one_leader_per_redis(world: World, stores: Any, syncs: list[Sync]) -> None:
    a = world.make_sync(await stores())
    b = world.make_sync(await stores())
    syncs += [a, b]
    assert await a.sync_once()
    assert not await b.sync_once()
    assert b.metrics()["sync_leader"] == 0
    await a.stop()
    assert await b.sync_once()


class FixedPortValkey:
    """A real Valkey on a fixed port that can come back on it at once.

    EmbeddedValkey refuses a port that still has connections in TIME_WAIT (its
    pre-check binds without SO_REUSEADDR; the server itself binds with it).
    """

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir = port, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [find_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis.from_url(self.url)
        for _ in range(500):
            with contextlib.suppress(redis.ConnectionError):
                if r.ping():
                    break
            time.sleep(0.01)
        r.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # killed: nothing is saved
            self.proc.wait()
            self.proc = None


async def test_valkey_killed_and_restarted_empty_is_rebuilt(world: World, tmp_path: Path) -> None:
    server = FixedPortValkey(free_port(), tmp_path / "valkey")
    server.start()
    store = await Store.connect(server.url, timeout=0.5)
    sync = world.make_sync(store)
    seen: list[list[str]] = []
    store.subscribe(seen.append)
    world.append(world.city, world.mint("V-1"))
    try:
        await sync.start()
        await eventually(lambda: _present(store, f"{CITY}/V-1"))
        server.stop()
        await eventually(lambda: _redis_down(store, sync))
        world.append(world.city, world.mint("V-2"))  # written while Redis is away
        server.start()  # empty: no persistence
        await eventually(lambda: _present(store, f"{CITY}/V-2"), timeout=20)
        assert await lookup(store, f"{CITY}/V-1") is not None
        assert sync.counters["sync_rebuilds_total"] == 2
        assert states(await store.status()) == {ROOT_ORIGIN: "ok", CITY_ORIGIN: "ok"}
        assert sync.metrics()["sync_redis_up"] == 1 and sync.healthy
        await eventually(lambda: _async(["*"] in seen))
    finally:
        await sync.stop()
        await store.close()
        server.stop()


async def _redis_down(store: Store, sync: Sync) -> bool:
    st = await store.status()
    return st["redis"] is False and sync.metrics()["sync_redis_up"] == 0


async def _async(value: bool) -> bool:
    return value


async def test_config_round_trip_builds_a_working_sync(
    world: World, stores: Any, syncs: list[Sync], tmp_path: Path, redis_db: str
) -> None:
    witness = SigningKey.generate("witness-1")
    cfg = ResolverConfig(
        root_log_url=world.root_url,
        root_log_key=str(world.root_log_key.verifier),
        root_prefix=str(ROOT),
        root_prefix_key=str(world.root_admin.verifier),
        log_urls={CITY_ORIGIN: world.city_url},
    )
    path = cfg.save(tmp_path)
    loaded = ResolverConfig.load(tmp_path)
    assert loaded.path == path and loaded.origin == ROOT_ORIGIN
    assert (loaded.poll_interval_ms, loaded.http_listen, loaded.log_urls) == (
        200, "127.0.0.1:8080", {CITY_ORIGIN: world.city_url},
    )  # fmt: skip
    assert loaded.root_anchor() == (ROOT, world.root_admin.public_key)
    assert ResolverConfig.from_dict(
        {"root": {"log_url": "http://x", "log_key": cfg.root_log_key, "prefix": "MA.156",
                  "prefix_key": world.root_admin.public_key.hex()}}
    ).root_anchor()[1] == world.root_admin.public_key  # fmt: skip
    with pytest.raises(ConfigError):
        ResolverConfig.from_dict({"root": {"log_url": "http://x"}})
    # A misspelt key is refused, named, with what its table knows (never silently ignored).
    text = path.read_text().replace("enabled = true", "sync = false")
    path.write_text(text.replace("[serve]", "[serve]\nprocess = 4"))
    with pytest.raises(ConfigError) as e:
        ResolverConfig.load(tmp_path)
    assert "sync.sync (known here: chunk, enabled," in e.value.message
    assert "serve.process (did you mean 'processes'?" in e.value.message
    path.write_text(text.replace("sync = false", "enabled = true"))
    world.append(world.city, world.mint("CFG-1"))
    store = await stores()
    sync = Sync.from_config(store, loaded)
    syncs.append(sync)
    assert await sync.sync_once()
    assert await lookup(store, f"{CITY}/CFG-1") is not None
    # A witness policy applies to every log: unwitnessed checkpoints are refused.
    wkey = witness.verifier.with_alg(ALG_COSIGNATURE_V1)
    (tmp_path / "witnesses.policy").write_text(f"witness w1 {wkey}\nquorum w1\n")
    loaded.witness_policy = "witnesses.policy"
    strict = Sync.from_config(store, loaded)
    syncs.append(strict)
    await sync.stop()
    redis.Redis.from_url(redis_db).flushdb()
    await strict.sync_once()
    assert strict.logs[ROOT_ORIGIN].state == "alarm"
    assert "quorum-not-met" in strict.logs[ROOT_ORIGIN].reason


# -- big batches, the leader lease, readiness ----------------------------------------------


def gated_tiles(directory: Path, gate: asyncio.Event, delay: float = 0.0) -> Any:
    """A log's tiles, with its entry bundles held until ``gate`` is set, then each sent
    ``delay`` seconds late: a slow or stalled log server, on loopback."""
    from aiohttp import web

    from ledger.http import add_tile_routes

    @web.middleware
    async def hold(request: web.Request, handler: Any) -> Any:
        if "/tile/entries/" in request.path:
            await gate.wait()
            await asyncio.sleep(delay)
        return await handler(request)

    app = web.Application(middlewares=[hold])
    add_tile_routes(app, "", directory)
    return app


async def test_a_long_apply_keeps_its_lease_and_moves_its_cursor_as_it_goes(
    world: World, stores: Any, syncs: list[Sync], caplog: pytest.LogCaptureFixture
) -> None:
    # 2,600 mints in 11 bundles, each bundle half a second late: reading what was one
    # chunk (2,048 entries) took twice the lock's lifetime. The lease is renewed apart
    # from the work (it was renewed between chunks only, and lapsed, and the chunk was
    # read again, forever), and each slice written moves the cursor.
    world.append(world.city, *(world.mint(f"M-{i}") for i in range(2600)))
    gate = asyncio.Event()
    gate.set()
    async with serve_app(gated_tiles(world.tmp / "city", gate, delay=0.5)) as slow_url:
        store = await stores()
        sync = world.make_sync(store, lock_ttl=2.0, log_urls={CITY_ORIGIN: slow_url})
        syncs.append(sync)
        await sync.start()
        r = store.redis
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            applied = int(await r.hget(f"l:{CITY_ORIGIN}", "applied") or 0)
            if not seen or applied != seen[-1]:
                seen.append(applied)
            if applied == 2600:
                break
            await asyncio.sleep(0.05)
    assert seen[-1] == 2600, seen
    assert len(seen) >= 2 and seen == sorted(seen), seen  # forward, a slice at a time
    assert sync.counters["sync_sessions_lost_total"] == 0
    assert "sync session ended" not in caplog.text
    assert await lookup(store, f"{CITY}/M-2599") is not None


async def test_lookups_under_a_log_not_yet_loaded_are_not_ready_never_absent(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    import aiohttp
    import dns.asyncquery
    import dns.message
    import dns.rcode

    from resolver.dns.answers import ZoneConfig
    from resolver.dns.server import DnsServer, start_dns
    from resolver.http import Resolver
    from resolver.server import start_http
    from resolver.store import NotReadyError

    world.append(world.city, world.mint("EARLY-1"))
    gate = asyncio.Event()  # the city's entries are held back until it is set
    async with contextlib.AsyncExitStack() as stack:
        city_url = await stack.enter_async_context(serve_app(gated_tiles(world.tmp / "city", gate)))
        store = await stores()
        store.meta_ttl = 0.05
        sync = world.make_sync(store, log_urls={CITY_ORIGIN: city_url})
        syncs.append(sync)
        await sync.start()

        async def root_ready() -> bool:
            st = await store.status()
            return any(lg["origin"] == ROOT_ORIGIN and lg["ready"] for lg in st["logs"])

        await eventually(root_ready)
        st = await store.status()
        assert not st["ready"]
        # The city is delegated (the root log is loaded) but its own log is not: whether
        # an identifier exists under it is not known yet, present or not.
        for suffix in ("EARLY-1", "NEVER-1"):
            with pytest.raises(NotReadyError):
                await lookup(store, f"{CITY}/{suffix}")
        # Under the root, whose log is loaded, a miss is final.
        assert await lookup(store, f"{ROOT}/NOTHING") is None
        assert await lookup(store, f"{SIBLING}/NOTHING") is None  # hosted in the root log

        resolver = Resolver(store)
        stack.push_async_callback(resolver.close)
        http = await start_http(resolver, "127.0.0.1", 0)
        stack.push_async_callback(http.close)
        zone = ZoneConfig.make("cityid.test", [str(ROOT)])
        listeners = await start_dns(DnsServer(store, zone), "127.0.0.1", 0)
        stack.push_async_callback(listeners.close)
        name = Identifier(CITY, "EARLY-1").dns_name("cityid.test")

        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{http.port}/{CITY}/EARLY-1"
            json_only = {"Accept": "application/json"}
            async with session.get(url, allow_redirects=False, headers=json_only) as resp:
                body = await resp.json()
                assert resp.status == 503 and resp.headers["Retry-After"]
                assert resp.headers["Cache-Control"] == "no-store"
                assert "still loading" in body["message"], body
            async with session.get(f"http://127.0.0.1:{http.port}/healthz") as resp:
                health = await resp.json()
                assert resp.status == 503 and any("still loading" in x for x in health["reasons"])
            q = dns.message.make_query(name, "TXT")
            answer = await dns.asyncquery.udp(q, "127.0.0.1", port=listeners.port, timeout=3)
            assert answer.rcode() == dns.rcode.SERVFAIL  # not NXDOMAIN: nothing cached

            gate.set()

            async def all_ready() -> bool:
                return bool((await store.status())["ready"])

            await eventually(all_ready)
            await asyncio.sleep(0.1)  # past the store's meta_ttl: it reads meta:ready again
            async with session.get(url, allow_redirects=False) as resp:
                assert resp.status == 302, await resp.text()
            never = f"http://127.0.0.1:{http.port}/{CITY}/NEVER-1"
            async with session.get(never, allow_redirects=False) as resp:
                assert resp.status == 404
            answer = await dns.asyncquery.udp(q, "127.0.0.1", port=listeners.port, timeout=3)
            assert answer.rcode() == dns.rcode.NOERROR and answer.answer
        assert await lookup(store, f"{CITY}/NEVER-1") is None


async def test_redis_in_an_older_layout_is_purged_and_rebuilt(
    world: World, stores: Any, syncs: list[Sync], redis_db: str
) -> None:
    world.append(world.city, world.mint("KEPT-1"))
    r = redis.Redis.from_url(redis_db)
    # What an older resolver left: its epoch and cursor, no layout, data in key names
    # this one would write into.
    r.set("meta:epoch", "old")
    r.hset(f"l:{CITY_ORIGIN}", mapping={"size": 1, "applied": 1, "note": b"x", "root": b"r"})
    r.hset(f"i:{CITY}:0:0", "STALE-1", b"junk")
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    assert await sync.sync_once()
    await sync.sync_once()
    assert r.get("meta:layout") == LAYOUT_VERSION.encode() and r.get("meta:epoch") != b"old"
    assert not r.hexists(f"i:{CITY}:0:0", "STALE-1")
    assert await lookup(store, f"{CITY}/KEPT-1") is not None
    assert sync.counters["sync_rebuilds_total"] == 1
    r.close()


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ([1, "URL", "javascript:alert(1)", 86400, TS], "url-scheme"),
        ([1, "url", "https://water.sjz.example/x", 86400, TS], "canonical"),  # "URL"
        ([1, "GEO", "38.0400000,114.5", 86400, TS], "canonical"),  # "38.04,114.5"
        ([1, "DESC", "bell\x07", 86400, TS], "data-charset"),
    ],
    ids=["javascript-url", "lower-case-type", "geo-not-canonical", "control-character"],
)
async def test_a_bad_record_in_a_bulk_mint_raises_an_alarm(
    world: World, stores: Any, syncs: list[Sync], value: list[Any], rule: str
) -> None:
    """Signed by the right key, but no registrar would have taken it: sync checks every
    record of a mint as the registrar does, and stores none of a leaf that has a bad one."""
    import msgpack

    from cityid.ops import sign_body

    good = [[1, "URL", "https://water.sjz.example/ok", 86400, TS]]
    body = msgpack.packb(["mint", str(CITY), [["OK-1", 0, good], ["BAD-1", 0, [value]]], TS])
    world.city.append([sign_body(body, world.city_admin)])
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    await sync.sync_once()
    city = sync.logs[CITY_ORIGIN]
    assert city.state == "alarm" and f"{rule} at entry 0" in city.reason, city.reason
    for suffix in ("OK-1", "BAD-1"):  # nothing of the leaf
        with pytest.raises(StoreError):
            await lookup(store, f"{CITY}/{suffix}")


def test_batch_examples_show_minted_identifiers_as_well_as_prefix_records() -> None:
    """A checkpoint that delegates many prefixes, then mints, names both kinds (issue 16)."""
    from resolver.sync import BATCH_SAMPLE, _add_sample

    sample: list[str] = []
    for node in range(1301, 1340):
        _add_sample(sample, f"0.NA/MA.156.{node}")
    for n in range(100):
        _add_sample(sample, f"MA.156.1301.02/{mint_suffix('W', n, 7)}")
    assert len(sample) == BATCH_SAMPLE
    assert sample[0] == "0.NA/MA.156.1301"
    assert sum(s.startswith("0.NA/") for s in sample) == 1
    assert sample[1] == f"MA.156.1301.02/{mint_suffix('W', 0, 7)}"
