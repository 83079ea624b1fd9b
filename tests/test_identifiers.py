"""Identifiers: canonical form, DNS and OID forms, minted suffixes, and the rules they break."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cityid.errors import IdentifierError
from cityid.identifiers import (
    CHECK_ALPHABET,
    MAX_NODES,
    Identifier,
    Prefix,
    check_character,
    has_valid_check,
    mint_suffix,
    normalise_apex,
    oid_form,
    parse_identifier,
    parse_minted,
    parse_prefix,
)

NODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
SUFFIX_ALPHABET = NODE_ALPHABET + "-_"
APEXES = ["", "cityid.test", "id.city.example.", "ORS.Example.ORG", "a"]
ROOT = Prefix.parse("MA.156")

nodes = st.text(alphabet=NODE_ALPHABET, min_size=1, max_size=63)
suffixes = st.text(alphabet=SUFFIX_ALPHABET, min_size=1, max_size=63)
prefixes = st.lists(nodes, min_size=1, max_size=MAX_NODES).map(tuple)
# DNS forms must fit 255 octets: keep the trees the round-trip tests use small enough.
short_nodes = st.text(alphabet=NODE_ALPHABET, min_size=1, max_size=12)
short_suffixes = st.text(alphabet=SUFFIX_ALPHABET, min_size=1, max_size=20)
dns_prefixes = st.lists(short_nodes, min_size=1, max_size=8).map(tuple)


def random_case(data: st.DataObject, text: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.lower() if f else c for c, f in zip(text, flips, strict=True))


# -- canonical form ---------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(prefix=prefixes, suffix=suffixes, data=st.data())
def test_format_after_parse_is_canonical(
    prefix: tuple[str, ...], suffix: str, data: st.DataObject
) -> None:
    assume(prefix != ("0", "NA"))
    canonical = f"{'.'.join(prefix)}/{suffix}"
    text = random_case(data, canonical)
    pad = data.draw(st.sampled_from(["", " ", "\t", "\n "]))
    ident = parse_identifier(pad + text + pad)
    assert str(ident) == canonical
    assert ident.prefix.nodes == prefix
    assert ident.suffix == suffix
    assert ident.url_path == "/" + canonical
    assert parse_identifier(str(ident)) == ident


@settings(max_examples=100, deadline=None)
@given(prefix=prefixes, data=st.data())
def test_prefix_format_after_parse_is_canonical(
    prefix: tuple[str, ...], data: st.DataObject
) -> None:
    canonical = ".".join(prefix)
    parsed = parse_prefix(random_case(data, canonical))
    assert str(parsed) == canonical
    assert parsed == Prefix(prefix)


def test_nodes_are_codes_not_numbers() -> None:
    assert parse_prefix("MA.156.01") != parse_prefix("MA.156.1")
    assert str(parse_identifier("ma.156.1301.02/w0000127r")) == "MA.156.1301.02/W0000127R"


def test_prefix_record() -> None:
    rec = parse_identifier("0.na/ma.156.1301")
    assert str(rec) == "0.NA/MA.156.1301"
    assert rec.is_prefix_record
    city = Prefix.parse("MA.156.1301")
    assert rec.named_prefix == city
    assert city.record_id == rec
    for apex in APEXES:
        assert rec.dns_name(apex) == city.dns_name(apex)
    assert rec.dns_name("cityid.test") == "1301.156.ma.cityid.test."


def test_prefix_tree_helpers() -> None:
    dept = Prefix.parse("MA.156.1301.02")
    assert dept.parent == Prefix.parse("MA.156.1301")
    assert Prefix.parse("MA").parent is None
    assert dept.is_within(ROOT) and dept.is_within(dept)
    assert not ROOT.is_within(dept)
    assert not Prefix.parse("MA.1561").is_within(ROOT)
    assert [str(p) for p in dept.ancestors()] == [
        "MA.156.1301.02",
        "MA.156.1301",
        "MA.156",
        "MA",
    ]
    assert ROOT.child("1301") == Prefix.parse("MA.156.1301")


# -- DNS form ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(prefix=dns_prefixes, suffix=short_suffixes, apex=st.sampled_from(APEXES))
def test_identifier_dns_round_trip(prefix: tuple[str, ...], suffix: str, apex: str) -> None:
    assume(prefix != ("0", "NA"))
    ident = Identifier(Prefix(prefix), suffix)
    name = ident.dns_name(apex)
    assert name.endswith(".")
    assert name == name.lower()
    labels = name.rstrip(".").split(".")
    assert labels[: len(prefix) + 1] == [suffix.lower(), *(n.lower() for n in reversed(prefix))]
    assert Identifier.from_dns(name, apex) == ident
    assert Identifier.from_dns(name.upper(), apex) == ident  # DNS is case-insensitive
    assert Identifier.from_dns(name.rstrip("."), apex) == ident


@settings(max_examples=150, deadline=None)
@given(prefix=dns_prefixes, apex=st.sampled_from(APEXES))
def test_prefix_dns_round_trip(prefix: tuple[str, ...], apex: str) -> None:
    p = Prefix(prefix)
    name = p.dns_name(apex)
    assert Prefix.from_dns(name, apex) == p
    assert Prefix.from_dns(name.upper(), apex.upper()) == p


@settings(max_examples=150, deadline=None)
@given(a=st.tuples(dns_prefixes, short_suffixes), b=st.tuples(dns_prefixes, short_suffixes))
def test_dns_form_is_injective(
    a: tuple[tuple[str, ...], str], b: tuple[tuple[str, ...], str]
) -> None:
    assume(("0", "NA") not in (a[0], b[0]))
    ia, ib = Identifier(Prefix(a[0]), a[1]), Identifier(Prefix(b[0]), b[1])
    assert (ia.dns_name("cityid.test") == ib.dns_name("cityid.test")) == (ia == ib)


def test_dns_examples() -> None:
    ident = parse_identifier("MA.156.1301.02/W0000127R")
    assert ident.dns_name("cityid.test") == "w0000127r.02.1301.156.ma.cityid.test."
    assert ident.dns_name("") == "w0000127r.02.1301.156.ma."
    assert ident.dns_name("CityID.Test.") == "w0000127r.02.1301.156.ma.cityid.test."
    assert normalise_apex(" CityID.Test. ") == "cityid.test"
    # A longest DNS form that still fits: 255 octets exactly.
    three = ".".join(["A" * 63] * 3)
    ident = parse_identifier(f"{three}/{'B' * 61}")
    wire = sum(len(x) + 1 for x in ident.dns_name("").rstrip(".").split(".")) + 1
    assert wire == 255


# -- OID form ---------------------------------------------------------------------------


def test_oid_form_of_city() -> None:
    assert oid_form(Prefix.parse("MA.156.1301"), ROOT, "2.999") == "2.999.1301"
    assert oid_form(ROOT, ROOT, "2.999") == "2.999"
    assert oid_form(parse_identifier("MA.156.1301/0"), ROOT, "2.999") == "2.999.1301.0"
    assert oid_form(parse_identifier("MA.156.1301.7/42"), ROOT, "1.2.156") == "1.2.156.1301.7.42"


def test_oid_form_of_leading_zero_node_is_none() -> None:
    with pytest.raises(IdentifierError) as e:
        oid_form(Prefix.parse("MA.156.1301.02"), ROOT, "2.999")
    assert e.value.rule == "oid-arc"
    assert "'02'" in e.value.message
    assert "leading zero" in e.value.message


def test_oid_form_of_letters_is_none() -> None:
    with pytest.raises(IdentifierError) as e:
        oid_form(parse_identifier("MA.156.1301/W0000127R"), ROOT, "2.999")
    assert e.value.rule == "oid-arc"
    assert "W0000127R" in e.value.message and "not a number" in e.value.message


# -- minted suffixes --------------------------------------------------------------------

letters = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", max_size=6)


@st.composite
def minted(draw: st.DrawFn) -> tuple[str, int, int]:
    let = draw(letters)
    width = draw(st.integers(1, 12))
    number = draw(st.integers(0, 10**width - 1))
    return let, number, width


def test_minted_check_character_is_mod_37_36() -> None:
    # mint_suffix computes MOD 37,36 with its own table: it must agree with stdnum.
    for n in range(0, 200_000, 13):
        for letters in ("", "W", "ab", "XYZ"):
            suffix = mint_suffix(letters, n, 9)
            assert suffix[-1] == check_character(suffix[:-1]), suffix
            assert has_valid_check(suffix)


@settings(max_examples=300, deadline=None)
@given(m=minted(), data=st.data())
def test_mint_then_parse_round_trip(m: tuple[str, int, int], data: st.DataObject) -> None:
    let, number, width = m
    suffix = mint_suffix(let.lower() if data.draw(st.booleans()) else let, number, width)
    assert len(suffix) == len(let) + width + 1
    assert suffix[-1] == check_character(suffix[:-1])
    assert has_valid_check(suffix)
    parsed = parse_minted(random_case(data, suffix))
    assert (parsed.letters, parsed.number, parsed.width) == (let, number, width)
    assert parsed.check == suffix[-1]
    assert parse_identifier(f"MA.156/{suffix}").suffix == suffix


def test_known_minted_example() -> None:
    assert mint_suffix("W", 127, 7) == "W0000127R"
    assert parse_identifier("MA.156.1301.02/W0000127R").suffix == "W0000127R"


def _substitutions(suffix: str) -> list[str]:
    return [
        suffix[:i] + c + suffix[i + 1 :]
        for i in range(len(suffix))
        for c in CHECK_ALPHABET
        if c != suffix[i]
    ]


def _assert_caught(bad: str) -> None:
    assert not has_valid_check(bad), bad
    with pytest.raises(IdentifierError) as e:
        parse_minted(bad)
    assert e.value.rule in ("check-character", "not-minted-form"), (bad, e.value.rule)


@pytest.mark.parametrize(
    "suffix",
    [
        mint_suffix("W", 127, 7),
        mint_suffix("", 0, 1),
        mint_suffix("", 99999, 5),
        mint_suffix("ZZ", 999999, 6),
        mint_suffix("ABCDEFGH", 31415926, 8),
        mint_suffix("Q", 0, 30),
    ],
)
def test_every_single_substitution_is_caught_exhaustive(suffix: str) -> None:
    subs = _substitutions(suffix)
    assert len(subs) == 35 * len(suffix)
    for bad in subs:
        _assert_caught(bad)


@settings(max_examples=60, deadline=None)
@given(m=minted())
def test_every_single_substitution_is_caught_random(m: tuple[str, int, int]) -> None:
    for bad in _substitutions(mint_suffix(*m)):
        _assert_caught(bad)


# -- the table of bad inputs ------------------------------------------------------------

LONG4 = ".".join(["A" * 63] * 4)
DNS_LONG = ".".join(["a" * 63] * 4) + ".156.ma.cityid.test."
THIRTY_THREE = ".".join(["A"] * 33)


def _pid(text: str) -> Callable[[], object]:
    return lambda: parse_identifier(text)


def _ppx(text: str) -> Callable[[], object]:
    return lambda: parse_prefix(text)


def _minted(text: str) -> Callable[[], object]:
    return lambda: parse_minted(text)


def _dns(name: str, apex: str = "cityid.test") -> Callable[[], object]:
    return lambda: Identifier.from_dns(name, apex)


def _oid(text: str, root_oid: str = "2.999", root: str = "MA.156") -> Callable[[], object]:
    def go() -> object:
        target: Identifier | Prefix = parse_identifier(text) if "/" in text else parse_prefix(text)
        return oid_form(target, Prefix.parse(root), root_oid)

    return go


BAD_INPUTS: list[tuple[str, Callable[[], object], str]] = [
    ("empty string", _pid(""), "empty"),
    ("blank string", _pid("  \t "), "empty"),
    ("no slash", _pid("MA.156.1301"), "no-slash"),
    ("two slashes", _pid("MA.156/A/B"), "no-slash"),
    ("empty prefix", _pid("/A"), "empty"),
    ("leading dot", _pid(".MA.156/A"), "empty-node"),
    ("trailing dot", _pid("MA.156./A"), "empty-node"),
    ("double dot", _pid("MA..156/A"), "empty-node"),
    ("bare prefix double dot", _ppx("MA..156"), "empty-node"),
    ("node of 64", _pid(f"MA.{'A' * 64}/X"), "node-length"),
    ("node of 64 in a prefix", _ppx("B" * 64), "node-length"),
    ("empty suffix", _pid("MA.156/"), "empty-suffix"),
    ("suffix of 64", _pid(f"MA.156/{'A' * 64}"), "suffix-length"),
    ("space in node", _pid("MA.1 56/A"), "node-charset"),
    ("percent in node", _pid("MA.15%/A"), "node-charset"),
    ("e-acute in node", _pid("MA.15é/A"), "node-charset"),
    ("long s in node (upper-cases to S)", _pid("MA.ſ/A"), "node-charset"),
    ("underscore in node", _pid("MA.1_5/A"), "node-charset"),
    ("hyphen in node", _pid("MA.1-5/A"), "node-charset"),
    ("NUL in node", _pid("MA.1\x005/A"), "node-charset"),
    ("space in suffix", _pid("MA.156/A B"), "suffix-charset"),
    ("percent in suffix", _pid("MA.156/A%20"), "suffix-charset"),
    ("e-acute in suffix", _pid("MA.156/CAFé"), "suffix-charset"),
    ("long s in suffix (upper-cases to S)", _pid("MA.156/ſ"), "suffix-charset"),
    ("sharp s in suffix (upper-cases to SS)", _pid("MA.156/ß"), "suffix-charset"),
    ("dot in suffix", _pid("MA.156/A.B"), "suffix-charset"),
    ("NUL in suffix", _pid("MA.156/A\x00B"), "suffix-charset"),
    ("slash-only identifier", _pid("/"), "empty"),
    ("too many nodes", _pid(f"{THIRTY_THREE}/X"), "too-many-nodes"),
    ("prefix record of empty prefix", _pid("0.NA/"), "empty"),
    ("prefix record of bad prefix", _pid("0.NA/MA..156"), "empty-node"),
    ("bad check character", _minted("W0000127X"), "check-character"),
    ("bad check character, lower case", _minted("w0000127q"), "check-character"),
    ("check character dropped", _minted("W0000127"), "check-character"),
    ("not minted: no digits", _minted("WW"), "not-minted-form"),
    ("not minted: hyphen", _minted("W-000127R"), "not-minted-form"),
    ("not minted: non-ASCII", _minted("Wé0127R"), "suffix-charset"),
    ("mint: number wider than width", lambda: mint_suffix("W", 1000, 3), "not-minted-form"),
    ("mint: 64 characters", lambda: mint_suffix("W" * 62, 1, 1), "suffix-length"),
    (
        "DNS form over 255 octets",
        lambda: parse_identifier(f"MA.{LONG4}/X").dns_name("cityid.test"),
        "dns-name-length",
    ),
    ("DNS name over 255 octets", _dns(DNS_LONG), "dns-name-length"),
    ("DNS name outside the apex", _dns("a.156.ma.other.example."), "dns-outside-apex"),
    ("DNS name sharing a suffix", _dns("a.156.ma.notcityid.test."), "dns-outside-apex"),
    ("DNS label too long", _dns(f"{'x' * 64}.156.ma.cityid.test."), "dns-label"),
    ("DNS empty label", _dns("a..156.ma.cityid.test."), "dns-label"),
    ("DNS non-ASCII label", _dns("a.156.ma.cityid.tést."), "dns-label"),
    ("DNS name with no prefix", _dns("ma.cityid.test."), "empty-node"),
    ("DNS prefix at the apex", lambda: Prefix.from_dns("cityid.test.", "cityid.test"), "empty"),
    ("DNS apex label too long", lambda: normalise_apex(f"{'x' * 64}.test"), "dns-label"),
    ("DNS apex empty label", lambda: ROOT.dns_name("a..test"), "dns-label"),
    ("OID leading-zero node", _oid("MA.156.1301.02"), "oid-arc"),
    ("OID letters in node", _oid("MA.156.13A1"), "oid-arc"),
    ("OID letters in suffix", _oid("MA.156.1301/W0000127R"), "oid-arc"),
    ("OID leading-zero suffix", _oid("MA.156.1301/007"), "oid-arc"),
    ("OID not under root", _oid("MA.157.1301"), "not-under-root"),
    ("OID root empty", _oid("MA.156.1301", ""), "oid-root"),
    ("OID root double dot", _oid("MA.156.1301", "2..999"), "oid-root"),
    ("OID root leading zero", _oid("MA.156.1301", "02.999"), "oid-root"),
    ("OID root letters", _oid("MA.156.1301", "2.x"), "oid-root"),
    ("OID root trailing dot", _oid("MA.156.1301", "2.999."), "oid-root"),
]


def test_bad_input_table_is_large() -> None:
    assert len(BAD_INPUTS) >= 30
    assert len({name for name, _, _ in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize(
    ("call", "rule"), [(c, r) for _, c, r in BAD_INPUTS], ids=[n for n, _, _ in BAD_INPUTS]
)
def test_bad_input_names_its_rule(call: Callable[[], object], rule: str) -> None:
    with pytest.raises(IdentifierError) as e:
        call()
    assert e.value.rule == rule
    # The message states the rule broken, not just its code.
    assert e.value.message
    assert isinstance(e.value, ValueError)


def test_check_character_message_names_both_characters() -> None:
    with pytest.raises(IdentifierError) as e:
        parse_minted("W0000127X")
    assert "'X'" in e.value.message and "'R'" in e.value.message


# -- regressions -------------------------------------------------------------------------------


def test_identifier_constructor_rejects_lower_case_suffix() -> None:
    with pytest.raises(IdentifierError) as e:
        Identifier(Prefix.parse("MA.156"), "abc")
    assert e.value.rule == "suffix-charset"


@pytest.mark.parametrize(("let", "number", "width"), [("A1", 1, 3), ("W", -5, 3), ("A-", 1, 3)])
def test_mint_suffix_rejects_bad_parts(let: str, number: int, width: int) -> None:
    with pytest.raises(IdentifierError):
        mint_suffix(let, number, width)
