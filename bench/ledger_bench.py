"""Benchmark the ledger: append rate, proofs from tile files, full-log audit.

Run from the repository root::

    .venv/bin/python bench/ledger_bench.py            # full: 1,000,000-leaf log
    .venv/bin/python bench/ledger_bench.py --quick    # ~15 s smoke run
    .venv/bin/python bench/ledger_bench.py --leaves 2000000 --dir /var/tmp

It measures, each at least three times and printed as min / median / max:

* append: leaves per second into a fresh on-disk log (``ledger.storage.Log``),
  ~200-byte msgpack leaves in batches of 1,000, every batch durable (fsync)
  and sealed by a signed, published checkpoint;
* proofs: inclusion proofs per second for random leaves of the big log, read
  from its tile files by a freshly opened (cold-cache) read-only ``Log``;
* audit: seconds for ``ledger.audit.verify_log`` to recompute and check every
  entry, tile and the checkpoint of the ``--leaves`` log.

Logs are written under ``--dir`` (default: the system temp dir) and deleted
afterwards. fsync dominates appends, so results depend on the disk.

Disk use mode (``--disk``): the disk bytes per leaf after many single-entry
batches, each sealed by its own checkpoint (the worst case for partial tiles
and bundles, which every checkpoint rewrites)::

    .venv/bin/python bench/ledger_bench.py --disk --batches 1000000 --grace 1 --no-fsync
    .venv/bin/python bench/ledger_bench.py --disk --batches 20000 --grace inf  # never delete

It drives ``ledger.storage.Log`` directly (no registrar, no HTTP), one
``append`` of one ~197-byte leaf per batch, with ``partial_grace`` set to
``--grace`` seconds (``inf``: superseded partials are never deleted, as before
issue 17). It samples the log's size as it grows, waits out the grace period
at the end, audits the log, and prints allocated bytes (``du``: blocks of
every file and directory) and apparent bytes (file sizes) per leaf, each as a
multiple of the entry bytes. ``--no-fsync`` skips fsync (it changes how long
this takes, not what is on disk), so a million batches take minutes, not hours.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cityid.keys import SigningKey
from ledger import storage
from ledger.audit import verify_log
from ledger.merkle import verify_inclusion
from ledger.storage import Log

BATCH = 1000


def make_leaf(i: int) -> bytes:
    """A leaf shaped like a registrar operation: version, op, id, record, key, signature."""
    return msgpack.packb(
        [
            1,
            "mint",
            f"MA.156.1301.02/W{i:07d}R",
            {"url": f"https://city.example/asset/{i}", "kind": "streetlight", "v": 1},
            1_700_000_000 + i,
            (i.to_bytes(8, "big") * 4),
            (i.to_bytes(8, "big") * 8),
        ]
    )


def leaves(start: int, n: int) -> list[bytes]:
    return [make_leaf(i) for i in range(start, start + n)]


def fill(log: Log, n: int, report: Callable[[int], None] | None = None) -> float:
    """Append ``n`` leaves in batches of BATCH; return the seconds spent appending."""
    spent = 0.0
    done = 0
    while done < n:
        b = leaves(log.size, min(BATCH, n - done))  # built outside the timed part
        t = time.perf_counter()
        log.append(b)
        spent += time.perf_counter() - t
        done += len(b)
        if report is not None:
            report(done)
    return spent


def summary(name: str, values: list[float], unit: str, fmt: str = "{:,.0f}") -> None:
    lo, med, hi = min(values), statistics.median(values), max(values)
    print(
        f"{name:<28} min {fmt.format(lo)}  median {fmt.format(med)}  max {fmt.format(hi)}  "
        f"{unit}  ({len(values)} runs)"
    )


def disk_usage(d: Path) -> tuple[int, int, int]:
    """(allocated bytes of every file and directory, apparent bytes of the files, partials)."""
    allocated = os.lstat(d).st_blocks * 512
    apparent = 0
    partials = 0
    for root, dirs, files in os.walk(d):
        for name in dirs:
            allocated += os.lstat(os.path.join(root, name)).st_blocks * 512
        for name in files:
            st = os.lstat(os.path.join(root, name))
            allocated += st.st_blocks * 512
            apparent += st.st_size
            partials += root.endswith(".p")
    return allocated, apparent, partials


def disk_bench(work: Path, batches: int, grace: float, samples: int = 10) -> int:
    """Append ``batches`` single-leaf batches; print disk bytes per leaf vs entry bytes."""
    key = SigningKey.generate("bench.example/log")
    d = work / "disk"
    entry_bytes = 0
    peak = (0.0, 0)
    every = max(1, batches // samples)
    t0 = time.perf_counter()
    print(f"{batches:,} single-leaf batches, partial_grace {grace} s, log in {d}")
    with Log.create(d, key, partial_grace=grace) as log:
        for i in range(batches):
            leaf = make_leaf(i)
            log.append([leaf])
            entry_bytes += len(leaf)
            if (i + 1) % every == 0 or i + 1 == batches:
                allocated, apparent, partials = disk_usage(d)
                ratio = allocated / entry_bytes
                peak = max(peak, (ratio, i + 1))
                print(
                    f"  {i + 1:>10,} leaves  {time.perf_counter() - t0:7.0f} s  "
                    f"allocated {allocated / (i + 1):7.1f} B/leaf = {ratio:5.2f}x entries  "
                    f"{partials:,} partial files",
                    flush=True,
                )
        if not math.isinf(grace):
            time.sleep(grace)  # the last partials superseded are due now
            log.collect_garbage()
    allocated, apparent, partials = disk_usage(d)
    t = time.perf_counter()
    cp = verify_log(d, key.verifier)
    assert cp.size == batches
    print(f"audit: {cp.size:,} leaves verified in {time.perf_counter() - t:.1f} s")
    per_entry = entry_bytes / batches
    print(f"entry bytes            {entry_bytes:,} ({per_entry:.1f} B/leaf)")
    print(
        f"allocated (du) bytes   {allocated:,} ({allocated / batches:.1f} B/leaf) = "
        f"{allocated / entry_bytes:.3f}x the entry bytes"
    )
    print(
        f"apparent bytes         {apparent:,} ({apparent / batches:.1f} B/leaf) = "
        f"{apparent / entry_bytes:.3f}x the entry bytes"
    )
    print(f"partial files left     {partials}")
    print(f"peak while appending   {peak[0]:.2f}x (sampled at {peak[1]:,} leaves)")
    # The floor: a 2-byte length per entry and a 32-byte leaf hash per entry.
    print(f"format floor           {(per_entry + 2 + 32 * 257 / 256) / per_entry:.3f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--leaves", type=int, default=1_000_000, help="size of the audited log")
    ap.add_argument(
        "--append-leaves", type=int, default=100_000, help="leaves per append run (default 100k)"
    )
    ap.add_argument("--proofs", type=int, default=5_000, help="inclusion proofs per run")
    ap.add_argument("--runs", type=int, default=3, help="repetitions of each measure (>= 3)")
    ap.add_argument("--quick", action="store_true", help="small sizes: 100k log, 20k appends")
    ap.add_argument("--dir", type=Path, default=None, help="where to build the logs")
    ap.add_argument("--disk", action="store_true", help="disk use mode (see above)")
    ap.add_argument("--batches", type=int, default=1_000_000, help="--disk: single-leaf batches")
    ap.add_argument("--grace", type=float, default=1.0, help="--disk: partial_grace seconds")
    ap.add_argument("--no-fsync", action="store_true", help="--disk: skip fsync (same bytes)")
    args = ap.parse_args()
    if args.disk:
        if args.no_fsync:
            storage._sync_and_close = os.close  # type: ignore[assignment]
            storage.fsync_dir = lambda path: None  # type: ignore[assignment]
        work = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
        try:
            return disk_bench(work, args.batches, args.grace)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if args.quick:
        args.leaves, args.append_leaves, args.proofs = 100_000, 20_000, 2_000
    runs = max(3, args.runs)
    work = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    key = SigningKey.generate("bench.example/log")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, logs in {work}; "
        f"leaf ~{len(make_leaf(123_456))} bytes, batches of {BATCH}"
    )
    try:
        rates = []
        for r in range(runs):
            with Log.create(work / f"append{r}", key) as log:
                secs = fill(log, args.append_leaves)
            rates.append(args.append_leaves / secs)
            shutil.rmtree(work / f"append{r}")
        summary(f"append ({args.append_leaves:,} leaves)", rates, "leaves/s")

        big = work / "big"
        t = time.perf_counter()
        with Log.create(big, key) as log:

            def report(done: int) -> None:
                if done % 100_000 == 0:
                    print(f"  building: {done:,} leaves", file=sys.stderr)

            secs = fill(log, args.leaves, report)
        print(
            f"{'build ' + format(args.leaves, ',') + '-leaf log':<28} "
            f"{args.leaves / secs:,.0f} leaves/s appending "
            f"({time.perf_counter() - t:.1f} s wall incl. leaf encoding)"
        )

        rng = random.Random(1)
        proof_rates = []
        for _ in range(runs):
            log = Log.open(big)  # cold cache each run
            size, root = log.size, log.root
            picks = [rng.randrange(size) for _ in range(args.proofs)]
            t = time.perf_counter()
            proofs = [log.inclusion_proof(i) for i in picks]
            proof_rates.append(args.proofs / (time.perf_counter() - t))
            for i, p in zip(picks[:50], proofs[:50], strict=True):
                verify_inclusion(p, size, i, root, log.leaf_hash(i))
        summary(f"inclusion proofs ({args.proofs:,})", proof_rates, "proofs/s")

        audit = []
        for _ in range(runs):
            t = time.perf_counter()
            cp = verify_log(big, key.verifier)
            audit.append(time.perf_counter() - t)
            assert cp.size == args.leaves
        summary(f"audit ({args.leaves:,} leaves)", audit, "s", "{:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
