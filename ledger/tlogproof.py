"""c2sp.org/tlog-proof: a self-contained, offline-verifiable proof that one entry is logged.

::

    c2sp.org/tlog-proof@v1
    extra <base64>            (optional, opaque, NOT authenticated)
    index <decimal>
    <base64 hash>             (the RFC 6962 inclusion proof, leaf's sibling first)
    ...
    <empty line>
    <the checkpoint note, verbatim, with the log signature and any cosignatures>

The proof file does not carry the entry itself: the verifier brings the entry
it cares about (for cityid, the operation leaf that created an identifier) and
checks that it sits at ``index`` under a checkpoint that meets its policy. So a
file is a detached "transparent signature" for that entry, checkable with no
network at all.

Pure: building takes a :class:`ledger.merkle.HashReader`, never a path.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cityid.errors import LedgerError, ProofError
from cityid.keys import VerifierKey

from .checkpoint import Checkpoint
from .merkle import HASH_SIZE, MAX_PROOF_LEN, HashReader, inclusion_proof
from .merkle import leaf_hash as _leaf_hash
from .merkle import verify_inclusion as _verify_inclusion
from .note import MAX_NOTE_SIZE, parse_note
from .policy import Policy, as_policy

HEADER = "c2sp.org/tlog-proof@v1"
FILE_EXTENSION = ".tlog-proof"
MAX_EXTRA = 1 << 16
MAX_PROOF_FILE = MAX_NOTE_SIZE + 8192 + 2 * MAX_EXTRA
_INDEX_RE = re.compile(r"0|[1-9][0-9]{0,19}")


class ProofFileError(ProofError, ValueError):
    """A tlog-proof file is malformed."""

    rule = "tlog-proof-format"


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A parsed proof file. ``note`` is the checkpoint note exactly as it was in the file."""

    index: int
    proof: tuple[bytes, ...]
    note: bytes
    extra: bytes | None = None

    def encode(self) -> bytes:
        lines = [HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode())
        lines.append(f"index {self.index}")
        lines += [base64.b64encode(h).decode() for h in self.proof]
        return ("\n".join(lines) + "\n\n").encode() + self.note

    @property
    def checkpoint(self) -> Checkpoint:
        """The checkpoint in the file, unverified."""
        text, _ = parse_note(self.note)
        return Checkpoint.parse(text)

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        """Parse a proof file; :class:`ProofFileError` names the line at fault."""
        if len(data) > MAX_PROOF_FILE:
            raise ProofFileError(f"proof file is larger than {MAX_PROOF_FILE} bytes")
        split = data.find(b"\n\n")
        if split < 0:
            raise ProofFileError("proof file has no empty line before the checkpoint")
        try:
            head = data[:split].decode("ascii")
        except UnicodeDecodeError as e:
            raise ProofFileError("proof file header is not ASCII") from e
        lines = head.split("\n")
        if lines[0] != HEADER:
            raise ProofFileError(f"first line is {lines[0][:60]!r}, want {HEADER!r}")
        pos = 1
        extra = None
        if pos < len(lines) and lines[pos].startswith("extra "):
            try:
                extra = base64.b64decode(lines[pos][6:], validate=True)
            except (binascii.Error, ValueError) as e:
                raise ProofFileError("line 2: extra data is not base64") from e
            if len(extra) > MAX_EXTRA:
                raise ProofFileError(f"line 2: extra data is over {MAX_EXTRA} bytes")
            pos += 1
        if pos >= len(lines) or not lines[pos].startswith("index "):
            raise ProofFileError(f"line {pos + 1}: want 'index <decimal>'")
        index_s = lines[pos][6:]
        if not _INDEX_RE.fullmatch(index_s):
            raise ProofFileError(
                f"line {pos + 1}: index {index_s[:30]!r} is not a decimal without leading zeros"
            )
        proof_lines = lines[pos + 1 :]
        if len(proof_lines) > MAX_PROOF_LEN:
            raise ProofFileError(f"more than {MAX_PROOF_LEN} inclusion proof lines")
        proof = []
        for i, line in enumerate(proof_lines, pos + 2):
            try:
                h = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ProofFileError(f"line {i}: proof hash is not base64") from e
            if len(h) != HASH_SIZE:
                raise ProofFileError(f"line {i}: proof hash is {len(h)} bytes, want {HASH_SIZE}")
            proof.append(h)
        return cls(int(index_s), tuple(proof), data[split + 2 :], extra)


def build_proof(
    note: bytes, index: int, reader: HashReader, *, extra: bytes | None = None
) -> TlogProof:
    """The proof of entry ``index`` under the checkpoint ``note`` (with its cosignatures).

    ``reader`` serves the stored hashes of the checkpoint's tree (e.g.
    ``Log.hash_reader(size)``); the size comes from the note.
    """
    text, _ = parse_note(note)
    cp = Checkpoint.parse(text)
    if not 0 <= index < cp.size:
        raise ProofError(
            f"entry {index} is not in the checkpoint of size {cp.size}", rule="index-out-of-range"
        )
    return TlogProof(index, tuple(inclusion_proof(cp.size, index, reader)), note, extra)


def build_proof_file(
    note: bytes, index: int, reader: HashReader, *, extra: bytes | None = None
) -> bytes:
    """:func:`build_proof`, encoded as the file's bytes."""
    return build_proof(note, index, reader, extra=extra).encode()


def verify_proof(
    proof: TlogProof,
    policy_or_vkey: Policy | VerifierKey | str,
    leaf: bytes | None = None,
    *,
    leaf_hash: bytes | None = None,
    index: int | None = None,
    now: int | None = None,
) -> Checkpoint:
    """Verify a parsed proof for ``leaf`` (entry bytes) or ``leaf_hash`` (its RFC 6962 hash).

    The checkpoint must meet the policy (a bare log key means: that log's
    signature, no witnesses); ``index``, if given, must be the proof's.
    Returns the verified checkpoint. Raises :class:`NoteError` (signature),
    :class:`~cityid.errors.WitnessError` (quorum) or :class:`ProofError`.
    """
    if (leaf is None) == (leaf_hash is None):
        raise LedgerError("give exactly one of the entry or its leaf hash", rule="bad-arguments")
    h = _leaf_hash(leaf) if leaf is not None else leaf_hash
    assert h is not None
    if index is not None and proof.index != index:
        raise ProofError(f"proof is for entry {proof.index}, not {index}", rule="wrong-index")
    cp = as_policy(policy_or_vkey).check(proof.note, now=now)
    _verify_inclusion(proof.proof, cp.size, proof.index, cp.root, h)
    return cp


def verify_proof_file(
    data: bytes,
    policy_or_vkey: Policy | VerifierKey | str,
    leaf: bytes | None = None,
    *,
    leaf_hash: bytes | None = None,
    index: int | None = None,
    now: int | None = None,
) -> Checkpoint:
    """Parse and verify a ``.tlog-proof`` file; see :func:`verify_proof`."""
    proof = TlogProof.parse(data)
    return verify_proof(proof, policy_or_vkey, leaf, leaf_hash=leaf_hash, index=index, now=now)
