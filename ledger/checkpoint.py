"""c2sp.org/tlog-checkpoint: the signed tree head of a log.

The note text is three or more non-empty lines: origin, decimal tree size (no
leading zeros), base64 root hash, then optional extension lines.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cityid.errors import NoteError
from cityid.keys import VerifierKey

from .merkle import HASH_SIZE
from .note import Note, open_note

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")
MAX_SIZE = (1 << 64) - 1


def _encode_root(root: bytes) -> str:
    return base64.b64encode(root).decode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's (origin, size, root) and opaque extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise NoteError(
                "checkpoint origin must be one non-empty line", rule="checkpoint-origin"
            )
        if not isinstance(self.size, int) or not 0 <= self.size <= MAX_SIZE:
            raise NoteError(
                f"checkpoint size {self.size!r} is out of range", rule="checkpoint-size"
            )
        if len(self.root) != HASH_SIZE:
            raise NoteError(
                f"checkpoint root is {len(self.root)} bytes, want {HASH_SIZE}",
                rule="checkpoint-root",
            )
        for ext in self.extensions:
            if not ext or "\n" in ext:
                raise NoteError(
                    "checkpoint extension lines must be non-empty single lines",
                    rule="checkpoint-extension",
                )

    def text(self) -> str:
        lines = [self.origin, str(self.size), _encode_root(self.root), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise NoteError("checkpoint text must end in a newline", rule="checkpoint-format")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError(
                f"checkpoint has {len(lines)} lines, needs origin, size and root",
                rule="checkpoint-format",
            )
        origin, size_s, root_s, *ext = lines
        if not origin:
            raise NoteError("checkpoint origin (line 1) is empty", rule="checkpoint-origin")
        if not _SIZE_RE.fullmatch(size_s) or int(size_s) > MAX_SIZE:
            raise NoteError(
                f"checkpoint size (line 2) {size_s!r} is not a decimal without leading zeros",
                rule="checkpoint-size",
            )
        try:
            root = base64.b64decode(root_s, validate=True)
        except (binascii.Error, ValueError) as e:
            raise NoteError(
                f"checkpoint root (line 3) {root_s!r} is not base64", rule="checkpoint-root"
            ) from e
        if len(root) != HASH_SIZE or _encode_root(root) != root_s:
            raise NoteError(
                f"checkpoint root (line 3) is not a canonical base64 {HASH_SIZE}-byte hash",
                rule="checkpoint-root",
            )
        for i, line in enumerate(ext):
            if not line:
                raise NoteError(
                    f"checkpoint extension line {4 + i} is empty", rule="checkpoint-extension"
                )
        return cls(origin, int(size_s), root, tuple(ext))


def open_checkpoint(
    msg: bytes, verifier: VerifierKey, *, origin: str | None = None
) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint note by ``verifier`` and parse its text.

    ``origin`` (default: the verifier's name) must match the checkpoint's.
    """
    note = open_note(msg, [verifier])
    cp = Checkpoint.parse(note.text)
    want = verifier.name if origin is None else origin
    if cp.origin != want:
        raise NoteError(
            f"checkpoint origin {cp.origin!r} is not the expected {want!r}",
            rule="checkpoint-origin",
        )
    return cp, note
