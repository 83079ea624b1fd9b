"""The followers' decoder takes exactly what the registrar's strict decoder takes.

``decode_for_replay`` and ``check_wire`` are the fast paths sync uses for bulk
mints; ``SignedOperation.decode`` and ``Record.decode`` are what a registrar
applies. Any leaf or record one accepts and the other refuses would be a way
to make a resolver serve what no registrar accepts (or alarm on what it did).
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityid.errors import CityIdError
from cityid.identifiers import Prefix
from cityid.keys import SigningKey
from cityid.ops import Mint, MintItem, SignedOperation, decode_for_replay, sign_body
from cityid.records import PackedRecord, Record, Value, check_wire, decode_trusted

KEY = SigningKey.generate("dept")
CITY = Prefix.parse("MA.156.1301")
TS = 1_700_000_000

TYPES = ["URL", "url", "EMAIL", "DESC", "GEO", "GEO_BOX", "NAME", "X.Y", "bad type", "HS_SITE"]
DATA = st.one_of(
    st.sampled_from(
        [
            "https://a.example/x",
            "http://b.example",
            "javascript:alert(1)",
            "ops@a.example",
            "38.04,114.51",
            "38.0400,114.51",
            "91,0",
            "37.9,114.4,38.1,114.6",
            "plain text",
            "bell\x07",
            "",
        ]
    ),
    st.text(max_size=20),
    st.dictionaries(st.sampled_from(["registrar", "ledger", "x"]), st.text(max_size=5),
                    max_size=2),
    st.integers(-1, 3),
)  # fmt: skip
VALUE = st.lists(
    st.one_of(
        st.integers(-1, 5), st.sampled_from(TYPES), DATA, st.integers(-1, 90000), st.just(TS)
    ),
    min_size=4,
    max_size=6,
)
WIRE = st.lists(
    st.one_of(
        st.tuples(
            st.integers(-1, 4), st.sampled_from(TYPES), DATA, st.sampled_from([0, 86400, -1]),
            st.sampled_from([TS, -5, True]),
        ).map(list),
        VALUE,
    ),
    max_size=4,
)  # fmt: skip


def _strict_record(obj: Any) -> bool:
    try:
        Record.decode(msgpack.packb(obj))
    except (CityIdError, ValueError, TypeError):
        return False
    return True


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(WIRE)
def test_check_wire_takes_what_record_decode_takes(obj: Any) -> None:
    try:
        check_wire(obj)
        fast = len(msgpack.packb(obj)) <= 8192
    except CityIdError:
        fast = False
    assert fast == _strict_record(obj), obj


def _leaf(items: list[Any]) -> bytes:
    return sign_body(msgpack.packb(["mint", str(CITY), items, TS]), KEY)


def _outcome(decode: Any, leaf: bytes) -> tuple[str, Any]:
    try:
        op = decode(leaf).op
    except CityIdError as e:
        return "refused", e.rule
    return "taken", [(i.suffix, i.prev, i.record.encode()) for i in op.items]


SUFFIX = st.one_of(
    st.sampled_from(["A1", "a1", "B-2", "C_3", "", "X" * 64, "D\nE", "0.NA", "Z9"]),
    st.text(alphabet="AB1-_ \n", min_size=0, max_size=4),
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(SUFFIX, st.sampled_from([0, 1, -1, True]), WIRE).map(list),
                min_size=1, max_size=4))  # fmt: skip
def test_decode_for_replay_takes_what_decode_takes(items: list[Any]) -> None:
    leaf = _leaf(items)
    fast, strict = _outcome(decode_for_replay, leaf), _outcome(SignedOperation.decode, leaf)
    assert fast[0] == strict[0], (items, fast, strict)
    if fast[0] == "taken":
        assert fast == strict  # the same suffixes, versions and record bytes


def test_a_forged_or_altered_leaf_is_refused_as_decode_refuses_it() -> None:
    rec = Record.of([Value.make(1, "URL", "https://a.example/1", timestamp=TS)])
    leaf = SignedOperation.sign(Mint(CITY, (MintItem("A1", 0, rec),), TS), KEY).encode()
    assert _outcome(decode_for_replay, leaf)[0] == "taken"
    forged = leaf[:-1] + bytes([leaf[-1] ^ 1])
    assert _outcome(decode_for_replay, forged) == ("refused", "forged-signature")
    # A map with its keys out of order: valid msgpack, valid values, not canonical.
    site = {"registrar": "https://r.example", "ledger": "https://r.example/log"}
    loose = _leaf([["A1", 0, [[1, "HS_SITE", site, 86400, TS]]]])
    assert _outcome(decode_for_replay, loose) == _outcome(SignedOperation.decode, loose)
    assert _outcome(decode_for_replay, loose)[0] == "refused"
    # A time that is a float: refused by both, for the same rule.
    odd = sign_body(msgpack.packb(["mint", str(CITY), [["A1", 0, rec.to_wire()]], 1.5]), KEY)
    assert _outcome(decode_for_replay, odd) == _outcome(SignedOperation.decode, odd)


def test_records_read_back_as_stored() -> None:
    rec = Record.of(
        [
            Value.make(1, "URL", "https://a.example/1", timestamp=TS),
            Value.make(2, "HS_SITE", {"registrar": "https://r.example"}, timestamp=TS),
            Value.make(3, "GEO", "38.04,114.51", timestamp=TS),
        ]
    )
    assert decode_trusted(rec.encode()) == rec
    packed = PackedRecord.of_bytes(rec.encode())
    assert packed.encode() == rec.encode() and packed.values == rec.values
    with pytest.raises(CityIdError):
        _ = PackedRecord.of_bytes(msgpack.packb([[1, "URL", "javascript:x", 0, TS]])).values
