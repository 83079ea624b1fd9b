"""Superseded partial tiles and bundles are deleted after a grace period (issue 17, part 4).

Every checkpoint writes one partial entry bundle and one partial hash tile per
level; before garbage collection a log of single-entry batches kept every one
of them (24x the entry bytes on disk). These tests run real logs on real files,
served over loopback HTTP where a reader is involved.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from cityid.keys import SigningKey
from ledger.audit import verify_log
from ledger.batcher import Sequencer
from ledger.client import LogClient
from ledger.http import serve_app, tiles_app
from ledger.merkle import verify_consistency
from ledger.storage import GC_STATE, Log, decode_gc_marks, encode_gc_marks
from ledger.tiles import TilePath, build_tiles, partial_tiles

sys.path.insert(0, str(Path(__file__).parent))
from ledger_crash_child import entry as child_entry
from test_ledger_crash import run_child

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("log.example/gc")


def batch(start: int, n: int) -> list[bytes]:
    return [b"entry %d " % i + bytes(i % 11) for i in range(start, start + n)]


def served_files(d: Path) -> dict[str, bytes]:
    return {
        p.relative_to(d).as_posix(): p.read_bytes()
        for p in d.rglob("*")
        if p.is_file() and not p.relative_to(d).as_posix().startswith(".private")
    }


def partial_files(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in (d / "tile").rglob("*.p/*")}


def partial_dirs(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in (d / "tile").rglob("*.p")}


def newest(size: int) -> set[str]:
    return {tp.path() for tp in partial_tiles(size)}


def assert_only_newest_partials(d: Path, entries: list[bytes], *, exact: bool = True) -> None:
    """The directory is the tlog-tiles layout of ``entries``: every full tile byte
    for byte, and of the partials only those its checkpoint needs. (Not
    ``exact``: full tiles a killed stage left past the end are allowed; the
    next stage overwrites them.)"""
    files = served_files(d)
    want = build_tiles(entries)
    assert partial_files(d) == newest(len(entries))
    assert partial_dirs(d) == {p.rsplit("/", 1)[0] for p in newest(len(entries))}
    if exact:
        assert set(files) == set(want) | {"checkpoint"}
    for path, data in want.items():
        assert files[path] == data, path


def test_partial_tiles_of_the_spec_example() -> None:
    # c2sp.org/tlog-tiles: size 70,000 has partial level-0 (112), level-1 (17)
    # and level-2 (1) tiles; the entry bundle follows level 0.
    assert partial_tiles(70_000) == [
        TilePath(None, 273, 112),
        TilePath(0, 273, 112),
        TilePath(1, 1, 17),
        TilePath(2, 0, 1),
    ]
    assert partial_tiles(256) == [TilePath(1, 0, 1)]
    assert partial_tiles(0) == []


def test_gc_marks_round_trip_and_junk() -> None:
    marks = {None: 3906, 0: 3906, 1: 15}
    assert decode_gc_marks(encode_gc_marks(marks)) == marks
    for junk in (b"", b"\xff", b"cityid-ledger-gc v1\nentries -1\n", b"other\n", b"x 1 2\n"):
        assert decode_gc_marks(junk) == {}  # unreadable: scan everything


def test_many_small_batches_keep_only_the_newest_partials(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    grace = 0.2
    entries: list[bytes] = []
    rng = random.Random(17)
    published: list[float] = []
    with Log.create(d, key, partial_grace=grace) as log:
        deadline = time.monotonic() + 60
        for i in range(240):
            assert time.monotonic() < deadline
            b = batch(len(entries), 40 if i % 30 == 29 else rng.choice((1, 2, 3)))
            log.append(b)
            entries += b
            now = time.monotonic()
            published.append(now)
            # During the run only the partials of the last grace period are left
            # over (3 per checkpoint here: bundle, level 0, level 1), plus those
            # due since the last publish, which is when deletions run.
            recent = sum(t > now - grace - 0.5 for t in published)
            assert len(partial_files(d)) <= 3 * recent + 3
        assert len(entries) > 700
        # ...and once it has passed, the newest partials alone remain.
        time.sleep(grace)
        assert log.collect_garbage() > 0
        assert log.garbage_due_in() is None
        assert_only_newest_partials(d, entries)
        assert list(log.entries(0)) == entries
    assert verify_log(d, key.verifier).size == len(entries)
    assert (d / GC_STATE).exists()


async def test_a_reader_gets_a_superseded_partial_during_the_grace_period(
    tmp_path: Path, key: SigningKey
) -> None:
    d = tmp_path / "log"
    grace = 3.0
    log = Log.create(d, key, partial_grace=grace)
    log.append(batch(0, 250))
    async with serve_app(tiles_app(d)) as url, aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, bytes]:
            async with http.get(f"{url}/{path}") as resp:
                return resp.status, await resp.read()

        client = LogClient(url, key.verifier, http)
        old, _ = await client.fetch_checkpoint()
        assert old.size == 250
        # Superseded by a full tile (250 -> 260), then by a wider partial (260 -> 261).
        log.append(batch(250, 10))
        mid, _ = await client.fetch_checkpoint()
        log.append(batch(260, 1))
        superseded_at = time.monotonic()
        gone = (newest(250) | newest(260)) - newest(261)
        old_files = {p: (d / p).read_bytes() for p in gone}
        for path, data in old_files.items():
            assert await get(path) == (200, data), path
        # A follower still on the old checkpoints reads its entries.
        assert [e async for _, e in client.entries(0, 250, old)] == batch(0, 250)
        assert [e async for _, e in client.entries(250, 260, mid)] == batch(250, 10)
        assert time.monotonic() - superseded_at < grace, "the machine stalled: rerun"
        assert log.collect_garbage() == 0

        await asyncio.sleep(grace + 0.05 - (time.monotonic() - superseded_at))
        assert log.collect_garbage() == len(old_files)
        for path in old_files:
            assert (await get(path))[0] == 404, path
        for path in newest(261):
            assert (await get(path))[0] == 200, path
        # Past the grace: the full tile stands in for the 250 partials (the
        # client cuts its prefix); the checkpoint of 260 has to be refetched.
        late = LogClient(url, key.verifier, http)
        assert [e async for _, e in late.entries(0, 250, old)] == batch(0, 250)
        now, _ = await late.fetch_checkpoint()
        assert [e async for _, e in late.entries(250, 261, now)] == batch(250, 11)
    log.close()
    assert_only_newest_partials(d, batch(0, 261))
    assert verify_log(d, key.verifier).size == 261


def test_a_restart_gives_leftovers_a_whole_grace_period(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    grace = 1.0
    entries: list[bytes] = []
    with Log.create(d, key, partial_grace=grace) as log:
        for _ in range(40):
            log.append(batch(len(entries), 7))
            entries += batch(len(entries), 7)
    leftovers = partial_files(d) - newest(len(entries))
    assert leftovers  # superseded less than a grace period before the close
    with Log.open(d, key, partial_grace=grace) as log:
        # The deadlines died with the process: the open restarts the clock, so a
        # reader who fetched the old checkpoint just before the crash is safe.
        assert log.collect_garbage() == 0
        assert partial_files(d) - newest(len(entries)) == leftovers
        due = log.garbage_due_in()
        assert due is not None and 0 < due <= grace
        time.sleep(due)
        assert log.collect_garbage() == len(leftovers)
        assert_only_newest_partials(d, entries)
    assert verify_log(d, key.verifier).size == len(entries)


def test_a_log_from_before_gc_is_cleaned_once(tmp_path: Path, key: SigningKey) -> None:
    d = tmp_path / "log"
    entries: list[bytes] = []
    # math.inf: never delete, which is what every log did before.
    with Log.create(d, key, partial_grace=math.inf) as log:
        for n in [1] * 150 + [5] * 40:  # 350 entries: one full tile, then partials
            log.append(batch(len(entries), n))
            entries += batch(len(entries), n)
    assert not (d / GC_STATE).exists()
    leftovers = partial_files(d) - newest(len(entries))
    assert len(leftovers) == 2 * 189  # a bundle and a level-0 tile per checkpoint but the last
    with Log.open(d, key, partial_grace=0) as log:
        # In steps, so a backlog never holds up one publish for long (a full
        # tile's directory goes in one piece: up to 255 files over the step).
        first = log.collect_garbage(limit=100)
        assert 100 <= first < 100 + 256
        assert log.collect_garbage() == len(leftovers) - first
    assert_only_newest_partials(d, entries)
    # The marks now say where the scan of the next open starts.
    marks = decode_gc_marks((d / GC_STATE).read_bytes())
    assert marks == {None: len(entries) // 256, 0: len(entries) // 256}
    assert verify_log(d, key.verifier).size == len(entries)


def test_a_staged_checkpoint_keeps_the_published_partials(tmp_path: Path, key: SigningKey) -> None:
    """Waiting for cosignatures, the published checkpoint's partials are still served."""
    d = tmp_path / "log"
    with Log.create(d, key, partial_grace=0) as log:
        log.append(batch(0, 10))
        note = log.stage(batch(10, 5))
        log.collect_garbage()
        assert partial_files(d) == newest(10) | newest(15)
        log.publish(note)
        assert partial_files(d) == newest(15)
    # Reopened with the stage unpublished (as a registrar with witnesses does).
    with Log.open(d, key, partial_grace=0) as log:
        note = log.stage(batch(15, 3))
        log.close()
    with Log.open(d, key, publish_pending=False, partial_grace=0) as log:
        assert log.size == 15 and log.signed_size == 18
        log.collect_garbage()
        assert partial_files(d) == newest(15) | newest(18)
        log.publish(log.pending_note or b"")
        assert partial_files(d) == newest(18)
    assert verify_log(d, key.verifier).size == 18


def test_sigkill_while_collecting_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash child with a 20 ms grace: kills land mid-deletion too."""
    monkeypatch.setenv("LEDGER_PARTIAL_GRACE", "0.02")
    rng = random.Random(1717)
    key = SigningKey.generate("crash.example/gc")
    keyfile = key.write(tmp_path / "log.key")
    d = tmp_path / "log"
    acks: list[tuple[int, int, int, int, bytes]] = []
    for gen in range(1, 9):
        lines = run_child(d, keyfile, gen, rng)
        acks += [
            (int(g), int(f), int(c), int(s), bytes.fromhex(r))
            for tag, g, f, c, s, r in (ln for ln in lines if ln[0] == "ACK")
        ]
        if not d.exists():
            continue
        with Log.open(d, key, partial_grace=0.02) as log:
            for _, _, _, ack_size, ack_root in acks[-1:]:
                proof = log.consistency_proof(ack_size)
                verify_consistency(proof, log.size, log.root, ack_size, ack_root)
        assert verify_log(d, key.verifier).size >= max((f + c for _, f, c, _, _ in acks), default=0)
    assert len(acks) > 8
    with Log.open(d, key, partial_grace=0.02) as log:
        time.sleep(0.03)
        log.collect_garbage()
        entries = list(log.entries(0))
    for gen, first, count, _, _ in acks:
        assert entries[first : first + count] == [
            child_entry(gen, i) for i in range(first, first + count)
        ]
    assert_only_newest_partials(d, entries, exact=False)
    assert os.listdir(d / ".private" / "tmp") == []


async def test_an_idle_sequencer_still_deletes_the_last_leftovers(
    tmp_path: Path, key: SigningKey
) -> None:
    d = tmp_path / "log"
    grace = 0.2
    log = Log.create(d, key, partial_grace=grace)
    async with Sequencer(log, max_batch=100, max_delay=0.01) as seq:
        for i in range(5):
            receipt = await seq.submit(batch(i, 1), flush=True)
            assert receipt.first_index == i
        assert partial_files(d) != newest(5)  # superseded, still in their grace
        # No more submits: the sequencer wakes up for the deadlines by itself.
        deadline = time.monotonic() + 10
        while partial_files(d) != newest(5) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert partial_files(d) == newest(5)
    log.close()
    assert_only_newest_partials(d, batch(0, 5))


def test_stages_without_publishing_keep_only_what_can_still_be_published(
    tmp_path: Path, key: SigningKey
) -> None:
    """Witnesses away: stage after stage, each signed, none published."""
    d = tmp_path / "log"
    with Log.create(d, key, partial_grace=0) as log:
        log.append(batch(0, 10))
        for n in range(10, 20):
            log.stage(batch(n, 1))
        log.collect_garbage()
        # The published checkpoint's partials and the last signed one's: the
        # stages in between can never be published now.
        assert partial_files(d) == newest(10) | newest(20)
        log.publish(log.pending_note or b"")
        assert partial_files(d) == newest(20)
    assert verify_log(d, key.verifier).size == 20


def test_a_failed_stage_leaves_no_partials(tmp_path: Path, key: SigningKey) -> None:
    """A stage that fails after renaming some partials (a full disk, here a
    directory in the way) leaves none behind: they belong to no signed tree."""
    d = tmp_path / "log"
    with Log.create(d, key, partial_grace=0) as log:
        log.append(batch(0, 300))
        blocker = d / "tile/1/000.p/2"  # the last file the stage to 550 renames
        blocker.mkdir()
        (blocker / "x").write_bytes(b"")
        with pytest.raises(OSError):
            log.stage(batch(300, 250))
        # Renamed before the failure, then deleted: the bundle and level-0 partials.
        assert not (d / "tile/entries/002.p/38").exists()
        assert not (d / "tile/0/002.p/38").exists()
        assert log.signed_size == 300 and partial_files(d) - {"tile/1/000.p/2"} == newest(300)
        (blocker / "x").unlink()
        blocker.rmdir()
        log.append(batch(300, 250))
        log.collect_garbage()
        assert_only_newest_partials(d, batch(0, 550))
    assert verify_log(d, key.verifier).size == 550
