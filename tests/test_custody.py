"""Custody: a prefix owner lets a registrar's key write for named Handle admin handles.

The rules live in ``cityid/authority.py``; these tests drive them through leaf bytes,
as a registrar and a resolver read them, and through a snapshot, which must carry the
grants (a restart must not forget a revocation, nor a grant).
"""

from __future__ import annotations

import copy

import pytest
from test_authority import CITY, CITY_LOG, DEPT2, ROOT, ROOT_LOG, T, World, key, record, signed

from cityid import snapshot
from cityid.authority import Namespace
from cityid.errors import AuthorityError, ConflictError, OperationError
from cityid.identifiers import Identifier, parse_identifier
from cityid.ops import Custodial, Custody, Delegate, Delete, Mint, MintItem, Update
from cityid.snapshot import Position

ADMIN = f"{DEPT2}/ADMIN"
BUS = Identifier(DEPT2, "BUS-1")


def world() -> World:
    """The root, the city on its own log, and its traffic department (DEPT2)."""
    w = World(Namespace(), key("root"), key("city"), key("dept1"), key("dept2"))
    w.ns.add_anchor(ROOT, w.root.public_key, ROOT_LOG)
    w.do(Delegate(CITY, 0, w.city.public_key, CITY_LOG, record(), T), w.root, ROOT_LOG)
    w.do(Delegate(DEPT2, 0, w.dept2.public_key, None, record(), T), w.city, CITY_LOG)
    return w


def test_custodial_writes_need_a_grant_for_that_admin_and_stop_at_revocation() -> None:
    w = world()
    ns, traffic, custodian = w.ns, w.dept2, key("registrar-custody")
    mint = Custodial(ADMIN, Mint(DEPT2, (MintItem("BUS-1", 0, record()),), T))
    before = snapshot.describe(ns)
    with pytest.raises(AuthorityError) as e:
        ns.apply(signed(mint, custodian), log=CITY_LOG)
    assert e.value.rule == "no-custody" and "grants it with a signed custody" in e.value.message
    assert snapshot.describe(ns) == before

    # Only the prefix's own key grants custody, naming the version it replaces.
    grant = Custody(DEPT2, 0, custodian.public_key, (ADMIN,), T)
    with pytest.raises(AuthorityError):
        ns.apply(signed(grant, custodian), log=CITY_LOG)
    ns.apply(signed(grant, traffic), log=CITY_LOG)
    with pytest.raises(ConflictError):  # replayed
        ns.apply(signed(grant, traffic), log=CITY_LOG)

    ns.apply(signed(mint, custodian), log=CITY_LOG)
    assert ns.version(BUS) == (1, True)
    # Another admin handle than the grant names: refused, and the message names the grant.
    other = Custodial(f"{DEPT2}/OTHER", Update(BUS, 1, record("https://x.example/"), T))
    with pytest.raises(AuthorityError) as e:
        ns.apply(signed(other, custodian), log=CITY_LOG)
    assert e.value.rule == "no-custody" and ADMIN in e.value.message
    # The inner write is checked as the owner's own would be: stale versions are stale.
    with pytest.raises(ConflictError):
        ns.apply(signed(Custodial(ADMIN, Delete(BUS, 7, T)), custodian), log=CITY_LOG)
    ns.apply(signed(Custodial(ADMIN, Update(BUS, 1, record(), T)), custodian), log=CITY_LOG)
    assert ns.version(BUS) == (2, True)

    # A snapshot carries the grant; revocation (a grant with no admins) ends it at once.
    restored, _ = snapshot.decode(snapshot.encode(ns, Position.of([], [])))
    assert snapshot.describe(restored) == snapshot.describe(ns)
    for n in (ns, restored):
        revoke = Custody(DEPT2, 1, custodian.public_key, (), T)
        n.apply(signed(revoke, traffic), log=CITY_LOG)
        with pytest.raises(AuthorityError) as e:
            n.apply(signed(Custodial(ADMIN, Delete(BUS, 2, T)), custodian), log=CITY_LOG)
        assert e.value.rule == "no-custody"
        assert n.version(BUS) == (2, True)


def test_a_failed_transaction_undoes_a_grant() -> None:
    w = world()
    ns, custodian = w.ns, key("registrar-custody")
    before = snapshot.describe(ns)
    grant = Custody(DEPT2, 0, custodian.public_key, (ADMIN,), T)
    with pytest.raises(ConflictError), ns.transaction():
        ns.apply(signed(grant, w.dept2), log=CITY_LOG)
        ns.apply(signed(copy.copy(grant), w.dept2), log=CITY_LOG)  # stale: undoes both
    assert snapshot.describe(ns) == before


def test_custody_leaves_are_canonical() -> None:
    w = world()
    custodian = key("c")
    for admins in ((f"{DEPT2}/B", f"{DEPT2}/A"), (ADMIN, ADMIN), ("has space",)):
        with pytest.raises(OperationError):
            signed(Custody(DEPT2, 0, custodian.public_key, admins, T), w.dept2)
    # A custodial write of a prefix record is not content: refused as a leaf.
    prefix_record = Update(parse_identifier(f"0.NA/{DEPT2}"), 1, record(), T)
    with pytest.raises(OperationError):
        signed(Custodial(ADMIN, prefix_record), custodian)
