"""The resolver's Redis layout: dense, Valkey-Cluster-safe, rebuilt from the logs at will.

This module is the layout itself, pure: key names, value encodings, what
writers send. :mod:`resolver.store` reads it, :mod:`resolver.writer` writes it.

Redis is a cache of what the logs say (DESIGN.md §6). Every command on the hot
path touches one key, so the layout works unchanged on Valkey/Redis Cluster;
lookups issued in one event-loop pass go out as one pipeline.

Keys (``P`` a canonical prefix, ``S`` a suffix; no ``{...}`` hash tags on
purpose, so one big prefix spreads over every slot of a cluster):

``i:P:<bits>:<bucket>``  hash: field ``S`` -> ``[version, deleted, origin_id, leaf_index,
                         record]`` (msgpack; ``record`` is the canonical record bytes, nil
                         when deleted). ``bucket`` is the top ``bits`` bits of
                         CRC-32(``S``), so each bucket stays a small listpack.
``r:P:<letters>:<width>`` sorted set of range mints, all score 0, ordered by member:
                         ``<start zero-padded to width> ":" msgpack([count, origin_id,
                         leaf_index, template])``. A minted suffix finds its range with
                         one ``ZREVRANGEBYLEX``; an explicit ``i:`` entry overrides it.
``m:P``                  msgpack ``[bits, count, [[letters, width]...], revoked]``: how
                         ``P``'s identifiers are laid out. Readers cache it for
                         ``meta_ttl`` seconds and re-check it in the same pipeline.
``p:P``                  the prefix record ``0.NA/P``: msgpack ``[version, deleted,
                         origin_id, leaf_index, record, key, host_id]``.
``f:P``                  string: a Bloom filter of every explicit suffix ever written under
                         ``P`` (:mod:`resolver.membership`), one block per bucket, so a
                         reader answers most names nobody minted without a round trip.
``c:P``                  set of ``P``'s child nodes ever delegated (the same, for prefixes).
``l:<origin>``           hash, one per followed log: the sync cursor (``size``, ``root``,
                         ``note``, ``applied``) and status (``url``, ``key``, ``state``,
                         ``reason``, ``updated_at``).
``b:<origin>``           list, newest first, of the last :data:`RECENT_BATCHES` checkpoints
                         sync applied from that log (msgpack :class:`Batch`): the
                         explorer's history, since a log serves only its latest.
``meta:origins``         hash ``o:<origin>`` -> id and ``i:<id>`` -> origin: values name
                         their log by a small integer.
``meta:epoch``           set when sync starts filling an empty Redis; its absence means
                         Redis lost its data and must be rebuilt.
``meta:layout``          :data:`LAYOUT_VERSION` of the writer that filled it; another one
                         means the data is in a layout readers no longer read: sync
                         deletes it (:meth:`Writer.purge`) and rebuilds.
``meta:ready``           set while sync has caught up with every log it follows; each
                         log's own flag is ``ready`` in its ``l:`` hash.
``meta:anchors``         hash: root prefix -> the origin of the log that delegates under it.
``meta:leader``          the sync leader lock (``SET NX PX``, renewed by a one-key script).
``meta:gc``              bucket levels left behind by a resize, deleted after a grace time.
``meta:stats``           hash ``<kind>/<host:pid>`` -> msgpack ``[time, {counter: value}]``:
                         what sync and DNS processes publish for /metrics (``stats.py``).

Bucket sizing: a prefix starts with one bucket; when its explicit count would
pass ``fill << bits`` the writer copies it to a level sized for twice that (a bulk
load then copies each identifier about once in all), flips ``m:P``, publishes
``P/#`` (readers drop their cached layout of ``P``), keeps the old level, as it
was, a grace period for lookups in flight, then deletes it. ``fill`` is a quarter of
``hash-max-listpack-entries``, which :meth:`Writer.prepare` raises to 512 (and
``hash-max-listpack-value`` to 1024) with ``CONFIG SET`` where the server allows
it; where it does not, buckets are sized to the server's limit. A bucket that
outgrows its listpack still works, it only takes more memory.

A prefix whose delegation (or an ancestor's) is revoked keeps its entries, but
``m:P`` says ``revoked`` and lookups answer a tombstone.

Readiness: while ``meta:ready`` is absent (a rebuild, or a log just learnt), a
lookup that finds nothing asks whether that is final: the nearest existing
prefix record at or above the name says which log would hold it (its host; the
anchor's log above every record), and unless sync has caught up with that log
the lookup raises :class:`NotReadyError` (HTTP 503, DNS SERVFAIL: nothing
negative is cached). With ``meta:ready`` set, a miss costs nothing more.

Invalidation: after each write, sync publishes on ``cityid:inv`` a msgpack list
of the canonical identifiers changed; ``P/*`` means "anything under ``P``" (a
range mint, a revocation), ``P/+`` "new identifiers under ``P``" (a bulk mint:
only answers "not registered" under ``P`` are stale), ``P/#`` "``P``'s layout
changed" (a resize: readers re-read ``m:P``; no answer changed) and ``*`` means
"everything" (a rebuild, or a subscriber that reconnected and may have missed
messages). Messages are ordered: a reader that sees an identifier's message has
seen the layout its write used.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from redis.exceptions import RedisClusterException, RedisError

from cityid.errors import CityIdError

CHANNEL = "cityid:inv"
ORIGINS = "meta:origins"
EPOCH = "meta:epoch"
LAYOUT = "meta:layout"
READY = "meta:ready"
ANCHORS = "meta:anchors"
LEADER = "meta:leader"
GC = "meta:gc"
ALL = "*"

#: This module's layout; Redis written in another (``meta:layout``) is purged and rebuilt.
LAYOUT_VERSION = "3"  # 2: CRC-32 buckets; 3: membership filters (f:P, c:P)
MAX_BITS = 24  # 16M buckets per prefix: ~1.6 billion identifiers at a fill of 100
LISTPACK_ENTRIES = 512
LISTPACK_VALUE = 1024
MAX_FILL = 128
MAX_BATCH = 10_000  # lookups per pipeline
MAX_FILTER_BYTES = 256 << 20  # membership filters a process keeps (~1.6 bytes an identifier)
RELOAD_INTERVAL = 1.0  # seconds between two reads of one prefix's filter
RECENT_BATCHES = 20  # checkpoints remembered per log for the explorer
PUBLISH_CHUNK = 1000  # identifiers per invalidation message
NAMED_MINT = 64  # a mint of more identifiers is announced as "P/+" rather than one by one
COPY_CHUNK = 256  # buckets read per round trip while resizing

# What an unreachable Redis raises. A cluster client's RedisClusterException (no
# reachable node, a slot no node serves) is not a RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)


class StoreError(CityIdError):
    """Redis is unreachable or holds something this layout did not write."""

    rule = "store"


class NotReadyError(StoreError):
    """Sync has not yet caught up with the log that would hold the answer: ask again soon.

    Never "does not exist": Redis is being filled (a rebuild, a log just learnt), and
    what is missing may only be not yet written.
    """

    rule = "not-ready"


# -- the layout: pure functions -------------------------------------------------------


def bucket_of(suffix: str, bits: int) -> int:
    """The bucket of ``suffix`` among ``2**bits``: stable across processes and versions.

    The top bits of CRC-32: spread as evenly as a cryptographic hash over the suffixes
    that occur (sequential, minted), at a fifth of the cost, on every write and miss.
    Not keyed: whoever mints may crowd one bucket, which costs memory (the bucket
    leaves its listpack), not correctness; they can only fill their own prefix.
    """
    return zlib.crc32(suffix.encode()) >> (32 - bits) if bits else 0


def bits_for(count: int, fill: int) -> int:
    """The fewest bucket bits that keep ``count`` entries at ``fill`` or fewer per bucket."""
    bits = 0
    while count > fill << bits and bits < MAX_BITS:
        bits += 1
    return bits


def id_key(prefix: str, bits: int, bucket: int) -> str:
    return f"i:{prefix}:{bits}:{bucket}"


def range_key(prefix: str, letters: str, width: int) -> str:
    return f"r:{prefix}:{letters}:{width}"


def meta_key(prefix: str) -> str:
    return f"m:{prefix}"


def filter_key(prefix: str) -> str:
    return f"f:{prefix}"


def children_key(prefix: str) -> str:
    return f"c:{prefix}"


def prefix_key(prefix: str) -> str:
    return f"p:{prefix}"


def log_key(origin: str) -> str:
    return f"l:{origin}"


def batches_key(origin: str) -> str:
    return f"b:{origin}"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


def range_bound(number: int, width: int) -> bytes:
    # Members start with the zero-padded start and ':' (0x3a); ';' (0x3b) sorts
    # right after, so "(<n>;" bounds every range starting at or below n.
    return b"(" + f"{number:0{width}d}".encode() + b";"


@dataclass(slots=True)
class PrefixMeta:
    """How one prefix's identifiers are laid out (``m:P``)."""

    bits: int = 0
    count: int = 0
    ranges: frozenset[tuple[str, int]] = frozenset()
    revoked: bool = False

    def encode(self) -> bytes:
        return pack([self.bits, self.count, [list(r) for r in sorted(self.ranges)], self.revoked])

    @classmethod
    def decode(cls, data: bytes | None) -> PrefixMeta:
        if data is None:
            return cls()
        try:
            bits, count, ranges, revoked = unpack(data)
            return cls(int(bits), int(count), frozenset((r[0], int(r[1])) for r in ranges), revoked)
        except (ValueError, TypeError, msgpack.ExtraData) as e:
            raise StoreError(f"m: entry is not a prefix layout: {e}", rule="store-format") from e

    def layout(self) -> tuple[int, frozenset[tuple[str, int]]]:
        return self.bits, self.ranges


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where sync stands in one log: its last trusted checkpoint and entries applied."""

    origin: str
    size: int
    root: bytes
    note: bytes
    applied: int
    url: str = ""
    key: str = ""
    ready: bool = False  # sync caught up with a checkpoint of this log in this epoch


@dataclass(frozen=True, slots=True)
class Batch:
    """A checkpoint sync verified and applied: entries ``start..end-1`` of its log.

    One checkpoint may seal several of the registrar's batches when sync catches up;
    the explorer shows what this resolver verified, not the registrar's bookkeeping.
    """

    start: int
    end: int
    root: bytes
    applied_at: float  # Unix seconds
    identifiers: int  # identifier records written (created, changed or deleted)
    prefixes: int  # prefix records written
    ranges: int  # range mints
    sample: tuple[str, ...]  # the first few identifiers written

    def encode(self) -> bytes:
        return pack([self.start, self.end, self.root, self.applied_at, self.identifiers,
                      self.prefixes, self.ranges, list(self.sample)])  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> Batch:
        start, end, root, at, ids, pfx, rng, sample = unpack(data)
        return cls(start, end, root, at, ids, pfx, rng, tuple(sample))


# -- what writers send ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IdChange:
    prefix: str
    suffix: str
    version: int
    deleted: bool
    origin: str
    leaf_index: int
    record: bytes | None  # canonical record bytes; None when deleted


@dataclass(frozen=True, slots=True)
class MintChange:
    """The identifiers one mint leaf creates: ``(suffix, version, record bytes)`` each.

    One change for a leaf's thousand items rather than a thousand :class:`IdChange`:
    they share everything but the suffix and the record.
    """

    prefix: str
    origin: str
    leaf_index: int
    items: Sequence[tuple[str, int, bytes]]


@dataclass(frozen=True, slots=True)
class RangeChange:
    prefix: str
    letters: str
    width: int
    start: int
    count: int
    template: bytes
    origin: str
    leaf_index: int


@dataclass(frozen=True, slots=True)
class PrefixChange:
    prefix: str
    version: int
    deleted: bool
    origin: str
    leaf_index: int
    record: bytes | None
    key: bytes
    host: str


@dataclass(frozen=True, slots=True)
class RevokeChange:
    """Mark every identifier under ``prefix`` revoked (or no longer)."""

    prefix: str
    revoked: bool


Change = IdChange | MintChange | RangeChange | PrefixChange | RevokeChange


# -- the store (readers) --------------------------------------------------------------


# -- values, as the writer packs them ---------------------------------------------


def id_head(oid: int, leaf: int) -> _Heads:
    """The bytes every value of one mint leaf starts with, by version: all but the record."""
    return _Heads(oid, leaf)


class _Heads(dict[int, bytes]):
    """``[version, False, oid, leaf, `` packed, per version (almost always 1)."""

    __slots__ = ("leaf", "oid")

    def __init__(self, oid: int, leaf: int) -> None:
        super().__init__()
        self.oid, self.leaf = oid, leaf

    def __missing__(self, version: int) -> bytes:
        # An array of five: the first four packed, the record appended as a bin.
        head = self[version] = pack([version, False, self.oid, self.leaf, None])[:-1]
        return head


def as_bin(data: bytes) -> bytes:
    """``data`` as a msgpack bin (what ``pack`` makes of bytes)."""
    n = len(data)
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big") + data
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big") + data
    return b"\xc6" + n.to_bytes(4, "big") + data


def id_value(c: IdChange, oid: int) -> bytes:
    return pack([c.version, c.deleted, oid, c.leaf_index, None if c.deleted else c.record])


def range_member(c: RangeChange, oid: int) -> bytes:
    return f"{c.start:0{c.width}d}:".encode() + pack([c.count, oid, c.leaf_index, c.template])


def prefix_value(c: PrefixChange, oid: int, host: int) -> bytes:
    rec = None if c.deleted else c.record
    return pack([c.version, c.deleted, oid, c.leaf_index, rec, c.key, host])


def flat(mapping: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for k, v in mapping.items():
        out += (k, v)
    return out


def cursor_fields(c: Cursor, state: str, reason: str) -> dict[str, Any]:
    return {
        "size": c.size,
        "root": c.root,
        "note": c.note,
        "applied": c.applied,
        "url": c.url,
        "key": c.key,
        "state": state,
        "reason": reason,
        "updated_at": time.time(),
    }
