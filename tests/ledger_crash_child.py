"""Crash-test child: append batches to a log forever, acknowledging each one.

Run as ``python tests/ledger_crash_child.py DIR KEYFILE GEN SEED``. Prints
``READY <size>`` once the log is open (after any roll-forward), then one line
``ACK <gen> <first> <count> <size> <root-hex>`` per published batch, flushed
before the next batch starts. The parent SIGKILLs it at random moments.
Entry contents depend on (gen, index) so the parent can recompute them.
``LEDGER_PARTIAL_GRACE`` (seconds), if set, is the log's ``partial_grace``, so
kills also land while superseded partials are being deleted.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from cityid.keys import SigningKey
from ledger.storage import DEFAULT_PARTIAL_GRACE, Log


def entry(gen: int, index: int) -> bytes:
    pad = (index * 7919 + gen) % 90
    return f"gen {gen} index {index} ".encode() + bytes([65 + index % 26]) * pad


def main() -> None:
    directory, keyfile, gen, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    key = SigningKey.read(keyfile)
    rng = random.Random(seed)
    grace = float(os.environ.get("LEDGER_PARTIAL_GRACE", DEFAULT_PARTIAL_GRACE))
    # create() renames a complete log into place, so "exists" means "whole".
    if Path(directory).exists():
        log = Log.open(directory, key, partial_grace=grace)
    else:
        log = Log.create(directory, key, partial_grace=grace)
    print(f"READY {log.size}", flush=True)
    while True:
        first = log.signed_size
        count = rng.choice((1, 2, rng.randint(1, 50), rng.randint(1, 300)))
        entries = [entry(gen, i) for i in range(first, first + count)]
        if rng.random() < 0.5:
            log.append(entries)
        else:
            log.publish(log.stage(entries))
        print(f"ACK {gen} {first} {count} {log.size} {log.root.hex()}", flush=True)


if __name__ == "__main__":
    main()
