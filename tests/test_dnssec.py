"""DNSSEC on the DNS front: signed answers checked by dnspython, delv and unbound.

Real servers on free loopback ports over the session's Valkey (the harness of
``tests/test_dns.py``), real validators: dnspython's ``dns.dnssec.validate`` for
every RRset, ``delv`` against the trust anchor, and ``unbound`` as a validating
resolver with stub zones pointing at cityid (AD for good answers, SERVFAIL for a
tampered signature, an expired one and a wrong key).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.dnssec
import dns.exception
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
    answering,
    prefix_change,
    record,
)

from cityid.errors import CityIdError
from cityid.keys import SigningKey
from resolver.dns.dnssec import RR, ZoneKey, anchor_file, rrsig_rr
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
    # Asked for, the NSEC is the answer (it exists: its own bit map says so).
    r = query(signed, ident_name(W127), "NSEC")
    assert [rr.rdtype for rr in r.answer] == [dns.rdatatype.NSEC, dns.rdatatype.RRSIG]
    assert validate_all(signed, r, zone_of(DEPT)) == 1


def test_referral_proves_an_insecure_delegation(signed: DnsHarness) -> None:
    cut = zone_of(DELEGATED)
    r = query(signed, ident_name(f"{DELEGATED}/W1"), "TXT")
    assert not r.flags & dns.flags.AA and not r.answer
    nsec = nsec_of(r, cut)
    assert bitmap(nsec) == {"NS", "RRSIG", "NSEC"}  # no DS: insecure
    assert validate_all(signed, r, zone_of(ROOT)) == 1  # the NSEC; NS is not signed


# -- validators: delv and unbound --------------------------------------------------------------

needs_delv = pytest.mark.skipif(
    DELV is None, reason="delv is missing: apt-get install bind9-dnsutils (Debian)"
)
needs_unbound = pytest.mark.skipif(
    UNBOUND is None, reason="unbound is missing: scripts/install-test-tools.sh"
)


def delv(h: DnsHarness, anchor: Path, qtype: str, qname: str) -> str:
    assert DELV is not None
    out = subprocess.run(
        [DELV, "@127.0.0.1", "-p", str(h.port), "-a", str(anchor), f"+root={APEX}",
         "-t", qtype, qname],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return out.stdout + out.stderr


@needs_delv
def test_delv_validates_against_the_trust_anchor(signed: DnsHarness, tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.conf"
    anchor.write_text(anchor_file(APEX, ZoneKey(KEY.public_key)))
    out = delv(signed, anchor, "TXT", ident_name(W127))
    assert out.startswith("; fully validated"), out
    assert "RRSIG TXT 15 7 300" in out
    out = delv(signed, anchor, "A", ident_name(W127))  # NODATA
    assert out.startswith("; negative response, fully validated"), out
    assert "NXRRSET" in out
    out = delv(signed, anchor, "TXT", ident_name(f"{DEPT}/NOSUCH"))  # no such name
    assert out.startswith("; negative response, fully validated"), out
    assert "TYPE128" in out or "NXNAME" in out  # compact denial: the name does not exist
    # A key the zones do not have: nothing validates.
    other = tmp_path / "other.conf"
    other.write_text(anchor_file(APEX, ZoneKey(SigningKey.generate("x").public_key)))
    out = delv(signed, other, "TXT", ident_name(W127))
    assert "fully validated" not in out and "resolution failed" in out, out


class _Tampering(Signer):
    """Signs as it should, then flips a bit of every TXT signature."""

    def rrsig(self, rrs: list[RR], signer: bytes) -> RR:  # type: ignore[override]
        sig = super().rrsig(rrs, signer)
        if rrs[0][1] == dns.rdatatype.TXT:
            return (*sig[:3], sig[3][:-1] + bytes((sig[3][-1] ^ 1,)))
        return sig


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def unbound(zones: dict[str, tuple[str, str]], tmp: Path) -> Iterator[int]:
    """A validating unbound on a free loopback port: ``zones`` maps an apex to the
    address of its cityid server (port 53) and its trust anchor (a DS line)."""
    assert UNBOUND is not None
    port = free_port()
    conf = tmp / "unbound.conf"
    lines = [
        "server:",
        f"    interface: 127.0.0.1@{port}",
        f"    port: {port}",
        "    do-daemonize: no",
        '    username: ""',
        '    chroot: ""',
        f'    directory: "{tmp}"',
        f'    pidfile: "{tmp}/unbound.pid"',
        "    use-syslog: no",
        f'    logfile: "{tmp}/unbound.log"',
        "    verbosity: 1",
        "    val-log-level: 2",
        "    do-not-query-localhost: no",
        "    do-ip6: no",
        '    module-config: "validator iterator"',
        "    access-control: 127.0.0.0/8 allow",
        "    num-threads: 1",
        "    msg-cache-size: 1m",
        "    rrset-cache-size: 1m",
        "    infra-cache-numhosts: 100",
        '    local-zone: "test." nodefault',  # RFC 6761 names are answered locally by default
        '    local-zone: "unbound-probe." static',  # answered at once: tells it is up
    ]
    lines += [f'    trust-anchor: "{ds}"' for _, ds in zones.values()]
    for apex, (addr, _) in zones.items():
        lines += ["stub-zone:", f'    name: "{apex}"', f"    stub-addr: {addr}@53"]
    # Nothing leaves the machine: the root is a closed local port.
    lines += ["stub-zone:", '    name: "."', "    stub-addr: 127.0.0.1@9"]
    conf.write_text("\n".join(lines) + "\n")
    check = subprocess.run([str(Path(UNBOUND).parent / "unbound-checkconf"), str(conf)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    with answering(proc, port, "unbound-probe.", "unbound", 20):
        yield port


@needs_unbound
def test_unbound_validates_and_rejects(valkey_url: str, tmp_path: Path) -> None:
    from resolver.dns.dnssec import ds_record

    anchor = ds_record  # one DS line per apex, as `cityid up` prints it
    good_key = ZoneKey(KEY.public_key)
    wrong = SigningKey.generate("wrong")
    servers = {
        "good.test": (Signer(KEY), anchor("good.test", good_key)),
        "tampered.test": (_Tampering(KEY), anchor("tampered.test", good_key)),
        "expired.test": (
            Signer(KEY, clock=time.time() - 30 * 86400),
            anchor("expired.test", good_key),
        ),
        "wrongkey.test": (Signer(wrong), anchor("wrongkey.test", good_key)),
    }
    # unbound follows each zone's NS set to its address, on port 53: each server gets a
    # loopback address of its own (the NS glue), as a real deployment would.
    base = f"127.53.{os.getpid() % 250}"
    with contextlib.ExitStack() as stack:
        zones = {}
        for i, (apex, (signer, ds)) in enumerate(servers.items(), 1):
            try:
                h = stack.enter_context(
                    DnsHarness(valkey_url, signer=signer, apex=apex, host=f"{base}.{i}", port=53)
                )
            except (OSError, CityIdError) as e:
                pytest.skip(f"cannot listen on {base}.{i}:53 (not root?): {e}")
            zones[apex] = (h.host, ds)
        port = stack.enter_context(unbound(zones, tmp_path))

        def ask(qname: str, qtype: str = "TXT") -> dns.message.Message:
            q = dns.message.make_query(qname, qtype, want_dnssec=True)
            return dns.query.udp(q, "127.0.0.1", port=port, timeout=10)

        r = ask(ident_name(W127, "good.test"))
        assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AD, r
        assert any(rr.rdtype == dns.rdatatype.TXT for rr in r.answer)
        for qname, qtype in ((ident_name(W127, "good.test"), "A"),
                             (ident_name(f"{DEPT}/NOSUCH", "good.test"), "TXT"),
                             (zone_of(CITY, "good.test"), "SOA")):  # fmt: skip
            r = ask(qname, qtype)
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AD, (qname, r)
        for apex in ("tampered.test", "expired.test", "wrongkey.test"):
            r = ask(ident_name(W127, apex))
            assert r.rcode() == dns.rcode.SERVFAIL and not r.answer, (apex, r)
        log = (tmp_path / "unbound.log").read_text()
        assert "signature crypto failed" in log or "validation failure" in log


# -- a child zone signed elsewhere: its DS from the delegation ------------------------------

SIGNED_ELSEWHERE = "MA.156.1304"
CHILD_KEY = ZoneKey(SigningKey.generate("child").public_key)


def test_ds_from_the_delegation(signed: DnsHarness) -> None:
    cut = zone_of(SIGNED_ELSEWHERE)
    ds_text = CHILD_KEY.ds_text(dns.name.from_text(cut).to_wire())
    rec = record(("NS", "ns1.city4.example 192.0.2.4"), ("DS", ds_text.lower()))

    async def delegate() -> None:
        assert signed.server is not None
        w = signed.server.store.writer()
        await w.prepare()
        await w.apply([prefix_change(SIGNED_ELSEWHERE, rec, 20)])

    signed.call(delegate())
    deadline = time.monotonic() + 5
    while True:  # until sync's invalidation reaches the server
        r = query(signed, ident_name(f"{SIGNED_ELSEWHERE}/W1"), "TXT")
        if r.authority or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # The referral carries the child's DS, signed by the parent (the root zone).
    assert not r.flags & dns.flags.AA
    ds = r.find_rrset(r.authority, dns.name.from_text(cut), dns.rdataclass.IN, dns.rdatatype.DS)
    assert ds[0].to_text().upper() == ds_text
    assert validate_all(signed, r, zone_of(ROOT)) == 1
    # Asked at the cut, the parent answers it with authority.
    r = query(signed, cut, "DS")
    assert r.flags & dns.flags.AA and r.answer[0][0].to_text().upper() == ds_text
    assert validate_all(signed, r, zone_of(ROOT)) == 1
    # Without DO, the referral is as it always was: no DS.
    plain = signed.udp(ident_name(f"{SIGNED_ELSEWHERE}/W1"), "TXT")
    assert [rr.rdtype for rr in plain.authority] == [dns.rdatatype.NS]


def test_delegate_ds_is_checked_before_anything_is_sent(tmp_path: Path) -> None:
    from registrar_harness import cli

    key = tmp_path / "k.key"
    SigningKey.generate("k").write(key)
    child = tmp_path / "c.vkey"
    child.write_text(str(SigningKey.generate("c").verifier) + "\n")
    dead = "http://127.0.0.1:9"  # never reached: the arguments are refused first
    base = ["prefix", "delegate", "MA.156.1309", "--key", str(key), "--child-key", str(child),
            "--registrar", dead]  # fmt: skip
    for extra, rule in (
        (["--ds", "1 15 2 ABCD", "--ns", "ns1.x.example"], "ds-syntax"),  # a short digest
        (["--ds", "1 15 9 " + "AB" * 32, "--ns", "ns1.x.example"], "ds-syntax"),
        (["--ds", "1 15 2 " + "AB" * 32], "usage"),  # no --ns: served here, its DS is ours
    ):
        res = cli(*base, *extra)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"[rule: {rule}]" in res.stderr, res.stderr


def test_ds_value_is_checked_and_canonical() -> None:
    from cityid.errors import RecordError
    from cityid.records import Value

    v = Value.make(1, "ds", "  27282 15 2 " + "ab" * 16 + " " + "CD" * 16, 3600, 1_700_000_000)
    assert (v.type, v.data) == ("DS", "27282 15 2 " + "AB" * 16 + "CD" * 16)
    for bad in ("", "1 15 2", "x 15 2 " + "AB" * 32, "70000 15 2 " + "AB" * 32,
                "1 0 2 " + "AB" * 32, "1 15 2 " + "AB" * 31, "1 15 2 " + "ZZ" * 32,
                "1 15 3 " + "AB" * 32):  # fmt: skip
        with pytest.raises(RecordError) as e:
            Value.make(1, "DS", bad, 3600, 1_700_000_000)
        assert e.value.rule == "ds-syntax", bad


def test_signed_answers_are_cached_and_kept_apart(signed: DnsHarness) -> None:
    srv = signed.server
    assert srv is not None and srv.signer is not None
    qname = ident_name(f"{DEPT}/MEDIUM")
    key = dns.name.from_text(qname).to_wire() + b"\x00\x10"  # TXT
    first = query(signed, qname, "TXT")
    made = srv.signer.signatures
    for _ in range(3):  # answered from the signed cache: no signature made again
        q = dns.message.make_query(qname, "TXT", want_dnssec=True, payload=4096)
        r = dns.query.udp(q, "127.0.0.1", port=signed.port, timeout=3)
        assert r.answer == first.answer
        r = dns.query.tcp(q, "127.0.0.1", port=signed.port, timeout=3)
        assert r.answer == first.answer
    assert srv.signer.signatures == made

    async def entries() -> tuple[bool, bool]:
        return srv.caches[0].get(key) is not None, srv.caches[1].get(key) is not None

    assert signed.call(entries()) == (False, True)  # only the signed one was asked for
    assert len(signed.udp(qname, "TXT").answer) == 1  # unsigned: the TXT RRset alone
    assert signed.call(entries()) == (True, True)


def test_signature_times_jitter_and_resigning() -> None:
    from resolver.dns.signer import INCEPTION_SKEW, JITTER, VALIDITY

    t = 1_800_000_000
    signer = Signer(KEY, clock=t)
    soa: RR = (b"\x04zone\x00", 6, 60, b"\x00" * 22)
    txts = [[(b"\x01" + bytes((97 + i,)) + b"\x04zone\x00", 16, 60, b"\x01x")] for i in range(50)]
    expirations = set()
    for rrs in txts:  # data RRsets: signed each time, each with its own expiry
        rd = signer.rrsig(rrs, soa[0])[3]  # type covered, alg, labels, TTL, expiration, ...
        inception, expiration = int.from_bytes(rd[12:16]), int.from_bytes(rd[8:12])
        assert inception == t - INCEPTION_SKEW
        assert t + VALIDITY <= expiration <= t + VALIDITY + JITTER
        expirations.add(expiration)
    assert len(expirations) > 40  # spread out: answers signed together expire apart
    first = signer.rrsig([soa], soa[0])
    signer.clock = t + VALIDITY // 2 - 10
    assert signer.rrsig([soa], soa[0]) is first  # the SOA's signature is kept...
    signer.clock = t + VALIDITY // 2 + JITTER
    again = signer.rrsig([soa], soa[0])
    assert again != first  # ...and made again once half its life is gone
    assert int.from_bytes(again[3][8:12]) > t + VALIDITY + VALIDITY // 2


def test_a_published_key_must_be_the_signing_one() -> None:
    from resolver.dns.answers import ZoneConfig
    from resolver.dns.server import DnsServer

    signer = Signer(KEY)
    other = ZoneKey(SigningKey.generate("other").public_key)
    for key, who in ((signer.zone_key, None), (other, signer), (None, signer)):
        with pytest.raises(CityIdError):
            DnsServer(None, ZoneConfig.make(APEX, [ROOT], key=key), signer=who)  # type: ignore[arg-type]


def test_cli_signs_with_the_configs_key(signed: DnsHarness, tmp_path: Path) -> None:
    from registrar_harness import cli
    from test_dns import cli_server

    from resolver.config import ResolverConfig

    log_key = SigningKey.generate("root.test/log")
    KEY.write(tmp_path / "dnssec.key")
    cfg = ResolverConfig(
        root_log_url="http://127.0.0.1:9/log", root_log_key=str(log_key.verifier),
        root_prefix=ROOT, root_prefix_key=str(log_key.verifier), dnssec_key="dnssec.key",
    )  # fmt: skip
    path = cfg.save(tmp_path)
    assert ResolverConfig.load(path).dnssec_key_path() == str(tmp_path / "dnssec.key")
    nxt = SigningKey.generate("next")
    nxt.write(tmp_path / "next.key")
    both = [KEY.public_key, nxt.public_key]
    for extra, keys in (([], [KEY.public_key]),
                        (["--dnssec-next-key", str(nxt.verifier)], both),
                        (["--dnssec-next-key", str(tmp_path / "next.key")], both)):  # fmt: skip
        with cli_server(signed.url, "--config", str(path), "--rrl-rate", "0", *extra) as port:
            q = dns.message.make_query(zone_of(CITY), "DNSKEY", want_dnssec=True)
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
            assert sorted(rd.key for rd in r.answer[0]) == sorted(keys)
            assert r.answer[1].rdtype == dns.rdatatype.RRSIG and len(r.answer[1]) == 1
    # A key file that others may read, or none: refused before anything starts.
    (tmp_path / "dnssec.key").chmod(0o644)
    for key_arg, rule in ((str(tmp_path / "dnssec.key"), "key-permissions"),
                          (str(tmp_path / "none.key"), "key-file")):  # fmt: skip
        res = cli("resolver", "dns", "serve", "--config", str(path), "--redis", signed.url,
                  "--dnssec-key", key_arg)  # fmt: skip
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"[rule: {rule}]" in res.stderr and "key file" in res.stderr, res.stderr


@needs_delv
def test_key_roll(valkey_url: str, tmp_path: Path) -> None:
    # A double-DS roll with the next key published first: at each step, validators that
    # hold the anchors of that step validate.
    old, new = KEY, SigningKey.generate("dnssec-next")
    zold, znew = ZoneKey(old.public_key), ZoneKey(new.public_key)
    anchors = {}
    for label, keys in (("old", (zold,)), ("both", (zold, znew)), ("new", (znew,))):
        anchors[label] = tmp_path / f"{label}.conf"
        anchors[label].write_text(anchor_file(APEX, *keys))
    steps = (
        (Signer(old), (znew,), {"old": True, "both": True, "new": False}),  # 1. publish new
        (Signer(new), (zold,), {"old": False, "both": True, "new": True}),  # 2. sign with new
        (Signer(new), (), {"old": False, "both": True, "new": True}),  # 3. retire old
    )
    for signer, published, validates in steps:
        with DnsHarness(valkey_url, signer=signer, next_keys=published) as h:
            keys = query(h, zone_of(DEPT), "DNSKEY")
            assert len(keys.answer[0]) == 1 + len(published)
            assert len(query(h, zone_of(DEPT), "DS").answer[0]) == 1 + len(published)
            for label, ok in validates.items():
                out = delv(h, anchors[label], "TXT", ident_name(W127))
                assert out.startswith("; fully validated") == ok, (label, out)
