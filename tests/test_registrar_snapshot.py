"""Namespace snapshots: a restart loads one and replays only the log's tail, never trusting it
over the log.

* The codec and the compact table (``cityid/snapshot.py``, ``cityid/idtable.py``) against
  models: a dict for the table; for the namespace, the same operations applied to a plain
  namespace and to one that is frozen, compacted and round-tripped through bytes at random
  points (hypothesis). Every operation must get the same answer from both, and the final
  states must be equal.
* A real registrar on real files (``registrar.core.Registrar``, and ``cityid registrar
  serve`` as a child process for the SIGKILL case): after a restart it loaded the snapshot
  and replayed exactly the entries after it, and its state equals a full replay of the log
  (``cityid.snapshot.describe``: every prefix, key, child node, range, explicit identifier
  and minted number; plus versions asked one by one). A snapshot that is corrupt,
  truncated, of a newer format, of another log, at a root or size that is not the log's,
  or made under other trust anchors is ignored with a log line, and the whole log replays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from registrar_harness import (
    HEALTH,
    TRAFFIC,
    RegistrarProcess,
    RegistrarSpec,
    make_registrar,
    new_key,
    replay,
    sign,
    submit,
)

from cityid import snapshot
from cityid.authority import Namespace, NamespaceImage, release
from cityid.errors import CityIdError
from cityid.identifiers import Identifier, Prefix, mint_suffix, parse_identifier, split_minted
from cityid.idtable import MAX_BLOCK, IdTable
from cityid.keys import SigningKey
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintItem,
    MintRange,
    Operation,
    RotateKey,
    SignedOperation,
    Update,
    now,
)
from cityid.records import Record, Value
from cityid.snapshot import Position, SnapshotError
from registrar.config import Anchor, RegistrarConfig
from registrar.core import Registrar

pytestmark = pytest.mark.timeout(240)

ORIGIN = "traffic.sjz.cityid.test/log"
T = 1_760_000_000
KEY = SigningKey.generate("snapshot-test")


def record(url: str = "https://t.example/x") -> Record:
    return Record((Value.make(1, "URL", url, timestamp=T),))


TEMPLATE = record("https://t.example/r/{suffix}")

# -- the compact table against a dict ---------------------------------------------------------

MINTED_POOL = [mint_suffix("W", n, 7) for n in range(0, 3000, 3)]


def _wrong_check(suffix: str) -> str:
    return suffix[:-1] + ("A" if suffix[-1] != "A" else "B")


def _pool_key(kind: int, n: int) -> str:
    if kind == 0:
        return f"K6-{n:05d}"
    if kind == 1:
        return MINTED_POOL[n % len(MINTED_POOL)]
    return _wrong_check(MINTED_POOL[n % len(MINTED_POOL)])  # minted shape, not minted


spans = st.lists(
    st.tuples(
        st.integers(0, 2),  # kind of suffix
        st.integers(0, 3000),  # first
        st.integers(1, 900),  # how many
        st.integers(1, 7),  # step
        st.integers(2, 2**40),  # packed version
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(spans, min_size=1, max_size=5))
def test_table_merges_agree_with_a_dict(rounds: list[list[tuple[int, int, int, int, int]]]) -> None:
    model: dict[str, int] = {}
    table = IdTable.empty()
    for spans_ in rounds:
        changes = {
            _pool_key(kind, n): packed
            for kind, first, count, step, packed in spans_
            for n in range(first, first + count * step, step)
        }
        before, before_items = table, list(table.items())
        table = table.merged(changes)
        model.update(changes)
        assert list(before.items()) == before_items  # the old table did not change
        assert len(table) == len(model)
        assert list(table.items()) == sorted(model.items())
        for suffix in [*list(model)[::7], "K6-99999", "A", "ZZZ", _wrong_check("K6-00001")]:
            assert table.get(suffix) == model.get(suffix), suffix
        assert table.fence == sorted(table.fence)
        assert all(len(b.split(b"\n")) - 2 <= MAX_BLOCK for b in table.blocks)
        numbers: dict[tuple[str, int], set[int]] = {}
        for suffix in model:
            parts = split_minted(suffix)
            if parts is not None:
                numbers.setdefault((parts[0], parts[2]), set()).add(parts[1])
        assert {lw: list(n) for lw, n in table.numbers.items()} == {
            lw: sorted(n) for lw, n in numbers.items()
        }
        for (letters, width), nums in numbers.items():
            assert table.max_number(letters, width) == max(nums)
            lo, hi = 100, 1200
            assert list(table.numbers_between(letters, width, lo, hi)) == sorted(
                n for n in nums if lo <= n < hi
            )


# -- the namespace: snapshotted or not, the same answers --------------------------------------

P = TRAFFIC
NAMED = [f"N{i}" for i in range(12)] + [f"K6-{i}" for i in range(12)]
MINTED = [mint_suffix("W", n, 7) for n in range(24)]
SHAPED = [_wrong_check(s) for s in MINTED[:8]]  # minted shape, wrong check character
DIGITS = [mint_suffix("", n, 4) for n in range(10)]
SUFFIXES = NAMED + MINTED + SHAPED + DIGITS
RANGE_LETTERS = {"W": 7, "": 4, "R": 5}

mint_sets = st.lists(st.sampled_from(SUFFIXES), min_size=1, max_size=4, unique=True)
ops = st.one_of(
    st.tuples(st.just("mint"), mint_sets),
    st.tuples(st.just("update"), st.sampled_from(SUFFIXES)),
    st.tuples(st.just("delete"), st.sampled_from(SUFFIXES)),
    st.tuples(
        st.just("range"),
        st.sampled_from(sorted(RANGE_LETTERS)),
        st.integers(0, 30),
        st.integers(1, 12),
    ),
    st.tuples(st.just("failed-txn"), st.sampled_from(SUFFIXES), st.sampled_from(SUFFIXES)),
    st.tuples(st.just("freeze")),
    st.tuples(st.just("install")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("roundtrip")),
)


def _outcome(ns: Namespace, signed: SignedOperation) -> str:
    try:
        ns.apply(signed, log=ORIGIN)
    except CityIdError as e:
        return e.rule
    return "ok"


def _failed_txn(ns: Namespace, first: SignedOperation, second: SignedOperation) -> str:
    """Two operations in one transaction where the second is refused: both undone."""
    try:
        with ns.transaction():
            ns.apply(first, log=ORIGIN)
            ns.apply(second, log=ORIGIN)
    except CityIdError as e:
        return e.rule
    return "ok"


def _probe(ns: Namespace) -> dict[str, Any]:
    versions = {s: ns.version(Identifier(P, s)) for s in SUFFIXES}
    versions |= {
        s: ns.version(Identifier(P, s))
        for letters, width in RANGE_LETTERS.items()
        for s in (mint_suffix(letters, n, width) for n in range(0, 45, 4))
    }
    nexts = {lt: ns.next_number(P, lt, w) for lt, w in RANGE_LETTERS.items()}
    return {"versions": versions, "next": nexts, "state": snapshot.describe(ns)}


def _fresh() -> Namespace:
    ns = Namespace()
    ns.add_anchor(P, KEY.public_key, ORIGIN)
    return ns


def _pos(size: int) -> Position:
    return Position.of([(str(P), KEY.public_key, ORIGIN)], [(ORIGIN, size, bytes(32))])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, max_size=30))
def test_snapshots_change_no_answer(steps: list[tuple[Any, ...]]) -> None:
    plain, snap = _fresh(), _fresh()
    pending: list[NamespaceImage] = []
    sign_ = lambda op: SignedOperation.sign(op, KEY)  # noqa: E731
    for step in steps:
        kind = step[0]
        if kind == "freeze":
            pending.append(snap.freeze())
        elif kind == "install" and pending:
            image = pending.pop(0)  # possibly after later freezes: must then change nothing
            # What install drops, nothing reads any more: emptying it changes no answer.
            release(snap.install(image, snapshot.compact(image)))
        elif kind == "compact":
            image = snap.freeze()
            release(snap.install(image, snapshot.compact(image)))
        elif kind == "roundtrip":
            snap, position = snapshot.decode(snapshot.encode(snap, _pos(len(steps))))
            assert position == _pos(len(steps))
            pending.clear()  # images of the old namespace
        elif kind in ("mint", "update", "delete", "range", "failed-txn"):
            op = _op(plain, step)
            if kind == "failed-txn":
                first, second = (sign_(o) for o in op)
                assert _failed_txn(plain, first, second) == _failed_txn(snap, first, second)
            else:
                signed = sign_(op)
                assert _outcome(plain, signed) == _outcome(snap, signed), step
    assert _probe(plain) == _probe(snap)


def _op(ns: Namespace, step: tuple[Any, ...]) -> Any:
    kind = step[0]

    def prev(s: str) -> int:
        return ns.version(Identifier(P, s))[0]

    if kind == "mint":
        return Mint(P, tuple(MintItem(s, prev(s), record()) for s in step[1]), T)
    if kind == "update":
        return Update(
            Identifier(P, step[1]), max(prev(step[1]), 1), record("https://u.example/"), T
        )
    if kind == "delete":
        return Delete(Identifier(P, step[1]), max(prev(step[1]), 1), T)
    if kind == "range":
        letters, start, count = step[1:]
        return MintRange(P, letters, start, count, RANGE_LETTERS[letters], TEMPLATE, T)
    # failed-txn: mint a (if it is free), then mint b with a stale version: refused
    a, b = step[1], step[2]
    first = Mint(P, (MintItem(a, prev(a), record()),), T)
    second = Mint(P, (MintItem(b, prev(b) + 7, record()),), T)
    return first, second


def test_an_undone_mint_leaves_no_number_behind() -> None:
    """What a failed transaction minted does not move the next free number (a snapshot
    takes the numbers as they are, so they must be exactly the identifiers')."""
    ns = _fresh()
    ns.apply(SignedOperation.sign(Mint(P, (MintItem(MINTED[3], 0, record()),), T), KEY))
    assert ns.next_number(P, "W", 7) == 4
    first = SignedOperation.sign(Mint(P, (MintItem(MINTED[20], 0, record()),), T), KEY)
    again = SignedOperation.sign(Mint(P, (MintItem(MINTED[3], 0, record()),), T), KEY)
    assert _failed_txn(ns, first, again) == "already-exists"
    assert ns.next_number(P, "W", 7) == 4
    assert ns.version(Identifier(P, MINTED[20])) == (0, False)


@pytest.mark.parametrize(
    ("damage", "rule"),
    [
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:], "snapshot-corrupt"),
        (lambda d: d[: len(d) // 2], "snapshot-corrupt"),
        (lambda d: d[:-1], "snapshot-corrupt"),
        (lambda d: b"", "snapshot-format"),
        (lambda d: d.replace(b"CITYID-NS 2\n", b"CITYID-NS 3\n", 1), "snapshot-format"),
        (lambda d: b"PK\x03\x04" + d[4:], "snapshot-format"),
    ],
    ids=["flipped-byte", "half", "last-byte-cut", "empty", "newer-format", "not-a-snapshot"],
)
def test_damaged_bytes_are_refused(damage: Callable[[bytes], bytes], rule: str) -> None:
    ns = _fresh()
    ns.apply(SignedOperation.sign(Mint(P, (MintItem("A1", 0, record()),), T), KEY))
    data = snapshot.encode(ns, _pos(1))
    with pytest.raises(SnapshotError) as e:
        snapshot.decode(damage(data))
    assert e.value.rule == rule, e.value.message


# -- a real registrar on real files -------------------------------------------------------------


def make(tmp_path: Path, *, every: int = 0, name: str = "reg") -> tuple[RegistrarSpec, SigningKey]:
    key = new_key("traffic", tmp_path / "keys")
    spec = make_registrar(tmp_path / name, TRAFFIC, ORIGIN, admin=key)
    cfg = RegistrarConfig.load(spec.directory)
    cfg.snapshot_every = every
    cfg.save()
    return spec, key


class Workload:
    """Valid operations of every kind, sent through ``Registrar.submit``: explicit mints
    (named and minted-shape, many per leaf), ranges, updates and deletes (of explicit and
    range identifiers), a delegated child with its own writes, its record updated, its key
    rotated, and a revoked child."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.n = 0
        self.child_keys: dict[Prefix, SigningKey] = {}

    async def one(self, reg: Registrar, op: Operation, key: SigningKey | None = None) -> None:
        await reg.submit([SignedOperation.sign(op, key or self.key).encode()])

    async def round(self, reg: Registrar, r: int) -> int:
        """One round of writes; returns how many leaves it appended."""
        leaves = 0
        base = self.n
        self.n += 400
        for chunk in range(2):  # 2 leaves of 150 named + 50 minted-shape identifiers
            items = [
                MintItem(f"ASSET-{base + chunk * 200 + i}", 0, record(f"https://a.example/{i}"))
                for i in range(150)
            ] + [
                MintItem(mint_suffix("C", base + chunk * 200 + i, 9), 0, record())
                for i in range(50)
            ]
            await self.one(reg, Mint(TRAFFIC, tuple(items), T))
            leaves += 1
        await self.one(reg, MintRange(TRAFFIC, "R", r * 1000, 1000, 7, TEMPLATE, T))
        in_range = Identifier(TRAFFIC, mint_suffix("R", r * 1000 + 5, 7))
        await self.one(reg, Update(in_range, 1, record("https://r.example/5"), T))
        named = Identifier(TRAFFIC, f"ASSET-{base + 3}")
        await self.one(reg, Update(named, 1, record("https://a.example/v2"), T))
        await self.one(reg, Delete(Identifier(TRAFFIC, f"ASSET-{base + 4}"), 1, T))
        await self.one(reg, Delete(Identifier(TRAFFIC, mint_suffix("R", r * 1000 + 6, 7)), 1, T))
        leaves += 5
        child = TRAFFIC.child(f"{70 + r}")
        ck = self.child_keys[child] = new_key(f"child-{r}")
        await self.one(reg, Delegate(child, 0, ck.public_key, None, record(), T))
        await self.one(reg, Mint(child, (MintItem("PUMP-1", 0, record()),), T), ck)
        await self.one(reg, Update(child.record_id, 1, record("https://c.example/"), T))
        rotated = new_key(f"child-{r}-b")
        await self.one(reg, RotateKey(child, 0, rotated.public_key, T), ck)
        self.child_keys[child] = rotated
        await self.one(reg, Mint(child, (MintItem("PUMP-2", 0, record()),), T), rotated)
        leaves += 5
        if r % 2:
            await self.one(reg, Delete(child.record_id, 2, T))
            leaves += 1
        return leaves

    def probes(self) -> list[Identifier]:
        out = [Identifier(TRAFFIC, f"ASSET-{n}") for n in range(0, self.n + 5, 7)]
        out += [Identifier(TRAFFIC, mint_suffix("C", n, 9)) for n in range(0, self.n + 5, 11)]
        out += [Identifier(TRAFFIC, mint_suffix("R", n, 7)) for n in range(0, 10_000, 97)]
        for child in self.child_keys:
            out += [child.record_id, Identifier(child, "PUMP-1"), Identifier(child, "PUMP-2")]
        return out


def assert_same_as_full_replay(reg: Registrar, spec: RegistrarSpec, work: Workload) -> None:
    full = replay(spec)  # a fresh namespace, every leaf of the log applied again
    assert snapshot.describe(reg.namespace) == snapshot.describe(full)
    for ident in work.probes():
        assert reg.version(ident) == full.version(ident), ident
    for letters, width in (("C", 9), ("R", 7), ("Q", 3)):
        assert reg.namespace.next_number(TRAFFIC, letters, width) == full.next_number(
            TRAFFIC, letters, width
        )


async def started(spec: RegistrarSpec) -> Registrar:
    reg = Registrar.open(spec.config())
    await reg.start()
    return reg


async def test_restart_loads_the_snapshot_and_replays_only_the_tail(tmp_path: Path) -> None:
    spec, key = make(tmp_path)
    work = Workload(key)
    reg = await started(spec)
    assert (reg.replayed, reg.snapshot_size) == (0, None)
    await work.round(reg, 0)
    await work.round(reg, 1)
    size = reg.log.signed_size
    await reg.aclose()  # a clean stop writes the snapshot
    assert [p.name for p in reg.snapshot_files()] == [f"namespace-{size:020d}.snap"]

    reg = await started(spec)
    assert (reg.replayed, reg.snapshot_size) == (0, size)
    assert_same_as_full_replay(reg, spec, work)
    tail = await work.round(reg, 2)
    # A crash after the log write, before any snapshot: the log is durable, and
    # nothing but a clean stop or `every` writes a snapshot.
    await reg.sequencer.aclose()
    reg.log.close()

    reg = await started(spec)
    try:
        assert (reg.replayed, reg.snapshot_size) == (tail, size)
        assert_same_as_full_replay(reg, spec, work)
        await work.round(reg, 3)  # and it goes on writing on top of the restored state
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()
    reg = await started(spec)
    try:
        assert reg.replayed == 0
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()


async def test_periodic_snapshots_are_written_while_serving(tmp_path: Path) -> None:
    spec, key = make(tmp_path, every=300)
    work = Workload(key)
    reg = await started(spec)
    try:
        for r in range(4):
            await work.round(reg, r)  # ~430 of replay cost each: a snapshot each round
            await asyncio.wait_for(reg.snapshot_settled(), 60)
        assert reg.snapshot_size is not None and reg.snapshot_size > 0
        files = reg.snapshot_files()
        assert 1 <= len(files) <= 2  # the newest and the one before it
        assert files[0].name == f"namespace-{reg.snapshot_size:020d}.snap"
        # Merged in memory too: the identifiers of the last snapshot are a compact table.
        assert reg.namespace._ids[TRAFFIC].table is not None
        assert len(reg.namespace._ids[TRAFFIC].explicit) < 1000
        assert_same_as_full_replay(reg, spec, work)
        written = reg.snapshot_size
        tail = reg.log.signed_size - written
        await reg.sequencer.aclose()  # crash: no snapshot at stop
        reg.log.close()
        reg = await started(spec)
        assert (reg.snapshot_size, reg.replayed) == (written, tail)
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()


def _encode_position(
    reg_dir: Path, spec: RegistrarSpec, change: Callable[[Position], Position]
) -> bytes:
    """A well-formed snapshot of the registrar's real state, at a position ``change`` makes."""
    files = sorted((reg_dir / "snapshot").glob("namespace-*.snap"))
    ns, pos = snapshot.decode(files[-1].read_bytes())
    return snapshot.encode(ns, change(pos))


def _at(pos: Position, **kw: Any) -> Position:
    origin, size, root = pos.logs[0]
    logs = [(kw.get("origin", origin), kw.get("size", size), kw.get("root", root))]
    return Position.of(list(pos.anchors), logs)


BAD: dict[str, Callable[[bytes, Path, RegistrarSpec], bytes]] = {
    "flipped-byte": lambda d, _, __: d[:-40] + bytes([d[-40] ^ 0x10]) + d[-39:],
    "truncated": lambda d, _, __: d[: len(d) * 2 // 3],
    "empty": lambda d, _, __: b"",
    "newer-format": lambda d, _, __: d.replace(b"CITYID-NS 2\n", b"CITYID-NS 9\n", 1),
    "other-origin": lambda _, r, s: _encode_position(r, s, lambda p: _at(p, origin="x.test/log")),
    "other-root": lambda _, r, s: _encode_position(r, s, lambda p: _at(p, root=bytes(32))),
    "beyond-the-log": lambda _, r, s: _encode_position(r, s, lambda p: _at(p, size=10**6)),
    "smaller-but-other-root": lambda _, r, s: _encode_position(
        r, s, lambda p: _at(p, size=p.logs[0][1] - 1)
    ),
}


@pytest.mark.parametrize("damage", sorted(BAD))
async def test_a_snapshot_that_does_not_match_is_ignored(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec, key = make(tmp_path)
    work = Workload(key)
    reg = await started(spec)
    await work.round(reg, 0)
    await work.round(reg, 1)
    await reg.aclose()
    [path] = reg.snapshot_files()
    bad = BAD[damage](path.read_bytes(), spec.directory, spec)
    path.write_bytes(bad)
    with caplog.at_level(logging.INFO, logger="cityid.registrar"):
        reg = await started(spec)
    try:
        assert reg.snapshot_size is None
        assert reg.replayed == reg.log.signed_size  # the whole log, again
        assert f"snapshot {path} ignored" in caplog.text
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()
    # The stop wrote a good one in its place.
    reg = await started(spec)
    try:
        assert (reg.replayed, reg.snapshot_size) == (0, reg.log.signed_size)
    finally:
        await reg.aclose()


async def test_new_trust_anchors_make_the_snapshot_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, key = make(tmp_path)
    work = Workload(key)
    reg = await started(spec)
    await work.round(reg, 0)
    await reg.aclose()
    # Another hosted prefix in registrar.toml: a replay starts from other anchors.
    health = new_key("health", tmp_path / "keys")
    cfg = RegistrarConfig.load(spec.directory)
    cfg.anchors.append(Anchor(HEALTH, health.verifier))
    cfg.save()
    with caplog.at_level(logging.INFO, logger="cityid.registrar"):
        reg = await started(spec)
    try:
        assert reg.snapshot_size is None and reg.replayed == reg.log.signed_size
        assert "trust anchors" in caplog.text
        assert reg.namespace.prefixes[HEALTH].key == health.public_key
        await reg.submit([sign(Mint(HEALTH, (MintItem("BED-1", 0, record()),), T), health)])
        assert reg.version(Identifier(HEALTH, "BED-1")) == (1, True)
    finally:
        await reg.aclose()


async def test_the_newest_bad_snapshot_falls_back_to_the_one_before(tmp_path: Path) -> None:
    spec, key = make(tmp_path)
    work = Workload(key)
    for r in range(2):
        reg = await started(spec)
        await work.round(reg, r)
        await reg.aclose()
    newest, older = reg.snapshot_files()
    older_size = int(older.name.split("-")[1].split(".")[0])
    newest.write_bytes(newest.read_bytes()[:-1])
    reg = await started(spec)
    try:
        assert reg.snapshot_size == older_size
        assert reg.replayed == reg.log.signed_size - older_size
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()


async def _post(spec: RegistrarSpec, leaves: list[bytes]) -> None:
    async with aiohttp.ClientSession() as s:
        await submit(s, spec.url, leaves)


def _mints(key: SigningKey, first: int, leaves: int) -> list[bytes]:
    ts = now()
    out = []
    for n in range(leaves):
        items = tuple(
            MintItem(f"K-{first + n * 100 + i}", 0, record(f"https://k.example/{i}"))
            for i in range(100)
        )
        out.append(sign(Mint(TRAFFIC, items, ts), key))
    return out


def test_a_crash_between_the_log_write_and_the_snapshot_write(tmp_path: Path) -> None:
    """SIGKILL the real server after acknowledged writes it has no snapshot of (and with
    the temp file of an interrupted snapshot write lying around): the next start loads the
    older snapshot and replays the rest."""
    spec, key = make(tmp_path)
    with RegistrarProcess(spec) as proc:
        proc.start()
        asyncio.run(_post(spec, _mints(key, 0, 5)))
        assert proc.stop() == 0  # clean: writes the snapshot
        first = spec.open_log().size
        assert (spec.directory / "snapshot" / f"namespace-{first:020d}.snap").exists()
        proc.start()
        asyncio.run(_post(spec, _mints(key, 10_000, 3)))
        asyncio.run(_post(spec, _mints(key, 20_000, 2)))
        proc.kill()
        out = proc.output()
    assert f"loaded the namespace snapshot at size {first}" in out, out[-2000:]
    size = spec.open_log().size
    assert size == first + 5
    # What a crash in the middle of a snapshot write leaves: a temp file, never renamed.
    tmp = spec.directory / "snapshot" / f".namespace-{size:020d}.snap.4242.tmp"
    tmp.write_bytes(b"CITYID-NS 2\n" + os.urandom(1000))
    reg = Registrar.open(spec.config())
    try:
        assert (reg.snapshot_size, reg.replayed) == (first, 5)
        work = Workload(key)
        assert_same_as_full_replay(reg, spec, work)
        for n in (0, 499, 10_000, 10_299, 20_000, 20_199):
            assert reg.version(Identifier(TRAFFIC, f"K-{n}")) == (1, True), n
        asyncio.run(reg.aclose())  # a snapshot at stop, and the temp file is swept
    finally:
        reg.log.close()
    assert not tmp.exists()
    assert reg.snapshot_files()[0].name == f"namespace-{size:020d}.snap"


async def test_deleting_the_snapshots_is_always_safe(tmp_path: Path) -> None:
    spec, key = make(tmp_path, every=200)
    work = Workload(key)
    reg = await started(spec)
    try:
        await work.round(reg, 0)
        await asyncio.wait_for(reg.snapshot_settled(), 60)
        for p in reg.snapshot_dir.iterdir():
            p.unlink()
        reg.snapshot_dir.rmdir()
        await work.round(reg, 1)  # the next snapshot recreates the directory
    finally:
        await reg.aclose()
    reg = await started(spec)
    try:
        assert reg.replayed == 0
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()
    for p in reg.snapshot_dir.iterdir():
        p.unlink()
    reg = await started(spec)
    try:
        assert reg.snapshot_size is None and reg.replayed == reg.log.signed_size
        assert_same_as_full_replay(reg, spec, work)
    finally:
        await reg.aclose()


def test_a_snapshot_write_keeps_the_event_loop_responsive(tmp_path: Path) -> None:
    """Freezing, merging and writing 100,000 identifiers while a 1 ms timer ticks: the
    merge and the file run in threads, so no tick waits long (bounded loosely: CI shares
    its CPUs; bench/registrar_bench.py --restart measures it at 10M)."""
    spec, key = make(tmp_path)

    async def run() -> tuple[float, float]:
        reg = await started(spec)
        try:
            ts = now()
            leaves = []
            for n in range(0, 100_000, 400):
                items = tuple(MintItem(mint_suffix("C", n + i, 9), 0, record()) for i in range(400))
                leaves.append(sign(Mint(TRAFFIC, items, ts), key))
            for i in range(0, len(leaves), 100):
                await reg.submit(leaves[i : i + 100], flush=True)
            worst = 0.0
            stop = asyncio.Event()

            async def tick() -> None:
                nonlocal worst
                while not stop.is_set():
                    t = time.perf_counter()
                    await asyncio.sleep(0.001)
                    worst = max(worst, time.perf_counter() - t - 0.001)

            ticker = asyncio.create_task(tick())
            t0 = time.perf_counter()
            path = await reg.write_snapshot()
            took = time.perf_counter() - t0
            stop.set()
            await ticker
            assert path is not None and path.exists()
            assert reg.namespace.version(parse_identifier(f"{TRAFFIC}/{mint_suffix('C', 7, 9)}"))
            return worst, took
        finally:
            await reg.aclose()

    worst, took = asyncio.run(run())
    assert worst < max(0.5, took / 4), (worst, took)
