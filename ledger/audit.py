"""Verify a log directory from scratch: entries, every hash tile, the checkpoint.

The audit trusts nothing but the verifier key. It streams the entry bundles,
recomputes every leaf hash and every tile, compares each with the file on
disk, and finally checks the root against the signed checkpoint. The first
difference is reported with the file and byte offset at fault.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from cityid.errors import LedgerError, NoteError, TileError
from cityid.keys import VerifierKey

from .checkpoint import Checkpoint
from .merkle import HASH_SIZE, subtree_root
from .note import open_note
from .tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    decode_bundle,
    edge_root,
    entries_path,
    tile_path,
    tile_width,
)

Progress = Callable[[int, int], None]


class _Auditor:
    def __init__(self, directory: Path, cp: Checkpoint) -> None:
        self.dir = directory
        self.cp = cp
        self.size = cp.size
        # Per level: the hashes of the tile being filled, taken from the files
        # once checked, so one bad file is blamed once and not on every parent.
        self.rows: list[list[bytes]] = []
        self.checked: dict[int, int] = {}  # tiles checked so far, per level

    def read(self, rel: str) -> bytes:
        try:
            with open(self.dir / rel, "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise TileError(f"{rel}: missing", rule="tile-missing") from e

    def read_tile(self, level: int, index: int) -> tuple[str, bytes]:
        w = tile_width(self.size, level, index)
        path = tile_path(level, index, w)
        data = self.read(path)
        want = w * HASH_SIZE
        if len(data) != want:
            raise TileError(
                f"{path}: {len(data)} bytes, want {want} ({w} hashes)"
                + (f"; truncated at offset {len(data)}" if len(data) < want else ""),
                rule="tile-size",
            )
        return path, data

    def push(self, level: int, hashes: list[bytes]) -> None:
        """Add hashes computed from below to ``level``; check tiles as they complete."""
        while len(self.rows) <= level:
            self.rows.append([])
        row = self.rows[level]
        row.extend(hashes)
        while len(row) >= TILE_WIDTH:
            chunk, rest = row[:TILE_WIDTH], row[TILE_WIDTH:]
            self.rows[level] = row = rest
            self.check(level, self.checked.get(level, 0), chunk)

    def check(self, level: int, index: int, computed: list[bytes]) -> None:
        path, data = self.read_tile(level, index)
        self.checked[level] = index + 1
        if b"".join(computed) != data:
            self.blame(level, index, computed, data, path)
        if len(computed) == TILE_WIDTH:
            self.push(level + 1, [subtree_root(computed)])

    def finish(self) -> None:
        """Check the partial tiles left at the right edge, then the root."""
        level = 0
        while (self.size >> (TILE_HEIGHT * level)) > 0:
            if level < len(self.rows) and self.rows[level]:
                c = self.size >> (TILE_HEIGHT * level)
                self.check(level, c // TILE_WIDTH, self.rows[level])
            level += 1
        root = self.edge_root()
        if root != self.cp.root:
            raise LedgerError(
                f"checkpoint: root for size {self.size} does not match the tiles and entries",
                rule="root-mismatch",
            )

    def edge_root(self) -> bytes:
        level = 0
        tops = []
        while (c := self.size >> (TILE_HEIGHT * level)) > 0:
            w = c % TILE_WIDTH
            if w:
                _, data = self.read_tile(level, c // TILE_WIDTH)
                tops.append([data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])
            level += 1
        return edge_root(tops)

    def consistent_above(self, level: int, index: int, data: bytes) -> bool:
        """Does tile ``(level, index)`` agree with the tile above it (or the root)?"""
        hashes = [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]
        if len(hashes) == TILE_WIDTH:
            _, parent = self.read_tile(level + 1, index // TILE_WIDTH)
            off = (index % TILE_WIDTH) * HASH_SIZE
            return parent[off : off + HASH_SIZE] == subtree_root(hashes)
        return self.edge_root() == self.cp.root

    def blame(self, level: int, index: int, computed: list[bytes], data: bytes, path: str) -> None:
        i = next(
            j
            for j in range(len(computed))
            if computed[j] != data[j * HASH_SIZE : (j + 1) * HASH_SIZE]
        )
        if not self.consistent_above(level, index, data):
            below = "the entries" if level == 0 else f"the tiles at level {level - 1}"
            raise TileError(
                f"{path}: hash {i} at offset {i * HASH_SIZE} does not match {below}",
                rule="tile-mismatch",
            )
        # The tile agrees with everything above it: what lies below is wrong.
        if level == 0:
            bpath = entries_path(index, len(computed))
            bundle = self.read(bpath)
            offset = 0
            for _ in range(i):
                offset += 2 + int.from_bytes(bundle[offset : offset + 2], "big")
            raise TileError(
                f"{bpath}: entry {index * TILE_WIDTH + i} at offset {offset} does not match "
                f"its hash in {path}",
                rule="bundle-mismatch",
            )
        child = tile_path(level - 1, index * TILE_WIDTH + i)
        raise TileError(
            f"{child}: does not hash to hash {i} at offset {i * HASH_SIZE} of {path}",
            rule="tile-mismatch",
        )


def read_checkpoint(directory: str | os.PathLike[str], verifier: VerifierKey) -> Checkpoint:
    """The log's published checkpoint, its signature by ``verifier`` checked."""
    path = Path(directory) / "checkpoint"
    try:
        note = path.read_bytes()
    except OSError as e:
        raise LedgerError(f"{path}: cannot read ({e.strerror})", rule="no-checkpoint") from e
    try:
        return Checkpoint.parse(open_note(note, [verifier]).text)
    except NoteError as e:
        raise NoteError(f"{path}: {e.message}", rule=e.rule) from e


def verify_log(
    directory: str | os.PathLike[str],
    verifier: VerifierKey,
    progress: Progress | None = None,
) -> Checkpoint:
    """Recompute the whole log in ``directory`` and check it against its checkpoint.

    ``progress(done, total)`` is called after each entry bundle. Returns the
    verified checkpoint; raises TileError/LedgerError/NoteError naming the
    first bad file and byte offset.
    """
    d = Path(directory)
    cp = read_checkpoint(d, verifier)
    a = _Auditor(d, cp)
    size = cp.size
    sha = hashlib.sha256
    full, part = divmod(size, TILE_WIDTH)
    for t in range(full + (1 if part else 0)):
        w = TILE_WIDTH if t < full else part
        path = entries_path(t, w)
        entries = decode_bundle(a.read(path), count=w, name=path)
        a.push(0, [sha(b"\x00" + e).digest() for e in entries])
        if progress is not None:
            progress(t * TILE_WIDTH + w, size)
    a.finish()
    return cp
