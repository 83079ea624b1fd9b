"""Bytes per identifier in the resolver's Redis layout.

Writes COUNT explicit identifiers under one department prefix, each with a
one-value URL record (``https://assets.cityid.test/manhole/A0001234X``, a minted
9-character suffix), through :class:`resolver.store.Writer` (the path sync
uses, with its bucket resizes), and prints ``INFO memory`` ``used_memory``
after minus before, divided by COUNT. Repeats on a flushed server and prints
min/median/max.

Run (starts a private Valkey; ``--url`` or REDIS_URL uses yours, and FLUSHDBs it)::

    .venv/bin/python bench/resolver_memory.py                 # 1,000,000 x 3
    .venv/bin/python bench/resolver_memory.py --count 100000 --repeats 1

Target: at most 120 bytes per identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

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


def make_changes(count: int) -> list[IdChange]:
    first = mint_suffix("A", 0, 7)
    url0 = f"https://assets.cityid.test/manhole/{first}"
    assert record_bytes(url0) == Record.of([Value.make(1, "URL", url0, timestamp=TS)]).encode()
    out = []
    for n in range(count):
        suffix = mint_suffix("A", n, 7)
        url = f"https://assets.cityid.test/manhole/{suffix}"
        # ~250 identifiers per mint leaf, as the demo's chunked mints do.
        out.append(IdChange(PREFIX, suffix, 1, False, ORIGIN, 1000 + n // 250, record_bytes(url)))
    return out


async def one_run(url: str, changes: list[IdChange]) -> tuple[float, dict[str, object]]:
    store = await Store.connect(url)
    r = store.redis
    # Valkey 8 frees a plain FLUSHDB in the background: wait for it, or "before" is inflated.
    await r.execute_command("FLUSHDB", "SYNC")
    for _ in range(1000):
        if int((await r.info("memory"))["lazyfree_pending_objects"]) == 0:
            break
        await asyncio.sleep(0.01)
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    await r.execute_command("MEMORY", "PURGE")
    before = int((await r.info("memory"))["used_memory"])
    t0 = time.perf_counter()
    for i in range(0, len(changes), BATCH):
        await writer.apply(changes[i : i + BATCH])
    elapsed = time.perf_counter() - t0
    await writer.gc(now=float("inf"))
    await r.execute_command("MEMORY", "PURGE")
    after = int((await r.info("memory"))["used_memory"])
    keys = await r.dbsize()
    sample = [k async for k in r.scan_iter(match=f"i:{PREFIX}:*", count=1000)]
    encodings: dict[str, int] = {}
    for k in random.Random(1).sample(sample, min(200, len(sample))):
        enc = (await r.object("encoding", k)).decode()
        encodings[enc] = encodings.get(enc, 0) + 1
    # The layout must still answer: spot-check a few identifiers.
    for c in random.Random(2).sample(changes, 100):
        e = await store.lookup(Identifier(Prefix.parse(c.prefix), c.suffix))
        assert e is not None and e.record is not None and e.record.encode() == c.record
    await store.close()
    info = {"keys": keys, "write_seconds": round(elapsed, 1), "encodings": encodings,
            "fill": writer.fill}  # fmt: skip
    return (after - before) / len(changes), info


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", default=os.environ.get("REDIS_URL", ""))
    args = ap.parse_args()
    changes = make_changes(args.count)
    server = None
    url = args.url
    if not url:
        server = EmbeddedValkey()
        url = server.start()
    try:
        results = []
        for i in range(args.repeats):
            per_id, info = await one_run(url, changes)
            results.append(per_id)
            print(f"run {i + 1}: {per_id:.1f} bytes/identifier {info}", flush=True)
    finally:
        if server is not None:
            server.stop()
    print(
        f"{args.count} identifiers, {args.repeats} runs: bytes per identifier "
        f"min {min(results):.1f} median {statistics.median(results):.1f} max {max(results):.1f} "
        "(target <= 120)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
