"""Signed operations: the leaves of every registrar's log.

An operation is a canonical msgpack array ``[kind, ...fields]`` (its *body*).
The writer signs ``DOMAIN + body`` with its own Ed25519 key, and the leaf is
``[VERSION, body, public_key, signature]``: the client's signature goes into
the log, so not even the registrar's operator can forge a write it did not
receive. The domain string keeps these signatures from ever being valid as a
signed note, a cosignature or anything else signed with the same key.

Every operation names the version it replaces (``prev``): 0 to create, the
current version to change. Versions only grow, so a replayed operation is
always stale and refused.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import nacl.exceptions
import nacl.signing

from .errors import OperationError, RecordError, SignatureError
from .identifiers import (
    Identifier,
    IdentifierError,
    Prefix,
    mint_suffix,
    parse_identifier,
    parse_prefix,
    suffix_checker,
)
from .keys import SigningKey
from .records import MAX_RECORD_BYTES, PackedRecord, Record, check_wire, render_template

VERSION = "cityid/op/v1"
DOMAIN = b"cityid/op/v1\x00"
MAX_LEAF = 65535
MAX_RANGE = 10_000_000


def key_fingerprint(public_key: bytes) -> str:
    """A short, stable name for a raw public key in messages and logs."""
    return hashlib.sha256(public_key).hexdigest()[:8]


def _fail(message: str, rule: str = "operation") -> OperationError:
    return OperationError(message, rule=rule)


_MAX_INT = 2**63 - 1


def _int(x: Any, what: str, lo: int = 0, hi: int = _MAX_INT) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise _fail(f"{what} must be an integer in {lo}..{hi}", "field")
    return x


def _str(x: Any, what: str) -> str:
    if not isinstance(x, str):
        raise _fail(f"{what} must be a string", "field")
    return x


def _key(x: Any, what: str) -> bytes:
    if not isinstance(x, bytes) or len(x) != 32:
        raise _fail(f"{what} must be a 32-byte Ed25519 public key", "field")
    return x


def _record(x: Any, what: str) -> Record:
    try:
        return Record.from_wire(x)
    except RecordError as e:
        raise OperationError(f"{what}: {e.message}", rule=e.rule) from e


@dataclass(frozen=True, slots=True)
class Delegate:
    """Give ``prefix`` (a child node) to ``key``; ``origin`` names its log if elsewhere."""

    kind: ClassVar[str] = "delegate"
    prefix: Prefix
    prev: int
    key: bytes
    origin: str | None
    record: Record
    time: int

    def body(self) -> list[Any]:
        return [
            self.kind,
            str(self.prefix),
            self.prev,
            self.key,
            self.origin,
            self.record.to_wire(),
            self.time,
        ]

    @classmethod
    def from_body(cls, b: list[Any]) -> Delegate:
        if len(b) != 7:
            raise _fail("delegate has 7 fields", "arity")
        origin = None if b[4] is None else _str(b[4], "origin")
        return cls(
            parse_prefix(_str(b[1], "prefix")),
            _int(b[2], "prev"),
            _key(b[3], "key"),
            origin,
            _record(b[5], "record"),
            _int(b[6], "time"),
        )

    @property
    def target(self) -> str:
        return str(self.prefix.record_id)


@dataclass(frozen=True, slots=True)
class MintItem:
    suffix: str
    prev: int
    record: Record


_new = object.__new__
_set_item_suffix = MintItem.suffix.__set__  # type: ignore[attr-defined]
_set_item_prev = MintItem.prev.__set__  # type: ignore[attr-defined]
_set_item_record = MintItem.record.__set__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Mint:
    """Create explicit identifiers under ``prefix`` (one, or a CSV's rows)."""

    kind: ClassVar[str] = "mint"
    prefix: Prefix
    items: tuple[MintItem, ...]
    time: int

    def body(self) -> list[Any]:
        return [
            self.kind,
            str(self.prefix),
            [[i.suffix, i.prev, i.record.to_wire()] for i in self.items],
            self.time,
        ]

    @classmethod
    def from_body(cls, b: list[Any]) -> Mint:
        if len(b) != 4 or not isinstance(b[2], list) or not b[2]:
            raise _fail("mint has 4 fields and at least one item", "arity")
        prefix = parse_prefix(_str(b[1], "prefix"))
        check_suffix = suffix_checker(prefix)  # Identifier(prefix, suffix)'s checks
        items = []
        for n, it in enumerate(b[2]):
            if not isinstance(it, list) or len(it) != 3:
                raise _fail(f"mint item {n} is [suffix, prev, record]", "arity")
            suffix = it[0]
            if not isinstance(suffix, str):
                raise _fail(f"item {n} suffix must be a string", "field")
            upper = suffix.upper()
            check_suffix(upper)
            if upper != suffix:
                raise _fail(f"item {n} suffix is not canonical (upper case)", "canonical")
            prev = it[1]
            if type(prev) is not int or not 0 <= prev <= _MAX_INT:
                prev = _int(prev, "prev")  # the same check, and its error
            try:
                record = Record.from_wire(it[2])
            except RecordError as e:
                raise OperationError(f"item {n}: {e.message}", rule=e.rule) from e
            item = _new(MintItem)  # MintItem(upper, prev, record), without a frozen __init__
            _set_item_suffix(item, upper)
            _set_item_prev(item, prev)
            _set_item_record(item, record)
            items.append(item)
        suffixes = [i.suffix for i in items]
        if len(set(suffixes)) != len(suffixes):
            raise _fail("a mint names the same suffix twice", "duplicate-suffix")
        return cls(prefix, tuple(items), _int(b[3], "time"))

    @property
    def target(self) -> str:
        return str(self.prefix)


@dataclass(frozen=True, slots=True)
class MintRange:
    """Create ``count`` sequential minted suffixes from one template: one leaf."""

    kind: ClassVar[str] = "mint-range"
    prefix: Prefix
    letters: str
    start: int
    count: int
    width: int
    template: Record
    time: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_RANGE:
            raise _fail(f"a range has 1..{MAX_RANGE} identifiers", "range-count")
        if not (
            (self.letters.isascii() and self.letters.isalpha() and self.letters.isupper())
            or self.letters == ""
        ):
            raise _fail("range letters are upper-case A-Z", "range-letters")
        if not 1 <= self.width <= 30:
            raise _fail("range width is 1..30 digits", "range-width")
        last = mint_suffix(self.letters, self.start + self.count - 1, self.width)
        # A template that cannot render would poison every identifier of the range.
        try:
            render_template(self.template, suffix=last, id=f"{self.prefix}/{last}")
        except RecordError as e:
            raise OperationError(f"range template: {e.message}", rule=e.rule) from e

    def body(self) -> list[Any]:
        return [
            self.kind,
            str(self.prefix),
            self.letters,
            self.start,
            self.count,
            self.width,
            self.template.to_wire(),
            self.time,
        ]

    @classmethod
    def from_body(cls, b: list[Any]) -> MintRange:
        if len(b) != 8:
            raise _fail("mint-range has 8 fields", "arity")
        return cls(
            parse_prefix(_str(b[1], "prefix")),
            _str(b[2], "letters"),
            _int(b[3], "start"),
            _int(b[4], "count", 1, MAX_RANGE),
            _int(b[5], "width", 1, 30),
            _record(b[6], "template"),
            _int(b[7], "time"),
        )

    @property
    def target(self) -> str:
        return str(self.prefix)

    def suffix(self, i: int) -> str:
        return mint_suffix(self.letters, self.start + i, self.width)

    def suffixes(self) -> list[str]:
        return [self.suffix(i) for i in range(self.count)]

    def contains(self, letters: str, number: int, width: int) -> bool:
        return (
            letters == self.letters
            and width == self.width
            and self.start <= number < self.start + self.count
        )


@dataclass(frozen=True, slots=True)
class Update:
    """Replace the record of an identifier (or of a prefix's record ``0.NA/P``)."""

    kind: ClassVar[str] = "update"
    ident: Identifier
    prev: int
    record: Record
    time: int

    def body(self) -> list[Any]:
        return [self.kind, str(self.ident), self.prev, self.record.to_wire(), self.time]

    @classmethod
    def from_body(cls, b: list[Any]) -> Update:
        if len(b) != 5:
            raise _fail("update has 5 fields", "arity")
        return cls(
            parse_identifier(_str(b[1], "identifier")),
            _int(b[2], "prev", 1),
            _record(b[3], "record"),
            _int(b[4], "time"),
        )

    @property
    def target(self) -> str:
        return str(self.ident)


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete an identifier, or revoke a delegation when the target is ``0.NA/P``."""

    kind: ClassVar[str] = "delete"
    ident: Identifier
    prev: int
    time: int

    def body(self) -> list[Any]:
        return [self.kind, str(self.ident), self.prev, self.time]

    @classmethod
    def from_body(cls, b: list[Any]) -> Delete:
        if len(b) != 4:
            raise _fail("delete has 4 fields", "arity")
        return cls(
            parse_identifier(_str(b[1], "identifier")), _int(b[2], "prev", 1), _int(b[3], "time")
        )

    @property
    def target(self) -> str:
        return str(self.ident)


@dataclass(frozen=True, slots=True)
class RotateKey:
    """Replace a prefix's key; signed by the current key, the old one stops working.

    ``prev`` counts earlier rotations (0 for the first), not delegation versions.
    """

    kind: ClassVar[str] = "rotate"
    prefix: Prefix
    prev: int
    new_key: bytes
    time: int

    def body(self) -> list[Any]:
        return [self.kind, str(self.prefix), self.prev, self.new_key, self.time]

    @classmethod
    def from_body(cls, b: list[Any]) -> RotateKey:
        if len(b) != 5:
            raise _fail("rotate has 5 fields", "arity")
        return cls(
            parse_prefix(_str(b[1], "prefix")),
            _int(b[2], "prev"),
            _key(b[3], "new key"),
            _int(b[4], "time"),
        )

    @property
    def target(self) -> str:
        return str(self.prefix.record_id)


#: An admin handle as Handle names it (``0.NA/P`` or ``P/ADMIN``): what a custodial write
#: records as the one who authenticated.
MAX_ADMIN_HANDLE = 255
MAX_CUSTODY_ADMINS = 64


def _admin_handle(x: Any) -> str:
    h = _str(x, "admin handle")
    if not 0 < len(h) <= MAX_ADMIN_HANDLE or not h.isprintable() or " " in h:
        raise _fail(f"admin handle {h[:40]!r} must be 1..{MAX_ADMIN_HANDLE} printable "
                    "characters without spaces", "field")  # fmt: skip
    return h


@dataclass(frozen=True, slots=True)
class Custody:
    """Grant ``key`` (a registrar's custodial key) custody of ``prefix`` for ``admins``.

    Signed by the current key of ``prefix``. The registrar holding ``key`` may then write
    content under ``prefix`` (:class:`Custodial`) for a client that authenticated the
    Handle way as one of ``admins`` (Handle admin handles such as ``P/ADMIN``). A grant
    with no admins revokes ``key``'s custody. ``prev`` counts earlier grants of ``prefix``
    (0 for the first), so a replayed grant is stale.
    """

    kind: ClassVar[str] = "custody"
    prefix: Prefix
    prev: int
    key: bytes
    admins: tuple[str, ...]
    time: int

    def body(self) -> list[Any]:
        return [self.kind, str(self.prefix), self.prev, self.key, list(self.admins), self.time]

    @classmethod
    def from_body(cls, b: list[Any]) -> Custody:
        if len(b) != 6:
            raise _fail("custody has 6 fields", "arity")
        admins = b[4]
        if not isinstance(admins, list) or len(admins) > MAX_CUSTODY_ADMINS:
            raise _fail(f"custody admins is a list of at most {MAX_CUSTODY_ADMINS}", "field")
        names = tuple(_admin_handle(a) for a in admins)
        if list(names) != sorted(set(names)):
            raise _fail("custody admins must be sorted and distinct", "canonical")
        return cls(
            parse_prefix(_str(b[1], "prefix")),
            _int(b[2], "prev"),
            _key(b[3], "custodial key"),
            names,
            _int(b[5], "time"),
        )

    @property
    def target(self) -> str:
        return str(self.prefix.record_id)


Content = Mint | Update | Delete


@dataclass(frozen=True, slots=True)
class Custodial:
    """A content write a registrar signs with its custodial key for ``admin``, the Handle
    admin handle that authenticated (the leaf records who asked; :class:`Custody` says
    the registrar may)."""

    kind: ClassVar[str] = "custodial"
    admin: str
    op: Content

    def body(self) -> list[Any]:
        return [self.kind, self.admin, self.op.body()]

    @classmethod
    def from_body(cls, b: list[Any]) -> Custodial:
        if len(b) != 3:
            raise _fail("custodial has 3 fields", "arity")
        inner = b[2]
        if not isinstance(inner, list) or not inner or inner[0] not in _CONTENT:
            raise _fail("custodial wraps a mint, update or delete", "kind")
        op = _CONTENT[inner[0]].from_body(inner)
        if not isinstance(op, Mint) and op.ident.is_prefix_record:
            raise _fail("custodial writes content, not a prefix record", "kind")
        return cls(_admin_handle(b[1]), op)

    @property
    def target(self) -> str:
        return self.op.target


def content_of(op: Operation) -> Operation:
    """The operation ``op`` carries out: a custodial write's inner one, else ``op``."""
    return op.op if isinstance(op, Custodial) else op


Operation = Delegate | Mint | MintRange | Update | Delete | RotateKey | Custody | Custodial
_CONTENT: dict[str, Any] = {c.kind: c for c in (Mint, Update, Delete)}
KINDS: dict[str, Any] = {
    c.kind: c for c in (Delegate, Mint, MintRange, Update, Delete, RotateKey, Custody, Custodial)
}


def encode_body(op: Operation) -> bytes:
    # A Packer rather than msgpack.packb, whose keyword handling is not free.
    packer = msgpack.Packer(use_bin_type=True)
    if type(op) is not Mint:
        return packer.pack(op.body())
    # msgpack is compositional: an array is its header then its elements' encodings,
    # so a mint's body is assembled from its records' cached canonical bytes rather
    # than packing every record again (a CSV's leaf holds hundreds).
    pack = packer.pack
    return b"".join([
        b"\x94", pack(op.kind), pack(str(op.prefix)), packer.pack_array_header(len(op.items)),
        *[b"\x93" + pack(i.suffix) + pack(i.prev) + i.record.encode() for i in op.items],
        pack(op.time),
    ])  # fmt: skip


@dataclass(frozen=True, slots=True)
class SignedOperation:
    """An operation with its writer's public key and signature: one ledger leaf."""

    op: Operation
    signer: bytes
    signature: bytes
    # The canonical body, packed once: it is what is signed, verified and logged.
    body: bytes = field(default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.body:
            object.__setattr__(self, "body", encode_body(self.op))

    @classmethod
    def sign(cls, op: Operation, key: SigningKey) -> SignedOperation:
        body = encode_body(op)
        return cls(op, key.public_key, key.sign(DOMAIN + body), body)

    def encode(self) -> bytes:
        return _assemble(self.body, self.signer, self.signature)

    def verify(self) -> None:
        """Check the writer's signature (who may write is the authority's question)."""
        try:
            nacl.signing.VerifyKey(self.signer).verify(DOMAIN + self.body, self.signature)
        except (nacl.exceptions.BadSignatureError, ValueError) as e:
            raise SignatureError(
                f"the signature on this {self.op.kind} of {self.op.target} does not verify "
                f"for key {key_fingerprint(self.signer)}: forged or corrupted",
                rule="forged-signature",
            ) from e

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.signer)

    @classmethod
    def decode(cls, leaf: bytes) -> SignedOperation:
        """Parse a leaf strictly (canonical re-encoding) and verify its signature."""
        if len(leaf) > MAX_LEAF:
            raise _fail(f"leaf is {len(leaf)} bytes (at most {MAX_LEAF})", "leaf-too-large")
        try:
            obj = msgpack.unpackb(leaf, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise _fail(f"leaf is not valid msgpack: {e}", "encoding") from e
        if not isinstance(obj, list) or len(obj) != 4 or obj[0] != VERSION:
            raise _fail(f"leaf is not a {VERSION} operation", "version")
        _, body, signer, sig = obj
        if (
            not isinstance(body, list)
            or not body
            or not isinstance(body[0], str)
            or (body[0] not in KINDS)
        ):
            raise _fail("unknown operation kind", "kind")
        if not isinstance(sig, bytes) or len(sig) != 64:
            raise _fail("signature must be 64 bytes", "field")
        try:
            op = KINDS[body[0]].from_body(body)
        except IdentifierError as e:
            raise OperationError(e.message, rule=e.rule) from e
        signed = cls(op, _key(signer, "signer"), sig)
        if signed.encode() != leaf:
            raise _fail("leaf is not in canonical form", "canonical")
        signed.verify()
        return signed


def decode_for_replay(leaf: bytes, *, verified: bool = False) -> SignedOperation:
    """Decode a leaf as :meth:`SignedOperation.decode` does, for followers that store it.

    The same checks, and the same refusals (a leaf this path does not take as a plain
    mint goes through ``decode``, which names the rule it breaks), but a mint's records
    are checked without building objects (:func:`~cityid.records.check_wire`) and
    kept as their bytes (:class:`~cityid.records.PackedRecord`): a follower writing a
    CSV's million records needs the bytes, checked, and nothing more.

    ``verified``: the leaf passed these checks before (a follower replaying what it
    applied in an earlier run): only its form is read, without the signature, canonical
    or record checks.
    """
    if verified and not leaf.startswith(_MINT_LEAF):
        return _decode_verified(leaf)
    try:
        obj = msgpack.unpackb(leaf, raw=False, strict_map_key=True)
        _, body, signer, sig = obj
        kind, prefix_text, items, when = body
        fast = (
            len(leaf) <= MAX_LEAF and obj[0] == VERSION and kind == Mint.kind
            and type(items) is list and items and type(sig) is bytes and len(sig) == 64
            and type(signer) is bytes and len(signer) == 32 and type(prefix_text) is str
            and type(when) is int and 0 <= when <= _MAX_INT
        )  # fmt: skip
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        fast = False
    if not fast:
        return SignedOperation.decode(leaf)
    try:
        prefix = parse_prefix(prefix_text)
    except IdentifierError:
        return SignedOperation.decode(leaf)
    packer = msgpack.Packer(use_bin_type=True)
    if not verified and packer.pack(obj) != leaf:
        # Canonical msgpack for the whole leaf in one comparison: each record's bytes
        # below are then exactly the bytes that were signed.
        return SignedOperation.decode(leaf)  # refuses it, naming the rule
    suffixes = [it[0] if type(it) is list and len(it) == 3 else None for it in items]
    if prefix.nodes == ("0", "NA") or not _SUFFIXES_RE.fullmatch(_joined(suffixes)):
        # Not every suffix is a plain upper-case label: the strict path says which.
        return SignedOperation.decode(leaf)
    pack = packer.pack
    packed = PackedRecord.of_bytes
    out = []
    for suffix, prev, record in items:
        if type(prev) is not int or not 0 <= prev <= _MAX_INT:
            return SignedOperation.decode(leaf)
        raw = pack(record)
        if not verified:
            try:
                check_wire(record)
            except RecordError:
                return SignedOperation.decode(leaf)  # refuses it, as the registrar words it
            if len(raw) > MAX_RECORD_BYTES:
                return SignedOperation.decode(leaf)
        item = _new(MintItem)
        _set_item_suffix(item, suffix)
        _set_item_prev(item, prev)
        _set_item_record(item, packed(raw))
        out.append(item)
    if len(set(suffixes)) != len(suffixes):
        return SignedOperation.decode(leaf)
    # The leaf is [header, body, signer (bin 32), signature (bin 64)], canonical: the
    # body's bytes are what lies between.
    body = leaf[len(_LEAF_HEADER) : -(2 + 32 + 2 + 64)]
    signed = SignedOperation(Mint(prefix, tuple(out), when), signer, sig, body)
    if not verified:
        signed.verify()
    return signed


# Every suffix of a mint at once: upper-case labels of 1 to 63 characters, one a line.
_SUFFIXES_RE = re.compile(r"[0-9A-Z_-]{1,63}(?:\n[0-9A-Z_-]{1,63})*")


def _joined(suffixes: list[Any]) -> str:
    if not all(type(s) is str for s in suffixes):
        return ""
    joined = "\n".join(suffixes)
    # A suffix with a line break of its own would pass for two: refuse the shortcut.
    return joined if joined.count("\n") == len(suffixes) - 1 else ""


def _decode_verified(leaf: bytes) -> SignedOperation:
    try:
        version, body, signer, sig = msgpack.unpackb(leaf, raw=False, strict_map_key=True)
        if version != VERSION:
            raise ValueError(f"not {VERSION}")
        op = KINDS[body[0]].from_body(body)
    except (ValueError, TypeError, KeyError, IndexError, msgpack.ExtraData) as e:
        raise _fail(f"leaf does not decode: {e}", "encoding") from e
    return SignedOperation(op, signer, sig)


_LEAF_HEADER = b"\x94" + msgpack.packb(VERSION)  # fixarray of 4, then the version tag
# A mint leaf's first bytes: the header, then its body's [kind, ...] header and kind.
_MINT_LEAF = _LEAF_HEADER + b"\x94" + msgpack.packb(Mint.kind)


def _assemble(body: bytes, signer: bytes, signature: bytes) -> bytes:
    # A 4-element msgpack array is its header byte then the elements' encodings,
    # so the leaf is assembled from the packed body without packing it again.
    # A 32- or 64-byte bin is bin8: a 0xc4 byte, the length, the bytes.
    if (
        type(signer) is bytes
        and type(signature) is bytes
        and len(signer) == 32
        and len(signature) == 64
    ):
        leaf = b"".join((_LEAF_HEADER, body, b"\xc4\x20", signer, b"\xc4\x40", signature))
    else:
        packer = msgpack.Packer(use_bin_type=True)
        leaf = b"".join((_LEAF_HEADER, body, packer.pack(signer), packer.pack(signature)))
    if len(leaf) > MAX_LEAF:
        raise _fail(
            f"operation is {len(leaf)} bytes; a leaf is at most {MAX_LEAF}", "leaf-too-large"
        )
    return leaf


def sign_body(body: bytes, key: SigningKey) -> bytes:
    """The leaf of an operation given as its packed body, signed by ``key``.

    For bulk writers that pack bodies without building Operation objects (a
    CSV's mint leaves): the body must be the canonical encoding of
    ``[kind, ...fields]``, which a registrar checks (``SignedOperation.decode``)
    and otherwise refuses.
    """
    return _assemble(body, key.public_key, key.sign(DOMAIN + body))


def now() -> int:
    return int(time.time())


def chunk_items(
    items: Sequence[MintItem], prefix: Prefix, budget: int = MAX_LEAF - 512
) -> list[list[MintItem]]:
    """Split mint items into groups whose leaves stay under the leaf limit."""
    groups: list[list[MintItem]] = []
    cur: list[MintItem] = []
    size = 0
    for it in items:
        # An upper bound of the item's encoding: array header, suffix (<= 2-byte
        # header), prev (<= 9 bytes), and the record's cached canonical bytes.
        n = 12 + len(it.suffix) + len(it.record.encode())
        if cur and size + n > budget:
            groups.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += n
    if cur:
        groups.append(cur)
    return groups
