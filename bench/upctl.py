"""A real ``cityid up`` for the benchmarks: its config on free loopback ports, start, stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from cityid.valkey import free_port

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "cityid.cli"]


def write_config(data: Path, assets: int = 0) -> dict[str, int]:
    """A ``cityid.toml`` in ``data`` with every listener on a free port; the ports."""
    ports = {name: free_port() for name in ("root", "city", "w1", "w2", "http", "dns")}
    data.mkdir(parents=True, exist_ok=True)
    (data / "cityid.toml").write_text(
        f'[root]\nlisten = "127.0.0.1:{ports["root"]}"\n'
        f'[city]\nlisten = "127.0.0.1:{ports["city"]}"\n'
        f'[witnesses]\nlisten = ["127.0.0.1:{ports["w1"]}", "127.0.0.1:{ports["w2"]}"]\n'
        f'[resolver]\nhttp = "127.0.0.1:{ports["http"]}"\ndns = "127.0.0.1:{ports["dns"]}"\n'
        f"[demo]\nassets = {assets}\n"
    )
    return ports


def start_up(data: Path, log: Path, timeout: float = 600) -> subprocess.Popen[bytes]:
    """``cityid up`` on ``data``, returned once ready (every log loaded); output into ``log``."""
    ready = data / "ready.json"
    ready.unlink(missing_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen([*CLI, "up", "--data", str(data), "--ready-file", str(ready)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO)  # fmt: skip
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_up(proc)
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"cityid up did not come up; the end of {log}:\n{tail}")
        time.sleep(0.2)
    return proc


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a terminal would; killed if it is not gone within a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
