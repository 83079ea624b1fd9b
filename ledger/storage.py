"""A crash-safe transparency log on disk, laid out as c2sp.org/tlog-tiles files.

One directory per log; everything outside ``.private/`` can be served as-is
by any static file server::

    <dir>/checkpoint            the published signed checkpoint (written last)
    <dir>/tile/<L>/<N>[.p/<W>]  hash tiles
    <dir>/tile/entries/<N>...   entry bundles
    <dir>/.private/config       origin and verifier key (for read-only opens)
    <dir>/.private/state        the last (size, root) the log committed to sign
    <dir>/.private/lock         flock'd by the one writer
    <dir>/.private/gc           how far superseded partials are known to be gone
    <dir>/.private/tmp/         temp files, renamed into place

Appending is two steps so witnesses can cosign before anything is public:
:meth:`Log.stage` writes bundles and tiles durably, then records the new
(size, root) in ``state``, and only then signs; :meth:`Log.publish` writes
``checkpoint``. The state file is what keeps the log from ever signing two
inconsistent checkpoints: a size is signed only after its root is durable, and
once recorded it is never rolled back, only forward. Files beyond the recorded
size (a crash mid-stage) are garbage that the next stage overwrites, because
every stage rewrites every tile it touches.

Each checkpoint needs one partial tile per level and one partial bundle; a
later publish supersedes them (by wider partials, or full tiles). The writer
deletes superseded partials ``partial_grace`` seconds after the publish that
superseded them, so readers of the previous checkpoint can finish, and keeps
the partials of the published and the signed checkpoint. See
:class:`_PartialCollector`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from cityid.durable import fsync_dir
from cityid.errors import ForkError, LedgerError, NoteError, TileError
from cityid.keys import SigningKey, VerifierKey

from . import merkle
from .checkpoint import Checkpoint, open_checkpoint
from .merkle import EMPTY_ROOT, subtree_root
from .note import open_note, sign_note
from .tiles import (
    MAX_ENTRY_SIZE,
    MAX_LEVEL,
    TILE_HEIGHT,
    TILE_WIDTH,
    TileHashReader,
    TilePath,
    decode_bundle,
    edge_root,
    encode_bundle,
    entries_path,
    full_tile_count,
    iter_entries,
    partial_dir,
    partial_tiles,
    partial_width,
    split_tile,
    tile_path,
)

CHECKPOINT = "checkpoint"
PRIVATE = ".private"
GC_STATE = f"{PRIVATE}/gc"
_CONFIG_MAGIC = "cityid-ledger v1"
_GC_MAGIC = "cityid-ledger-gc v1"
_sha256 = hashlib.sha256
logger = logging.getLogger("cityid.ledger.storage")

# How long a superseded partial tile or bundle stays served: a reader that
# fetched the checkpoint needing it has this long to fetch it. Checkpoints are
# served no-cache and tiles are fetched right after them, so a minute is ample;
# it also bounds the leftovers to the partials written in the last minute.
DEFAULT_PARTIAL_GRACE = 60.0
# The GC watermarks (.private/gc) are persisted at most this often: they only
# bound the scan on the next open, so a stale one costs a few directory stats.
_GC_PERSIST_EVERY = 5.0
# Files deleted per publish at most (a backlog drains over several, or when idle).
GC_STEP = 1024
# The width of a doomed entry that stands for a full tile's whole .p directory.
_WHOLE_DIR = 0


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Txn:
    """Files made durable together: temp file, fsync, rename, directory fsync.

    Each file's fsync starts as soon as it is written (in a thread pool: fsync
    releases the GIL), so hashing the rest of a batch overlaps the disk. Files
    added after :meth:`barrier` become visible only once every file before the
    barrier is durable under its final name.
    """

    def __init__(self, writer: _FileWriter) -> None:
        self._w = writer
        self._groups: list[list[tuple[Path, Path]]] = [[]]
        self._syncs: list[Future[None]] = []
        self.groups_started = 0

    def add(self, rel: str, data: bytes) -> None:
        w = self._w
        w.seq += 1
        tmp = w.tmp / f"{os.getpid()}.{w.seq}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            raise
        self._syncs.append(w.pool.submit(_sync_and_close, fd))
        self._groups[-1].append((tmp, w.root / rel))

    def barrier(self) -> None:
        self._groups.append([])

    def _wait(self) -> None:
        errors = [e for f in self._syncs if (e := f.exception()) is not None]
        self._syncs = []
        if errors:
            raise errors[0]

    def commit(self) -> None:
        self._wait()
        for group in self._groups:
            self.groups_started += 1
            dirty: set[Path] = set()
            for tmp, target in group:
                self._w.ensure_dir(target.parent, dirty)
                os.replace(tmp, target)
                dirty.add(target.parent)
            futures = [self._w.pool.submit(fsync_dir, d) for d in dirty]
            errors = [e for f in futures if (e := f.exception()) is not None]
            if errors:
                raise errors[0]

    def abort(self) -> None:
        with contextlib.suppress(BaseException):
            self._wait()
        for group in self._groups:
            for tmp, _ in group:
                with contextlib.suppress(OSError):
                    tmp.unlink()


class _FileWriter:
    """Creates :class:`_Txn` s for one log directory and owns their fsync threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / PRIVATE / "tmp"
        self.seq = 0
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ledger-fsync")
        self._known_dirs: set[Path] = set()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    def ensure_dir(self, d: Path, dirty: set[Path]) -> None:
        if d in self._known_dirs:
            return
        missing = []
        p = d
        while not p.is_dir():
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            with contextlib.suppress(FileExistsError):
                m.mkdir()
            # A new directory's entry lives in its parent: sync that too.
            dirty.add(m.parent)
        self._known_dirs.add(d)

    def forget_dir(self, d: Path) -> None:
        """``d`` was removed: create it again if a file is ever written there."""
        self._known_dirs.discard(d)

    def begin(self) -> _Txn:
        return _Txn(self)

    def write_all(self, files: dict[str, bytes]) -> None:
        txn = self.begin()
        try:
            for rel, data in files.items():
                txn.add(rel, data)
            txn.commit()
        except BaseException:
            txn.abort()
            raise


# --- superseded partials ----------------------------------------------------------

Column = int | None  # a hash tile level, or None for the entry bundles


def encode_gc_marks(marks: dict[Column, int]) -> bytes:
    """``.private/gc``: per column, how many leading tiles are known to have no partials."""
    lines = [_GC_MAGIC]
    for col in sorted(marks, key=lambda c: -1 if c is None else c):
        lines.append(f"{'entries' if col is None else col} {marks[col]}")
    return ("\n".join(lines) + "\n").encode()


def decode_gc_marks(data: bytes) -> dict[Column, int]:
    """Inverse of :func:`encode_gc_marks`; anything unreadable means "scan everything" ({})."""
    try:
        lines = data.decode().split("\n")
        if lines[0] != _GC_MAGIC or lines[-1] != "":
            return {}
        marks: dict[Column, int] = {}
        for line in lines[1:-1]:
            name, value = line.split(" ")
            col = None if name == "entries" else int(name)
            if (col is not None and not 0 <= col <= MAX_LEVEL) or int(value) < 0:
                return {}
            marks[col] = int(value)
        return marks
    except (UnicodeDecodeError, ValueError):
        return {}


def _needed(*sizes: int) -> set[TilePath]:
    return {tp for size in sizes for tp in partial_tiles(size)}


class _PartialCollector:
    """Deletes partial tiles and bundles once superseded, after a grace period.

    A partial is *live* while the published or the signed checkpoint needs it.
    When a publish leaves it behind (a wider partial or the full tile now
    stands for it), or a stage does (the unpublished stage before it), it
    becomes *doomed*, and is deleted ``grace`` seconds later, so a reader that
    fetched the previous checkpoint can still fetch it.
    Deadlines live in memory only: after a restart, whatever superseded
    partial the open finds gets a whole grace period again, counted from the
    open, so a crash never shortens one. Deleting is never needed for
    consistency, so a crash anywhere in here leaves at worst a leftover.

    To keep that scan short, ``.private/gc`` records per column (entries,
    hash level 0, 1, ...) a *mark*: tiles below it have no partials left. It is
    written only after the deletions it vouches for are durable.
    """

    def __init__(
        self, root: Path, writer: _FileWriter, grace: float, clock: Callable[[], float]
    ) -> None:
        self.root = root
        self.writer = writer
        self.grace = grace
        self.clock = clock
        self.live: set[TilePath] = set()
        # FIFO of (deadline, seq, tile); deadlines never decrease along it.
        self.doomed: deque[tuple[float, int, TilePath]] = deque()
        self.valid: dict[TilePath, int] = {}  # tile -> seq of its current doom entry
        self.per_tile: dict[tuple[Column, int], int] = {}  # valid doomed partials per tile
        self.seq = 0
        self.marks: dict[Column, int] = {}
        self.dirty: set[Path] = set()  # parents of removed .p dirs, to fsync before a mark
        self.persisted_at = -math.inf

    # -- bookkeeping -----------------------------------------------------------------

    def _doom(self, tp: TilePath, now: float) -> None:
        if math.isinf(self.grace):
            return  # never delete (the behaviour before garbage collection)
        self.seq += 1
        self.doomed.append((now + self.grace, self.seq, tp))
        if tp not in self.valid:
            key = (tp.level, tp.index)
            self.per_tile[key] = self.per_tile.get(key, 0) + 1
        self.valid[tp] = self.seq

    def _undoom(self, tp: TilePath) -> bool:
        if self.valid.pop(tp, None) is None:
            return False
        key = (tp.level, tp.index)
        self.per_tile[key] -= 1
        if not self.per_tile[key]:
            del self.per_tile[key]
        return True

    def scan(self, pub: int, signed: int) -> None:
        """On open: find the partials left by earlier runs, from the marks onwards."""
        try:
            self.marks = decode_gc_marks((self.root / GC_STATE).read_bytes())
        except FileNotFoundError:
            self.marks = {}  # a new log, or one from before garbage collection
        needed = _needed(pub, signed)
        self.live = set(needed)
        now = self.clock()
        cols: list[Column] = [None]
        cols += [lv for lv in range(MAX_LEVEL + 1) if (self.root / "tile" / str(lv)).is_dir()]
        for col in cols:
            full = full_tile_count(pub, col)
            edge = full_tile_count(signed, col)
            t = min(self.marks.get(col, 0), full)
            while True:
                pdir = self.root / partial_dir(col, t)
                if t < full:
                    # A full tile needs none of its partials: one entry for the
                    # whole directory (a log from before GC has 255 in each).
                    if pdir.is_dir():
                        self._doom(TilePath(col, t, _WHOLE_DIR), now)
                    t += 1
                    continue
                try:
                    names = os.listdir(pdir)
                except (FileNotFoundError, NotADirectoryError):
                    names = None
                # Past the right edge only a crashed stage's garbage can exist,
                # and it is contiguous: stop at the first tile with nothing.
                if t > edge and names is None and not pdir.with_suffix("").exists():
                    break
                for name in names or ():
                    w = partial_width(name)
                    tp = TilePath(col, t, w) if w is not None else None
                    if tp is not None and tp not in needed:
                        self._doom(tp, now)
                t += 1

    def written(self, tiles: Iterable[TilePath]) -> None:
        """After a stage: these partials are (re)written and live."""
        for tp in tiles:
            self._undoom(tp)  # a crash's garbage rewritten for real: keep it
            self.live.add(tp)

    def superseded(self, pub: int, signed: int) -> None:
        """After a publish or stage: doom every live partial neither checkpoint needs."""
        needed = _needed(pub, signed)
        gone = sorted(self.live - needed, key=lambda tp: (tp.index, tp.width))
        now = self.clock()
        for tp in gone:
            self.live.discard(tp)
            self._doom(tp, now)

    def discard(self, tiles: Iterable[TilePath], pub: int, signed: int) -> None:
        """After a failed stage: its partials were never signed, so no reader needs them."""
        needed = _needed(pub, signed)
        for tp in tiles:
            if tp not in needed and tp not in self.live and tp not in self.valid:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.root / tp.path())

    # -- deleting --------------------------------------------------------------------------

    def due_in(self) -> float | None:
        if not self.doomed:
            return None
        return max(0.0, self.doomed[0][0] - self.clock())

    def collect(self, pub: int, limit: int | None = None) -> int:
        """Delete the doomed partials whose grace has run out; return how many files.

        Stops once ``limit`` files are gone (it may overshoot by one directory),
        so a backlog (a log from before GC) never holds up one publish for long.
        """
        now = self.clock()
        removed = 0
        while self.doomed and self.doomed[0][0] <= now:
            if limit is not None and removed >= limit:
                break
            _, seq, tp = self.doomed.popleft()
            if self.valid.get(tp) != seq:
                continue  # rewritten since, or doomed again later
            self._undoom(tp)
            if tp.width != _WHOLE_DIR:
                try:
                    os.unlink(self.root / tp.path())
                    removed += 1
                except FileNotFoundError:
                    pass
            key = (tp.level, tp.index)
            if key not in self.per_tile and full_tile_count(pub, tp.level) > tp.index:
                removed += self._drop_dir(tp.level, tp.index)
        return removed

    def _drop_dir(self, col: Column, index: int) -> int:
        """The last doomed partial of a full tile is gone: remove its ``.p`` directory.

        Any other partial in it goes too: all of a log's from before GC (one
        entry stands for them), or a stage's that failed mid-way (never
        signed). Empty directories cost a block each, as much as the hash
        tiles of 128 leaves.
        """
        pdir = self.root / partial_dir(col, index)
        removed = 0
        try:
            names = os.listdir(pdir)
        except FileNotFoundError:
            return 0
        for name in names:
            w = partial_width(name)
            if w is not None and TilePath(col, index, w) not in self.live:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(pdir / name)
                    removed += 1
        try:
            pdir.rmdir()
        except OSError:
            return removed  # something we did not write is in there: leave it
        self.writer.forget_dir(pdir)
        self.dirty.add(pdir.parent)
        return removed

    def persist(self, pub: int, *, force: bool = False) -> None:
        """Record the marks, if they moved, once the deletions below them are durable."""
        if math.isinf(self.grace):
            return  # nothing is deleted, so no mark may claim otherwise
        now = self.clock()
        if not force and now - self.persisted_at < _GC_PERSIST_EVERY:
            return
        marks = {col: full_tile_count(pub, col) for col in [None, *range(MAX_LEVEL + 1)]}
        marks = {col: m for col, m in marks.items() if m}
        for level, index in self.per_tile:
            if level in marks:
                marks[level] = min(marks[level], index)
        # Never lower a mark: what it vouched for still holds.
        marks = {col: max(m, self.marks.get(col, 0)) for col, m in marks.items()}
        self.persisted_at = now
        if marks == self.marks:
            return
        dirs = list(self.dirty)
        for f in [self.writer.pool.submit(fsync_dir, d) for d in dirs]:
            f.result()
        self.dirty.clear()
        self.writer.write_all({GC_STATE: encode_gc_marks(marks)})
        self.marks = marks


class Log:
    """One transparency log in one directory. Open with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        directory: Path,
        origin: str,
        verifier: VerifierKey,
        partial_grace: float = DEFAULT_PARTIAL_GRACE,
    ) -> None:
        if not partial_grace >= 0:
            raise LedgerError(
                f"partial_grace must be >= 0 seconds, not {partial_grace}", rule="bad-config"
            )
        self.directory = directory
        self.origin = origin
        self.verifier = verifier
        self._signer: SigningKey | None = None
        self._lock_fd: int | None = None
        self._writer: _FileWriter | None = None
        self._pub_cp = Checkpoint(origin, 0, EMPTY_ROOT)
        self._pub_note = b""
        # Writer-only state: the signed (staged) tree and its right edge.
        self._signed_cp = self._pub_cp
        self._pending: bytes | None = None
        self._edge: list[list[bytes]] = []
        self._bundle: list[bytes] = []
        self._broken: str | None = None
        self._reader: TileHashReader | None = None
        self._reader_lock = threading.Lock()
        self.partial_grace = partial_grace
        self._gc: _PartialCollector | None = None  # the writer's, once recovered

    # --- opening ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        signer: SigningKey,
        origin: str | None = None,
        *,
        partial_grace: float = DEFAULT_PARTIAL_GRACE,
    ) -> Log:
        """Create an empty log signed by ``signer`` (origin defaults to the key name).

        The log is built in a temporary sibling directory and renamed into
        place, so ``directory`` either holds a whole log or nothing, whenever
        a crash strikes. ``directory`` must not exist or be empty.
        """
        d = Path(directory)
        origin = signer.name if origin is None else origin
        empty = Checkpoint(origin, 0, EMPTY_ROOT)  # validates the origin
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise LedgerError(f"{d} already exists and is not empty", rule="log-exists")
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.parent / f".{d.name}.creating-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / PRIVATE / "tmp").mkdir(parents=True)
        # Name and raw key in hex: a read-only open needs no key parser to trust.
        config = f"{_CONFIG_MAGIC}\n{origin}\n{signer.name}\n{signer.public_key.hex()}\n"
        w = _FileWriter(tmp)
        try:
            w.write_all(
                {
                    f"{PRIVATE}/config": config.encode(),
                    f"{PRIVATE}/state": empty.text().encode(),
                    CHECKPOINT: sign_note(empty.text(), signer),
                }
            )
        finally:
            w.close()
        fsync_dir(tmp)
        os.rename(tmp, d)  # replaces an empty directory atomically, too
        fsync_dir(d.parent)
        return cls.open(d, signer, partial_grace=partial_grace)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        signer: SigningKey | None = None,
        *,
        publish_pending: bool = True,
        partial_grace: float = DEFAULT_PARTIAL_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> Log:
        """Open a log; read-only without ``signer``, else the one exclusive writer.

        A writer finishes any append a crash interrupted: a size recorded as
        signed whose tiles are durable is kept, anything later is dropped. The
        signed checkpoint is published at once, or, with ``publish_pending=False``
        (a log whose checkpoints need cosignatures first), left as
        :attr:`pending_note` for the caller to cosign and :meth:`publish`.

        A writer deletes each partial tile or bundle ``partial_grace`` seconds
        after a published checkpoint supersedes it (``math.inf``: never), timed
        by ``clock``; superseded partials it finds on opening get the whole
        grace period from now.
        """
        d = Path(directory)
        try:
            lines = (d / PRIVATE / "config").read_text().split("\n")
        except OSError as e:
            raise LedgerError(f"{d}: not a ledger directory ({e.strerror})", rule="no-log") from e
        try:
            if len(lines) < 4 or lines[0] != _CONFIG_MAGIC:
                raise ValueError("bad header")
            verifier = VerifierKey(lines[2], bytes.fromhex(lines[3]))
        except ValueError as e:
            raise LedgerError(
                f"{d / PRIVATE / 'config'}: unrecognised format ({e})", rule="no-log"
            ) from e
        log = cls(d, lines[1], verifier, partial_grace)
        if signer is None:
            log.refresh()
            return log
        if signer.verifier != verifier:
            raise LedgerError(
                f"{d}: log is signed by {verifier.name} ({verifier.key_id.hex()}), not by "
                f"{signer.name} ({signer.key_id.hex()})",
                rule="wrong-key",
            )
        log._take_lock(signer)
        try:
            log._recover(publish_pending)
            assert log._writer is not None
            gc = _PartialCollector(d, log._writer, partial_grace, clock)
            gc.scan(log._pub_cp.size, log._signed_cp.size)
            log._gc = gc
        except BaseException:
            log.close()
            raise
        return log

    def _take_lock(self, signer: SigningKey) -> None:
        priv = self.directory / PRIVATE
        fd = os.open(priv / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise LedgerError(
                f"{self.directory} is open for writing by another process", rule="log-locked"
            ) from e
        self._lock_fd = fd
        self._signer = signer
        self._writer = _FileWriter(self.directory)
        # Temp files of a crashed writer: never visible, safe to drop.
        shutil.rmtree(priv / "tmp", ignore_errors=True)
        (priv / "tmp").mkdir(exist_ok=True)

    def close(self) -> None:
        if self._gc is not None and not self._broken:
            # Deadlines not reached yet are left to the next open (with a new grace).
            with contextlib.suppress(OSError):
                self._gc.collect(self._pub_cp.size, GC_STEP)
                self._gc.persist(self._pub_cp.size, force=True)
        self._gc = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
        self._signer = None

    def __enter__(self) -> Log:
        return self

    def __exit__(
        self,
        t: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- state files ------------------------------------------------------------

    def _fetch(self, rel: str) -> bytes:
        try:
            with open(self.directory / rel, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise TileError(f"{rel}: missing", rule="tile-missing") from e

    def _read_published(self) -> tuple[Checkpoint, bytes] | None:
        try:
            note = (self.directory / CHECKPOINT).read_bytes()
        except FileNotFoundError:
            return None
        try:
            cp, _ = open_checkpoint(note, self.verifier, origin=self.origin)
        except NoteError as e:
            raise NoteError(f"{self.directory / CHECKPOINT}: {e.message}", rule=e.rule) from e
        return cp, note

    def _read_state(self) -> Checkpoint:
        path = self.directory / PRIVATE / "state"
        try:
            return Checkpoint.parse(path.read_text())
        except FileNotFoundError as e:
            raise LedgerError(f"{path}: missing", rule="state-missing") from e
        except (NoteError, UnicodeDecodeError) as e:
            raise LedgerError(f"{path}: unreadable ({e})", rule="state-corrupt") from e

    def refresh(self) -> Checkpoint:
        """Re-read the published checkpoint (for read-only opens following a writer)."""
        got = self._read_published()
        if got is None:
            raise LedgerError(f"{self.directory / CHECKPOINT}: missing", rule="no-checkpoint")
        cp, note = got
        if cp.size < self._pub_cp.size:
            raise ForkError(
                f"{self.directory / CHECKPOINT}: size went back from {self._pub_cp.size} "
                f"to {cp.size}",
                rule="rollback",
            )
        self._pub_cp, self._pub_note = cp, note
        return cp

    def _load_edge(self, size: int) -> None:
        edge: list[list[bytes]] = []
        level = 0
        while (c := size >> (TILE_HEIGHT * level)) > 0:
            w = c % TILE_WIDTH
            if w:
                path = tile_path(level, c // TILE_WIDTH, w)
                edge.append(split_tile(self._fetch(path), w, name=path))
            else:
                edge.append([])
            level += 1
        w0 = size % TILE_WIDTH
        bundle: list[bytes] = []
        if w0:
            path = entries_path(size // TILE_WIDTH, w0)
            bundle = decode_bundle(self._fetch(path), count=w0, name=path)
            for i, e in enumerate(bundle):
                if _sha256(b"\x00" + e).digest() != edge[0][i]:
                    raise TileError(
                        f"{path}: entry {i} does not match tile {tile_path(0, size // 256, w0)}",
                        rule="bundle-mismatch",
                    )
        self._edge, self._bundle = edge, bundle

    def _recover(self, publish_pending: bool) -> None:
        state = self._read_state()
        if state.origin != self.origin:
            raise LedgerError(
                f"{self.directory / PRIVATE / 'state'}: origin {state.origin!r} is not "
                f"{self.origin!r}",
                rule="state-corrupt",
            )
        published = self._read_published()
        pub_cp = published[0] if published else None
        if pub_cp is not None:
            if pub_cp.size > state.size:
                raise LedgerError(
                    f"{self.directory}: published size {pub_cp.size} is beyond the signed "
                    f"state {state.size}; the private state was lost",
                    rule="state-behind",
                )
            if pub_cp.size == state.size and pub_cp.root != state.root:
                raise ForkError(
                    f"{self.directory}: published checkpoint and signed state disagree at "
                    f"size {state.size}",
                    rule="fork",
                )
        try:
            self._load_edge(state.size)
        except TileError as e:
            raise TileError(
                f"cannot resume at signed size {state.size}: {e.message}", rule=e.rule
            ) from e
        if edge_root(self._edge) != state.root:
            raise TileError(
                f"tiles at the right edge of size {state.size} do not hash to the signed root",
                rule="tile-mismatch",
            )
        self._signed_cp = state
        if published is not None and pub_cp == state:
            self._pub_cp, self._pub_note = published
            return
        if pub_cp is not None:
            # Tiles for the signed size hash to its root, so it extends what was
            # published; check that explicitly before rolling forward.
            proof = merkle.consistency_proof(state.size, pub_cp.size, self._trusted(state.size))
            merkle.verify_consistency(proof, state.size, state.root, pub_cp.size, pub_cp.root)
            self._pub_cp, self._pub_note = published  # type: ignore[misc]
        assert self._signer is not None
        # Ed25519 is deterministic: this is the very note signed before the crash.
        note = sign_note(state.text(), self._signer)
        if publish_pending:
            self._publish_bytes(note, state)
        else:
            self._pending = note

    # --- appending --------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._signer is not None

    def _require_writer(self) -> SigningKey:
        if self._signer is None:
            raise LedgerError(f"{self.directory} is open read-only", rule="read-only")
        if self._broken:
            raise LedgerError(
                f"{self.directory}: a write failed ({self._broken}); reopen the log",
                rule="log-broken",
            )
        return self._signer

    def stage(self, entries: Sequence[bytes]) -> bytes:
        """Durably add ``entries`` and return the signed checkpoint, not yet published.

        Tiles and bundles go first, then the signed (size, root), then the
        signature. Nothing is public until :meth:`publish`. A later stage builds
        on this one even if it is never published: it is signed, so it is final.
        """
        signer = self._require_writer()
        if not entries:
            raise LedgerError("cannot append an empty batch", rule="empty-batch")
        for i, e in enumerate(entries):
            if len(e) > MAX_ENTRY_SIZE:
                raise LedgerError(
                    f"entry {i} of the batch is {len(e)} bytes; log entries are at most "
                    f"{MAX_ENTRY_SIZE} bytes",
                    rule="leaf-too-large",
                )
        old = self._signed_cp.size
        new = old + len(entries)
        assert self._writer is not None
        txn = self._writer.begin()
        try:
            edge, bundle, root = self._stage_files(txn, old, entries)
            cp = Checkpoint(self.origin, new, root)
            txn.barrier()
            txn.add(f"{PRIVATE}/state", cp.text().encode())
            txn.commit()
        except BaseException as e:
            txn.abort()
            if txn.groups_started > 1:
                # The state file may or may not have landed: only a reopen can tell.
                self._broken = f"writing the signed state failed: {e}"
            elif self._gc is not None:
                # Partials renamed into place before the failure (a full disk)
                # belong to no signed tree: drop them rather than leak them.
                with contextlib.suppress(OSError):
                    self._gc.discard(partial_tiles(new), self._pub_cp.size, old)
            raise
        self._signed_cp = cp
        self._edge, self._bundle = edge, bundle
        if self._gc is not None:
            self._gc.written(partial_tiles(new))
            # A stage on top of an unpublished one (witnesses away) leaves that
            # one's partials behind: its checkpoint can no longer be published.
            self._gc.superseded(self._pub_cp.size, new)
        note = sign_note(cp.text(), signer)
        self._pending = note
        return note

    def _stage_files(
        self, txn: _Txn, old: int, entries: Sequence[bytes]
    ) -> tuple[list[list[bytes]], list[bytes], bytes]:
        """Write the bundles and tiles that ``entries`` change; return the new edge and root."""
        # Entry bundles: the partial bundle in memory plus the new entries.
        t0 = old // TILE_WIDTH
        pending = self._bundle + list(entries)
        full = len(pending) // TILE_WIDTH
        for j in range(full):
            chunk = pending[j * TILE_WIDTH : (j + 1) * TILE_WIDTH]
            txn.add(entries_path(t0 + j, TILE_WIDTH), encode_bundle(chunk))
        bundle = pending[full * TILE_WIDTH :]
        if bundle:
            txn.add(entries_path(t0 + full, len(bundle)), encode_bundle(bundle))

        # Hash tiles, level by level: completed tiles feed their root upwards.
        sha = _sha256
        new_hashes = [sha(b"\x00" + e).digest() for e in entries]
        edge = [list(row) for row in self._edge]
        level = 0
        while new_hashes:
            if level == len(edge):
                edge.append([])
            t0 = (old >> (TILE_HEIGHT * level)) // TILE_WIDTH
            row = edge[level] + new_hashes
            full = len(row) // TILE_WIDTH
            parents = []
            for j in range(full):
                chunk = row[j * TILE_WIDTH : (j + 1) * TILE_WIDTH]
                txn.add(tile_path(level, t0 + j, TILE_WIDTH), b"".join(chunk))
                parents.append(subtree_root(chunk))
            rest = row[full * TILE_WIDTH :]
            if rest:
                txn.add(tile_path(level, t0 + full, len(rest)), b"".join(rest))
            edge[level] = rest
            new_hashes = parents
            level += 1
        return edge, bundle, edge_root(edge)

    def publish(self, note: bytes) -> None:
        """Publish a note from :meth:`stage`, possibly with cosignatures added."""
        self._require_writer()
        opened = open_note(note, [self.verifier])
        cp = Checkpoint.parse(opened.text)
        signed = self._signed_cp
        if cp.origin != self.origin:
            raise NoteError(
                f"checkpoint origin {cp.origin!r} is not this log's {self.origin!r}",
                rule="checkpoint-origin",
            )
        if cp.size == signed.size and cp.root != signed.root:
            raise ForkError(
                f"checkpoint for size {cp.size} has another root than the one this log signed",
                rule="fork",
            )
        if cp.size == self._pub_cp.size and cp.root != self._pub_cp.root:
            raise ForkError(
                f"checkpoint for size {cp.size} has another root than the published one",
                rule="fork",
            )
        if cp != signed and cp != self._pub_cp:
            raise LedgerError(
                f"checkpoint for size {cp.size} is neither the staged (size {signed.size}) "
                f"nor the published (size {self._pub_cp.size}) one",
                rule="publish-mismatch",
            )
        self._publish_bytes(note, cp)

    def _publish_bytes(self, note: bytes, cp: Checkpoint) -> None:
        assert self._writer is not None
        self._writer.write_all({CHECKPOINT: note})
        self._pub_cp, self._pub_note = cp, note
        if cp == self._signed_cp:
            self._pending = None
        if self._gc is not None:
            self._gc.superseded(cp.size, self._signed_cp.size)
            self.collect_garbage(GC_STEP)

    # --- superseded partials --------------------------------------------------------

    def collect_garbage(self, limit: int | None = None) -> int:
        """Delete the superseded partials whose grace period is over; return how many.

        At most about ``limit`` files (None: all that are due). Publishing does
        this too; call it when the log is idle so the last leftovers go as well
        (:meth:`garbage_due_in` says when). Never raises for a failed deletion:
        a leftover is harmless, and the checkpoint is out.
        """
        if self._gc is None or self._broken:
            return 0
        try:
            removed = self._gc.collect(self._pub_cp.size, limit)
            self._gc.persist(self._pub_cp.size)
        except OSError as e:
            logger.warning("%s: deleting superseded partial tiles failed: %s", self.directory, e)
            return 0
        return removed

    def garbage_due_in(self) -> float | None:
        """Seconds until a superseded partial is due for deletion (None: none waits)."""
        return None if self._gc is None or self._broken else self._gc.due_in()

    def append(self, entries: Sequence[bytes]) -> bytes:
        """Stage and publish ``entries``; return the published note."""
        note = self.stage(entries)
        self.publish(note)
        return note

    # --- reading -------------------------------------------------------------------

    @property
    def checkpoint(self) -> Checkpoint:
        return self._pub_cp

    @property
    def size(self) -> int:
        """Size of the published tree."""
        return self._pub_cp.size

    @property
    def root(self) -> bytes:
        return self._pub_cp.root

    @property
    def checkpoint_note(self) -> bytes:
        """The published signed note, cosignatures included."""
        return self._pub_note

    @property
    def signed_size(self) -> int:
        """Size of the last signed tree (>= :attr:`size` when a stage is unpublished)."""
        return self._signed_cp.size if self._signer is not None else self._pub_cp.size

    @property
    def pending_note(self) -> bytes | None:
        """The staged, signed but unpublished checkpoint, if any."""
        return self._pending

    def _trusted(self, size: int) -> TileHashReader:
        return TileHashReader(size, self._fetch)

    def hash_reader(self, size: int | None = None) -> TileHashReader:
        """A fresh HashReader over this log's tile files, for trees up to ``size``.

        Defaults to the published size. It reads the tiles of the published
        tree (or of ``size``, if larger and staged): partial tiles exist only for
        checkpointed sizes, and any smaller tree needs just a prefix of them.
        The reader caches tiles; it is not thread-safe, so give each thread its own.
        """
        return self._trusted(max(self._check_size(size), self._pub_cp.size))

    def _shared_reader(self, size: int) -> TileHashReader:
        # Callers hold _reader_lock; one cached reader serves every size up to
        # its own, since smaller trees need only a prefix of its tiles.
        size = max(size, self._pub_cp.size)
        r = self._reader
        if r is None or r.size < size:
            r = self._reader = self._trusted(size) if r is None else r.grown(size)
        return r

    def _check_size(self, size: int | None) -> int:
        limit = self.signed_size
        if size is None:
            return self._pub_cp.size
        if not 0 <= size <= limit:
            raise LedgerError(f"size {size} is not in this log of size {limit}", rule="bad-size")
        return size

    def entries(
        self, start: int, stop: int | None = None, *, signed: bool = False
    ) -> Iterator[bytes]:
        """Entries ``[start, stop)`` of the published tree (or, with ``signed``, of the
        signed one, which a checkpoint still waiting for cosignatures is ahead by)."""
        size = self.signed_size if signed else self._pub_cp.size
        return iter_entries(size, start, size if stop is None else stop, self._fetch)

    def leaf_hash(self, index: int) -> bytes:
        size = self._pub_cp.size
        if not 0 <= index < size:
            raise LedgerError(f"leaf {index} is not in this log of size {size}", rule="bad-index")
        with self._reader_lock:
            return self._shared_reader(size).leaf_hashes(index, index + 1)[0]

    def root_at(self, size: int) -> bytes:
        """Root hash of the tree of the first ``size`` entries."""
        size = self._check_size(size)
        with self._reader_lock:
            return merkle.tree_hash(size, self._shared_reader(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Inclusion proof of leaf ``index`` in the tree of ``size`` (default: published)."""
        size = self._check_size(size)
        with self._reader_lock:
            return merkle.inclusion_proof(size, index, self._shared_reader(size))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` (default: published)."""
        new_size = self._check_size(new_size)
        with self._reader_lock:
            return merkle.consistency_proof(new_size, old_size, self._shared_reader(new_size))

    def __repr__(self) -> str:
        mode = "writer" if self._signer else "reader"
        return f"Log({str(self.directory)!r}, origin={self.origin!r}, size={self.size}, {mode})"
