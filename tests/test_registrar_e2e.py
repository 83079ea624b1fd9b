"""Three registrars on loopback: root, city, and a department with its own log.

The national root (``MA.156``) delegates Shijiazhuang (``MA.156.1301``) to the
city's key and log; the city delegates traffic (``.02``) and urban management
(``.01``) to department keys on its own registrar, and health (``.05``) to a
third registrar with its own log. Everything goes over HTTP to real servers;
every acknowledged operation is proven in its log, every refusal leaves the
log's checkpoint byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from registrar_harness import (
    CITY,
    HEALTH,
    ROOT,
    TRAFFIC,
    URBAN,
    RegistrarSpec,
    assert_refused,
    audit,
    checkpoint_bytes,
    cli,
    forge,
    logged_leaf,
    make_registrar,
    new_key,
    post_ops,
    prove_receipts,
    replay,
    serve_in_process,
    sign,
    submit,
    version,
)

from cityid.errors import AuthorityError, ConflictError, NotFoundError, SignatureError
from cityid.identifiers import Identifier, Prefix, mint_suffix, parse_minted
from cityid.keys import SigningKey
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintItem,
    MintRange,
    RotateKey,
    SignedOperation,
    Update,
    now,
)
from cityid.records import Record, Value

pytestmark = pytest.mark.timeout(120)

ROOT_ORIGIN = "root.cityid.test/log"
CITY_ORIGIN = "sjz.cityid.test/log"
HEALTH_ORIGIN = "health.sjz.cityid.test/log"
RANGE_COUNT = 10_000


def rec(ts: int, *pairs: tuple[str, object]) -> Record:
    return Record(tuple(Value.make(i + 1, t, d, timestamp=ts) for i, (t, d) in enumerate(pairs)))


def asset(ts: int, n: int) -> Record:
    return rec(ts, ("URL", f"https://bus.sjz.example/stop/{n}"), ("GEO", "38.0428,114.5149"))


@dataclass
class World:
    session: aiohttp.ClientSession
    root: RegistrarSpec
    city: RegistrarSpec
    health: RegistrarSpec
    root_key: SigningKey
    city_key: SigningKey
    traffic: SigningKey
    urban: SigningKey
    health_key: SigningKey
    ts: int

    async def ok(self, spec: RegistrarSpec, *leaves: bytes) -> dict[str, object]:
        """Submit, and prove every receipt against the checkpoint it came with."""
        body = await submit(self.session, spec.url, leaves)
        await prove_receipts(self.session, spec, leaves, body)
        return body


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    ts = now()
    keys = tmp_path / "keys"
    root_key, city_key = new_key("root-admin", keys), new_key("sjz-admin", keys)
    traffic, urban = new_key("sjz-traffic", keys), new_key("sjz-urban", keys)
    health_key = new_key("sjz-health", keys)
    root = make_registrar(tmp_path / "root", ROOT, ROOT_ORIGIN, admin=root_key)
    # A city registrar is anchored at the key its parent delegates to.
    city = make_registrar(tmp_path / "city", CITY, CITY_ORIGIN, admin=city_key)
    health = make_registrar(tmp_path / "health", HEALTH, HEALTH_ORIGIN, admin=health_key)
    async with (
        serve_in_process(root),
        serve_in_process(city),
        serve_in_process(health),
        aiohttp.ClientSession() as session,
    ):
        w = World(session, root, city, health, root_key, city_key, traffic, urban, health_key, ts)
        site = rec(ts, ("NAME", "Shijiazhuang"), ("CITYID_SITE", {"registrar": city.url}))
        await w.ok(
            root, sign(Delegate(CITY, 0, city_key.public_key, CITY_ORIGIN, site, ts), root_key)
        )
        dept = rec(ts, ("NAME", "Health"), ("CITYID_SITE", {"registrar": health.url}))
        await w.ok(
            city,
            sign(
                Delegate(TRAFFIC, 0, traffic.public_key, None, rec(ts, ("NAME", "T")), ts), city_key
            ),
            sign(Delegate(URBAN, 0, urban.public_key, None, rec(ts, ("NAME", "U")), ts), city_key),
            sign(Delegate(HEALTH, 0, health_key.public_key, HEALTH_ORIGIN, dept, ts), city_key),
        )
        yield w


async def test_delegation_chain_and_ten_thousand_mints(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        s = w.session
        # The delegations are where they belong.
        assert await version(s, w.root.url, CITY.record_id) == (1, True)
        for p in (TRAFFIC, URBAN, HEALTH):
            assert await version(s, w.city.url, p.record_id) == (1, True)
        leaf = logged_leaf(w.root, 0)
        d = SignedOperation.decode(leaf).op
        assert isinstance(d, Delegate)
        assert (d.origin, d.key) == (CITY_ORIGIN, w.city_key.public_key)
        assert d.record.sites() == {"registrar": w.city.url}

        # The traffic key mints 10,000 identifiers as one range: one leaf.
        template = rec(w.ts, ("URL", "https://bus.sjz.example/asset/{suffix}"))
        rng = MintRange(TRAFFIC, "W", 0, RANGE_COUNT, 7, template, w.ts)
        range_leaf = sign(rng, w.traffic)
        body = await w.ok(w.city, range_leaf)
        index = body["receipts"][0]["index"]
        assert body["receipts"][0] == {"index": index, "kind": "mint-range", "target": str(TRAFFIC)}
        # The one proven leaf covers every identifier of the range.
        logged = SignedOperation.decode(logged_leaf(w.city, index))
        assert logged.encode() == range_leaf
        op = logged.op
        assert isinstance(op, MintRange)
        suffixes = op.suffixes()
        assert len(set(suffixes)) == RANGE_COUNT
        for suffix in suffixes:
            m = parse_minted(suffix)
            assert op.contains(m.letters, m.number, m.width), suffix
        beyond = parse_minted(mint_suffix("W", RANGE_COUNT, 7))
        assert not op.contains(beyond.letters, beyond.number, beyond.width)
        for i in (0, 1, 4999, RANGE_COUNT - 1):
            assert await version(s, w.city.url, Identifier(TRAFFIC, rng.suffix(i))) == (1, True)
        assert await version(
            s, w.city.url, Identifier(TRAFFIC, mint_suffix("W", RANGE_COUNT, 7))
        ) == (
            0,
            False,
        )
        assert (
            await s.get(f"{w.city.url}/api/next/{TRAFFIC}", params={"letters": "W", "width": "7"})
        ).status == 200

        # Explicit mints, one per leaf and several in one leaf.
        one = sign(Mint(TRAFFIC, (MintItem("BUS-STOP-17", 0, asset(w.ts, 17)),), w.ts), w.traffic)
        many = sign(
            Mint(
                TRAFFIC, tuple(MintItem(f"LIGHT-{n}", 0, asset(w.ts, n)) for n in range(50)), w.ts
            ),
            w.traffic,
        )
        body = await w.ok(w.city, one, many)
        assert [r["kind"] for r in body["receipts"]] == ["mint", "mint"]
        assert await version(s, w.city.url, f"{TRAFFIC}/BUS-STOP-17") == (1, True)
        assert await version(s, w.city.url, f"{TRAFFIC}/LIGHT-49") == (1, True)
        # An update and a delete of range members are explicit versions over the range.
        upd = sign(Update(Identifier(TRAFFIC, rng.suffix(7)), 1, asset(w.ts, 7), w.ts), w.traffic)
        dele = sign(Delete(Identifier(TRAFFIC, rng.suffix(8)), 1, w.ts), w.traffic)
        await w.ok(w.city, upd, dele)
        assert await version(s, w.city.url, Identifier(TRAFFIC, rng.suffix(7))) == (2, True)
        assert await version(s, w.city.url, Identifier(TRAFFIC, rng.suffix(8))) == (2, False)

        # Health is hosted by the third registrar, with its own log.
        hmint = sign(Mint(HEALTH, (MintItem("CLINIC-1", 0, asset(w.ts, 1)),), w.ts), w.health_key)
        await w.ok(w.health, hmint)
        assert await version(s, w.health.url, f"{HEALTH}/CLINIC-1") == (1, True)
        # ... and not by the city's log, though the city delegated it.
        await assert_refused(s, w.city.url, [hmint], rule="wrong-log", exc=AuthorityError)

        # Every log replays from its own leaves and passes the auditor and the CLI.
        for spec in (w.root, w.city, w.health):
            replay(spec)
            assert audit(spec).size == spec.open_log().size
            res = cli(
                "ledger", "verify", str(spec.log_dir), "--key", str(spec.directory / "log.vkey")
            )
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith(f"ok: {spec.origin} size "), res.stdout


async def test_refusals_leave_the_ledger_unchanged(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        s, url, ts = w.session, w.city.url, w.ts
        good = sign(Mint(TRAFFIC, (MintItem("SIGNAL-1", 0, asset(ts, 1)),), ts), w.traffic)
        await w.ok(w.city, good)
        rng = sign(MintRange(TRAFFIC, "W", 0, 1000, 7, asset(ts, 0), ts), w.traffic)
        await w.ok(w.city, rng)

        # A sibling department's key cannot write under traffic.
        sib = sign(Mint(TRAFFIC, (MintItem("SIGNAL-2", 0, asset(ts, 2)),), ts), w.urban)
        r = await assert_refused(
            s, url, [sib], rule="sibling-key", exc=AuthorityError, signer=w.urban
        )
        assert str(URBAN) in r.body["message"] and str(TRAFFIC) in r.body["message"]
        sib_upd = sign(Update(Identifier(TRAFFIC, "SIGNAL-1"), 1, asset(ts, 3), ts), w.urban)
        await assert_refused(
            s, url, [sib_upd], rule="sibling-key", exc=AuthorityError, signer=w.urban
        )

        # A forged client signature: one flipped byte in the leaf.
        forged = forge(sign(Mint(TRAFFIC, (MintItem("SIGNAL-3", 0, asset(ts, 3)),), ts), w.traffic))
        await assert_refused(
            s, url, [forged], rule="forged-signature", exc=SignatureError, signer=w.traffic
        )
        await assert_refused(s, url, [forge(good)], rule="forged-signature", exc=SignatureError)

        # Replays: the same leaves again.
        await assert_refused(s, url, [good], rule="already-exists", exc=ConflictError)
        await assert_refused(s, url, [rng], rule="already-exists", exc=ConflictError)
        upd = sign(Update(Identifier(TRAFFIC, "SIGNAL-1"), 1, asset(ts, 9), ts), w.traffic)
        await w.ok(w.city, upd)
        await assert_refused(s, url, [upd], rule="stale-version", exc=ConflictError)
        dlg = sign(Delegate(TRAFFIC, 0, w.traffic.public_key, None, Record(()), ts), w.city_key)
        await assert_refused(s, url, [dlg], rule="stale-version", exc=ConflictError)

        # A node delegating a sibling of its own, which only their parent may: traffic
        # delegates .03...
        child = sign(
            Delegate(CITY.child("03"), 0, w.urban.public_key, None, Record(()), ts), w.traffic
        )
        await assert_refused(
            s, url, [child], rule="sibling-node", exc=AuthorityError, signer=w.traffic
        )
        # ... and the city delegates another city on the root's registrar.
        other = Prefix.parse("MA.156.1302")
        child2 = sign(Delegate(other, 0, w.city_key.public_key, None, Record(()), ts), w.city_key)
        await assert_refused(
            s, w.root.url, [child2], rule="sibling-node", exc=AuthorityError, signer=w.city_key
        )
        # A child acting for its parent: traffic rotates its parent's key.
        rot = sign(RotateKey(CITY, 1, w.traffic.public_key, ts), w.traffic)
        await assert_refused(s, url, [rot], rule="child-key", exc=AuthorityError, signer=w.traffic)

        # A key that holds nothing; a prefix never delegated.
        stranger = SigningKey.generate("stranger")
        strange = sign(Mint(TRAFFIC, (MintItem("SIGNAL-4", 0, asset(ts, 4)),), ts), stranger)
        await assert_refused(
            s, url, [strange], rule="wrong-key", exc=AuthorityError, signer=stranger
        )
        nowhere = sign(Mint(CITY.child("09"), (MintItem("X", 0, asset(ts, 4)),), ts), w.traffic)
        await assert_refused(s, url, [nowhere], rule="prefix-not-delegated", exc=NotFoundError)

        # Nothing refused reached the log: it replays to exactly the accepted state.
        ns = replay(w.city)
        assert ns.version(Identifier(TRAFFIC, "SIGNAL-1")) == (2, True)
        assert ns.version(Identifier(TRAFFIC, "SIGNAL-2")) == (0, False)
        assert ns.version(Identifier(TRAFFIC, "SIGNAL-3")) == (0, False)
        assert audit(w.city).size == 3 + 2 + 1


async def test_a_request_is_all_or_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        s, url, ts = w.session, w.city.url, w.ts
        await w.ok(w.city, sign(Mint(TRAFFIC, (MintItem("OLD", 0, asset(ts, 0)),), ts), w.traffic))
        ok_ops = [
            sign(Mint(TRAFFIC, (MintItem("A-1", 0, asset(ts, 1)),), ts), w.traffic),
            sign(MintRange(TRAFFIC, "Q", 0, 500, 5, asset(ts, 0), ts), w.traffic),
            sign(Update(Identifier(TRAFFIC, "OLD"), 1, asset(ts, 2), ts), w.traffic),
            sign(Mint(TRAFFIC, (MintItem("A-2", 0, asset(ts, 2)),), ts), w.traffic),
        ]
        probes = [
            f"{TRAFFIC}/A-1",
            f"{TRAFFIC}/A-2",
            f"{TRAFFIC}/OLD",
            f"{TRAFFIC}/{mint_suffix('Q', 0, 5)}",
        ]
        before = [await version(s, url, p) for p in probes]
        a3 = Mint(TRAFFIC, (MintItem("A-3", 0, asset(ts, 3)),), ts)
        stale = Update(Identifier(TRAFFIC, "OLD"), 1, asset(ts, 4), ts)
        bad_last = [
            (sign(a3, w.urban), "sibling-key", AuthorityError),
            (forge(sign(a3, w.traffic)), "forged-signature", SignatureError),
            (ok_ops[0], "already-exists", ConflictError),  # the request's own first op, again
            (sign(stale, w.traffic), "stale-version", ConflictError),
        ]
        for bad, rule, exc in bad_last:
            r = await assert_refused(s, url, [*ok_ops, bad], rule=rule, exc=exc)
            assert r.body["message"].startswith(f"operation {len(ok_ops)}: "), r.body
            assert [await version(s, url, p) for p in probes] == before
        # Without the bad one, the same request goes in whole, contiguously.
        body = await w.ok(w.city, *ok_ops)
        assert [r["kind"] for r in body["receipts"]] == ["mint", "mint-range", "update", "mint"]
        assert [await version(s, url, p) for p in probes] == [
            (1, True),
            (1, True),
            (2, True),
            (1, True),
        ]
        # A request with nothing in it, or a body that is not leaves, logs nothing either.
        cp = await checkpoint_bytes(s, url)
        status, body = await post_ops(s, url, [])
        assert (status, body["rule"]) == (400, "empty")
        async with s.post(
            f"{url}/api/ops", data=b"\xc1", headers={"Content-Type": "application/msgpack"}
        ) as r:
            assert r.status == 400
        async with s.post(f"{url}/api/ops", json=["x"]) as r:
            assert r.status == 400 and (await r.json())["rule"] == "content-type"
        assert await checkpoint_bytes(s, url) == cp
        replay(w.city)
        audit(w.city)
