"""c2sp.org/tlog-witness: a witness server, its client, and quorum gathering for logs.

A witness keeps, for each log it knows, the latest checkpoint it cosigned. It
cosigns a new checkpoint only if the log signed it and a consistency proof
shows it extends that latest checkpoint, so it never cosigns two views of one
log that disagree (a split view) nor goes backwards (a rollback). That record
is the whole of its state; losing it would let the log fork it, so it is
written crash-safely (temp file, fsync, rename, fsync the directory) *before*
any cosignature leaves.

Three layers:

- :class:`Witness`, the synchronous state machine: request bytes in,
  ``(status, body, content type)`` out. No HTTP, so it is tested directly.
- :func:`witness_app`, the aiohttp shell serving ``POST /add-checkpoint``, and
  :func:`start_witness`, which serves it with bounded connections and bodies
  (:mod:`cityid.httpedge`).
- :class:`WitnessClient`, :func:`gather_cosignatures` and
  :func:`make_cosigner`, used by a log to collect a policy's quorum of
  cosignatures before publishing a checkpoint (the sequencer's ``cosign``
  hook).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import inspect
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from aiohttp import web

from cityid.durable import atomic_write
from cityid.errors import LedgerError, ListenError, NoteError, ProofError, WitnessError
from cityid.httpedge import (
    EDGE_KEY,
    Edge,
    EdgeLimits,
    EdgeRefusal,
    EdgeSite,
    edge_middleware,
    use_server_name,
)
from cityid.keys import SigningKey, VerifierKey

from .checkpoint import Checkpoint
from .cosignature import cosign, cosigner_vkey, matches, verify_cosignature
from .merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from .note import MAX_NOTE_SIZE, SIG_PREFIX, Signature, add_signatures, open_note, parse_note
from .policy import Policy
from .session import SessionUser

CONTENT_TYPE_SIZE = "text/x.tlog.size"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
# The spec caps a consistency proof at 63 lines (enough for 2^63 leaves).
MAX_PROOF_LINES = 63
MAX_REQUEST_SIZE = MAX_NOTE_SIZE + 4096
# Evidence of log misbehaviour kept per log; only the log's own key can produce
# it (the signature is checked first), but a buggy log should not fill the disk.
MAX_EVIDENCE_PER_LOG = 64

_SIZE_RE = re.compile(rb"0|[1-9][0-9]{0,19}")


# --- the add-checkpoint request --------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """``old <size>``, proof lines, a blank line, then the signed checkpoint note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: bytes

    def encode(self) -> bytes:
        lines = [f"old {self.old_size}\n".encode()]
        lines += [base64.b64encode(h) + b"\n" for h in self.proof]
        return b"".join(lines) + b"\n" + self.note

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Parse a request body; :class:`WitnessError` (rule ``bad-request``) names the fault."""
        if len(body) > MAX_REQUEST_SIZE:
            raise WitnessError(
                f"request is larger than {MAX_REQUEST_SIZE} bytes", rule="bad-request"
            )
        end = body.find(b"\n")
        if end < 0 or not body.startswith(b"old "):
            raise WitnessError("request must start with an 'old <size>' line", rule="bad-request")
        size_s = body[4:end]
        if not _SIZE_RE.fullmatch(size_s):
            raise WitnessError(
                f"old size {size_s[:40]!r} is not a decimal without leading zeros",
                rule="bad-request",
            )
        pos = end + 1
        proof: list[bytes] = []
        while True:
            end = body.find(b"\n", pos)
            if end < 0:
                raise WitnessError(
                    "request has no blank line before the checkpoint", rule="bad-request"
                )
            line = body[pos:end]
            pos = end + 1
            if not line:
                break
            if len(proof) == MAX_PROOF_LINES:
                raise WitnessError(
                    f"more than {MAX_PROOF_LINES} consistency proof lines", rule="bad-request"
                )
            try:
                h = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError) as e:
                raise WitnessError(
                    f"proof line {len(proof) + 1} is not base64", rule="bad-request"
                ) from e
            if len(h) != HASH_SIZE:
                raise WitnessError(
                    f"proof line {len(proof) + 1} is {len(h)} bytes, want {HASH_SIZE}",
                    rule="bad-request",
                )
            proof.append(h)
        return cls(int(size_s), tuple(proof), body[pos:])


class WitnessResponse(NamedTuple):
    """What the witness answers: HTTP status, body, and its content type."""

    status: int
    body: bytes
    content_type: str = CONTENT_TYPE_TEXT


def _error(status: int, message: str) -> WitnessResponse:
    return WitnessResponse(status, (message + "\n").encode())


def _size_conflict(size: int) -> WitnessResponse:
    # The body is only the size: the log reads it to retry with the right proof.
    return WitnessResponse(409, f"{size}\n".encode(), CONTENT_TYPE_SIZE)


# --- persistent per-log state ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogState:
    """The latest checkpoint a witness cosigned for one log (kept as the signed note)."""

    checkpoint: Checkpoint
    note: bytes

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


class WitnessState:
    """One file per log under ``dir``: the last cosigned checkpoint note, verbatim.

    Keeping the log-signed note (not just size and root) makes the state its
    own evidence: it shows what the log signed, should it later fork.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "evidence").mkdir(exist_ok=True)

    @staticmethod
    def _key(origin: str) -> str:
        # Origins are URLs with slashes; a hash gives a safe, fixed-length name.
        return hashlib.sha256(origin.encode()).hexdigest()[:32]

    def path(self, origin: str) -> Path:
        return self.dir / f"{self._key(origin)}.checkpoint"

    def load(self, origin: str) -> LogState | None:
        p = self.path(origin)
        try:
            note = p.read_bytes()
        except FileNotFoundError:
            return None
        try:
            text, _ = parse_note(note)
            cp = Checkpoint.parse(text)
        except NoteError as e:
            # Never guess: a witness that lost its state must not start over at 0.
            raise WitnessError(
                f"witness state {p} is corrupt: {e.message}", rule="witness-state-corrupt"
            ) from e
        if cp.origin != origin:
            raise WitnessError(
                f"witness state {p} holds origin {cp.origin!r}, not {origin!r}",
                rule="witness-state-corrupt",
            )
        return LogState(cp, note)

    def save(self, state: LogState) -> None:
        atomic_write(self.path(state.checkpoint.origin), state.note)

    def record_evidence(self, origin: str, kind: str, body: bytes, now: int) -> None:
        key = self._key(origin)
        ev = self.dir / "evidence"
        if sum(1 for _ in ev.glob(f"{key}-*")) >= MAX_EVIDENCE_PER_LOG:
            return
        with contextlib.suppress(OSError):
            atomic_write(ev / f"{key}-{now}-{kind}-{os.urandom(4).hex()}.req", body)


# --- the witness state machine ------------------------------------------------------


class Witness:
    """A c2sp.org/tlog-witness for the logs whose keys it is given.

    ``key`` is the witness's Ed25519 key; it cosigns with the derived
    cosignature/v1 (alg 0x04) key ID. ``logs`` are the logs' checkpoint
    verifier keys; a log's origin is its key's name. ``state_dir`` holds the
    per-log state and is locked against a second witness process.
    """

    def __init__(
        self,
        key: SigningKey,
        logs: Iterable[VerifierKey],
        state_dir: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.vkey = cosigner_vkey(key)
        self.logs: dict[str, list[VerifierKey]] = {}
        for v in logs:
            if v.alg != 0x01:
                raise WitnessError(
                    f"log key {v.name} is not an Ed25519 checkpoint key (0x01)",
                    rule="witness-log-key",
                )
            self.logs.setdefault(v.name, []).append(v)
        self.state = WitnessState(state_dir)
        self._clock = clock
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Two processes on one state directory could interleave check and
        # persist and roll a log back; an exclusive flock rules that out.
        self._lock_fd: int | None = os.open(self.state.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise WitnessError(
                f"witness state {self.state.dir} is in use by another witness process",
                rule="witness-state-locked",
            ) from e

    @property
    def name(self) -> str:
        return self.key.name

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> Witness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _lock(self, origin: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(origin, threading.Lock())

    def latest(self, origin: str) -> LogState | None:
        """The last checkpoint cosigned for ``origin``."""
        return self.state.load(origin)

    def add_checkpoint(self, body: bytes) -> WitnessResponse:
        """Handle one ``add-checkpoint`` request body (blocking: it may fsync)."""
        if self._lock_fd is None:
            # Closed: another process may own the state now; never answer from it.
            return _error(503, "witness is shut down")
        try:
            req = AddCheckpointRequest.parse(body)
        except WitnessError as e:
            return _error(400, e.message)
        try:
            text, _ = parse_note(req.note)
        except NoteError as e:
            return _error(400, f"checkpoint note: {e.message}")
        origin = text.split("\n", 1)[0]
        keys = self.logs.get(origin)
        if keys is None:
            return _error(404, f"unknown log origin {origin[:200]!r}")
        try:
            open_note(req.note, keys)
        except NoteError as e:
            return _error(403, f"checkpoint is not signed by a known key of {origin}: {e.message}")
        try:
            cp = Checkpoint.parse(text)
        except NoteError as e:
            return _error(400, f"checkpoint: {e.message}")
        if req.old_size > cp.size:
            return _error(400, f"old size {req.old_size} is larger than checkpoint size {cp.size}")
        if req.old_size == 0 and req.proof:
            return _error(400, "the consistency proof must be empty when the old size is 0")
        # Check and persist under one lock: otherwise two requests could both
        # pass the check and the smaller one be stored last (a rollback).
        with self._lock(origin):
            try:
                state = self.state.load(origin)
            except WitnessError as e:
                return _error(500, e.message)
            cur_size = state.size if state else 0
            cur_root = state.root if state else EMPTY_ROOT
            if req.old_size != cur_size:
                return _size_conflict(cur_size)
            now = int(self._clock())
            if cp.size == cur_size:
                if cp.root != cur_root:
                    self.state.record_evidence(origin, "fork", body, now)
                    return _size_conflict(cur_size)
            else:
                try:
                    verify_consistency(req.proof, cp.size, cp.root, cur_size, cur_root)
                except ProofError as e:
                    self.state.record_evidence(origin, "bad-proof", body, now)
                    return _error(422, f"consistency proof does not verify: {e.message}")
                try:
                    self.state.save(LogState(cp, req.note))
                except OSError as e:
                    # Not persisted, so not cosigned: the log retries later.
                    return _error(500, f"cannot persist witness state: {e.strerror}")
        sig = cosign(text, self.key, now)
        return WitnessResponse(200, sig.line().encode(), CONTENT_TYPE_TEXT)


# --- the HTTP shell -----------------------------------------------------------------------


WITNESS_KEY: web.AppKey[Witness] = web.AppKey("witness", Witness)


def witness_app(witness: Witness, *, prefix: str = "", edge: Edge | None = None) -> web.Application:
    """An aiohttp app serving ``POST <prefix>/add-checkpoint`` for ``witness``.

    Also ``GET <prefix>/`` (what it witnesses), ``/healthz`` and ``/metrics``.
    ``edge`` bounds its bodies and counts its refusals; :func:`start_witness`
    serves the app through it.
    """
    edge = edge or Edge("witness")
    use_server_name()
    app = web.Application(client_max_size=MAX_REQUEST_SIZE, middlewares=[edge_middleware])
    app[WITNESS_KEY] = witness
    app[EDGE_KEY] = edge
    base = prefix.rstrip("/")

    async def add_checkpoint(request: web.Request) -> web.Response:
        try:
            async with edge.body(request, MAX_REQUEST_SIZE) as body:
                data = await body.read()
        except EdgeRefusal as e:
            resp = _reply(_error(e.status, e.message))
            if e.retry_after is not None:
                resp.headers["Retry-After"] = str(e.retry_after)
            if e.close:
                resp.force_close()
            return resp
        # The state machine fsyncs; run it off the event loop.
        return _reply(await asyncio.to_thread(witness.add_checkpoint, data))

    async def index(request: web.Request) -> web.Response:
        lines = [f"c2sp.org/tlog-witness {witness.name}", f"vkey {witness.vkey}"]
        lines += [f"log {o}" for o in sorted(witness.logs)]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n", content_type="text/plain")

    async def metrics(request: web.Request) -> web.Response:
        lines = edge.prometheus("cityid_witness")
        lines += [
            "# HELP cityid_witness_logs Logs this witness cosigns.",
            "# TYPE cityid_witness_logs gauge",
            f"cityid_witness_logs {len(witness.logs)}",
        ]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    app.router.add_post(base + "/add-checkpoint", add_checkpoint)
    app.router.add_get(base + "/", index)
    app.router.add_get(base + "/healthz", healthz)
    app.router.add_get(base + "/metrics", metrics)
    return app


def _reply(resp: WitnessResponse) -> web.Response:
    return web.Response(
        status=resp.status, body=resp.body, headers={"Content-Type": resp.content_type}
    )


async def start_witness(
    witness: Witness, host: str, port: int, *, limits: EdgeLimits | None = None
) -> web.AppRunner:
    """Serve ``witness`` on ``host:port`` with bounded connections and bodies.

    Raises :class:`~cityid.errors.ListenError` if the address cannot be bound;
    ``runner.cleanup()`` stops it.
    """
    edge = Edge("witness", limits)
    app = witness_app(witness, edge=edge)
    runner = web.AppRunner(app, handle_signals=False, **edge.runner_kwargs())
    await runner.setup()
    try:
        await EdgeSite(runner, edge, host, port).start()
    except OSError as e:
        await runner.cleanup()
        raise ListenError(f"{host}:{port}", e.strerror or str(e)) from e
    return runner


# --- the client side: a log asking witnesses ---------------------------------------------


class WitnessConflict(WitnessError):
    """409: the witness's latest cosigned size for the log is not the ``old`` we sent."""

    rule = "witness-conflict"

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    # A witness reply is a few lines; never buffer an unbounded body.
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(16384):
        buf += chunk
        if len(buf) > limit:
            raise WitnessError(
                f"reply from {resp.url} exceeds {limit} bytes", rule="witness-bad-reply"
            )
    return bytes(buf)


class WitnessClient(SessionUser):
    """Talks ``add-checkpoint`` to one witness at ``url`` (its submission prefix).

    ``vkey`` is the witness's cosignature key (alg 0x04); replies are verified
    against it. The client remembers, per log origin, the size the witness
    last cosigned, so the next request carries the right ``old`` line.
    """

    def __init__(
        self,
        url: str,
        vkey: VerifierKey,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if vkey.alg != 0x04:
            raise WitnessError(
                f"witness key {vkey.name} is not a cosignature/v1 (0x04) key",
                rule="cosignature-key-type",
            )
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.vkey = vkey
        super().__init__(session)
        self.sizes: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.vkey.name

    async def add_checkpoint(
        self, note: bytes, old_size: int, proof: Sequence[bytes], *, timeout: float = 10.0
    ) -> Signature:
        """Submit ``note``; return the witness's verified cosignature.

        Raises :class:`WitnessConflict` (with the witness's size) on 409 and
        :class:`WitnessError` for any other refusal, a timeout or a bad reply.
        """
        text, _ = parse_note(note)
        cp = Checkpoint.parse(text)
        body = AddCheckpointRequest(old_size, tuple(proof), note).encode()
        try:
            async with self.session.post(
                self.url,
                data=body,
                timeout=aiohttp.ClientTimeout(total=timeout),
                headers={"Content-Type": CONTENT_TYPE_TEXT},
            ) as resp:
                data = await _read_limited(resp, MAX_REQUEST_SIZE)
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except TimeoutError as e:
            raise WitnessError(
                f"witness {self.name} timed out after {timeout}s", rule="witness-timeout"
            ) from e
        except aiohttp.ClientError as e:
            raise WitnessError(
                f"witness {self.name} at {self.url} is unreachable: {e}", rule="witness-unreachable"
            ) from e
        if status == 409 and ctype.split(";")[0].strip() == CONTENT_TYPE_SIZE:
            s = data.strip()
            if not _SIZE_RE.fullmatch(s):
                raise WitnessError(
                    f"witness {self.name} sent a bad 409 body {data[:40]!r}",
                    rule="witness-bad-reply",
                )
            size = int(s)
            self.sizes[cp.origin] = size
            raise WitnessConflict(
                f"witness {self.name} has cosigned {cp.origin} at size {size}, not {old_size}",
                size,
            )
        if status != 200:
            reason = data[:300].decode("utf-8", "replace").strip()
            raise WitnessError(
                f"witness {self.name} answered {status}: {reason}", rule=f"witness-http-{status}"
            )
        sig = self._verify_reply(text, note, data)
        self.sizes[cp.origin] = cp.size
        return sig

    def _verify_reply(self, text: str, note: bytes, data: bytes) -> Signature:
        # The spec's recipe: the reply is signature lines; append them to the
        # note, parse, and keep the one by this witness's key if it verifies.
        if not data.endswith(b"\n") or not data.startswith(SIG_PREFIX.encode()):
            raise WitnessError(
                f"witness {self.name} reply is not note signature lines", rule="witness-bad-reply"
            )
        try:
            _, sigs = parse_note(note + data)
        except NoteError as e:
            raise WitnessError(
                f"witness {self.name} reply is malformed: {e.message}", rule="witness-bad-reply"
            ) from e
        for sig in sigs:
            if matches(sig, self.vkey):
                try:
                    verify_cosignature(text, sig, self.vkey)
                except NoteError as e:
                    raise WitnessError(
                        f"witness {self.name}: {e.message}", rule="witness-bad-cosignature"
                    ) from e
                return sig
        raise WitnessError(
            f"witness {self.name} replied without a cosignature by its key",
            rule="witness-bad-reply",
        )


ProofProvider = Callable[[int, int], Sequence[bytes] | Awaitable[Sequence[bytes]]]


async def _call_proof(provider: ProofProvider, old: int, new: int) -> list[bytes]:
    if old == 0 or old == new:
        return []
    got: Any = provider(old, new)
    if inspect.isawaitable(got):
        got = await got
    return list(got)


async def _cosign_one(
    client: WitnessClient,
    note: bytes,
    cp: Checkpoint,
    start: int,
    proof_provider: ProofProvider,
    timeout: float,
) -> Signature:
    proof = await _call_proof(proof_provider, start, cp.size)
    try:
        return await client.add_checkpoint(note, start, proof, timeout=timeout)
    except WitnessConflict as c:
        if c.size == start:
            # Same size, other root: the witness saw a different tree. Never retry.
            raise WitnessError(
                f"witness {client.name} holds a different checkpoint of {cp.origin} at size "
                f"{c.size}: possible fork",
                rule="witness-fork",
            ) from c
        if c.size > cp.size:
            raise WitnessError(
                f"witness {client.name} has cosigned {cp.origin} at size {c.size}, beyond this "
                f"checkpoint's {cp.size}: the log rolled back or forked",
                rule="witness-ahead",
            ) from c
        # One retry, from the size the witness told us.
        proof = await _call_proof(proof_provider, c.size, cp.size)
        return await client.add_checkpoint(note, c.size, proof, timeout=timeout)


async def gather_cosignatures(
    note: bytes,
    witnesses: Sequence[WitnessClient],
    policy: Policy,
    *,
    old_size: int | Mapping[str, int] | None = None,
    proof_provider: ProofProvider,
    timeout: float = 5.0,
    wait_all: bool = False,
) -> bytes:
    """Ask every witness to cosign ``note`` at once; return it with the cosignatures added.

    Each witness is sent the size it last cosigned (remembered by its client),
    else ``old_size`` (one size for all, or per witness key name), else 0; a
    409 answer is retried once from the size the witness names, with a proof
    from ``proof_provider(old, new)`` (sync or async). Returns as soon as the
    policy's quorum is met (or, with ``wait_all``, when every witness answered
    or ``timeout`` seconds passed). Raises :class:`WitnessError` listing each
    witness's failure if the quorum is not met by the deadline.
    """
    text, _ = parse_note(note)
    cp = Checkpoint.parse(text)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def policy_name(c: WitnessClient) -> str | None:
        for name, w in policy.witnesses.items():
            if w.vkey == c.vkey:
                return name
        return None

    def start_size(c: WitnessClient) -> int:
        if cp.origin in c.sizes:
            s = c.sizes[cp.origin]
        elif isinstance(old_size, Mapping):
            s = old_size.get(c.name, 0)
        else:
            s = old_size or 0
        return s if s <= cp.size else 0

    tasks: dict[asyncio.Task[Signature], WitnessClient] = {
        asyncio.create_task(_cosign_one(c, note, cp, start_size(c), proof_provider, timeout)): c
        for c in witnesses
    }
    sigs: dict[WitnessClient, Signature] = {}
    errors: dict[str, str] = {}
    cosigned: set[str] = set()
    pending: set[asyncio.Task[Signature]] = set(tasks)
    try:
        while pending and not (not wait_all and policy.satisfied(cosigned)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                c = tasks[t]
                exc = t.exception()
                if exc is None:
                    sigs[c] = t.result()
                    if (n := policy_name(c)) is not None:
                        cosigned.add(n)
                elif isinstance(exc, LedgerError):
                    errors[c.name] = exc.message
                else:
                    errors[c.name] = f"{type(exc).__name__}: {exc}"
    finally:
        for t in pending:
            t.cancel()
            errors.setdefault(tasks[t].name, f"no answer within {timeout}s")
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if not policy.satisfied(cosigned):
        missing = [w for w in policy.quorum_witnesses() if w not in cosigned]
        detail = "; ".join(f"{n}: {m}" for n, m in errors.items()) or "no witness configured"
        raise WitnessError(
            f"checkpoint {cp.origin} size {cp.size} did not reach the witness quorum "
            f"{policy.describe_quorum()}: cosigned by {', '.join(sorted(cosigned)) or 'none'}; "
            f"missing {', '.join(missing)} ({detail})",
            rule="quorum-not-met",
        )
    ordered = [sigs[c] for c in witnesses if c in sigs]
    return add_signatures(note, ordered)


def clients_from_policy(
    policy: Policy, *, session: aiohttp.ClientSession | None = None
) -> list[WitnessClient]:
    """A client for each policy witness that has a URL."""
    return [
        WitnessClient(w.url, w.vkey, session=session) for w in policy.witnesses.values() if w.url
    ]


def make_cosigner(
    log: Any,
    witnesses: Sequence[WitnessClient] | None,
    policy: Policy,
    timeout: float = 5.0,
) -> Callable[[bytes], Awaitable[bytes]]:
    """The sequencer's ``cosign`` hook: staged note in, quorum-cosigned note out.

    ``log`` provides ``consistency_proof(old, new)`` (a :class:`ledger.storage.Log`);
    proofs are computed in a thread since they read tiles from disk.
    ``witnesses`` defaults to the policy's witnesses that have URLs. The
    clients remember each witness's size between calls, so after the first
    batch every request carries the right ``old`` line and needs no retry.
    """
    clients = list(witnesses) if witnesses is not None else clients_from_policy(policy)

    async def proof(old: int, new: int) -> list[bytes]:
        return list(await asyncio.to_thread(log.consistency_proof, old, new))

    async def cosigner(note: bytes) -> bytes:
        return await gather_cosignatures(
            note, clients, policy, proof_provider=proof, timeout=timeout
        )

    return cosigner
