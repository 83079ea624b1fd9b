"""RFC 9162 hashing and proofs: known answers, a naive reference, properties."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid.errors import LedgerError, ProofError
from ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    split_stored_hash_index,
    stored_hash_count,
    stored_hash_index,
    subtree_root,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)


def mth(entries: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written straight from the definition."""
    if not entries:
        return hashlib.sha256(b"").digest()
    if len(entries) == 1:
        return hashlib.sha256(b"\x00" + entries[0]).digest()
    k = 1
    while k * 2 < len(entries):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(entries[:k]) + mth(entries[k:])).digest()


def entries_of(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


# A tree shared by the property tests: proofs for any size up to its size.
BIG = MemoryTree(entries_of(1100))


def test_empty_root_known_answer() -> None:
    assert base64.b64encode(EMPTY_ROOT).decode() == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert MemoryTree().root() == EMPTY_ROOT
    assert tree_hash(0, MemoryTree()) == EMPTY_ROOT


def test_leaf_and_node_domain_separation() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert node_hash(a, b) != leaf_hash(a + b)


def test_roots_match_reference_for_every_size_to_300() -> None:
    entries = entries_of(300)
    tree = MemoryTree()
    for n, e in enumerate(entries, start=1):
        tree.append(e)
        assert tree.root() == mth(entries[:n]), n
        assert subtree_root([leaf_hash(x) for x in entries[:n]]) == mth(entries[:n])


def test_stored_hash_numbering() -> None:
    # Leaf 0, leaf 1, node (1,0), leaf 2, leaf 3, node (1,1), node (2,0), ...
    assert [stored_hash_index(0, i) for i in range(4)] == [0, 1, 3, 4]
    assert stored_hash_index(1, 0) == 2
    assert stored_hash_index(1, 1) == 5
    assert stored_hash_index(2, 0) == 6
    assert [stored_hash_count(n) for n in range(6)] == [0, 1, 3, 4, 7, 8]
    for level in range(10):
        for n in range(200):
            assert split_stored_hash_index(stored_hash_index(level, n)) == (level, n)
    assert len(BIG._hashes) == stored_hash_count(BIG.size)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 255, 256, 257, 1024, 1100])
def test_every_inclusion_and_consistency_proof_for_edge_sizes(size: int) -> None:
    tree = MemoryTree(entries_of(size))
    root = tree.root()
    step = max(1, size // 40)
    for i in range(0, size, step):
        proof = tree.inclusion_proof(i)
        verify_inclusion(proof, size, i, root, leaf_hash(f"entry {i}".encode()))
    for old in range(0, size + 1, step):
        proof = tree.consistency_proof(old)
        verify_consistency(proof, size, root, old, tree.root(old))


def test_rfc_example_shapes() -> None:
    # RFC 9162 §2.1.5: the 7-leaf tree; inclusion of d0 is [b, h, l] and
    # consistency 3 -> 7 is [c, d, g, l].
    tree = MemoryTree(entries_of(7))
    e = entries_of(7)
    b = leaf_hash(e[1])
    h = mth(e[2:4])
    l_ = mth(e[4:7])
    assert tree.inclusion_proof(0) == [b, h, l_]
    c, d = leaf_hash(e[2]), leaf_hash(e[3])
    g = mth(e[0:2])
    assert tree.consistency_proof(3) == [c, d, g, l_]
    assert tree.consistency_proof(4) == [l_]
    assert tree.consistency_proof(6) == [mth(e[4:6]), leaf_hash(e[6]), mth(e[0:4])]


def test_equal_and_zero_sizes() -> None:
    tree = MemoryTree(entries_of(10))
    root = tree.root()
    assert tree.consistency_proof(10) == []
    verify_consistency([], 10, root, 10, root)
    verify_consistency([], 10, root, 0, EMPTY_ROOT)
    verify_consistency([], 0, EMPTY_ROOT, 0, EMPTY_ROOT)
    with pytest.raises(ProofError, match="same size, different roots"):
        verify_consistency([], 10, root, 10, tree.root(9))
    with pytest.raises(ProofError, match="empty-tree root"):
        verify_consistency([], 10, root, 0, root)
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency([root], 10, root, 10, root)


def test_out_of_range_arguments() -> None:
    tree = MemoryTree(entries_of(5))
    with pytest.raises(ProofError, match="leaf index 5 is not in a tree of size 5"):
        inclusion_proof(5, 5, tree)
    with pytest.raises(ProofError, match="not in a tree of size 0"):
        inclusion_proof(0, 0, tree)
    with pytest.raises(ProofError, match="from size 6 to size 5"):
        consistency_proof(5, 6, tree)
    with pytest.raises(ProofError, match="leaf index 7"):
        verify_inclusion([], 5, 7, tree.root(), leaf_hash(b"x"))
    with pytest.raises(ProofError, match="32-byte leaf hash"):
        verify_inclusion([], 1, 0, tree.root(1), b"entry 0")
    with pytest.raises(LedgerError, match="does not exist"):
        tree.read_hashes([10_000])


def test_wrong_leaf_wrong_index_wrong_size_fail() -> None:
    tree = MemoryTree(entries_of(100))
    root = tree.root()
    proof = tree.inclusion_proof(37)
    leaf = leaf_hash(b"entry 37")
    verify_inclusion(proof, 100, 37, root, leaf)
    with pytest.raises(ProofError, match="leaf 37 in size 100 does not lead to the root"):
        verify_inclusion(proof, 100, 37, root, leaf_hash(b"entry 38"))
    with pytest.raises(ProofError):
        verify_inclusion(proof, 100, 36, root, leaf)
    with pytest.raises(ProofError):
        verify_inclusion(proof, 40, 37, root, leaf)
    with pytest.raises(ProofError, match="too short"):
        verify_inclusion(proof[:-1], 100, 37, root, leaf)
    with pytest.raises(ProofError, match="too long"):
        verify_inclusion([*proof, root], 100, 37, root, leaf)


def test_consistency_proof_that_does_not_verify() -> None:
    tree = MemoryTree(entries_of(50))
    other = MemoryTree([*entries_of(20), b"forged", *entries_of(50)[21:]])
    proof = tree.consistency_proof(30)
    # The new tree rewrote entry 20: the old tree is no prefix of it.
    with pytest.raises(ProofError, match="consistency proof from size 30 to 50"):
        verify_consistency(proof, 50, other.root(), 30, tree.root(30))
    with pytest.raises(ProofError):
        verify_consistency(proof, 50, tree.root(), 30, other.root(30))
    with pytest.raises(ProofError, match="is empty"):
        verify_consistency([], 50, tree.root(), 30, tree.root(30))
    with pytest.raises(ProofError, match="more than 64"):
        verify_consistency([EMPTY_ROOT] * 65, 50, tree.root(), 30, tree.root(30))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_inclusion_proofs_verify_and_byte_flips_fail(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, BIG.size), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    root = BIG.root(size)
    leaf = BIG.leaf_hash(index)
    proof = BIG.inclusion_proof(index, size)
    verify_inclusion(proof, size, index, root, leaf)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="hash")
        byte = data.draw(st.integers(0, 31), label="byte")
        bad = [bytearray(h) for h in proof]
        bad[i][byte] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        with pytest.raises(ProofError):
            verify_inclusion([bytes(h) for h in bad], size, index, root, leaf)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_consistency_proofs_verify_and_byte_flips_fail(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, BIG.size), label="new")
    old = data.draw(st.integers(1, new), label="old")
    proof = BIG.consistency_proof(old, new)
    root_new, root_old = BIG.root(new), BIG.root(old)
    verify_consistency(proof, new, root_new, old, root_old)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="hash")
        byte = data.draw(st.integers(0, 31), label="byte")
        bad = [bytearray(h) for h in proof]
        bad[i][byte] ^= 1
        with pytest.raises(ProofError):
            verify_consistency([bytes(h) for h in bad], new, root_new, old, root_old)
