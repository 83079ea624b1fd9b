"""The resolver's hot path: a bounded in-process cache of what the store answered.

One *slot* per canonical identifier, and a slot is one ``bytes`` object: a
fixed header (expiry, generation, version, leaf, origin, the smallest TTL, where
the Location and its HTML-escaped form lie) followed by the record exactly as
sync stored it (canonical msgpack). Every answer is derived from it on use
(:mod:`resolver.encode` fills a template: the 302 costs one format, the JSON
record one pass over the values), so a million cached identifiers cost about
300 bytes each, not the kilobytes of kept replies, headers and record objects,
and the garbage collector has nothing to walk (bytes and str are not tracked).
When the URL needs neither percent- nor HTML-escaping (the usual case), the
Location is a slice of the stored record; otherwise both forms follow the header.

Freshness: sync publishes the identifiers it changes and :meth:`invalidate`
drops their slots. ``P/*`` (all of ``P``) bumps ``P``'s generation, which costs
O(1) however many slots ``P`` has: a slot remembers the generation it was
stored under and is dropped when it is read after the bump. ``P/+`` (new
identifiers under ``P``) bumps only the generation of ``P``'s negative answers;
``*`` drops all. The TTL is only a safety net for a missed message, and is
jittered so that a million entries loaded together never expire together and
stampede Redis. Negative answers (404) get a short TTL. An expired slot is not
thrown away: if Redis is unreachable when it is refreshed, it is served stale
rather than failing, which is how a degraded resolver keeps answering what it
knows.
"""

from __future__ import annotations

import random
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from html import escape
from typing import Any, NamedTuple

from cityid.records import decode_trusted

from .encode import DEFAULT_MAX_AGE, location
from .reply import Reply, etag_matches
from .store import Entry

#: What a slot holds: not registered (404), a record, deleted (410).
ABSENT, RECORD, DELETED = 0, 1, 2

# expires (monotonic), prefix index, generation, version, leaf, smallest TTL,
# origin index, kind, Location (offset, length), escaped URL (offset, length), record offset.
_HEAD = struct.Struct("<dIIQQIHBHHHHH")
HEAD_SIZE = _HEAD.size
_GEN = struct.Struct("<II")  # prefix index, generation: at offset 8
_KIND_AT = 8 + 4 + 4 + 8 + 8 + 4 + 2
MAX_PREFIXES = 100_000  # distinct prefixes with slots: beyond, new prefixes go uncached
MAX_ORIGINS = 65_535
_WRAP = 0xFFFFFFFF


class Slot(NamedTuple):
    """A slot's header, read back (:func:`read`)."""

    expires: float
    prefix: int
    generation: int
    version: int
    leaf: int
    age: int  # the smallest TTL of the values: Cache-Control max-age
    origin: int
    kind: int
    loc_at: int
    loc_len: int
    esc_at: int
    esc_len: int
    rec_at: int


read = _HEAD.unpack_from


def kind(blob: bytes) -> int:
    """What ``blob`` holds: :data:`ABSENT`, :data:`RECORD` or :data:`DELETED`."""
    return blob[_KIND_AT]


def location_of(blob: bytes, s: tuple[int, ...]) -> tuple[bytes, bytes]:
    """The Location (a URI) and the HTML-escaped URL of a slot read as ``s``."""
    loc = blob[s[8] : s[8] + s[9]]
    return loc, (loc if s[10] == s[8] else blob[s[10] : s[10] + s[11]])


class ResponseCache:
    """Bounded LRU of slots, keyed by canonical identifier (``PREFIX/SUFFIX``)."""

    def __init__(
        self,
        size: int = 100_000,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 5.0,
        jitter: float = 0.2,
        max_prefixes: int = MAX_PREFIXES,
    ) -> None:
        self.size = size
        self.max_prefixes = max_prefixes
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.jitter = jitter
        self._slots: OrderedDict[str, bytes] = OrderedDict()
        self._prefixes: dict[str, int] = {}  # prefix -> its index in the generations
        self._gens: list[int] = []  # per prefix index: the generation of what exists
        self._negs: list[int] = []  # per prefix index: the generation of "not registered"
        self.origins: list[str] = []  # origin index -> log origin
        self._origin_ids: dict[str, int] = {}
        self._random = random.Random().random
        self.seq = 0  # bumped by every invalidation: a lookup racing one is not kept long

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str) -> bytes | None:
        """The slot of ``key``, fresh or expired (the caller decides), touched as recent."""
        blob = self._slots.get(key)
        if blob is None:
            return None
        pidx, gen = _GEN.unpack_from(blob, 8)
        if gen != (self._negs if blob[_KIND_AT] == ABSENT else self._gens)[pidx]:
            # A revocation or a new mint under its prefix came after it: never serve it.
            del self._slots[key]
            return None
        self._slots.move_to_end(key)
        return blob

    def fresh(self, key: str) -> tuple[bytes, tuple[Any, ...]] | None:
        """The slot of ``key`` and its header (:func:`read`) if it may be served now."""
        blob = self._slots.get(key)
        if blob is None:
            return None
        s = read(blob)
        if s[2] != (self._negs if s[7] == ABSENT else self._gens)[s[1]]:
            del self._slots[key]  # as in get()
            return None
        self._slots.move_to_end(key)
        return (blob, s) if s[0] > time.monotonic() else None

    def put(self, key: str, entry: Entry | None, *, ttl: float | None = None) -> bytes:
        """Store what the store answered for ``key`` (``ttl`` caps the usual one)."""
        life = self.ttl if entry is not None else self.negative_ttl
        if ttl is not None and ttl < life:
            life = ttl
        # Expire somewhere in [ttl * (1 - jitter), ttl]: spread, never later than asked.
        expires = time.monotonic() + life * (1.0 - self.jitter * self._random())
        prefix = key[: key.find("/")]
        pidx = self._prefixes.get(prefix)
        if pidx is None:
            pidx = self._new_prefix(prefix)
        keep = pidx >= 0
        if entry is None:
            blob = _HEAD.pack(expires, pidx if keep else 0, self._negs[pidx] if keep else 0,
                              0, 0, 0, 0, ABSENT, 0, 0, 0, 0, HEAD_SIZE)  # fmt: skip
        else:
            oid = self._origin_ids.get(entry.origin)
            if oid is None:
                oid = self._new_origin(entry.origin)
                keep = keep and oid >= 0
            blob = _pack(entry, expires, pidx if keep else 0, self._gens[pidx] if keep else 0,
                         oid if keep else 0)  # fmt: skip
        if keep and self.size > 0:
            slots = self._slots
            if slots.pop(key, None) is None and len(slots) >= self.size:
                slots.popitem(False)  # the least recently used
            slots[key] = blob
        return blob

    def entry(self, key: str, blob: bytes) -> Entry | None:
        """The store's answer that ``blob`` holds for ``key`` (None: not registered)."""
        s = read(blob)
        if s[7] == ABSENT:
            return None
        record = decode_trusted(blob[s[12] :]) if s[7] == RECORD else None
        return Entry(key, s[3], s[7] == DELETED, record, self.origins[s[6]], s[4])

    def invalidate(self, idents: Iterable[str]) -> None:
        """Drop what sync changed: ``P/S``, ``P/*`` (all of ``P``), ``P/+`` (``P``'s
        negative answers) or ``*`` (everything)."""
        for ident in idents:
            if ident == "*":
                self.clear()
            elif ident.endswith("/*") or ident.endswith("/+"):
                pidx = self._prefixes.get(ident[:-2])
                if pidx is not None:
                    self._negs[pidx] = (self._negs[pidx] + 1) & _WRAP
                    if ident[-1] == "*":
                        self._gens[pidx] = (self._gens[pidx] + 1) & _WRAP
            else:
                self._slots.pop(ident, None)
        self.seq += 1

    def clear(self) -> None:
        self._slots.clear()
        self._prefixes.clear()
        self._gens.clear()
        self._negs.clear()
        # The origins stay: slots read before this may still be turned into entries.

    def _new_prefix(self, prefix: str) -> int:
        """``prefix``'s new index in the generations; -1 (not cached) when they are full."""
        if len(self._prefixes) >= self.max_prefixes:
            return -1  # floods of made-up prefixes must not grow this table
        pidx = self._prefixes[prefix] = len(self._gens)
        self._gens.append(0)
        self._negs.append(0)
        return pidx

    def _new_origin(self, origin: str) -> int:
        if len(self.origins) >= MAX_ORIGINS:
            return -1
        oid = self._origin_ids[origin] = len(self.origins)
        self.origins.append(origin)
        return oid


# What needs neither percent-encoding in a Location (encode.location) nor escaping in
# HTML: most URLs. The pattern is location's plain set without "&" and "%".
_PLAIN_URL = re.compile(r"[A-Za-z0-9\-._~!$()*+,;=:@/?]*(?:#[A-Za-z0-9\-._~!$()*+,;=:@/?]*)?")


def _pack(entry: Entry, expires: float, pidx: int, gen: int, origin: int) -> bytes:
    record = entry.record
    if entry.deleted or record is None:
        return _HEAD.pack(expires, pidx, gen, entry.version, entry.leaf_index, 0, origin,
                          DELETED, 0, 0, 0, 0, HEAD_SIZE)  # fmt: skip
    data = record.encode()
    age = url = None
    for v in record.values:  # max_age(record) and the first of record.urls(), in one pass
        if age is None or v.ttl < age:
            age = v.ttl
        if url is None and v.type == "URL" and type(v.data) is str:
            url = v.data
    if age is None:
        age = DEFAULT_MAX_AGE
    if url is None:
        return _HEAD.pack(expires, pidx, gen, entry.version, entry.leaf_index, age, origin,
                          RECORD, 0, 0, 0, 0, HEAD_SIZE) + data  # fmt: skip
    if _PLAIN_URL.fullmatch(url):
        # The Location and the HTML are the URL as stored in the record: point at it.
        raw = url.encode()
        at = HEAD_SIZE + data.find(raw)
        return _HEAD.pack(expires, pidx, gen, entry.version, entry.leaf_index, age, origin,
                          RECORD, at, len(raw), at, len(raw), HEAD_SIZE) + data  # fmt: skip
    loc, esc = location(url).encode("ascii"), escape(url).encode()
    esc_at = HEAD_SIZE + len(loc)
    rec_at = esc_at + len(esc)
    head = _HEAD.pack(expires, pidx, gen, entry.version, entry.leaf_index, age, origin, RECORD,
                      HEAD_SIZE, len(loc), esc_at, len(esc), rec_at)  # fmt: skip
    return head + loc + esc + data


__all__ = [
    "ABSENT",
    "DELETED",
    "RECORD",
    "Reply",  # re-exported: assets, openapi and scanner import it from here
    "ResponseCache",
    "Slot",
    "etag_matches",  # re-exported, as Reply
    "kind",
    "location_of",
    "read",
]
