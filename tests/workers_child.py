"""Targets for tests/test_workers.py: tiny workers run by resolver.workers in real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from resolver import workers


def sleeper(spec: tuple[str, int]) -> None:
    """Write ``<dir>/<index>.<pid>``, then serve nothing until SIGTERM."""
    directory, index = spec

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        Path(directory, f"{index}.{os.getpid()}").touch()
        await stop.wait()
        Path(directory, f"{index}.{os.getpid()}.stopped").touch()

    workers.worker_main(main)


def crasher(spec: tuple[str, int]) -> None:
    sys.exit(3)


if __name__ == "__main__":
    kind, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = sleeper if kind == "sleeper" else crasher
    spawn = workers.spawner(target, "test-worker", lambda i: (directory, i))
    workers.run(
        "test", count, spawn, ready=lambda: print("ready", file=sys.stderr, flush=True), grace=5
    )
