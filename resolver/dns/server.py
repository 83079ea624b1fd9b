"""The DNS front: UDP and TCP listeners around :mod:`resolver.dns.answers`.

The hot path (:meth:`_Udp.datagram_received`): read the 12-byte header and
the question by hand (:func:`parse_query`, no dnspython), look ``name + type``
up in the cache of pre-encoded answers, and send ``ID + flags + counts +
question + rest + OPT`` built from bytes already there. A plain query that
misses joins a batch (:meth:`DnsServer.miss`): the store is asked about every
prefix record and identifier the batch needs in one pipeline,
:func:`~resolver.dns.answers.decide` answers each, and each answer is encoded
once and cached. Anything else takes the slow path, a task: dnspython parses
what the hand parser would not (compressed questions, unknown EDNS versions,
TSIG, odd sections), then the same lookup.

Errors are mapped here, once: a packet too short for a header, or a response
(QR=1), gets nothing; another opcode NOTIMP; anything dnspython cannot parse
FORMERR; an EDNS version other than 0 BADVERS; TSIG NOTAUTH (no keys here);
a name outside the apex REFUSED; a store failure SERVFAIL (not cached).

UDP answers fit the client's EDNS payload size (512 without EDNS, at most
our ``max_udp``, 1232 by default, the DNS flag day 2020 value that avoids IP
fragmentation) or are sent empty with TC=1. TCP (RFC 7766): 2-byte length
framing, pipelined queries answered as they complete (out of order: clients
match by ID), a cap on queries in flight per connection (reading pauses), an
idle timeout, a cap on connections per process.

Processes: :func:`serve` starts N workers, each with its own UDP and TCP
sockets on the same port (SO_REUSEPORT), its own store connection and cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message

from cityid.errors import CityIdError, ListenError
from cityid.identifiers import split_minted
from cityid.keys import SigningKey, VerifierKey
from cityid.valkey import redact

from .. import stats, workers
from ..layout import StoreError
from ..store import Ask, Entry, Store
from .answers import (
    CH,
    CONFIG_SERIAL,
    FORMERR,
    IN,
    IXFR,
    MAX_MESSAGE,
    NOTAUTH,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Answer,
    Encoded,
    Lookup,
    ZoneConfig,
    badvers,
    decide,
    edns_do,
    empty,
    encode,
    header_reply,
    identity_answer,
    opt_record,
    plan,
    render,
    text_name,
)
from .cache import AnswerCache
from .dnssec import ZoneKey
from .rrl import SLIP, RateLimiter
from .signer import SIGNED_CACHE_TTL, Signer

log = logging.getLogger("cityid.resolver.dns")

DEFAULT_PORT = 5353
UDP_BUFFER = 4 << 20  # socket buffers: absorb bursts while the loop is busy
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_PLAIN = _ONE_QUESTION + b"\x00"  # ... and ARCOUNT below 256
MISS_BATCHES = 1  # batches of misses answered at once (see DnsServer.miss)
MISS_BATCH_MAX = 2048  # misses in one batch: more start another batch at once
_IN = b"\x00\x01"
_REFUSED = empty(REFUSED)
_SERVFAIL = empty(SERVFAIL)
_FORMERR = empty(FORMERR)
_SLIP = empty(0)

#: A query as both parsers give it: name + type lowered as one (the cache key: see
#: :meth:`AnswerCache.put` for why the type may be lowered too),
#: type, class, the question as the client sent it, EDNS payload (0: no EDNS,
#: else at least 512) and the DO bit.
Query = tuple[bytes, int, int, bytes, int, bool]


# -- parsing (pure) ---------------------------------------------------------------------------


def parse_query(data: bytes) -> Query | None:
    """A plain query read by hand, or None (let the slow path look at it).

    Plain: QR=0, opcode QUERY, TC=0, Z=0, RCODE=0; one question of class IN
    with an uncompressed name; no answer or authority records; at most one
    additional record, an EDNS version 0 OPT with well-formed options.
    """
    n = len(data)
    if n < 17 or data[2] & 0xFA or data[3] & 0x4F or data[4:10] != _ONE_QUESTION or data[10]:
        return None
    i = 12
    while True:
        if i >= n:
            return None
        ln = data[i]
        if ln == 0:
            break
        if ln > 63:
            return None  # a compression pointer or a reserved label type
        i += ln + 1
    if i > 266:  # the name is longer than 255 octets
        return None
    qend = i + 5
    if qend > n or data[i + 3 : qend] != _IN:
        return None
    ar = data[11]
    if ar == 0:
        if qend != n:
            return None
        payload, do = 0, False
    elif ar == 1:
        # OPT: root owner, type 41, class = payload, TTL = ext-rcode, version, flags.
        if qend + 11 > n or data[qend] or data[qend + 1 : qend + 3] != b"\x00\x29":
            return None
        if data[qend + 6]:
            return None  # a version we do not speak: BADVERS, on the slow path
        payload = max((data[qend + 3] << 8) | data[qend + 4], 512)
        do = bool(data[qend + 7] & 0x80)
        j = qend + 11
        if j + ((data[qend + 9] << 8) | data[qend + 10]) != n:
            return None
        while j < n:  # options: code, length, data
            if j + 4 > n:
                return None
            j += 4 + ((data[j + 2] << 8) | data[j + 3])
        if j != n:
            return None
    else:
        return None
    return data[12 : i + 3].lower(), (data[i + 1] << 8) | data[i + 2], IN, data[12:qend], \
        payload, do  # fmt: skip


def error_reply(data: bytes, max_udp: int, rcode: int) -> bytes:
    """A question-less error response; with our OPT if the query had one."""
    do = edns_do(data)
    return header_reply(data, rcode, b"" if do is None else opt_record(max_udp, do))


def parse_slow(data: bytes, max_udp: int) -> Query | bytes | None:
    """Whatever :func:`parse_query` declined: a query, an error reply, or None (no reply)."""
    if len(data) < 12 or data[2] & 0x80:
        return None  # no header to answer, or a response: never answer those (loops)

    if (data[2] >> 3) & 0x0F != 0:
        return error_reply(data, max_udp, NOTIMP)
    try:
        m = dns.message.from_wire(data)
    except dns.message.UnknownTSIGKey:
        return error_reply(data, max_udp, NOTAUTH)
    except Exception:  # dnspython raises many types for malformed input
        return error_reply(data, max_udp, FORMERR)
    # An IXFR query carries the client's SOA in authority (RFC 1995 §3): it is refused
    # (no zone transfers) like AXFR, not taken for a malformed query.
    ixfr = len(m.question) == 1 and m.question[0].rdtype == IXFR and not m.answer
    if len(m.question) != 1 or m.answer or (m.authority and not ixfr):
        return error_reply(data, max_udp, FORMERR)
    rrset = m.question[0]
    wire = rrset.name.to_wire()
    question = wire + struct.pack("!HH", rrset.rdtype, rrset.rdclass)
    do = bool(m.ednsflags & dns.flags.DO)
    if m.edns > 0:
        return badvers(data, question, max_udp, do)
    payload = max(m.payload, 512) if m.edns == 0 else 0
    key = (wire + struct.pack("!H", rrset.rdtype)).lower()
    return key, int(rrset.rdtype), int(rrset.rdclass), question, payload, do


# -- the server -------------------------------------------------------------------------------


@dataclass(slots=True)
class DnsOptions:
    max_udp: int = 1232  # our EDNS UDP payload size
    cache_size: int = 200_000  # answers per process
    cache_ttl: float = 3600.0  # a safety net: sync's invalidations keep answers fresh
    negative_cache_ttl: float = 60.0
    prefix_ttl: float = 60.0  # prefix records kept per process (also invalidated)
    rrl_rate: float = 20.0  # responses per second per client network; 0 = off
    rrl_slip: int = 2
    rrl_burst: float | None = None
    tcp_idle: float = 10.0  # seconds a TCP connection may sit idle
    tcp_max_connections: int = 1000  # per process
    tcp_max_inflight: int = 64  # pipelined queries in progress per connection
    max_pending: int = 10_000  # UDP queries waiting on the store; more are dropped


class DnsServer:
    """One process's DNS answers: cache, store, RRL; the listeners call into it."""

    def __init__(
        self,
        store: Store,
        cfg: ZoneConfig,
        options: DnsOptions | None = None,
        signer: Signer | None = None,
    ) -> None:
        if cfg.key != (signer.zone_key if signer is not None else None):
            # Publishing a DNSKEY without signing (or signing under another) is bogus.
            raise CityIdError("the zone's DNSSEC key is not the signer's", rule="usage")
        self.store = store
        self.cfg = cfg
        self.signer = signer
        self.options = options = options or DnsOptions()
        if not 512 <= options.max_udp <= 65535:
            raise CityIdError("max_udp must be 512..65535", rule="usage")
        self.max_udp = options.max_udp
        self.cache = AnswerCache(
            cfg.apex_wire,
            options.cache_size,
            ttl=options.cache_ttl,
            negative_ttl=options.negative_cache_ttl,
        )
        # Signed answers (DO) beside the unsigned, kept at most SIGNED_CACHE_TTL: their
        # signatures are made again well before they expire. Without a key, DO queries
        # get the unsigned answers, as before.
        self.caches = (self.cache, self.cache)
        if signer is not None:
            signed = AnswerCache(
                cfg.apex_wire,
                options.cache_size,
                ttl=min(options.cache_ttl, SIGNED_CACHE_TTL),
                negative_ttl=options.negative_cache_ttl,
            )
            self.caches = (self.cache, signed)
        self.rrl = (
            RateLimiter(options.rrl_rate, slip=options.rrl_slip, burst=options.rrl_burst)
            if options.rrl_rate > 0
            else None
        )
        self.opt = (opt_record(self.max_udp, False), opt_record(self.max_udp, True))
        self._prefixes: dict[str, tuple[float, Entry | None]] = {}
        self._inflight: dict[tuple[bytes, bool], asyncio.Future[Encoded]] = {}
        self._misses: list[tuple[bytes, Query, Any, _Udp]] = []
        self._miss_tasks = 0  # batches of misses being answered
        self._flushing = False  # a flush of self._misses is scheduled
        self._said = 0.0  # when a SERVFAIL was last logged
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.tcp_connections = 0
        self.udp: list[_Udp] = []  # the listeners count their own queries (hot path)
        # "queries" counts every query; "misses" those the store was asked about.
        self.counters: dict[str, int] = dict.fromkeys(
            ("queries", "misses", "servfail", "truncated", "tcp_refused", "overload_dropped"), 0
        )

    # -- life ------------------------------------------------------------------------------

    def start(self) -> None:
        """Follow sync's invalidations, keep the cache clock moving, publish counters."""
        self.store.subscribe(self._invalidate)
        self._tick()
        self.spawn(stats.publish(self.store.redis, "dns", self.process_metrics))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        # Kept: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _tick(self) -> None:
        self.cache.tick()
        self.caches[1].now = self.cache.now
        self._ticker = self.loop.call_later(0.1, self._tick)

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def metrics(self) -> dict[str, int]:
        out = dict(self.counters)
        out["queries"] += sum(p.queries for p in self.udp)
        out["cache_entries"] = len(self.cache)
        if self.signer is not None:
            out["signed_cache_entries"] = len(self.caches[1])
            out["signatures"] = self.signer.signatures
        if self.rrl is not None:
            out["rrl_dropped"] = self.rrl.dropped
            out["rrl_slipped"] = self.rrl.slipped
        return out

    def process_metrics(self) -> dict[str, int]:
        """:meth:`metrics` named as Prometheus wants: counters end in ``_total``."""
        gauges = ("cache_entries", "signed_cache_entries")
        return {(k if k in gauges else f"{k}_total"): v for k, v in self.metrics().items()}

    def _invalidate(self, idents: list[str]) -> None:
        self.cache.invalidate(idents)
        if self.caches[1] is not self.cache:
            self.caches[1].invalidate(idents)
        for item in idents:
            if item == "*":
                self._prefixes.clear()
            elif item.endswith("/*"):
                self._prefixes.pop(item[:-2], None)
            elif item.startswith("0.NA/"):
                self._prefixes.pop(item[5:], None)

    # -- answering ---------------------------------------------------------------------------

    async def respond(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        """The reply to one message (or None: no reply). The whole path, for any input."""
        try:
            q = parse_query(data) or parse_slow(data, self.max_udp)
            if q is None or isinstance(q, bytes):
                return q
            return await self.answer(data, q, tcp)
        except Exception:
            # A bug must not take the listener down; the client gets SERVFAIL.
            log.exception("DNS query failed")
            self.counters["servfail"] += 1
            if len(data) < 12 or data[2] & 0x80:
                return None
            return error_reply(data, self.max_udp, SERVFAIL)

    async def answer(self, data: bytes, q: Query, tcp: bool) -> bytes:
        key, qtype, qclass, question, payload, do = q
        enc = await self.lookup(key, qtype, qclass, do)
        opt = self.opt[do] if payload else b""
        limit = MAX_MESSAGE if tcp else (min(payload, self.max_udp) if payload else 512)
        return render(enc.heads, enc.rest, data, question, opt, limit)

    async def lookup(self, key: bytes, qtype: int, qclass: int, do: bool = False) -> Encoded:
        """The encoded answer for ``key`` (lower-case wire name + type); ``do``: signed."""
        if qclass != IN:
            if qclass == CH:
                name = key[:-2]
                return encode(name, identity_answer(name, qtype, self.cfg), CH)
            return _REFUSED
        hit = self.caches[do].get(key)
        if hit is not None:
            return Encoded(hit[0].heads, hit[1])
        pending = self._inflight.get((key, do))
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Encoded] = self.loop.create_future()
        self._inflight[key, do] = fut
        try:
            enc = (await self.compute([(key, qtype, do)]))[key, do]
            fut.set_result(enc)
            return enc
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()  # retrieved: waiters get it, nobody else needs a warning
            raise
        finally:
            del self._inflight[key, do]

    # -- the miss path: misses in batches, one round trip per batch ---------------------

    def miss(self, data: bytes, q: Query, addr: Any, udp: _Udp) -> None:
        """Answer the plain query ``q`` (not in the cache) with other misses, in a batch.

        Batches adapt to the load: at most :data:`MISS_BATCHES` are being answered at
        once; misses that arrive meanwhile wait for it to finish and go together, so
        under load one round trip, one task and the syscalls around them serve a
        hundred misses or more, and an idle server still answers a lone miss at once.
        (Measured with one batch against two: bigger batches, 10% less CPU per miss and
        lower latency; see docs/dns.md.)
        """
        misses = self._misses
        if len(misses) >= self.options.max_pending:
            self.counters["overload_dropped"] += 1  # the store is not keeping up: shed
            return
        misses.append((data, q, addr, udp))
        if not self._flushing and (
            self._miss_tasks < MISS_BATCHES or len(misses) >= MISS_BATCH_MAX
        ):
            self._flushing = True
            self.loop.call_soon(self._flush_misses)

    def _flush_misses(self) -> None:
        self._flushing = False
        misses = self._misses
        if not misses:
            return
        batch, self._misses = misses[:MISS_BATCH_MAX], misses[MISS_BATCH_MAX:]
        self._miss_tasks += 1
        self.spawn(self._answer_misses(batch))

    async def _answer_misses(self, batch: list[tuple[bytes, Query, Any, _Udp]]) -> None:
        try:
            encoded = await self.compute([(q[0], q[1], q[5]) for _, q, _, _ in batch])
        except Exception:
            log.exception("DNS queries failed")  # a bug: SERVFAIL, and the listener lives
            encoded = dict.fromkeys(((q[0], q[5]) for _, q, _, _ in batch), _SERVFAIL)
        finally:
            self._miss_tasks -= 1
            if self._misses and not self._flushing:
                self._flushing = True
                self.loop.call_soon(self._flush_misses)  # those that waited for this one
        opts, max_udp = self.opt, self.max_udp
        for data, (key, _, _, question, payload, do), addr, udp in batch:
            limit = (max_udp if payload > max_udp else payload) if payload else 512
            enc = encoded[key, do]
            udp.send(render(enc.heads, enc.rest, data, question, opts[do] if payload else b"",
                            limit), addr)  # fmt: skip

    async def compute(
        self, queries: Sequence[tuple[bytes, int, bool]]
    ) -> dict[tuple[bytes, bool], Encoded]:
        """The encoded answers of ``queries`` (key, type, DO), class IN: every lookup they
        need in one round trip, the answers cached (signed ones apart). A store failure
        is SERVFAIL (not cached)."""
        cache, cfg = self.cache, self.cfg
        seq = cache.seq
        serial = CONFIG_SERIAL
        now = cache.now
        prefixes = self._prefixes
        plans: dict[bytes, tuple[int, Answer | Lookup]] = {}
        wanted: set[tuple[bytes, bool]] = set()
        # What the lookups need: prefix records not known here, and identifiers. Prefix
        # asks are indexed by the prefix's text, identifiers by PREFIX/SUFFIX: disjoint.
        asks: list[Ask] = []
        where: dict[str, int] = {}
        known: dict[str, Entry | None] = {}  # prefix records this process holds, as now
        signer = self.signer
        for key, qtype, do in queries:
            wanted.add((key, do and signer is not None))
            if key in plans:
                continue
            step = plan(key[:-2], qtype, cfg, serial)
            plans[key] = (qtype, step)
            if type(step) is not Lookup:
                continue
            for p in step.prefixes:
                if p in known or p in where:
                    continue
                hit = prefixes.get(p)
                if hit is not None and hit[0] > now:
                    known[p] = hit[1]
                else:
                    where[p] = len(asks)
                    asks.append(Ask(p, f"0.NA/{p}", None, None))  # as ask_prefix makes it
            ident = step.ident
            if ident is not None and ident not in where:
                where[ident] = len(asks)
                # As ask_id makes it, from text (no Identifier to build and check again).
                suffix = step.suffix
                asks.append(Ask(step.parent, ident, suffix, split_minted(suffix)))  # type: ignore[arg-type]
        self.counters["misses"] += len(plans)
        got: list[Any] = []
        failed: StoreError | None = None
        trips = self.store.counters.get("round_trips_total", 0)
        if asks:
            try:
                got = await self.store.fetch(asks)
            except StoreError as e:
                failed = e
        # A negative answer learnt without a round trip (the name is under no root, or
        # the store's membership filter ruled it out) costs less to compute again than
        # it would cost to keep: a flood of random names must not evict the cache.
        keep_negative = self.store.counters.get("round_trips_total", 0) != trips
        if failed is None and asks and cache.seq == seq:
            # No invalidation raced the lookup: keep the prefix records for a while.
            if len(prefixes) >= 100_000:
                prefixes.clear()
            until = cache.now + self.options.prefix_ttl
            for a, e in zip(asks, got, strict=True):
                if a.suffix is None and not isinstance(e, StoreError):
                    prefixes[a.prefix] = (until, e)
        out: dict[tuple[bytes, bool], Encoded] = {}
        keep = cache.seq == seq
        for key, (qtype, step) in plans.items():
            if type(step) is Lookup:
                try:
                    if failed is not None:
                        raise failed
                    ans = self._decide(step, qtype, serial, got, where, known)
                except StoreError as e:
                    out[key, False] = out[key, True] = self._servfail(key, e)
                    continue
            else:
                ans = step  # type: ignore[assignment]
            store = ans.cache and keep and (keep_negative or not ans.negative)
            for signed in (False, True):
                if (key, signed) not in wanted:
                    continue
                if signed:
                    assert signer is not None
                    enc = encode(key[:-2], signer.sign(key[:-2], ans, qtype))
                else:
                    enc = encode(key[:-2], ans)
                out[key, signed] = enc
                if store:
                    self.caches[signed].put(key, enc)
        if signer is None:  # DO queries get the unsigned answers
            for key, do in list(out):
                out[key, True] = out[key, do]
        return out

    def _decide(
        self,
        step: Lookup,
        qtype: int,
        serial: int,
        got: list[Any],
        where: dict[str, int],
        known: dict[str, Entry | None],
    ) -> Answer:
        entries: list[Entry | None] = []
        for p in step.prefixes:
            i = where.get(p)
            e = known[p] if i is None else got[i]
            if isinstance(e, StoreError):
                raise e
            entries.append(e)
        ident: Entry | None = None
        if step.ident is not None:
            e = got[where[step.ident]]
            if isinstance(e, StoreError):
                raise e
            ident = e
        return decide(step, qtype, entries, ident, self.cfg, serial)

    def _servfail(self, key: bytes, e: StoreError) -> Encoded:
        self.counters["servfail"] += 1
        t = time.monotonic()
        if t - self._said > 10:  # one line every ten seconds, not one per query
            self._said = t
            log.warning("SERVFAIL for %s: %s [rule: %s]", text_name(key[:-2]), e.message, e.rule)
        return _SERVFAIL


# -- listeners --------------------------------------------------------------------------------


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, srv: DnsServer) -> None:
        self.srv = srv
        self.cache = srv.cache
        self.entries = srv.cache.entries
        self.by_do = (srv.caches[0].entries, srv.caches[1].entries)
        self.counters = srv.counters
        self.rrl = srv.rrl
        self.max_udp = srv.max_udp
        self.opts = srv.opt
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None
        srv.udp.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UDP_BUFFER)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The hot path. A cached key is a well-formed name + type, so a query
        # whose question bytes match one (ignoring case) needs no label walk:
        # only the header and, if present, a bare OPT at the very end are
        # checked. Anything else, and every miss, goes to the slow path. Each
        # slice here is an allocation, and they are most of the cost: keep few.
        n = len(data)
        if n < 12 or data[2] & 0x80:
            return  # nothing to answer, or a response (answering those makes loops)
        self.queries += 1
        if self.rrl is not None:
            verdict = self.rrl.check(addr[0])
            if verdict:
                if verdict == SLIP:
                    self._slip(data, addr)
                return
        if n >= 17 and not data[2] & 0xFA and not data[3] & 0x4F and data.startswith(_PLAIN, 4):
            ar = data[11]
            if ar == 0:
                qend, opt, limit, entries = n, b"", 512, self.entries
            elif (
                ar == 1
                and n >= 28
                and data.startswith(b"\x00\x00\x29", n - 11)
                and data.endswith(b"\x00\x00")
                and not data[n - 5]
            ):
                qend = n - 11
                limit = (data[n - 8] << 8) | data[n - 7]
                limit = 512 if limit < 512 else self.max_udp if limit > self.max_udp else limit
                do = data[n - 4] >> 7
                opt = self.opts[do]
                entries = self.by_do[do]
            else:
                qend = 0
            if qend and data.startswith(_IN, qend - 2):
                hit = entries.get(data[12 : qend - 2].lower())
                if hit is not None:
                    stamp, rest = hit
                    if stamp.expires > self.cache.now:
                        i = (data[2] & 0x01) | ((data[3] >> 3) & 0x02) | (4 if opt else 0)
                        question = data[12:qend]
                        if 12 + len(rest) + len(question) + len(opt) <= limit:
                            out = b"".join((data[:2], stamp.heads[i], question, rest, opt))
                        else:
                            out = b"".join((data[:2], stamp.heads[i + 8], question, opt))
                        self.transport.sendto(out, addr)  # type: ignore[union-attr]
                        return
        srv = self.srv
        q = parse_query(data)
        if q is not None:
            srv.miss(data, q, addr, self)  # answered with this pass's other misses
            return
        if len(srv._tasks) >= srv.options.max_pending:
            self.counters["overload_dropped"] += 1  # the store is not keeping up: shed
            return
        srv.spawn(self._slow(data, addr))

    def send(self, out: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if out[2] & 0x02:
                self.counters["truncated"] += 1
            self.transport.sendto(out, addr)

    def _slip(self, data: bytes, addr: Any) -> None:
        # An empty TC answer: no bigger than the query, so nothing to amplify.
        q = parse_query(data)
        if q is not None:
            out = render(_SLIP.heads, b"", data, q[3], self.opts[q[5]] if q[4] else b"", 0)
        else:
            out = data[:2] + bytes((0x82 | (data[2] & 0x79), 0)) + bytes(8)
        self.transport.sendto(out, addr)  # type: ignore[union-attr]

    async def _slow(self, data: bytes, addr: Any) -> None:
        out = await self.srv.respond(data)
        if out is not None and self.transport is not None and not self.transport.is_closing():
            if out[2] & 0x02:
                self.counters["truncated"] += 1
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP unreachable from a client that went away: nothing to do


class _Tcp(asyncio.Protocol):
    """One TCP connection (RFC 7766): framed, pipelined, answered as ready."""

    __slots__ = ("_blocked", "_buf", "_closed", "_inflight", "_last", "_reading", "_timer",
                 "srv", "transport")  # fmt: skip

    def __init__(self, srv: DnsServer) -> None:
        self.srv = srv
        self.transport: asyncio.Transport | None = None
        self._buf = b""
        self._inflight = 0
        self._blocked = False  # the client is not reading our answers
        self._reading = True
        self._closed = True
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        srv = self.srv
        if srv.tcp_connections >= srv.options.tcp_max_connections:
            srv.counters["tcp_refused"] += 1
            transport.abort()
            return
        self.transport = transport  # type: ignore[assignment]
        self._closed = False
        srv.tcp_connections += 1
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._timer = loop.call_later(srv.options.tcp_idle, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_counted()
        if self._timer is not None:
            self._timer.cancel()

    def _close_counted(self) -> None:
        if not self._closed:
            self._closed = True
            self.srv.tcp_connections -= 1

    def _check_idle(self) -> None:
        # Idle means no complete query and no answer for tcp_idle seconds: a client
        # trickling a byte at a time (slowloris) is idle too.
        if self._closed or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        idle = self.srv.options.tcp_idle
        if self._inflight == 0 and loop.time() - self._last >= idle:
            self.transport.close()
            self._close_counted()
            return
        self._timer = loop.call_later(max(0.05, self._last + idle - loop.time()), self._check_idle)

    def pause_writing(self) -> None:
        self._blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._blocked = False
        self._update_reading()

    def _update_reading(self) -> None:
        # Read no more queries while answers pile up: too many in progress, or
        # a client that does not read what we write.
        want = not self._blocked and self._inflight < self.srv.options.tcp_max_inflight
        if want != self._reading and not self._closed and self.transport is not None:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            size = (buf[pos] << 8) | buf[pos + 1]
            if end - pos - 2 < size:
                break
            self._message(buf[pos + 2 : pos + 2 + size])
            pos += 2 + size
            if self._closed:
                return
        self._buf = buf[pos:]

    def _message(self, msg: bytes) -> None:
        srv = self.srv
        self._last = asyncio.get_running_loop().time()
        if len(msg) < 12:
            # No header to answer: the stream is out of step; close it (RFC 7766 §6.2.4).
            self.transport.close()  # type: ignore[union-attr]
            self._close_counted()
            return
        if msg[2] & 0x80:
            return
        srv.counters["queries"] += 1
        q = parse_query(msg)
        if q is not None:
            hit = srv.caches[q[5]].get(q[0])
            if hit is not None:
                opt = srv.opt[q[5]] if q[4] else b""
                out = render(hit[0].heads, hit[1], msg, q[3], opt, MAX_MESSAGE)
                self._write(out)
                return
        self._inflight += 1
        self._update_reading()
        srv.spawn(self._slow(msg))

    async def _slow(self, msg: bytes) -> None:
        try:
            out = await self.srv.respond(msg, tcp=True)
        finally:
            self._inflight -= 1
            self._last = asyncio.get_running_loop().time()
        if out is not None:
            self._write(out)
        self._update_reading()

    def _write(self, out: bytes) -> None:
        if not self._closed and self.transport is not None:
            self.transport.write(len(out).to_bytes(2, "big") + out)


@dataclass(slots=True)
class Listeners:
    """The sockets of one process; :meth:`close` stops them."""

    server: DnsServer
    udp: asyncio.DatagramTransport
    tcp: asyncio.AbstractServer
    port: int

    async def close(self) -> None:
        self.udp.close()
        self.tcp.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.tcp.wait_closed(), 2.0)
        await self.server.close()


def bind_sockets(host: str, port: int, *, reuse_port: bool) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to ``host:port`` (the same port for both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):  # port 0: find one free for both protocols
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for s in (udp, tcp):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            udp.bind((host, port))
            tcp.bind((host, udp.getsockname()[1]))
        except OSError as e:
            udp.close()
            tcp.close()
            if port == 0:
                continue
            raise ListenError(f"{host}:{port}", e.strerror or str(e)) from e
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise CityIdError(f"no free port on {host} for both UDP and TCP", rule="listen")


async def start_dns(
    server: DnsServer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    reuse_port: bool = False,
) -> Listeners:
    """Serve ``server`` over UDP and TCP on ``host:port`` in the running loop."""
    loop = asyncio.get_running_loop()
    udp_sock, tcp_sock = bind_sockets(host, port, reuse_port=reuse_port)
    server.start()
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(server), sock=udp_sock)
    tcp_sock.listen(1024)
    tcp = await loop.create_server(lambda: _Tcp(server), sock=tcp_sock)
    return Listeners(server, udp, tcp, int(udp_sock.getsockname()[1]))


# -- worker processes ---------------------------------------------------------------------------


@dataclass(slots=True)
class DnsSpec:
    """Everything a worker needs, picklable (workers are spawned)."""

    redis_url: str
    apex: str
    roots: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    nameservers: tuple[str, ...] = ()
    ttl: int = 300
    negative_ttl: int = 60
    identity: str = "{hostname}/{index}"  # CH TXT id.server; "" refuses it
    dnssec_key: str = ""  # the signing key file (cityid.keys format, 0600); "" = unsigned
    dnssec_next_keys: tuple[str, ...] = ()  # verifier keys published beside it (a roll)
    options: DnsOptions = field(default_factory=DnsOptions)
    processes: int = 1
    index: int = 0
    redis_cluster: bool = False
    redis_timeout: float = 2.0
    meta_ttl: float = 1.0

    def signer(self) -> Signer | None:
        return Signer(SigningKey.read(self.dnssec_key)) if self.dnssec_key else None

    def zone(self, signer: Signer | None = None) -> ZoneConfig:
        identity = self.identity.format(hostname=socket.gethostname(), index=self.index)
        key = signer.zone_key if signer is not None else None
        return ZoneConfig.make(self.apex, self.roots, self.nameservers, ttl=self.ttl,
                               negative_ttl=self.negative_ttl, identity=identity, key=key,
                               next_keys=[ZoneKey(VerifierKey.parse(k).public_key)
                                          for k in self.dnssec_next_keys])  # fmt: skip


async def run_worker(spec: DnsSpec, stop: asyncio.Event | None = None) -> None:
    """One serving process: connect, listen (SO_REUSEPORT), serve until SIGTERM/SIGINT."""
    from ..server import keep_gc_young

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await Store.connect(spec.redis_url, cluster=spec.redis_cluster,
                                meta_ttl=spec.meta_ttl, timeout=spec.redis_timeout)  # fmt: skip
    try:
        signer = spec.signer()
        server = DnsServer(store, spec.zone(signer), spec.options, signer)
        listeners = await start_dns(server, spec.host, spec.port, reuse_port=True)
        tasks = [loop.create_task(keep_gc_young()), loop.create_task(_watch_parent(stop))]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await listeners.close()
    finally:
        await store.close()


async def _watch_parent(stop: asyncio.Event) -> None:
    """Stop when the supervisor is gone (killed before it could stop us)."""
    parent = os.getppid()
    while not stop.is_set():
        await asyncio.sleep(1.0)
        if os.getppid() != parent:
            log.warning("the supervisor (pid %d) is gone; stopping", parent)
            stop.set()


def _worker_entry(spec: DnsSpec) -> None:
    workers.worker_main(lambda: run_worker(spec))


def _answers(host: str, port: int, timeout: float) -> bool:
    probe = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01"  # . SOA
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                s.sendto(probe, (host, port))
                if s.recv(512)[:2] == probe[:2]:
                    return True
            time.sleep(0.05)
    return False


def serve(spec: DnsSpec) -> None:
    """Run ``spec.processes`` workers until SIGTERM/SIGINT, restarting any that dies."""
    if spec.port == 0:
        # Every worker must bind the same port: pick one now. (The supervisor must
        # not hold a UDP socket on it: the kernel would hand it a share of queries.)
        udp, tcp = bind_sockets(spec.host, 0, reuse_port=True)
        spec = dataclasses.replace(spec, port=int(udp.getsockname()[1]))
        udp.close()
        tcp.close()

    def ready() -> None:
        if _answers(spec.host, spec.port, 30.0):
            print(
                f"resolver dns: {spec.host}:{spec.port} (UDP and TCP) for {spec.apex}, roots "
                f"{', '.join(spec.roots)}, {spec.processes} process(es), "
                f"Redis {redact(spec.redis_url)}",
                file=sys.stderr,
                flush=True,
            )

    spawn = workers.spawner(
        _worker_entry, "cityid-dns", lambda i: dataclasses.replace(spec, index=i)
    )
    workers.run("resolver dns", spec.processes, spawn, ready=ready, grace=10.0)


__all__ = [
    "DEFAULT_PORT",
    "DnsOptions",
    "DnsServer",
    "DnsSpec",
    "Listeners",
    "bind_sockets",
    "parse_query",
    "parse_slow",
    "run_worker",
    "serve",
    "start_dns",
]
