"""The search index and the discovery APIs: real logs, real sync, a real Valkey, a real resolver.

The index is compared with a brute-force scan of what the logs say (a model kept by
the test as it writes them) after random mints, updates, deletes and revocations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_resolver_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from test_resolver_sync import CITY, ROOT_ORIGIN, SIBLING, TS, World

from cityid.identifiers import Identifier
from cityid.keys import SigningKey
from cityid.ops import Delegate, Delete, Mint, MintItem, Operation, Update
from cityid.records import Record, Value
from resolver import search_index
from resolver.answers import Resolver, ServeOptions
from resolver.server import start_http
from resolver.store import Store
from resolver.sync import Sync

pytestmark = pytest.mark.timeout(120)

world = test_resolver_sync.world  # the same world of logs as sync's own tests (a fixture)

WORDS = ("pump station", "water meter", "bus stop", "street light", "old oak tree", "Hydrant")
NAMES = ("A-1", "A-2", "B-1", "B-2", "C-1", "Z_9")


def record(name: str, word: str, geo: tuple[float, float] | None, box: bool) -> Record:
    values = [
        Value.make(1, "URL", f"https://{word.split()[0].lower()}.sjz.example/{name}", timestamp=TS),
        Value.make(2, "DESC", f"{word} {name}", timestamp=TS),
    ]
    if geo is not None:
        lat, lon = geo
        if box:
            data = f"{lat:.4f},{lon:.4f},{lat + 0.01:.4f},{lon + 0.01:.4f}"
            values.append(Value.make(3, "GEO_BOX", data, timestamp=TS))
        else:
            values.append(Value.make(3, "GEO", f"{lat:.4f},{lon:.4f}", timestamp=TS))
    return Record.of(values)


@dataclass
class Model:
    """What the logs say, kept by hand: the brute-force side of every comparison."""

    live: dict[str, Record] = field(default_factory=dict)  # handle -> record
    versions: dict[str, int] = field(default_factory=dict)  # handle -> version (tombstones too)
    sibling_version: int = 1
    sibling_revoked: bool = False
    sibling_record: Record | None = None

    def rows(self) -> dict[str, tuple[str, str, Record]]:
        """handle -> (prefix, scope, record) of every row a query may return."""
        out: dict[str, tuple[str, str, Record]] = {}
        for h, r in self.live.items():
            p = h.partition("/")[0]
            if not (p == str(SIBLING) and self.sibling_revoked):
                out[h] = (p, p, r)
        return out


actions = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "put", "delete", "revoke"]),
        st.sampled_from([CITY, SIBLING]),
        st.sampled_from(NAMES),
        st.sampled_from(WORDS),
        st.none() | st.tuples(st.floats(38.0, 38.1), st.floats(114.4, 114.6)),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
)


def step(world: World, model: Model, plan: list[Any]) -> None:
    """Write ``plan`` to the logs (the city's own log, the root log for its sibling)."""
    city_ops: list[tuple[Operation, SigningKey]] = []
    root_ops: list[tuple[Operation, SigningKey]] = []
    for kind, prefix, name, word, geo, box in plan:
        sib = prefix == SIBLING
        key = world.sibling_admin if sib else world.city_admin
        out = root_ops if sib else city_ops
        h = f"{prefix}/{name}"
        if kind == "revoke":
            if model.sibling_revoked:
                rec = Record.of([Value.make(1, "NAME", f"Tangshan again {word}", timestamp=TS)])
                op: Operation = Delegate(SIBLING, model.sibling_version,
                                         world.sibling_admin.public_key, None, rec, TS)  # fmt: skip
                model.sibling_record = rec
            else:
                op = Delete(SIBLING.record_id, model.sibling_version, TS)
            model.sibling_version += 1
            model.sibling_revoked = not model.sibling_revoked
            root_ops.append((op, world.root_admin))
            continue
        if sib and model.sibling_revoked:
            continue  # the registrar would refuse it
        prev = model.versions.get(h, 0)
        if kind == "delete":
            if h in model.live:
                out.append((Delete(Identifier(prefix, name), prev, TS), key))
                model.versions[h] = prev + 1
                del model.live[h]
            continue
        rec = record(name, word, geo, box)
        if h in model.live:
            out.append((Update(Identifier(prefix, name), prev, rec, TS), key))
        else:
            out.append((Mint(prefix, (MintItem(name, prev, rec),), TS), key))
        model.versions[h] = prev + 1
        model.live[h] = rec
    if root_ops:
        world.append(world.root, *root_ops)
    if city_ops:
        world.append(world.city, *city_ops)


def index_rows(path: Path) -> dict[str, bytes]:
    """Every identifier the index would return (prefix records left out), by handle."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT handle, record FROM ids WHERE prefix != '0.NA' "
            "AND scope NOT IN (SELECT prefix FROM revoked)"
        ).fetchall()
    finally:
        conn.close()
    return dict(rows)


def run_all(path: Path, args: dict[str, str], page: int = 3) -> list[str]:
    """Every hit of a query, a few at a time through its cursors."""
    conn = search_index.open_reader(str(path))
    out: list[str] = []
    cursor = ""
    try:
        for _ in range(100):
            q = search_index.parse_query(
                MultiDict({**args, "limit": str(page), **({"cursor": cursor} if cursor else {})})
            )
            hits, cursor = search_index.search(conn, q)
            out += [h.handle for h in hits]
            if not cursor:
                return out
    finally:
        conn.close()
    raise AssertionError("more pages than the data has")


QUERIES: list[dict[str, str]] = [
    {"q": "pump"},
    {"q": "water meter"},
    {"q": '"street light"'},
    {"q": "https://bus.*"},
    {"q": "*example/B-*"},
    {"q": "oak", "type": "DESC"},
    {"q": "oak", "type": "URL"},
    {"type": "GEO_BOX"},
    {"near": "38.05,114.5", "radius": "4"},
    {"bbox": "38.0,114.4,38.05,114.5"},
    {"prefix": str(CITY)},
    {"prefix": "MA.156"},
    {"q": "hydrant", "near": "38.05,114.5", "radius": "20"},
]


def brute(model: Model, world_prefixes: dict[str, tuple[str, str, Record]], args: dict[str, str]):
    q = search_index.parse_query(MultiDict({**args, "limit": "1000"}))
    rows = {**model.rows(), **world_prefixes}
    return sorted(h for h, (p, s, r) in rows.items() if search_index.matches(q, h, p, s, r))


def prefix_rows(world: World, model: Model) -> dict[str, tuple[str, str, Record]]:
    """The prefix records (0.NA/P) the index holds, as the root log says."""
    out: dict[str, tuple[str, str, Record]] = {}
    conn = sqlite3.connect(world.tmp / "index.sqlite")
    try:
        for h, scope, raw in conn.execute(
            "SELECT handle, scope, record FROM ids WHERE prefix = '0.NA' "
            "AND scope NOT IN (SELECT prefix FROM revoked)"
        ):
            out[h] = ("0.NA", scope, search_index.decode_trusted(raw))
    finally:
        conn.close()
    assert set(out) == {f"0.NA/{CITY}"} | (set() if model.sibling_revoked else {f"0.NA/{SIBLING}"})
    if model.sibling_record is not None and not model.sibling_revoked:
        assert out[f"0.NA/{SIBLING}"][2] == model.sibling_record
    return out


@pytest.fixture
async def synced(world: World, redis_db: str) -> AsyncIterator[tuple[World, Sync, Store]]:
    store = await Store.connect(redis_db)
    # A long lease: tests drive sync_once themselves, with no task renewing it between.
    sync = world.make_sync(store, index_path=str(world.tmp / "index.sqlite"), lock_ttl=600.0)
    try:
        yield world, sync, store
    finally:
        await sync.stop()
        await store.close()


@pytest.fixture
def model() -> Model:
    return Model()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=st.lists(actions, min_size=1, max_size=3))
async def test_index_equals_a_brute_force_scan_after_random_writes(
    synced: tuple[World, Sync, Store], model: Model, plans: list[list[Any]]
) -> None:
    # One world and one model for every example (hypothesis reuses a test's fixtures): the
    # logs only grow, and the index must equal the scan after each step, whatever came before.
    world, sync, _ = synced
    for plan in plans:
        step(world, model, plan)
        assert await sync.sync_once()
        path = world.tmp / "index.sqlite"
        want = {h: r.encode() for h, (_, _, r) in model.rows().items()}
        assert index_rows(path) == want
        prefixes = prefix_rows(world, model)
        for args in QUERIES:
            assert run_all(path, args) == brute(model, prefixes, args), args
        # Substring search, checked without the index's own definition.
        for word in ("pump", "METER", "oak t"):
            got = run_all(path, {"q": f'"{word}"', "type": "DESC"})
            assert got == sorted(
                h for h, (_, _, r) in model.rows().items()
                if any(word.lower() in str(v.data).lower() for v in r.values if v.type == "DESC")
            )  # fmt: skip


async def test_rebuild_from_empty(synced: tuple[World, Sync, Store], redis_db: str) -> None:
    world, sync, store = synced
    model = Model()
    puts = [("put", CITY, n, w, (38.05, 114.5), False) for n, w in zip(NAMES, WORDS, strict=True)]
    step(world, model, puts)
    step(world, model, [("delete", CITY, "A-2", "", None, False), ("revoke", SIBLING, "", "x",
                        None, False)])  # fmt: skip
    assert await sync.sync_once()
    path = world.tmp / "index.sqlite"
    before = index_rows(path)
    assert before == {h: r.encode() for h, (_, _, r) in model.rows().items()} and len(before) == 5
    await sync.stop()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    # A new sync on the same Redis (which it need not rewrite) rebuilds the index from the logs.
    again = world.make_sync(store, index_path=str(path))
    try:
        assert await again.sync_once()
        assert index_rows(path) == before
        assert search_index.cursors(sqlite3.connect(path))[ROOT_ORIGIN] == world.root.size
    finally:
        await again.stop()


# -- the HTTP APIs ---------------------------------------------------------------------------


@dataclass
class Served:
    world: World
    base: str
    http: aiohttp.ClientSession
    model: Model


@contextlib.asynccontextmanager
async def serve(store: Store, path: Path, **options: Any) -> AsyncIterator[str]:
    resolver = Resolver(store, ServeOptions(search_index=str(path), **options))
    server = await start_http(resolver, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()
        await resolver.close()


@pytest.fixture
async def served(synced: tuple[World, Sync, Store]) -> AsyncIterator[Served]:
    world, sync, store = synced
    model = Model()
    step(world, model, [
        ("put", CITY, n, w, (38.0 + i / 100, 114.5), i % 2 == 1)
        for i, (n, w) in enumerate(zip(NAMES, WORDS, strict=True))
    ])  # fmt: skip
    assert await sync.sync_once()
    async with serve(store, world.tmp / "index.sqlite") as base, aiohttp.ClientSession() as http:
        yield Served(world, base, http, model)


async def get(s: Served, path: str, **params: str) -> tuple[int, Any, Any]:
    async with s.http.get(s.base + path, params=params) as resp:
        body = await resp.read()
        try:
            data = json.loads(body)
        except ValueError:
            data = body.decode()
        return resp.status, data, resp.headers


async def test_search_api_pages_records_and_geo(served: Served) -> None:
    status, body, headers = await get(served, "/api/search", q="sjz.example", limit="4")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"
    assert [r["handle"] for r in body["results"]] == [f"{CITY}/{n}" for n in sorted(NAMES)[:4]]
    assert "values" not in body["results"][0] and body["next"]
    status, rest, _ = await get(served, "/api/search", q="sjz.example", limit="4",
                                cursor=body["next"])  # fmt: skip
    assert [r["handle"] for r in rest["results"]] == [f"{CITY}/{n}" for n in sorted(NAMES)[4:]]
    assert rest["next"] is None
    async with served.http.get(served.base + body["next_url"]) as resp:
        assert (await resp.json())["results"] == rest["results"]
    _, body, _ = await get(served, "/api/search", q="oak", records="true")
    (hit,) = body["results"]
    assert hit["handle"] == f"{CITY}/C-1"
    assert [v["type"] for v in hit["values"]] == ["URL", "DESC", "GEO"]
    _, body, _ = await get(served, "/api/search", near="38.0,114.5", radius="1.5")
    assert [r["handle"] for r in body["results"]] == [f"{CITY}/A-1", f"{CITY}/A-2"]
    _, body, _ = await get(served, "/api/search", bbox="38.035,114.49,38.06,114.52", type="GEO")
    assert [r["handle"] for r in body["results"]] == [f"{CITY}/C-1"]


async def test_handle_listing_and_prefix_summary(served: Served) -> None:
    status, body, _ = await get(served, "/api/handles", prefix=f"0.NA/{CITY}", page="1",
                                pageSize="4")  # fmt: skip
    assert status == 200
    handles = [f"{CITY}/{n}" for n in sorted(NAMES)[4:]]
    assert body == {"responseCode": 1, "prefix": str(CITY), "totalCount": "6", "page": 1,
                    "pageSize": 4, "handles": handles}  # fmt: skip
    status, body, _ = await get(served, f"/api/prefixes/{CITY}")
    assert status == 200 and body["status"] == "delegated" and body["log"] == ROOT_ORIGIN
    assert body["identifiers"] == 6 and body["log_status"]["state"] == "ok"
    assert body["extent"]["south"] == pytest.approx(38.0, abs=1e-4)
    assert body["extent"]["north"] == pytest.approx(38.06, abs=1e-4)
    status, body, _ = await get(served, "/api/prefixes/MA.156")  # no log holds its record
    assert status == 200 and body["status"] == "anchor" and "record" not in body
    assert [c["prefix"] for c in body["children"]] == [str(CITY), str(SIBLING)]
    assert body["identifiers_in_subtree"] == 6
    status, body, _ = await get(served, "/api/prefixes/MA.156.9999")
    assert status == 404 and body["rule"] == "not-found"


async def test_b2handle_reverse_lookup(served: Served) -> None:
    status, body, _ = await get(served, "/hrls/ping")
    assert status == 200 and body == "OK"
    _, body, _ = await get(served, "/hrls/handles", URL="*//water.*")
    assert body == [f"{CITY}/A-2"]
    _, body, _ = await get(served, "/hrls/handles", URL="*sjz.example*", limit="2", page="1")
    assert body == [f"{CITY}/{n}" for n in sorted(NAMES)[2:4]]
    _, body, _ = await get(served, f"/hrls/handles/{CITY}", URL="https://PUMP.sjz.example/A-1",
                           retrieverecords="true")  # fmt: skip
    assert list(body) == [f"{CITY}/A-1"] and body[f"{CITY}/A-1"][1]["type"] == "DESC"
    _, body, _ = await get(served, "/hrls/handles", URL="*sjz*", CHECKSUM="*1111111111111*")
    assert body == []


BAD = [
    ("/api/search", {"q": '"pump'}, "unbalanced-quotes"),
    ("/api/search", {"q": "***"}, "only-wildcards"),
    ("/api/search", {"q": "ab*"}, "pattern-too-short"),
    ("/api/search", {"near": "38,114", "radius": "5000"}, "radius-over-cap"),
    ("/api/search", {"near": "38,114"}, "bad-radius"),
    ("/api/search", {"near": "95,114", "radius": "1"}, "bad-near"),
    ("/api/search", {"bbox": "38,114,37,115"}, "bad-bbox"),
    ("/api/search", {"bbox": "38,114,39"}, "bad-bbox"),
    ("/api/search", {"bbox": "38,nan,39,115"}, "bad-bbox"),
    ("/api/search", {"q": "pump", "limit": "1001"}, "limit-over-cap"),
    ("/api/search", {"q": "pump", "limit": "ten"}, "bad-limit"),
    ("/api/search", {"q": "pump", "cursor": "%%%"}, "bad-cursor"),
    ("/api/search", {"prefix": "not a prefix!"}, "bad-prefix"),
    ("/api/search", {"type": "UR L"}, "bad-type"),
    ("/api/search", {}, "empty-query"),
    ("/api/search", {"q": "x" * 2000}, "query-too-long"),
    ("/api/search", {"q": "pump", "records": "yes"}, "bad-flag"),
    ("/api/search", {"near": "38," + "1" * 70, "radius": "1"}, "too-long"),
    ("/api/search", {"q": "pump", "cursor": "A" * 600}, "too-long"),
    ("/api/handles", {}, "no-prefix"),
    ("/api/handles", {"prefix": str(CITY), "pageSize": "5000"}, "limit-over-cap"),
    ("/api/handles", {"prefix": str(CITY), "page": "99999", "pageSize": "1000"}, "page-too-deep"),
    ("/hrls/handles", {"URL": "*"}, "only-wildcards"),
    ("/hrls/handles", {}, "empty-query"),
    ("/hrls/handles", {"URL": "*abc*", "retrieverecords": "1"}, "bad-flag"),
    ("/hrls/handles", {"URL": "*abc*", "limit": "0"}, "limit-over-cap"),
]


@pytest.mark.parametrize(("path", "params", "rule"), BAD, ids=[b[2] + b[0] for b in BAD])
async def test_bad_input_is_400_naming_the_rule(
    served: Served, path: str, params: dict[str, str], rule: str
) -> None:
    status, body, _ = await get(served, path, **params)
    assert status == 400 and body["rule"] == rule, body
    assert body["message"]


async def test_deadline_overrun_is_503_with_retry_after_and_counted(
    synced: tuple[World, Sync, Store],
) -> None:
    world, sync, store = synced
    step(world, Model(), [("put", CITY, "A-1", "pump station", None, False)])
    assert await sync.sync_once()
    async with (
        serve(store, world.tmp / "index.sqlite", search_deadline=0.0) as base,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(base + "/api/search", params={"q": "pump"}) as resp:
            body = await resp.json()
            assert resp.status == 503 and resp.headers["Retry-After"]
            assert body["rule"] == "search-deadline"
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
    assert "cityid_resolver_search_deadline_total 1" in text
    assert 'cityid_resolver_requests_total{route="search",status="503"} 1' in text


async def test_no_index_is_503_not_a_crash(redis_db: str, tmp_path: Path) -> None:
    store = await Store.connect(redis_db)
    try:
        async with (
            serve(store, tmp_path / "missing.sqlite") as base,
            aiohttp.ClientSession() as h,
            h.get(base + "/api/search", params={"q": "pump"}) as resp,
        ):
            assert resp.status == 503 and (await resp.json())["rule"] == "search-unavailable"
    finally:
        await store.close()


# -- pyhandle, configured only by its JSON file -----------------------------------------------

PYHANDLE_SEARCH = """
import json, sys
from pyhandle.clientcredentials import PIDClientCredentials
from pyhandle.handleclient import PyHandleClient

creds = PIDClientCredentials.load_from_JSON(sys.argv[1])
client = PyHandleClient("rest").instantiate_with_credentials(creds)
print(json.dumps([
    client.search_handle(URL="*sjz.example*"),
    client.search_handle(URL="*//water.*"),
    client.search_handle(URL="https://pump.sjz.example/A-1", prefix=sys.argv[2]),
    client.search_handle(URL="noturldoesnotexist"),
]))
"""


async def run(argv: list[str], cwd: Path | None = None) -> tuple[int, str, str]:
    """A client in a process of its own, while this loop serves it."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


def _pyhandle() -> Path:
    spec = __import__("importlib.util").util.find_spec("pyhandle")
    if spec is None or spec.origin is None:
        pytest.skip("pyhandle is not installed (pip install -e '.[test]')")
    return Path(spec.origin).parent


async def test_pyhandle_search_handle(served: Served, tmp_path: Path) -> None:
    _pyhandle()
    creds = tmp_path / "credentials.json"
    creds.write_text(json.dumps({
        "client": "rest",
        "handle_server_url": served.base,
        "username": f"300:0.NA/{CITY}",
        "password": "unused: the resolver is public",
        "reverselookup_baseuri": served.base,
    }))  # fmt: skip
    code, stdout, stderr = await run([sys.executable, "-c", PYHANDLE_SEARCH, str(creds),
                                      str(CITY)])  # fmt: skip
    assert code == 0, stderr[-3000:]
    every, water, pump, none = json.loads(stdout)
    assert every == [f"{CITY}/{n}" for n in sorted(NAMES)]
    assert water == [f"{CITY}/A-2"] and pump == [f"{CITY}/A-1"] and none == []


async def test_pyhandle_search_integration_tests(served: Served, tmp_path: Path) -> None:
    """pyhandle's own search integration tests, against this resolver, configured only by
    the JSON file they read (next to a copy of the test module, so nothing installed changes)."""
    src = _pyhandle() / "tests" / "testcases" / "handleclient_search_integration_test.py"
    cases, res = tmp_path / "testcases", tmp_path / "resources"
    cases.mkdir()
    res.mkdir()
    (cases / "search_it.py").write_text(src.read_text())
    (res / "testvalues_for_integration_tests_IGNORE.json").write_text(json.dumps({
        "handle_server_url_read": served.base,
        "url_extension_REST_API": "/api/handles/",
        "reverselookup_username": f"300:0.NA/{CITY}",
        "reverselookup_password": "unused",
        "reverselookup_baseuri": served.base,
        "reverselookup_baseuri_wrong": served.base + "/no-such-servlet",
        "reverselookup_url_extension": "/hrls/handles/",
        "handle_for_read_tests": f"{CITY}/A-1",
        "HTTPS_verify": False,
    }))  # fmt: skip
    code, _, stderr = await run([sys.executable, "-m", "unittest", "-v", "search_it"], cwd=cases)
    assert code == 0, stderr[-3000:]
    assert "Ran 7 tests" in stderr and "OK" in stderr


async def test_deletes_and_revocations_leave_the_index_within_a_second(
    synced: tuple[World, Sync, Store],
) -> None:
    world, sync, store = synced
    model = Model()
    step(world, model, [("put", CITY, "A-1", "pump station", None, False),
                        ("put", SIBLING, "B-1", "pump station", None, False)])  # fmt: skip
    await sync.start()
    async with (
        serve(store, world.tmp / "index.sqlite") as base,
        aiohttp.ClientSession() as http,
    ):

        async def hits() -> list[str] | None:
            async with http.get(base + "/api/search", params={"q": "pump"}) as resp:
                body = await resp.json()  # 503 until sync has made the index
                return [r["handle"] for r in body["results"]] if resp.status == 200 else None

        async def within(seconds: float, want: list[str]) -> None:
            t0 = time.monotonic()
            while (got := await hits()) != want:
                assert time.monotonic() - t0 < seconds, got
                await asyncio.sleep(0.02)

        await within(10.0, [f"{CITY}/A-1", f"{SIBLING}/B-1"])
        step(world, model, [("delete", CITY, "A-1", "", None, False)])
        await within(1.0, [f"{SIBLING}/B-1"])
        step(world, model, [("revoke", SIBLING, "", "x", None, False)])
        await within(1.0, [])


async def test_bench_runs_small_and_agrees_with_the_scan() -> None:
    """bench/search_bench.py at a small size: it checks every answer against a LIKE scan."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "search_bench.py"
    code, out, err = await run([sys.executable, str(bench), "--ids", "1500", "--queries", "10",
                                "--runs", "1"])  # fmt: skip
    assert code == 0, err[-3000:]
    figures = json.loads(out)["min_median_max"]
    assert figures["build_ids_per_s"][0] > 0 and figures["bytes_per_id"][0] > 0
    assert {f"{k}_{w}_p99_ms" for k in ("exact", "wildcard", "radius", "listing")
            for w in ("index", "like_scan")} <= set(figures)  # fmt: skip


async def test_an_index_built_under_another_root_is_emptied(
    synced: tuple[World, Sync, Store],
) -> None:
    world, sync, _ = synced
    step(world, Model(), [("put", CITY, "A-1", "pump station", None, False)])
    assert await sync.sync_once()
    path = world.tmp / "index.sqlite"
    assert index_rows(path)
    await sync.stop()
    other = search_index.open_writer(str(path), "another.root/log MA.156 00")
    try:
        assert search_index.size(other) == 0 and search_index.cursors(other) == {}
    finally:
        other.close()


async def test_a_failing_index_never_stops_sync(
    world: World, redis_db: str, tmp_path: Path
) -> None:
    (tmp_path / "a-directory").mkdir()
    store = await Store.connect(redis_db)
    sync = world.make_sync(store, index_path=str(tmp_path / "a-directory"))
    try:
        step(world, Model(), [("put", CITY, "A-1", "pump station", None, False)])
        assert await sync.sync_once()
        assert await test_resolver_sync.lookup(store, f"{CITY}/A-1") is not None
        assert sync.metrics()["sync_index_errors_total"] == 1
    finally:
        await sync.stop()
        await store.close()
