"""The worker supervisor shared by the resolver's HTTP and DNS servers, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE}"}


def _start(kind: str, directory: Path, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "workers_child.py"), kind, str(directory), str(count)],
        stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


def _until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(directory: Path) -> dict[int, int]:
    """index -> pid of each worker that started and has not stopped."""
    out = {}
    for f in directory.iterdir():
        parts = f.name.split(".")
        if len(parts) == 2 and not Path(f"{f}.stopped").exists():
            with_pid = int(parts[1])
            try:
                os.kill(with_pid, 0)
            except ProcessLookupError:
                continue
            out[int(parts[0])] = with_pid
    return out


def test_a_killed_worker_is_restarted_and_sigterm_stops_all_cleanly(tmp_path: Path) -> None:
    proc = _start("sleeper", tmp_path, 2)
    try:
        _until(lambda: len(_alive(tmp_path)) == 2, "two workers")
        first = _alive(tmp_path)
        os.kill(first[0], signal.SIGKILL)
        _until(lambda: _alive(tmp_path).get(0, first[0]) != first[0], "worker 0 restarted")
        assert _alive(tmp_path)[1] == first[1]  # the other one was left alone
        pids = list(_alive(tmp_path).values())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "worker 0 exited" in err and "restarting" in err and "stopping" in err
    # Every worker got SIGTERM and finished its own shutdown (no kill needed).
    for pid in pids:
        assert any(f.name.endswith(f".{pid}.stopped") for f in tmp_path.iterdir())


def test_workers_that_keep_dying_stop_the_service(tmp_path: Path) -> None:
    proc = _start("crasher", tmp_path, 1)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "workers keep dying; stopping" in err and "Traceback" not in err
