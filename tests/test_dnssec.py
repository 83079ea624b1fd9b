"""DNSSEC on the DNS front: signed answers checked by dnspython, delv and unbound.

Real servers on free loopback ports over the session's Valkey (the harness of
``tests/test_dns.py``), real validators: dnspython's ``dns.dnssec.validate`` for
every RRset, ``delv`` against the trust anchor, and ``unbound`` as a validating
resolver with stub zones pointing at cityid (AD for good answers, SERVFAIL for a
tampered signature, an expired one and a wrong key).
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_dns import (
    APEX,
    CITY,
    DELEGATED,
    DEPT,
    MEDIUM,
    ROOT,
    W127,
    DnsHarness,
)

from cityid.keys import SigningKey
from resolver.dns.dnssec import RR, ZoneKey, rrsig_rr
from resolver.dns.signer import Signer

DELV = shutil.which("delv")
UNBOUND = shutil.which("unbound") or (
    "/usr/sbin/unbound" if Path("/usr/sbin/unbound").exists() else None
)
KEY = SigningKey.generate("dnssec-test")


def zone_of(prefix: str, apex: str = APEX) -> str:
    from cityid.identifiers import parse_identifier

    return parse_identifier(f"0.NA/{prefix}").dns_name(apex)


def ident_name(ident: str, apex: str = APEX) -> str:
    from cityid.identifiers import parse_identifier

    return parse_identifier(ident).dns_name(apex)


@pytest.fixture(scope="module")
def signed(valkey_url: str) -> Iterator[DnsHarness]:
    client = redis.Redis.from_url(valkey_url)
    client.flushdb()
    with DnsHarness(valkey_url, signer=Signer(KEY)) as h:
        yield h
    client.flushdb()
    client.close()


def query(h: DnsHarness, qname: str, qtype: str, *, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(qname, qtype, want_dnssec=True, payload=1232)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=h.port, timeout=3)
    r = dns.query.udp(q, "127.0.0.1", port=h.port, timeout=3)
    if r.flags & dns.flags.TC:
        r = dns.query.tcp(q, "127.0.0.1", port=h.port, timeout=3)
    return r


def dnskey_of(h: DnsHarness, zone: str) -> dict[dns.name.Name, dns.rrset.RRset]:
    """The zone's DNSKEY RRset, validated by itself (a SEP key signs its own set)."""
    r = query(h, zone, "DNSKEY")
    keys = r.find_rrset(r.answer, dns.name.from_text(zone), dns.rdataclass.IN, dns.rdatatype.DNSKEY)
    sig = r.find_rrset(r.answer, keys.name, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                       dns.rdatatype.DNSKEY)  # fmt: skip
    found = {keys.name: keys}
    dns.dnssec.validate(keys, sig, found)
    return found


def validate_all(h: DnsHarness, msg: dns.message.Message, zone: str) -> int:
    """Validate every signed RRset of ``msg`` with the DNSKEY of ``zone``; how many."""
    keys = dnskey_of(h, zone)
    n = 0
    for section in (msg.answer, msg.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            if rrset.rdtype == dns.rdatatype.NS and not msg.flags & dns.flags.AA:
                continue  # a referral's NS set belongs to the child: never signed here
            sig = msg.find_rrset(section, rrset.name, dns.rdataclass.IN, dns.rdatatype.RRSIG,
                                 rrset.rdtype)  # fmt: skip
            dns.dnssec.validate(rrset, sig, keys)
            n += 1
    return n


# -- formats: the same bytes as dnspython's --------------------------------------------------


def test_rrsig_is_dnspythons_byte_for_byte() -> None:
    owner = dns.name.from_text(ident_name(W127))
    rrset = dns.rrset.from_text(owner, 300, "IN", "TXT", '"URL=https://a.example/"', '"DESC=x"')
    signer = dns.name.from_text(zone_of(DEPT))
    private = Ed25519PrivateKey.from_private_bytes(KEY.seed)
    zkey = ZoneKey(KEY.public_key)
    dnskey = dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.DNSKEY, zkey.dnskey, 0,
                                 len(zkey.dnskey))  # fmt: skip
    theirs = dns.dnssec.sign(rrset, private, signer, dnskey, inception=1_700_000_000,
                             expiration=1_700_600_000)  # fmt: skip
    rrs: list[RR] = [(owner.to_wire(), 16, 300, rd.to_digestable()) for rd in rrset]
    ours = rrsig_rr(rrs, signer.to_wire(), KEY._nacl, zkey.tag, 1_700_000_000, 1_700_600_000)
    assert ours[3] == theirs.to_digestable()  # the signature included
    assert zkey.tag == dns.dnssec.key_id(dnskey)
    ds = dns.dnssec.make_ds(signer, dnskey, "SHA256")
    assert zkey.ds(signer.to_wire()) == ds.to_digestable()


# -- answers, validated with dnspython ------------------------------------------------------


def test_unsigned_answers_unchanged(signed: DnsHarness, valkey_url: str) -> None:
    # Without DO, the answers are the bytes they were before DNSSEC, from the same cache.
    plain = DnsHarness(valkey_url)
    with plain:
        for qname, qtype in ((ident_name(W127), "TXT"), (ident_name(f"{DEPT}/NONE"), "TXT"),
                             (zone_of(CITY), "SOA"), (ident_name(W127), "A"),
                             (zone_of(DELEGATED), "TXT")):  # fmt: skip
            for use_edns in (False, 0):
                q = dns.message.make_query(qname, qtype, use_edns=use_edns).to_wire()
                for _ in range(2):  # a miss, then a hit
                    assert signed.raw(q) == plain.raw(q), (qname, qtype)


def test_positive_answer_chain(signed: DnsHarness) -> None:
    r = query(signed, ident_name(W127), "TXT")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert r.ednsflags & dns.flags.DO
    sig = r.find_rrset(r.answer, dns.name.from_text(ident_name(W127)), dns.rdataclass.IN,
                       dns.rdatatype.RRSIG, dns.rdatatype.TXT)  # fmt: skip
    assert sig[0].signer == dns.name.from_text(zone_of(DEPT)) and sig[0].algorithm == 15
    assert sig[0].inception < time.time() < sig[0].expiration
    assert validate_all(signed, r, zone_of(DEPT)) == 1
    # The chain: each zone's DS, from its parent's zone, matches its DNSKEY.
    chain = [APEX + ".", f"ma.{APEX}.", zone_of(ROOT), zone_of(CITY), zone_of(DEPT)]
    for parent, child in itertools.pairwise(chain):
        r = query(signed, child, "DS")
        if child == f"ma.{APEX}.":  # an empty non-terminal of the apex zone: no DS
            assert not r.answer and r.rcode() == dns.rcode.NOERROR
            assert validate_all(signed, r, parent) == 2  # SOA and NSEC
            continue
        real_parent = APEX + "." if child == zone_of(ROOT) else parent
        assert validate_all(signed, r, real_parent) == 1
        keys = dnskey_of(signed, child)
        want = dns.dnssec.make_ds(child, next(iter(keys.values()))[0], "SHA256")
        assert r.answer[0][0] == want
    # CDS and CDNSKEY at each apex say the same.
    cds = query(signed, zone_of(CITY), "CDS")
    assert cds.answer[0][0].digest == query(signed, zone_of(CITY), "DS").answer[0][0].digest
    cdnskey = query(signed, zone_of(CITY), "CDNSKEY").answer[0][0]
    assert cdnskey.key == KEY.public_key


def nsec_of(r: dns.message.Message, qname: str) -> dns.rrset.RRset:
    return r.find_rrset(r.authority, dns.name.from_text(qname), dns.rdataclass.IN,
                        dns.rdatatype.NSEC)  # fmt: skip


def bitmap(nsec: dns.rrset.RRset) -> set[str]:
    return set(nsec[0].to_text().split()[1:])


def test_compact_denial(signed: DnsHarness) -> None:
    # NXDOMAIN: NOERROR, one NSEC at the name covering only it, types RRSIG NSEC NXNAME.
    missing = ident_name(f"{DEPT}/NOSUCH")
    r = query(signed, missing, "TXT")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    nsec = nsec_of(r, missing)
    assert nsec[0].next == dns.name.from_text("\\000." + missing)
    assert bitmap(nsec) == {"RRSIG", "NSEC", "NXNAME"}
    assert validate_all(signed, r, zone_of(DEPT)) == 2
    # NODATA at an identifier: the types it has.
    r = query(signed, ident_name(W127), "A")
    assert bitmap(nsec_of(r, ident_name(W127))) == {"TXT", "URI", "NAPTR", "RRSIG", "NSEC"}
    assert validate_all(signed, r, zone_of(DEPT)) == 2
    r = query(signed, ident_name(MEDIUM), "URI")
    assert bitmap(nsec_of(r, ident_name(MEDIUM))) == {"TXT", "RRSIG", "NSEC"}
    # NODATA at a node apex, and at an empty non-terminal of the apex zone.
    r = query(signed, zone_of(CITY), "AAAA")
    assert bitmap(nsec_of(r, zone_of(CITY))) >= {"SOA", "NS", "DNSKEY", "TXT", "URI"}
    assert validate_all(signed, r, zone_of(CITY)) == 2
    r = query(signed, f"ma.{APEX}.", "TXT")
    assert bitmap(nsec_of(r, f"ma.{APEX}.")) == {"RRSIG", "NSEC"}
    assert validate_all(signed, r, APEX + ".") == 2


def test_referral_proves_an_insecure_delegation(signed: DnsHarness) -> None:
    cut = zone_of(DELEGATED)
    r = query(signed, ident_name(f"{DELEGATED}/W1"), "TXT")
    assert not r.flags & dns.flags.AA and not r.answer
    nsec = nsec_of(r, cut)
    assert bitmap(nsec) == {"NS", "RRSIG", "NSEC"}  # no DS: insecure
    assert validate_all(signed, r, zone_of(ROOT)) == 1  # the NSEC; NS is not signed
