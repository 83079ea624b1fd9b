"""The DNS front on real sockets (127.0.0.1) over a real Valkey: dnspython and dig.

The server runs in a thread with its own event loop, so the tests can use the
blocking clients (``dns.query``, ``dig``) as a person would. Test data is
written through the store's write API, as sync writes it. The harness here
(``DnsHarness``, ``populate``, ``cli_server``) is shared with the fuzz and RRL
tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import redis

from cityid.identifiers import Identifier, mint_suffix, parse_identifier
from cityid.records import Record, Value
from resolver.dns.answers import ZoneConfig, chunks
from resolver.dns.dnssec import ZoneKey
from resolver.dns.server import DnsOptions, DnsServer, Listeners, bind_sockets, start_dns
from resolver.dns.signer import Signer
from resolver.store import IdChange, PrefixChange, Store

APEX = "cityid.test"
ROOT = "MA.156"
CITY = "MA.156.1301"
DEPT = "MA.156.1301.02"
DELEGATED = "MA.156.1302"  # its record names other name servers: a referral
OWN = "MA.156.1303"  # its record names us among its name servers: served here
ORIGIN = "log.cityid.test/root"
W127 = f"{DEPT}/{mint_suffix('W', 127, 7)}"
MEDIUM = f"{DEPT}/MEDIUM"  # an answer of 600-1232 octets
BIG = f"{DEPT}/BIG"  # an answer over 1232 octets: TC over UDP, whole over TCP
GONE = f"{DEPT}/GONE"  # deleted
CHANGING = f"{DEPT}/CHANGING"
LOC_XML = (
    '<locations><location href="https://a.example/loc1" weight="1"/>'
    '<location href="http://b.example/loc!2"/></locations>'
)
CITY_URL = "https://sjz.example/"
ROOT_DIR = Path(__file__).resolve().parent.parent
DIG = shutil.which("dig")


def name(ident: str) -> str:
    return parse_identifier(ident).dns_name(APEX)


def record(*values: tuple[str, object], ttl: int = 3600) -> bytes:
    return Record.of(
        Value.make(i + 1, t, d, ttl, 1_700_000_000) for i, (t, d) in enumerate(values)
    ).encode()


def id_change(ident: str, rec: bytes | None, version: int = 1, leaf: int = 10) -> IdChange:
    i = parse_identifier(ident)
    return IdChange(str(i.prefix), i.suffix, version, rec is None, ORIGIN, leaf, rec)


def prefix_change(prefix: str, rec: bytes, leaf: int) -> PrefixChange:
    return PrefixChange(prefix, 1, False, ORIGIN, leaf, rec, b"\x01" * 32, ORIGIN)


W127_RECORD = record(
    ("URL", "https://things.sjz.example/W0000127R"),
    ("URL", "http://mirror.example/W0000127R"),
    ("DESC", "Manhole cover, Zhongshan Road 12"),
    ("EMAIL", "water@sjz.example"),
    ("GEO", "38.0428,114.5149"),
    ("10320/LOC", LOC_XML),
    ("HS_SITE", {"registrar": "https://registrar.sjz.example"}),
    ("DESC", "x" * 300 + "长"),  # a value longer than one character-string
)


async def populate(store: Store) -> None:
    """The namespace every DNS test uses, written as sync writes it."""
    w = store.writer()
    await w.prepare()
    await w.set_ready()  # as sync says once caught up: a miss is final
    await w.apply(
        [
            prefix_change(CITY, record(("DESC", "Shijiazhuang"), ("URL", CITY_URL)), 1),
            prefix_change(DEPT, record(("DESC", "Traffic management")), 2),
            prefix_change(
                DELEGATED,
                record(
                    ("NS", f"ns1.1302.156.ma.{APEX} 127.0.0.53 ::1"),
                    ("NS", "ns2.elsewhere.example"),
                    ("HS_SITE", {"resolver": "https://resolver.1302.example"}),
                    ttl=600,
                ),
                3,
            ),
            prefix_change(OWN, record(("NS", f"ns1.{APEX}"), ("NS", f"ns9.{APEX} 127.0.0.9")), 4),
            id_change(W127, W127_RECORD),
            id_change(MEDIUM, record(*(("DESC", f"mid {i:02d} " + "m" * 69) for i in range(10)))),
            id_change(BIG, record(*(("DESC", f"big {i:02d} " + "b" * 106) for i in range(32)))),
            id_change(GONE, None, version=2),
            id_change(CHANGING, record(("URL", "https://old.example/"))),
        ]
    )  # fmt: skip


class DnsHarness:
    """A DNS server on 127.0.0.1 in a thread of its own (uvloop), over a real store."""

    def __init__(
        self,
        url: str,
        options: DnsOptions | None = None,
        *,
        signer: Signer | None = None,
        apex: str = APEX,
        host: str = "127.0.0.1",
        port: int = 0,
        next_keys: tuple[ZoneKey, ...] = (),
    ) -> None:
        self.url = url
        self.host = host
        self.options = options or DnsOptions(rrl_rate=0, tcp_idle=1.0, tcp_max_connections=20)
        self.signer = signer
        key = signer.zone_key if signer is not None else None
        ns = [f"ns1={host}"] if host != "127.0.0.1" else []  # the address to find us at
        self.cfg = ZoneConfig.make(apex, [ROOT], ns, identity="test-server", key=key,
                                   next_keys=next_keys)  # fmt: skip
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: DnsServer | None = None
        self.listeners: Listeners | None = None
        self.port = port
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dns-test-server", daemon=True)

    def __enter__(self) -> DnsHarness:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the DNS server did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        import uvloop

        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
                r.run(self._main())
        except BaseException as e:  # reported to the test thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = await Store.connect(self.url)
        try:
            await populate(store)
            self.server = DnsServer(store, self.cfg, self.options, self.signer)
            self.listeners = await start_dns(self.server, self.host, self.port)
            self.port = self.listeners.port
            self._ready.set()
            await self._stop.wait()
            await self.listeners.close()
        finally:
            await store.close()

    def call(self, coro: object) -> object:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    # -- clients ------------------------------------------------------------------------

    def udp(self, qname: str, qtype: str = "TXT", **kw: object) -> dns.message.Message:
        kw.setdefault("use_edns", 0)  # as resolvers do; use_edns=False for plain DNS
        q = dns.message.make_query(qname, qtype, **kw)  # type: ignore[arg-type]
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=3)

    def tcp(self, qname: str, qtype: str = "TXT", **kw: object) -> dns.message.Message:
        q = dns.message.make_query(qname, qtype, **kw)  # type: ignore[arg-type]
        return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=3)

    def raw(self, packet: bytes, timeout: float = 2.0) -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(packet, ("127.0.0.1", self.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None

    def dig(self, *args: str) -> str:
        assert DIG is not None
        out = subprocess.run(
            [DIG, "@127.0.0.1", "-p", str(self.port), "+time=3", "+tries=1", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return out.stdout + out.stderr


@pytest.fixture(scope="module")
def dnssrv(valkey_url: str) -> Iterator[DnsHarness]:
    client = redis.Redis.from_url(valkey_url)
    client.flushdb()
    with DnsHarness(valkey_url) as h:
        yield h
    client.flushdb()
    client.close()


needs_dig = pytest.mark.skipif(
    DIG is None, reason="dig is missing: apt-get install bind9-dnsutils (Debian)"
)


def rdata_texts(msg: dns.message.Message, rdtype: int) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == rdtype for rd in rrset)


def txt_values(msg: dns.message.Message) -> list[str]:
    return sorted(
        b"".join(rd.strings).decode()
        for rrset in msg.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rd in rrset
    )


# -- answers with dnspython ---------------------------------------------------------------


def test_txt_one_string_per_value(dnssrv: DnsHarness) -> None:
    r = dnssrv.udp(name(W127), "TXT")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    values = txt_values(r)
    assert "URL=https://things.sjz.example/W0000127R" in values
    assert "EMAIL=water@sjz.example" in values
    assert "GEO=38.0428,114.5149" in values
    assert f"10320/LOC={LOC_XML}" in values
    assert 'HS_SITE={"registrar":"https://registrar.sjz.example"}' in values
    assert "DESC=" + "x" * 300 + "长" in values
    long = next(rd for rd in r.answer[0] if b"xxxx" in b"".join(rd.strings))
    assert len(long.strings) == 2 and all(len(s) <= 255 for s in long.strings)
    assert r.answer[0].ttl == 300  # value TTL 3600, capped by the zone TTL
    assert not r.authority and not r.additional  # minimal responses


def test_chunks_never_split_utf8() -> None:
    data = ("a" * 254 + "长长").encode()
    parts = chunks(data)
    assert b"".join(parts) == data and all(len(p) <= 255 for p in parts)
    assert [p.decode() for p in parts]  # each piece is whole UTF-8


def test_uri_from_url_values(dnssrv: DnsHarness) -> None:
    r = dnssrv.udp(name(W127), "URI")
    assert rdata_texts(r, dns.rdatatype.URI) == [
        '1 1 "https://things.sjz.example/W0000127R"',
        '2 1 "http://mirror.example/W0000127R"',
    ]


def test_naptr_from_locations(dnssrv: DnsHarness) -> None:
    r = dnssrv.udp(name(W127), "NAPTR")
    got = rdata_texts(r, dns.rdatatype.NAPTR)
    assert got == [
        '6 0 "U" "E2U+web:https" "!^.*$!https://a.example/loc1!" .',
        '6 1 "U" "E2U+web:http" "!^.*$!http://b.example/loc\\\\!2!" .',
    ]


def test_soa_and_ns_at_node_apexes(dnssrv: DnsHarness) -> None:
    for prefix in (ROOT, CITY, DEPT):
        zone = parse_identifier(f"0.NA/{prefix}").dns_name(APEX)
        soa = dnssrv.udp(zone, "SOA")
        assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
        assert soa.answer[0].name == dns.name.from_text(zone)
        assert soa.answer[0][0].mname == dns.name.from_text(f"ns1.{APEX}")
        assert soa.answer[0][0].minimum == 60
        ns = dnssrv.udp(zone, "NS")
        assert rdata_texts(ns, dns.rdatatype.NS) == [f"ns1.{APEX}."]
    # A prefix whose record lists us with another server: its NS set is the record's.
    ns = dnssrv.udp(name(f"0.NA/{OWN}"), "NS")
    assert ns.flags & dns.flags.AA
    assert rdata_texts(ns, dns.rdatatype.NS) == [f"ns1.{APEX}.", f"ns9.{APEX}."]
    apex = dnssrv.udp(APEX, "NS")
    assert rdata_texts(apex, dns.rdatatype.NS) == [f"ns1.{APEX}."]
    glue = dnssrv.udp(f"ns1.{APEX}", "A")
    assert rdata_texts(glue, dns.rdatatype.A) == ["127.0.0.1"]


def test_prefix_record_at_its_apex(dnssrv: DnsHarness) -> None:
    r = dnssrv.udp(name(f"0.NA/{CITY}"), "TXT")
    assert txt_values(r) == ["DESC=Shijiazhuang", "URL=https://sjz.example/"]


def test_nxdomain_with_soa(dnssrv: DnsHarness) -> None:
    for qname, zone in (
        (name(f"{DEPT}/NOSUCH"), name(f"0.NA/{DEPT}")),
        (name(GONE), name(f"0.NA/{DEPT}")),  # deleted
        (f"a.b.{name(f'0.NA/{DEPT}')}", name(f"0.NA/{DEPT}")),  # below an identifier
        (f"x.9999.{name(f'0.NA/{ROOT}')}", name(f"0.NA/{ROOT}")),  # under no prefix
        (f"bad~label.{name(f'0.NA/{CITY}')}", name(f"0.NA/{CITY}")),
        (f"other.{APEX}", APEX + "."),  # under the apex, under no root
    ):
        r = dnssrv.udp(qname, "TXT")
        assert r.rcode() == dns.rcode.NXDOMAIN, qname
        assert r.flags & dns.flags.AA and not r.answer
        soa = r.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA and soa.name == dns.name.from_text(zone), qname
        assert soa.ttl == 60  # min(SOA TTL, SOA minimum), RFC 2308 §3


def test_nxdomain_for_every_first_label_length(dnssrv: DnsHarness) -> None:
    # Negative answers are encoded once per zone and name length: the SOA owner is a
    # pointer into the question, whose place the first label's length decides.
    zone = dns.name.from_text(name(f"0.NA/{DEPT}"))
    for n in (1, 2, 7, 9, 30, 62, 63):
        for label in ("q" * n, "Q-" + "x" * (n - 2) if n > 2 else "-" * n):
            r = dnssrv.udp(f"{label}.{zone}", "TXT")
            assert r.rcode() == dns.rcode.NXDOMAIN, label
            assert r.question[0].name.labels[0] == label.encode()  # the client's case
            soa = r.authority[0]
            assert soa.name == zone and soa.rdtype == dns.rdatatype.SOA, label


def test_negatives_cached_only_when_they_cost_a_round_trip(dnssrv: DnsHarness) -> None:
    srv = dnssrv.server
    assert srv is not None

    def cached(text: str) -> bool:
        key = dns.name.from_text(text).to_wire().lower() + b"\x00\x10"  # TXT

        async def probe() -> bool:
            return srv.cache.get(key) is not None

        return bool(dnssrv.call(probe()))

    nowhere = f"zz-nowhere.{APEX}"  # under no root: answered without the store
    assert dnssrv.udp(nowhere).rcode() == dns.rcode.NXDOMAIN
    assert dnssrv.udp(nowhere).rcode() == dns.rcode.NXDOMAIN and not cached(nowhere)
    assert dnssrv.udp(name(W127)).rcode() == dns.rcode.NOERROR and cached(name(W127))
    trips = srv.store.counters["round_trips_total"]
    never = name(f"{DEPT}/NEVER-2")
    assert dnssrv.udp(never).rcode() == dns.rcode.NXDOMAIN
    # Kept if the store had to ask Redis; not if it knew without (its membership filter).
    assert cached(never) == (srv.store.counters["round_trips_total"] != trips)


def test_nodata(dnssrv: DnsHarness) -> None:
    for qname, qtype in (
        (name(W127), "A"),
        (name(f"{DEPT}/MEDIUM"), "URI"),  # a record without URL values
        (name(f"0.NA/{DEPT}"), "AAAA"),
        (f"ma.{APEX}", "TXT"),  # the empty non-terminal above the root
    ):
        r = dnssrv.udp(qname, qtype)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer, qname
        assert r.flags & dns.flags.AA
        assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_referral_for_delegated_prefix(dnssrv: DnsHarness) -> None:
    cut = name(f"0.NA/{DELEGATED}")
    for qname in (cut, f"w1.{cut}", f"a.b.c.{cut}"):
        r = dnssrv.udp(qname, "TXT")
        assert r.rcode() == dns.rcode.NOERROR
        assert not r.flags & dns.flags.AA and not r.answer
        ns = r.authority[0]
        assert ns.rdtype == dns.rdatatype.NS and ns.name == dns.name.from_text(cut)
        assert sorted(rd.target.to_text() for rd in ns) == [
            f"ns1.1302.156.ma.{APEX}.",
            "ns2.elsewhere.example.",
        ]
        assert ns.ttl == 300
        glue = {(rr.name.to_text(), rr.rdtype): [rd.to_text() for rd in rr] for rr in r.additional}
        # In-bailiwick glue only: the out-of-zone host has no addresses here.
        assert glue == {
            (f"ns1.1302.156.ma.{APEX}.", dns.rdatatype.A): ["127.0.0.53"],
            (f"ns1.1302.156.ma.{APEX}.", dns.rdatatype.AAAA): ["::1"],
        }
    ds = dnssrv.udp(cut, "DS")  # the parent side of the cut answers DS
    assert ds.flags & dns.flags.AA and not ds.answer
    assert ds.authority[0].name == dns.name.from_text(name(f"0.NA/{ROOT}"))


def test_refused_outside_apex(dnssrv: DnsHarness) -> None:
    for qname in ("example.com", "test", "cityid.test.example"):
        r = dnssrv.udp(qname, "A")
        assert r.rcode() == dns.rcode.REFUSED
        assert not r.flags & dns.flags.AA and not r.answer and not r.authority


def test_formerr_and_notimp(dnssrv: DnsHarness) -> None:
    good = dns.message.make_query(name(W127), "TXT").to_wire()
    # A header promising a question, and half a question.
    r = dnssrv.raw(good[:20])
    assert r is not None and dns.message.from_wire(r).rcode() == dns.rcode.FORMERR
    assert r[:2] == good[:2]
    # Two questions.
    two = good[:4] + b"\x00\x02" + good[6:] + good[12:]
    r = dnssrv.raw(two)
    assert r is not None and dns.message.from_wire(r).rcode() == dns.rcode.FORMERR
    # Other opcodes: NOTIFY, UPDATE, and an unassigned one.
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, 7):
        q = dns.message.make_query(name(W127), "SOA")
        q.set_opcode(opcode)
        r = dnssrv.raw(q.to_wire())
        assert r is not None
        m = dns.message.from_wire(r)
        assert m.rcode() == dns.rcode.NOTIMP and m.opcode() == opcode and m.id == q.id
    # Responses and runts get nothing.
    assert dnssrv.raw(bytes([good[0], good[1], 0x80]) + good[3:], timeout=0.3) is None
    assert dnssrv.raw(b"\x00" * 5, timeout=0.3) is None
    # An EDNS version we do not speak.
    r = dnssrv.udp(name(W127), "TXT", use_edns=1)
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0
    # Query types that are never questions, and zone transfers.
    for qtype, rcode in (("OPT", dns.rcode.FORMERR), ("AXFR", dns.rcode.REFUSED)):
        q = dns.message.make_query(name(W127), qtype)
        r = dnssrv.raw(q.to_wire())
        assert r is not None and dns.message.from_wire(r).rcode() == rcode


def test_errors_to_edns_queries_carry_opt(dnssrv: DnsHarness) -> None:
    # RFC 6891 §7: an EDNS query gets OPT back, in error responses too.
    notify = dns.message.make_query(name(W127), "SOA", use_edns=0, want_dnssec=True)
    notify.set_opcode(dns.opcode.NOTIFY)
    good = dns.message.make_query(name(W127), "TXT", use_edns=0, payload=4096).to_wire()
    two = good[:4] + b"\x00\x02" + good[6:-11] + good[12:-11] + good[-11:]  # two questions
    # An answer record dnspython cannot parse (an A of 3 octets), before the OPT.
    bad_a = b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x03\x01\x02\x03"
    broken = good[:6] + b"\x00\x01" + good[8:-11] + bad_a + good[-11:]
    for packet, rcode, do in (
        (notify.to_wire(), dns.rcode.NOTIMP, True),
        (two, dns.rcode.FORMERR, False),
        (broken, dns.rcode.FORMERR, False),
    ):
        r = dnssrv.raw(packet)
        assert r is not None
        m = dns.message.from_wire(r)
        assert m.rcode() == rcode and m.id == int.from_bytes(packet[:2], "big")
        assert m.edns == 0 and m.payload == 1232, rcode
        assert bool(m.ednsflags & dns.flags.DO) == do
    # Without EDNS in the query, none in the reply.
    plain = dns.message.make_query(name(W127), "SOA")
    plain.set_opcode(dns.opcode.NOTIFY)
    r = dnssrv.raw(plain.to_wire())
    assert r is not None and dns.message.from_wire(r).edns == -1


def test_ixfr_refused(dnssrv: DnsHarness) -> None:
    # An IXFR query holds the client's SOA in authority (RFC 1995): REFUSED, as AXFR.
    zone = name(f"0.NA/{DEPT}")
    q = dns.message.make_query(zone, "IXFR", use_edns=0)
    q.authority.append(
        dns.rrset.from_text(zone, 0, "IN", "SOA", f"ns1.{APEX}. h.{APEX}. 7 1 1 1 1")
    )
    for r in (dnssrv.raw(q.to_wire()), dnssrv.raw(q.to_wire())):  # a miss, then the same
        assert r is not None
        m = dns.message.from_wire(r)
        assert m.rcode() == dns.rcode.REFUSED and m.edns == 0
    r = dns.query.tcp(q, "127.0.0.1", port=dnssrv.port, timeout=3)
    assert r.rcode() == dns.rcode.REFUSED


def test_one_serial_per_zone(dnssrv: DnsHarness) -> None:
    # The SOA answer (cached an hour) and the SOA of a negative answer given later
    # agree: the serial comes from the log (the zone record's leaf), not the clock.
    zone = name(f"0.NA/{DEPT}")
    soa = dnssrv.udp(zone, "SOA").answer[0][0].serial
    time.sleep(1.1)
    nx = dnssrv.udp(name(f"{DEPT}/SERIAL-{time.time_ns()}"), "TXT")
    nodata = dnssrv.udp(zone, "AAAA")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nodata.rcode() == dns.rcode.NOERROR
    assert nx.authority[0][0].serial == nodata.authority[0][0].serial == soa == 3  # leaf 2
    root = name(f"0.NA/{ROOT}")
    assert dnssrv.udp(root, "SOA").answer[0][0].serial == 1  # configuration: no record


def test_question_case_echoed(dnssrv: DnsHarness) -> None:
    mixed = name(W127).upper().replace("CITYID", "CiTyId")
    for _ in range(2):  # a miss, then a hit from the cache
        q = dns.message.make_query(mixed, "TXT", use_edns=0)
        wire = q.to_wire()
        r = dnssrv.raw(wire)
        assert r is not None
        assert r[12 : 12 + len(mixed) + 5] == wire[12 : 12 + len(mixed) + 5]
        assert dns.message.from_wire(r).answer


def test_rd_and_cd_copied(dnssrv: DnsHarness) -> None:
    for flags in (0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD):
        q = dns.message.make_query(name(W127), "URI")
        q.flags = flags
        r = dnssrv.raw(q.to_wire())
        assert r is not None
        m = dns.message.from_wire(r)
        assert m.flags & (dns.flags.RD | dns.flags.CD) == flags
        assert m.flags & dns.flags.QR and not m.flags & dns.flags.RA


def test_identity_chaos(dnssrv: DnsHarness) -> None:
    q = dns.message.make_query("id.server.", "TXT", rdclass="CH")
    r = dns.query.udp(q, "127.0.0.1", port=dnssrv.port, timeout=3)
    assert b"".join(r.answer[0][0].strings) == b"test-server"
    q = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    r = dns.query.udp(q, "127.0.0.1", port=dnssrv.port, timeout=3)
    assert r.rcode() == dns.rcode.REFUSED


# -- sizes: EDNS, TC, TCP ------------------------------------------------------------------


def test_edns_buffer_sizes(dnssrv: DnsHarness) -> None:
    medium, big = name(MEDIUM), name(BIG)
    full_medium = len(dnssrv.tcp(medium).to_wire())
    assert 600 < full_medium < 1232
    # No EDNS: 512 octets, so the medium answer is truncated.
    r = dnssrv.udp(medium, use_edns=False)
    assert r.flags & dns.flags.TC and not r.answer and r.edns < 0
    # EDNS with the usual 1232: it fits; we advertise 1232.
    r = dnssrv.udp(medium, use_edns=0, payload=1232)
    assert not r.flags & dns.flags.TC and len(txt_values(r)) == 10 and r.payload == 1232
    # A smaller size asked for is honoured.
    r = dnssrv.udp(medium, use_edns=0, payload=600)
    assert r.flags & dns.flags.TC and r.edns == 0
    # Below 512 counts as 512 (RFC 6891 §6.2.5).
    r = dnssrv.udp(name(W127), "URI", use_edns=0, payload=100)
    assert not r.flags & dns.flags.TC and r.answer
    # A larger size is capped at ours: the big answer (> 1232) is truncated even at 4096.
    r = dnssrv.udp(big, use_edns=0, payload=4096)
    assert r.flags & dns.flags.TC and r.payload == 1232
    r = dnssrv.tcp(big, use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC and len(txt_values(r)) == 32


def test_tc_then_tcp_retry(dnssrv: DnsHarness) -> None:
    q = dns.message.make_query(name(BIG), "TXT", use_edns=0)
    r, used_tcp = dns.query.udp_with_fallback(q, "127.0.0.1", port=dnssrv.port, timeout=3)
    assert used_tcp and len(txt_values(r)) == 32 and len(r.to_wire()) > 3000


def test_pipelined_tcp(dnssrv: DnsHarness) -> None:
    names = [name(W127), name(BIG), name(f"{DEPT}/NOPE"), name(f"0.NA/{CITY}"), "example.com."]
    queries = []
    for i in range(40):
        q = dns.message.make_query(names[i % len(names)], "TXT" if i % 3 else "URI")
        q.id = 1000 + i
        queries.append(q)
    blob = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
    got: dict[int, dns.message.Message] = {}
    with socket.create_connection(("127.0.0.1", dnssrv.port), timeout=5) as s:
        s.sendall(blob)  # all at once, before reading anything
        buf = b""
        while len(got) < len(queries):
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                m = dns.message.from_wire(buf[2 : 2 + n])
                got[m.id] = m
                buf = buf[2 + n :]
    for q in queries:
        r = got[q.id]
        assert r.question[0].name == q.question[0].name
        assert r.question[0].rdtype == q.question[0].rdtype


def test_tcp_idle_timeout_and_connection_cap(dnssrv: DnsHarness) -> None:
    with socket.create_connection(("127.0.0.1", dnssrv.port), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(1) == b""  # the server closes an idle connection
        assert 0.8 < time.monotonic() - t0 < 4
    # A client trickling a query a byte at a time never completes one: it is idle too.
    wire = dns.message.make_query(name(W127), "TXT").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.create_connection(("127.0.0.1", dnssrv.port), timeout=5) as s:
        t0 = time.monotonic()
        with contextlib.suppress(OSError):
            for byte in framed:
                s.sendall(bytes((byte,)))
                time.sleep(0.3)
                assert time.monotonic() - t0 < 5
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(1) == b""
        assert time.monotonic() - t0 < 4
    conns = [socket.create_connection(("127.0.0.1", dnssrv.port), timeout=5) for _ in range(20)]
    try:
        time.sleep(0.2)
        with (
            socket.create_connection(("127.0.0.1", dnssrv.port), timeout=5) as extra,
            contextlib.suppress(ConnectionResetError),
        ):
            assert extra.recv(1) == b""  # over the cap: closed at once
        assert dnssrv.server is not None and dnssrv.server.counters["tcp_refused"] >= 1
    finally:
        for c in conns:
            c.close()
    time.sleep(0.2)
    assert dnssrv.tcp(name(W127)).answer  # served again once the others left


# -- freshness -----------------------------------------------------------------------------


def test_changed_record_answered_within_one_second(dnssrv: DnsHarness) -> None:
    qname = name(CHANGING)
    assert rdata_texts(dnssrv.udp(qname, "URI"), dns.rdatatype.URI) == [
        '1 1 "https://old.example/"'
    ]
    # New identifiers under a prefix: the cached NXDOMAIN must go too.
    fresh = f"{DEPT}/FRESH1"
    assert dnssrv.udp(name(fresh)).rcode() == dns.rcode.NXDOMAIN

    async def write() -> None:  # as sync does: another process, through the store
        store = await Store.connect(dnssrv.url)
        try:
            w = store.writer()
            await w.prepare()
            await w.set_ready()  # as sync says once caught up: a miss is final
            await w.apply(
                [
                    id_change(CHANGING, record(("URL", "https://new.example/")), 2, 11),
                    id_change(fresh, record(("DESC", "new")), 1, 12),
                ]
            )
        finally:
            await store.close()

    asyncio.run(write())
    t0 = time.monotonic()
    while True:
        uri = rdata_texts(dnssrv.udp(qname, "URI"), dns.rdatatype.URI)
        new = dnssrv.udp(name(fresh))
        if uri == ['1 1 "https://new.example/"'] and new.rcode() == dns.rcode.NOERROR:
            break
        assert time.monotonic() - t0 < 1.0, f"still {uri} {dns.rcode.to_text(new.rcode())}"
        time.sleep(0.02)


def test_new_delegation_becomes_a_referral(dnssrv: DnsHarness) -> None:
    child = f"{CITY}.77"
    qname = f"w1.{name(f'0.NA/{child}')}"
    assert dnssrv.udp(qname).rcode() == dns.rcode.NXDOMAIN

    async def write() -> None:
        store = await Store.connect(dnssrv.url)
        try:
            w = store.writer()
            await w.prepare()
            await w.set_ready()  # as sync says once caught up: a miss is final
            await w.apply([prefix_change(child, record(("NS", "ns.dept77.example")), 20)])
        finally:
            await store.close()

    asyncio.run(write())
    t0 = time.monotonic()
    while (r := dnssrv.udp(qname)).rcode() != dns.rcode.NOERROR:
        assert time.monotonic() - t0 < 1.0
        time.sleep(0.02)
    assert r.authority[0].rdtype == dns.rdatatype.NS and not r.flags & dns.flags.AA


# -- dig -----------------------------------------------------------------------------------


def _status(out: str) -> str:
    m = re.search(r"status: (\w+)", out)
    assert m, out
    return m.group(1)


def _flags(out: str) -> set[str]:
    m = re.search(r";; flags: ([a-z ]+);", out)
    assert m, out
    return set(m.group(1).split())


@needs_dig
def test_dig_answers(dnssrv: DnsHarness) -> None:
    out = dnssrv.dig(name(W127), "TXT")
    assert _status(out) == "NOERROR" and "aa" in _flags(out)
    assert '"URL=https://things.sjz.example/W0000127R"' in out
    out = dnssrv.dig(name(W127), "URI", "+short")
    assert '1 1 "https://things.sjz.example/W0000127R"' in out
    out = dnssrv.dig(name(W127), "NAPTR", "+short")
    assert '"E2U+web:https" "!^.*$!https://a.example/loc1!"' in out
    out = dnssrv.dig(name(f"0.NA/{CITY}"), "SOA", "+short")
    assert out.startswith(f"ns1.{APEX}. hostmaster.{APEX}. ")
    out = dnssrv.dig(name(f"0.NA/{DEPT}"), "NS", "+short")
    assert out.strip() == f"ns1.{APEX}."


@needs_dig
def test_dig_negative_referral_and_errors(dnssrv: DnsHarness) -> None:
    out = dnssrv.dig(name(f"{DEPT}/NOSUCH"), "TXT")
    assert _status(out) == "NXDOMAIN" and "AUTHORITY: 1" in out
    assert re.search(r"02\.1301\.156\.ma\.cityid\.test\.\s+60\s+IN\s+SOA", out)
    out = dnssrv.dig(name(W127), "AAAA")
    assert _status(out) == "NOERROR" and "ANSWER: 0" in out and "AUTHORITY: 1" in out
    out = dnssrv.dig(f"w1.{name(f'0.NA/{DELEGATED}')}", "TXT", "+norec")
    assert _status(out) == "NOERROR" and "aa" not in _flags(out)
    assert "ns2.elsewhere.example." in out and "127.0.0.53" in out
    out = dnssrv.dig("example.com", "A")
    assert _status(out) == "REFUSED"
    out = dnssrv.dig(name(W127), "SOA", "+opcode=notify")
    assert _status(out) == "NOTIMP"
    out = dnssrv.dig(name(W127), "TXT", "+edns=1", "+noednsnegotiation")
    assert _status(out) == "BADVERS"


@needs_dig
def test_dig_tc_retries_over_tcp(dnssrv: DnsHarness) -> None:
    out = dnssrv.dig(name(BIG), "TXT")
    assert "Truncated, retrying in TCP mode" in out
    assert _status(out) == "NOERROR" and "ANSWER: 32" in out
    out = dnssrv.dig(name(MEDIUM), "TXT", "+noedns")
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 10" in out
    out = dnssrv.dig(name(MEDIUM), "TXT", "+bufsize=1232")
    assert "Truncated" not in out and "ANSWER: 10" in out and "udp: 1232" in out
    out = dnssrv.dig(name(BIG), "TXT", "+tcp")
    assert "ANSWER: 32" in out and "Truncated" not in out


# -- the command: several processes on one port ------------------------------------------------


CLI = (
    "import sys; from cityid import cli; m = 'resolver.dns.cli'; "
    "cli.COMMAND_MODULES += () if m in cli.COMMAND_MODULES else (m,); sys.exit(cli.main())"
)


@contextlib.contextmanager
def cli_server(url: str, *args: str) -> Iterator[int]:
    """``cityid resolver dns serve`` in a subprocess on a free loopback port."""
    udp, tcp = bind_sockets("127.0.0.1", 0, reuse_port=False)
    port = udp.getsockname()[1]
    udp.close()
    tcp.close()
    cmd = [sys.executable, "-c", CLI, "resolver", "dns", "serve", "--redis", url,
           "--root", ROOT, "--apex", APEX, "--listen", f"127.0.0.1:{port}", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT_DIR, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT_DIR)})  # fmt: skip
    with answering(proc, port, APEX, "dns serve", 30):
        yield port


@contextlib.contextmanager
def answering(
    proc: subprocess.Popen[Any], port: int, probe: str, what: str, timeout: float
) -> Iterator[None]:
    """Until ``proc`` answers DNS (SOA ``probe``) on 127.0.0.1:``port``; stopped after."""
    try:
        q = dns.message.make_query(probe, "SOA")
        deadline = time.monotonic() + timeout
        while True:
            try:
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.3)
                break
            except (dns.exception.Timeout, OSError) as e:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read() if proc.stderr else ""
                    raise RuntimeError(f"{what} did not start: {err!r}") from e
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_cli_processes_share_the_port(dnssrv: DnsHarness) -> None:
    with cli_server(dnssrv.url, "--processes", "2", "--rrl-rate", "0") as port:
        seen = set()
        q = dns.message.make_query("id.server.", "TXT", rdclass="CH")
        deadline = time.monotonic() + 15  # until the second worker has started
        while time.monotonic() < deadline:  # new source ports: SO_REUSEPORT spreads them
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
            seen.add(b"".join(r.answer[0][0].strings).decode().rsplit("/", 1)[1])
            if len(seen) == 2:
                break
        assert seen == {"0", "1"}
        r = dns.query.udp(dns.message.make_query(name(W127), "URI"), "127.0.0.1", port=port,
                          timeout=3)  # fmt: skip
        assert r.answer and r.flags & dns.flags.AA
        r = dns.query.tcp(dns.message.make_query(name(BIG), "TXT"), "127.0.0.1", port=port,
                          timeout=3)  # fmt: skip
        assert len(txt_values(r)) == 32


def test_identifier_dns_names_round_trip() -> None:
    cfg = ZoneConfig.make(APEX, [ROOT])
    from resolver.dns.answers import Lookup, plan

    for ident in (W127, MEDIUM, f"{CITY}/X-1_2"):
        i = parse_identifier(ident)
        qname = dns.name.from_text(i.dns_name(APEX)).to_wire()
        step = plan(qname, dns.rdatatype.TXT, cfg, 1)
        assert isinstance(step, Lookup) and step.ident == str(i)
        assert Identifier.from_dns(i.dns_name(APEX), APEX) == i


def test_rdata_matches_dnspython() -> None:
    """Our hand-made RDATA is byte for byte what dnspython encodes from the same text."""
    import dns.rdata

    from resolver.dns.answers import naptr_rrs, soa_rr, txt_rrs, uri_rrs

    cfg = ZoneConfig.make(APEX, [ROOT])
    owner = dns.name.from_text(name(W127)).to_wire()
    rec = Record.decode(W127_RECORD)
    rrs = [*txt_rrs(owner, rec, 300), *uri_rrs(owner, rec, 300), *naptr_rrs(owner, rec, 300)]
    rrs.append(soa_rr(owner, cfg, 12345, cfg.nameservers[0].host, 60))
    assert {t for _, t, _, _ in rrs} == {16, 256, 35, 6}
    for _, rtype, _, rdata in rrs:
        parsed = dns.rdata.from_wire(1, rtype, rdata, 0, len(rdata))
        again = dns.rdata.from_text(1, rtype, parsed.to_text())
        assert again.to_wire() == rdata, (rtype, parsed.to_text())


def test_cli_takes_dns_settings_from_the_config(dnssrv: DnsHarness, tmp_path: Path) -> None:
    from cityid.keys import SigningKey
    from resolver.config import ResolverConfig

    key = SigningKey.generate("root.test/log")
    cfg = ResolverConfig(
        root_log_url="http://127.0.0.1:9/log", root_log_key=str(key.verifier), root_prefix=ROOT,
        root_prefix_key=str(key.verifier), identity="from-config/{index}", negative_ttl_s=17,
        nameservers=["ns7.cityid.test=127.0.0.7"],
    )  # fmt: skip
    path = cfg.save(tmp_path)
    assert ResolverConfig.load(path).identity == "from-config/{index}"
    with cli_server(dnssrv.url, "--config", str(path), "--rrl-rate", "0") as port:
        q = dns.message.make_query("id.server.", "TXT", rdclass="CH")
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
        assert b"".join(r.answer[0][0].strings) == b"from-config/0"
        r = dns.query.udp(dns.message.make_query("zz-none." + APEX, "TXT"), "127.0.0.1",
                          port=port, timeout=3)  # fmt: skip
        soa = r.authority[0][0]
        assert soa.minimum == 17 and soa.mname.to_text() == "ns7.cityid.test."
