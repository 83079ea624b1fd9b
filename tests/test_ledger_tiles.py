"""c2sp.org/tlog-tiles: paths, the tile set of a size, bundles, reading proofs from tiles."""

from __future__ import annotations

import random

import pytest

from cityid.errors import LedgerError, TileError
from ledger.merkle import (
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    stored_hash_index,
    tree_hash,
)
from ledger.tiles import (
    TILE_WIDTH,
    TileHashReader,
    TilePath,
    build_tiles,
    bundles_for_size,
    decode_bundle,
    encode_bundle,
    entries_path,
    iter_entries,
    parse_tile_path,
    tile_path,
    tiles_for_size,
)


def test_paths() -> None:
    assert tile_path(0, 1234, 5) == "tile/0/x001/234.p/5"
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(3, 0) == "tile/3/000"
    assert tile_path(1, 1000) == "tile/1/x001/000"
    assert entries_path(7, 5) == "tile/entries/007.p/5"
    assert entries_path(1234067) == "tile/entries/x001/x234/067"


@pytest.mark.parametrize("index", [0, 1, 999, 1000, 1234067, 10**9, 2**40])
@pytest.mark.parametrize("width", [1, 17, 255, 256])
def test_path_round_trip(index: int, width: int) -> None:
    assert parse_tile_path(tile_path(2, index, width)) == TilePath(2, index, width)
    got = parse_tile_path(entries_path(index, width))
    assert got == TilePath(None, index, width) and got.is_entries
    assert got.path() == entries_path(index, width)


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/001",  # non-canonical leading group
        "tile/01/000",
        "tile/64/000",
        "tile/0/1",
        "tile/0/0001",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/05",
        "tile/0/x001",
        "tile/0/001/002",
        "tile/entries/000.p/",
        "/tile/0/000",
        "tile/0/../000",
        "checkpoint",
    ],
)
def test_parse_tile_path_rejects(path: str) -> None:
    with pytest.raises(TileError) as e:
        parse_tile_path(path)
    assert e.value.rule == "bad-tile-path"


def test_tile_set_for_70000_leaves_matches_spec() -> None:
    tiles = tiles_for_size(70_000)
    level0_full = [t for t in tiles if t[0] == 0 and t[2] == TILE_WIDTH]
    assert len(level0_full) == 273
    partial = sorted(t for t in tiles if t[2] < TILE_WIDTH)
    assert partial == [(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    assert (1, 0, TILE_WIDTH) in tiles
    assert len(tiles) == 273 + 1 + 1 + 1 + 1
    assert tile_path(0, 273, 112) == "tile/0/273.p/112"


def test_tile_set_edge_sizes() -> None:
    assert tiles_for_size(0) == []
    assert tiles_for_size(1) == [(0, 0, 1)]
    # "a tree of size 256 will be represented by a full level 0 tile and a
    # partial level 1 tile of width 1"
    assert tiles_for_size(256) == [(0, 0, 256), (1, 0, 1)]
    assert bundles_for_size(513) == [(0, 256), (1, 256), (2, 1)]


def test_bundle_round_trip() -> None:
    entries = [b"", b"a", bytes(range(256)) * 3, b"\x00" * 65535]
    data = encode_bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:4] == b"\x00\x01"
    assert decode_bundle(data) == entries
    assert decode_bundle(data, count=4) == entries


def test_oversized_entry_refused() -> None:
    with pytest.raises(LedgerError, match="entry 1 is 65536 bytes") as e:
        encode_bundle([b"ok", b"x" * 65536])
    assert e.value.rule == "leaf-too-large"


def test_truncated_bundle_names_offset() -> None:
    data = encode_bundle([b"abc", b"defgh"])
    with pytest.raises(TileError, match=r"entry 1 at offset 5 claims 5 bytes, only 4 remain"):
        decode_bundle(data[:-1], name="tile/entries/000.p/2")
    with pytest.raises(TileError, match="truncated length prefix of entry 1 at offset 5"):
        decode_bundle(data[:6])
    with pytest.raises(TileError, match="holds 2 entries, want 3"):
        decode_bundle(data, count=3)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 511, 512, 65536, 65537, 70_000])
def test_tile_reader_proofs_match_memory_tree(size: int) -> None:
    entries = [f"e{i}".encode() for i in range(size)]
    files = build_tiles(entries)
    assert {p for p in files if not p.startswith("tile/entries")} == {
        tile_path(*t) for t in tiles_for_size(size)
    }
    tree = MemoryTree(entries)
    root = tree.root()
    reader = TileHashReader(size, files.__getitem__, root)
    assert tree_hash(size, reader) == root
    rng = random.Random(size)
    for _ in range(10):
        i = rng.randrange(size)
        assert inclusion_proof(size, i, reader) == tree.inclusion_proof(i)
        old = rng.randrange(size + 1)
        assert consistency_proof(size, old, reader) == tree.consistency_proof(old)
    assert list(iter_entries(size, 0, size, files.__getitem__, reader)) == entries
    # Prefetch paths cover everything a proof needs.
    fresh = TileHashReader(size, files.__getitem__, root)
    idx = [stored_hash_index(0, size - 1)]
    fetched: list[str] = []
    TileHashReader(size, lambda p: fetched.append(p) or files[p], root).read_hashes(idx)
    assert set(fetched) <= set(fresh.paths_for(idx))


def test_tile_reader_rejects_tampered_tiles() -> None:
    size = 70_000
    entries = [f"e{i}".encode() for i in range(size)]
    files = build_tiles(entries)
    root = MemoryTree(entries).root()

    def tampered(path: str) -> dict[str, bytes]:
        bad = dict(files)
        b = bytearray(bad[path])
        b[40] ^= 1
        bad[path] = bytes(b)
        return bad

    # A full tile is checked against its hash in the tile above.
    bad = tampered("tile/0/005")
    r = TileHashReader(size, bad.__getitem__, root)
    with pytest.raises(TileError, match="tile/0/005 does not match its hash in tile/1/000"):
        r.read_hashes([stored_hash_index(0, 5 * 256 + 1)])
    # Partial tiles are checked against the checkpoint root.
    bad = tampered("tile/0/273.p/112")
    r = TileHashReader(size, bad.__getitem__, root)
    with pytest.raises(TileError, match="do not hash to the root of size 70000"):
        r.read_hashes([stored_hash_index(0, 3)])
    # Bundles are checked against leaf hashes.
    bad = dict(files)
    bad["tile/entries/002"] = encode_bundle([b"x", *entries[513:768]])
    r = TileHashReader(size, bad.__getitem__, root)
    with pytest.raises(TileError, match="tile/entries/002: entry 512 does not match"):
        list(iter_entries(size, 500, 600, bad.__getitem__, r))


def test_tile_reader_truncated_and_missing() -> None:
    entries = [f"e{i}".encode() for i in range(600)]
    files = build_tiles(entries)
    files["tile/0/001"] = files["tile/0/001"][:-5]
    r = TileHashReader(600, files.__getitem__)
    with pytest.raises(TileError, match=r"tile/0/001 is 8187 bytes, want 8192 .* \(truncated\)"):
        r.read_hashes([stored_hash_index(0, 300)])
    del files["tile/0/000"]
    with pytest.raises(TileError, match="tile/0/000: cannot read tile"):
        r.read_hashes([stored_hash_index(0, 3)])
    with pytest.raises(TileError, match="not in a tree of size 600"):
        r.read_hashes([stored_hash_index(0, 600)])
    assert r.leaf_hashes(599, 600) == [leaf_hash(b"e599")]


def test_grown_reader_keeps_full_tiles_only() -> None:
    entries = [f"e{i}".encode() for i in range(700)]
    small, big = build_tiles(entries[:600]), build_tiles(entries)
    fetched: list[str] = []

    def fetch(path: str) -> bytes:
        fetched.append(path)
        return big.get(path) or small[path]

    r = TileHashReader(600, fetch)
    r.read_hashes([stored_hash_index(0, 3), stored_hash_index(0, 599)])
    assert fetched == ["tile/0/000", "tile/0/002.p/88"]
    r2 = r.grown(700)
    fetched.clear()
    r2.read_hashes([stored_hash_index(0, 3), stored_hash_index(0, 699)])
    assert fetched == ["tile/0/002.p/188"]
    assert tree_hash(700, r2) == MemoryTree(entries).root()
    with pytest.raises(LedgerError, match="cannot shrink"):
        r2.grown(10)
