"""Fuzzing the DNS front: 100,000+ random and mutated packets, no crash, only valid replies.

Packets go to the handler (:meth:`DnsServer.respond`, the whole path a UDP or
TCP message takes) in batches on the server's own loop, and a sample goes over
the real UDP socket. Every reply must be nothing or a DNS message dnspython
parses, with the query's ID and QR set, no larger than the UDP limit the query
allows; and the server must log no unhandled exception. The generator is a
seeded mutator over valid queries (bit flips, byte changes, truncation,
splices, compression pointers, header fields, EDNS options) plus random
bytes, and hypothesis adds structured queries and raw binaries.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections.abc import Iterator

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_dns import APEX, BIG, CITY, DELEGATED, DEPT, MEDIUM, W127, DnsHarness, name

from cityid.keys import SigningKey
from resolver.dns.server import DnsServer, parse_query
from resolver.dns.signer import Signer

TOTAL = 100_000
SOCKET_SAMPLE = 3_000
BATCH = 1_000
SEED = 20_240_601
QTYPES = ["TXT", "URI", "NAPTR", "SOA", "NS", "A", "AAAA", "ANY", "DS", "AXFR", "MX", "CNAME"]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module", params=["unsigned", "signed"])
def fuzzsrv(
    valkey_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[DnsHarness, _Errors]]:
    """The server, unsigned and then signing with DNSSEC (its queries then carry DO)."""
    client = redis.Redis.from_url(valkey_url)
    client.flushdb()
    errors = _Errors()
    logger = logging.getLogger("cityid.resolver")
    logger.addHandler(errors)
    try:
        signer = Signer(SigningKey.generate("fuzz")) if request.param == "signed" else None
        with DnsHarness(valkey_url, signer=signer) as h:
            yield h, errors
    finally:
        logger.removeHandler(errors)
        client.flushdb()
        client.close()


def seeds(rnd: random.Random, do: bool = False) -> list[bytes]:
    """Valid queries: every kind of name the server knows, odd types, EDNS variants
    (``do``: every EDNS one with the DO bit)."""
    names = [
        name(W127), name(MEDIUM), name(BIG), name(f"0.NA/{CITY}"), name(f"0.NA/{DEPT}"),
        name(f"0.NA/{DELEGATED}"), f"x.y.{name(f'0.NA/{DELEGATED}')}", name(f"{DEPT}/NOPE"),
        APEX + ".", f"ns1.{APEX}.", f"ma.{APEX}.", "example.com.", "id.server.",
        name(W127).upper(), f"a.b.c.d.{name(f'0.NA/{CITY}')}",
    ]  # fmt: skip
    out = []
    for qname in names:
        for qtype in QTYPES:
            for variant in range(4):
                kw: dict[str, object] = {}
                if variant == 1:
                    kw = {"use_edns": 0, "payload": rnd.choice([512, 1232, 4096, 100]),
                          "want_dnssec": do}  # fmt: skip
                elif variant == 2:
                    cookie = dns.edns.GenericOption(dns.edns.COOKIE, rnd.randbytes(8))
                    kw = {"use_edns": 0, "want_dnssec": True, "options": [cookie]}
                elif variant == 3:
                    kw = {"use_edns": 0, "options": [dns.edns.ECSOption("192.0.2.0", 24)],
                          "want_dnssec": do}  # fmt: skip
                q = dns.message.make_query(qname, qtype, **kw)  # type: ignore[arg-type]
                q.flags = rnd.choice([0, dns.flags.RD, dns.flags.CD | dns.flags.RD, dns.flags.AD])
                out.append(q.to_wire())
    return out


def mutate(rnd: random.Random, pkt: bytes, pool: list[bytes]) -> bytes:
    b = bytearray(pkt)
    for _ in range(rnd.randint(1, 3)):
        op = rnd.randrange(11)
        if op == 0 and b:  # flip bits
            for _ in range(rnd.randint(1, 8)):
                i = rnd.randrange(len(b))
                b[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:  # set bytes
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 2 and b:  # truncate
            del b[rnd.randrange(len(b)) :]
        elif op == 3:  # append garbage
            b += rnd.randbytes(rnd.randint(1, 64))
        elif op == 4 and len(b) > 2:  # duplicate a slice
            i = rnd.randrange(len(b))
            j = rnd.randrange(i, min(len(b), i + 40) + 1)
            b[i:i] = b[i:j]
        elif op == 5 and len(b) >= 12:  # header counts
            b[4 + 2 * rnd.randrange(4) : 6 + 2 * rnd.randrange(1, 2)] = struct.pack(
                "!H", rnd.choice([0, 1, 2, 3, 255, 65535])
            )
        elif op == 6 and len(b) >= 4:  # header flags, opcode, rcode
            b[2], b[3] = rnd.randrange(256) & ~0x80, rnd.randrange(256)
        elif op == 7 and len(b) > 14:  # a compression pointer in the question
            i = rnd.randrange(12, len(b) - 1)
            b[i : i + 2] = bytes((0xC0 | rnd.randrange(64), rnd.randrange(256)))
        elif op == 8 and len(b) > 13:  # a label length
            b[12] = rnd.choice([0, 1, 63, 64, 127, 191, 255])
        elif op == 9:  # splice another packet
            other = rnd.choice(pool)
            cut = rnd.randrange(len(b) + 1)
            b = b[:cut] + bytearray(other[rnd.randrange(len(other)) :])
        elif op == 10 and len(b) >= 12:  # QDCOUNT 1, no others: reach the parsers
            b[4:12] = b"\x00\x01\x00\x00\x00\x00\x00" + bytes((rnd.randrange(3),))
    return bytes(b)


def packets(rnd: random.Random, n: int, do: bool = False) -> Iterator[bytes]:
    pool = seeds(rnd, do)
    yield from pool
    for i in range(n - len(pool)):
        kind = i % 10
        if kind < 7:
            yield mutate(rnd, rnd.choice(pool), pool)
        elif kind < 9:  # a plausible header, random body
            body = rnd.randbytes(rnd.randint(0, 300))
            yield (
                rnd.randbytes(2)
                + bytes((rnd.randrange(128), rnd.randrange(256)))
                + (b"\x00\x01\x00\x00\x00\x00\x00" + bytes((rnd.randrange(2),)))
                + body
            )
        else:
            yield rnd.randbytes(rnd.randint(0, 600))


def check_reply(query: bytes, reply: bytes | None) -> None:
    if reply is None:
        # Silence is right only for what has no header to answer, or a response.
        assert len(query) < 12 or query[2] & 0x80, query.hex()
        return
    assert reply[:2] == query[:2] and reply[2] & 0x80, (query.hex(), reply.hex())
    msg = dns.message.from_wire(reply)  # raises if malformed
    assert len(reply) <= 1232, (query.hex(), len(reply))
    if len(reply) > 512:  # only a query with EDNS may get that much
        q = parse_query(query)  # options are not ours to judge: an unknown one is ignored
        assert (
            (q is not None and q[4] > 0)
            or dns.message.from_wire(query).edns >= 0
            or (msg.rcode() == dns.rcode.BADVERS)
        )


async def _respond_all(server: DnsServer, batch: list[bytes]) -> list[bytes | None]:
    return await asyncio.gather(*(server.respond(p) for p in batch))


def test_fuzz_handler_100k(fuzzsrv: tuple[DnsHarness, _Errors]) -> None:
    h, errors = fuzzsrv
    assert h.server is not None
    rnd = random.Random(SEED)
    t0 = time.monotonic()
    batch: list[bytes] = []
    sent = answered = 0
    for pkt in packets(rnd, TOTAL, h.signer is not None):
        batch.append(pkt)
        if len(batch) == BATCH:
            replies = h.call(_respond_all(h.server, batch))
            for q, r in zip(batch, replies, strict=True):  # type: ignore[call-overload]
                check_reply(q, r)
                answered += r is not None
            sent += len(batch)
            batch = []
            assert time.monotonic() - t0 < 60, f"only {sent} packets in 60 s"
    assert sent == TOTAL and answered > TOTAL // 2
    assert not errors.records, [r.getMessage() for r in errors.records[:5]]
    # Still serving, and correctly.
    assert h.udp(name(W127), "URI").answer


def test_fuzz_over_udp_socket(fuzzsrv: tuple[DnsHarness, _Errors]) -> None:
    h, errors = fuzzsrv
    rnd = random.Random(SEED + 1)
    pkts = list(packets(rnd, SOCKET_SAMPLE, h.signer is not None))
    replies: dict[bytes, list[bytes]] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.settimeout(0.1)
        for i in range(0, len(pkts), 100):  # paced, so nothing is lost to buffers
            for p in pkts[i : i + 100]:
                s.sendto(p, ("127.0.0.1", h.port))
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                try:
                    r = s.recv(65535)
                except TimeoutError:
                    break
                replies.setdefault(r[:2], []).append(r)
    got = [r for rs in replies.values() for r in rs]
    assert len(got) > SOCKET_SAMPLE // 2
    for r in got:
        dns.message.from_wire(r)
        assert r[2] & 0x80 and len(r) <= 1232
    assert not errors.records, [r.getMessage() for r in errors.records[:5]]
    assert h.udp(name(W127), "TXT").answer


label = st.binary(min_size=1, max_size=63)
query_parts = st.tuples(
    st.integers(0, 65535),  # id
    st.integers(0, 255),  # flags byte 1 (QR cleared below)
    st.integers(0, 255),
    st.lists(label, max_size=8),
    st.integers(0, 65535),  # qtype
    st.sampled_from([1, 1, 1, 3, 255, 254, 0, 4]),  # qclass
    st.one_of(st.none(), st.binary(max_size=40)),  # an OPT's options, or no OPT
    st.integers(0, 65535),  # OPT payload
    st.integers(0, 3),  # EDNS version
)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=query_parts)
def test_fuzz_structured_queries(fuzzsrv: tuple[DnsHarness, _Errors], parts: tuple) -> None:
    h, errors = fuzzsrv
    ident, f1, f2, labels, qtype, qclass, opts, payload, version = parts
    labels = [*labels, *(x.encode() for x in name(W127).split(".")[-6:-1])]
    qname = b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"
    pkt = struct.pack("!HBBHHHH", ident, f1 & 0x7F, f2, 1, 0, 0, 0 if opts is None else 1)
    pkt += qname + struct.pack("!HH", qtype, qclass)
    if opts is not None:
        do = 0x8000 if h.signer is not None else 0
        pkt += b"\x00\x00\x29" + struct.pack("!HBBHH", payload, 0, version, do, len(opts)) + opts
    assert h.server is not None
    check_reply(pkt, h.call(h.server.respond(pkt)))  # type: ignore[arg-type]
    assert not errors.records


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(pkt=st.binary(max_size=700))
def test_fuzz_raw_binaries(fuzzsrv: tuple[DnsHarness, _Errors], pkt: bytes) -> None:
    h, errors = fuzzsrv
    assert h.server is not None
    for tcp in (False, True):
        reply = h.call(h.server.respond(pkt, tcp=tcp))
        if not tcp:
            check_reply(pkt, reply)  # type: ignore[arg-type]
        elif reply is not None:
            dns.message.from_wire(reply)  # type: ignore[arg-type]
    assert not errors.records
