"""DNS answers from records: pure functions, no I/O.

The namespace (DESIGN.md §2): ``suffix.nodeN...node1.<apex>``. The resolver
is authoritative for the apex and for every prefix below a configured root
(the trust anchor, ``MA.156``) whose record does not name other name servers;
each such prefix is a *node apex* with its own SOA and NS. A prefix whose
record has ``NS`` values, none of them this resolver, is delegated: names at
and below it get a referral (NS in authority, glue in additional, no AA).

A query goes through two steps, so the I/O in between stays in the shell:

1. :func:`plan` reads the name: outside the apex (REFUSED), the apex and the
   empty non-terminals above a root (NODATA), a name under no root (NXDOMAIN),
   this resolver's own name-server hosts (A/AAAA), or a :class:`Lookup`: the
   prefixes to fetch (every node from the root down, since delegations chain
   from the root without gaps: ``cityid.authority`` refuses a child whose
   parent is not delegated) and the identifier the first label would be.
2. :func:`decide` takes what the store said and walks down from the root: the
   first delegated prefix answers with a referral; otherwise the deepest
   existing prefix is the zone, and the name is its apex, an identifier in
   it, or nothing (NXDOMAIN). The registrar never lets a suffix and a child
   node share a name, so one label is never both.

Record values become RRsets (one TTL per RRset, RFC 2181 §5.2: the smallest
of its values, capped by the configured TTL, so a change reaches downstream
caches within that time):

* TXT: one RR per value, ``TYPE=data`` (structured data as compact JSON),
  split into character-strings of at most 255 octets, never inside a UTF-8
  sequence.
* URI (RFC 7553) for ``URL`` values: priority = value index (lower first, as
  the Handle proxy redirects to the first URL), weight 1.
* NAPTR (RFC 3403) for each ``<location href>`` of ``10320/LOC`` values:
  order = value index, preference = position in the list, flags ``U``,
  service ``E2U+web:http`` or ``E2U+web:https`` (RFC 6118's enumservice),
  regexp ``!^.*$!href!``. A location whose regexp would not fit in one
  character-string is left out (it is still in the TXT answer).

Negative answers carry the zone's SOA in authority with TTL = min(SOA TTL,
SOA minimum) (RFC 2308 §3); ``negative_ttl`` is the SOA minimum.

Wire format: RRs are built here as ``(owner, type, ttl, rdata)`` with names in
uncompressed wire form, and :func:`encode` lays out the message after the
question once per (name, type). Owner names equal to the question name or to
one of its ancestors (the zone apex of an SOA) are compressed to a pointer
into the question; names inside RDATA are left uncompressed (always legal).
The server then answers a repeat by patching ID and flags and splicing the
client's own question (its case, for 0x20 resolvers) in front of bytes it
already has. This does by hand what dnspython would (its rdata and renderer
objects cost ~350 µs a miss, ten times this); the tests parse every answer
with dnspython and compare RDATA with its encoders.
"""

from __future__ import annotations

import ipaddress
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from xml.etree import ElementTree

import dns.name

from cityid.identifiers import MAX_NODES, Prefix
from cityid.records import Record, Value

from ..store import Entry
from .dnssec import CDNSKEY, CDS, DNSKEY, ZoneKey

IN, CH = 1, 3
A, NS, SOA, TXT, AAAA, NAPTR, OPT, DS, URI = 1, 2, 6, 16, 28, 35, 41, 43, 256
IXFR, AXFR, MAILB, MAILA, ANY, TKEY, TSIG = 251, 252, 253, 254, 255, 249, 250
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, NOTAUTH = 0, 1, 2, 3, 4, 5, 9
MAX_STRING = 255  # octets in one DNS character-string (RFC 1035 §3.3)
MAX_MESSAGE = 65535  # a TCP-framed message

_NODE_LABEL = re.compile(rb"[0-9a-z]{1,63}")
_SUFFIX_LABEL = re.compile(rb"[0-9a-z_-]{1,63}")
_HOST = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")

#: One resource record: owner (uncompressed wire name, lower case), type, TTL, RDATA.
RR = tuple[bytes, int, int, bytes]


# -- names ----------------------------------------------------------------------------------


def wire_name(labels: Iterable[bytes]) -> bytes:
    """Uncompressed wire form of ``labels`` (leftmost first, without the root)."""
    return b"".join(bytes((len(x),)) + x for x in labels) + b"\x00"


def labels_of(wire: bytes) -> tuple[bytes, ...]:
    """The labels of an uncompressed wire name, without the root."""
    out = []
    i = 0
    while wire[i]:
        out.append(wire[i + 1 : i + 1 + wire[i]])
        i += 1 + wire[i]
    return tuple(out)


def host_wire(text: str, origin: tuple[bytes, ...] = ()) -> bytes:
    """A host name's wire form; relative names (no final dot) are under ``origin``,
    unless they already end with it (``ns1.cityid.test`` under ``cityid.test`` is meant
    as written, never as ``ns1.cityid.test.cityid.test``)."""
    if not _HOST.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a host name")
    labels = tuple(x.encode() for x in text.lower().rstrip(".").split("."))
    absolute = text.endswith(".") or not origin or labels[-len(origin) :] == origin
    full = labels if absolute else (*labels, *origin)
    out = wire_name(full)
    if len(out) > 255:
        raise ValueError(f"{text[:80]!r} is longer than 255 octets")
    return out


def text_name(wire: bytes) -> str:
    return ".".join(x.decode("ascii", "backslashreplace") for x in labels_of(wire)) + "."


# -- configuration ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameServer:
    """A name server: its host (wire form) and addresses (glue)."""

    host: bytes
    addrs: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, origin: tuple[bytes, ...] = ()) -> NameServer:
        """``host [addr ...]`` or ``host=addr,addr``; a relative host is under ``origin``."""
        parts = text.replace("=", " ").replace(",", " ").split()
        if not parts:
            raise ValueError("a name server is 'host [address ...]'")
        addrs = tuple(str(ipaddress.ip_address(a)) for a in parts[1:])
        return cls(host_wire(parts[0], origin), addrs)


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    """What this resolver is authoritative for, and how it says so."""

    apex: tuple[bytes, ...]  # labels, lower case, leftmost first
    roots: tuple[Prefix, ...]  # trust anchors: served zones that have no record
    nameservers: tuple[NameServer, ...]  # this resolver's own NS set
    hostmaster: bytes  # wire form of the SOA RNAME
    ttl: int = 300  # TTL of SOA and NS, and the cap on every other TTL
    negative_ttl: int = 60  # the SOA minimum: how long NXDOMAIN/NODATA may be cached
    refresh: int = 3600
    retry: int = 600
    expire: int = 1_209_600
    identity: str = ""  # the CH TXT id.server answer (RFC 4892); "" refuses it
    key: ZoneKey | None = None  # DNSSEC: every zone publishes it and answers DS for its children
    next_keys: tuple[ZoneKey, ...] = ()  # published beside it, not signing: a key roll
    apex_wire: bytes = field(default=b"", init=False)
    own_hosts: frozenset[bytes] = field(default=frozenset(), init=False)
    root_labels: tuple[tuple[Prefix, tuple[bytes, ...]], ...] = field(default=(), init=False)
    root_wires: frozenset[bytes] = field(default=frozenset(), init=False)
    # Memos of pure functions of this configuration, bounded, never part of equality:
    # what every name below one parent name shares (plan), the NS set of a prefix
    # record (decide), the negative answers of this second and the referrals.
    memo: dict[bytes, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    servers: dict[int, Any] = field(default_factory=dict, init=False, compare=False, repr=False)
    shared: dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "apex_wire", wire_name(self.apex))
        object.__setattr__(self, "own_hosts", frozenset(ns.host for ns in self.nameservers))
        roots = tuple((r, tuple(n.lower().encode() for n in reversed(r.nodes))) for r in self.roots)
        object.__setattr__(self, "root_labels", roots)
        object.__setattr__(self, "root_wires", frozenset(wire_name((*rl, *self.apex))
                                                         for _, rl in roots))  # fmt: skip

    @classmethod
    def make(
        cls,
        apex: str,
        roots: Iterable[str],
        nameservers: Sequence[str] = (),
        *,
        ttl: int = 300,
        negative_ttl: int = 60,
        hostmaster: str = "",
        identity: str = "",
        key: ZoneKey | None = None,
        next_keys: Sequence[ZoneKey] = (),
    ) -> ZoneConfig:
        """From text: ``nameservers`` default to ``ns1.<apex>`` at 127.0.0.1."""
        text = apex.strip().strip(".").lower()
        labels = tuple(dns.name.from_text(text).labels[:-1]) if text else ()
        if not 0 <= ttl <= 2**31 - 1 or not 0 <= negative_ttl <= 2**31 - 1:
            raise ValueError("TTLs are 0..2^31-1 seconds")
        ns = tuple(NameServer.parse(t, labels) for t in nameservers) or (
            NameServer(wire_name((b"ns1", *labels)), ("127.0.0.1",)),
        )
        return cls(
            apex=labels,
            roots=tuple(Prefix.parse(r) for r in roots),
            nameservers=ns,
            hostmaster=host_wire(hostmaster or "hostmaster", labels),
            ttl=ttl,
            negative_ttl=negative_ttl,
            identity=identity,
            key=key,
            next_keys=tuple(next_keys) if key is not None else (),
        )


# -- what a query becomes ------------------------------------------------------------------


class Answer(NamedTuple):
    """A response before encoding: rcode, AA and the three sections.

    ``zone`` names what the answer depends on, for invalidation: the prefix
    (canonical text) of the zone or referral it came from; ``""`` for answers
    that only a full reload changes (the apex, names under no root).
    ``cache`` is False for answers not worth keeping (errors). (A named tuple:
    one is made per cache miss, and a tuple is the cheapest immutable object.)

    For DNSSEC (:mod:`resolver.dns.signer`): ``signer`` is the wire name of the zone
    whose key signs it (for a referral, the parent's side of the cut); ``present``,
    for NODATA, the types that do exist at the name; ``ds``, for a referral, the DS
    RRset of the cut (none: the delegation is insecure).
    """

    rcode: int
    aa: bool
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    zone: str = ""
    cache: bool = True
    negative: bool = False
    signer: bytes = b""
    present: tuple[int, ...] = ()
    ds: tuple[RR, ...] = ()


class Lookup(NamedTuple):
    """What :func:`decide` needs from the store for one name (prefixes as canonical text)."""

    root: str
    prefixes: tuple[str, ...]  # root + 1 node, root + 2 nodes, ...: fetch every one
    parent: str  # the prefix an identifier named by the first label would be under
    suffix: str | None  # that identifier's suffix, if the first label is a well-formed one
    ident: str | None  # PARENT/SUFFIX, if the first label is a well-formed suffix
    depth: int  # labels between the name and the root
    qname: bytes  # wire form, lower case


def error(rcode: int) -> Answer:
    return Answer(rcode, False, cache=False)


class _Under(NamedTuple):
    """A name at or below a root, as every name directly below it sees it."""

    root: str
    prefixes: tuple[str, ...]  # its own prefix chain from the root down (as plan lists them)
    text: str  # the name as a prefix, if every label below the root is a node; else ""
    depth: int  # labels between it and the root
    extendable: bool  # a child's label may be one more node (MAX_NODES)


_NOT_UNDER = _Under("", (), "", -1, False)
_MEMO_MAX = 100_000


def plan(qname: bytes, qtype: int, cfg: ZoneConfig, serial: int) -> Answer | Lookup:
    """Read a lower-case owner name (uncompressed wire form).

    The common case, a name whose parent is at or below a root, reads only its
    first label: what its parent contributes (:class:`_Under`) is worked out once
    per parent name and kept in ``cfg.memo``.
    """
    special = _special_qtype(qtype)
    if special is not None:
        return special
    n = qname[0]
    if n and qname not in cfg.own_hosts and qname not in cfg.root_wires:
        memo = cfg.memo
        parent = qname[1 + n :]
        under = memo.get(parent)
        if under is None:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            under = memo[parent] = _under(parent, cfg)
        if under.depth >= 0:
            label = qname[1 : 1 + n]
            prefixes = under.prefixes
            text = under.text
            if not text or not _SUFFIX_LABEL.fullmatch(label):
                # No identifier: a label between the root and the parent is not a node,
                # or this one is not a suffix (nor a node).
                return Lookup(under.root, prefixes, "", None, None, under.depth + 1, qname)
            suffix = label.decode().upper()
            if under.extendable and _NODE_LABEL.fullmatch(label):
                prefixes = (*prefixes, f"{text}.{suffix}")
            return Lookup(under.root, prefixes, text, suffix, f"{text}/{suffix}",
                          under.depth + 1, qname)  # fmt: skip
    return _plan_name(qname, qtype, cfg, serial)


def _under(wire: bytes, cfg: ZoneConfig) -> _Under:
    """What a name at or below a root gives the names directly below it (else _NOT_UNDER)."""
    labels = labels_of(wire)
    apex = cfg.apex
    n = len(apex)
    if len(labels) < n or (n and labels[-n:] != apex):
        return _NOT_UNDER
    below = labels[: len(labels) - n] if n else labels
    best, best_len = _best_root(below, cfg)
    if best is None:
        return _NOT_UNDER
    extra = below[: len(below) - best_len]
    root = str(best)
    chain = _chain(root, best_len, extra)
    complete = len(chain) == len(extra)
    text = (chain[-1] if chain else root) if complete else ""
    extendable = complete and best_len + len(extra) + 1 <= MAX_NODES
    return _Under(root, chain, text, len(extra), extendable)


def _best_root(below: tuple[bytes, ...], cfg: ZoneConfig) -> tuple[Prefix | None, int]:
    """The deepest root at or above ``below`` (labels under the apex, leftmost first)."""
    best: Prefix | None = None
    best_len = 0
    for root, rl in cfg.root_labels:
        if len(below) >= len(rl) and below[len(below) - len(rl) :] == rl and len(rl) > best_len:
            best, best_len = root, len(rl)
    return best, best_len


def _chain(root: str, root_len: int, extra: tuple[bytes, ...]) -> tuple[str, ...]:
    """The prefixes below ``root`` that ``extra`` (labels, leftmost first) names, down to
    the first label that cannot be a node (nothing can exist at or below it)."""
    out: list[str] = []
    text = root
    for i, label in enumerate(reversed(extra)):
        if not _NODE_LABEL.fullmatch(label) or root_len + i + 1 > MAX_NODES:
            break
        text = f"{text}.{label.decode().upper()}"
        out.append(text)
    return tuple(out)


def _plan_name(qname: bytes, qtype: int, cfg: ZoneConfig, serial: int) -> Answer | Lookup:
    """:func:`plan` for any name: outside the apex, the apex, above or under no root..."""
    labels = labels_of(qname)
    apex = cfg.apex
    n = len(apex)
    if len(labels) < n or (n and labels[-n:] != apex):
        return error(REFUSED)
    below = labels[: len(labels) - n] if n else labels
    if qname in cfg.own_hosts:
        return _own_host(qname, qtype, cfg, serial)
    if not below:
        return _apex_answer(qname, cfg.apex_wire, None, qtype, cfg, serial, "", cfg.nameservers)
    best, best_len = _best_root(below, cfg)
    if best is None:
        # An empty non-terminal between the apex and a root, or nothing at all.
        above_root = any(
            len(below) < len(rl) and rl[len(rl) - len(below) :] == below
            for _, rl in cfg.root_labels
        )
        rcode = NOERROR if above_root else NXDOMAIN
        return _negative(rcode, cfg.apex_wire, cfg, serial, "", cfg.nameservers)
    root = str(best)
    extra = below[: len(below) - best_len]  # leftmost first
    if not extra:
        if qtype == DS and cfg.key is not None:
            return _ds_answer(qname, cfg.apex_wire, cfg, root)
        return _apex_answer(qname, qname, None, qtype, cfg, serial, root, cfg.nameservers)
    prefixes = _chain(root, best_len, extra)
    parent, suffix, ident = "", None, None
    if len(prefixes) >= len(extra) - 1 and _SUFFIX_LABEL.fullmatch(extra[0]):
        parent = root if len(extra) == 1 else prefixes[len(extra) - 2]
        suffix = extra[0].decode().upper()
        ident = f"{parent}/{suffix}"
    return Lookup(root, prefixes, parent, suffix, ident, len(extra), qname)


def ancestor(wire: bytes, count: int) -> bytes:
    """``wire`` without its first ``count`` labels."""
    i = 0
    for _ in range(count):
        i += 1 + wire[i]
    return wire[i:]


def decide(
    lookup: Lookup,
    qtype: int,
    prefixes: Sequence[Entry | None],
    ident: Entry | None,
    cfg: ZoneConfig,
    serial: int,
) -> Answer:
    """The answer for a :class:`Lookup`, given the store's entries for it."""
    zone = lookup.root
    record: Record | None = None
    ns: tuple[NameServer, ...] = cfg.nameservers
    found = 0
    qname = lookup.qname
    for depth, (prefix, entry) in enumerate(zip(lookup.prefixes, prefixes, strict=True), 1):
        if entry is None or entry.deleted or entry.record is None:
            break  # not delegated (or revoked): nothing at or below it
        servers, elsewhere = _servers(entry.record, cfg)
        if elsewhere:
            if depth == lookup.depth and qtype == DS:
                # DS lives on the parent's side of a cut (RFC 4035 §3.1.4.1); we have none.
                zname = ancestor(qname, lookup.depth - found)
                ds = ds_rrs(qname, entry.record, cfg.ttl)
                if ds:
                    return Answer(NOERROR, True, ds, zone=prefix, signer=zname)
                return _negative(NOERROR, zname, cfg, serial, zone, ns, (NS,))
            cut = ancestor(qname, lookup.depth - depth)
            parent = ancestor(qname, lookup.depth - found)
            return _referral(cut, entry.record, servers, cfg, prefix, parent)
        zone, record, found = prefix, entry.record, depth
        serial = zone_serial(entry)
        ns = servers or cfg.nameservers
    if found == lookup.depth:
        if qtype == DS and cfg.key is not None:  # the parent's side of the cut answers
            return _ds_answer(qname, qname[1 + qname[0] :], cfg, zone)
        return _apex_answer(qname, qname, record, qtype, cfg, serial, zone, ns)
    if (
        found == lookup.depth - 1
        and lookup.suffix is not None
        and ident is not None
        and not ident.deleted
        and ident.record is not None
    ):
        return _data_answer(qname, ident.record, qtype, cfg, serial, zone, None, ns)
    return _negative(NXDOMAIN, ancestor(qname, lookup.depth - found), cfg, serial, zone, ns)


def zone_serial(entry: Entry) -> int:
    """A served prefix's SOA serial: from the verified log, the leaf that last set its
    record (its index + 1, mod 2^32). One zone has one serial at a time, the same in
    every process and on every server that follows the same logs, and it moves only
    when the zone's own record changes, which invalidates every answer of the zone:
    an SOA answer and a negative answer given together always agree (and, signed,
    the SOA's signature stays valid while it is cached)."""
    return (entry.leaf_index + 1) & 0xFFFFFFFF


def _servers(record: Record, cfg: ZoneConfig) -> tuple[tuple[NameServer, ...], bool]:
    """A prefix record's NS set, and whether it names only other servers (a delegation).

    Memoised by record: a prefix record is read for every miss below it, and the
    same object stays in the server's prefix cache while it is current.
    """
    memo = cfg.servers
    got = memo.get(id(record))
    if got is not None and got[0] is record:
        return got[1], got[2]
    servers = nameservers(record)
    elsewhere = bool(servers) and not any(s.host in cfg.own_hosts for s in servers)
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[id(record)] = (record, servers, elsewhere)
    return servers, elsewhere


_ID_NAMES = (wire_name((b"id", b"server")), wire_name((b"hostname", b"bind")))


def identity_answer(qname: bytes, qtype: int, cfg: ZoneConfig) -> Answer:
    """CH TXT ``id.server`` / ``hostname.bind`` (RFC 4892): which server answered."""
    if not cfg.identity or qname not in _ID_NAMES or qtype not in (TXT, ANY):
        return error(REFUSED)
    rdata = _strings(cfg.identity.encode()[:MAX_STRING])
    return Answer(NOERROR, True, ((qname, TXT, 0, rdata),), cache=False)


def _special_qtype(qtype: int) -> Answer | None:
    if qtype in (OPT, TSIG, TKEY):
        return error(FORMERR)  # never a question (RFC 6891 §6.1.1, RFC 8945)
    if qtype in (AXFR, IXFR):
        return error(REFUSED)  # no zone transfers: the logs are how to copy the data
    if qtype in (MAILA, MAILB):
        return error(NOTIMP)
    return None


# -- building the sections -------------------------------------------------------------------


def soa_rr(zname: bytes, cfg: ZoneConfig, serial: int, mname: bytes, ttl: int) -> RR:
    fixed = struct.pack("!IIIII", serial & 0xFFFFFFFF, cfg.refresh, cfg.retry, cfg.expire,
                        cfg.negative_ttl)  # fmt: skip
    return (zname, SOA, ttl, mname + cfg.hostmaster + fixed)


def ns_rrs(owner: bytes, ns: Sequence[NameServer], ttl: int) -> tuple[RR, ...]:
    return tuple((owner, NS, ttl, s.host) for s in ns)


def _negative(
    rcode: int,
    zname: bytes,
    cfg: ZoneConfig,
    serial: int,
    zone: str,
    ns: Sequence[NameServer],
    present: tuple[int, ...] = (),
) -> Answer:
    # One object per zone, rcode and serial: a flood of names that do not exist
    # shares it, and :func:`encode` its wire form.
    key = (rcode, zname, serial, ns[0].host, zone, present)
    memo = cfg.shared
    got: Answer | None = memo.get(key)
    if got is None:
        ttl = min(cfg.ttl, cfg.negative_ttl)
        soa = soa_rr(zname, cfg, serial, ns[0].host, ttl)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        got = memo[key] = Answer(rcode, True, authority=(soa,), zone=zone, negative=True,
                                 signer=zname, present=present)  # fmt: skip
    return got


def _apex_answer(
    qname: bytes,
    zname: bytes,
    record: Record | None,
    qtype: int,
    cfg: ZoneConfig,
    serial: int,
    zone: str,
    ns: Sequence[NameServer],
) -> Answer:
    if qtype in (SOA, ANY):  # RFC 8482: ANY gets one RRset; the SOA says the most
        soa = soa_rr(zname, cfg, serial, ns[0].host, cfg.ttl)
        return Answer(NOERROR, True, (soa,), zone=zone, signer=zname)
    if qtype == NS:
        return Answer(NOERROR, True, ns_rrs(zname, ns, cfg.ttl), zone=zone, signer=zname)
    key = cfg.key
    if key is not None and qtype in (DNSKEY, CDS, CDNSKEY):
        rrs = tuple(
            (zname, qtype, cfg.ttl, k.ds(zname) if qtype == CDS else k.dnskey)
            for k in (key, *cfg.next_keys)
        )
        return Answer(NOERROR, True, rrs, zone=zone, signer=zname)
    present = (SOA, NS, *((DNSKEY, CDS, CDNSKEY) if key is not None else ()))
    if record is not None:
        return _data_answer(qname, record, qtype, cfg, serial, zone, zname, ns, present)
    return _negative(NOERROR, zname, cfg, serial, zone, ns, present)


def _ds_answer(qname: bytes, parent: bytes, cfg: ZoneConfig, zone: str) -> Answer:
    """The DS of a zone served here, from its parent zone (RFC 4035 §3.1.4.1)."""
    assert cfg.key is not None
    ds = tuple((qname, DS, cfg.ttl, k.ds(qname)) for k in (cfg.key, *cfg.next_keys))
    return Answer(NOERROR, True, ds, zone=zone, signer=parent)


def _data_answer(
    owner: bytes,
    record: Record,
    qtype: int,
    cfg: ZoneConfig,
    serial: int,
    zone: str,
    zname: bytes | None,  # the zone's name (None: the owner's parent)
    ns: Sequence[NameServer],
    present: tuple[int, ...] = (),  # the types at the owner besides the record's
) -> Answer:
    rrs: tuple[RR, ...] = ()
    if qtype in (TXT, ANY):
        rrs = txt_rrs(owner, record, cfg.ttl)
    elif qtype == URI:
        rrs = uri_rrs(owner, record, cfg.ttl)
    elif qtype == NAPTR:
        rrs = naptr_rrs(owner, record, cfg.ttl)
    zname = owner[1 + owner[0] :] if zname is None else zname
    if not rrs:
        types = (*present, *record_types(record)) if cfg.key is not None else ()
        return _negative(NOERROR, zname, cfg, serial, zone, ns, types)
    return Answer(NOERROR, True, rrs, (), (), zone, signer=zname)


def record_types(record: Record) -> tuple[int, ...]:
    """The RR types a record gives its name (for NSEC type bit maps)."""
    types = [TXT] if record.values else []
    if any(v.type == "URL" and isinstance(v.data, str) for v in record.values):
        types.append(URI)
    if naptr_rrs(b"\x00", record, 0):
        types.append(NAPTR)
    return tuple(types)


def _own_host(qname: bytes, qtype: int, cfg: ZoneConfig, serial: int) -> Answer:
    ns = next(s for s in cfg.nameservers if s.host == qname)
    rrs = address_rrs(qname, ns.addrs, qtype, cfg.ttl)
    if not rrs:
        types = tuple(t for t in (A, AAAA) if address_rrs(qname, ns.addrs, t, 0))
        return _negative(NOERROR, cfg.apex_wire, cfg, serial, "", cfg.nameservers, types)
    return Answer(NOERROR, True, rrs, signer=cfg.apex_wire)


def address_rrs(owner: bytes, addrs: Iterable[str], qtype: int, ttl: int) -> tuple[RR, ...]:
    out = []
    for a in addrs:
        ip = ipaddress.ip_address(a)
        if (qtype == A and ip.version == 4) or (qtype == AAAA and ip.version == 6):
            out.append((owner, qtype, ttl, ip.packed))
    return tuple(out)


def nameservers(record: Record) -> tuple[NameServer, ...]:
    """The ``NS`` values of a prefix record (``host [addr ...]``, hosts absolute)."""
    out = []
    for v in record.values:
        if v.type == "NS" and isinstance(v.data, str):
            try:
                host, *addrs = v.data.split()
                out.append(NameServer(host_wire(host.rstrip(".") + "."), tuple(addrs)))
            except ValueError:
                continue  # records.py checks NS syntax; a value it let through is skipped
    return tuple(out)


def _referral(
    cut: bytes, record: Record, ns: Sequence[NameServer], cfg: ZoneConfig, zone: str, parent: bytes
) -> Answer:
    # One object per delegation record (glue costs address parsing): every name below
    # the cut gets the same referral.
    key = (cut, id(record))
    memo = cfg.shared
    got = memo.get(key)
    if got is not None and got[0] is record:
        return got[1]  # type: ignore[no-any-return]
    answer = _make_referral(cut, record, ns, cfg, zone)._replace(
        signer=parent, ds=ds_rrs(cut, record, cfg.ttl)
    )
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = (record, answer)
    return answer


def _make_referral(
    cut: bytes, record: Record, ns: Sequence[NameServer], cfg: ZoneConfig, zone: str
) -> Answer:
    ttl = min([cfg.ttl, *(v.ttl for v in record.values if v.type == "NS")])
    glue: list[RR] = []
    apex = cfg.apex_wire
    for s in ns:
        # Only hosts in our own namespace: a resolver discards any other glue
        # (out of bailiwick), so it would only cost bytes.
        if not _is_subdomain(s.host, apex):
            continue
        for qtype in (A, AAAA):
            glue += address_rrs(s.host, s.addrs, qtype, ttl)
    return Answer(NOERROR, False, authority=ns_rrs(cut, ns, ttl), additional=tuple(glue),
                  zone=zone)  # fmt: skip


def ds_rrs(owner: bytes, record: Record, cap: int) -> tuple[RR, ...]:
    """The DS RRset of a cut from the delegation's ``DS`` values (``TAG ALG DIGEST-TYPE
    HEX``, as ``cityid prefix delegate --ds`` writes them; records.py checks them)."""
    values = [v for v in record.values if v.type == "DS" and isinstance(v.data, str)]
    if not values:
        return ()
    ttl = min([cap, *(v.ttl for v in values)])
    out = []
    for v in values:
        tag, alg, digest_type, digest = str(v.data).split()
        rdata = struct.pack("!HBB", int(tag), int(alg), int(digest_type)) + bytes.fromhex(digest)
        out.append((owner, DS, ttl, rdata))
    return tuple(out)


def _is_subdomain(name: bytes, parent: bytes) -> bool:
    labels, plabels = labels_of(name), labels_of(parent)
    return len(labels) >= len(plabels) and labels[len(labels) - len(plabels) :] == plabels


# -- record values as RRs ----------------------------------------------------------------------


def value_text(v: Value) -> str:
    """``TYPE=data``, structured data as compact JSON with sorted keys."""
    data = v.data
    if type(data) is str:
        return f"{v.type}={data}"
    text = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{v.type}={text}"


def chunks(data: bytes, size: int = MAX_STRING) -> list[bytes]:
    """Split into pieces of at most ``size`` octets, never inside a UTF-8 sequence."""
    out = []
    while len(data) > size:
        cut = size
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # a continuation byte
            cut -= 1
        if cut == 0:
            cut = size  # not UTF-8 after all: split anywhere
        out.append(data[:cut])
        data = data[cut:]
    out.append(data)
    return out


def _strings(*parts: bytes) -> bytes:
    """<character-string>s: each a length octet and at most 255 octets."""
    return b"".join(bytes((len(p),)) + p for p in parts)


_LENGTH = [bytes((i,)) for i in range(MAX_STRING + 1)]  # a character-string's length octet


def txt_rrs(owner: bytes, record: Record, cap: int) -> tuple[RR, ...]:
    values = record.values
    if not values:
        return ()
    ttl = cap
    for v in values:
        if v.ttl < ttl:
            ttl = v.ttl
    out = []
    for v in values:
        data = value_text(v).encode()
        # Most values fit one character-string: no splitting to do.
        rdata = _LENGTH[len(data)] + data if len(data) <= MAX_STRING else _strings(*chunks(data))
        out.append((owner, TXT, ttl, rdata))
    return tuple(out)


def uri_rrs(owner: bytes, record: Record, cap: int) -> tuple[RR, ...]:
    urls = [v for v in record.values if v.type == "URL" and isinstance(v.data, str)]
    if not urls:
        return ()
    ttl = min([cap, *(v.ttl for v in urls)])
    # RFC 7553 §4.5: the target is the rest of the RDATA, not a character-string.
    return tuple(
        (owner, URI, ttl, struct.pack("!HH", min(v.index, 0xFFFF), 1) + str(v.data).encode())
        for v in urls
    )


def naptr_rrs(owner: bytes, record: Record, cap: int) -> tuple[RR, ...]:
    found: list[tuple[int, int, bytes, bytes]] = []
    ttls: list[int] = []
    for v in record.values:
        if v.type != "10320/LOC" or not isinstance(v.data, str):
            continue
        for pref, href in enumerate(locations(v.data)):
            regexp = ("!^.*$!" + href.replace("\\", "\\\\").replace("!", "\\!") + "!").encode()
            if len(regexp) > MAX_STRING:
                continue
            https = href.split(":", 1)[0].lower() == "https"
            found.append((min(v.index, 0xFFFF), min(pref, 0xFFFF),
                          b"E2U+web:https" if https else b"E2U+web:http", regexp))  # fmt: skip
            ttls.append(v.ttl)
    if not found:
        return ()
    ttl = min([cap, *ttls])
    return tuple(
        (owner, NAPTR, ttl, struct.pack("!HH", order, pref) + _strings(b"U", service, regexp)
         + b"\x00")  # replacement: the root (none: the regexp says where)
        for order, pref, service, regexp in found
    )  # fmt: skip


def locations(xml: str) -> list[str]:
    """The hrefs of a ``10320/LOC`` value, in order (records.py checked the XML)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return []
    return [el.get("href", "") for el in root if el.tag == "location" and el.get("href")]


# -- encoding ----------------------------------------------------------------------------------


class Encoded(NamedTuple):
    """A response minus its ID, question and OPT: ready to patch.

    ``rest`` is everything after the question, with compression pointers that
    may point into the question (at offset 12); the client's question is the
    same name (its case may differ), so they stay right. ``heads`` holds the
    header bytes after the ID (flags and counts) for each combination of the
    query's RD and CD bits, with or without our OPT, whole or truncated (see
    :func:`head_index`): shared between every answer with the same rcode, AA
    and counts, so a million cached answers hold a few dozen of them. The
    whole message is ``12 + len(question) + len(rest) + len(opt)`` octets.
    """

    heads: tuple[bytes, ...]
    rest: bytes
    zone: str = ""
    negative: bool = False


_HEADS: dict[tuple[int, int, int, int, int], tuple[bytes, ...]] = {}


def _heads(aa: bool, rcode: int, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
    key = (int(aa), rcode, an, ns, ar)
    heads = _HEADS.get(key)
    if heads is None:
        out = []
        for tc in (0, 1):
            for opt in (0, 1):
                for cd in (0, 1):
                    for rd in (0, 1):
                        b2 = 0x80 | (0x04 if aa else 0) | (0x02 if tc else 0) | rd
                        b3 = (0x10 if cd else 0) | (rcode & 0x0F)
                        counts = (1, 0, 0, opt) if tc else (1, an, ns, ar + opt)
                        out.append(bytes((b2, b3)) + struct.pack("!HHHH", *counts))
        heads = _HEADS[key] = tuple(out)
    return heads


def head_index(query: bytes, opt: bool) -> int:
    """Which of ``Encoded.heads`` answers ``query``: RD and CD copied (RFC 1035 §4.1.1,
    RFC 4035 §3.1.6), OPT or not; add 8 for the truncated form."""
    return (query[2] & 0x01) | ((query[3] >> 3) & 0x02) | (4 if opt else 0)


def empty(rcode: int, aa: bool = False) -> Encoded:
    """A response with the question and no records (errors, truncation templates)."""
    return Encoded(_heads(aa, rcode, 0, 0, 0), b"")


_RR_FIXED = struct.Struct("!HHIH")  # type, class, TTL, RDLENGTH
_TO_QUESTION = b"\xc0\x0c"  # a pointer to the question name


def encode(qname: bytes, answer: Answer, qclass: int = IN) -> Encoded:
    """Pre-encode ``answer``, decided for ``qname`` (wire form, any case of it)."""
    if answer.negative and qclass == IN:
        return _encode_negative(qname, answer)
    return _encode(qname, answer, qclass)


def _encode(qname: bytes, answer: Answer, qclass: int) -> Encoded:
    sections = (answer.answer, answer.authority, answer.additional)
    if not (sections[0] or sections[1] or sections[2]):
        return empty(answer.rcode, answer.aa)
    offsets: dict[bytes, int] | None = None
    parts = []
    pack = _RR_FIXED.pack
    for rrs in sections:
        for owner, rtype, ttl, rdata in rrs:
            if owner == qname:
                parts.append(_TO_QUESTION)
            else:
                if offsets is None:
                    offsets = _offsets(qname)
                at = offsets.get(owner)
                parts.append(owner if at is None else (0xC000 | at).to_bytes(2, "big"))
            parts.append(pack(rtype, qclass, ttl, len(rdata)))
            parts.append(rdata)
    heads = _heads(answer.aa, answer.rcode, len(sections[0]), len(sections[1]), len(sections[2]))
    return Encoded(heads, b"".join(parts), answer.zone, answer.negative)


def _offsets(qname: bytes) -> dict[bytes, int]:
    """Where each ancestor of the question name starts in a message: pointer targets."""
    offsets: dict[bytes, int] = {}
    i = 0
    while qname[i]:
        offsets[qname[i:]] = 12 + i
        i += 1 + qname[i]
    return offsets


_NEGATIVE_WIRE: dict[tuple[int, int], tuple[Answer, Encoded]] = {}


def _encode_negative(qname: bytes, answer: Answer) -> Encoded:
    # A negative answer is shared by every name of its zone (see _negative), and its
    # only owner, the zone, is an ancestor of each: the wire form differs only in the
    # pointer to it, which the name's length fixes. So it is encoded once per length.
    key = (id(answer), len(qname))
    got = _NEGATIVE_WIRE.get(key)
    if got is not None and got[0] is answer:
        return got[1]
    enc = _encode(qname, answer, IN)
    if len(_NEGATIVE_WIRE) >= 10_000:
        _NEGATIVE_WIRE.clear()
    _NEGATIVE_WIRE[key] = (answer, enc)
    return enc


def opt_record(payload: int, do: bool) -> bytes:
    """Our OPT RR (RFC 6891 §6.1.2): root owner, our UDP size, version 0, DO echoed."""
    return b"\x00\x00\x29" + struct.pack("!HBBHH", payload, 0, 0, 0x8000 if do else 0, 0)


def render(
    heads: tuple[bytes, ...], rest: bytes, query: bytes, question: bytes, opt: bytes, limit: int
) -> bytes:
    """The response to ``query`` (whose ID and flags it copies), ``question`` echoed.

    Over ``limit`` octets, the answer is replaced by an empty one with TC=1
    (RFC 2181 §9: the client retries over TCP).
    """
    i = (query[2] & 0x01) | ((query[3] >> 3) & 0x02) | (4 if opt else 0)
    if 12 + len(rest) + len(question) + len(opt) <= limit:
        return b"".join((query[:2], heads[i], question, rest, opt))
    return b"".join((query[:2], heads[i + 8], question, opt))


_TC_COUNTS_OPT = struct.pack("!HHHH", 1, 0, 0, 1)


def header_reply(data: bytes, rcode: int, opt: bytes = b"") -> bytes:
    """A response with no question: for queries too broken to echo, or of another
    opcode. ``opt``: our OPT record, for a query that had one (RFC 6891 §7: a
    responder that speaks EDNS answers an EDNS query with OPT, errors included)."""
    counts = b"\x00\x00\x00\x00\x00\x00\x00\x01" if opt else bytes(8)
    return data[:2] + bytes((0x80 | (data[2] & 0x79), rcode & 0x0F)) + counts + opt


def _skip_name(data: bytes, i: int) -> int:
    """Where the name at ``i`` ends (-1: runs past the end or a reserved label type)."""
    n = len(data)
    while i < n:
        ln = data[i]
        if ln == 0:
            return i + 1
        if ln & 0xC0 == 0xC0:
            return i + 2 if i + 2 <= n else -1
        if ln & 0xC0:
            return -1
        i += 1 + ln
    return -1


def edns_do(data: bytes) -> bool | None:
    """The DO bit of the query's OPT record, or None if it has none (or cannot be read
    as far). Walks the sections by hand: used for queries dnspython would not parse,
    which still get OPT in their FORMERR if they carried one."""
    if len(data) < 12:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    i = 12
    for _ in range(qd):
        i = _skip_name(data, i)
        if i < 0 or i + 4 > len(data):
            return None
        i += 4
    for k in range(an + ns + ar):
        start = i
        i = _skip_name(data, i)
        if i < 0 or i + 10 > len(data):
            return None
        rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", data, i)
        if k >= an + ns and rtype == OPT and data[start] == 0:
            return bool(ttl & 0x8000)
        i += 10 + rdlen
    return None


def badvers(head: bytes, question: bytes, payload: int, do: bool) -> bytes:
    """RFC 6891 §6.1.3: an EDNS version we do not speak; we speak version 0."""
    opt = b"\x00\x00\x29" + struct.pack("!HBBHH", payload, 1, 0, 0x8000 if do else 0, 0)
    flags = bytes((0x80 | (head[2] & 0x01), head[3] & 0x10))
    return head[:2] + flags + _TC_COUNTS_OPT + question + opt


#: The SOA serial of the zones that have no prefix record (the apex, the roots): they
#: are configuration, and change only with a restart (see :func:`zone_serial`).
CONFIG_SERIAL = 1


__all__ = [
    "RR",
    "Answer",
    "Encoded",
    "Lookup",
    "NameServer",
    "ZoneConfig",
    "ancestor",
    "badvers",
    "chunks",
    "decide",
    "edns_do",
    "empty",
    "encode",
    "head_index",
    "header_reply",
    "host_wire",
    "identity_answer",
    "labels_of",
    "locations",
    "naptr_rrs",
    "opt_record",
    "plan",
    "render",
    "txt_rrs",
    "uri_rrs",
    "value_text",
    "wire_name",
]
