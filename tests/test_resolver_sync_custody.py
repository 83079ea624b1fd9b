"""A resolver's sync follows custodial writes: granted ones resolve, ungranted ones alarm.

The same world as ``tests/test_resolver_sync.py`` (a root log and a city log served
as tiles on loopback, a real Valkey): the city delegates a department, the
department grants a registrar's custodial key custody for an admin handle, and
custodial writes appear in the city's log. Sync applies them through the same
authority rules as the registrar; after a revocation, a custodial write in the log
is refused as unauthorised (an alarm), never served.
"""

from __future__ import annotations

from typing import Any

import pytest
import test_resolver_sync as base
from test_resolver_sync import CITY, CITY_ORIGIN, TS, World, lookup, rec

from cityid.identifiers import Identifier
from cityid.keys import SigningKey
from cityid.ops import Custodial, Custody, Delegate, Delete, Mint, MintItem, Update
from resolver.sync import Sync

pytestmark = pytest.mark.timeout(60)

world, stores, syncs = base.world, base.stores, base.syncs  # the same fixtures
ADMIN = f"300:{CITY}.02/ADMIN"


async def test_custodial_writes_resolve_and_stop_at_revocation(
    world: World, stores: Any, syncs: list[Sync]
) -> None:
    store = await stores()
    sync = world.make_sync(store)
    syncs.append(sync)
    dept, dept_key, custodian = CITY.child("02"), SigningKey.generate("d"), SigningKey.generate("c")
    bus = Identifier(dept, "BUS-1")
    world.append(
        world.city,
        (Delegate(dept, 0, dept_key.public_key, None, rec("https://traffic.example"), TS),
         world.city_admin),
        (Custody(dept, 0, custodian.public_key, (ADMIN,), TS), dept_key),
        (Custodial(ADMIN, Mint(dept, (MintItem("BUS-1", 0, rec("https://bus.example/1")),), TS)),
         custodian),
        (Custodial(ADMIN, Update(bus, 1, rec("https://bus.example/2"), TS)), custodian),
    )  # fmt: skip
    await sync.sync_once()
    got = await lookup(store, str(bus))
    assert got.version == 2 and got.record.urls() == ["https://bus.example/2"]
    assert got.leaf_index == 3

    world.append(
        world.city,
        (Custody(dept, 1, custodian.public_key, (), TS), dept_key),
        (Custodial(ADMIN, Delete(bus, 2, TS)), custodian),
    )
    await sync.sync_once()
    # The delete after the revocation is refused: an alarm, and the log is not followed
    # past it (what came before stays served, as for any unauthorised entry: the delete
    # never happened).
    assert "no-custody at entry 5" in sync.logs[CITY_ORIGIN].reason
    assert sync.metrics()["sync_alarms_authority_total"] == 1
    assert (await lookup(store, str(bus))).version == 2
