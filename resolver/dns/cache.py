"""The DNS front's cache: encoded answers keyed by (owner name, type), kept fresh by sync.

Why not :class:`resolver.cache.ResponseCache`: that one is keyed by canonical
identifier, one store entry per slot. A DNS answer is keyed by the query's
name and type, and depends on several store entries: every prefix from the
root down (any of them can become a delegation elsewhere) and, for an
identifier, its own entry; many names (empty non-terminals, names under no
prefix, referrals) are no identifier at all. So each answer belongs to a
*zone* (the prefix whose changes can alter it), and sync's invalidation
messages map onto names and zones:

* ``P/S``: the identifier's own name, every type cached;
* ``P/*`` (a range mint, a revocation): every answer in zone ``P``;
* ``P/+`` (new identifiers under ``P``): the negative answers in zone ``P``;
* ``0.NA/P`` (a delegation made, changed or removed): every answer in zone
  ``P`` or below it, and in ``P``'s parent zone (its negative answers for
  names under ``P`` were computed when ``P`` did not exist);
* ``*``: everything.

Memory is the design constraint (a worker may cache millions of answers): an
entry is one tuple ``(stamp, rest)`` in one plain dict, where ``rest`` is the
encoded answer after the question and the :class:`Stamp` is shared by every
answer of one zone, one header shape and one second. The stamp carries the
header templates and the expiry time, so a zone is invalidated by zeroing the
expiry of its few stamps (a generation, in effect), not by walking per-zone
key sets. The hot path is one dict lookup of ``name + type`` and a comparison
of the stamp's expiry with a coarse clock (:attr:`now`, advanced by the server
a few times a second). The TTL is only a safety net behind the invalidations,
drawn per stamp (so a million entries loaded together do not expire together).

Bounded, first in, first out: when full, the oldest-inserted answers go, a
batch at a time. An LRU would need a write per hit (the hot path does none);
under a uniform long tail the two keep the same answers, and a hot name that
was evicted costs one miss before it is back.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterable

from cityid.errors import IdentifierError
from cityid.identifiers import parse_identifier

from .answers import Encoded

_MAX_TYPES = 64  # distinct query types kept; rarer ones are answered uncached
SLICE = 1.0  # seconds during which new answers of one zone and shape share a stamp


class Stamp:
    """What the cached answers of one zone, header shape and second share."""

    __slots__ = ("expires", "heads", "negative")

    def __init__(self, expires: float, heads: tuple[bytes, ...], negative: bool) -> None:
        self.expires = expires  # monotonic seconds; 0 once invalidated
        self.heads = heads  # see Encoded.heads
        self.negative = negative


#: A cached answer: its stamp and the encoded bytes after the question.
Cached = tuple[Stamp, bytes]


class AnswerCache:
    def __init__(
        self,
        apex_wire: bytes,
        size: int = 200_000,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 60.0,
        jitter: float = 0.2,
    ) -> None:
        self.apex_wire = apex_wire
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.jitter = jitter
        self.entries: dict[bytes, Cached] = {}
        self._stamps: dict[str, list[Stamp]] = {}  # zone -> its stamps that may be live
        self._current: dict[tuple[str, bool, int], Stamp] = {}  # this slice's, by shape
        self._slice_end = 0.0
        self._slices = 0
        self._types: set[bytes] = set()
        self._rand = random.Random()
        self.now = time.monotonic()
        self.seq = 0  # bumped by every invalidation: a lookup that raced one is not kept

    def __len__(self) -> int:
        return len(self.entries)

    def tick(self) -> None:
        self.now = time.monotonic()

    def get(self, key: bytes) -> Cached | None:
        e = self.entries.get(key)
        if e is None or e[0].expires <= self.now:
            return None
        return e

    def put(self, key: bytes, enc: Encoded) -> None:
        if self.size <= 0:
            return
        qtype = key[-2:]
        if qtype not in self._types:
            if any(0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in qtype):
                # Keys are name + type lowered in one go (one allocation less on the hot
                # path); a type with an ASCII letter in it would alias another, so those
                # rare types (65-90, 97-122, ...) are answered uncached.
                return
            if len(self._types) >= _MAX_TYPES:
                return
            self._types.add(qtype)
        now = self.now  # the coarse clock: stamps need no finer one
        if now >= self._slice_end:
            self._next_slice(now)
        stamp = self._current.get((enc.zone, enc.negative, id(enc.heads)))
        if stamp is None:
            stamp = self._stamp(enc, now)
        entries = self.entries
        if key in entries:
            del entries[key]  # inserted again at the end: the last to be evicted
        entries[key] = (stamp, enc.rest)
        if len(entries) > self.size:
            self._evict()

    def _stamp(self, enc: Encoded, now: float) -> Stamp:
        ttl = self.negative_ttl if enc.negative else self.ttl
        stamp = Stamp(now + ttl * (1.0 - self.jitter * self._rand.random()), enc.heads,
                      enc.negative)  # fmt: skip
        # The key holds id(heads): the stamp keeps that tuple alive, so the id stays its own.
        self._current[(enc.zone, enc.negative, id(enc.heads))] = stamp
        zone = self._stamps.get(enc.zone)
        if zone is None:
            zone = self._stamps[enc.zone] = []
        zone.append(stamp)
        if len(zone) >= 64 and len(zone) & (len(zone) - 1) == 0:  # at 64, 128, 256...
            zone[:] = [s for s in zone if s.expires > now]
        return stamp

    def _next_slice(self, now: float) -> None:
        self._current.clear()
        self._slice_end = now + SLICE
        self._slices += 1
        if self._slices % 60 == 0:  # once a minute, forget the stamps of expired answers
            for zone in list(self._stamps):
                live = [s for s in self._stamps[zone] if s.expires > now]
                if live:
                    self._stamps[zone] = live
                else:
                    del self._stamps[zone]

    def _evict(self) -> None:
        # The oldest first, a batch at a time: a plain dict keeps insertion order, and
        # each walk from its start skips the slots freed before (until the dict resizes).
        entries = self.entries
        n = len(entries) - self.size + max(1, self.size // 64)
        for key in list(itertools.islice(entries, n)):
            del entries[key]

    def _expire_zone(self, zone: str, negative_only: bool = False) -> None:
        stamps = self._stamps.get(zone)
        if stamps is None:
            return
        keep = []
        for s in stamps:
            if negative_only and not s.negative:
                keep.append(s)
            else:
                s.expires = 0.0
        if keep:
            self._stamps[zone] = keep
        else:
            del self._stamps[zone]

    def invalidate(self, idents: Iterable[str]) -> None:
        """Drop what sync's message says changed (see the module notes)."""
        for item in idents:
            if item == "*":
                self.clear()
            elif item.endswith("/*"):
                self._expire_zone(item[:-2])
            elif item.endswith("/+"):
                self._expire_zone(item[:-2], negative_only=True)
            elif item.startswith("0.NA/"):
                p = item[5:]
                for z in [z for z in self._stamps if z == p or z.startswith(p + ".")]:
                    self._expire_zone(z)
                self._expire_zone(p.rpartition(".")[0])
            else:
                name = self.name_of(item)
                if name is not None:
                    for qtype in self._types:
                        self.entries.pop(name + qtype, None)
        self._current.clear()  # answers put from now on get stamps of their own
        self.seq += 1

    def name_of(self, ident: str) -> bytes | None:
        """The lower-case wire name of ``PREFIX/SUFFIX`` under our apex."""
        try:
            i = parse_identifier(ident)
        except IdentifierError:
            return None
        labels = (i.suffix.lower(), *(n.lower() for n in reversed(i.prefix.nodes)))
        return b"".join(bytes((len(x),)) + x.encode() for x in labels) + self.apex_wire

    def clear(self) -> None:
        self.entries.clear()
        self._stamps.clear()
        self._current.clear()
