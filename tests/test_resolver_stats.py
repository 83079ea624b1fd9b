"""Counters that sync and DNS processes publish through Redis for any resolver's /metrics."""

from __future__ import annotations

import asyncio
import time

from test_resolver_http import Served, served  # noqa: F401 - the fixture

from resolver import stats


def test_lines_are_grouped_by_family_with_an_instance_label() -> None:
    lines = stats.prometheus_lines([
        ("dns", "b:2", {"queries": 5, "cache_entries": 3}),
        ("sync", "a:1", {"sync_writes_total": 7, 'sync_x{origin="o"}': 1}),
        ("dns", "a:1", {"queries": 2}),
    ])  # fmt: skip
    assert lines == [
        'cityid_dns_cache_entries{instance="b:2"} 3',
        'cityid_dns_queries{instance="a:1"} 2',
        'cityid_dns_queries{instance="b:2"} 5',
        'cityid_sync_writes_total{instance="a:1"} 7',
        'cityid_sync_x{origin="o",instance="a:1"} 1',
    ]
    assert stats.decode(stats.encode({"q": 1, "g": 0.5}, 10.0)) == (10.0, {"q": 1, "g": 0.5})
    quoted = stats.prometheus_lines([("dns", 'h"\\', {"queries": 1})])
    assert quoted == ['cityid_dns_queries{instance="h\\"\\\\"} 1']


async def test_published_counters_reach_metrics_and_stale_ones_go(served: Served) -> None:  # noqa: F811
    r = served.store.redis
    counts = {"queries": 41}
    task = asyncio.create_task(stats.publish(r, "dns", lambda: counts))
    # A process killed without cleaning up left an entry behind, and one is garbage.
    old = stats.encode({"queries": 9}, time.time() - stats.STALE - 1)
    await r.hset(stats.STATS_KEY, mapping={"dns/gone:1": old, "dns/bad:2": b"\xc1"})
    try:
        for _ in range(100):
            if await r.hexists(stats.STATS_KEY, f"dns/{stats.instance_name()}"):
                break
            await asyncio.sleep(0.02)
        status, _, body = await served.get("/metrics")
        text = body.decode()
        assert status == 200
        assert f'cityid_dns_queries{{instance="{stats.instance_name()}"}} 41' in text
        assert "gone:1" not in text and "bad:2" not in text
        assert not await r.hexists(stats.STATS_KEY, "dns/gone:1")  # dropped by the reader
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # A clean stop removes its own entry.
    assert await r.hlen(stats.STATS_KEY) == 0
