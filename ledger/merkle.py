"""RFC 9162 §2.1 Merkle tree hashing, proofs and proof verification.

Hashes are addressed the way Go's ``golang.org/x/mod/sumdb/tlog`` does: every
hash the tree ever needs is a *stored hash*, the root of a perfect subtree
``(level, n)`` covering leaves ``[n * 2**level, (n + 1) * 2**level)``. Stored
hashes are numbered in the order an append-only writer produces them (leaf
``i``, then every subtree that leaf completes), so a flat, append-only array is
a complete store, and tiles (see :mod:`ledger.tiles`) are a compact encoding of
the same numbering. Proof construction only ever asks a :class:`HashReader`
for stored hashes, so the same code proves from memory, files or HTTP.

Everything here is pure: no I/O, no clocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

from cityid.errors import LedgerError, ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
# A proof for a tree of up to 2**64 leaves has at most 64 hashes (inclusion) or
# 65 (consistency, with the old root prepended); anything longer is hostile.
MAX_PROOF_LEN = 64

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """MTH of a one-entry list: SHA-256(0x00 || entry)."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node: SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """RFC 9162's k: the largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(hashes: Sequence[bytes]) -> bytes:
    """MTH over ``hashes`` taken as the leaves' hashes of a (sub)tree.

    Pairing level by level and promoting an odd last node unchanged builds the
    same tree as RFC 9162's "split at the largest power of two" recursion.
    """
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    sha = _sha256
    while len(level) > 1:
        nxt = [sha(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


# --- stored hash numbering ---------------------------------------------------


def stored_hash_count(n: int) -> int:
    """How many stored hashes a tree of ``n`` leaves has (sum of n >> i)."""
    if n < 0:
        raise LedgerError(f"tree size {n} is negative", rule="bad-size")
    total = 0
    while n:
        total += n
        n >>= 1
    return total


def stored_hash_index(level: int, n: int) -> int:
    """Index of the stored hash of subtree ``(level, n)``.

    The subtree is completed by leaf ``last = ((n + 1) << level) - 1``; all the
    hashes stored before that leaf come first, then the leaf's own hash and the
    ``level`` subtrees it completes, bottom up.
    """
    if level < 0 or n < 0:
        raise LedgerError(f"stored hash ({level}, {n}) has a negative coordinate", rule="bad-index")
    last = ((n + 1) << level) - 1
    return stored_hash_count(last) + level


def split_stored_hash_index(index: int) -> tuple[int, int]:
    """Inverse of :func:`stored_hash_index`: ``index -> (level, n)``."""
    if index < 0:
        raise LedgerError(f"stored hash index {index} is negative", rule="bad-index")
    # stored_hash_count(r) = 2r - popcount(r) <= 2r, so the leaf r whose hashes
    # include ``index`` is at least index // 2 and at most ~64 further on.
    r = index // 2
    start = stored_hash_count(r)
    while True:
        nxt = start + 1 + ((r + 1) & -(r + 1)).bit_length() - 1
        if nxt > index:
            break
        r += 1
        start = nxt
    level = index - start
    return level, r >> level


class HashReader(Protocol):
    """Anything that returns stored hashes by index (memory, tile files, HTTP)."""

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]: ...


def stored_hashes_for_leaf(n: int, leaf: bytes, reader: HashReader) -> list[bytes]:
    """The stored hashes appending leaf ``n`` (hash ``leaf``) adds, in index order.

    Each trailing one bit of ``n`` completes a subtree whose left sibling is
    already stored; ``reader`` supplies those siblings.
    """
    if len(leaf) != HASH_SIZE:
        raise LedgerError(f"leaf hash is {len(leaf)} bytes, want {HASH_SIZE}", rule="bad-hash")
    completed = ((n + 1) & -(n + 1)).bit_length() - 1
    siblings = reader.read_hashes([stored_hash_index(i, (n >> i) - 1) for i in range(completed)])
    out = [leaf]
    h = leaf
    for sib in siblings:
        h = node_hash(sib, h)
        out.append(h)
    return out


# --- proof construction over a HashReader --------------------------------------


def _ranges_indexes(lo: int, hi: int, out: list[int]) -> int:
    """Append the stored indexes of the maximal perfect subtrees tiling [lo, hi).

    Returns how many were appended. ``lo`` is always aligned for the ranges
    RFC 9162's recursion produces, so greedy largest-power-of-two works.
    """
    count = 0
    while lo < hi:
        size = hi - lo
        k = 1 << (size.bit_length() - 1)
        while lo & (k - 1):
            k >>= 1
        level = k.bit_length() - 1
        out.append(stored_hash_index(level, lo >> level))
        lo += k
        count += 1
    return count


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Combine left-to-right perfect subtrees (decreasing sizes) into one root."""
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _read(reader: HashReader, indexes: list[int]) -> list[bytes]:
    hashes = reader.read_hashes(indexes)
    if len(hashes) != len(indexes) or any(len(h) != HASH_SIZE for h in hashes):
        raise LedgerError(
            f"hash reader returned {len(hashes)} hashes for {len(indexes)} indexes "
            "(or a hash of the wrong length)",
            rule="bad-hash-reader",
        )
    return hashes


def _resolve(ranges: list[tuple[int, int]], reader: HashReader) -> list[bytes]:
    """MTH of each range, fetching all needed stored hashes in one read."""
    indexes: list[int] = []
    counts = [_ranges_indexes(lo, hi, indexes) for lo, hi in ranges]
    hashes = _read(reader, indexes)
    out = []
    pos = 0
    for c in counts:
        out.append(_fold(hashes[pos : pos + c]))
        pos += c
    return out


def tree_hash(size: int, reader: HashReader) -> bytes:
    """The root hash of the tree with ``size`` leaves."""
    if size < 0:
        raise LedgerError(f"tree size {size} is negative", rule="bad-size")
    if size == 0:
        return EMPTY_ROOT
    return _resolve([(0, size)], reader)[0]


def _inclusion_ranges(lo: int, hi: int, index: int, out: list[tuple[int, int]]) -> None:
    # RFC 9162 §2.1.3.1 PATH(m, D[lo:hi]): the deeper path first, then the sibling.
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()


def inclusion_proof(size: int, index: int, reader: HashReader) -> list[bytes]:
    """The RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ProofError(
            f"leaf index {index} is not in a tree of size {size}", rule="index-out-of-range"
        )
    ranges: list[tuple[int, int]] = []
    _inclusion_ranges(0, size, index, ranges)
    return _resolve(ranges, reader)


def _consistency_ranges(m: int, lo: int, hi: int, out: list[tuple[int, int]]) -> None:
    # RFC 9162 §2.1.4.1 SUBPROOF(m, D[lo:hi], b), unrolled; siblings collected
    # outermost first and reversed at the end (the proof lists innermost first).
    complete = True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                out.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo += k
            m -= k
            complete = False
    # The innermost (possibly the old subtree itself) comes first in the proof.
    out.reverse()


def consistency_proof(size_new: int, size_old: int, reader: HashReader) -> list[bytes]:
    """The RFC 9162 consistency proof from ``size_old`` to ``size_new``.

    Empty when ``size_old`` is 0 or equals ``size_new`` (nothing to prove).
    """
    if not 0 <= size_old <= size_new:
        raise ProofError(
            f"no consistency proof from size {size_old} to size {size_new}", rule="bad-sizes"
        )
    if size_old == 0 or size_old == size_new:
        return []
    ranges: list[tuple[int, int]] = []
    _consistency_ranges(size_old, 0, size_new, ranges)
    return _resolve(ranges, reader)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) -----------------------------


def _check_hashes(what: str, proof: Sequence[bytes], limit: int) -> None:
    if len(proof) > limit:
        raise ProofError(f"{what} has {len(proof)} hashes, more than {limit}", rule="proof-length")
    for i, h in enumerate(proof):
        if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
            raise ProofError(f"{what}: hash {i} is not {HASH_SIZE} bytes", rule="proof-hash")


def verify_inclusion(
    proof: Sequence[bytes], size: int, index: int, root: bytes, leaf: bytes
) -> None:
    """Check that ``leaf`` (a leaf *hash*, see :func:`leaf_hash`) is at ``index``.

    Raises :class:`ProofError` naming the index and size when it is not.
    """
    if len(leaf) != HASH_SIZE:
        raise ProofError(
            f"leaf must be a {HASH_SIZE}-byte leaf hash (use leaf_hash(entry)), got {len(leaf)}",
            rule="proof-hash",
        )
    if not 0 <= index < size:
        raise ProofError(
            f"leaf index {index} is not in a tree of size {size}", rule="index-out-of-range"
        )
    _check_hashes("inclusion proof", proof, MAX_PROOF_LEN)
    fn, sn = index, size - 1
    r = bytes(leaf)
    for p in proof:
        if sn == 0:
            raise ProofError(
                f"inclusion proof for leaf {index} in size {size} is too long", rule="proof-length"
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(
            f"inclusion proof for leaf {index} in size {size} is too short", rule="proof-length"
        )
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in size {size} does not lead to the root",
            rule="inclusion",
        )


def verify_consistency(
    proof: Sequence[bytes], size_new: int, root_new: bytes, size_old: int, root_old: bytes
) -> None:
    """Check that the tree ``(size_old, root_old)`` is a prefix of ``(size_new, root_new)``.

    Raises :class:`ProofError` naming both sizes when it is not.
    """
    what = f"consistency proof from size {size_old} to {size_new}"
    if not 0 <= size_old <= size_new:
        raise ProofError(f"{what}: the old size is larger than the new", rule="bad-sizes")
    if len(root_old) != HASH_SIZE or len(root_new) != HASH_SIZE:
        raise ProofError(f"{what}: roots must be {HASH_SIZE} bytes", rule="proof-hash")
    _check_hashes(what, proof, MAX_PROOF_LEN)
    if size_old == size_new:
        if proof:
            raise ProofError(f"{what} must be empty for equal sizes", rule="proof-length")
        if root_old != root_new:
            raise ProofError(f"{what}: same size, different roots", rule="consistency")
        return
    if size_old == 0:
        if proof:
            raise ProofError(f"{what} must be empty from the empty tree", rule="proof-length")
        if root_old != EMPTY_ROOT:
            raise ProofError(f"{what}: the old root is not the empty-tree root", rule="consistency")
        return
    if not proof:
        raise ProofError(f"{what} is empty", rule="proof-length")
    path = list(proof)
    if size_old & (size_old - 1) == 0:
        path.insert(0, bytes(root_old))
    fn, sn = size_old - 1, size_new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"{what} is too long", rule="proof-length")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"{what} is too short", rule="proof-length")
    if fr != root_old:
        raise ProofError(f"{what} does not lead to the old root", rule="consistency")
    if sr != root_new:
        raise ProofError(f"{what} does not lead to the new root", rule="consistency")


# --- a small in-memory tree ------------------------------------------------------


class MemoryTree:
    """Stored hashes in a list: a :class:`HashReader` for tests and small logs."""

    def __init__(self, entries: Sequence[bytes] = ()) -> None:
        self._hashes: list[bytes] = []
        self._size = 0
        for e in entries:
            self.append(e)

    @property
    def size(self) -> int:
        return self._size

    def append(self, entry: bytes) -> int:
        """Append ``entry``; return its index."""
        return self.append_leaf_hash(leaf_hash(entry))

    def append_leaf_hash(self, leaf: bytes) -> int:
        n = self._size
        self._hashes.extend(stored_hashes_for_leaf(n, leaf, self))
        self._size = n + 1
        return n

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        out = []
        for i in indexes:
            if not 0 <= i < len(self._hashes):
                raise LedgerError(
                    f"stored hash {i} does not exist in a tree of size {self._size}",
                    rule="bad-index",
                )
            out.append(self._hashes[i])
        return out

    def leaf_hash(self, index: int) -> bytes:
        return self.read_hashes([stored_hash_index(0, index)])[0]

    def root(self, size: int | None = None) -> bytes:
        return tree_hash(self._size if size is None else size, self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self._size if size is None else size, index, self)

    def consistency_proof(self, size_old: int, size_new: int | None = None) -> list[bytes]:
        return consistency_proof(self._size if size_new is None else size_new, size_old, self)
