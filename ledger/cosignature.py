"""c2sp.org/tlog-cosignature: Ed25519 ``cosignature/v1`` witness signatures.

A witness's cosignature is an ordinary signed-note signature line on the log's
checkpoint, made with a key whose ID is computed with algorithm byte 0x04
instead of 0x01. The signed message is not the checkpoint text itself but::

    cosignature/v1
    time <POSIX seconds>
    <the checkpoint text, every line, extension lines included>

and the signature bytes are the 8-byte big-endian timestamp followed by the
64-byte Ed25519 signature. The header gives domain separation: a witness key
can never be tricked into producing a valid *log* signature, and a log key's
signatures never pass as cosignatures.

Pure functions, no clock: the caller passes the timestamp.
"""

from __future__ import annotations

from cityid.errors import NoteError, SignatureError, WitnessError
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey, VerifierKey, key_id

from .checkpoint import Checkpoint
from .note import Signature, check_text

HEADER = "cosignature/v1\n"
# The spec caps the timestamp at 2^63 - 1 so it fits a signed 64-bit integer.
MAX_TIMESTAMP = (1 << 63) - 1
ED25519_SIG_SIZE = 64
COSIGNATURE_SIZE = 8 + ED25519_SIG_SIZE


def cosigner_vkey(key: SigningKey) -> VerifierKey:
    """The ``name+hash+base64`` verifier key (alg 0x04) that checks ``key``'s cosignatures."""
    return VerifierKey(key.name, key.public_key, ALG_COSIGNATURE_V1)


def signed_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The exact bytes a ``cosignature/v1`` signature covers."""
    _check_timestamp(timestamp)
    check_text(checkpoint_text)
    return f"{HEADER}time {timestamp}\n{checkpoint_text}".encode()


def _check_timestamp(timestamp: int) -> None:
    if not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise WitnessError(
            f"cosignature timestamp {timestamp!r} is not between 0 and 2^63-1",
            rule="cosignature-timestamp",
        )


def cosign(checkpoint_text: str, key: SigningKey, timestamp: int) -> Signature:
    """Cosign ``checkpoint_text`` (the note text, not the signed note) at ``timestamp``.

    The text must parse as a checkpoint: a witness never signs anything else.
    """
    Checkpoint.parse(checkpoint_text)
    msg = signed_message(checkpoint_text, timestamp)
    sig = timestamp.to_bytes(8, "big") + key.sign(msg)
    return Signature(key.name, key_id(key.name, key.public_key, ALG_COSIGNATURE_V1), sig)


def cosignature_timestamp(sig: Signature) -> int:
    """The timestamp a cosignature claims (unverified)."""
    if len(sig.sig) != COSIGNATURE_SIZE:
        raise NoteError(
            f"cosignature by {sig.name} is {len(sig.sig)} bytes, want {COSIGNATURE_SIZE} "
            "(8-byte timestamp and Ed25519 signature)",
            rule="cosignature-size",
        )
    return int.from_bytes(sig.sig[:8], "big")


def matches(sig: Signature, vkey: VerifierKey) -> bool:
    """Whether ``sig``'s key name and ID select ``vkey`` (clients ignore the rest)."""
    return sig.name == vkey.name and sig.key_id == vkey.key_id


def verify_cosignature(checkpoint_text: str, sig: Signature, vkey: VerifierKey) -> int:
    """Verify a ``cosignature/v1`` line by ``vkey`` on ``checkpoint_text``; return its timestamp.

    Raises :class:`WitnessError` if ``vkey`` is not a cosignature key or the
    line is by another key, and :class:`NoteError` if the signature is
    malformed or does not verify.
    """
    if vkey.alg != ALG_COSIGNATURE_V1:
        raise WitnessError(
            f"key {vkey.name} has algorithm {vkey.alg:#04x}; cosignature/v1 keys use 0x04",
            rule="cosignature-key-type",
        )
    if not matches(sig, vkey):
        raise WitnessError(
            f"signature by {sig.name} (key {sig.key_id.hex()}) is not by witness {vkey.name} "
            f"(key {vkey.key_id.hex()})",
            rule="cosignature-wrong-key",
        )
    timestamp = cosignature_timestamp(sig)
    if timestamp > MAX_TIMESTAMP:
        raise NoteError(
            f"cosignature by {sig.name} has a timestamp above 2^63-1", rule="cosignature-timestamp"
        )
    try:
        vkey.verify(signed_message(checkpoint_text, timestamp), sig.sig[8:])
    except SignatureError as e:
        raise NoteError(
            f"cosignature by {sig.name} (key {sig.key_id.hex()}) does not verify",
            rule="cosignature-bad-signature",
        ) from e
    return timestamp
