"""Authority: who may do what, checked against the namespace state.

The world: a root registrar anchored at MA.156 (root key, root log); the city MA.156.1301
delegated to a city key with its own log; departments MA.156.1301.01 (urban management)
and .02 (traffic) delegated on the city's log. Every refusal must leave the state as it was.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import pytest

from cityid.authority import Namespace
from cityid.errors import AuthorityError, CityIdError, ConflictError, NotFoundError
from cityid.identifiers import Prefix, mint_suffix, parse_identifier
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
    key_fingerprint,
)
from cityid.records import Record, Value

T = 1_700_000_000
ROOT_LOG = "root.cityid.test/log"
CITY_LOG = "shijiazhuang.cityid.test/log"
ROOT = Prefix.parse("MA.156")
CITY = Prefix.parse("MA.156.1301")
DEPT1 = Prefix.parse("MA.156.1301.01")
DEPT2 = Prefix.parse("MA.156.1301.02")


def key(name: str) -> SigningKey:
    return SigningKey(name, hashlib.sha256(name.encode()).digest())


def fp(k: SigningKey) -> str:
    return key_fingerprint(k.public_key)


def record(url: str = "https://sjz.example/") -> Record:
    return Record.of([Value.make(1, "URL", url, 3600, T)])


def signed(op: Operation, k: SigningKey) -> SignedOperation:
    # Through the leaf bytes, as a resolver reads them.
    return SignedOperation.decode(SignedOperation.sign(op, k).encode())


def mint(prefix: Prefix, *suffixes: str, prev: int = 0) -> Mint:
    return Mint(prefix, tuple(MintItem(s, prev, record()) for s in suffixes), T)


@dataclass
class World:
    ns: Namespace
    root: SigningKey
    city: SigningKey
    dept1: SigningKey
    dept2: SigningKey

    def do(self, op: Operation, k: SigningKey, log: str | None) -> SignedOperation:
        s = signed(op, k)
        self.ns.apply(s, log=log)
        return s


@pytest.fixture
def world() -> World:
    w = World(Namespace(), key("root"), key("city"), key("dept1"), key("dept2"))
    w.ns.add_anchor(ROOT, w.root.public_key, ROOT_LOG)
    w.do(Delegate(CITY, 0, w.city.public_key, CITY_LOG, record(), T), w.root, ROOT_LOG)
    w.do(Delegate(DEPT1, 0, w.dept1.public_key, None, record(), T), w.city, CITY_LOG)
    w.do(Delegate(DEPT2, 0, w.dept2.public_key, None, record(), T), w.city, CITY_LOG)
    w.do(mint(DEPT1, "M1", "M2"), w.dept1, CITY_LOG)
    w.do(mint(DEPT2, "S1"), w.dept2, CITY_LOG)
    w.do(mint(CITY, "X1"), w.city, CITY_LOG)
    w.do(MintRange(CITY, "W", 0, 100, 7, record(), T), w.city, CITY_LOG)
    return w


PROBES = [
    "0.NA/MA.156",
    "0.NA/MA.156.1301",
    "0.NA/MA.156.1301.01",
    "0.NA/MA.156.1301.02",
    "0.NA/MA.156.1301.03",
    "MA.156.1301.01/M1",
    "MA.156.1301.01/M2",
    "MA.156.1301.01/M3",
    "MA.156.1301.02/S1",
    "MA.156.1301/X1",
    "MA.156.1301/01",
    f"MA.156.1301/{mint_suffix('W', 5, 7)}",
    f"MA.156.1301/{mint_suffix('W', 500, 7)}",
]


def snapshot(ns: Namespace) -> Any:
    """Everything the state holds, normalised (empty defaultdict entries do not count)."""
    prefixes = {
        p: (st.key, st.version, st.host, st.record, frozenset(st.old_keys), st.revoked)
        for p, st in ns.prefixes.items()
    }
    ids = {
        p: (dict(i.explicit), list(i.ranges)) for p, i in ns._ids.items() if i.explicit or i.ranges
    }
    children = {p: set(c) for p, c in ns._children.items() if c}
    versions = {x: ns.version(parse_identifier(x)) for x in PROBES}
    return copy.deepcopy((prefixes, ids, children, versions))


def refused(
    w: World, op: Operation, k: SigningKey, log: str | None, exc: type[CityIdError], rule: str
) -> str:
    """Apply must raise ``exc`` with ``rule``, leave the state unchanged; return the message."""
    s = signed(op, k)
    before = snapshot(w.ns)
    with pytest.raises(exc) as e:
        w.ns.apply(s, log=log)
    assert e.value.rule == rule, e.value.message
    assert snapshot(w.ns) == before
    with pytest.raises(exc):  # check alone says the same
        w.ns.check(s, log=log)
    assert snapshot(w.ns) == before
    return e.value.message


def test_world_is_as_described(world: World) -> None:
    ns = world.ns
    assert ns.prefixes[CITY].host == CITY_LOG
    assert ns.prefixes[DEPT1].host == CITY_LOG  # "on the same log"
    assert ns.prefixes[ROOT].host == ROOT_LOG
    assert ns.holder_of(world.dept1.public_key) == [DEPT1]
    assert ns.version(parse_identifier("0.NA/MA.156.1301")) == (1, True)
    assert ns.version(parse_identifier("MA.156.1301.01/M1")) == (1, True)
    assert ns.version(parse_identifier("MA.156.1301.01/M3")) == (0, False)
    assert ns.version(parse_identifier(f"MA.156.1301/{mint_suffix('W', 99, 7)}")) == (1, True)
    assert ns.version(parse_identifier(f"MA.156.1301/{mint_suffix('W', 100, 7)}")) == (0, False)


# -- keys -------------------------------------------------------------------------------


def test_sibling_key_is_refused(world: World) -> None:
    msg = refused(world, mint(DEPT2, "S2"), world.dept1, CITY_LOG, AuthorityError, "sibling-key")
    assert fp(world.dept1) in msg and fp(world.dept2) in msg
    assert "MA.156.1301.01" in msg and "MA.156.1301.02" in msg
    msg = refused(
        world,
        Update(parse_identifier("MA.156.1301.02/S1"), 1, record("https://evil.example/"), T),
        world.dept1,
        CITY_LOG,
        AuthorityError,
        "sibling-key",
    )
    assert fp(world.dept1) in msg and fp(world.dept2) in msg


@pytest.mark.parametrize("what", ["delegate", "update", "delete"])
def test_a_department_acting_on_a_sibling_node_is_refused_as_sibling_node(
    world: World, what: str
) -> None:
    # Department .01 delegates a new sibling .03, or changes .02's delegation: only
    # their parent, the city, may. (It was labelled child-key, which is about ancestors.)
    sibling = parse_identifier("0.NA/MA.156.1301.02")
    ops: dict[str, Operation] = {
        "delegate": Delegate(CITY.child("03"), 0, world.dept1.public_key, None, record(), T),
        "update": Update(sibling, 1, record("https://x.example/"), T),
        "delete": Delete(sibling, 1, T),
    }
    msg = refused(world, ops[what], world.dept1, CITY_LOG, AuthorityError, "sibling-node")
    assert fp(world.dept1) in msg and "MA.156.1301.01" in msg  # the key and what it holds
    assert fp(world.city) in msg and "MA.156.1301, its parent" in msg  # the key that may


@pytest.mark.parametrize("what", ["delegate", "update", "delete", "mint"])
def test_child_key_acting_on_its_parent_is_refused(world: World, what: str) -> None:
    ops: dict[str, tuple[Operation, str]] = {
        "delegate": (
            Delegate(CITY, 1, world.dept1.public_key, CITY_LOG, record(), T),
            ROOT_LOG,
        ),
        "update": (
            Update(parse_identifier("0.NA/MA.156.1301"), 1, record("https://x.example/"), T),
            ROOT_LOG,
        ),
        "delete": (Delete(parse_identifier("0.NA/MA.156.1301"), 1, T), ROOT_LOG),
        "mint": (mint(CITY, "Y1"), CITY_LOG),
    }
    op, log = ops[what]
    msg = refused(world, op, world.dept1, log, AuthorityError, "child-key")
    assert fp(world.dept1) in msg
    assert "MA.156.1301.01" in msg  # what the key holds
    owner = world.root if what != "mint" else world.city
    assert fp(owner) in msg  # the key that may


def test_city_key_cannot_change_its_own_delegation(world: World) -> None:
    msg = refused(
        world,
        Update(parse_identifier("0.NA/MA.156.1301"), 1, record("https://x.example/"), T),
        world.city,
        ROOT_LOG,
        AuthorityError,
        "child-key",
    )
    assert fp(world.city) in msg and fp(world.root) in msg


def test_parent_key_cannot_write_in_a_delegated_child(world: World) -> None:
    msg = refused(world, mint(DEPT1, "M9"), world.city, CITY_LOG, AuthorityError, "wrong-key")
    assert fp(world.city) in msg and fp(world.dept1) in msg


def test_unknown_key_is_refused(world: World) -> None:
    stranger = key("stranger")
    msg = refused(world, mint(DEPT1, "M9"), stranger, CITY_LOG, AuthorityError, "wrong-key")
    assert fp(stranger) in msg and "holds no prefix" in msg


def test_rotated_out_key_is_refused(world: World) -> None:
    new_city = key("city-2026")
    world.do(RotateKey(CITY, 0, new_city.public_key, T), world.city, CITY_LOG)
    # A rotation counts on its own: the delegation's version is the parent's business.
    assert world.ns.version(parse_identifier("0.NA/MA.156.1301")) == (1, True)
    assert world.ns.key_version(CITY) == 1
    msg = refused(
        world,
        Delegate(CITY.child("03"), 0, key("dept3").public_key, None, record(), T),
        world.city,
        CITY_LOG,
        AuthorityError,
        "rotated-out-key",
    )
    assert fp(world.city) in msg and fp(new_city) in msg
    refused(world, mint(CITY, "Y1"), world.city, CITY_LOG, AuthorityError, "rotated-out-key")
    # The new key works.
    world.do(mint(CITY, "Y1"), new_city, CITY_LOG)


def test_redelegation_to_a_new_key_rotates_the_old_one_out(world: World) -> None:
    new_dept1 = key("dept1-new")
    world.do(Delegate(DEPT1, 1, new_dept1.public_key, None, record(), T), world.city, CITY_LOG)
    refused(world, mint(DEPT1, "M9"), world.dept1, CITY_LOG, AuthorityError, "rotated-out-key")
    world.do(mint(DEPT1, "M9"), new_dept1, CITY_LOG)


# -- versions ---------------------------------------------------------------------------


def test_replayed_update_is_stale(world: World) -> None:
    op = Update(parse_identifier("MA.156.1301.01/M1"), 1, record("https://v2.example/"), T)
    leaf = SignedOperation.sign(op, world.dept1).encode()
    world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    assert world.ns.version(parse_identifier("MA.156.1301.01/M1")) == (2, True)
    before = snapshot(world.ns)
    with pytest.raises(ConflictError) as e:
        world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    assert e.value.rule == "stale-version"
    assert "MA.156.1301.01/M1" in e.value.message
    assert "version 2" in e.value.message and "version 1" in e.value.message
    assert snapshot(world.ns) == before


def test_replayed_delegation_is_stale(world: World) -> None:
    op = Delegate(CITY.child("03"), 0, key("dept3").public_key, None, record(), T)
    leaf = SignedOperation.sign(op, world.city).encode()
    world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    before = snapshot(world.ns)
    with pytest.raises(ConflictError) as e:
        world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    assert e.value.rule == "stale-version"
    assert "0.NA/MA.156.1301.03" in e.value.message
    assert snapshot(world.ns) == before


@pytest.mark.parametrize(
    ("build", "exc", "rule"),
    [
        (lambda w: (mint(DEPT1, "M3"), w.dept1), ConflictError, "already-exists"),
        (
            lambda w: (MintRange(DEPT1, "Q", 0, 10, 3, record(), T), w.dept1),
            ConflictError,
            "already-exists",
        ),
        (
            lambda w: (Delete(parse_identifier("MA.156.1301.01/M1"), 1, T), w.dept1),
            NotFoundError,
            "deleted",
        ),
        (
            lambda w: (RotateKey(DEPT1, 0, key("d1b").public_key, T), w.dept1),
            AuthorityError,
            "rotated-out-key",
        ),
    ],
    ids=["mint", "mint-range", "delete", "rotate"],
)
def test_every_replay_is_refused(world: World, build: Any, exc: type, rule: str) -> None:
    op, k = build(world)
    leaf = SignedOperation.sign(op, k).encode()
    world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    before = snapshot(world.ns)
    with pytest.raises(exc) as e:
        world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    assert e.value.rule == rule
    assert snapshot(world.ns) == before


@pytest.mark.parametrize("prev", [0, 1, 3, 99])
def test_stale_update_is_refused(world: World, prev: int) -> None:
    ident = parse_identifier("MA.156.1301.01/M1")
    world.do(Update(ident, 1, record("https://v2.example/"), T), world.dept1, CITY_LOG)
    if prev == 0:
        with pytest.raises(CityIdError):  # prev 0 is not even a valid update
            Update.from_body(["update", str(ident), 0, [], T])
        return
    msg = refused(
        world,
        Update(ident, prev, record("https://v3.example/"), T),
        world.dept1,
        CITY_LOG,
        ConflictError,
        "stale-version",
    )
    assert f"version {prev}" in msg and "version 2" in msg


def test_stale_delegation_update_is_refused(world: World) -> None:
    msg = refused(
        world,
        Update(parse_identifier("0.NA/MA.156.1301.01"), 2, record(), T),
        world.city,
        CITY_LOG,
        ConflictError,
        "stale-version",
    )
    assert "0.NA/MA.156.1301.01" in msg


def test_stale_mint_is_refused(world: World) -> None:
    world.do(Delete(parse_identifier("MA.156.1301.01/M2"), 1, T), world.dept1, CITY_LOG)
    refused(world, mint(DEPT1, "M2"), world.dept1, CITY_LOG, ConflictError, "stale-version")
    world.do(mint(DEPT1, "M2", prev=2), world.dept1, CITY_LOG)
    assert world.ns.version(parse_identifier("MA.156.1301.01/M2")) == (3, True)


# -- logs -------------------------------------------------------------------------------


def test_op_from_the_wrong_log_is_refused(world: World) -> None:
    msg = refused(world, mint(CITY, "Y1"), world.city, ROOT_LOG, AuthorityError, "wrong-log")
    assert ROOT_LOG in msg and CITY_LOG in msg
    msg = refused(
        world,
        Delegate(ROOT.child("1302"), 0, key("tangshan").public_key, "ts.example/log", record(), T),
        world.root,
        CITY_LOG,
        AuthorityError,
        "wrong-log",
    )
    assert ROOT_LOG in msg and CITY_LOG in msg
    refused(world, mint(DEPT1, "M9"), world.dept1, ROOT_LOG, AuthorityError, "wrong-log")
    refused(
        world,
        Update(parse_identifier("0.NA/MA.156.1301"), 1, record(), T),
        world.root,
        CITY_LOG,
        AuthorityError,
        "wrong-log",
    )


# -- names ------------------------------------------------------------------------------


def test_mint_of_a_delegated_node_is_refused(world: World) -> None:
    msg = refused(world, mint(CITY, "01"), world.city, CITY_LOG, AuthorityError, "suffix-is-node")
    assert "MA.156.1301.01" in msg


def test_delegation_of_an_existing_suffix_is_refused(world: World) -> None:
    msg = refused(
        world,
        Delegate(CITY.child("X1"), 0, key("x1").public_key, None, record(), T),
        world.city,
        CITY_LOG,
        AuthorityError,
        "suffix-is-node",
    )
    assert "MA.156.1301/X1" in msg


def test_delegation_of_a_suffix_in_a_range_is_refused(world: World) -> None:
    node = mint_suffix("W", 42, 7)
    refused(
        world,
        Delegate(CITY.child(node), 0, key("w").public_key, None, record(), T),
        world.city,
        CITY_LOG,
        AuthorityError,
        "suffix-is-node",
    )


def test_range_over_a_delegated_node_is_refused(world: World) -> None:
    node = mint_suffix("Z", 7, 2)
    world.do(
        Delegate(CITY.child(node), 0, key("z").public_key, None, record(), T), world.city, CITY_LOG
    )
    refused(
        world,
        MintRange(CITY, "Z", 0, 50, 2, record(), T),
        world.city,
        CITY_LOG,
        AuthorityError,
        "suffix-is-node",
    )
    world.do(MintRange(CITY, "Z", 8, 50, 2, record(), T), world.city, CITY_LOG)


@pytest.mark.parametrize(
    ("start", "count"),
    [(0, 100), (50, 100), (99, 1), (0, 1), (10, 10)],
)
def test_overlapping_ranges_are_refused(world: World, start: int, count: int) -> None:
    msg = refused(
        world,
        MintRange(CITY, "W", start, count, 7, record(), T),
        world.city,
        CITY_LOG,
        ConflictError,
        "already-exists",
    )
    assert mint_suffix("W", 0, 7) in msg  # names the range it overlaps


def test_adjacent_and_other_ranges_are_fine(world: World) -> None:
    world.do(MintRange(CITY, "W", 100, 100, 7, record(), T), world.city, CITY_LOG)
    world.do(MintRange(CITY, "W", 0, 100, 8, record(), T), world.city, CITY_LOG)  # other width
    world.do(MintRange(CITY, "V", 0, 100, 7, record(), T), world.city, CITY_LOG)  # other letters


def test_range_over_an_explicit_identifier_is_refused(world: World) -> None:
    s = mint_suffix("K", 5, 3)
    world.do(mint(CITY, s), world.city, CITY_LOG)
    msg = refused(
        world,
        MintRange(CITY, "K", 0, 10, 3, record(), T),
        world.city,
        CITY_LOG,
        ConflictError,
        "already-exists",
    )
    assert s in msg
    refused(
        world,
        mint(CITY, mint_suffix("W", 5, 7)),
        world.city,
        CITY_LOG,
        ConflictError,
        "already-exists",
    )


def test_update_of_unknown_id_is_refused(world: World) -> None:
    msg = refused(
        world,
        Update(parse_identifier("MA.156.1301.01/NOPE"), 1, record(), T),
        world.dept1,
        CITY_LOG,
        NotFoundError,
        "not-found",
    )
    assert "MA.156.1301.01/NOPE" in msg
    refused(
        world,
        Update(parse_identifier(f"MA.156.1301/{mint_suffix('W', 100, 7)}"), 1, record(), T),
        world.city,
        CITY_LOG,
        NotFoundError,
        "not-found",
    )
    refused(
        world,
        Delete(parse_identifier("MA.156.1301.01/NOPE"), 1, T),
        world.dept1,
        CITY_LOG,
        NotFoundError,
        "not-found",
    )


def test_ops_under_an_undelegated_prefix_are_refused(world: World) -> None:
    refused(
        world,
        mint(CITY.child("09"), "A"),
        world.city,
        CITY_LOG,
        NotFoundError,
        "prefix-not-delegated",
    )
    refused(
        world,
        Delegate(Prefix.parse("MA.157.1"), 0, key("x").public_key, None, record(), T),
        world.root,
        ROOT_LOG,
        AuthorityError,
        "no-parent",
    )


def test_single_node_root_record_cannot_be_changed() -> None:
    root = key("root")
    ns = Namespace()
    ns.add_anchor(Prefix.parse("MA"), root.public_key, ROOT_LOG)
    with pytest.raises(AuthorityError) as e:
        ns.apply(signed(Update(parse_identifier("0.NA/MA"), 1, record(), T), root), log=ROOT_LOG)
    assert e.value.rule == "root"


def test_anchor_record_cannot_be_changed(world: World) -> None:
    refused(
        world,
        Update(parse_identifier("0.NA/MA.156"), 1, record(), T),
        world.root,
        ROOT_LOG,
        AuthorityError,
        "root",
    )


# -- revocation -------------------------------------------------------------------------


def test_ops_under_a_revoked_prefix_are_refused(world: World) -> None:
    world.do(Delete(parse_identifier("0.NA/MA.156.1301.02"), 1, T), world.city, CITY_LOG)
    assert world.ns.version(parse_identifier("0.NA/MA.156.1301.02")) == (2, False)
    msg = refused(world, mint(DEPT2, "S2"), world.dept2, CITY_LOG, AuthorityError, "prefix-revoked")
    assert "MA.156.1301.02" in msg
    refused(
        world,
        Update(parse_identifier("MA.156.1301.02/S1"), 1, record(), T),
        world.dept2,
        CITY_LOG,
        AuthorityError,
        "prefix-revoked",
    )
    refused(
        world,
        Delegate(DEPT2.child("7"), 0, key("sub").public_key, None, record(), T),
        world.dept2,
        CITY_LOG,
        AuthorityError,
        "prefix-revoked",
    )
    refused(
        world,
        RotateKey(DEPT2, 2, key("d2b").public_key, T),
        world.dept2,
        CITY_LOG,
        AuthorityError,
        "prefix-revoked",
    )
    # The parent may delegate the node again, to a new key.
    new = key("dept2-new")
    world.do(Delegate(DEPT2, 2, new.public_key, None, record(), T), world.city, CITY_LOG)
    world.do(mint(DEPT2, "S2"), new, CITY_LOG)
    refused(world, mint(DEPT2, "S3"), world.dept2, CITY_LOG, AuthorityError, "rotated-out-key")


def test_revoking_the_city_revokes_its_departments(world: World) -> None:
    world.do(Delete(parse_identifier("0.NA/MA.156.1301"), 1, T), world.root, ROOT_LOG)
    refused(world, mint(DEPT1, "M9"), world.dept1, CITY_LOG, AuthorityError, "prefix-revoked")
    refused(world, mint(CITY, "Y9"), world.city, CITY_LOG, AuthorityError, "prefix-revoked")


# -- ranges at scale --------------------------------------------------------------------


def test_million_range_is_fast_and_updates_are_per_identifier(world: World) -> None:
    op = MintRange(DEPT1, "W", 0, 1_000_000, 7, record("https://water.sjz.example/"), T)
    leaf = SignedOperation.sign(op, world.dept1).encode()
    assert len(leaf) < 1024  # a million identifiers, one small leaf
    t0 = time.perf_counter()
    world.ns.apply(SignedOperation.decode(leaf), log=CITY_LOG)
    assert time.perf_counter() - t0 < 1.0
    for n in (0, 1, 127, 500_000, 999_999):
        ident = parse_identifier(f"MA.156.1301.01/{mint_suffix('W', n, 7)}")
        assert world.ns.version(ident) == (1, True)
    assert world.ns.version(parse_identifier(f"MA.156.1301.01/{mint_suffix('W', 0, 8)}")) == (
        0,
        False,
    )
    bad_check = mint_suffix("W", 127, 7)[:-1] + (
        "A" if mint_suffix("W", 127, 7)[-1] != "A" else "B"
    )
    assert world.ns.version(parse_identifier(f"MA.156.1301.01/{bad_check}")) == (0, False)
    # An update inside the range bumps that one identifier only.
    target = parse_identifier(f"MA.156.1301.01/{mint_suffix('W', 127, 7)}")
    world.do(Update(target, 1, record("https://water.sjz.example/127"), T), world.dept1, CITY_LOG)
    assert world.ns.version(target) == (2, True)
    for n in (126, 128, 0, 999_999):
        ident = parse_identifier(f"MA.156.1301.01/{mint_suffix('W', n, 7)}")
        assert world.ns.version(ident) == (1, True)
    world.do(Delete(target, 2, T), world.dept1, CITY_LOG)
    assert world.ns.version(target) == (3, False)
    # A second million-range next to it is checked just as fast.
    t0 = time.perf_counter()
    world.do(MintRange(DEPT1, "W", 1_000_000, 1_000_000, 7, record(), T), world.dept1, CITY_LOG)
    assert time.perf_counter() - t0 < 1.0
    refused(
        world,
        MintRange(DEPT1, "W", 999_000, 10, 7, record(), T),
        world.dept1,
        CITY_LOG,
        ConflictError,
        "already-exists",
    )


# -- transactions -----------------------------------------------------------------------


def test_transaction_is_all_or_nothing(world: World) -> None:
    before = snapshot(world.ns)
    new_city = key("city-2026")
    with pytest.raises(ConflictError), world.ns.transaction():
        world.do(mint(CITY, "T1"), world.city, CITY_LOG)
        world.do(
            Update(parse_identifier("MA.156.1301/X1"), 1, record("https://x.example/"), T),
            world.city,
            CITY_LOG,
        )
        world.do(MintRange(CITY, "R", 0, 10, 3, record(), T), world.city, CITY_LOG)
        world.do(
            Delegate(CITY.child("05"), 0, key("d5").public_key, None, record(), T),
            world.city,
            CITY_LOG,
        )
        world.do(Delete(parse_identifier("0.NA/MA.156.1301.02"), 1, T), world.city, CITY_LOG)
        world.do(RotateKey(CITY, 0, new_city.public_key, T), world.city, CITY_LOG)
        world.do(mint(CITY, "T1"), new_city, CITY_LOG)  # already exists: everything undone
    assert snapshot(world.ns) == before
    world.do(mint(CITY, "T1"), world.city, CITY_LOG)


# -- regressions -------------------------------------------------------------------------------


def test_state_does_not_depend_on_how_two_logs_interleave() -> None:
    root, city, city2 = key("root"), key("city"), key("city-2026")
    delegate = signed(Delegate(CITY, 0, city.public_key, CITY_LOG, record(), T), root)
    # Root log: the delegation, then an update of the city's prefix record.
    update = signed(
        Update(parse_identifier("0.NA/MA.156.1301"), 1, record("https://v2.example/"), T), root
    )
    # City log: the city rotates its key.
    rotate = signed(RotateKey(CITY, 0, city2.public_key, T), city)

    def replay(order: list[tuple[SignedOperation, str]]) -> Any:
        ns = Namespace()
        ns.add_anchor(ROOT, root.public_key, ROOT_LOG)
        for s, log in order:
            with contextlib.suppress(CityIdError):  # a resolver skips a refused leaf
                ns.apply(s, log=log)
        st = ns.prefixes[CITY]
        return st.key, st.version, st.record

    root_first = replay([(delegate, ROOT_LOG), (update, ROOT_LOG), (rotate, CITY_LOG)])
    city_first = replay([(delegate, ROOT_LOG), (rotate, CITY_LOG), (update, ROOT_LOG)])
    assert root_first == city_first


@pytest.mark.parametrize(
    "rule",
    [
        "stale-version",
        "wrong-log",
        "suffix-is-node",
        "already-exists",
        "not-found",
        "prefix-revoked",
    ],
)
def test_every_refusal_names_the_signer_key(world: World, rule: str) -> None:
    m1 = parse_identifier("MA.156.1301.01/M1")
    cases: dict[str, tuple[Operation, SigningKey, str, type[CityIdError]]] = {
        "stale-version": (Update(m1, 2, record(), T), world.dept1, CITY_LOG, ConflictError),
        "wrong-log": (mint(DEPT1, "M9"), world.dept1, ROOT_LOG, AuthorityError),
        "suffix-is-node": (mint(CITY, "01"), world.city, CITY_LOG, AuthorityError),
        "already-exists": (mint(DEPT1, "M1"), world.dept1, CITY_LOG, ConflictError),
        "not-found": (
            Update(parse_identifier("MA.156.1301.01/NOPE"), 1, record(), T),
            world.dept1,
            CITY_LOG,
            NotFoundError,
        ),
        "prefix-revoked": (mint(DEPT2, "S2"), world.dept2, CITY_LOG, AuthorityError),
    }
    if rule == "prefix-revoked":
        world.do(Delete(parse_identifier("0.NA/MA.156.1301.02"), 1, T), world.city, CITY_LOG)
    op, k, log, exc = cases[rule]
    msg = refused(world, op, k, log, exc, rule)
    assert fp(k) in msg


def test_identifiers_under_a_revoked_prefix_are_not_alive(world: World) -> None:
    r9 = parse_identifier("MA.156.1301.01/R9")
    world.do(mint(DEPT1, "R9"), world.dept1, CITY_LOG)
    assert world.ns.version(r9) == (1, True)
    world.do(Delete(parse_identifier("0.NA/MA.156.1301.01"), 1, T), world.city, CITY_LOG)
    assert world.ns.version(r9) == (1, False)


@pytest.mark.parametrize("change", ["key", "host", "nothing"])
def test_a_prefix_hosted_elsewhere_is_not_redelegated(world: World, change: str) -> None:
    """Replaying the root's log before the city's must not find the city's past writes
    signed by a key the root dropped: the root cannot replace the city's key or host."""
    new = key("city2")
    op = Delegate(
        CITY,
        1,
        new.public_key if change == "key" else world.city.public_key,
        "other.example/log" if change == "host" else CITY_LOG,
        record(),
        T,
    )
    with pytest.raises(AuthorityError) as e:
        world.do(op, world.root, ROOT_LOG)
    assert e.value.rule == "redelegate-hosted-elsewhere"
    assert "cityid key rotate" in e.value.message and CITY_LOG in e.value.message
    # Its own key rotation, in its own log, is the way; the city's writes go on.
    world.do(RotateKey(CITY, 0, new.public_key, T), world.city, CITY_LOG)
    world.do(mint(CITY, "AFTER-ROTATION"), new, CITY_LOG)
    # A department hosted in the city's own log is still re-delegated there.
    world.do(Delegate(DEPT1, 1, key("d1b").public_key, None, record(), T), new, CITY_LOG)
