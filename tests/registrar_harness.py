"""Shared helpers for the registrar tests and benchmark: real registrars on loopback.

Nothing here fakes a server. A registrar runs either in the test's own event
loop (:func:`serve_in_process`, through ``registrar.server.start_registrar``)
or as a child process (:class:`RegistrarProcess`, ``python -m cityid.cli
registrar serve DIR --listen 127.0.0.1:PORT``); both bind 127.0.0.1 only, on a
free port, and are ready once ``/healthz`` answers 200. Every wait is bounded
in time, and a child process is always ended by its own pid.

Checks shared by the suites:

* :func:`assert_refused`: a request is refused with the expected rule, the HTTP
  status and Handle ``responseCode`` agree with :mod:`cityid.handle`, and the
  published checkpoint is byte-for-byte the same afterwards;
* :func:`prove_receipts`: each acknowledged leaf has an inclusion proof (from
  authenticated tiles fetched over HTTP) under the checkpoint it was
  acknowledged with, also as a c2sp.org/tlog-proof;
* :func:`replay`: every leaf of a log decodes and applies in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from cityid.authority import Namespace
from cityid.errors import CityIdError
from cityid.handle import HTTP_STATUS, response_code
from cityid.identifiers import Identifier, Prefix
from cityid.keys import SigningKey, VerifierKey
from cityid.ops import Operation, SignedOperation, key_fingerprint
from ledger.audit import verify_log
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.client import LogClient
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.storage import Log
from ledger.tlogproof import TlogProof, verify_proof
from registrar.config import Anchor, RegistrarConfig

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
MSGPACK = "application/msgpack"
SERVE = (PYTHON, "-m", "cityid.cli", "registrar", "serve")

ROOT = Prefix.parse("MA.156")
CITY = Prefix.parse("MA.156.1301")
URBAN = Prefix.parse("MA.156.1301.01")
TRAFFIC = Prefix.parse("MA.156.1301.02")
HEALTH = Prefix.parse("MA.156.1301.05")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def new_key(name: str, directory: Path | None = None) -> SigningKey:
    """A fresh Ed25519 key; written to ``directory/<name>.key`` (mode 0600) if given."""
    key = SigningKey.generate(name)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        key.write(directory / f"{_safe(name)}.key")
        (directory / f"{_safe(name)}.vkey").write_text(f"{key.verifier}\n")
    return key


def key_path(directory: Path, key: SigningKey) -> Path:
    return directory / f"{_safe(key.name)}.key"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


# -- registrar directories ----------------------------------------------------------


@dataclass
class RegistrarSpec:
    """A registrar's data directory and the keys a test needs to drive it."""

    directory: Path
    prefix: Prefix
    origin: str
    log_key: SigningKey
    anchor: VerifierKey
    admin: SigningKey | None
    port: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_url(self) -> str:
        return f"{self.url}/log"

    @property
    def log_dir(self) -> Path:
        return self.directory / "log"

    @property
    def vkey(self) -> VerifierKey:
        return self.log_key.verifier

    @property
    def listen(self) -> str:
        return f"{HOST}:{self.port}"

    def config(self) -> RegistrarConfig:
        cfg = RegistrarConfig.load(self.directory)
        cfg.listen = self.listen
        return cfg

    def open_log(self) -> Log:
        """The log, read-only (safe while the registrar writes or after it died)."""
        return Log.open(self.log_dir)

    def namespace(self) -> Namespace:
        """A fresh namespace holding only this registrar's trust anchor."""
        ns = Namespace()
        ns.add_anchor(self.prefix, self.anchor.public_key, self.origin)
        return ns


def make_registrar(
    directory: Path,
    prefix: Prefix | str,
    origin: str,
    *,
    admin: SigningKey | None = None,
    anchor: VerifierKey | None = None,
    port: int | None = None,
    max_batch: int = 1000,
    max_delay_ms: int = 5,
) -> RegistrarSpec:
    """Create a registrar directory with ``RegistrarConfig`` (what ``registrar init`` writes).

    The anchor is ``admin``'s key (a fresh key written as ``admin.key`` when
    neither ``admin`` nor ``anchor`` is given).
    """
    prefix = Prefix.parse(str(prefix))
    directory.mkdir(parents=True, exist_ok=True)
    log_key = SigningKey.generate(origin)
    log_key.write(directory / "log.key")
    (directory / "log.vkey").write_text(f"{log_key.verifier}\n")
    if anchor is None:
        if admin is None:
            admin = SigningKey.generate(_safe(str(prefix)) + "-admin")
            admin.write(directory / "admin.key")
        anchor = admin.verifier
    port = free_port() if port is None else port
    cfg = RegistrarConfig(
        directory=directory,
        origin=origin,
        log_key_file=directory / "log.key",
        anchors=[Anchor(prefix, anchor)],
        listen=f"{HOST}:{port}",
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
    )
    cfg.save()
    return RegistrarSpec(directory, prefix, origin, log_key, anchor, admin, port)


def init_with_cli(
    directory: Path,
    prefix: str,
    origin: str,
    *,
    prefix_key: Path | None = None,
    port: int | None = None,
    max_delay_ms: int = 5,
) -> RegistrarSpec:
    """``cityid registrar init`` in a child process; the spec read back from its files."""
    port = free_port() if port is None else port
    args = ["registrar", "init", str(directory), "--prefix", prefix, "--origin", origin]
    args += ["--listen", f"{HOST}:{port}", "--max-delay-ms", str(max_delay_ms)]
    if prefix_key is not None:
        args += ["--prefix-key", str(prefix_key)]
    res = cli(*args)
    if res.returncode != 0:
        raise AssertionError(f"registrar init failed: {res.stderr}")
    cfg = RegistrarConfig.load(directory)
    admin = SigningKey.read(directory / "admin.key") if prefix_key is None else None
    return RegistrarSpec(
        directory,
        cfg.anchors[0].prefix,
        cfg.origin,
        cfg.log_key(),
        cfg.anchors[0].key,
        admin,
        port,
    )


# -- running a registrar --------------------------------------------------------------


@dataclass
class Running:
    spec: RegistrarSpec
    registrar: Any  # registrar.core.Registrar
    runner: Any  # aiohttp.web.AppRunner

    @property
    def url(self) -> str:
        return self.spec.url


@contextlib.asynccontextmanager
async def serve_in_process(spec: RegistrarSpec, *, attempts: int = 3) -> AsyncIterator[Running]:
    """Serve ``spec`` in this event loop on 127.0.0.1 (a new free port if the first is taken)."""
    from registrar.server import start_registrar

    for attempt in range(attempts):
        try:
            reg, runner = await start_registrar(spec.config())
            break
        except CityIdError as e:
            if e.rule != "listen" or attempt == attempts - 1:
                raise
            spec.port = free_port()
    try:
        async with aiohttp.ClientSession() as s:
            await wait_healthy(s, spec.url, timeout=10)
        yield Running(spec, reg, runner)
    finally:
        await runner.cleanup()


async def wait_healthy(session: aiohttp.ClientSession, url: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{url}/healthz") as r:
                if r.status == 200:
                    return
                last = r.status
        except aiohttp.ClientError as e:
            last = e
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{url}/healthz not ready after {timeout} s (last: {last})")


class RegistrarProcess:
    """``python -m cityid.cli registrar serve DIR --listen 127.0.0.1:PORT`` as a child."""

    def __init__(self, spec: RegistrarSpec, *, log_name: str = "serve.log") -> None:
        self.spec = spec
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = spec.directory / log_name
        self.starts = 0

    @property
    def url(self) -> str:
        return self.spec.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        """Start the child without waiting for it to be ready."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as out:
            out.write(f"--- start {self.starts} on {self.spec.listen}\n".encode())
            self.proc = subprocess.Popen(
                [*SERVE, str(self.spec.directory), "--listen", self.spec.listen],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=cli_env(),
            )

    def start(self, *, timeout: float = 20.0, attempts: int = 3) -> RegistrarProcess:
        """Spawn and wait for ``/healthz``; on a port clash, retry on another free port."""
        for attempt in range(attempts):
            self.spawn()
            try:
                self.wait_ready(timeout=timeout)
                return self
            except RuntimeError:
                if "cannot listen" not in self.output() or attempt == attempts - 1:
                    raise
                self.spec.port = free_port()
        raise AssertionError("unreachable")

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"registrar exited with {self.proc.returncode}:\n{self.output()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"registrar not ready after {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last batch, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (the registrar finishes its batch); SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def __enter__(self) -> RegistrarProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


# -- the command line ----------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CITYID_REGISTRAR"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m cityid.cli ARGS`` in a child process; stdout and stderr captured."""
    return subprocess.run(
        [PYTHON, "-m", "cityid.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=cli_env(**env),
        check=False,
    )


# -- talking to a registrar ------------------------------------------------------------


def sign(op: Operation, key: SigningKey) -> bytes:
    """The leaf a client sends: ``op`` signed by ``key``, canonical msgpack."""
    return SignedOperation.sign(op, key).encode()


def forge(leaf: bytes) -> bytes:
    """``leaf`` with one byte of its signature (the last 64 bytes) flipped."""
    return leaf[:-1] + bytes([leaf[-1] ^ 0x01])


async def post_ops(
    session: aiohttp.ClientSession, url: str, leaves: Sequence[bytes]
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{url}/api/ops",
        data=msgpack.packb(list(leaves), use_bin_type=True),
        headers={"Content-Type": MSGPACK},
    ) as r:
        return r.status, await r.json(content_type=None)


async def submit(
    session: aiohttp.ClientSession, url: str, leaves: Sequence[bytes]
) -> dict[str, Any]:
    """POST leaves that must be accepted; returns the body (receipts, checkpoint)."""
    status, body = await post_ops(session, url, leaves)
    if status != 200:
        raise AssertionError(f"refused ({status}): {body}")
    assert body["responseCode"] == 1
    assert len(body["receipts"]) == len(leaves)
    return body


async def checkpoint_bytes(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(f"{url}/log/checkpoint") as r:
        assert r.status == 200, r.status
        return await r.read()


async def version(
    session: aiohttp.ClientSession, url: str, ident: Identifier | str
) -> tuple[int, bool]:
    async with session.get(f"{url}/api/version/{ident}") as r:
        body = await r.json()
        assert r.status == 200, body
        return int(body["version"]), bool(body["exists"])


def expected_codes(exc: type[CityIdError]) -> tuple[int, int]:
    """(HTTP status, Handle responseCode) that :mod:`cityid.handle` gives ``exc``."""
    code = response_code(exc("probe"))
    return HTTP_STATUS[code], code


@dataclass
class Refusal:
    status: int
    body: dict[str, Any]
    checkpoint: bytes = field(repr=False, default=b"")


async def assert_refused(
    session: aiohttp.ClientSession,
    url: str,
    leaves: Sequence[bytes],
    *,
    rule: str,
    exc: type[CityIdError],
    signer: SigningKey | None = None,
) -> Refusal:
    """POST ``leaves``; insist on a refusal by ``rule`` that leaves the ledger unchanged."""
    before = await checkpoint_bytes(session, url)
    status, body = await post_ops(session, url, leaves)
    after = await checkpoint_bytes(session, url)
    assert body.get("rule") == rule, body
    want_status, want_code = expected_codes(exc)
    assert (status, body["responseCode"]) == (want_status, want_code), (status, body)
    assert status == HTTP_STATUS[body["responseCode"]]
    if signer is not None:
        assert key_fingerprint(signer.public_key) in body["message"], body
    assert after == before, f"checkpoint changed after a refusal ({rule})"
    return Refusal(status, body, after)


# -- proofs and audits --------------------------------------------------------------


async def prove_receipts(
    session: aiohttp.ClientSession,
    spec: RegistrarSpec,
    leaves: Sequence[bytes],
    body: dict[str, Any],
) -> Checkpoint:
    """Each leaf's receipt index is proven, from authenticated tiles, under the returned checkpoint.

    Also checks the returned note is signed by the log key and that the same
    proof verifies as a c2sp.org/tlog-proof file.
    """
    note = body["checkpoint"].encode()
    cp, _ = open_checkpoint(note, spec.vkey, origin=spec.origin)
    client = LogClient(spec.log_url, spec.vkey, session)
    indexes = [r["index"] for r in body["receipts"]]
    assert indexes == list(range(indexes[0], indexes[0] + len(leaves))), indexes
    for leaf, index in zip(leaves, indexes, strict=True):
        assert index < cp.size
        proof = await client.inclusion_proof(index, cp)
        verify_inclusion(proof, cp.size, index, cp.root, leaf_hash(leaf))
        file = TlogProof(index, tuple(proof), note).encode()
        verify_proof(TlogProof.parse(file), spec.vkey, leaf, index=index)
    return cp


def logged_leaf(spec: RegistrarSpec, index: int) -> bytes:
    log = spec.open_log()
    return next(log.entries(index, index + 1))


def replay(spec: RegistrarSpec, ns: Namespace | None = None, start: int = 0) -> Namespace:
    """Decode and apply every leaf of the published log from ``start`` (a fresh namespace)."""
    ns = spec.namespace() if ns is None else ns
    log = spec.open_log()
    for i, leaf in enumerate(log.entries(start, log.size), start):
        try:
            ns.apply(SignedOperation.decode(leaf), log=spec.origin)
        except CityIdError as e:
            raise AssertionError(f"{spec.origin}: leaf {i} does not replay: {e.message}") from e
    return ns


def audit(spec: RegistrarSpec) -> Checkpoint:
    """``ledger.audit.verify_log`` over the whole log directory."""
    return verify_log(spec.log_dir, spec.vkey)
