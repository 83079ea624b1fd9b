"""Typed errors shared by every service.

Each error carries a short machine-readable ``rule`` (stable, documented, used in
tests and in API error bodies) and a human message that names the rule broken.
Edges (HTTP, DNS, CLI) map these classes to status codes once; nothing below the
edge formats a response.
"""

from __future__ import annotations


class CityIdError(Exception):
    """Base of every error raised on purpose by cityid."""

    rule: str = "error"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        if rule is not None:
            self.rule = rule

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.rule


class ListenError(CityIdError):
    """A server cannot bind its address. The message advises the command-line flag;
    callers configured otherwise (``cityid up``) name their own setting from
    ``address`` and ``reason``."""

    rule = "listen"

    def __init__(self, address: str, reason: str, *, which: str = "") -> None:
        super().__init__(f"cannot listen on {address}: {reason}; choose another with --listen")
        self.address, self.reason = address, reason
        self.which = which  # which of several listeners, where one process has several


class IdentifierError(CityIdError, ValueError):
    """An identifier, prefix, suffix or DNS name breaks a syntax rule."""

    rule = "identifier"


class RecordError(CityIdError, ValueError):
    """A record or one of its values is malformed or out of bounds."""

    rule = "record"


class KeyFormatError(CityIdError, ValueError):
    """A key file or verifier-key string is malformed."""

    rule = "key"


class SignatureError(CityIdError):
    """A signature does not verify."""

    rule = "signature"


class AuthenticationRequired(SignatureError):
    """A write came with no signature at all (as opposed to a bad one)."""

    rule = "authentication-needed"


class OperationError(CityIdError, ValueError):
    """An operation is malformed (before any authority question)."""

    rule = "operation"


class AuthorityError(CityIdError):
    """A well-formed, correctly signed operation that the signer may not perform."""

    rule = "authority"


class ConflictError(CityIdError):
    """The operation names a version that is not the current one (stale or replayed)."""

    rule = "conflict"


class NotFoundError(CityIdError):
    """The named identifier or prefix does not exist."""

    rule = "not-found"


class LedgerError(CityIdError):
    """Base for transparency-log failures: formats, proofs, storage."""

    rule = "ledger"


class NoteError(LedgerError):
    """A signed note or checkpoint is malformed or carries no valid known signature."""

    rule = "note"


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""

    rule = "proof"


class TileError(LedgerError):
    """A tile or entry bundle is missing, truncated or does not match the tree."""

    rule = "tile"


class ForkError(LedgerError):
    """Two checkpoints of one log disagree: same size, other root, or inconsistent."""

    rule = "fork"


class WitnessError(LedgerError):
    """A witness refused, timed out, or the cosignature quorum was not met."""

    rule = "witness"
