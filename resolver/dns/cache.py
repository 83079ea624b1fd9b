"""The DNS front's cache: encoded answers keyed by (owner name, type), kept fresh by sync.

Why not :class:`resolver.cache.ResponseCache`: that one is keyed by canonical
identifier, one store entry per slot. A DNS answer is keyed by the query's
name and type, and depends on several store entries: every prefix from the
root down (any of them can become a delegation elsewhere) and, for an
identifier, its own entry; many names (empty non-terminals, names under no
prefix, referrals) are no identifier at all. So this cache indexes each
answer by its *zone* (the prefix whose changes can alter it) and maps sync's
invalidation messages onto names and zones:

* ``P/S``: the identifier's own name, every type cached;
* ``P/*`` (a range mint, a revocation): every answer in zone ``P``;
* ``0.NA/P`` (a delegation made, changed or removed): every answer in zone
  ``P`` or below it, and in ``P``'s parent zone (its negative answers for
  names under ``P`` were computed when ``P`` did not exist);
* ``*``: everything.

The hot path is one dict lookup of ``name + type`` and a comparison with a
coarse clock (:attr:`now`, advanced by the server a few times a second); the
TTL is only a safety net behind the invalidations, jittered so a million
entries loaded together do not expire together. Bounded: the least recently
used answer goes first.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Iterable

from cityid.errors import IdentifierError
from cityid.identifiers import parse_identifier

from .answers import Encoded

_MAX_TYPES = 64  # distinct query types kept; rarer ones are answered uncached


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
        self.entries: OrderedDict[bytes, Encoded] = OrderedDict()
        self._zones: dict[str, set[bytes]] = {}
        self._types: set[bytes] = set()
        self._rand = random.Random()
        self.now = time.monotonic()
        self.seq = 0  # bumped by every invalidation: a lookup that raced one is not kept

    def __len__(self) -> int:
        return len(self.entries)

    def tick(self) -> None:
        self.now = time.monotonic()

    def get(self, key: bytes) -> Encoded | None:
        enc = self.entries.get(key)
        if enc is None or enc.expires <= self.now:
            return None
        self.entries.move_to_end(key)
        return enc

    def put(self, key: bytes, enc: Encoded) -> None:
        if self.size <= 0:
            return
        qtype = key[-2:]
        if any(0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A for b in qtype):
            # Keys are name + type lowered in one go (one allocation less on the hot
            # path); a type with an ASCII letter in it would alias another, so those
            # rare types (65-90, 97-122, ...) are answered uncached.
            return
        if qtype not in self._types:
            if len(self._types) >= _MAX_TYPES:
                return
            self._types.add(qtype)
        ttl = self.negative_ttl if enc.negative else self.ttl
        self.tick()
        enc.expires = self.now + ttl * (1.0 - self.jitter * self._rand.random())
        old = self.entries.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        self.entries[key] = enc
        zone = self._zones.get(enc.zone)
        if zone is None:
            zone = self._zones[enc.zone] = set()
        zone.add(key)
        while len(self.entries) > self.size:
            k, e = self.entries.popitem(last=False)
            self._unindex(k, e)

    def _unindex(self, key: bytes, enc: Encoded) -> None:
        zone = self._zones.get(enc.zone)
        if zone is not None:
            zone.discard(key)
            if not zone:
                del self._zones[enc.zone]

    def _drop(self, key: bytes) -> None:
        enc = self.entries.pop(key, None)
        if enc is not None:
            self._unindex(key, enc)

    def _drop_zone(self, zone: str) -> None:
        for key in self._zones.pop(zone, ()):
            self.entries.pop(key, None)

    def invalidate(self, idents: Iterable[str]) -> None:
        """Drop what sync's message says changed (see the module notes)."""
        for item in idents:
            if item == "*":
                self.clear()
            elif item.endswith("/*"):
                self._drop_zone(item[:-2])
            elif item.startswith("0.NA/"):
                p = item[5:]
                for z in [z for z in self._zones if z == p or z.startswith(p + ".")]:
                    self._drop_zone(z)
                self._drop_zone(p.rpartition(".")[0])
            else:
                name = self.name_of(item)
                if name is not None:
                    for qtype in self._types:
                        self._drop(name + qtype)
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
        self._zones.clear()
