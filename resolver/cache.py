"""The resolver's hot path: a bounded in-process cache of pre-encoded answers.

One *slot* per canonical identifier holds what the store said (an
:class:`~resolver.store.Entry`, or None for "not registered") and the answers
already encoded from it, one :class:`Reply` per representation (the redirect,
the JSON record, the HTML page). A hit is a dict lookup plus an LRU touch; the
reply is bytes ready for the socket, so the fast path does no encoding at all.

Freshness: sync publishes the identifiers it changes and :meth:`invalidate`
drops their slots (``P/*`` drops everything under ``P`` by retiring ``P``'s
generation, which costs O(1) however many slots it has; ``*`` drops all). The
TTL is only a safety net for a missed message, and is jittered so that a
million entries loaded together never expire together and stampede Redis.
Negative answers (404) get a short TTL. An expired slot is not thrown away:
if Redis is unreachable when it is refreshed, it is served stale rather than
failing (``stale`` in the metrics), which is how a degraded resolver keeps
answering what it knows.
"""

from __future__ import annotations

import random
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from http import HTTPStatus

from .store import Entry

#: Headers every answer carries: any web page may read them (CORS), and no
#: browser second-guesses the declared content type.
COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "ETag, Location"),
    ("X-Content-Type-Options", "nosniff"),
)


_KEEP_304 = {"cache-control", "etag", "vary", "expires"} | {k.lower() for k, _ in COMMON_HEADERS}


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, encoded once and written many times.

    ``wire`` is the status line and headers up to (not including) ``Date`` and
    the blank line, so the fast path writes ``wire + date + CRLF + body``;
    :meth:`wire_304` is the same for a matching ``If-None-Match``. The aiohttp path
    builds its response from ``status``, ``headers`` and ``body``.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    etag: str | None = None
    wire: bytes = b""
    expires: float | None = None  # monotonic time; None: as long as its slot

    def until(self, expires: float) -> Reply:
        return replace(self, expires=expires)

    @classmethod
    def make(
        cls, status: int, headers: Iterable[tuple[str, str]], body: bytes, etag: str | None = None
    ) -> Reply:
        hdrs = (*COMMON_HEADERS, *headers)
        if etag is not None:
            hdrs = (*hdrs, ("ETag", etag))
        wire = _head(status, (*hdrs, ("Content-Length", str(len(body)))))
        return cls(status, hdrs, body, etag, wire)

    def headers_304(self) -> list[tuple[str, str]]:
        """RFC 9110 §15.4.5: a 304 repeats the validators and caching headers (and CORS)."""
        return [(k, v) for k, v in self.headers if k.lower() in _KEEP_304]

    def wire_304(self) -> bytes:
        # Built on demand: 304s are rare next to the memory a million cached copies cost.
        return _head(304, self.headers_304())


def _head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n", "Server: cityid\r\n"]
    lines += [f"{k}: {v}\r\n" for k, v in headers]
    # Values are ours (URLs are checked records, free of CR/LF), never request echoes.
    return "".join(lines).encode("latin-1")


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison of ``If-None-Match`` against ``etag``."""
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in if_none_match.split(","))


class _Generation:
    """Every slot of one prefix points at its prefix's current generation;
    ``P/*`` retires it, which invalidates them all at once."""

    __slots__ = ("alive",)

    def __init__(self) -> None:
        self.alive = True


@dataclass(slots=True)
class Slot:
    entry: Entry | None  # None: not registered (a negative answer)
    expires: float
    generation: _Generation
    replies: dict[object, Reply] = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        return self.generation.alive and time.monotonic() < self.expires


class ResponseCache:
    """Bounded LRU of slots, keyed by canonical identifier (``PREFIX/SUFFIX``)."""

    def __init__(
        self,
        size: int = 100_000,
        *,
        ttl: float = 300.0,
        negative_ttl: float = 5.0,
        jitter: float = 0.2,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.jitter = jitter
        self._slots: OrderedDict[str, Slot] = OrderedDict()
        self._gens: dict[str, _Generation] = {}
        self._rand = random.Random()
        self.seq = 0  # bumped by every invalidation: a lookup racing one is not kept long

    def __len__(self) -> int:
        return len(self._slots)

    def get(self, key: str) -> Slot | None:
        """The slot for ``key``, fresh or expired (the caller decides), touched as recent."""
        slot = self._slots.get(key)
        if slot is not None:
            if not slot.generation.alive:
                # A range mint or a revocation covered it: nothing in it may be served.
                del self._slots[key]
                return None
            self._slots.move_to_end(key)
        return slot

    def put(self, key: str, entry: Entry | None) -> Slot:
        """Store what the store answered for ``key``; answers are encoded into it lazily."""
        ttl = self.ttl if entry is not None else self.negative_ttl
        # Expire somewhere in [ttl * (1 - jitter), ttl]: spread, never later than asked.
        expires = time.monotonic() + ttl * (1.0 - self.jitter * self._rand.random())
        prefix = key.partition("/")[0]
        gen = self._gens.get(prefix)
        if gen is None or not gen.alive:
            gen = self._gens[prefix] = _Generation()
        slot = Slot(entry, expires, gen)
        if self.size <= 0:
            return slot
        self._slots[key] = slot
        self._slots.move_to_end(key)
        while len(self._slots) > self.size:
            self._slots.popitem(last=False)
        return slot

    def invalidate(self, idents: Iterable[str]) -> None:
        """Drop what sync changed: ``P/S``, ``P/*`` (all of ``P``) or ``*`` (everything)."""
        for ident in idents:
            if ident == "*":
                self.clear()
            elif ident.endswith("/*"):
                gen = self._gens.pop(ident[:-2], None)
                if gen is not None:
                    gen.alive = False
            else:
                self._slots.pop(ident, None)
        self.seq += 1

    def clear(self) -> None:
        for gen in self._gens.values():
            gen.alive = False
        self._gens.clear()
        self._slots.clear()
