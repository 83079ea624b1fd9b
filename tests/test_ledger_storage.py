"""The on-disk log, its audit and the batcher, on real files."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cityid.errors import ForkError, LedgerError, NoteError, TileError, WitnessError
from cityid.keys import SigningKey
from ledger.audit import verify_log
from ledger.batcher import NotPublishedError, Receipt, Sequencer
from ledger.checkpoint import Checkpoint
from ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from ledger.note import Signature, add_signatures, open_note, parse_note, sign_note
from ledger.storage import Log
from ledger.tiles import build_tiles


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("log.example/test")


def batch(start: int, n: int, size: int = 40) -> list[bytes]:
    return [f"{i:08d}".encode() * (size // 8) for i in range(start, start + n)]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every served file (what a mirror would see)."""
    out = {}
    for p in d.rglob("*"):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and not rel.startswith(".private"):
            out[rel] = p.read_bytes()
    return out


def test_create_append_read_prove(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    assert (log.size, log.root, log.origin) == (0, EMPTY_ROOT, "log.example/test")
    assert open_note(log.checkpoint_note, [key.verifier]).text.startswith("log.example/test\n0\n")
    tree = MemoryTree()
    entries: list[bytes] = []
    for n in (1, 255, 1, 300, 999, 256, 7):
        b = batch(len(entries), n)
        note = log.append(b)
        entries += b
        for e in b:
            tree.append(e)
        assert log.size == len(entries) and log.root == tree.root()
        assert note == log.checkpoint_note == (d / "checkpoint").read_bytes()
    # The directory is exactly the tlog-tiles layout of these entries (plus the
    # partial tiles of earlier checkpoints, which a log keeps serving).
    files = snapshot(d)
    for path, data in build_tiles(entries).items():
        assert files[path] == data, path
    assert list(log.entries(0)) == entries
    assert list(log.entries(500, 510)) == entries[500:510]
    for i in (0, 1, 255, 256, 1000, len(entries) - 1):
        verify_inclusion(log.inclusion_proof(i), log.size, i, log.root, leaf_hash(entries[i]))
        assert log.leaf_hash(i) == leaf_hash(entries[i])
    # Proofs against an older checkpointed size and consistency between sizes.
    verify_inclusion(log.inclusion_proof(3, 257), 257, 3, tree.root(257), leaf_hash(entries[3]))
    for old in (0, 1, 256, 257, 557, len(entries)):
        proof = log.consistency_proof(old)
        verify_consistency(proof, log.size, log.root, old, tree.root(old))
    assert log.root_at(100) == tree.root(100)
    log.close()
    assert verify_log(d, key.verifier).size == len(entries)


def test_reopen_continues_and_reader_follows(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 300))
    reader = Log.open(d)
    assert reader.size == 300 and not reader.writable
    with pytest.raises(LedgerError, match="read-only"):
        reader.append(batch(0, 1))
    with Log.open(d, key) as log:
        log.append(batch(300, 10))
        assert reader.refresh().size == 310
        assert list(reader.entries(299, 301)) == batch(299, 2)
    assert verify_log(d, key.verifier).size == 310


def test_one_writer_at_a_time(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    with pytest.raises(LedgerError, match="open for writing by another process") as e:
        Log.open(d, key)
    assert e.value.rule == "log-locked"
    assert Log.open(d).size == 0  # readers need no lock
    log.close()
    Log.open(d, key).close()


def test_wrong_key_and_not_a_log(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    Log.create(d, key).close()
    with pytest.raises(LedgerError, match="not by other") as e:
        Log.open(d, SigningKey.generate("other"))
    assert e.value.rule == "wrong-key"
    with pytest.raises(LedgerError, match="not a ledger directory"):
        Log.open(tmp_path / "nothing")
    with pytest.raises(LedgerError, match="already exists and is not empty"):
        Log.create(d, key)


def test_custom_origin(tmp_path: Path, key: SigningKey) -> None:
    with Log.create(tmp_path / "log", key, origin="city.example/ledger") as log:
        log.append([b"x"])
        assert Checkpoint.parse(parse_note(log.checkpoint_note)[0]).origin == "city.example/ledger"
    assert Log.open(tmp_path / "log").origin == "city.example/ledger"
    assert verify_log(tmp_path / "log", key.verifier).size == 1


def test_oversized_leaf_appends_nothing(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    log.append(batch(0, 3))
    before = snapshot(d)
    with pytest.raises(LedgerError, match="entry 1 of the batch is 65536 bytes") as e:
        log.append([b"ok", b"x" * 65536])
    assert e.value.rule == "leaf-too-large"
    assert snapshot(d) == before and log.size == 3 and log.signed_size == 3
    log.append([b"y" * 65535])  # the largest allowed entry
    assert list(log.entries(3)) == [b"y" * 65535]
    with pytest.raises(LedgerError, match="empty batch"):
        log.append([])


def test_stage_then_publish_with_cosignatures(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    note = log.stage(batch(0, 5))
    # Staged: durable and signed, but not public.
    assert log.size == 0 and log.signed_size == 5 and log.pending_note == note
    assert Log.open(d).size == 0
    cosig = Signature("witness.example", b"\x01\x02\x03\x04", b"c" * 72)
    log.publish(add_signatures(note, [cosig]))
    assert log.size == 5 and log.pending_note is None
    assert log.checkpoint_note.endswith(cosig.line().encode())
    assert (d / "checkpoint").read_bytes() == log.checkpoint_note


def test_publish_refuses_fork_and_bad_notes(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    log.append(batch(0, 10))
    before = snapshot(d)
    # Same size, another root, even validly signed by the log key: a fork.
    forked = sign_note(Checkpoint(log.origin, 10, bytes(32)).text(), key)
    with pytest.raises(ForkError, match="size 10 has another root") as e:
        log.publish(forked)
    assert e.value.rule == "fork"
    # A bad signature.
    text, sigs = parse_note(log.checkpoint_note)
    bad = text.encode() + b"\n" + Signature(sigs[0].name, sigs[0].key_id, bytes(64)).line().encode()
    with pytest.raises(NoteError, match="does not verify"):
        log.publish(bad)
    # A checkpoint the log never staged.
    other = sign_note(Checkpoint(log.origin, 11, bytes(32)).text(), key)
    with pytest.raises(LedgerError, match="neither the staged") as e2:
        log.publish(other)
    assert e2.value.rule == "publish-mismatch"
    assert snapshot(d) == before and log.size == 10


def test_unpublished_stage_is_final(tmp_path: Path, key: SigningKey) -> None:
    """A signed but unpublished batch is never replaced by other entries."""
    d = tmp_path / "log"
    log = Log.create(d, key)
    log.append(batch(0, 3))
    first = log.stage(batch(3, 4))
    second = log.stage(batch(7, 2))  # builds on the unpublished one
    with pytest.raises(LedgerError, match="neither the staged"):
        log.publish(first)
    log.publish(second)
    assert log.size == 9 and list(log.entries(0)) == batch(0, 9)


def test_reopen_rolls_forward_a_signed_unpublished_checkpoint(
    tmp_path: Path, key: SigningKey
) -> None:
    d = tmp_path / "log"
    log = Log.create(d, key)
    log.append(batch(0, 300))
    note = log.stage(batch(300, 20))
    log.close()  # "crash" between stage and publish
    assert Log.open(d).size == 300
    with Log.open(d, key) as log2:
        assert log2.size == 320
        assert log2.checkpoint_note == note  # Ed25519 is deterministic
    assert verify_log(d, key.verifier).size == 320


def test_garbage_beyond_signed_size_is_overwritten(tmp_path: Path, key: SigningKey) -> None:
    """A crash mid-stage leaves tiles of a never-signed tree; they must not leak."""
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 100))
    # Tiles and bundles a crashed stage of 200 other entries might have left.
    junk = build_tiles(batch(0, 100) + [b"junk"] * 200)
    for path, data in junk.items():
        if not path.endswith(".p/100"):  # the real right edge stays
            (d / path).parent.mkdir(parents=True, exist_ok=True)
            (d / path).write_bytes(data)
    with Log.open(d, key) as log:
        assert log.size == 100
        log.append(batch(100, 200))
        assert log.root == MemoryTree(batch(0, 300)).root()
    assert verify_log(d, key.verifier).size == 300


def test_state_ahead_without_checkpoint(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 5))
    (d / "checkpoint").unlink()  # crash before the first checkpoint landed
    with pytest.raises(LedgerError, match="checkpoint: missing"):
        Log.open(d)
    with Log.open(d, key) as log:
        assert log.size == 5
    assert verify_log(d, key.verifier).size == 5


def test_truncated_tile_is_a_clear_error(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 600))
    tile = d / "tile/0/001"
    tile.write_bytes(tile.read_bytes()[:1000])
    reader = Log.open(d)
    with pytest.raises(TileError, match=r"tile/0/001 is 1000 bytes, want 8192 .*truncated"):
        reader.inclusion_proof(300)
    with pytest.raises(TileError, match=r"tile/0/001: 1000 bytes.*truncated at offset 1000"):
        verify_log(d, key.verifier)
    # The right edge is what a writer loads: truncating it stops the writer.
    edge = d / "tile/0/002.p/88"
    edge.write_bytes(edge.read_bytes()[:-1])
    with pytest.raises(TileError, match=r"tile/0/002\.p/88 is 2815 bytes"):
        Log.open(d, key)


def test_audit_names_file_and_offset(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    entries = batch(0, 1000, size=40)
    with Log.create(d, key) as log:
        log.append(entries)

    def flip(rel: str, offset: int) -> bytes:
        p = d / rel
        data = p.read_bytes()
        p.write_bytes(data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :])
        return data

    # An entry byte: entry 256 + 3 starts at 3 * 42 in the second bundle.
    orig = flip("tile/entries/001", 3 * 42 + 10)
    with pytest.raises(TileError, match=r"tile/entries/001: entry 259 at offset 126 ") as e:
        verify_log(d, key.verifier)
    assert e.value.rule == "bundle-mismatch"
    (d / "tile/entries/001").write_bytes(orig)
    # A hash byte in a level-0 tile.
    orig = flip("tile/0/002", 17 * 32 + 5)
    with pytest.raises(TileError, match=r"tile/0/002: hash 17 at offset 544 does not match"):
        verify_log(d, key.verifier)
    (d / "tile/0/002").write_bytes(orig)
    # A hash in the level-1 tile.
    orig = flip("tile/1/000.p/3", 40)
    with pytest.raises(TileError, match=r"tile/1/000.p/3: hash 1 at offset 32 does not match"):
        verify_log(d, key.verifier)
    (d / "tile/1/000.p/3").write_bytes(orig)
    assert verify_log(d, key.verifier).size == 1000


def test_audit_rejects_bad_checkpoint_signature(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 10))
    with pytest.raises(NoteError, match="no valid signature by a known key"):
        verify_log(d, SigningKey.generate("log.example/test").verifier)
    note = (d / "checkpoint").read_bytes()
    (d / "checkpoint").write_bytes(note.replace(b"\n10\n", b"\n11\n"))
    with pytest.raises(NoteError, match=r"checkpoint: note signature by log\.example/test"):
        verify_log(d, key.verifier)
    # A correctly signed checkpoint whose root the files do not back.
    (d / "checkpoint").write_bytes(sign_note(Checkpoint(log.origin, 10, bytes(32)).text(), key))
    with pytest.raises(LedgerError, match="root for size 10 does not match"):
        verify_log(d, key.verifier)


def test_reopen_detects_fork_between_state_and_checkpoint(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        log.append(batch(0, 10))
    (d / "checkpoint").write_bytes(sign_note(Checkpoint(log.origin, 10, bytes(32)).text(), key))
    with pytest.raises(ForkError, match="disagree at size 10"):
        Log.open(d, key)


# --- the batcher ------------------------------------------------------------------


async def test_sequencer_batches_and_receipts(tmp_path: Path, key: SigningKey) -> None:
    log = Log.create(tmp_path / "log", key)
    async with Sequencer(log, max_batch=50, max_delay=0.05) as seq:
        subs = [batch(i * 10, 3) for i in range(40)]
        receipts = await asyncio.gather(*(seq.submit(s) for s in subs))
    assert all(isinstance(r, Receipt) for r in receipts)
    # Contiguous, in submission order, each sealed by a published checkpoint.
    assert [r.first_index for r in receipts] == list(range(0, 120, 3))
    sizes = {Checkpoint.parse(parse_note(r.checkpoint)[0]).size for r in receipts}
    assert len(sizes) >= 3  # max_batch forced several batches
    for r, s in zip(receipts, subs, strict=True):
        cp = Checkpoint.parse(open_note(r.checkpoint, [key.verifier]).text)
        assert r.first_index + r.count <= cp.size
        assert list(log.entries(r.first_index, r.first_index + r.count)) == s
        proof = log.inclusion_proof(r.first_index, cp.size)
        verify_inclusion(proof, cp.size, r.first_index, cp.root, leaf_hash(s[0]))
    assert log.size == 120
    with pytest.raises(LedgerError, match="sequencer is closed"):
        await seq.submit([b"late"])
    log.close()


async def test_sequencer_time_window(tmp_path: Path, key: SigningKey) -> None:
    log = Log.create(tmp_path / "log", key)
    async with Sequencer(log, max_batch=1000, max_delay=0.05) as seq:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await seq.submit([b"one"])
        assert 0.04 <= loop.time() - t0 < 1.0
        assert r == Receipt(0, 1, log.checkpoint_note)
    log.close()


async def test_sequencer_flush_does_not_wait(tmp_path: Path, key: SigningKey) -> None:
    log = Log.create(tmp_path / "log", key)
    async with Sequencer(log, max_batch=1000, max_delay=30) as seq:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await asyncio.wait_for(seq.submit([b"bulk"], flush=True), 10)
        assert loop.time() - t0 < 5
        assert r == Receipt(0, 1, log.checkpoint_note)
        # A submit already waiting goes into the flushed batch, in order.
        waiting = asyncio.create_task(seq.submit([b"a"]))
        await asyncio.sleep(0.05)
        r2 = await asyncio.wait_for(seq.submit([b"b", b"c"], flush=True), 10)
        r1 = await asyncio.wait_for(waiting, 10)
        assert (r1.first_index, r2.first_index, r2.count) == (1, 2, 2)
        assert r1.checkpoint == r2.checkpoint == log.checkpoint_note
    assert log.size == 4
    log.close()


async def test_sequencer_cosign_and_failure(tmp_path: Path, key: SigningKey) -> None:
    log = Log.create(tmp_path / "log", key)
    witness = Signature("witness.example", b"\x09\x09\x09\x09", b"w" * 72)
    fail = True

    async def cosign(note: bytes) -> bytes:
        await asyncio.sleep(0)
        if fail:
            raise WitnessError("no witness answered", rule="quorum")
        return add_signatures(note, [witness])

    async with Sequencer(log, max_batch=10, max_delay=0.01, cosign=cosign) as seq:
        results = await asyncio.gather(
            seq.submit([b"a"]), seq.submit([b"b", b"c"]), return_exceptions=True
        )
        assert all(isinstance(r, NotPublishedError) for r in results)
        assert isinstance(results[0].__cause__, WitnessError)
        assert "will be published with the next checkpoint" in str(results[0])
        assert log.size == 0  # nothing published
        fail = False
        r = await seq.submit([b"d"])
    # The signed batch could not be dropped: it is published with the next one.
    assert r.first_index == 3 and log.size == 4
    assert list(log.entries(0)) == [b"a", b"b", b"c", b"d"]
    assert log.checkpoint_note.endswith(witness.line().encode())
    log.close()


async def test_sequencer_rejects_bad_submits(tmp_path: Path, key: SigningKey) -> None:
    log = Log.create(tmp_path / "log", key)
    seq = Sequencer(log)
    with pytest.raises(LedgerError, match="not started"):
        await seq.submit([b"x"])
    seq.start()
    with pytest.raises(LedgerError, match="65536 bytes") as e:
        await seq.submit([b"x" * 65536])
    assert e.value.rule == "leaf-too-large"
    with pytest.raises(LedgerError, match="empty"):
        await seq.submit([])
    await seq.aclose()
    assert log.size == 0
    log.close()
    with pytest.raises(LedgerError, match="read-only"):
        Sequencer(Log.open(tmp_path / "log"))


def test_files_are_not_world_writable(tmp_path: Path, key: SigningKey) -> None:
    with Log.create(tmp_path / "log", key) as log:
        log.append(batch(0, 3))
    mode = os.stat(tmp_path / "log" / "checkpoint").st_mode
    assert not mode & 0o002
    assert not list((tmp_path / "log" / ".private" / "tmp").iterdir())
