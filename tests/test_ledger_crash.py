"""Kill a writing process at random moments; the log must always come back whole.

A child process (tests/ledger_crash_child.py) appends batches and prints an
ACK line after each published one. The parent SIGKILLs it at random points,
including during start-up and roll-forward, then reopens the log, audits every
file, and checks that every acknowledged batch is present, byte for byte, and
that every acknowledged checkpoint is a prefix of the current tree.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cityid.keys import SigningKey
from ledger.audit import verify_log
from ledger.merkle import verify_consistency
from ledger.storage import Log

sys.path.insert(0, str(Path(__file__).parent))
from ledger_crash_child import entry

CHILD = Path(__file__).parent / "ledger_crash_child.py"
ROOT = Path(__file__).resolve().parents[1]
KILLS = 50


def run_child(directory: Path, keyfile: Path, gen: int, rng: random.Random) -> list[list[str]]:
    """Start a child, kill it at a random moment, return the lines it printed."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory), str(keyfile), str(gen), str(rng.random())[2:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    # One run in five dies during start-up (possibly mid roll-forward); the
    # others after READY, once some batches have gone by.
    early = rng.random() < 0.2
    deadline = time.monotonic() + (rng.uniform(0.0, 0.3) if early else 30.0)
    buf = b""
    ready_at: float | None = None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline and proc.poll() is None:
        if sel.select(timeout=0.005):
            buf += proc.stdout.read() or b""
        if ready_at is None and b"READY" in buf:
            ready_at = time.monotonic()
            if not early:
                deadline = ready_at + rng.uniform(0.0, 0.25)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    sel.close()
    buf += proc.stdout.read() or b""
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child died on its own:\n{stderr}"
    # A line cut by the kill was never fully acknowledged.
    return [line.split() for line in buf.decode().split("\n")[:-1]]


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    key = SigningKey.generate("crash.example/log")
    keyfile = key.write(tmp_path / "log.key")
    directory = tmp_path / "log"
    acks: list[tuple[int, int, int, int, bytes]] = []  # gen, first, count, size, root
    kills_mid_batch = 0
    rolled_forward = 0
    start = time.monotonic()
    for gen in range(1, KILLS + 1):
        lines = run_child(directory, keyfile, gen, rng)
        new = [
            (int(g), int(f), int(c), int(s), bytes.fromhex(r))
            for tag, g, f, c, s, r in (ln for ln in lines if ln[0] == "ACK")
        ]
        acks += new
        kills_mid_batch += bool(new)
        if not directory.exists():
            continue  # killed before create() renamed the log into place
        state = (directory / ".private/state").read_text().split("\n")[1]
        published = (directory / "checkpoint").read_text().split("\n")[1]
        rolled_forward += state != published
        # Reopen as the writer (rolls forward what was signed), then audit.
        with Log.open(directory, key) as log:
            size = log.size
            root = log.root
            for _, _, _, ack_size, ack_root in new[-1:] + acks[-1:]:
                proof = log.consistency_proof(ack_size)
                verify_consistency(proof, size, root, ack_size, ack_root)
        cp = verify_log(directory, key.verifier)
        assert (cp.size, cp.root) == (size, root)
        if acks:
            assert size >= max(f + c for _, f, c, _, _ in acks)
    assert time.monotonic() - start < 120
    # Finally every acknowledged batch, byte for byte, and every acknowledged
    # checkpoint consistent with the final tree.
    log = Log.open(directory)
    entries = list(log.entries(0))
    for gen, first, count, ack_size, ack_root in acks:
        assert entries[first : first + count] == [
            entry(gen, i) for i in range(first, first + count)
        ]
        verify_consistency(log.consistency_proof(ack_size), log.size, log.root, ack_size, ack_root)
    print(f"{len(acks)} acks, {kills_mid_batch} runs appended, {rolled_forward} roll-forwards")
    assert kills_mid_batch >= KILLS // 2, "too few runs got as far as appending"
    assert len(acks) > KILLS
