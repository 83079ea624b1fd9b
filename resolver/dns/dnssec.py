"""DNSSEC for the DNS front: online signing with Ed25519 (RFC 8080), compact denial.

Formats are pure functions here (DNSKEY, DS, NSEC, RRSIG RDATA in wire form, as
:mod:`resolver.dns.answers` builds every other RR); :class:`resolver.dns.signer.Signer`
is the stateful piece: it holds the private key, the clock and a memo of the
signatures of RRsets that recur (SOA, NS, DNSKEY, DS...).

* **One key per deployment** (a combined signing key, flags 257: SEP), the
  same ``SigningKey`` file format and 0600 custody as every other key
  (:mod:`cityid.keys`). Every zone served here (the apex and each node apex)
  publishes it as DNSKEY, with CDS and CDNSKEY; the parent zone of each node
  apex answers DS for it, so a validator walks from the apex's trust anchor
  down through the node zones.
* **Online signing**: an answer is signed when it is computed, and cached
  signed beside its unsigned twin. The RRSIG is built by hand (RFC 4034 §3.1,
  §6: canonical RRs sorted by RDATA); the tests check it against dnspython's
  ``dns.dnssec.validate``, delv and unbound, and byte for byte against
  dnspython's ``dns.dnssec.sign`` (Ed25519 signatures are deterministic).
  Inception an hour in the past (clock skew), expiration a week ahead plus up
  to a day of jitter, so answers computed together do not expire together;
  memoised signatures are made again once half their life is gone, and a
  signed answer is cached at most a day (:data:`SIGNED_CACHE_TTL`), so
  nothing stale is ever served.
* **Authenticated denial: compact denial of existence** (RFC 9824). A
  negative answer holds one NSEC, owned by the question name, whose next name
  is the name's immediate successor (``\\000.<qname>``), so it covers nothing
  else: no zone walking, nothing computed ahead per name. NODATA lists the
  types that exist at the name; a name that does not exist lists only RRSIG,
  NSEC and NXNAME, with RCODE NOERROR (RFC 9824 §3.2: the NXDOMAIN RCODE would
  contradict the NSEC that proves the name's type set).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import nacl.signing

#: One resource record, as :mod:`resolver.dns.answers` builds them: owner (wire, lower
#: case), type, TTL, RDATA.
RR = tuple[bytes, int, int, bytes]

ED25519 = 15  # the DNSSEC algorithm number (RFC 8080)
DS, RRSIG, NSEC, DNSKEY, CDS, CDNSKEY = 43, 46, 47, 48, 59, 60
NXNAME = 128  # RFC 9824: the name does not exist
SHA256 = 2  # DS digest type (RFC 4509)
SEP = 257  # DNSKEY flags: zone key, secure entry point


# -- formats (pure) -------------------------------------------------------------------------


def dnskey_rdata(public_key: bytes, flags: int = SEP) -> bytes:
    """DNSKEY RDATA (RFC 4034 §2.1): flags, protocol 3, algorithm, public key."""
    return struct.pack("!HBB", flags, 3, ED25519) + public_key


def key_tag(dnskey: bytes) -> int:
    """RFC 4034 Appendix B."""
    acc = 0
    for i, b in enumerate(dnskey):
        acc += b if i & 1 else b << 8
    acc += (acc >> 16) & 0xFFFF
    return acc & 0xFFFF


def ds_rdata(owner: bytes, dnskey: bytes) -> bytes:
    """DS RDATA (RFC 4034 §5.1.4) for the DNSKEY at ``owner`` (wire, lower case), SHA-256."""
    digest = hashlib.sha256(owner + dnskey).digest()
    return struct.pack("!HBB", key_tag(dnskey), ED25519, SHA256) + digest


def type_bitmap(types: Iterable[int]) -> bytes:
    """The type bit maps field of NSEC (RFC 4034 §4.1.2)."""
    windows: dict[int, bytearray] = {}
    for t in sorted(set(types)):
        bits = windows.setdefault(t >> 8, bytearray(32))
        bits[(t & 0xFF) >> 3] |= 0x80 >> (t & 7)
    out = bytearray()
    for w in sorted(windows):
        bits = windows[w].rstrip(b"\x00")
        out += bytes((w, len(bits))) + bits
    return bytes(out)


def nsec_rr(owner: bytes, types: Iterable[int], ttl: int) -> RR:
    """A compact-denial NSEC: next name ``\\000.<owner>``, covering no other name."""
    return (owner, NSEC, ttl, b"\x01\x00" + owner + type_bitmap((*types, RRSIG, NSEC)))


def label_count(wire: bytes) -> int:
    n = i = 0
    while wire[i]:
        n += 1
        i += 1 + wire[i]
    return n


def rrsig_rr(
    rrs: Sequence[RR],
    signer: bytes,
    key: nacl.signing.SigningKey,
    tag: int,
    inception: int,
    expiration: int,
) -> RR:
    """The RRSIG over the RRset ``rrs`` (one owner, type and TTL; names in canonical,
    lower-case wire form, as :mod:`resolver.dns.answers` makes every RR)."""
    owner, rtype, ttl, _ = rrs[0]
    head = struct.pack("!HBBIIIH", rtype, ED25519, label_count(owner), ttl,
                       expiration & 0xFFFFFFFF, inception & 0xFFFFFFFF, tag) + signer  # fmt: skip
    fixed = owner + struct.pack("!HHI", rtype, 1, ttl)  # class IN
    signed = head + b"".join(
        fixed + len(rd).to_bytes(2, "big") + rd for rd in sorted({rr[3] for rr in rrs})
    )
    return (owner, RRSIG, ttl, head + key.sign(signed).signature)


# -- the key ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """The public half of the deployment's signing key, as the zones publish it."""

    public_key: bytes
    dnskey: bytes = field(init=False)
    tag: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "dnskey", dnskey_rdata(self.public_key))
        object.__setattr__(self, "tag", key_tag(self.dnskey))

    def ds(self, owner: bytes) -> bytes:
        return ds_rdata(owner, self.dnskey)

    def ds_text(self, owner: bytes) -> str:
        """``TAG 15 2 HEX``: the DS RDATA for ``owner`` (wire) in presentation form."""
        return f"{self.tag} {ED25519} {SHA256} {self.ds(owner)[4:].hex().upper()}"


def ds_record(apex: str, key: ZoneKey) -> str:
    """The apex's DS in zone-file form: for the parent zone, or a validator's trust anchor
    (unbound's ``trust-anchor:``)."""
    owner = apex.strip(".").lower() + "."
    wire = b"".join(bytes((len(x),)) + x.encode() for x in owner.split(".")[:-1]) + b"\x00"
    return f"{owner} IN DS {key.ds_text(wire)}"


def anchor_file(apex: str, *keys: ZoneKey) -> str:
    """A BIND ``trust-anchors`` file for the apex, as ``delv -a FILE +root=APEX`` reads it
    (several keys during a roll: any of them validates)."""
    lines = []
    for key in keys:
        owner, _, _, ds = ds_record(apex, key).split(" ", 3)
        tag, alg, digest_type, digest = ds.split()
        lines.append(f'    {owner} static-ds {tag} {alg} {digest_type} "{digest}";\n')
    owner = apex.strip(".").lower() + "."
    return (
        f"# The DNSSEC trust anchor of {owner} (its DS); see docs/dns.md#dnssec\n"
        f"trust-anchors {{\n{''.join(lines)}}};\n"
    )


__all__ = [
    "CDNSKEY",
    "CDS",
    "DNSKEY",
    "DS",
    "ED25519",
    "NSEC",
    "NXNAME",
    "RRSIG",
    "SEP",
    "ZoneKey",
    "anchor_file",
    "dnskey_rdata",
    "ds_rdata",
    "ds_record",
    "key_tag",
    "label_count",
    "nsec_rr",
    "rrsig_rr",
    "type_bitmap",
]
