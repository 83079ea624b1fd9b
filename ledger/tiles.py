"""c2sp.org/tlog-tiles: tile paths, entry bundles, and reading hashes from tiles.

A tile at level ``L`` holds up to 256 consecutive Merkle hashes at tree level
``8 * L``; level 0 holds leaf hashes. Entry bundles hold the entries behind a
level-0 tile, each prefixed by a big-endian uint16 length. Everything here is
pure: I/O comes in through a ``fetch(path) -> bytes`` callable, so the same
code reads a local directory, an HTTP mirror or a dict in a test.
"""

from __future__ import annotations

import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from cityid.errors import LedgerError, TileError

from .merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    leaf_hash,
    node_hash,
    split_stored_hash_index,
    subtree_root,
)

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_LEVEL = 63
MAX_ENTRY_SIZE = 0xFFFF

Fetch = Callable[[str], bytes]
_U16 = struct.Struct(">H").pack


class TilePath(NamedTuple):
    """A parsed tile path; ``level`` is None for an entry bundle."""

    level: int | None
    index: int
    width: int

    @property
    def is_entries(self) -> bool:
        return self.level is None

    def path(self) -> str:
        if self.level is None:
            return entries_path(self.index, self.width)
        return tile_path(self.level, self.index, self.width)


def _encode_index(n: int) -> str:
    if n < 0:
        raise TileError(f"tile index {n} is negative", rule="bad-tile-path")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def _suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise TileError(
            f"tile width {width} is not between 1 and {TILE_WIDTH}", rule="bad-tile-path"
        )
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``, e.g. ``tile_path(0, 1234, 5) == 'tile/0/x001/234.p/5'``."""
    if not 0 <= level <= MAX_LEVEL:
        raise TileError(
            f"tile level {level} is not between 0 and {MAX_LEVEL}", rule="bad-tile-path"
        )
    return f"tile/{level}/{_encode_index(index)}{_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``."""
    return f"tile/entries/{_encode_index(index)}{_suffix(width)}"


_PATH_RE = re.compile(
    r"tile/(?P<level>entries|0|[1-9][0-9]?)/"
    r"(?P<index>(?:x[0-9]{3}/)*[0-9]{3})"
    r"(?:\.p/(?P<width>[1-9][0-9]{0,2}))?"
)


def parse_tile_path(path: str) -> TilePath:
    """Parse and validate a tile or entry-bundle path (without the URL prefix).

    Only the canonical encoding is accepted (no ``x000/`` lead group, no
    leading zeros in level or width), so each tile has exactly one path.
    """
    m = _PATH_RE.fullmatch(path)
    if m is None:
        raise TileError(f"{path!r} is not a tile path", rule="bad-tile-path")
    groups = m["index"].split("/")
    if len(groups) > 1 and groups[0] == "x000":
        raise TileError(f"{path!r}: tile index has a leading zero group", rule="bad-tile-path")
    index = int("".join(g.lstrip("x") for g in groups))
    width = int(m["width"]) if m["width"] else TILE_WIDTH
    if m["width"] and width >= TILE_WIDTH:
        raise TileError(f"{path!r}: partial width must be 1 to 255", rule="bad-tile-path")
    level_s = m["level"]
    level = None if level_s == "entries" else int(level_s)
    if level is not None and level > MAX_LEVEL:
        raise TileError(f"{path!r}: tile level above {MAX_LEVEL}", rule="bad-tile-path")
    return TilePath(level, index, width)


# --- entry bundles --------------------------------------------------------------


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """Concatenate entries, each prefixed with its big-endian uint16 length."""
    try:
        return b"".join([_U16(len(e)) + e for e in entries])
    except struct.error:
        i = next(i for i, e in enumerate(entries) if len(e) > MAX_ENTRY_SIZE)
        raise LedgerError(
            f"entry {i} is {len(entries[i])} bytes; log entries are at most {MAX_ENTRY_SIZE} bytes",
            rule="leaf-too-large",
        ) from None


def decode_bundle(
    data: bytes, *, count: int | None = None, name: str = "entry bundle"
) -> list[bytes]:
    """Split an entry bundle; ``count`` (if given) must match. Errors name the offset."""
    out = []
    pos = 0
    end = len(data)
    mv = memoryview(data)
    while pos < end:
        if pos + 2 > end:
            raise TileError(
                f"{name}: truncated length prefix of entry {len(out)} at offset {pos}",
                rule="bundle-truncated",
            )
        n = (data[pos] << 8) | data[pos + 1]
        if pos + 2 + n > end:
            raise TileError(
                f"{name}: entry {len(out)} at offset {pos} claims {n} bytes, "
                f"only {end - pos - 2} remain",
                rule="bundle-truncated",
            )
        out.append(bytes(mv[pos + 2 : pos + 2 + n]))
        pos += 2 + n
    if count is not None and len(out) != count:
        raise TileError(f"{name}: holds {len(out)} entries, want {count}", rule="bundle-count")
    return out


# --- which tiles a tree has -------------------------------------------------------


def tiles_for_size(size: int) -> list[tuple[int, int, int]]:
    """Every hash tile ``(level, index, width)`` a tree of ``size`` leaves publishes."""
    out = []
    level = 0
    while (c := size >> (TILE_HEIGHT * level)) > 0:
        full, part = divmod(c, TILE_WIDTH)
        out.extend((level, i, TILE_WIDTH) for i in range(full))
        if part:
            out.append((level, full, part))
        level += 1
    return out


def bundles_for_size(size: int) -> list[tuple[int, int]]:
    """Every entry bundle ``(index, width)`` a tree of ``size`` leaves publishes."""
    full, part = divmod(size, TILE_WIDTH)
    out = [(i, TILE_WIDTH) for i in range(full)]
    if part:
        out.append((full, part))
    return out


def partial_tiles(size: int) -> list[TilePath]:
    """The partial entry bundle and hash tiles a tree of ``size`` leaves publishes.

    These are the only partial files a checkpoint of ``size`` needs; every
    other partial is superseded (by a full tile, or by a wider partial of the
    same tile for a larger tree). O(levels), unlike :func:`tiles_for_size`.
    """
    out = []
    if size % TILE_WIDTH:
        out.append(TilePath(None, size // TILE_WIDTH, size % TILE_WIDTH))
    level = 0
    while (c := size >> (TILE_HEIGHT * level)) > 0:
        if c % TILE_WIDTH:
            out.append(TilePath(level, c // TILE_WIDTH, c % TILE_WIDTH))
        level += 1
    return out


def full_tile_count(size: int, level: int | None) -> int:
    """How many full tiles at ``level`` (None: entry bundles) a tree of ``size`` has."""
    return (size >> (TILE_HEIGHT * (level or 0))) // TILE_WIDTH


def partial_dir(level: int | None, index: int) -> str:
    """The directory holding the partials of one tile: ``tile/<L>/<N>.p``."""
    full = entries_path(index) if level is None else tile_path(level, index)
    return full + ".p"


_WIDTH_RE = re.compile(r"[1-9][0-9]{0,2}")


def partial_width(name: str) -> int | None:
    """The width a file name in a ``.p`` directory stands for, or None if it is not one."""
    if _WIDTH_RE.fullmatch(name) is None or int(name) >= TILE_WIDTH:
        return None
    return int(name)


def tile_width(size: int, level: int, index: int) -> int:
    """Width of tile ``(level, index)`` in the tree of ``size`` leaves (0: absent)."""
    c = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, c - index * TILE_WIDTH))


def split_tile(data: bytes, width: int, *, name: str = "tile") -> list[bytes]:
    """The ``width`` hashes of a hash tile; TileError if its length is wrong."""
    want = width * HASH_SIZE
    if len(data) != want:
        raise TileError(
            f"{name} is {len(data)} bytes, want {want} ({width} hashes)"
            + (" (truncated)" if len(data) < want else ""),
            rule="tile-size",
        )
    return [data[i : i + HASH_SIZE] for i in range(0, want, HASH_SIZE)]


def _pyramid(hashes: list[bytes]) -> list[list[bytes]]:
    """All complete interior levels of a tile, bottom up (level 0 = the tile)."""
    levels = [hashes]
    cur = hashes
    while len(cur) > 1:
        cur = [node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        levels.append(cur)
    return levels


def _partial_roots(hashes: list[bytes]) -> list[bytes]:
    """Roots of the maximal perfect subtrees tiling a partial tile, left to right."""
    out = []
    pos = 0
    w = len(hashes)
    for bit in range(TILE_HEIGHT, -1, -1):
        k = 1 << bit
        if w & k:
            out.append(subtree_root(hashes[pos : pos + k]))
            pos += k
    return out


class TileHashReader:
    """A :class:`ledger.merkle.HashReader` over the tiles of a tree of ``size`` leaves.

    Tiles come from ``fetch(path)``. With ``root`` given, every tile used is
    first checked against it (partial tiles by recomputing the root, full tiles
    by their hash in the tile above), so an untrusted mirror is safe to read.
    Without ``root`` the tiles are trusted (the log's own files).
    """

    def __init__(
        self, size: int, fetch: Fetch, root: bytes | None = None, *, cache_tiles: int = 4096
    ) -> None:
        if size < 0:
            raise LedgerError(f"tree size {size} is negative", rule="bad-size")
        self.size = size
        self.root = root
        self._fetch = fetch
        self._cache: OrderedDict[tuple[int, int], list[list[bytes]]] = OrderedDict()
        self._cache_tiles = cache_tiles
        self._partials_checked = False

    # -- paths -------------------------------------------------------------------

    def _tile_for(self, index: int) -> tuple[int, int, int, int]:
        """Map a stored hash index to (tile level, tile index, height in tile, offset)."""
        level, n = split_stored_hash_index(index)
        tl, h = divmod(level, TILE_HEIGHT)
        first = n << h
        t, off = divmod(first, TILE_WIDTH)
        if ((n + 1) << level) > self.size:
            raise TileError(
                f"stored hash {index} (level {level}, node {n}) is not in a tree of size "
                f"{self.size}",
                rule="hash-out-of-range",
            )
        return tl, t, h, off

    def path(self, level: int, index: int) -> str:
        w = tile_width(self.size, level, index)
        if w == 0:
            raise TileError(
                f"tile {level}/{index} does not exist in a tree of size {self.size}",
                rule="hash-out-of-range",
            )
        return tile_path(level, index, w)

    def paths_for(self, indexes: Sequence[int]) -> list[str]:
        """The tile paths :meth:`read_hashes` will fetch (for prefetching, e.g. over HTTP)."""
        want: dict[tuple[int, int], None] = {}
        for i in indexes:
            tl, t, _, _ = self._tile_for(i)
            want[(tl, t)] = None
            if self.root is not None:
                # A full tile is checked against its parent, up to a partial tile.
                while tile_width(self.size, tl, t) == TILE_WIDTH:
                    tl, t = tl + 1, t >> TILE_HEIGHT
                    want[(tl, t)] = None
        if self.root is not None and not self._partials_checked:
            for tl, t, w in tiles_for_size(self.size):
                if w < TILE_WIDTH:
                    want[(tl, t)] = None
        return [self.path(tl, t) for tl, t in want]

    # -- fetching ------------------------------------------------------------------

    def _load(self, level: int, index: int) -> list[bytes]:
        path = self.path(level, index)
        try:
            data = self._fetch(path)
        except LedgerError:
            raise
        except (OSError, KeyError) as e:
            raise TileError(f"{path}: cannot read tile ({e})", rule="tile-missing") from e
        return split_tile(data, tile_width(self.size, level, index), name=path)

    def _check_partials(self) -> None:
        if self._partials_checked or self.root is None:
            return
        roots: list[bytes] = []
        partial = [(tl, t) for tl, t, w in tiles_for_size(self.size) if w < TILE_WIDTH]
        loaded = {}
        for tl, t in sorted(partial, reverse=True):
            hashes = self._load(tl, t)
            loaded[(tl, t)] = hashes
            roots.extend(_partial_roots(hashes))
        got = roots[-1] if roots else EMPTY_ROOT
        for left in reversed(roots[:-1]):
            got = node_hash(left, got)
        if got != self.root:
            paths = ", ".join(self.path(tl, t) for tl, t in sorted(partial))
            raise TileError(
                f"partial tiles ({paths}) do not hash to the root of size {self.size}",
                rule="tile-mismatch",
            )
        for key, hashes in loaded.items():
            self._remember(key, _pyramid(hashes))
        self._partials_checked = True

    def _remember(self, key: tuple[int, int], pyr: list[list[bytes]]) -> None:
        self._cache[key] = pyr
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_tiles:
            self._cache.popitem(last=False)

    def tile(self, level: int, index: int) -> list[list[bytes]]:
        """The (verified, if ``root`` was given) hash pyramid of tile ``(level, index)``."""
        key = (level, index)
        pyr = self._cache.get(key)
        if pyr is not None:
            self._cache.move_to_end(key)
            return pyr
        self._check_partials()
        pyr = self._cache.get(key)
        if pyr is not None:
            return pyr
        hashes = self._load(level, index)
        pyr = _pyramid(hashes)
        if self.root is not None:
            # Partial tiles were all checked above, so this one is full.
            parent = self.tile(level + 1, index >> TILE_HEIGHT)[0]
            if pyr[-1][0] != parent[index & (TILE_WIDTH - 1)]:
                raise TileError(
                    f"{self.path(level, index)} does not match its hash in "
                    f"{self.path(level + 1, index >> TILE_HEIGHT)}",
                    rule="tile-mismatch",
                )
        self._remember(key, pyr)
        return pyr

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        out = []
        for i in indexes:
            tl, t, h, off = self._tile_for(i)
            pyr = self.tile(tl, t)
            out.append(pyr[h][off >> h])
        return out

    def grown(self, size: int, root: bytes | None = None) -> TileHashReader:
        """A reader for a larger tree that keeps this one's cached full tiles.

        Full tiles never change, so they carry over; partial ones do not. With
        ``root``, only call this after checking the larger tree is consistent
        with this one (a consistency proof), since carried tiles are not rechecked.
        """
        if size < self.size:
            raise LedgerError(
                f"cannot shrink a tile reader from {self.size} to {size}", rule="bad-size"
            )
        r = TileHashReader(size, self._fetch, root, cache_tiles=self._cache_tiles)
        for (level, index), pyr in self._cache.items():
            if len(pyr[0]) == TILE_WIDTH:
                r._cache[(level, index)] = pyr
        return r

    def leaf_hashes(self, start: int, stop: int) -> list[bytes]:
        """Leaf hashes ``[start, stop)`` straight from the level-0 tiles."""
        if not 0 <= start <= stop <= self.size:
            raise TileError(
                f"leaf range [{start}, {stop}) is not in a tree of size {self.size}",
                rule="hash-out-of-range",
            )
        out: list[bytes] = []
        pos = start
        while pos < stop:
            t, off = divmod(pos, TILE_WIDTH)
            row = self.tile(0, t)[0]
            take = min(stop - pos, TILE_WIDTH - off)
            out.extend(row[off : off + take])
            pos += take
        return out


def iter_entries(
    size: int,
    start: int,
    stop: int,
    fetch: Fetch,
    hashes: TileHashReader | None = None,
) -> Iterator[bytes]:
    """Yield entries ``[start, stop)`` of the tree of ``size`` leaves from its bundles.

    With ``hashes`` (ideally built with the checkpoint root), each entry is
    checked against its leaf hash, so bundles from a mirror can be trusted.
    """
    if not 0 <= start <= stop <= size:
        raise TileError(
            f"entry range [{start}, {stop}) is not in a tree of size {size}",
            rule="entry-out-of-range",
        )
    pos = start
    while pos < stop:
        t, off = divmod(pos, TILE_WIDTH)
        width = min(TILE_WIDTH, size - t * TILE_WIDTH)
        path = entries_path(t, width)
        try:
            data = fetch(path)
        except LedgerError:
            raise
        except (OSError, KeyError) as e:
            raise TileError(f"{path}: cannot read entry bundle ({e})", rule="bundle-missing") from e
        bundle = decode_bundle(data, count=width, name=path)
        take = min(stop - pos, width - off)
        if hashes is not None:
            want = hashes.leaf_hashes(pos, pos + take)
            for j in range(take):
                if leaf_hash(bundle[off + j]) != want[j]:
                    raise TileError(
                        f"{path}: entry {pos + j} does not match its leaf hash",
                        rule="bundle-mismatch",
                    )
        yield from bundle[off : off + take]
        pos += take


def build_tiles(entries: Sequence[bytes]) -> dict[str, bytes]:
    """Every hash tile and entry bundle of the tree of ``entries``, by path.

    Builds a whole log in memory: for tests, fixtures and small mirrors.
    """
    out: dict[str, bytes] = {}
    for t, w in bundles_for_size(len(entries)):
        out[entries_path(t, w)] = encode_bundle(entries[t * TILE_WIDTH : t * TILE_WIDTH + w])
    row = [leaf_hash(e) for e in entries]
    level = 0
    while row:
        full, part = divmod(len(row), TILE_WIDTH)
        above = []
        for t in range(full + (1 if part else 0)):
            chunk = row[t * TILE_WIDTH : (t + 1) * TILE_WIDTH]
            out[tile_path(level, t, len(chunk))] = b"".join(chunk)
            if len(chunk) == TILE_WIDTH:
                above.append(subtree_root(chunk))
        row = above
        level += 1
    return out


def edge_root(edge: Sequence[Sequence[bytes]]) -> bytes:
    """The root of a tree given its right edge: per level, the hashes of its partial tile.

    ``edge[level]`` holds the hashes of the rightmost, partial tile at that level
    (empty when the level has no partial tile); full tiles below are summarised
    by the levels above them.
    """
    roots: list[bytes] = []
    for row in reversed(edge):
        pos = 0
        for bit in range(TILE_HEIGHT, -1, -1):
            k = 1 << bit
            if len(row) & k:
                roots.append(subtree_root(list(row[pos : pos + k])))
                pos += k
    if not roots:
        return EMPTY_ROOT
    h = roots[-1]
    for left in reversed(roots[:-1]):
        h = node_hash(left, h)
    return h
