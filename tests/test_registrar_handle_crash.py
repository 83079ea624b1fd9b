"""SIGKILL a registrar child process during a burst of Handle-authenticated PUTs.

Concurrent clients create handles with Handle's Basic authentication (custodial
writes); the registrar is killed after a random delay, restarted, and so on. After
every restart each acknowledged PUT (201) is there: the registrar knows the handle,
its record reads back with the values sent, and its leaf is a custodial write
naming the admin. The log replays from the root of trust and passes the audit.
As ``tests/test_registrar_crash.py`` does for signed writes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import aiohttp
import pytest
from registrar_harness import (
    CITY,
    TRAFFIC,
    RegistrarProcess,
    audit,
    make_registrar,
    new_key,
    post_ops,
    replay,
    version,
)
from test_registrar_handle_auth import ADMIN, basic, setup_leaves, with_custody_key

from cityid.identifiers import Identifier
from cityid.ops import Custodial, SignedOperation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ORIGIN = "sjz.cityid.test/log"
KILLS = 5
WORKERS = 6
PUTS_PER_WORKER = 15  # per cycle: bounds the log, and so each restart's replay
TIME_BUDGET = 60.0


async def burst(url: str, cycle: int, acked: dict[str, str]) -> int:
    """Concurrent Handle PUTs until the registrar dies; returns how many were sent."""
    sent = 0

    async def worker(n: int) -> None:
        nonlocal sent
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            for k in range(PUTS_PER_WORKER):
                suffix = f"C{cycle}-W{n}-{k}"
                target = f"https://bus.example/{suffix}"
                body = json.dumps([{"index": 1, "type": "URL", "data": target}])
                headers = {"Authorization": basic(ADMIN), "Content-Type": "application/json"}
                sent += 1
                try:
                    async with s.put(
                        f"{url}/api/handles/{TRAFFIC}/{suffix}", data=body, headers=headers
                    ) as r:
                        if r.status == 201:
                            acked[suffix] = target
                        else:
                            assert r.status >= 500, (r.status, await r.text())
                except (TimeoutError, aiohttp.ClientError):
                    return  # killed under us

    await asyncio.gather(*(worker(n) for n in range(WORKERS)))
    return sent


def test_sigkill_during_handle_puts_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CITYID_CRASH_SEED", "0")) or None)
    keys = tmp_path / "keys"
    city, traffic = new_key("city", keys), new_key("traffic", keys)
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN, admin=city, max_delay_ms=20)
    custody = with_custody_key(spec)
    acked: dict[str, str] = {}

    async def setup(url: str) -> None:
        async with aiohttp.ClientSession() as s:
            status, body = await post_ops(s, url, setup_leaves(city, traffic, custody))
            assert status == 200, body

    async def cycle(proc: RegistrarProcess, n: int) -> int:
        task = asyncio.ensure_future(burst(proc.url, n, acked))
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        await asyncio.to_thread(proc.kill)
        return await task

    async def check(url: str) -> None:
        async with aiohttp.ClientSession() as s:
            for suffix, target in acked.items():
                assert await version(s, url, Identifier(TRAFFIC, suffix)) == (1, True), suffix
                async with s.get(f"{url}/api/handles/{TRAFFIC}/{suffix}") as r:
                    body = await r.json()
                    assert r.status == 200, body
                    assert body["values"][0]["data"]["value"] == target

    t0 = time.monotonic()
    kills = sent = 0
    with RegistrarProcess(spec) as proc:
        proc.start()
        asyncio.run(setup(proc.url))
        while kills < KILLS and time.monotonic() - t0 < TIME_BUDGET:
            sent += asyncio.run(cycle(proc, kills))
            kills += 1
            proc.start()
            asyncio.run(check(proc.url))
        proc.stop()
    assert kills >= 3 and acked, (kills, len(acked), sent)

    # The log holds each acknowledged write once, as a custodial leaf naming the admin,
    # and replays from the registrar's trust anchor alone.
    log = spec.open_log()
    leaves = [SignedOperation.decode(leaf) for leaf in log.entries(0, log.size)]
    written = {s.op.op.items[0].suffix for s in leaves if isinstance(s.op, Custodial)}  # type: ignore[union-attr]
    assert set(acked) <= written
    assert all(s.op.admin == ADMIN for s in leaves if isinstance(s.op, Custodial))
    replay(spec)
    audit(spec)
