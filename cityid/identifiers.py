"""Node-code identifiers: ``PREFIX/SUFFIX``, their DNS and OID forms.

A *prefix* is a dotted node code (``MA.156.1301.02``): an issuing-agency code
then nodes, each 1-63 characters of ``0-9 A-Z``. Nodes are codes, not numbers:
``01`` and ``1`` are different nodes. A *suffix* is 1-63 characters of
``0-9 A-Z - _``. Input is case-insensitive; the canonical form is upper case.

Minted suffixes end in an ISO/IEC 7064 MOD 37,36 check character (computed by
python-stdnum), so a misread code is rejected rather than resolved to another
thing. The prefix record of node ``P`` is the identifier ``0.NA/P``.

DNS form: ``suffix.nodeN...node1.<apex>``, nodes reversed, lower case (the ORS
layout for OIDs). A prefix lives at ``nodeN...node1.<apex>``. Reading a DNS name
back needs to know whether its first label is a suffix or a node: the resolver
knows (it knows which prefixes exist, as a DNS server knows its zone cuts), so
the reverse functions take the answer as an argument, and the registrar refuses
to create a suffix and a child node with the same name under one prefix, which
keeps the mapping a bijection on every namespace it allows.

Every rejected input raises :class:`IdentifierError` whose ``rule`` names the
rule broken; see ``RULES``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from stdnum.iso7064 import mod_37_36

from .errors import IdentifierError

MAX_LABEL = 63
MAX_DNS_NAME = 255  # octets in wire form, RFC 1035 §2.3.4
MAX_NODES = 32
PREFIX_RECORD_PREFIX = "0.NA"
CHECK_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_NODE_RE = re.compile(r"[0-9A-Z]{1,63}")
_SUFFIX_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
_SUFFIX_RE = re.compile(r"[0-9A-Z_-]{1,63}")
_MINTED_RE = re.compile(r"([A-Z]*)([0-9]+)([0-9A-Z])")
_OID_ARC_RE = re.compile(r"0|[1-9][0-9]*")

#: Every rule an identifier can break, with the sentence used in errors.
RULES: dict[str, str] = {
    "empty": "an identifier must not be empty",
    "no-slash": "an identifier is PREFIX/SUFFIX with one '/'",
    "empty-node": "a prefix node must not be empty (no leading, trailing or doubled '.')",
    "node-length": "a prefix node is 1 to 63 characters",
    "node-charset": "a prefix node uses only 0-9 and A-Z",
    "too-many-nodes": f"a prefix has at most {MAX_NODES} nodes",
    "empty-suffix": "a suffix must not be empty",
    "suffix-length": "a suffix is 1 to 63 characters",
    "suffix-charset": "a suffix uses only 0-9, A-Z, '-' and '_'",
    "check-character": "the last character of a minted suffix is its MOD 37,36 check character",
    "not-minted-form": "a minted suffix is letters, then digits, then a check character",
    "dns-name-length": "a DNS name is at most 255 octets",
    "dns-outside-apex": "the DNS name is not under the resolver's apex",
    "dns-label": "a DNS label is 1 to 63 characters",
    "not-under-root": "the prefix is not under the configured root",
    "oid-arc": "every node below the root must be a canonical integer for an OID form",
    "oid-root": "the root OID must be dotted canonical integers",
}


def _fail(rule: str, detail: str) -> IdentifierError:
    return IdentifierError(f"{detail}: {RULES[rule]}", rule=rule)


def _upper_ascii(text: str, rule: str, what: str) -> str:
    # Check before folding case: str.upper() maps some non-ASCII letters onto
    # ASCII ("ſ" -> "S", "ß" -> "SS"), which would alias distinct inputs.
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise _fail(rule, f"{what} {text[:80]!r} contains {bad!r}")
    return text.upper()


def _check_node(node: str, text: str) -> None:
    if not node:
        raise _fail("empty-node", f"prefix {text!r} has an empty node")
    if len(node) > MAX_LABEL:
        raise _fail("node-length", f"node {node[:20]}... has {len(node)} characters")
    if not _NODE_RE.fullmatch(node):
        bad = next(c for c in node if not ("0" <= c <= "9" or "A" <= c <= "Z"))
        raise _fail("node-charset", f"node {node!r} contains {bad!r}")


def _check_suffix(suffix: str) -> None:
    if not suffix:
        raise _fail("empty-suffix", "the suffix is empty")
    if len(suffix) > MAX_LABEL:
        raise _fail("suffix-length", f"suffix {suffix[:20]}... has {len(suffix)} characters")
    if not _SUFFIX_RE.fullmatch(suffix):
        bad = next((c for c in suffix if c not in _SUFFIX_CHARS), suffix[0])
        raise _fail("suffix-charset", f"suffix {suffix!r} contains {bad!r}")


@dataclass(frozen=True, slots=True, order=True)
class Prefix:
    """A node code such as ``MA.156.1301.02`` (canonical, validated)."""

    nodes: tuple[str, ...]

    def __post_init__(self) -> None:
        text = ".".join(self.nodes)
        if not self.nodes:
            raise _fail("empty", "the prefix is empty")
        if len(self.nodes) > MAX_NODES:
            raise _fail("too-many-nodes", f"prefix {text[:40]!r} has {len(self.nodes)} nodes")
        for node in self.nodes:
            _check_node(node, text)

    @classmethod
    def parse(cls, text: str) -> Prefix:
        if not text:
            raise _fail("empty", "the prefix is empty")
        return cls(tuple(_upper_ascii(text, "node-charset", "prefix").split(".")))

    def __str__(self) -> str:
        return ".".join(self.nodes)

    @property
    def parent(self) -> Prefix | None:
        return Prefix(self.nodes[:-1]) if len(self.nodes) > 1 else None

    def child(self, node: str) -> Prefix:
        return Prefix((*self.nodes, node.upper()))

    def is_within(self, other: Prefix) -> bool:
        """True when ``self`` is ``other`` or lies below it."""
        return self.nodes[: len(other.nodes)] == other.nodes

    def ancestors(self) -> list[Prefix]:
        """Self and every ancestor, nearest first."""
        return [Prefix(self.nodes[:i]) for i in range(len(self.nodes), 0, -1)]

    @property
    def record_id(self) -> Identifier:
        """The identifier of this prefix's own record: ``0.NA/<prefix>``."""
        return Identifier(Prefix(("0", "NA")), str(self))

    def dns_name(self, apex: str) -> str:
        return _join_dns(tuple(n.lower() for n in reversed(self.nodes)), apex)

    @classmethod
    def from_dns(cls, name: str, apex: str) -> Prefix:
        return cls(tuple(label.upper() for label in reversed(_split_dns(name, apex))))


@dataclass(frozen=True, slots=True, order=True)
class Identifier:
    """``PREFIX/SUFFIX`` in canonical (upper-case) form."""

    prefix: Prefix
    suffix: str

    def __post_init__(self) -> None:
        if self.is_prefix_record:
            Prefix.parse(self.suffix)  # the suffix of 0.NA/P is the prefix P
        else:
            _check_suffix(self.suffix)

    def __str__(self) -> str:
        return f"{self.prefix}/{self.suffix}"

    @property
    def is_prefix_record(self) -> bool:
        return self.prefix.nodes == ("0", "NA")

    @property
    def named_prefix(self) -> Prefix | None:
        """For ``0.NA/P``, the prefix ``P`` it describes."""
        return Prefix.parse(self.suffix) if self.is_prefix_record else None

    @property
    def url_path(self) -> str:
        """The path a resolver serves it at; the alphabet needs no escaping."""
        return f"/{self}"

    def dns_name(self, apex: str) -> str:
        if self.is_prefix_record:
            named = self.named_prefix
            assert named is not None
            return named.dns_name(apex)
        return _join_dns(
            (self.suffix.lower(), *(n.lower() for n in reversed(self.prefix.nodes))), apex
        )

    @classmethod
    def from_dns(cls, name: str, apex: str) -> Identifier:
        """Read a DNS name whose first label is a suffix (see the module notes)."""
        labels = _split_dns(name, apex)
        if len(labels) < 2:
            raise _fail("empty-node", f"DNS name {name!r} has no prefix below the apex")
        return cls(
            Prefix(tuple(label.upper() for label in reversed(labels[1:]))), labels[0].upper()
        )


def suffix_checker(prefix: Prefix) -> Callable[[str], object]:
    """A function raising what ``Identifier(prefix, suffix)`` raises for a bad ``suffix``.

    For checking the many suffixes of a bulk mint without building an
    Identifier for each.
    """
    return partial(Identifier, prefix) if prefix.nodes == ("0", "NA") else _check_suffix


def parse_prefix(text: str) -> Prefix:
    return Prefix.parse(text.strip())


def parse_identifier(text: str) -> Identifier:
    """Parse ``PREFIX/SUFFIX`` (any case, surrounding white space ignored)."""
    text = text.strip()
    if not text:
        raise _fail("empty", "the identifier is empty")
    if text.count("/") != 1:
        raise _fail("no-slash", f"{text[:80]!r} has {text.count('/')} slashes")
    prefix, suffix = text.split("/")
    if prefix.upper() == PREFIX_RECORD_PREFIX:
        # 0.NA is a reserved namespace: its suffix is itself a prefix.
        return Identifier(Prefix(("0", "NA")), str(Prefix.parse(suffix)))
    return Identifier(Prefix.parse(prefix), _upper_ascii(suffix, "suffix-charset", "suffix"))


# -- minted suffixes ---------------------------------------------------------------


def check_character(body: str) -> str:
    """The MOD 37,36 check character for ``body`` (letters and digits)."""
    return mod_37_36.calc_check_digit(body.upper(), alphabet=CHECK_ALPHABET)


# MOD 37,36 (ISO/IEC 7064) as python-stdnum computes it, with its steps tabulated:
# _STEP[state][character] is the next state. For bodies known to be A-Z and 0-9.
_STEP = [
    {c: (((state or 36) * 2) % 37 + i) % 36 for i, c in enumerate(CHECK_ALPHABET)}
    for state in range(36)
]


def _check_char(body: str) -> str:
    state = 18
    for c in body:
        state = _STEP[state][c]
    return CHECK_ALPHABET[(1 - ((state or 36) * 2) % 37) % 36]


def mint_suffix(letters: str, number: int, width: int) -> str:
    """The minted suffix ``letters + zero-padded number + check character``."""
    if not (letters == "" or (letters.isascii() and letters.isalpha())):
        raise _fail("not-minted-form", f"minted letters {letters!r} must be A-Z only")
    if number < 0 or width < 1:
        raise _fail("not-minted-form", f"number {number} and width {width} must be >= 0 and >= 1")
    body = f"{letters.upper()}{number:0{width}d}"
    if len(body) >= MAX_LABEL:
        raise _fail("suffix-length", f"minted suffix {body}? has {len(body) + 1} characters")
    if len(str(number)) > width:
        raise _fail("not-minted-form", f"number {number} does not fit in {width} digits")
    suffix = body + _check_char(body)  # body is A-Z then 0-9: check_character(body)
    _check_suffix(suffix)
    return suffix


@dataclass(frozen=True, slots=True)
class MintedSuffix:
    letters: str
    number: int
    width: int
    check: str


def parse_minted(suffix: str) -> MintedSuffix:
    """Split a minted suffix and verify its check character."""
    s = _upper_ascii(suffix, "suffix-charset", "suffix")
    m = _MINTED_RE.fullmatch(s)
    if m is None:
        raise _fail("not-minted-form", f"suffix {suffix!r} is not letters, digits, check")
    letters, digits, check = m.groups()
    if not mod_37_36.is_valid(s, alphabet=CHECK_ALPHABET):
        want = check_character(s[:-1])
        raise _fail(
            "check-character",
            f"suffix {s!r} ends in {check!r} but its check character is {want!r}",
        )
    return MintedSuffix(letters, int(digits), len(digits), check)


def split_minted(suffix: str) -> tuple[str, int, int] | None:
    """(letters, number, width) of a canonical suffix shaped like a minted one.

    The check character is NOT verified: this is the cheap first step of a
    lookup; callers verify it (``has_valid_check``) only when the shape matters.
    """
    m = _MINTED_RE.fullmatch(suffix)
    if m is None:
        return None
    letters, digits, _ = m.groups()
    return letters, int(digits), len(digits)


def has_valid_check(suffix: str) -> bool:
    s = suffix.upper()
    return (
        bool(s)
        and all(c in CHECK_ALPHABET for c in s)
        and len(s) > 1
        and (mod_37_36.is_valid(s, alphabet=CHECK_ALPHABET))
    )


# -- DNS ----------------------------------------------------------------------------


def normalise_apex(apex: str) -> str:
    apex = apex.strip().strip(".").lower()
    for label in apex.split(".") if apex else []:
        if not 1 <= len(label) <= MAX_LABEL:
            raise _fail("dns-label", f"apex {apex!r} has a label of {len(label)} characters")
    return apex


def _join_dns(labels: tuple[str, ...], apex: str) -> str:
    apex = normalise_apex(apex)
    name = ".".join((*labels, apex)) if apex else ".".join(labels)
    # Wire length: one length octet per label plus the root octet.
    wire = sum(len(x) + 1 for x in name.split(".")) + 1
    if wire > MAX_DNS_NAME:
        raise _fail("dns-name-length", f"the DNS form is {wire} octets")
    return name + "."


def _split_dns(name: str, apex: str) -> list[str]:
    apex = normalise_apex(apex)
    n = _upper_ascii(name.strip(), "dns-label", "DNS name").lower().rstrip(".")
    wire = sum(len(x) + 1 for x in n.split(".")) + 1 if n else 1
    if wire > MAX_DNS_NAME:
        raise _fail("dns-name-length", f"DNS name is {wire} octets")
    if apex:
        if n != apex and not n.endswith("." + apex):
            raise _fail("dns-outside-apex", f"{name!r} is not under {apex!r}")
        n = n[: -len(apex)].rstrip(".")
    labels = n.split(".") if n else []
    for label in labels:
        if not 1 <= len(label) <= MAX_LABEL:
            raise _fail("dns-label", f"{name!r} has a label of {len(label)} characters")
    return labels


# -- OID ----------------------------------------------------------------------------


def oid_form(ident: Identifier | Prefix, root: Prefix, root_oid: str) -> str:
    """``root_oid`` + the nodes below ``root`` (+ the suffix for an identifier).

    Raises IdentifierError naming the node that is not a canonical integer: node
    codes such as ``02`` are codes, and an OID arc ``2`` would name another node.
    """
    if not _valid_oid(root_oid):
        raise _fail("oid-root", f"root OID {root_oid!r}")
    prefix = ident if isinstance(ident, Prefix) else ident.prefix
    if not prefix.is_within(root):
        raise _fail("not-under-root", f"{prefix} is not under {root}")
    arcs = list(prefix.nodes[len(root.nodes) :])
    if isinstance(ident, Identifier):
        arcs.append(ident.suffix)
    for arc in arcs:
        if not _OID_ARC_RE.fullmatch(arc):
            why = "has a leading zero" if arc.isdigit() else "is not a number"
            raise _fail("oid-arc", f"{arc!r} {why}")
    return ".".join((root_oid, *arcs))


def _valid_oid(oid: str) -> bool:
    return bool(oid) and all(_OID_ARC_RE.fullmatch(a) for a in oid.split("."))
