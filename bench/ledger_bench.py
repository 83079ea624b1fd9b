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
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()
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
