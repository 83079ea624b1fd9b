"""A compact, immutable table of identifier versions: what a namespace snapshot loads.

:class:`cityid.authority.Namespace` keeps each prefix's explicit identifiers
(those minted one by one, or changed inside a range) in a ``dict`` of suffix ->
``2*version + alive``. A dict costs ~120 bytes per identifier, and building one
of 10 million entries takes seconds however it is decoded (pickle, marshal,
msgpack: 10-20 s measured at 10M on a two-core VM), because every key becomes an
object and every object a hash-table slot. This table holds the same mapping
as a few large ``bytes`` objects that are read in place, so a snapshot loads in
time proportional to its bytes, not its entries (0.5 s at 10M), and costs ~17
bytes per identifier in memory:

* ``blocks``: sorted runs of entries, each block ``b"\\nSUFFIX=PACKED\\n...\\n"``
  (about :data:`TARGET` entries; never more than :data:`MAX_BLOCK`). Suffixes are
  ``0-9 A-Z - _`` only, so ``\\n`` and ``=`` delimit them unambiguously. A loaded
  table keeps them as one ``blob`` and the offsets where each starts; a merged one,
  as a list of ``bytes``;
* ``fence``: the first suffix of every block, for a binary search (``bytes``,
  whose comparisons are a ``memcmp``: three times faster than ``str`` ones here);
* ``numbers``: per ``(letters, width)``, the sorted numbers of the suffixes that
  have the shape of a minted one (what ``_Ids.numbered`` holds for a dict), for
  range-overlap checks and the next free number: ``u32`` arrays up to 9 digits,
  ``u64`` up to 19, a list of ints beyond (widths go up to 30).

A lookup is a bisect, one ``bytes.find`` in a block of ~400 bytes and an ``int()``:
a few microseconds where a dict takes one (cache and TLB misses dominate both at
10 million). The table never changes: :meth:`IdTable.merged` returns a new one that
shares every untouched block with this one, which is how the namespace folds the
identifiers written since the last snapshot into it, in a worker thread, while the
event loop keeps serving from the old one.

Pure data, no I/O: :mod:`cityid.snapshot` turns it into bytes and back.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from .identifiers import split_minted

#: Entries per block when blocks are cut; a block grows to at most MAX_BLOCK by merges
#: before it is cut again. A lookup's ``find`` scans its block nearly byte by byte (every
#: entry holds the characters of the needle, so the search skips little): 32 entries,
#: ~400 bytes, scan in ~1 us where 128 took ~4 us (measured on a busy two-core VM).
TARGET = 32
MAX_BLOCK = 2 * TARGET
#: Fence entries per step of the lookup's first-level index (see IdTable._top).
TOP = 64

Numbers = Sequence[int]  # array('I'), array('Q') or list[int], sorted, unique


def _typecode(itemsize: int) -> str:
    for code in "ILQ":
        if array(code).itemsize == itemsize:
            return code
    raise RuntimeError(f"no unsigned array type of {itemsize} bytes")  # pragma: no cover


#: Platform-neutral names of the number layouts (a snapshot stores the name).
TYPECODES = {"u32": _typecode(4), "u64": _typecode(8)}


def number_kind(width: int) -> str:
    """How the numbers of ``width``-digit minted suffixes are stored: ``u32`` or ``u64``
    arrays, or ``int``, a list (20 digits and more do not fit 64 bits; widths go to 30)."""
    if width <= 9:
        return "u32"
    if width <= 19:
        return "u64"
    return "int"


def new_numbers(width: int, values: Sequence[int] = ()) -> Numbers:
    kind = number_kind(width)
    return list(values) if kind == "int" else array(TYPECODES[kind], values)


#: The largest list sorted in one call. A sort holds the GIL from start to end, and a
#: snapshot's merge runs in a thread beside the event loop: 16k keys sort in a few ms.
SORT_RUN = 1 << 14


def gently_sorted(items: Iterable[Any]) -> list[Any]:
    """``sorted(items)``, never holding the GIL for long (see SORT_RUN): runs of SORT_RUN
    sorted separately, then merged in Python unless they follow each other already."""
    it = iter(items)
    runs = []
    while run := sorted(itertools.islice(it, SORT_RUN)):
        runs.append(run)
    if len(runs) <= 1:
        return runs[0] if runs else []
    if all(a[-1] < b[0] for a, b in itertools.pairwise(runs)):
        out = [x for run in runs for x in run]
    else:
        out = list(heapq.merge(*runs))
    release(*runs)
    return out


def release(*lists: list[Any]) -> None:
    """Empty big lists a slice at a time: freeing millions of objects in one ``del`` is
    one C loop that holds the GIL for as long as it takes."""
    for lst in lists:
        while lst:
            del lst[-SORT_RUN:]


# Entries are handled as two parallel lists, suffixes and packed versions (both the
# bytes a block holds), never as a tuple per entry: millions of tuples would be
# tracked by the garbage collector, whose full passes then stop every thread.


def _block(keys: Sequence[bytes], vals: Sequence[bytes]) -> bytes:
    return b"".join([b"\n" + k + b"=" + v for k, v in zip(keys, vals, strict=True)]) + b"\n"


def parse_block(block: bytes) -> tuple[list[bytes], list[bytes]]:
    """A block's suffixes and packed versions, in order, as the bytes it holds."""
    # One split at C speed: "\nK1=V1\nK2=V2\n" -> [K1, V1, K2, V2].
    parts = block[1:-1].replace(b"=", b"\n").split(b"\n")
    return parts[::2], parts[1::2]


def _cut(keys: list[bytes], vals: list[bytes], fence: list[bytes], blocks: list[bytes]) -> None:
    """Append the sorted entries as blocks of about TARGET entries."""
    n = len(keys)
    if n == 0:
        return
    parts = 1 if n <= MAX_BLOCK else -(-n // TARGET)
    step = -(-n // parts)
    for i in range(0, n, step):
        fence.append(keys[i])
        blocks.append(_block(keys[i : i + step], vals[i : i + step]))


def _union(
    old: tuple[list[bytes], list[bytes]], new_keys: list[bytes], new_vals: list[bytes]
) -> tuple[list[bytes], list[bytes], int]:
    """The sorted union of a block's ``old`` entries and the sorted new ones (the new value
    wins), and how many of the new ones were not in ``old``. ``old`` is one block (at most
    MAX_BLOCK entries); the new ones may be a million: only sliced, never re-sorted."""
    out_k: list[bytes] = []
    out_v: list[bytes] = []
    lo = replaced = 0
    for k, v in zip(*old, strict=True):
        i = bisect_left(new_keys, k, lo)
        out_k += new_keys[lo:i]
        out_v += new_vals[lo:i]
        if i < len(new_keys) and new_keys[i] == k:
            replaced += 1
        else:
            out_k.append(k)
            out_v.append(v)
        lo = i
    out_k += new_keys[lo:]
    out_v += new_vals[lo:]
    return out_k, out_v, len(new_keys) - replaced


def _insert_numbers(old: Numbers, width: int, new: list[int]) -> Numbers:
    """``old`` with the sorted unique ``new`` numbers inserted (a new sequence)."""
    if not new:
        return old
    if not old or new[0] > old[-1]:  # the common case: minting goes on after the last one
        out = new_numbers(width)
        for seq in (old, new):
            for i in range(0, len(seq), 1 << 18):  # in steps: each C call holds the GIL
                out.extend(seq[i : i + (1 << 18)])
        return out
    out = new_numbers(width)
    prev = 0
    for x in new:
        i = bisect_left(old, x, prev)
        if i < len(old) and old[i] == x:
            continue
        out.extend(old[prev:i])
        out.append(x)
        prev = i
    out.extend(old[prev:])
    return out


class IdTable:
    """Suffix -> packed version (``2*version + alive``), sorted and immutable; see the module.

    Its blocks are either a list of ``bytes`` (as merges make them) or, as a snapshot
    loads them, a ``blob`` with the ``offsets`` where each block starts (and, last, where
    the last ends), counted from ``base``: searched in place, so loading costs no copy and
    no per-block work (the blob may be the whole snapshot file's bytes).
    """

    __slots__ = ("_blocks", "_top", "base", "blob", "count", "fence", "numbers", "offsets")

    def __init__(
        self,
        fence: list[bytes],
        blocks: list[bytes] | None,
        count: int,
        numbers: dict[tuple[str, int], Numbers],
        *,
        blob: bytes | None = None,
        offsets: Sequence[int] | None = None,
        base: int = 0,
    ) -> None:
        if (blocks is None) == (blob is None) or (blob is None) != (offsets is None):
            raise ValueError("an IdTable has a list of blocks, or a blob and its offsets")
        if offsets is not None and len(offsets) != len(fence) + 1:
            raise ValueError("an IdTable's offsets are one per block, and one for the end")
        self.base = base
        self.fence = fence
        # Every TOP-th fence suffix, copied so they lie together in memory: the first
        # steps of a lookup then stay in cache, and the last ones read TOP neighbours.
        # (A bisect over the whole fence touches ~20 far-apart objects: at 10 million
        # identifiers, cache and TLB misses made it most of a lookup's time.)
        self._top = [bytes(memoryview(f)) for f in fence[::TOP]]
        self._blocks = blocks
        self.blob = blob
        self.offsets = offsets
        self.count = count
        self.numbers = numbers

    @classmethod
    def empty(cls) -> IdTable:
        return cls([], [], 0, {})

    @classmethod
    def build(cls, entries: Mapping[str, int]) -> IdTable:
        return cls.empty().merged(entries)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"IdTable({self.count} identifiers in {len(self.fence)} blocks)"

    @property
    def blocks(self) -> list[bytes]:
        """The blocks as a list (cut out of the blob, once, if the table has one)."""
        if self._blocks is None:
            assert self.blob is not None and self.offsets is not None
            blob, off, base = self.blob, self.offsets, self.base
            n = len(self.fence)
            self._blocks = [blob[base + off[i] : base + off[i + 1]] for i in range(n)]
        return self._blocks

    def block_offsets(self) -> array[int]:
        """Where each block starts in :meth:`block_bytes`, then where the last ends
        (``u64``: a new array, or the loaded one)."""
        if self._blocks is None:
            assert isinstance(self.offsets, array)
            return self.offsets
        out = array(TYPECODES["u64"], [0])
        blocks = self._blocks
        for i in range(0, len(blocks), SORT_RUN):  # in steps: each C call holds the GIL
            ends = itertools.accumulate(map(len, blocks[i : i + SORT_RUN]), initial=out[-1])
            out.extend(itertools.islice(ends, 1, None))
        return out

    def fence_bytes(self) -> Iterator[bytes]:
        """The fence suffixes joined by ``\\n``, in pieces."""
        fence = self.fence
        for i in range(0, len(fence), SORT_RUN):
            yield (b"\n" if i else b"") + b"\n".join(fence[i : i + SORT_RUN])

    def fence_size(self) -> int:
        """How many bytes :meth:`fence_bytes` yields."""
        fence = self.fence
        total = sum(sum(map(len, fence[i : i + SORT_RUN])) for i in range(0, len(fence), SORT_RUN))
        return total + max(len(fence) - 1, 0)

    def block_bytes(self, piece: int) -> Iterator[bytes | memoryview]:
        """Every block, concatenated, in pieces of about ``piece`` bytes."""
        if self._blocks is None:
            assert self.blob is not None and self.offsets is not None
            start, end = self.base + self.offsets[0], self.base + self.offsets[-1]
            with memoryview(self.blob) as view:
                for i in range(start, end, piece):
                    yield view[i : min(i + piece, end)]
            return
        group: list[bytes] = []
        size = 0
        for block in self._blocks:
            group.append(block)
            size += len(block)
            if size >= piece:
                yield b"".join(group)
                group, size = [], 0
        if group:
            yield b"".join(group)

    def discard(self) -> None:
        """Empty a table no one reads any more (one a merge replaced), a slice at a time,
        so that freeing it never holds the GIL long (see :func:`release`)."""
        for lst in (self._blocks, self.fence, self._top):
            if lst is not None:
                release(lst)
        self._blocks, self.blob, self.offsets = [], None, None
        self.numbers = {}
        self.count = 0

    # -- queries ----------------------------------------------------------------------

    def get(self, suffix: str) -> int | None:
        """The packed version of ``suffix``, or None if the table does not hold it."""
        key = suffix.encode()
        t = bisect_right(self._top, key) - 1
        if t < 0:
            return None
        lo = t * TOP
        fence = self.fence
        i = bisect_right(fence, key, lo, min(lo + TOP, len(fence))) - 1
        needle = b"\n" + key + b"="
        blob = self.blob
        if blob is None:
            block = self.blocks[i]
            at = block.find(needle)
            if at < 0:
                return None
            at += len(needle)
            return int(block[at : block.index(b"\n", at)])
        offsets, base = self.offsets, self.base
        assert offsets is not None
        end = base + offsets[i + 1]
        at = blob.find(needle, base + offsets[i], end)
        if at < 0:
            return None
        at += len(needle)
        return int(blob[at : blob.index(b"\n", at, end)])

    def items(self) -> Iterator[tuple[str, int]]:
        """Every (suffix, packed version), in suffix order."""
        for block in self.blocks:
            keys, vals = parse_block(block)
            for k, v in zip(keys, vals, strict=True):
                yield k.decode(), int(v)

    def numbers_between(self, letters: str, width: int, lo: int, hi: int) -> Iterator[int]:
        """Numbers of minted-shape suffixes ``letters`` + ``width`` digits in ``[lo, hi)``."""
        nums = self.numbers.get((letters, width))
        if not nums:
            return
        for i in range(bisect_left(nums, lo), bisect_left(nums, hi)):
            yield nums[i]

    def max_number(self, letters: str, width: int) -> int | None:
        nums = self.numbers.get((letters, width))
        return nums[-1] if nums else None

    # -- building -----------------------------------------------------------------------

    def merged(
        self,
        changes: Mapping[str, int],
        numbers: Mapping[tuple[str, int], Collection[int]] | None = None,
    ) -> IdTable:
        """A new table: this one with ``changes`` (suffix -> packed version) written over it.

        ``numbers``: the minted-shape numbers of the ``changes``' suffixes, per (letters,
        width), if the caller has them (``_Ids.numbered``); else they are parsed from the
        suffixes. Blocks no change falls into are shared, not copied; a block that grows
        past MAX_BLOCK is cut again. Costs O(changes x log blocks) plus the touched blocks
        (identifiers minted in order, a CSV or auto-numbered rows, touch the last block
        only), and never holds the GIL for long: it runs beside an event loop.
        """
        if not changes:
            return self
        keys = gently_sorted(changes)  # str order is bytes order: suffixes are ASCII
        new_vals = [b"%d" % changes[k] for k in keys]
        new_keys = [k.encode() for k in keys]
        release(keys)
        fence, blocks = self.fence, self.blocks if self.fence else []
        out_fence: list[bytes] = []
        out_blocks: list[bytes] = []
        added = 0
        if not blocks:
            added = len(new_keys)
            _cut(new_keys, new_vals, out_fence, out_blocks)
        else:
            prev = 0  # blocks before `prev` are already in the output
            i, n = 0, len(new_keys)
            while i < n:
                # Keys before the first fence join the first block.
                b = max(bisect_right(fence, new_keys[i]) - 1, 0)
                j = bisect_left(new_keys, fence[b + 1], i) if b + 1 < len(fence) else n
                out_fence += fence[prev:b]
                out_blocks += blocks[prev:b]
                ks, vs, fresh = _union(parse_block(blocks[b]), new_keys[i:j], new_vals[i:j])
                added += fresh
                _cut(ks, vs, out_fence, out_blocks)
                prev, i = b + 1, j
            out_fence += fence[prev:]
            out_blocks += blocks[prev:]
        release(new_keys, new_vals)
        if numbers is None:
            numbers = _minted_numbers(changes)
        return IdTable(out_fence, out_blocks, self.count + added, self._with_numbers(numbers))

    def _with_numbers(
        self, numbers: Mapping[tuple[str, int], Collection[int]]
    ) -> dict[tuple[str, int], Numbers]:
        if not any(numbers.values()):
            return self.numbers
        out = dict(self.numbers)
        for (letters, width), nums in numbers.items():
            if nums:
                old = out.get((letters, width), new_numbers(width))
                out[(letters, width)] = _insert_numbers(old, width, gently_sorted(nums))
        return out


def _minted_numbers(suffixes: Iterable[str]) -> dict[tuple[str, int], set[int]]:
    """The numbers of the suffixes shaped like minted ones, per (letters, width)."""
    out: dict[tuple[str, int], set[int]] = {}
    for suffix in suffixes:
        parts = split_minted(suffix)
        if parts is not None:
            letters, number, width = parts
            out.setdefault((letters, width), set()).add(number)
    return out


def numbers_to_bytes(nums: Numbers) -> bytes | memoryview:
    """Little-endian bytes of an array, or decimal lines of a list of ints."""
    if isinstance(nums, array):
        if sys.byteorder == "little":
            return memoryview(nums).cast("B")
        swapped = array(nums.typecode, nums)
        swapped.byteswap()
        return swapped.tobytes()
    return b"\n".join(b"%d" % n for n in nums)


def numbers_from_bytes(kind: str, data: bytes | memoryview) -> Numbers:
    """The inverse of :func:`numbers_to_bytes` for ``kind`` (see :func:`number_kind`)."""
    if kind == "int":
        return [int(x) for x in bytes(data).split(b"\n")] if data else []
    nums = array(TYPECODES[kind])
    nums.frombytes(data)
    if sys.byteorder != "little":
        nums.byteswap()
    return nums
