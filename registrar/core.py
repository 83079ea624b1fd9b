"""The registrar's engine: check operations, sequence them into the log, acknowledge.

The path of a write: decode the leaf (strict, canonical, signature verified) ->
check and apply it to the in-memory namespace (authority, versions) -> hand the
leaves to the sequencer -> await the batch's checkpoint (durable, cosigned) ->
return receipts. The checks and the hand-over happen with no ``await`` in
between, so the namespace's order is the log's order. A request's operations
are one transaction: all accepted or none. A streamed request's leaves are
decoded as they arrive (``app.read_leaf_stream``: stateless) and handed to
``submit`` already decoded, once the whole body is in.

The namespace is rebuilt from the log on start, so the log is the only state.
If a batch fails to be written, the registrar refuses further writes until it
is restarted and has replayed its log: what the log does not hold never happened.

To start fast at millions of identifiers, the registrar keeps snapshots of the
namespace (``cityid.snapshot``) in ``snapshot/``: derived state, bound to the
log position it reflects (origin, size, root) and to the trust anchors. On
start it loads the newest one that matches the log and replays only the tail
after it; one that does not match, or does not decode, is ignored with a log
line, and the whole log is replayed. One is written every
``[snapshot] every`` leaves plus minted identifiers and at a clean stop: the
namespace is frozen (its live layer of identifiers stops changing), the layers
are merged into compact tables and the file written in worker threads, while
the event loop goes on serving; the merged tables then replace the layers in
memory too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cityid import snapshot
from cityid.authority import Dropped, Namespace, NamespaceImage, release
from cityid.durable import fsync_dir
from cityid.errors import CityIdError, LedgerError, NotFoundError, OperationError
from cityid.identifiers import Identifier, Prefix
from cityid.idtable import IdTable
from cityid.keys import SigningKey
from cityid.ops import Mint, SignedOperation, key_fingerprint
from cityid.snapshot import Position, SnapshotError
from ledger import merkle
from ledger.batcher import NotPublishedError, Sequencer
from ledger.storage import Log

from .config import RegistrarConfig

log = logging.getLogger("cityid.registrar")

MAX_OPS_PER_REQUEST = 10_000
#: The streamed form of ``POST /api/ops``: msgpack bin objects, one per leaf, then nil.
LEAVES = "application/x-cityid-leaves"
END_OF_LEAVES = b"\xc0"
#: The largest request body the registrar reads; a client cuts a bigger stream of
#: leaves into several requests (registrar/cli.py).
MAX_BODY = 64 * 1024 * 1024


#: Snapshot files in ``snapshot/``: the log size they reflect, zero-padded so names sort.
SNAPSHOT_NAME = "namespace-{size:020d}.snap"
_SNAPSHOT_RE = re.compile(r"namespace-([0-9]{20})\.snap")
#: How long a snapshot waits for the leaves it holds to be staged in the log.
SNAPSHOT_WAIT_S = 60.0
#: After a snapshot failed, how long before a write tries another.
SNAPSHOT_RETRY_S = 30.0


def replay_cost(signed: SignedOperation) -> int:
    """What replaying a leaf costs, in the unit of ``[snapshot] every``: one per leaf,
    plus one per identifier of a mint (its record is checked again); a range is one leaf."""
    op = signed.op
    return 1 + len(op.items) if isinstance(op, Mint) else 1


def not_found(ident: Identifier, version: int, writer: bytes) -> NotFoundError:
    """The refusal for changing what does not exist (never created, or deleted)."""
    who = f" (writer key {key_fingerprint(writer)})"
    if version == 0:
        return NotFoundError(f"{ident} does not exist{who}", rule="not-found")
    return NotFoundError(f"{ident} was deleted (version {version}){who}", rule="deleted")


def too_many_ops(count: int) -> OperationError:
    return OperationError(
        f"{count} operations in one request (at most {MAX_OPS_PER_REQUEST})",
        rule="too-many-ops",
    )


@dataclass(frozen=True, slots=True)
class OpReceipt:
    """Where an acknowledged operation lives: its leaf index and the checkpoint."""

    index: int
    kind: str
    target: str
    checkpoint: bytes

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind, "target": self.target}


class Registrar:
    def __init__(self, config: RegistrarConfig, log_store: Log, sequencer: Sequencer) -> None:
        self.config = config
        self.log = log_store
        self.sequencer = sequencer
        self.namespace = self._fresh_namespace()
        self.broken: str | None = None
        #: Log entries the last rebuild replayed (all of them, or the tail after a snapshot).
        self.replayed = 0
        #: Log size of the snapshot loaded at start or last written (None: none yet).
        self.snapshot_size: int | None = None
        self._applied = 0  # leaves in the namespace: the log's, then those admitted since
        self._cost = 0  # replay cost admitted since the last snapshot froze the namespace
        self._kept: list[str] = []  # snapshot files known good, oldest first
        self._snapshot_task: asyncio.Task[None] | None = None
        self._snapshot_lock = asyncio.Lock()  # one snapshot at a time (freeze to install)
        self._snapshot_failed = -SNAPSHOT_RETRY_S
        self.rebuild()

    @classmethod
    def open(cls, config: RegistrarConfig) -> Registrar:
        """Open (or create) the log and replay it; witnesses are wired by the server."""
        key: SigningKey = config.log_key()
        log_dir = config.log_dir
        if (log_dir / "checkpoint").exists():
            # With witnesses, a checkpoint signed but not published before a restart waits
            # for their cosignatures (start() asks them) instead of going out without them.
            store = Log.open(log_dir, key, publish_pending=config.quorum == 0)
        else:
            store = Log.create(log_dir, key, config.origin)
        if store.origin != config.origin:
            raise CityIdError(
                f"log in {log_dir} has origin {store.origin!r} but the config says "
                f"{config.origin!r}",
                rule="origin-mismatch",
            )
        seq = Sequencer(
            store,
            max_batch=config.max_batch,
            max_delay=config.max_delay_ms / 1000,
        )
        try:
            return cls(config, store, seq)
        except BaseException:
            store.close()  # a log that does not replay must not stay locked
            raise

    def _fresh_namespace(self) -> Namespace:
        ns = Namespace()
        for anchor in self.config.anchors:
            ns.add_anchor(anchor.prefix, anchor.key.public_key, self.config.origin)
        return ns

    def rebuild(self) -> None:
        """Load the newest snapshot that matches the log, then replay the log after it (on
        start). Without one, replay the whole log into a fresh namespace."""
        t0 = time.perf_counter()
        loaded = self._load_snapshot()
        ns, start = loaded if loaded is not None else (self._fresh_namespace(), 0)
        t1 = time.perf_counter()
        count = cost = 0
        # Up to the signed size: entries waiting for cosignatures are in the log already.
        entries = self.log.entries(start, self.log.signed_size, signed=True)
        for index, leaf in enumerate(entries, start):
            try:
                signed = SignedOperation.decode(leaf)
                ns.apply(signed, log=self.config.origin)
            except CityIdError as e:
                # The log is signed history: an entry that no longer checks is a bug
                # or tampering, and the registrar must not write on top of it.
                raise CityIdError(
                    f"log entry {index} does not replay: {e.message}", rule="replay"
                ) from e
            count += 1
            cost += replay_cost(signed)
        self.namespace = ns
        self.replayed, self._applied, self._cost = count, start + count, cost
        self.snapshot_size = start if loaded is not None else None
        origin = self.log.origin
        if loaded is not None:
            log.info("%s: loaded the namespace snapshot at size %d in %.2f s, then replayed "
                     "%d operations in %.2f s", origin, start, t1 - t0, count,
                     time.perf_counter() - t1)  # fmt: skip
        else:
            log.info("replayed %d operations from %s in %.2f s", count, origin,
                     time.perf_counter() - t1)  # fmt: skip

    # -- snapshots ---------------------------------------------------------------------

    @property
    def snapshot_dir(self) -> Path:
        return self.config.snapshot_dir

    def _anchors(self) -> list[tuple[str, bytes, str]]:
        return [(str(a.prefix), a.key.public_key, self.config.origin) for a in self.config.anchors]

    def snapshot_files(self) -> list[Path]:
        """Snapshot files in ``snapshot/``, newest (largest log size) first."""
        try:
            paths = [p for p in self.snapshot_dir.iterdir() if _SNAPSHOT_RE.fullmatch(p.name)]
        except FileNotFoundError:
            return []
        return sorted(paths, key=lambda p: p.name, reverse=True)

    def _load_snapshot(self) -> tuple[Namespace, int] | None:
        files = self.snapshot_files()
        for path in files:
            try:
                ns, size = self._read_snapshot(path)
            except SnapshotError as e:
                log.warning("%s: snapshot %s ignored (%s: %s)", self.log.origin, path, e.rule,
                            e.message)  # fmt: skip
                continue
            except Exception as e:  # unreadable, or a bug: the log decides, never the snapshot
                trace = not isinstance(e, OSError)
                log.warning("%s: snapshot %s ignored (snapshot-unreadable: %s)",
                            self.log.origin, path, e, exc_info=trace)  # fmt: skip
                continue
            self._kept = [path.name]
            return ns, size
        if files:
            log.warning("%s: no snapshot matches the log: replaying all of it", self.log.origin)
        return None

    def _read_snapshot(self, path: Path) -> tuple[Namespace, int]:
        # One read into bytes, which the namespace's tables then search in place.
        data = path.read_bytes()
        size = self._check_position(snapshot.peek(data))  # before the costly part
        ns, _ = snapshot.decode(data)
        return ns, size

    def _check_position(self, position: Position) -> int:
        """The log size ``position`` is at, if it is a position of this registrar's log."""

        def mismatch(why: str) -> SnapshotError:
            return SnapshotError(why, rule="snapshot-mismatch")

        if position.anchors != Position.of(self._anchors(), []).anchors:
            raise mismatch("the trust anchors ([[anchor]] in registrar.toml) changed since")
        origin = self.log.origin
        if len(position.logs) != 1 or position.logs[0][0] != origin:
            raise mismatch(f"it is of log {[o for o, _, _ in position.logs]}, not of {origin}")
        _, size, root = position.logs[0]
        if not 0 < size <= self.log.signed_size:
            raise mismatch(f"it is at size {size}; the log has {self.log.signed_size} entries")
        try:
            actual = self._root_at(size)
        except LedgerError as e:
            raise mismatch(f"the log's root at size {size} cannot be read: {e.message}") from e
        if actual != root:
            raise mismatch(f"its root at size {size} is not the log's root at that size")
        return size

    def _root_at(self, size: int) -> bytes:
        # Read through the tiles of the signed tree (they exist for every staged size),
        # so a size signed but not yet published (awaiting witnesses) works too.
        return merkle.tree_hash(size, self.log.hash_reader(self.log.signed_size))

    def _maybe_snapshot(self) -> None:
        """Start writing a snapshot if enough was written since the last (never waits)."""
        every = self.config.snapshot_every
        if (
            every <= 0
            or self._cost < every
            or self._snapshot_task is not None
            or self.broken is not None
            or time.monotonic() - self._snapshot_failed < SNAPSHOT_RETRY_S
        ):
            return
        self._snapshot_task = asyncio.get_running_loop().create_task(
            self._background_snapshot(), name="namespace-snapshot"
        )

    async def snapshot_settled(self) -> None:
        """Wait for a snapshot being written in the background, if any (its errors are
        logged, not raised)."""
        task = self._snapshot_task
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)

    async def _background_snapshot(self) -> None:
        try:
            await self.write_snapshot()
        except Exception:
            self._snapshot_failed = time.monotonic()
            log.exception("%s: writing a namespace snapshot failed (the log is unaffected; "
                          "the next start replays more of it)", self.log.origin)  # fmt: skip
        finally:
            self._snapshot_task = None

    async def write_snapshot(self, *, wait_s: float = SNAPSHOT_WAIT_S) -> Path | None:
        """Snapshot the namespace as it is now; return the file, or None if not written.

        On the event loop only the freeze and the swap of the merged tables run
        (O(prefixes)); merging and writing run in worker threads. The snapshot is
        written once the log holds every leaf it reflects (staged: durable and
        signed), at most ``wait_s`` later.
        """
        async with self._snapshot_lock:
            return await self._write_snapshot(wait_s)

    async def _write_snapshot(self, wait_s: float) -> Path | None:
        if self.broken is not None:
            return None
        image = self.namespace.freeze()
        size, cost = self._applied, self._cost
        self._cost = 0  # writes from now on count toward the next snapshot
        dropped = Dropped()
        try:
            t0 = time.perf_counter()
            tables = await asyncio.to_thread(snapshot.compact, image)
            # Compaction: valid whatever comes next. What it replaces is freed in a
            # thread, bit by bit (below), not here on the event loop all at once.
            dropped = self.namespace.install(image, tables)
            t1 = time.perf_counter()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while self.log.signed_size < size:
                if self.broken is not None:
                    return None
                if loop.time() >= deadline:
                    raise LedgerError(
                        f"the log did not reach size {size} within {wait_s:g} s",
                        rule="snapshot-wait",
                    )
                await asyncio.sleep(0.02)
            if size == 0:
                return None
            root = await asyncio.to_thread(self._root_at, size)
            position = Position.of(self._anchors(), [(self.log.origin, size, root)])
            path = await asyncio.to_thread(self._write_snapshot_file, image, tables, position)
        except BaseException:
            self._cost += cost  # not written: it still counts toward the next one
            raise
        finally:
            del image
            if dropped.layers or dropped.tables:
                await asyncio.to_thread(release, dropped)
        self.snapshot_size = size
        log.info("%s: namespace snapshot at size %d written to %s (merge %.2f s, write %.2f s)",
                 self.log.origin, size, path, t1 - t0, time.perf_counter() - t1)  # fmt: skip
        return path

    def _write_snapshot_file(
        self, image: NamespaceImage, tables: dict[Prefix, IdTable], position: Position
    ) -> Path:
        """Write the snapshot crash-safely (temp file, fsync, rename, directory fsync), in
        pieces (never one buffer of the whole), then drop older snapshots."""
        d = self.snapshot_dir
        d.mkdir(exist_ok=True)
        size = position.logs[0][1]
        path = d / SNAPSHOT_NAME.format(size=size)
        tmp = d / f".{path.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                for piece in snapshot.chunks(image, tables, position):
                    f.write(piece)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(d)
        # Keep this one and the one before it (should this one ever rot on disk); drop
        # the rest, and temp files of writes a crash interrupted (one writer: the log lock).
        self._kept = [*[n for n in self._kept if n != path.name][-1:], path.name]
        for p in d.iterdir():
            if p.name not in self._kept and (
                _SNAPSHOT_RE.fullmatch(p.name) or p.name.endswith(".tmp")
            ):
                with contextlib.suppress(OSError):
                    p.unlink()
        return path

    async def start(self) -> None:
        await self.sequencer.publish_pending()
        self.sequencer.start()
        self._maybe_snapshot()  # after a long replay, so the next start is short

    async def aclose(self) -> None:
        """Commit what is queued, snapshot the namespace, then release the log (a restart in
        this process reopens it)."""
        await self.sequencer.aclose()
        await self.snapshot_settled()
        if (
            self.broken is None
            and self._applied > 0
            and (self._cost > 0 or self.snapshot_size != self._applied)
        ):
            try:
                await self.write_snapshot(wait_s=0)
            except Exception:
                log.exception("%s: the namespace snapshot at stop failed (the log is "
                              "unaffected; the next start replays more of it)",
                              self.log.origin)  # fmt: skip
        self.log.close()

    def version(self, ident: Identifier) -> tuple[int, bool]:
        return self.namespace.version(ident)

    def admit(
        self, leaves: Sequence[bytes], decoded: Sequence[SignedOperation] | None = None
    ) -> list[SignedOperation]:
        """Decode and apply ``leaves`` to the namespace, all or nothing (no await).

        ``decoded``, when given, is ``leaves`` already decoded (and so checked:
        canonical, values valid, signatures verified) by ``SignedOperation.decode``,
        as a streamed request decodes its leaves while they arrive.
        """
        if not leaves:
            raise OperationError("no operations in the request", rule="empty")
        if len(leaves) > MAX_OPS_PER_REQUEST:
            raise too_many_ops(len(leaves))
        if decoded is not None and len(decoded) != len(leaves):
            raise OperationError("decoded operations do not match the leaves", rule="internal")
        ops: list[SignedOperation] = []
        with self.namespace.transaction():
            for n, leaf in enumerate(leaves):
                try:
                    signed = SignedOperation.decode(leaf) if decoded is None else decoded[n]
                    self.namespace.apply(signed, log=self.config.origin)
                except CityIdError as e:
                    if len(leaves) > 1:
                        e.args = (f"operation {n}: {e.message}",)
                    raise
                ops.append(signed)
        self._applied += len(ops)
        self._cost += sum(map(replay_cost, ops))
        return ops

    async def submit(
        self,
        leaves: Sequence[bytes],
        decoded: Sequence[SignedOperation] | None = None,
        *,
        flush: bool = False,
    ) -> list[OpReceipt]:
        """Admit ``leaves`` (see ``admit``) and wait until their batch is published.

        ``flush`` seals their batch at once rather than after the batching delay
        (a bulk upload, which is worth a checkpoint of its own).
        """
        if self.broken is not None:
            raise LedgerError(self.broken, rule="registrar-stopped")
        ops = self.admit(leaves, decoded)
        self._maybe_snapshot()  # a task, which freezes the namespace when it first runs
        try:
            receipt = await self.sequencer.submit(list(leaves), flush=flush)
        except asyncio.CancelledError:
            raise
        except NotPublishedError:
            # In the log, signed, and published with the next checkpoint (e.g. once
            # witnesses answer again): the namespace already agrees with the log.
            raise
        except Exception as e:
            # Operations admitted after this batch were checked against a state that
            # may not be in the log: accept nothing more until a restart replays it.
            self.broken = (
                f"a ledger write failed ({e}); writes are refused until the registrar "
                "restarts and replays its log"
            )
            log.exception("batch failed; refusing writes until restart")
            raise LedgerError(self.broken, rule="registrar-stopped") from e
        return [
            OpReceipt(receipt.first_index + i, s.op.kind, s.op.target, receipt.checkpoint)
            for i, s in enumerate(ops)
        ]

    @property
    def log_dir(self) -> Path:
        return self.config.log_dir
