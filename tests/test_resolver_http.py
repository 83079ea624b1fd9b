"""The resolver's HTTP front on real sockets, over a real Valkey, in both front-end modes.

Most tests fill Redis through the store's write API (what sync does) and talk
to the server with an aiohttp client; the fast path (lean protocol for
``GET /{id}``) and aiohttp alone must answer the same. The last tests run the
whole chain: registrars on loopback, sync following their logs, the resolver
serving proofs, and ``cityid resolve --verify`` checking them in a child
process against the root key alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict
from registrar_harness import make_registrar, serve_in_process, submit

from cityid.identifiers import Prefix, mint_suffix, parse_identifier
from cityid.keys import SigningKey
from cityid.ops import Delegate, Mint, MintItem, SignedOperation, Update
from cityid.records import Record, Value
from cityid.valkey import EmbeddedValkey, free_port
from ledger.checkpoint import Checkpoint
from ledger.cosignature import cosign
from ledger.note import add_signatures, sign_note
from ledger.tlogproof import TlogProof, verify_proof
from resolver.answers import BATCH_STALL
from resolver.http import Resolver, ServeOptions
from resolver.layout import NAMED_MINT
from resolver.reply import Reply
from resolver.server import HttpServer, start_http
from resolver.store import (
    CHANNEL,
    Cursor,
    IdChange,
    MintChange,
    PrefixChange,
    RangeChange,
    RevokeChange,
    Store,
    Writer,
)
from resolver.sync import Sync

REPO = Path(__file__).resolve().parent.parent
ORIGIN = "city.test/log"
LOG_KEY = SigningKey.generate(ORIGIN)
WITNESS = SigningKey.generate("witness.test")
TS = 1_700_000_000
PFX = "MA.156.1301.02"
BUS = f"{PFX}/BUS-STOP-17"
URL1 = 'https://bus.example/stops/17?a=1&b="<x>"'
URL1_LOCATION = "https://bus.example/stops/17?a=1&b=%22%3Cx%3E%22"  # as a Location (RFC 3986)
ROOT = bytes(range(32))


def _record(*values: Value) -> bytes:
    return Record(values).encode()


def _note(size: int) -> bytes:
    text = Checkpoint(ORIGIN, size, ROOT).text()
    note = sign_note(text, LOG_KEY)
    return add_signatures(note, [cosign(text, WITNESS, TS + 5)])


async def populate(writer: Writer) -> None:
    """What sync would write for a small city department, plus its log's cursor."""
    bus = _record(
        Value.make(1, "URL", URL1, ttl=600, timestamp=TS),
        Value.make(2, "GEO", "38.04,114.51", timestamp=TS),
        Value.make(3, "DESC", "Stop 17 <b>north</b> & 'west'", ttl=3600, timestamp=TS),
        Value.make(4, "EMAIL", "ops@bus.example", timestamp=TS),
        Value.make(5, "DESC.EN", "Bus stop", timestamp=TS),
    )
    changes = [
        IdChange(PFX, "BUS-STOP-17", 3, False, ORIGIN, 7, bus),
        IdChange(PFX, "NO-URL", 1, False, ORIGIN, 8,
                 _record(Value.make(1, "DESC", "plain", timestamp=TS))),
        IdChange(PFX, "GONE", 2, True, ORIGIN, 9, None),
        IdChange(PFX, "IRI", 1, False, ORIGIN, 6,
                 _record(Value.make(1, "URL", "https://例子.测试/路径?q=值", timestamp=TS))),
        RangeChange(PFX, "A", 7, 0, 1000,
                    _record(Value.make(1, "URL", "https://assets.example/{suffix}", timestamp=TS)),
                    ORIGIN, 10),
        PrefixChange(PFX, 1, False, ORIGIN, 2,
                     _record(Value.make(1, "NAME", "Traffic management", timestamp=TS)),
                     bytes(32), ORIGIN),
    ]  # fmt: skip
    cursor = Cursor(
        ORIGIN, 11, ROOT, _note(11), 11, "http://127.0.0.1:9/log", str(LOG_KEY.verifier)
    )
    await writer.apply(changes, cursor)
    await writer.mark_ready(ORIGIN)  # caught up with this checkpoint, as sync says
    await writer.set_ready()  # and with every log: a miss is final


async def wait_subscribed(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        for _ in range(200):
            (_, n), *_ = await r.pubsub_numsub(CHANNEL)
            if n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the resolver never subscribed to invalidations")
    finally:
        await r.aclose()


@dataclass
class Served:
    base: str
    store: Store
    writer: Writer
    resolver: Resolver
    server: HttpServer
    session: aiohttp.ClientSession

    async def get(self, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
        async with self.session.get(self.base + path, headers=headers, allow_redirects=False) as r:
            return r.status, CIMultiDict(r.headers), await r.read()

    async def json(self, path: str) -> tuple[int, dict[str, object]]:
        status, _, body = await self.get(path, Accept="application/json")
        return status, json.loads(body)


async def _serve(url: str, fast: bool, **opts: object) -> AsyncIterator[Served]:
    store = await Store.connect(url)
    writer = store.writer()
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    await populate(writer)
    resolver = Resolver(store, ServeOptions(fast_path=fast, **opts))  # type: ignore[arg-type]
    server = await start_http(resolver, "127.0.0.1", 0)
    await wait_subscribed(url)
    async with aiohttp.ClientSession() as session:
        try:
            yield Served(
                f"http://127.0.0.1:{server.port}", store, writer, resolver, server, session
            )
        finally:
            await server.close()
            await resolver.close()
            await store.close()


@pytest.fixture(params=[True, False], ids=["fastpath", "aiohttp"])
async def served(request: pytest.FixtureRequest, redis_db: str) -> AsyncIterator[Served]:
    async for s in _serve(redis_db, request.param):
        yield s


# -- GET /{id} ------------------------------------------------------------------------------


async def test_redirect_is_302_to_the_first_url(served: Served) -> None:
    for path in (f"/{BUS}", f"/{BUS.lower()}", f"/{BUS}"):  # the last one from the cache
        status, h, body = await served.get(path)
        assert status == 302
        assert h["Location"] == URL1_LOCATION
        assert len(body) < 300 and b"&lt;x&gt;" in body and b"<x>" not in body
        assert h["Cache-Control"] == "max-age=600"  # the smallest TTL of the values
        assert h["ETag"] == '"v3-r"'
        assert h["Access-Control-Allow-Origin"] == "*"
        assert h["Vary"] == "Accept"
    # A browser scanning a code is redirected too; ranges render their template.
    status, h, _ = await served.get(f"/{BUS}", Accept="text/html,application/xhtml+xml,*/*;q=0.8")
    assert (status, h["Location"]) == (302, URL1_LOCATION)
    minted = mint_suffix("A", 5, 7)
    status, h, _ = await served.get(f"/{PFX}/{minted}")
    assert (status, h["Location"]) == (302, f"https://assets.example/{minted}")
    # An IRI in a record goes out as a URI: IDNA host, UTF-8 percent-escapes.
    status, h, _ = await served.get(f"/{PFX}/IRI")
    assert (status, h["Location"]) == (
        302,
        "https://xn--fsqu00a.xn--0zwm56d/%E8%B7%AF%E5%BE%84?q=%E5%80%BC",
    )


async def test_json_by_accept_and_the_landing_page(served: Served) -> None:
    status, body = await served.json(f"/{BUS}")
    assert status == 200 and body["responseCode"] == 1 and body["handle"] == BUS
    values = body["values"]
    assert isinstance(values, list) and [v["index"] for v in values] == [1, 2, 3, 4, 5]
    assert values[0]["data"] == {"format": "string", "value": URL1}
    assert values[0]["timestamp"] == "2023-11-14T22:13:20Z" and values[0]["ttl"] == 600

    status, h, page = await served.get(f"/{BUS}?noredirect", Accept="text/html")
    assert status == 200 and h["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in h["Content-Security-Policy"]
    text = page.decode()
    assert "Stop 17 &lt;b&gt;north&lt;/b&gt; &amp; &#x27;west&#x27;" in text
    assert "<b>north" not in text and '"<x>"' not in text
    assert "<svg" in text and "qrline" in text  # the QR code, inline
    assert (
        ORIGIN in text and "<dd>7</dd>" in text and "<dd class=size>11</dd>" in text
    )  # log, leaf, size
    assert base64.b64encode(ROOT).decode() in text
    assert "witness.test" in text and "verified" in text
    # Nothing is loaded from elsewhere: no scripts, stylesheets, images or frames.
    assert not re.search(r"<(script|link|img|iframe|object)\b|\bsrc=", text)
    # Without a URL value the page is the answer; JSON if asked, even with noredirect.
    status, h, page = await served.get(f"/{PFX}/NO-URL")
    assert status == 200 and b"plain" in page
    status, body = await served.json(f"/{BUS}?noredirect")
    assert status == 200 and body["responseCode"] == 1


async def test_not_found_bad_and_deleted(served: Served) -> None:
    asked = "ma.156.1301.02/nobody-here"
    status, body = await served.json(f"/{asked}")
    assert status == 404 and body["handle"] == asked and body["responseCode"] == 100
    status, h, page = await served.get(f"/{asked}", Accept="text/html")
    assert status == 404 and b"not registered" in page and h["Content-Type"].startswith("text/html")

    status, body = await served.json("/MA.156..1301/X")
    assert status == 400 and body["rule"] == "empty-node" and body["responseCode"] == 102
    status, _, page = await served.get("/MA.156/BAD*SUFFIX")
    assert status == 400 and b"suffix-charset" in page

    # A minted-looking suffix with a wrong check character is a typo, not an unknown thing.
    good = mint_suffix("A", 5, 7)
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    status, body = await served.json(f"/{PFX}/{bad}")
    assert status == 400 and body["rule"] == "check-character"
    assert repr(good[-1]) in str(body["message"])

    status, body = await served.json(f"/{PFX}/GONE")
    assert status == 410 and body["deleted"] is True and body["version"] == 2
    assert body["responseCode"] == 100 and body["proof"] == f"/api/proofs/{PFX}/GONE"
    status, _, page = await served.get(f"/{PFX}/GONE")
    assert status == 410 and b"deleted" in page


async def test_head_etag_304_cors_and_read_only(served: Served) -> None:
    async with served.session.head(served.base + f"/{BUS}", allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == URL1_LOCATION
        assert int(r.headers["Content-Length"]) > 0 and await r.read() == b""
    for path, accept in ((f"/{BUS}", "*/*"), (f"/{BUS}", "application/json"),
                         (f"/api/handles/{BUS}", "*/*")):  # fmt: skip
        _, h, _ = await served.get(path, Accept=accept)
        status, h2, body = await served.get(path, Accept=accept, **{"If-None-Match": h["ETag"]})
        assert status == 304 and body == b"" and h2["ETag"] == h["ETag"]
        assert h2["Access-Control-Allow-Origin"] == "*"
        status, _, _ = await served.get(path, Accept=accept, **{"If-None-Match": '"v2-r"'})
        assert status in (200, 302)

    hdrs = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    async with served.session.options(served.base + f"/{BUS}", headers=hdrs) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "GET" in r.headers["Access-Control-Allow-Methods"]
    for method in ("PUT", "DELETE", "POST"):
        for path in (f"/{BUS}", f"/api/handles/{BUS}"):
            async with served.session.request(
                method, served.base + path, data=b"{}", allow_redirects=False
            ) as r:
                assert r.status == 405, (method, path)
                assert "GET" in r.headers["Allow"] and "Location" not in r.headers


# -- the Handle REST API ------------------------------------------------------------------------


async def test_handle_api_filters_and_options(served: Served) -> None:
    status, body = await served.json(f"/api/handles/{BUS}")
    assert status == 200 and body["responseCode"] == 1 and len(body["values"]) == 5  # type: ignore[arg-type]

    async def types(query: str) -> list[str]:
        s, b = await served.json(f"/api/handles/{BUS}?{query}")
        assert s == 200 and b["responseCode"] == 1, b
        return [v["type"] for v in b["values"]]  # type: ignore[attr-defined]

    assert await types("type=URL") == ["URL"]
    assert await types("type=url&type=EMAIL") == ["URL", "EMAIL"]
    assert await types("type=DESC.") == ["DESC.EN"]  # trailing '.': the sub-types
    assert await types("index=1&index=3") == ["URL", "DESC"]
    assert await types("type=GEO&index=4") == ["GEO", "EMAIL"]
    status, body = await served.json(f"/api/handles/{BUS}?type=NOPE")
    assert status == 200 and body["responseCode"] == 200 and body["values"] == []

    status, h, raw = await served.get(f"/api/handles/{BUS}?pretty")
    assert status == 200 and raw.startswith(b'{\n  "responseCode": 1')
    status, h, raw = await served.get(f"/api/handles/{BUS}?callback=app.onAnswer&type=URL")
    assert status == 200 and h["Content-Type"].startswith("application/javascript")
    assert raw.startswith(b"/**/app.onAnswer({") and raw.endswith(b");")
    for bad in ("alert(1)", "a;b", "x" * 70, "1abc", "a..b"):
        status, body = await served.json(f"/api/handles/{BUS}?callback={bad}")
        assert status == 400 and body["rule"] == "callback", bad
    status, body = await served.json(f"/api/handles/{BUS}?index=one")
    assert status == 400 and body["rule"] == "index"

    asked = "ma.156.1301.02/NOT-THERE"
    status, body = await served.json(f"/api/handles/{asked}")
    assert status == 404 and body["handle"] == asked and body["responseCode"] == 100
    status, body = await served.json(f"/api/handles/0.NA/{PFX}")
    assert status == 200 and body["handle"] == f"0.NA/{PFX}"
    assert body["values"][0]["data"]["value"] == "Traffic management"  # type: ignore[index]
    status, body = await served.json(f"/api/handles/{BUS}?auth")
    assert status == 200 and body["responseCode"] == 1


# -- freshness, metrics, health ------------------------------------------------------------------


async def test_an_update_is_visible_within_a_second(served: Served) -> None:
    for _ in range(3):  # cached
        assert (await served.get(f"/{BUS}"))[1]["Location"] == URL1_LOCATION
    new_url = "https://bus.example/stops/17-moved"
    record = _record(Value.make(1, "URL", new_url, timestamp=TS + 60))
    t0 = time.monotonic()
    await served.writer.apply([IdChange(PFX, "BUS-STOP-17", 4, False, ORIGIN, 12, record)])
    while True:
        _, h, _ = await served.get(f"/{BUS}")
        if h.get("Location") == new_url:
            break
        assert time.monotonic() - t0 < 1.0, "the update was not visible within 1 s"
        await asyncio.sleep(0.01)
    assert h["ETag"] == '"v4-r"'


async def _within_a_second(served: Served, path: str, status: int) -> CIMultiDict[str]:
    """Ask for ``path`` until it answers ``status``; fail after a second."""
    t0 = time.monotonic()
    while True:
        got, h, _ = await served.get(path)
        if got == status:
            return h
        assert time.monotonic() - t0 < 1.0, f"{path} still answered {got} after 1 s"
        await asyncio.sleep(0.01)


async def test_a_revocation_reaches_every_cached_answer_under_the_prefix(served: Served) -> None:
    assert (await served.get(f"/{BUS}"))[0] == 302  # cached, in each representation
    assert (await served.json(f"/api/handles/{BUS}"))[0] == 200
    assert (await served.json(f"/api/handles/0.NA/{PFX}"))[0] == 200
    await served.writer.apply([RevokeChange(PFX, True)])  # published as "P/*"
    await _within_a_second(served, f"/{BUS}", 410)
    status, body = await served.json(f"/api/handles/{BUS}")  # Handle's 404 for the tombstone
    assert status == 404 and body["deleted"] is True and body["responseCode"] == 100
    assert (await served.json(f"/api/handles/0.NA/{PFX}"))[0] == 404  # P's own record too
    await served.writer.apply([RevokeChange(PFX, False)])
    assert (await _within_a_second(served, f"/{BUS}", 302))["Location"] == URL1_LOCATION


async def test_a_large_mint_clears_cached_not_found_answers_and_nothing_else(
    served: Served,
) -> None:
    new = [f"NEW-{i:03d}" for i in range(NAMED_MINT + 1)]  # announced as "P/+"
    assert (await served.get(f"/{PFX}/{new[0]}"))[0] == 404  # cached for negative_ttl (5 s)
    assert (await served.get(f"/{BUS}"))[0] == 302
    record = _record(Value.make(1, "URL", "https://new.example/0", timestamp=TS))
    await served.writer.apply([MintChange(PFX, ORIGIN, 13, [(s, 1, record) for s in new])])
    h = await _within_a_second(served, f"/{PFX}/{new[0]}", 302)
    assert h["Location"] == "https://new.example/0"
    # What exists under the prefix was not dropped: still answered from the cache.
    lookups = served.resolver.metrics.counter("store_lookups")
    assert (await served.get(f"/{BUS}"))[0] == 302
    assert served.resolver.metrics.counter("store_lookups") == lookups


async def test_misses_of_one_moment_share_a_store_round_trip(served: Served) -> None:
    """Fifty connections ask for fifty identifiers no process has cached, all at once."""
    names = [f"LAMP-{i:03d}" for i in range(50)]
    await served.writer.apply(
        [
            IdChange(
                PFX,
                n,
                1,
                False,
                ORIGIN,
                20 + i,
                _record(Value.make(1, "URL", f"https://lamps.example/{n}", timestamp=TS)),
            )
            for i, n in enumerate(names)
        ]
    )
    port = int(served.base.rpartition(":")[2])
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in names]
    before = served.store.metrics()
    for (_, writer), n in zip(conns, names, strict=True):
        writer.write(f"GET /{PFX}/{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    heads = []
    for reader, writer in conns:
        heads.append(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10))
        writer.close()
    after = served.store.metrics()
    for head, n in zip(heads, names, strict=True):
        assert head.startswith(b"HTTP/1.1 302 ")
        assert f"\r\nLocation: https://lamps.example/{n}\r\n".encode() in head
    assert after["lookups_total"] - before.get("lookups_total", 0) == len(names)
    trips = after["round_trips_total"] - before.get("round_trips_total", 0)
    assert trips <= 10, f"{trips} round trips for {len(names)} lookups"


async def test_a_stuck_round_trip_holds_the_next_batch_back_only_briefly() -> None:
    """Redis stops answering: requests queued behind the batch in flight go out after
    BATCH_STALL, not after the store's timeout, and every request is answered (503)."""
    received: list[tuple[float, bytes]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):  # a server that reads and never answers
            received.append((time.monotonic(), data))
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = await Store.connect(f"redis://127.0.0.1:{port}/0", timeout=0.5)
    resolver = Resolver(store)
    try:
        replies: list[Reply] = []
        resolver.submit(f"{PFX}/FIRST", "redirect", replies.append)
        while not any(b"FIRST" in d for _, d in received):
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        resolver.submit(f"{PFX}/SECOND", "redirect", replies.append)
        deadline = t0 + 5
        while not any(b"SECOND" in d for _, d in received) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        sent = next(t for t, d in received if b"SECOND" in d)
        assert sent - t0 < BATCH_STALL + 0.2 < 0.5  # the store's timeout is 0.5 s
        while len(replies) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [r.status for r in replies] == [503, 503]
        assert all(("Retry-After", "2") in r.headers for r in replies)
    finally:
        await resolver.close()
        await store.close()
        server.close()


async def test_metrics_and_healthz(served: Served) -> None:
    for _ in range(3):
        await served.get(f"/{BUS}")
    await served.get("/MA.156/NOT-HERE")
    await served.get("/bad")
    await served.json(f"/api/handles/{BUS}")
    status, h, body = await served.get("/metrics")
    assert status == 200 and h["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    counts = dict(re.findall(r"^(cityid_\S+) (\d+)$", text, re.M))
    assert int(counts['cityid_resolver_requests_total{route="resolve",status="302"}']) == 3
    assert int(counts['cityid_resolver_requests_total{route="resolve",status="404"}']) == 1
    assert int(counts['cityid_resolver_requests_total{route="resolve",status="400"}']) == 1
    assert int(counts['cityid_resolver_requests_total{route="handles",status="200"}']) == 1
    assert int(counts["cityid_resolver_cache_hits_total"]) >= 2
    assert int(counts["cityid_resolver_store_lookups_total"]) >= 2
    assert counts[f'cityid_sync_log_size{{origin="{ORIGIN}"}}'] == "11"
    assert counts[f'cityid_sync_log_state{{origin="{ORIGIN}",state="ok"}}'] == "1"
    assert counts["cityid_sync_redis_up"] == "1"
    status, body = await served.json("/healthz")
    assert status == 200 and body["status"] == "ok" and body["redis"] is True


async def test_healthz_degraded_without_redis_and_recovered(tmp_path: Path) -> None:
    server = EmbeddedValkey()
    server.start()
    port = server.port
    try:
        async for s in _serve(server.url, True, cache_ttl=0.3, negative_ttl=0.3):
            assert (await s.get(f"/{BUS}"))[0] == 302  # cached now
            server.stop()
            await asyncio.sleep(0.4)  # past the cache TTL: the slot is stale
            status, body = await s.json("/healthz")
            assert status == 503 and body["status"] == "degraded"
            assert any("redis unreachable" in r for r in body["reasons"])  # type: ignore[union-attr]
            status, h, _ = await s.get(f"/{BUS}")
            assert (status, h["Location"]) == (302, URL1_LOCATION)  # stale, not failed
            status, body = await s.json(f"/{PFX}/NEVER-SEEN")
            assert status == 503 and body["responseCode"] == 3
            assert s.resolver.metrics.counter("cache_stale") >= 1

            server = EmbeddedValkey(port=port)
            server.start()
            deadline = time.monotonic() + 10
            while (await s.json("/healthz"))[0] != 200:
                assert time.monotonic() < deadline, "healthz did not recover"
                await asyncio.sleep(0.05)
            # Redis came back empty: the answers follow it (the subscriber said "*").
            # Written as sync would after a loss: by a new writer, whose origin ids start
            # over (the old one's are in no meta:origins any more).
            writer = s.store.writer()
            await writer.prepare()
            await populate(writer)
            status, _, _ = await s.get(f"/{PFX}/NO-URL")
            assert status == 200
    finally:
        server.stop()


# -- the whole chain: logs, sync, proofs, offline verification -------------------------------


async def test_proofs_verify_offline_through_a_delegated_city(
    tmp_path: Path, redis_db: str
) -> None:
    root_admin = SigningKey.generate("root-admin")
    city_admin = SigningKey.generate("city-admin")
    root = make_registrar(tmp_path / "root", "MA.156", "root.test/log", admin=root_admin)
    city = make_registrar(tmp_path / "city", "MA.156.1301", "sjz.test/log", admin=city_admin)
    city_prefix = Prefix.parse("MA.156.1301")
    lamp = Record((Value.make(1, "URL", "https://lamps.example/1", timestamp=TS),
                   Value.make(2, "DESC", "Lamp 1", timestamp=TS)))  # fmt: skip
    async with (
        serve_in_process(root) as r_run,
        serve_in_process(city) as c_run,
        aiohttp.ClientSession() as http,
    ):
        deleg = Delegate(city_prefix, 0, city_admin.public_key, city.origin, Record((
            Value.make(1, "NAME", "Shijiazhuang", timestamp=TS),
            Value.make(2, "HS_SITE", {"ledger": city.log_url}, timestamp=TS),
            Value.make(3, "HS_PUBKEY", str(city.vkey), timestamp=TS),
        )), TS)  # fmt: skip
        await submit(http, r_run.url, [SignedOperation.sign(deleg, root_admin).encode()])
        mint = Mint(city_prefix, (MintItem("LAMP-1", 0, lamp),), TS)
        await submit(http, c_run.url, [SignedOperation.sign(mint, city_admin).encode()])
        moved = Record((Value.make(1, "URL", "https://lamps.example/1b", timestamp=TS + 1),))
        update = Update(parse_identifier("MA.156.1301/LAMP-1"), 1, moved, TS + 1)
        await submit(http, c_run.url, [SignedOperation.sign(update, city_admin).encode()])

        store = await Store.connect(redis_db)
        sync = Sync(store, root.log_url, root.vkey, (root.prefix, root_admin.public_key),
                    poll_interval=0.05)  # fmt: skip
        try:
            for _ in range(20):
                await sync.sync_once()
                st = sync.status()
                if len(st["logs"]) == 2 and all(
                    lg["state"] == "ok" and lg["applied"] == lg["size"] for lg in st["logs"]
                ):
                    break
            resolver = Resolver(store, ServeOptions())
            server = await start_http(resolver, "127.0.0.1", 0)
            base = f"http://127.0.0.1:{server.port}"
            try:
                async with http.get(f"{base}/MA.156.1301/LAMP-1", allow_redirects=False) as resp:
                    assert resp.headers["Location"] == "https://lamps.example/1b"
                async with http.get(f"{base}/api/proofs/MA.156.1301/LAMP-1") as resp:
                    assert resp.status == 200 and resp.content_type == "text/plain"
                    data = await resp.read()
                proof = TlogProof.parse(data)
                assert proof.index == 1 and proof.extra is not None  # the update, leaf 1
                assert verify_proof(proof, city.vkey, proof.extra).size == 2
                async with http.get(f"{base}/MA.156.1301/LAMP-1?noredirect") as resp:
                    page = await resp.text()
                assert "sjz.test/log" in page and "verified" in page

                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "cityid.cli", "resolve", "ma.156.1301/lamp-1",
                    "--resolver", base, "--verify", "--root-key", str(root.vkey),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                text = out.decode()
                assert proc.returncode == 0, text + err.decode()
                assert "leaf 1 of log sjz.test/log" in text
                assert "from the delegation of MA.156.1301" in text
                assert "exactly those leaf 1 sets" in text
                assert "is the key delegated to MA.156.1301" in text
                assert "verified offline" in text

                # A wrong root key: the city log's key cannot be traced to it.
                other = SigningKey.generate("root.test/log").verifier
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "cityid.cli", "resolve", "MA.156.1301/LAMP-1",
                    "--resolver", base, "--verify", "--root-key", str(other),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                )  # fmt: skip
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 1 and b"rule:" in err, out + err
            finally:
                await server.close()
                await resolver.close()
        finally:
            await sync.stop()
            await store.close()


# -- the server: worker processes on one port, shared metrics, clean stop ------------------------


async def test_serve_workers_share_port_and_metrics_and_stop_on_sigterm(redis_db: str) -> None:
    store = await Store.connect(redis_db)
    writer = store.writer()
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    await populate(writer)
    await store.close()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cityid.cli", "resolver", "serve", "--redis", redis_db,
        "--listen", f"127.0.0.1:{port}", "--workers", "2",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.1)
        # Many connections: SO_REUSEPORT spreads them over both workers.
        n = 0
        for _ in range(40):
            async with aiohttp.ClientSession() as s:
                for _ in range(5):
                    async with s.get(f"{base}/{BUS}", allow_redirects=False) as r:
                        assert r.status == 302 and r.headers["Location"] == URL1_LOCATION
                        n += 1
        async with aiohttp.ClientSession() as s, s.get(f"{base}/metrics") as r:
            text = await r.text()
        assert "cityid_resolver_workers 2" in text
        got = re.search(r'requests_total\{route="resolve",status="302"\} (\d+)', text)
        assert got is not None and int(got.group(1)) == n  # every worker's row, summed
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        assert time.monotonic() - t0 < 15
        assert b"stopping" in out and b"Traceback" not in out
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
