"""Faults on a multi-host topology (issue 15), each under steady mixed load.

The topology (tests/multihost_topology.py) runs on simulated hosts
(tests/netns_harness.py): a Valkey Cluster of 3 primaries and 3 replicas, 3
witnesses with a 2-of-3 policy, the root and two city registrars, two
resolvers. It is started once for the module (about 20 s) and every test leaves
it whole; the tests run in file order, the primary's death last. Each test
prints what the load saw (``-s`` shows it): seconds with errors, wrong answers,
writes acknowledged and lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import netns_harness
import pytest
import redis
from multihost_load import Load
from multihost_topology import (
    NODE_TIMEOUT_MS,
    RESOLVERS,
    VALKEY_PORT,
    VALKEYS,
    Topology,
)
from multihost_topology import start as start_topology

from cityid.valkey import ValkeyError, find_binary
from resolver.layout import EPOCH

pytestmark = pytest.mark.timeout(240)

netns = netns_harness.netns
SETTLE_AFTER = 3.0  # seconds of load after a fault is healed


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    reason = netns_harness.unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        find_binary()
    except ValkeyError as e:
        pytest.skip(f"no valkey-server for the cluster: {e}")
    net = netns_harness.Net()
    try:
        net.open()
        t = start_topology(net, tmp_path_factory.mktemp("multihost"))
        print(f"\ntopology up in {t.started_in:.1f} s:\n{t.describe()}")  # type: ignore[attr-defined]
        yield t
    finally:
        net.close()


def epoch(t: Topology) -> bytes | None:
    nodes = [redis.cluster.ClusterNode(t.host(n).addr, VALKEY_PORT) for n in VALKEYS]
    rc = redis.cluster.RedisCluster(startup_nodes=nodes, socket_timeout=2)
    try:
        return rc.get(EPOCH)
    finally:
        rc.close()


def wait_served(t: Topology, load: Load, timeout: float = 20.0) -> None:
    """Every acknowledged write is answered by every resolver (or the test fails, naming them)."""
    deadline = time.monotonic() + timeout
    for res in RESOLVERS:
        while missing := load.unserved(res):
            assert time.monotonic() < deadline, f"{res} does not serve {missing[:5]}"
            time.sleep(0.2)


def test_harness_hosts_are_isolated_and_swept(netns: netns_harness.Net, tmp_path: Path) -> None:
    """Hosts reach each other over the bridge; a partition refuses; close() leaves nothing."""
    import subprocess
    import sys

    a, b = netns.add("a"), netns.add("b")
    b.spawn([sys.executable, "-m", "http.server", "--bind", b.addr, "8000"], log=tmp_path / "b.log")

    def get() -> str:
        return a.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                     f"http://{b.addr}:8000/", check=False)  # fmt: skip

    netns_harness.wait_for(lambda: get() == "200", 15, "http.server on host b")
    a.block([b.addr])
    assert get() == "000"
    a.unblock([b.addr])
    assert get() == "200"
    # Nothing listens on b's loopback from a's point of view: namespaces are separate.
    assert a.run("curl", "-s", "--max-time", "1", "http://127.0.0.1:8000/", check=False) == ""
    # What a crashed run leaves (a namespace and a link named with the prefix) goes at the
    # next start, with the processes inside it.
    stale = f"{netns_harness.PREFIX}-stale"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    left = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])  # a lost server
    netns_harness.wait_for(
        lambda: subprocess.run(["ip", "netns", "pids", stale], capture_output=True).stdout,
        5,
        "the stand-in server in its namespace",
    )
    netns_harness.sweep()
    assert left.wait(timeout=10) != 0  # killed, by its pid, with its namespace
    netns.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert netns_harness.PREFIX not in names and netns_harness.PREFIX not in links


def test_a_city_cut_from_its_witnesses_fails_writes_clearly_and_loses_nothing(
    topo: Topology,
) -> None:
    city = topo.host("sjz")
    load = Load(topo)
    with load.running(limit=60):
        time.sleep(2)
        cut_at = load.now()
        city.block(topo.witness_addrs)
        try:
            time.sleep(5)
            during = [r for r in load.refused if r[0] >= cut_at]
            # Below the quorum a write is stored, signed, and answered 503 not-published.
            assert during and all(status == 503 for _, status, _ in during), during[:3]
            assert all("not yet published" in body for _, _, body in during), during[:3]
        finally:
            city.unblock(topo.witness_addrs)
        healed = load.now()
        netns_harness.wait_for(lambda: any(t > healed for _, t in load.acked.values()), 20,
                               "a write acknowledged after the witnesses came back")  # fmt: skip
        time.sleep(SETTLE_AFTER)
    print("\n" + load.summary("city registrar cut from its 3 witnesses for 5 s"))
    print(f"lookup latency (no resolver fault, no netem): {load.latency_summary()}")
    wait_served(topo, load)
    assert not load.wrong, load.wrong[:5]
    assert load.totals()["ok"] > 0


def test_a_resolver_cut_from_the_cluster_answers_degraded_and_recovers(topo: Topology) -> None:
    res = topo.host("res1")
    pid = topo.procs["res1"].pid
    load = Load(topo)
    with load.running(limit=60):
        time.sleep(3)  # res1 has answered (and cached) some identifiers by now
        res.block(topo.valkey_addrs)
        try:
            netns_harness.wait_for(lambda: topo.healthz("res1")[0] == 503, 10,
                                   "res1 /healthz says degraded")  # fmt: skip
            _, body = topo.healthz("res1")
            assert body["redis"] is False and body["serving"] == "cached answers only", body
            assert topo.healthz("res2")[0] == 200  # the other resolver is not affected
            time.sleep(3)
        finally:
            res.unblock(topo.valkey_addrs)
        netns_harness.wait_for(lambda: topo.healthz("res1")[0] == 200, 20,
                               "res1 /healthz ok again")  # fmt: skip
        time.sleep(SETTLE_AFTER)
    print("\n" + load.summary("resolver res1 cut from the cluster for ~5 s"))
    assert topo.procs["res1"].pid == pid and topo.procs["res1"].poll() is None  # no restart
    stale = [
        ln for ln in http_metrics(topo, "res1") if ln.startswith("cityid_resolver_cache_stale")
    ]
    print("res1 " + " ".join(stale))
    print(f"errors: res1 {load.errors_on('res1')}, res2 {load.errors_on('res2')}")
    assert load.errors_on("res2") == 0
    wait_served(topo, load)
    assert not load.wrong, load.wrong[:5]


def http_metrics(t: Topology, name: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"{t.url(name)}/metrics", timeout=5) as r:
        return r.read().decode().splitlines()


def test_a_split_view_is_refused_by_witnesses_and_caught_by_resolver_and_monitor(
    topo: Topology,
) -> None:
    """The ts registrar, holding its log key, forks its log and shows the fork to one
    resolver (res3, with its own Valkey): the witnesses refuse to cosign it, res3's sync
    raises the alarm, and the monitor comparing res1's and res3's views finds the fork."""
    import asyncio
    import shutil
    import sys

    import aiohttp
    import registrar_harness as rh
    from multihost_topology import REGISTRARS, url_record

    from cityid.ops import Mint, MintItem, now
    from ledger.client import LogClient
    from ledger.monitor import View, compare
    from ledger.storage import Log
    from ledger.witness import WitnessClient, WitnessError

    prefix, origin = REGISTRARS["ts"]
    cfg = topo.registrars["ts"]
    fork_dir = topo.work / "evil" / "log"
    shutil.copytree(cfg.log_dir, fork_dir)  # the log as it is now: nobody writes to ts
    for n in (1, 2):  # the real log grows on; the witnesses cosign it
        assert topo.mint("ts", f"REAL-{n}", f"https://real.example/{n}")[0] == 200
    fork = Log.open(fork_dir, cfg.log_key())
    base = fork.checkpoint
    leaf = rh.sign(Mint(prefix, (MintItem("FORGED", 0, url_record("https://evil.example")),),
                        now()), topo.keys["ts-admin"])  # fmt: skip
    fork_note = fork.append([leaf])
    fork.close()
    evil = topo.net.add("evil")
    evil.spawn([sys.executable, "-m", "http.server", "--bind", evil.addr, "8000",
                "--directory", str(fork_dir.parent)], log=topo.log("evil"))  # fmt: skip
    fork_url = f"http://{evil.addr}:8000/log"
    vkey = cfg.log_key().verifier

    async def witnesses_refuse() -> list[str]:
        async with aiohttp.ClientSession() as session:
            forked = LogClient(fork_url, vkey, session)
            await topo_wait(lambda: forked.fetch_checkpoint(), 15)
            cp, _ = await forked.fetch_checkpoint()
            proof = await forked.check_consistency(base, cp)
            refusals = []
            for w, wkey in topo.witness_vkeys().items():
                client = WitnessClient(topo.url(w), wkey, session=session)
                for old in (base.size, base.size + 2):  # from where it forked; from the real head
                    with pytest.raises(WitnessError) as e:
                        await client.add_checkpoint(
                            fork_note, old, proof if old == base.size else []
                        )
                    refusals.append(f"{w} (old {old}): {e.value.message}")
            return refusals

    refusals = asyncio.run(witnesses_refuse())
    print("\nwitnesses refusing the forked checkpoint:\n  " + "\n  ".join(refusals))

    load = Load(topo)
    with load.running(limit=90):
        topo.add_resolver("res3", redis_url="", redis_cluster=False, log_urls={origin: fork_url})
        try:
            topo.wait(lambda: alarm(topo, "res3", origin), 60, "res3 raising the alarm")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {topo.status('res3')}") from None
        body = topo.healthz("res3")[1]
        print(f"res3 /healthz: {body['status']}: {body.get('reasons')}")
        assert topo.healthz("res1")[0] == 200 and not alarm(topo, "res1", origin)

        views = [View(r, lg["url"]) for r in ("res1", "res3")
                 for lg in topo.status(r)["logs"] if lg["origin"] == origin]  # fmt: skip
        result = asyncio.run(compare(views, vkey))
    print(f"monitor: {[str(d) for d in result.divergences]}")
    print(load.summary("split view of ts shown to res3"))
    assert [(d.first, d.second) for d in result.divergences] == [("res3", "res1")], result
    assert not load.wrong, load.wrong[:5]
    # res3 never served the forged identifier: it stopped at the alarm.
    assert load.lookup_http("res3", f"{prefix}/FORGED", "https://evil.example") != "ok"


def alarm(t: Topology, resolver: str, origin: str) -> bool:
    return any(
        lg["origin"] == origin and lg["state"] == "alarm" for lg in t.status(resolver)["logs"]
    )


async def topo_wait(make: object, timeout: float) -> None:
    """Await ``make()`` until it stops raising, for at most ``timeout`` seconds."""
    import asyncio

    assert callable(make)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await make()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_killing_a_valkey_primary_fails_over_without_wrong_answers(topo: Topology) -> None:
    before = epoch(topo)
    nodes = topo.cluster_nodes()
    # Not the node every client was seeded with: a client restarted now must still find
    # the cluster (the seed is one URL in resolver.toml).
    victim = next(n for n in sorted(nodes) if nodes[n][0] == "primary" and n != VALKEYS[0])
    replica = next(
        n for n, (role, of) in nodes.items() if role == "replica" and of == nodes[victim][1]
    )
    load = Load(topo)
    with load.running(limit=90):
        time.sleep(3)
        killed_at = load.now()
        proc = next(p for p in topo.host(victim).procs if p.poll() is None)
        proc.kill()
        proc.wait(10)
        netns_harness.wait_for(lambda: topo.cluster_nodes().get(replica, ("",))[0] == "primary",
                               NODE_TIMEOUT_MS / 1000 * 10, f"{replica} promoted")  # fmt: skip
        promoted_at = load.now()
        time.sleep(6)
    # Seconds of errors: from the first failed lookup to the last. (Counting the distinct
    # clock seconds touched, also printed, rounds a 4.0 s window up to 5.)
    span = load.error_span(killed_at)
    print(f"\n{load.summary(f'primary {victim} killed, {replica} promoted')}; "
          f"promoted {promoted_at - killed_at:.1f} s after the kill")  # fmt: skip
    assert not load.wrong, load.wrong[:5]
    assert span <= 5.0, f"errors for {span:.1f} s (goal: at most 5)"
    wait_served(topo, load)  # sync resumed: every acknowledged write is served
    assert epoch(topo) == before  # and without a rebuild
    assert all(topo.resolver_ready(r) for r in RESOLVERS)


@pytest.mark.slow
def test_latency_between_resolvers_and_valkey(topo: Topology) -> None:
    reason = netns_harness.netem_reason()
    if reason:
        pytest.skip(reason)
    for name in RESOLVERS:
        topo.host(name).delay(topo.valkey_addrs, 50, 10)
    try:
        load = Load(topo)
        with load.running(limit=60):
            time.sleep(20)
        print("\n" + load.summary("netem 50±10 ms between resolvers and the cluster"))
        print(load.latency_summary())
        assert not load.wrong
        first, again = load.p99("http", "first"), load.p99("http", "again")
        assert first is not None and first >= 0.04  # a miss crosses the delayed link
        assert again is not None
    finally:
        for name in RESOLVERS:
            topo.host(name).undelay()
