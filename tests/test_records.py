"""Records: validation, the canonical msgpack encoding, the Handle REST JSON shape."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid.errors import RecordError
from cityid.keys import SigningKey
from cityid.records import (
    DEFAULT_TTL,
    MAX_RECORD_BYTES,
    MAX_VALUES,
    Record,
    Value,
    iso_timestamp,
    render_template,
    values_from_json,
)

TS = 1_700_000_000
ADMIN = {"handle": "0.NA/MA.156.1301", "index": 200, "permissions": "011111110011"}
LOC_OK = (
    '<locations><location href="https://a.example/x" weight="1"/>'
    '<location href="http://b.example/y"/></locations>'
)


def v(index: int, vtype: str, data: Any, ttl: int = DEFAULT_TTL, ts: int = TS) -> Value:
    return Value.make(index, vtype, data, ttl, ts)


def sample_record() -> Record:
    return Record.of(
        [
            v(100, "HS_ADMIN", ADMIN),
            v(1, "URL", "https://water.sjz.example/meter/W0000127R"),
            v(2, "EMAIL", "water@sjz.example"),
            v(3, "GEO", "38.0428,114.5149"),
            v(4, "DESC", "Water meter, Zhongshan Road 12"),
            v(5, "10320/LOC", LOC_OK),
        ]
    )


# -- strategies -------------------------------------------------------------------------

safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=0, max_size=40
)
host = st.from_regex(r"[a-z0-9]{1,10}\.example", fullmatch=True)
path = st.from_regex(r"[A-Za-z0-9_-]{0,20}", fullmatch=True)


@st.composite
def value_spec(draw: st.DrawFn) -> tuple[str, Any]:
    """(type, data); map data is a list of pairs so tests can reorder its keys."""
    kind = draw(
        st.sampled_from(["URL", "DESC", "EMAIL", "GEO", "HS_ADMIN", "HS_SITE", "NS", "10320/LOC"])
    )
    if kind == "URL":
        return kind, f"{draw(st.sampled_from(['http', 'https']))}://{draw(host)}/{draw(path)}"
    if kind == "DESC":
        return kind, draw(safe_text)
    if kind == "EMAIL":
        return kind, f"{draw(path) or 'x'}@{draw(host)}"
    if kind == "GEO":
        lat = draw(st.floats(-90, 90, allow_nan=False))
        lon = draw(st.floats(-180, 180, allow_nan=False))
        return kind, f"{lat},{lon}"
    if kind == "HS_ADMIN":
        return kind, [
            ("handle", f"0.NA/MA.156.{draw(st.integers(1, 9999))}"),
            ("index", draw(st.integers(1, 2**31 - 1))),
            ("permissions", draw(st.from_regex(r"[01]{1,12}", fullmatch=True))),
        ]
    if kind == "HS_SITE":
        roles = draw(
            st.lists(st.sampled_from(["registrar", "ledger", "resolver"]), min_size=1, unique=True)
        )
        return kind, [(r, f"https://{draw(host)}/{r}") for r in roles]
    if kind == "NS":
        return kind, f"ns1.{draw(host)} 192.0.2.{draw(st.integers(1, 254))}"
    return kind, f'<locations><location href="https://{draw(host)}/{draw(path)}"/></locations>'


@st.composite
def record_specs(draw: st.DrawFn) -> list[tuple[int, str, Any, int, int]]:
    n = draw(st.integers(0, 10))
    indexes = draw(st.lists(st.integers(1, 2**31 - 1), min_size=n, max_size=n, unique=True))
    out = []
    for index in indexes:
        kind, data = draw(value_spec())
        ttl = draw(st.integers(0, 2**31 - 1))
        ts = draw(st.integers(0, 2**40 - 1))
        out.append((index, kind, data, ttl, ts))
    return out


def build(specs: list[tuple[int, str, Any, int, int]], reorder: Callable[[list], list]) -> Record:
    values = []
    for index, kind, data, ttl, ts in specs:
        if isinstance(data, list):
            data = dict(reorder(list(data)))
        values.append(Value.make(index, kind, data, ttl, ts))
    return Record.of(reorder(values))


# -- canonical encoding -----------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=record_specs(), rnd=st.randoms(use_true_random=False))
def test_encoding_is_deterministic(specs: list, rnd: Any) -> None:
    r1 = build(specs, lambda xs: xs)

    def shuffled(xs: list) -> list:
        xs = list(xs)
        rnd.shuffle(xs)
        return xs

    r2 = build(specs, shuffled)
    assert r1 == r2
    assert r1.encode() == r2.encode()
    assert [x.index for x in r1.values] == sorted(x.index for x in r1.values)
    assert Record.decode(r1.encode()) == r1
    assert Record.decode(r1.encode()).encode() == r1.encode()
    assert Record.from_wire(r1.to_wire()) == r1
    # Validation is idempotent: a stored value validates to itself.
    for val in r1.values:
        assert Value.make(*val.to_wire()) == val


def test_encoding_example() -> None:
    rec = sample_record()
    assert [x.index for x in rec.values] == [1, 2, 3, 4, 5, 100]
    wire = msgpack.unpackb(rec.encode())
    assert wire[-1] == [100, "HS_ADMIN", dict(sorted(ADMIN.items())), DEFAULT_TTL, TS]
    assert list(wire[-1][2]) == ["handle", "index", "permissions"]
    assert Record.decode(rec.encode()) == rec
    assert Record(()).encode() == b"\x90"


def _enc(*parts: Any) -> bytes:
    return b"".join(p if isinstance(p, bytes) else msgpack.packb(p) for p in parts)


URL_A = "https://a.example/"
ONE_VALUE = [[1, "URL", URL_A, DEFAULT_TTL, TS]]

NON_CANONICAL: list[tuple[str, bytes]] = [
    (
        "HS_ADMIN map keys unsorted",
        msgpack.packb(
            [[100, "HS_ADMIN", {"permissions": "0111", "index": 200, "handle": "0.NA/X"}, 1, TS]]
        ),
    ),
    (
        "HS_ADMIN map with a duplicated key",
        _enc(
            b"\x91\x95",
            100,
            "HS_ADMIN",
            b"\x84",
            "handle",
            "0.NA/Y",
            "handle",
            "0.NA/X",
            "index",
            200,
            "permissions",
            "0111",
            1,
            TS,
        ),
    ),
    ("index 1 as uint16", _enc(b"\x91\x95\xcd\x00\x01", "URL", URL_A, DEFAULT_TTL, TS)),
    ("index 1 as int64", _enc(b"\x91\x95\xd3" + (1).to_bytes(8, "big"), "URL", URL_A, 86400, TS)),
    ("type as str8", _enc(b"\x91\x95", 1, b"\xd9\x03URL", URL_A, DEFAULT_TTL, TS)),
    ("outer array as array16", _enc(b"\xdc\x00\x01\x95", 1, "URL", URL_A, DEFAULT_TTL, TS)),
    (
        "values out of index order",
        msgpack.packb([[2, "DESC", "b", 1, TS], [1, "DESC", "a", 1, TS]]),
    ),
    ("GEO in a non-canonical text", msgpack.packb([[1, "GEO", "38.50,114", 1, TS]])),
    ("known type in lower case", msgpack.packb([[1, "url", URL_A, 1, TS]])),
    ("NS glue with doubled space", msgpack.packb([[1, "NS", "ns1.example  192.0.2.1", 1, TS]])),
    ("trailing byte", msgpack.packb(ONE_VALUE) + b"\xc0"),
]

MALFORMED: list[tuple[str, bytes, str]] = [
    ("value with an extra element", msgpack.packb([[1, "URL", URL_A, 1, TS, 0]]), "encoding"),
    ("value with a missing element", msgpack.packb([[1, "URL", URL_A, 1]]), "encoding"),
    ("record is a map", msgpack.packb({"values": ONE_VALUE}), "encoding"),
    ("empty input", b"", "encoding"),
    ("reserved byte 0xc1", b"\xc1", "encoding"),
    ("truncated", msgpack.packb(ONE_VALUE)[:-3], "encoding"),
    ("integer map key", msgpack.packb([[100, "HS_ADMIN", {1: 2}, 1, TS]]), "encoding"),
    ("index as float", msgpack.packb([[1.0, "URL", URL_A, 1, TS]]), "index"),
    (
        "timestamp as msgpack ext",
        msgpack.packb([[1, "URL", URL_A, 1, msgpack.Timestamp(TS)]]),
        "timestamp",
    ),
    ("data as bin", msgpack.packb([[1, "URL", URL_A.encode(), 1, TS]]), "data-type"),
    ("data as nil", msgpack.packb([[1, "DESC", None, 1, TS]]), "data-type"),
    ("index as bool", msgpack.packb([[True, "DESC", "x", 1, TS]]), "index"),
    (
        "index as msgpack ext",
        msgpack.packb([[msgpack.ExtType(5, b"\x01"), "DESC", "x", 1, TS]]),
        "index",
    ),
]


@pytest.mark.parametrize("data", [d for _, d in NON_CANONICAL], ids=[n for n, _ in NON_CANONICAL])
def test_non_canonical_encoding_is_refused(data: bytes) -> None:
    with pytest.raises(RecordError) as e:
        Record.decode(data)
    assert e.value.rule == "encoding"


@pytest.mark.parametrize(
    ("data", "rule"), [(d, r) for _, d, r in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_encoding_is_refused(data: bytes, rule: str) -> None:
    with pytest.raises(RecordError) as e:
        Record.decode(data)
    assert e.value.rule == rule


def test_the_canonical_twin_decodes() -> None:
    # The non-canonical inputs above are refused for their form, not their content.
    assert Record.decode(msgpack.packb(ONE_VALUE)).values[0].data == URL_A


# -- Handle REST JSON -------------------------------------------------------------------

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_handle_rest_json_shape() -> None:
    body = sample_record().to_json("MA.156.1301.02/W0000127R")
    assert set(body) == {"responseCode", "handle", "values"}
    assert body["responseCode"] == 1
    assert body["handle"] == "MA.156.1301.02/W0000127R"
    assert [x["index"] for x in body["values"]] == [1, 2, 3, 4, 5, 100]
    for item in body["values"]:
        assert set(item) == {"index", "type", "data", "ttl", "timestamp"}
        assert set(item["data"]) == {"format", "value"}
        assert isinstance(item["index"], int) and isinstance(item["ttl"], int)
        assert ISO_Z.fullmatch(item["timestamp"]), item["timestamp"]
    url, admin = body["values"][0], body["values"][-1]
    assert url == {
        "index": 1,
        "type": "URL",
        "data": {"format": "string", "value": "https://water.sjz.example/meter/W0000127R"},
        "ttl": 86400,
        "timestamp": "2023-11-14T22:13:20Z",
    }
    assert admin["data"] == {"format": "admin", "value": ADMIN}
    assert body["values"][2]["data"]["value"] == "38.0428,114.5149"
    json.dumps(body)  # serialisable as is
    assert iso_timestamp(0) == "1970-01-01T00:00:00Z"
    assert sample_record().to_json("X/Y", 100)["responseCode"] == 100


def test_values_from_json_accepts_what_handle_clients_send() -> None:
    items = [
        {"index": 1, "type": "URL", "data": "https://a.example/x"},
        {"index": 2, "type": "DESC", "data": {"format": "string", "value": "meter"}, "ttl": "60"},
        {
            "index": "100",
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.na/ma.156", "index": "200", "permissions": "011"},
            },
        },
    ]
    rec = values_from_json(items, timestamp=TS)
    assert [(x.index, x.type) for x in rec.values] == [(1, "URL"), (2, "DESC"), (100, "HS_ADMIN")]
    assert rec.values[0].data == "https://a.example/x"
    assert rec.values[1].data == "meter" and rec.values[1].ttl == 60
    assert rec.values[0].ttl == DEFAULT_TTL
    assert rec.values[2].data == {"handle": "0.NA/MA.156", "index": 200, "permissions": "011"}
    # The object form {"values": [...]} is accepted as well, and the JSON round-trips.
    again = values_from_json({"values": rec.to_json("X/Y")["values"]}, timestamp=TS)
    assert again == rec


def test_values_from_json_round_trips_our_own_json() -> None:
    rec = sample_record()
    assert values_from_json(json.loads(json.dumps(rec.to_json("A/B"))), timestamp=TS) == rec


# -- select and templates ---------------------------------------------------------------


def typed_record() -> Record:
    return Record.of(
        [
            v(1, "URL", "https://a.example/"),
            v(2, "URL", "https://b.example/"),
            v(3, "DESC", "plain"),
            v(4, "DESC.EN", "english"),
            v(5, "DESC.ZH", "中文"),
            v(6, "DESCRIPTION", "not a sub-type"),
            v(100, "HS_ADMIN", ADMIN),
        ]
    )


@pytest.mark.parametrize(
    ("types", "indexes", "want"),
    [
        ((), (), [1, 2, 3, 4, 5, 6, 100]),
        (("URL",), (), [1, 2]),
        (("DESC.",), (), [4, 5]),
        (("DESC",), (), [3]),
        (("DESC.EN",), (), [4]),
        (("URL", "HS_ADMIN"), (), [1, 2, 100]),
        ((), (100,), [100]),
        ((), (2, 4, 999), [2, 4]),
        (("DESC.",), (1,), [1, 4, 5]),
        (("NOPE",), (), []),
        ((), (7,), []),
    ],
)
def test_select(types: tuple[str, ...], indexes: tuple[int, ...], want: list[int]) -> None:
    got = typed_record().select(types, indexes)
    assert [x.index for x in got.values] == want


def test_render_template() -> None:
    tpl = Record.of(
        [
            v(1, "URL", "https://water.sjz.example/meter/{suffix}"),
            v(2, "DESC", "Water meter {suffix}"),
            v(3, "EMAIL", "water@sjz.example"),
        ]
    )
    out = render_template(tpl, suffix="W0000127R")
    assert out.values[0].data == "https://water.sjz.example/meter/W0000127R"
    assert out.values[1].data == "Water meter W0000127R"
    assert out.values[2] == tpl.values[2]
    assert [x.timestamp for x in out.values] == [TS, TS, TS]


@pytest.mark.parametrize(
    "template",
    [
        "https://a.example/{nope}",
        "https://a.example/{0}",
        "https://a.example/{}",
        "https://a.example/{",
        "https://a.example/{suffix:d}",
    ],
)
def test_render_template_rejects_unknown_fields(template: str) -> None:
    tpl = Record.of([v(1, "URL", template)])
    with pytest.raises(RecordError) as e:
        render_template(tpl, suffix="W0000127R")
    assert e.value.rule == "template"
    if "nope" in template:
        assert "{nope}" in e.value.message and "suffix" in e.value.message


def test_render_template_revalidates_the_result() -> None:
    tpl = Record.of([v(1, "URL", "https://a.example/{suffix}")])
    with pytest.raises(RecordError) as e:
        render_template(tpl, suffix="a b")
    assert e.value.rule == "url-charset"


# -- the table of bad record inputs -----------------------------------------------------

BIG = "x" * 3000


def _make(index: Any, vtype: Any, data: Any, ttl: Any = DEFAULT_TTL) -> Callable[[], object]:
    return lambda: Value.make(index, vtype, data, ttl, TS)


def _json(items: Any) -> Callable[[], object]:
    return lambda: values_from_json(items, timestamp=TS)


BAD_RECORDS: list[tuple[str, Callable[[], object], str]] = [
    ("javascript: URL", _make(1, "URL", "javascript:alert(1)"), "url-scheme"),
    ("javascript: URL, type in lower case", _make(1, "url", "javascript:alert(1)"), "url-scheme"),
    ("data: URL", _make(1, "URL", "data:text/html,<script>x</script>"), "url-scheme"),
    ("ftp URL", _make(1, "URL", "ftp://a.example/"), "url-scheme"),
    ("relative URL", _make(1, "URL", "/x/y"), "url-scheme"),
    ("URL without host", _make(1, "URL", "https:///x"), "url-host"),
    ("URL with empty host and port", _make(1, "URL", "http://:80/x"), "url-host"),
    ("URL with a space", _make(1, "URL", "https://a.example/a b"), "url-charset"),
    ("URL with a newline", _make(1, "URL", "https://a.example/\nx"), "url-charset"),
    ("URL too long", _make(1, "URL", "https://a.example/" + "x" * 2100), "url-length"),
    ("URL with broken IPv6 host", _make(1, "URL", "http://[::1"), "url-host"),
    ("GEO lat 91", _make(1, "GEO", "91,0"), "geo-range"),
    ("GEO lat -90.0000001", _make(1, "GEO", "-90.0000001,0"), "geo-range"),
    ("GEO lon -181", _make(1, "GEO", "0,-181"), "geo-range"),
    ("GEO NaN", _make(1, "GEO", "nan,0"), "geo-range"),
    ("GEO infinity", _make(1, "GEO", "0,inf"), "geo-range"),
    ("GEO not a pair", _make(1, "GEO", "38.04"), "geo-syntax"),
    ("GEO a triple", _make(1, "GEO", "38,114,20"), "geo-syntax"),
    ("GEO words", _make(1, "GEO", "north,east"), "geo-syntax"),
    ("EMAIL without @", _make(1, "EMAIL", "water.sjz.example"), "email-syntax"),
    ("EMAIL without domain dot", _make(1, "EMAIL", "water@localhost"), "email-syntax"),
    ("EMAIL with a space", _make(1, "EMAIL", "wa ter@sjz.example"), "email-syntax"),
    (
        "HS_ADMIN bad permissions",
        _make(100, "HS_ADMIN", {**ADMIN, "permissions": "01x1"}),
        "admin-syntax",
    ),
    ("HS_ADMIN index 0", _make(100, "HS_ADMIN", {**ADMIN, "index": 0}), "admin-syntax"),
    ("HS_ADMIN missing key", _make(100, "HS_ADMIN", {"handle": "0.NA/X"}), "admin-syntax"),
    ("HS_ADMIN extra key", _make(100, "HS_ADMIN", {**ADMIN, "x": 1}), "admin-syntax"),
    ("HS_ADMIN as a string", _make(100, "HS_ADMIN", "0.NA/X"), "admin-syntax"),
    ("HS_SITE javascript", _make(1, "HS_SITE", {"resolver": "javascript:x"}), "url-scheme"),
    ("HS_SITE unknown role", _make(1, "HS_SITE", {"cdn": "https://a.example/"}), "site-syntax"),
    ("HS_SITE empty", _make(1, "HS_SITE", {}), "site-syntax"),
    ("index 0", _make(0, "DESC", "x"), "index"),
    ("index negative", _make(-1, "DESC", "x"), "index"),
    ("index 2**31", _make(2**31, "DESC", "x"), "index"),
    ("index as string", _make("1", "DESC", "x"), "index"),
    ("negative ttl", _make(1, "DESC", "x", -1), "ttl"),
    ("ttl 2**31", _make(1, "DESC", "x", 2**31), "ttl"),
    ("bad type name: space", _make(1, "MY TYPE", "x"), "type"),
    ("bad type name: empty", _make(1, "", "x"), "type"),
    ("bad type name: 65 chars", _make(1, "T" * 65, "x"), "type"),
    ("bad type name: non-ASCII", _make(1, "DÉSC", "x"), "type"),
    ("DESC with NUL", _make(1, "DESC", "a\x00b"), "data-charset"),
    ("DESC too long", _make(1, "DESC", "x" * 4097), "data-length"),
    ("DESC as a number", _make(1, "DESC", 5), "data-type"),
    (
        "10320/LOC with javascript href",
        _make(1, "10320/LOC", '<locations><location href="javascript:alert(1)"/></locations>'),
        "url-scheme",
    ),
    (
        "10320/LOC with no href",
        _make(1, "10320/LOC", "<locations><location/></locations>"),
        "url-scheme",
    ),
    ("10320/LOC bad XML", _make(1, "10320/LOC", "<locations><location"), "loc-syntax"),
    ("10320/LOC wrong root", _make(1, "10320/LOC", "<loc/>"), "loc-syntax"),
    ("10320/LOC no location", _make(1, "10320/LOC", "<locations/>"), "loc-syntax"),
    ("NS with bad glue", _make(1, "NS", "ns1.sjz.example 192.0.2.300"), "ns-syntax"),
    ("NS with a bad host", _make(1, "NS", "ns1..example 192.0.2.1"), "ns-syntax"),
    ("NS empty", _make(1, "NS", "   "), "ns-syntax"),
    (
        "duplicate index",
        lambda: Record.of([v(1, "DESC", "a"), v(1, "DESC", "b")]),
        "duplicate-index",
    ),
    (
        f"{MAX_VALUES + 1} values",
        lambda: Record.of([v(i, "DESC", "x") for i in range(1, MAX_VALUES + 2)]),
        "too-many-values",
    ),
    (
        f"record over {MAX_RECORD_BYTES} bytes",
        lambda: Record.of([v(i, "DESC", BIG) for i in range(1, 4)]),
        "record-size",
    ),
    (
        "JSON: 33 values",
        _json([{"index": i, "type": "DESC", "data": "x"} for i in range(1, 34)]),
        "too-many-values",
    ),
    ("JSON: not an array", _json({"index": 1}), "json"),
    ("JSON: value not an object", _json(["x"]), "json"),
    ("JSON: index as float", _json([{"index": 1.5, "type": "DESC", "data": "x"}]), "json"),
    ("JSON: index as bool", _json([{"index": True, "type": "DESC", "data": "x"}]), "json"),
    ("JSON: index missing", _json([{"type": "DESC", "data": "x"}]), "json"),
    (
        "JSON: ttl negative string",
        _json([{"index": 1, "type": "DESC", "data": "x", "ttl": "-1"}]),
        "json",
    ),
    (
        "JSON: duplicate index",
        _json([{"index": 1, "type": "DESC", "data": "x"}] * 2),
        "duplicate-index",
    ),
    ("JSON: data missing", _json([{"index": 1, "type": "DESC"}]), "data-type"),
]


def test_bad_record_table_is_large() -> None:
    assert len(BAD_RECORDS) >= 30
    assert len({n for n, _, _ in BAD_RECORDS}) == len(BAD_RECORDS)


@pytest.mark.parametrize(
    ("call", "rule"), [(c, r) for _, c, r in BAD_RECORDS], ids=[n for n, _, _ in BAD_RECORDS]
)
def test_bad_record_input_names_its_rule(call: Callable[[], object], rule: str) -> None:
    with pytest.raises(RecordError) as e:
        call()
    assert e.value.rule == rule
    assert e.value.message


def test_bounds_are_inclusive() -> None:
    Record.of([v(i, "DESC", "x") for i in range(1, MAX_VALUES + 1)])
    v(2**31 - 1, "DESC", "x", 2**31 - 1)
    v(1, "GEO", "-90,-180")
    v(1, "GEO", "90,180")
    assert v(1, "GEO", "38.04280000,114.5149").data == "38.0428,114.5149"
    assert v(1, "GEO", "-0.0,0").data == "0,0"
    assert v(1, "url", "https://a.example/").type == "URL"
    assert v(1, "NS", "ns1.sjz.example  192.0.2.1   2001:db8::1").data == (
        "ns1.sjz.example 192.0.2.1 2001:db8::1"
    )


# -- regressions -------------------------------------------------------------------------------

JS_LOC = '<locations><location href="javascript:alert(1)"/></locations>'


def test_loc_type_in_lower_case_is_still_validated() -> None:
    with pytest.raises(RecordError) as e:
        Value.make(1, "10320/loc", JS_LOC, DEFAULT_TTL, TS)
    assert e.value.rule == "url-scheme"


def test_bad_pubkey_value_is_a_record_error() -> None:
    with pytest.raises(RecordError):
        Value.make(1, "CITYID_PUBKEY", "not-a-key", DEFAULT_TTL, TS)


def test_cityid_payloads_have_their_own_types_and_older_records_still_read() -> None:
    # HS_PUBKEY is Handle's (its binary key format, base64 in JSON): cityid does not judge it.
    Value.make(1, "HS_PUBKEY", "AAAADERTQV9QVUJfS0VZAAAA", DEFAULT_TTL, TS)
    site = {"ledger": "https://ledger.example/log"}
    key = str(SigningKey.generate("log.example/log").verifier)
    for site_type, key_type in (("CITYID_SITE", "CITYID_PUBKEY"), ("HS_SITE", "HS_PUBKEY")):
        record = Record.of(
            [
                Value.make(1, site_type, site, timestamp=TS),
                Value.make(2, key_type, key, timestamp=TS),
            ]
        )
        assert (record.sites(), record.pubkeys()) == (site, [key])


def test_lone_surrogate_from_json_is_a_record_error() -> None:
    items = json.loads('[{"index": 1, "type": "DESC", "data": "a\\ud800b"}]')
    with pytest.raises(RecordError):
        values_from_json(items, timestamp=TS)


@pytest.mark.parametrize("text", ["²", "٣", "２００"])
def test_json_numbers_are_ascii_digits(text: str) -> None:
    with pytest.raises(RecordError) as e:
        values_from_json([{"index": text, "type": "DESC", "data": "x"}], timestamp=TS)
    assert e.value.rule == "json"


@pytest.mark.parametrize(
    "template", ["{suffix.upper}", "{suffix.nope}", "{suffix[a]}", "{suffix.__class__}"]
)
def test_render_template_allows_only_plain_fields(template: str) -> None:
    tpl = Record.of([v(1, "DESC", f"meter {template}")])
    with pytest.raises(RecordError) as e:
        render_template(tpl, suffix="W0000127R")
    assert e.value.rule == "template"


# -- fast paths: each must give what the plain check gives -------------------------------


def test_printable_text_has_nothing_the_character_checks_refuse() -> None:
    # Free text and URLs skip the control-character and white-space scans when
    # str.isprintable() holds: true of every code point of this Python's Unicode.
    from cityid.records import _CONTROL_RE, _URL_BAD_RE

    text = "".join(chr(c) for c in range(0x110000) if chr(c).isprintable() and c != 0x20)
    assert _CONTROL_RE.search(text) is None
    assert _URL_BAD_RE.search(text) is None
    assert not any(chr(c).isprintable() for c in range(0xD800, 0xE000))  # surrogates


def _geo_by_floats(data: str) -> str | tuple[str, str]:
    """GEO's check by parsing and formatting floats only (what its fast path skips)."""
    import math

    from cityid.records import _fmt_deg

    try:
        lat_s, lon_s = data.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        return ("error", "geo-syntax")
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return ("error", "geo-range")
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return ("error", "geo-range")
    return f"{_fmt_deg(lat)},{_fmt_deg(lon)}"


degrees = st.one_of(
    st.floats(-200, 200, allow_nan=False).map(repr),
    st.builds(
        lambda sign, whole, frac: f"{sign}{whole}{'.' + frac if frac else ''}",
        st.sampled_from(["", "-"]),
        st.sampled_from(["0", "00", "1", "9", "89", "90", "91", "179", "180", "181", "999"]),
        st.text(alphabet="0123456789", max_size=9),
    ),
    st.sampled_from(["-0", "0.", ".5", "1e2", "1_0", " 1", "nan", "inf", ""]),
)


@settings(max_examples=2000, deadline=None)
@given(lat=degrees, lon=degrees)
def test_geo_fast_path_agrees_with_float_formatting(lat: str, lon: str) -> None:
    data = f"{lat},{lon}"
    try:
        got: str | tuple[str, str] = Value.make(1, "GEO", data, DEFAULT_TTL, TS).data  # type: ignore[assignment]
    except RecordError as e:
        got = ("error", e.rule)
    assert got == _geo_by_floats(data)
