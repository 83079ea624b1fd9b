"""Ed25519 keys in the c2sp.org/signed-note encodings.

A key has a *name* (for a registrar: its ledger origin) and an Ed25519 key pair.
Verifier keys are written ``name+hash+base64`` and signer keys
``PRIVATE+KEY+name+hash+base64``, exactly as c2sp.org/signed-note and Go's
``golang.org/x/mod/sumdb/note`` do, so keys move between cityid and other
transparency-log tools unchanged. The key ID is the first four bytes of
SHA-256(name || 0x0A || alg || public key); alg 0x01 is a plain Ed25519 note
signature and alg 0x04 a ``cosignature/v1`` witness signature.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from .errors import KeyFormatError, SignatureError

_HASH_RE = re.compile(r"[0-9a-f]{8}")

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04


def _check_name(name: str) -> str:
    if not name or any(c in name for c in "+ \t\n\r") or not name.isprintable():
        raise KeyFormatError(
            f"key name {name!r} must be non-empty, printable, with no '+' or white space",
            rule="key-name",
        )
    return name


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte signed-note key ID of ``public_key`` under ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A named Ed25519 public key: what a verifier trusts."""

    name: str
    public_key: bytes
    alg: int = ALG_ED25519

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.public_key) != 32:
            raise KeyFormatError("an Ed25519 public key is 32 bytes", rule="key-length")

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key, self.alg)

    def __str__(self) -> str:
        blob = base64.b64encode(bytes([self.alg]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``name+hash+base64``; the hash must match the name and key."""
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise KeyFormatError(
                f"verifier key {text!r} is not of the form name+hash+base64", rule="vkey-format"
            )
        name, hash_hex, blob = parts
        if not _HASH_RE.fullmatch(hash_hex):
            raise KeyFormatError(
                f"verifier key {text!r}: the hash is 8 hex digits", rule="vkey-format"
            )
        try:
            raw = base64.b64decode(blob, validate=True)
            want = bytes.fromhex(hash_hex)
        except ValueError as e:
            raise KeyFormatError(
                f"verifier key {text!r}: bad hex or base64", rule="vkey-format"
            ) from e
        if len(want) != 4 or len(raw) != 33 or raw[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise KeyFormatError(
                f"verifier key {text!r}: not an Ed25519 key (alg 0x01 or 0x04, 32 bytes)",
                rule="vkey-format",
            )
        vk = cls(_check_name(name), raw[1:], raw[0])
        if vk.key_id != want:
            raise KeyFormatError(
                f"verifier key {text!r}: key hash {hash_hex} does not match name and key",
                rule="vkey-hash",
            )
        return vk

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is valid over ``message``."""
        try:
            nacl.signing.VerifyKey(self.public_key).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as e:
            raise SignatureError(
                f"signature by {self.name} (key {self.key_id.hex()}) does not verify",
                rule="bad-signature",
            ) from e

    def with_alg(self, alg: int) -> VerifierKey:
        return VerifierKey(self.name, self.public_key, alg)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A named Ed25519 private key."""

    name: str
    seed: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.seed) != 32:
            raise KeyFormatError("an Ed25519 seed is 32 bytes", rule="key-length")

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, os.urandom(32))

    @property
    def _nacl(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._nacl.verify_key)

    @property
    def verifier(self) -> VerifierKey:
        return VerifierKey(self.name, self.public_key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._nacl.sign(message).signature

    def __str__(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_id.hex()}+{blob}"

    def __repr__(self) -> str:  # never leak the seed into logs
        return f"SigningKey({self.name!r}, key_id={self.key_id.hex()})"

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyFormatError(
                "signer key is not of the form PRIVATE+KEY+name+hash+base64", rule="skey-format"
            )
        _, _, name, hash_hex, blob = parts
        if not _HASH_RE.fullmatch(hash_hex):
            raise KeyFormatError("signer key: the hash is 8 hex digits", rule="skey-format")
        try:
            raw = base64.b64decode(blob, validate=True)
            want = bytes.fromhex(hash_hex)
        except ValueError as e:
            raise KeyFormatError("signer key: bad hex or base64", rule="skey-format") from e
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyFormatError("signer key: not an Ed25519 key", rule="skey-format")
        sk = cls(_check_name(name), raw[1:])
        if sk.key_id != want:
            raise KeyFormatError("signer key: key hash does not match", rule="skey-hash")
        return sk

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the key to ``path`` with mode 0600 (created so, never widened)."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise KeyFormatError(f"{p} exists; refusing to overwrite a key", rule="key-exists")
        # mkstemp creates the file 0600, so the seed is never readable by others,
        # and the rename makes the new key appear whole or not at all.
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(str(self) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, p)
            else:
                try:
                    os.link(tmp, p)  # fails if p appeared meanwhile: never clobber a key
                except FileExistsError as e:
                    raise KeyFormatError(
                        f"{p} exists; refusing to overwrite a key", rule="key-exists"
                    ) from e
                finally:
                    os.unlink(tmp)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return p

    @classmethod
    def read_or_create(cls, path: str | os.PathLike[str], name: str) -> SigningKey:
        """The key in ``path``, or a new one named ``name`` written there (mode 0600)."""
        p = Path(path)
        if p.exists():
            return cls.read(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate(name)
        key.write(p)
        return key

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SigningKey:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise KeyFormatError(f"cannot read key file {p}: {e.strerror}", rule="key-file") from e
        if os.stat(p).st_mode & 0o077:
            raise KeyFormatError(
                f"key file {p} is readable by others; chmod 600 it", rule="key-permissions"
            )
        try:
            return cls.parse(text)
        except KeyFormatError as e:
            raise KeyFormatError(f"key file {p}: {e.message}", rule=e.rule) from e
