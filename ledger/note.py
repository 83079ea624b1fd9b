"""c2sp.org/signed-note: text signed by one or more named keys.

A signed note is ``text`` (ending in a newline), a blank line, then one or more
lines ``— <key name> <base64(key ID || signature)>``. The key name and 4-byte
key ID together select a verifier; signatures by unknown keys are carried but
ignored, which is what lets witnesses add cosignatures to a log's checkpoint
without breaking anyone who does not know them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field

from cityid.errors import NoteError, SignatureError
from cityid.keys import ALG_ED25519, SigningKey, VerifierKey

EM_DASH = "\u2014"
SIG_PREFIX = EM_DASH + " "
# The spec asks verifiers to cap notes but accept at least 16 signatures, even
# post-quantum ones (~5 kB each); these bounds leave ample room for both.
MAX_NOTE_SIZE = 1 << 20
MAX_SIGNATURES = 100


@dataclass(frozen=True, slots=True)
class Signature:
    """One signature line: key name, 4-byte key ID, raw signature bytes."""

    name: str
    key_id: bytes
    sig: bytes

    def line(self) -> str:
        blob = base64.b64encode(self.key_id + self.sig).decode()
        return f"{SIG_PREFIX}{self.name} {blob}\n"


@dataclass(slots=True)
class Note:
    """An opened note: its text and which signatures were checked."""

    text: str
    verified: list[tuple[VerifierKey, Signature]] = field(default_factory=list)
    unverified: list[Signature] = field(default_factory=list)

    @property
    def signatures(self) -> list[Signature]:
        return [s for _, s in self.verified] + self.unverified


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def check_text(text: str) -> None:
    """Raise :class:`NoteError` unless ``text`` is a valid note body."""
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline", rule="note-text")
    for i, c in enumerate(text):
        if c < " " and c != "\n":
            raise NoteError(
                f"note text has control character {ord(c):#04x} at offset {i}", rule="note-text"
            )


def sign_note(text: str, *signers: SigningKey) -> bytes:
    """Sign ``text`` with each of ``signers`` (Ed25519, alg 0x01)."""
    check_text(text)
    if not signers:
        raise NoteError("a signed note needs at least one signer", rule="note-unsigned")
    msg = text.encode()
    lines = [Signature(s.name, s.key_id, s.sign(msg)).line() for s in signers]
    return msg + b"\n" + "".join(lines).encode()


def _parse_sig_line(line: str, lineno: int) -> Signature:
    if not line.startswith(SIG_PREFIX):
        raise NoteError(
            f"signature line {lineno} does not start with an em dash (U+2014) and a space",
            rule="note-signature-line",
        )
    parts = line[len(SIG_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise NoteError(
            f"signature line {lineno} is not '— name base64'", rule="note-signature-line"
        )
    name, blob = parts
    if not _valid_name(name):
        raise NoteError(
            f"signature line {lineno}: key name {name!r} is empty or has spaces or '+'",
            rule="note-signature-line",
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError) as e:
        raise NoteError(
            f"signature line {lineno} by {name}: bad base64", rule="note-signature-line"
        ) from e
    if len(raw) < 5:
        raise NoteError(
            f"signature line {lineno} by {name}: {len(raw)} bytes is too short for key ID "
            "and signature",
            rule="note-signature-line",
        )
    return Signature(name, raw[:4], raw[4:])


def parse_note(msg: bytes) -> tuple[str, list[Signature]]:
    """Split a signed note into its text and every signature line, checking the format.

    Nothing is verified here; see :func:`open_note`.
    """
    if len(msg) > MAX_NOTE_SIZE:
        raise NoteError(
            f"note is {len(msg)} bytes, more than the {MAX_NOTE_SIZE} allowed", rule="note-size"
        )
    try:
        s = msg.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NoteError(f"note is not valid UTF-8 (byte {e.start})", rule="note-encoding") from e
    for i, c in enumerate(s):
        if c < " " and c != "\n":
            raise NoteError(
                f"note has control character {ord(c):#04x} at offset {i}", rule="note-text"
            )
    if not s.endswith("\n"):
        raise NoteError("note does not end in a newline", rule="note-format")
    split = s.rfind("\n\n")
    if split < 0:
        raise NoteError(
            "note has no blank line separating text from signatures", rule="note-format"
        )
    text, block = s[: split + 1], s[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines", rule="note-unsigned")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(
            f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}", rule="note-size"
        )
    first_line = text.count("\n") + 2
    sigs = [_parse_sig_line(line, first_line + i) for i, line in enumerate(lines)]
    return text, sigs


def open_note(msg: bytes, verifiers: Iterable[VerifierKey]) -> Note:
    """Parse ``msg`` and verify the signatures of known Ed25519 (alg 0x01) keys.

    Signatures by unknown keys (or by cosignature keys, alg 0x04, which the
    witness module checks) land in ``unverified``. A known key whose signature
    fails rejects the whole note; so does a note no known key signed.
    """
    text, sigs = parse_note(msg)
    known = {(v.name, v.key_id): v for v in verifiers if v.alg == ALG_ED25519}
    note = Note(text)
    body = text.encode()
    for sig in sigs:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            note.unverified.append(sig)
            continue
        try:
            v.verify(body, sig.sig)
        except SignatureError as e:
            raise NoteError(
                f"note signature by {sig.name} (key {sig.key_id.hex()}) does not verify",
                rule="note-bad-signature",
            ) from e
        note.verified.append((v, sig))
    if not note.verified:
        names = ", ".join(sorted({n for n, _ in known})) or "none given"
        raise NoteError(
            f"note carries no valid signature by a known key (known: {names})",
            rule="note-no-known-signature",
        )
    return note


def add_signatures(msg: bytes, sigs: Iterable[Signature]) -> bytes:
    """Append signature lines to a signed note, keeping order.

    A signature whose (name, key ID) the note already carries is skipped: the
    first one stays, so re-adding a witness's cosignature is a no-op.
    """
    text, existing = parse_note(msg)
    seen = {(s.name, s.key_id) for s in existing}
    out = list(existing)
    for s in sigs:
        if not _valid_name(s.name) or len(s.key_id) != 4 or not s.sig:
            raise NoteError(f"signature by {s.name!r} is malformed", rule="note-signature-line")
        if (s.name, s.key_id) in seen:
            continue
        seen.add((s.name, s.key_id))
        out.append(s)
    if len(out) > MAX_SIGNATURES:
        raise NoteError(
            f"note would have {len(out)} signatures, more than {MAX_SIGNATURES}", rule="note-size"
        )
    return text.encode() + b"\n" + "".join(s.line() for s in out).encode()
