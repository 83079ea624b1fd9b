"""Interoperability: independent implementations check what cityid's ledger writes.

(a) tlog-scales (Python, PyPI) reads our tile directory, verifies our
    checkpoint signature, our witness cosignature and our proofs, and its
    ``tlog-tiles gen-proof`` writes byte-for-byte the tlog-proof we write; and
    our client follows a log that tlog-scales wrote.
(b) Go's reference code (golang.org/x/mod/sumdb/note and sumdb/tlog, Debian's
    golang-golang-x-mod-dev) verifies the checkpoint with note.Open, our
    inclusion proofs with tlog.CheckRecord, consistency proofs with
    tlog.CheckTree, and recomputes the root from our tile files through
    tlog.TileHashReader, which authenticates every tile it reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cityid.keys import SigningKey
from ledger.checkpoint import Checkpoint
from ledger.client import LogClient
from ledger.http import serve_app, tiles_app
from ledger.merkle import MemoryTree, leaf_hash
from ledger.note import parse_note
from ledger.policy import Policy
from ledger.storage import Log
from ledger.tlogproof import build_proof_file, verify_proof_file
from ledger.witness import AddCheckpointRequest, Witness

ORIGIN = "ledger.sjz.example.cn/MA.156.1301"
GO_SRC = Path(__file__).parent / "interop" / "go" / "main.go"
GOCODE = Path("/usr/share/gocode")
X_MOD = GOCODE / "src" / "golang.org" / "x" / "mod" / "sumdb"
# Sizes the log passes through: every tile boundary case up to a level-2 tile.
STEPS = [1, 2, 3, 255, 256, 257, 511, 512, 1000, 65535, 65536, 65537, 65536 + 300]
INDEXES = [0, 1, 2, 255, 256, 257, 511, 999, 65535, 65536, 65536 + 299]

pytestmark = pytest.mark.timeout(300)


def entry(i: int) -> bytes:
    return b"cityid op %d" % i + bytes(i % 5)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A log grown through STEPS, its old roots, and a witness cosignature on the last."""
    d = tmp_path_factory.mktemp("interop")
    key = SigningKey.generate(ORIGIN)
    log = Log.create(d / "log", key)
    roots: dict[int, bytes] = {}
    for target in STEPS:
        log.append([entry(i) for i in range(log.size, target)])
        roots[target] = log.root
    wkey = SigningKey.generate("witness.example/w1")
    with Witness(wkey, [log.verifier], d / "witness") as w:
        resp = w.add_checkpoint(AddCheckpointRequest(0, (), log.checkpoint_note).encode())
        assert resp.status == 200
        staged = log.checkpoint_note + resp.body
        log.publish(staged)
        vkey = w.vkey
    assert log.checkpoint_note == staged
    yield {"log": log, "key": key, "roots": roots, "witness": vkey, "dir": d}
    log.close()


# --- (a) tlog-scales ----------------------------------------------------------------------


def test_tlog_scales_verifies_ours(world: dict):
    tlog = pytest.importorskip("tlog_scales.tlog", reason="tlog-scales is a test extra")
    signing = pytest.importorskip("tlog_scales.signing")
    from tlog_scales.backend import LocalBackend
    from tlog_scales.reader import TilesReader

    log: Log = world["log"]
    reader = TilesReader(LocalBackend(log.directory))
    cp = reader.get_checkpoint()
    assert (cp.origin, cp.size, cp.root_hash) == (log.origin, log.size, log.root)
    assert len(cp.signatures) == 2

    # The log signature, under our vkey string.
    cp.verify(signing.Vkey.from_string(str(log.verifier)))
    # The witness's cosignature/v1, under its 0x04 vkey string.
    wv = signing.Vkey.from_string(str(world["witness"]))
    assert wv.sig_type == 4
    valid = signing.VkeySet(wv).verify(cp.signatures, cp)
    assert len(valid) == 1
    # And a key that did not sign matches nothing.
    stranger = signing.Vkey.from_string(str(SigningKey.generate(ORIGIN).verifier))
    with pytest.raises(RuntimeError):
        cp.verify(stranger)

    assert reader.calculate_root_hash() == log.root
    for i in INDEXES:
        ours = log.inclusion_proof(i)
        assert reader.get_inclusion_proof(i, log.size).node_hashes == ours
        tlog.InclusionProof(i, log.size, ours).check(leaf_hash(entry(i)), log.root)
        assert reader.get_entry(i) == entry(i)
    bad = log.inclusion_proof(5)
    bad[0] = bytes(32)
    with pytest.raises(tlog.InclusionProofInvalid):
        tlog.InclusionProof(5, log.size, bad).check(leaf_hash(entry(5)), log.root)

    for old, root in world["roots"].items():
        ours = log.consistency_proof(old)
        assert reader.get_consistency_proof(old, log.size).node_hashes == ours
        tlog.ConsistencyProof(old, log.size, ours).check(root, log.root)
    with pytest.raises(tlog.ConsistencyProofInvalid):
        tlog.ConsistencyProof(3, log.size, log.consistency_proof(3)).check(bytes(32), log.root)


def test_tlog_scales_gen_proof_matches_ours(world: dict):
    pytest.importorskip("tlog_scales", reason="tlog-scales is a test extra")
    log: Log = world["log"]
    policy = Policy.k_of_n([log.verifier], [world["witness"]], 1)
    for i in (0, 257, log.size - 1):
        theirs = subprocess.run(
            [sys.executable, "-m", "tlog_scales.cli", "gen-proof", str(log.directory), str(i)],
            check=True,
            capture_output=True,
            timeout=120,
        ).stdout
        ours = build_proof_file(log.checkpoint_note, i, log.hash_reader())
        assert theirs == ours
        assert verify_proof_file(theirs, policy, entry(i)).size == log.size


async def test_our_client_follows_a_tlog_scales_log(tmp_path: Path):
    pytest.importorskip("tlog_scales", reason="tlog-scales is a test extra")
    from tlog_scales.signing import PlainEd25519Signer
    from tlog_scales.writer import TilesWriter

    key = SigningKey.generate("scales.example/log")
    writer = TilesWriter.create(tmp_path / "scales", key.name)
    signer = PlainEd25519Signer(key.name, key.seed)
    async with (
        serve_app(tiles_app(tmp_path / "scales")) as url,
        LogClient(url, key.verifier) as client,
    ):
        trusted = Checkpoint(key.name, 0, hashlib.sha256(b"").digest())
        total = 0
        for n in (3, 300, 20):
            for i in range(n):
                writer.add_leaf(entry(total + i))
            writer.commit([signer])  # also deletes superseded partial tiles
            total += n
            cp, _ = await client.follow(trusted)
            assert cp.size == total
            got = [e async for _, e in client.entries(trusted.size, cp.size, cp)]
            assert got == [entry(i) for i in range(trusted.size, total)]
            trusted = cp
        # tlog-scales deleted the partial tiles of the first checkpoint (size 3);
        # the client still reads that checkpoint's tree from the full tiles.
        first = Checkpoint(key.name, 3, MemoryTree([entry(i) for i in range(3)]).root())
        assert not (tmp_path / "scales" / "tile" / "0" / "000.p").exists()
        got = [e async for _, e in client.entries(0, 3, first)]
        assert got == [entry(i) for i in range(3)]
        assert await client.check_consistency(first, trusted)


# --- (b) Go: golang.org/x/mod/sumdb ------------------------------------------------------------


def _go_missing() -> str | None:
    if shutil.which("go") and (X_MOD / "note").is_dir() and (X_MOD / "tlog").is_dir():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "needs Debian's golang-go and golang-golang-x-mod-dev (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "golang-go", "golang-golang-x-mod-dev"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    if shutil.which("go") and (X_MOD / "note").is_dir():
        return None
    return "apt-get could not install golang-go and golang-golang-x-mod-dev"


@pytest.fixture(scope="session")
def go_interop() -> Path:
    """The Go checker, built once in GOPATH mode and cached in the temp dir by source hash."""
    reason = _go_missing()
    if reason:
        pytest.skip(reason)
    go = shutil.which("go")
    assert go
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256(GO_SRC.read_bytes() + version.encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"cityid-go-interop-{digest}"
    binary = cache / "interop"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{cache / 'gopath'}{os.pathsep}{GOCODE}",
        "GOCACHE": str(cache / "gocache"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    tmp = cache / f"interop.{os.getpid()}"
    build = subprocess.run(
        [go, "build", "-o", str(tmp), str(GO_SRC)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    os.replace(tmp, binary)  # atomic: a concurrent session sees a whole binary or none
    return binary


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


def _run_go(binary: Path, job: dict) -> tuple[int, str]:
    p = subprocess.run(
        [str(binary)], input=json.dumps(job).encode(), capture_output=True, timeout=120
    )
    return p.returncode, p.stdout.decode() + p.stderr.decode()


def _job(world: dict) -> dict:
    log: Log = world["log"]
    return {
        "vkey": str(log.verifier),
        "cosigner_vkeys": [str(world["witness"])],
        "checkpoint": log.checkpoint_note.decode(),
        "dir": str(log.directory),
        "inclusion": [
            {
                "index": i,
                "leaf": _b64(entry(i)),
                "proof": [_b64(h) for h in log.inclusion_proof(i)],
            }
            for i in INDEXES
        ],
        "consistency": [
            {
                "old_size": old,
                "old_root": _b64(root),
                "proof": [_b64(h) for h in log.consistency_proof(old)],
            }
            for old, root in world["roots"].items()
        ],
    }


def test_go_verifies_ours(go_interop: Path, world: dict):
    log: Log = world["log"]
    code, out = _run_go(go_interop, _job(world))
    assert code == 0, out
    lines = out.splitlines()
    assert f"ok checkpoint-signature origin={ORIGIN} size={log.size} unverified=1" in lines
    assert "ok cosignature count=1" in lines
    for i in INDEXES:
        assert f"ok inclusion index={i}" in lines
        assert f"ok prove-record index={i}" in lines
    for old in world["roots"]:
        assert f"ok consistency old={old}" in lines
    assert f"ok tiles-root size={log.size}" in lines
    assert f"ok entry-bundles entries={log.size}" in lines
    assert lines[-1] == "ok all"


def test_go_rejects_tampering(go_interop: Path, world: dict, tmp_path: Path):
    """The Go checker is not a rubber stamp: each kind of damage is caught."""
    log: Log = world["log"]
    job = _job(world)
    bad = json.loads(json.dumps(job))
    bad["inclusion"][3]["leaf"] = _b64(b"not the entry")
    code, out = _run_go(go_interop, bad)
    assert code != 0 and "FAIL inclusion: index 255" in out

    bad = json.loads(json.dumps(job))
    bad["consistency"][4]["old_root"] = _b64(bytes(32))
    code, out = _run_go(go_interop, bad)
    assert code != 0 and "FAIL consistency" in out

    text, _ = parse_note(log.checkpoint_note)
    bad = dict(job, checkpoint=job["checkpoint"].replace(text.split("\n")[1], "1", 1))
    code, out = _run_go(go_interop, bad)
    assert code != 0 and "FAIL checkpoint-signature" in out

    bad = dict(job, cosigner_vkeys=[str(SigningKey.generate("witness.example/w1").verifier)])
    code, out = _run_go(go_interop, bad)
    assert code != 0 and "FAIL cosignature" in out

    # A copy of the tiles with one level-1 hash flipped.
    copy = tmp_path / "copy"
    shutil.copytree(log.directory, copy, ignore=shutil.ignore_patterns(".private"))
    tile = copy / "tile" / "1" / "000"
    data = bytearray(tile.read_bytes())
    data[40] ^= 1
    tile.write_bytes(bytes(data))
    code, out = _run_go(go_interop, dict(job, dir=str(copy), inclusion=[], consistency=[]))
    assert code != 0 and "ok tiles-root" in out
    assert "FAIL entry-bundles: downloaded inconsistent tile" in out
