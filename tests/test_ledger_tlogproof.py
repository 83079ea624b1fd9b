"""c2sp.org/tlog-proof files: build from a real log, verify offline, reject tampering."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cityid.errors import LedgerError, NoteError, ProofError, WitnessError
from cityid.keys import SigningKey
from ledger.cosignature import cosign, cosigner_vkey
from ledger.merkle import leaf_hash
from ledger.note import add_signatures, parse_note
from ledger.policy import Policy
from ledger.storage import Log
from ledger.tlogproof import (
    HEADER,
    ProofFileError,
    TlogProof,
    build_proof,
    build_proof_file,
    verify_proof_file,
)

ORIGIN = "ledger.sjz.example.cn/MA.156.1301"
ENTRIES = [b"op %d" % i for i in range(300)]


@pytest.fixture(scope="module")
def log_key() -> SigningKey:
    return SigningKey.generate(ORIGIN)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, log_key: SigningKey) -> Log:
    lg = Log.create(tmp_path_factory.mktemp("proof") / "log", log_key)
    lg.append(ENTRIES)
    yield lg
    lg.close()


@pytest.mark.parametrize("index", [0, 1, 255, 256, 299])
def test_build_and_verify(log: Log, index: int):
    data = build_proof_file(log.checkpoint_note, index, log.hash_reader())
    assert data.startswith(HEADER.encode() + b"\nindex %d\n" % index)
    assert data.endswith(b"\n\n" + log.checkpoint_note)
    cp = verify_proof_file(data, log.verifier, ENTRIES[index])
    assert (cp.size, cp.root) == (300, log.root)
    # The same by leaf hash, by vkey string, by policy, and with the expected index.
    verify_proof_file(data, str(log.verifier), leaf_hash=leaf_hash(ENTRIES[index]), index=index)
    verify_proof_file(data, Policy.for_log(log.verifier), ENTRIES[index])
    p = TlogProof.parse(data)
    assert p.index == index and list(p.proof) == log.inclusion_proof(index)
    assert p.encode() == data and p.checkpoint == log.checkpoint


def test_wrong_leaf_index_or_key(log: Log):
    data = build_proof_file(log.checkpoint_note, 7, log.hash_reader())
    with pytest.raises(ProofError, match="leaf 7"):
        verify_proof_file(data, log.verifier, b"op 8")
    with pytest.raises(ProofError, match="not 8"):
        verify_proof_file(data, log.verifier, b"op 7", index=8)
    with pytest.raises(NoteError):
        verify_proof_file(data, SigningKey.generate(ORIGIN).verifier, b"op 7")
    with pytest.raises(LedgerError, match="exactly one"):
        verify_proof_file(data, log.verifier)
    # An honest proof moved to another index does not verify.
    moved = data.replace(b"index 7\n", b"index 6\n")
    with pytest.raises(ProofError):
        verify_proof_file(moved, log.verifier, b"op 7")
    with pytest.raises(ProofError, match="not in"):
        build_proof(log.checkpoint_note, 300, log.hash_reader())


def test_extra_roundtrip(log: Log):
    data = build_proof_file(log.checkpoint_note, 3, log.hash_reader(), extra=b"MA.156.1301/W1")
    lines = data.split(b"\n")
    assert lines[1] == b"extra " + base64.b64encode(b"MA.156.1301/W1")
    assert TlogProof.parse(data).extra == b"MA.156.1301/W1"
    assert verify_proof_file(data, log.verifier, b"op 3").size == 300


def test_with_cosignatures_and_policy(log: Log, log_key: SigningKey):
    w1, w2 = SigningKey.generate("w1.example"), SigningKey.generate("w2.example")
    text, _ = parse_note(log.checkpoint_note)
    note = add_signatures(log.checkpoint_note, [cosign(text, w1, 1_700_000_000)])
    policy = Policy.k_of_n([log.verifier], [cosigner_vkey(w1), cosigner_vkey(w2)], 1)
    data = build_proof_file(note, 42, log.hash_reader())
    assert verify_proof_file(data, policy, b"op 42").size == 300
    strict = Policy.k_of_n([log.verifier], [cosigner_vkey(w1), cosigner_vkey(w2)], 2)
    with pytest.raises(WitnessError, match=r"missing w2\.example"):
        verify_proof_file(data, strict, b"op 42")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.replace(HEADER.encode(), b"c2sp.org/tlog-proof@v2"), "first line"),
        (lambda d: d.replace(b"index 5", b"index 05"), "leading zeros"),
        (lambda d: d.replace(b"index 5", b"idx 5"), "index"),
        (lambda d: d.replace(b"index 5\n", b"index 5\n!!!!\n"), "base64"),
        (lambda d: d.replace(b"index 5\n", b"index 5\nAAAA\n"), "3 bytes"),
        (lambda d: d.replace(b"\n\n", b"\n"), "empty line"),
        (lambda d: d.replace(b"index 5\n", b"extra !!\nindex 5\n"), "extra"),
        (lambda d: d.replace(b"index 5", b"index 5\xff"), "ASCII"),
    ],
)
def test_malformed_files(log: Log, mutate, match):
    data = build_proof_file(log.checkpoint_note, 5, log.hash_reader())
    with pytest.raises(ProofFileError, match=match):
        verify_proof_file(mutate(data), log.verifier, b"op 5")


def test_too_many_proof_lines(log: Log):
    data = build_proof_file(log.checkpoint_note, 5, log.hash_reader())
    lines = b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(65))
    with pytest.raises(ProofFileError, match="more than 64"):
        TlogProof.parse(data.replace(b"index 5\n", b"index 5\n" + lines))


def test_tampered_checkpoint(log: Log, tmp_path: Path):
    data = build_proof_file(log.checkpoint_note, 5, log.hash_reader())
    head, note = data.split(b"\n\n", 1)
    bad_note = note.replace(b"\n300\n", b"\n301\n")
    with pytest.raises(NoteError):
        verify_proof_file(head + b"\n\n" + bad_note, log.verifier, b"op 5")
