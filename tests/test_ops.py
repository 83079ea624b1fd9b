"""Signed operations: the leaf encoding, strict decoding, signatures and their domain."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from cityid.errors import OperationError, SignatureError
from cityid.identifiers import Prefix, mint_suffix, parse_identifier
from cityid.keys import SigningKey
from cityid.ops import (
    DOMAIN,
    KINDS,
    MAX_LEAF,
    VERSION,
    Custodial,
    Custody,
    Delegate,
    Delete,
    Mint,
    MintItem,
    MintRange,
    Operation,
    RotateKey,
    SignedOperation,
    Update,
    chunk_items,
    encode_body,
    key_fingerprint,
)
from cityid.records import Record, Value

T = 1_700_000_000


def key(name: str) -> SigningKey:
    return SigningKey(name, hashlib.sha256(name.encode()).digest())


WRITER = key("writer")
OTHER = key("other")
CITY = Prefix.parse("MA.156.1301")


def rec(*urls: str) -> Record:
    values = [Value.make(i + 1, "URL", u, 3600, T) for i, u in enumerate(urls)]
    values.append(
        Value.make(
            100,
            "HS_ADMIN",
            {"handle": "0.NA/MA.156.1301", "index": 200, "permissions": "011111110011"},
            86400,
            T,
        )
    )
    return Record.of(values)


def all_ops() -> list[Operation]:
    r = rec("https://water.sjz.example/")
    return [
        Delegate(CITY, 0, OTHER.public_key, "shijiazhuang.cityid.test/log", r, T),
        Delegate(CITY.child("01"), 0, OTHER.public_key, None, Record(()), T),
        Mint(CITY, (MintItem("W0000127R", 0, r), MintItem("BUS-STOP_7", 2, Record(()))), T),
        MintRange(CITY, "W", 0, 1_000_000, 7, rec("https://water.sjz.example/m/{suffix}"), T),
        MintRange(CITY, "", 5, 1, 3, Record(()), T),
        Update(parse_identifier("MA.156.1301/W0000127R"), 1, r, T),
        Update(parse_identifier("0.NA/MA.156.1301.01"), 3, r, T),
        Delete(parse_identifier("MA.156.1301/W0000127R"), 2, T),
        Delete(parse_identifier("0.NA/MA.156.1301.01"), 1, T),
        RotateKey(CITY, 1, OTHER.public_key, T),
        Custody(CITY, 0, OTHER.public_key, ("MA.156.1301/ADMIN", "MA.156.1301/OPS"), T),
        Custody(CITY, 1, OTHER.public_key, (), T),
        Custodial("MA.156.1301/ADMIN", Update(parse_identifier("MA.156.1301/X"), 1, r, T)),
        Custodial("0.NA/MA.156.1301", Mint(CITY, (MintItem("Y", 0, r),), T)),
        Custodial("MA.156.1301/ADMIN", Delete(parse_identifier("MA.156.1301/X"), 2, T)),
    ]


OPS = all_ops()
OP_IDS = [f"{op.kind}-{n}" for n, op in enumerate(OPS)]


def test_every_kind_is_covered() -> None:
    assert {op.kind for op in OPS} == set(KINDS)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_encode_decode_round_trip(op: Operation) -> None:
    signed = SignedOperation.sign(op, WRITER)
    leaf = signed.encode()
    assert len(leaf) <= MAX_LEAF
    back = SignedOperation.decode(leaf)
    assert back == signed
    assert back.op == op
    assert back.encode() == leaf
    assert back.signer == WRITER.public_key
    assert back.fingerprint == key_fingerprint(WRITER.public_key)
    obj = msgpack.unpackb(leaf)
    assert obj[0] == VERSION and obj[1][0] == op.kind
    # Signing is deterministic, so one operation has one leaf.
    assert SignedOperation.sign(op, WRITER).encode() == leaf


def test_range_suffixes() -> None:
    r = MintRange(CITY, "W", 126, 3, 7, Record(()), T)
    assert r.suffixes() == [mint_suffix("W", n, 7) for n in (126, 127, 128)]
    assert r.suffix(1) == "W0000127R"
    assert r.contains("W", 127, 7)
    assert not r.contains("W", 129, 7) and not r.contains("W", 127, 8)
    assert not r.contains("X", 127, 7)


# -- tampering --------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_flipped_byte_is_refused(op: Operation) -> None:
    leaf = SignedOperation.sign(op, WRITER).encode()
    for mask in (0x01, 0x80, 0xFF):
        for i in range(len(leaf)):
            bad = bytearray(leaf)
            bad[i] ^= mask
            with pytest.raises((OperationError, SignatureError)):
                SignedOperation.decode(bytes(bad))


def test_signature_by_another_key_is_refused() -> None:
    op = OPS[5]
    signed = SignedOperation.sign(op, WRITER)
    forged = SignedOperation(op, OTHER.public_key, signed.signature)
    with pytest.raises(SignatureError) as e:
        SignedOperation.decode(forged.encode())
    assert e.value.rule == "forged-signature"
    assert key_fingerprint(OTHER.public_key) in e.value.message
    assert "MA.156.1301/W0000127R" in e.value.message


def test_swapped_body_is_refused() -> None:
    a, b = (SignedOperation.sign(op, WRITER) for op in OPS[5:7])
    chimera = SignedOperation(a.op, WRITER.public_key, b.signature)
    with pytest.raises(SignatureError):
        SignedOperation.decode(chimera.encode())


def test_domain_separation() -> None:
    op = OPS[5]
    body = encode_body(op)
    assert body == msgpack.packb(op.body(), use_bin_type=True)
    raw = SignedOperation(op, WRITER.public_key, WRITER.sign(body))
    with pytest.raises(SignatureError) as e:
        raw.verify()
    assert e.value.rule == "forged-signature"
    with pytest.raises(SignatureError):
        SignedOperation.decode(raw.encode())
    # The signature is over DOMAIN + body, and nothing else.
    good = SignedOperation.sign(op, WRITER)
    WRITER.verifier.verify(DOMAIN + body, good.signature)
    assert DOMAIN.startswith(VERSION.encode()) and DOMAIN.endswith(b"\x00")


# -- strict decoding --------------------------------------------------------------------

SIGNED = SignedOperation.sign(OPS[0], WRITER)  # a delegate: prefix, ints, key, origin, record
SIG = SIGNED.signature
PK = WRITER.public_key


def _pack(*parts: object) -> bytes:
    return b"".join(p if isinstance(p, bytes) else msgpack.packb(p) for p in parts)


def _leaf(body: list[object], signer: object = PK, sig: object = SIG) -> bytes:
    return msgpack.packb([VERSION, body, signer, sig], use_bin_type=True)


def _body(**change: object) -> list[object]:
    b = list(OPS[0].body())
    names = ["kind", "prefix", "prev", "key", "origin", "record", "time"]
    for k, val in change.items():
        b[names.index(k)] = val
    return b


# The body fields of OPS[0] as canonical msgpack, to splice non-canonical forms in.
_B = [msgpack.packb(x, use_bin_type=True) for x in OPS[0].body()]
_PK, _SIG = (msgpack.packb(x, use_bin_type=True) for x in (PK, SIG))

NON_CANONICAL: list[tuple[str, bytes, str]] = [
    (
        "prev 0 as uint8",
        _pack(b"\x94", VERSION, b"\x97", *_B[:2], b"\xcc\x00", *_B[3:], _PK, _SIG),
        "canonical",
    ),
    (
        "time as uint64",
        _pack(b"\x94", VERSION, b"\x97", *_B[:6], b"\xcf" + T.to_bytes(8, "big"), _PK, _SIG),
        "canonical",
    ),
    (
        "kind as str8",
        _pack(b"\x94", VERSION, b"\x97", b"\xd9\x08delegate", *_B[1:], _PK, _SIG),
        "canonical",
    ),
    (
        "leaf array as array16",
        _pack(b"\xdc\x00\x04", VERSION, b"\x97", *_B, _PK, _SIG),
        "canonical",
    ),
    (
        "HS_ADMIN keys unsorted in the record",
        _leaf(
            _body(
                record=[
                    [1, "URL", "https://water.sjz.example/", 3600, T],
                    [
                        100,
                        "HS_ADMIN",
                        {"permissions": "011111110011", "index": 200, "handle": "0.NA/MA.156.1301"},
                        86400,
                        T,
                    ],
                ]
            )
        ),
        "canonical",
    ),
    ("prefix in lower case", _leaf(_body(prefix="ma.156.1301")), "canonical"),
    ("prefix with white space", _leaf(_body(prefix=" MA.156.1301")), "canonical"),
    ("trailing byte", SIGNED.encode() + b"\xc0", "encoding"),
    ("extra body field", _leaf([*OPS[0].body(), 0]), "arity"),
    ("missing body field", _leaf(OPS[0].body()[:-1]), "arity"),
    ("extra leaf element", msgpack.packb([VERSION, OPS[0].body(), PK, SIG, 0]), "version"),
    ("other version tag", _leaf(OPS[0].body()).replace(b"op/v1", b"op/v2"), "version"),
    ("version as bin", msgpack.packb([VERSION.encode(), OPS[0].body(), PK, SIG]), "version"),
    ("unknown kind", _leaf(_body(kind="transfer")), "kind"),
    ("kind as integer", _leaf(_body(kind=1)), "kind"),
    ("signature of 63 bytes", _leaf(OPS[0].body(), sig=SIG[:63]), "field"),
    ("signature as str", _leaf(OPS[0].body(), sig="x" * 64), "field"),
    ("signer of 31 bytes", _leaf(OPS[0].body(), signer=PK[:31]), "field"),
    ("key as str", _leaf(_body(key="k" * 32)), "field"),
    ("prev negative", _leaf(_body(prev=-1)), "field"),
    ("prev as bool", _leaf(_body(prev=False)), "field"),
    ("origin as int", _leaf(_body(origin=7)), "field"),
    ("record not a list", _leaf(_body(record={"a": 1})), "encoding"),
    ("prefix bad node", _leaf(_body(prefix="MA..156")), "empty-node"),
    ("not msgpack", b"\xc1\xc1", "encoding"),
    ("not an array", msgpack.packb({"v": 1}), "version"),
]


@pytest.mark.parametrize(
    ("leaf", "rule"), [(b, r) for _, b, r in NON_CANONICAL], ids=[n for n, _, _ in NON_CANONICAL]
)
def test_non_canonical_or_malformed_leaf_is_refused(leaf: bytes, rule: str) -> None:
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(leaf)
    assert e.value.rule == rule


def test_canonical_twin_of_spliced_leaves_decodes() -> None:
    # The splices above are refused for their form: the canonical splice is the leaf.
    assert _pack(b"\x94", VERSION, b"\x97", *_B, _PK, _SIG) == SIGNED.encode()
    SignedOperation.decode(SIGNED.encode())


def test_mint_item_suffix_must_be_canonical() -> None:
    body = ["mint", "MA.156.1301", [["w0000127r", 0, []]], T]
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(_leaf(body))
    assert e.value.rule == "canonical"


def test_mint_names_a_suffix_once() -> None:
    body = ["mint", "MA.156.1301", [["A", 0, []], ["A", 0, []]], T]
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(_leaf(body))
    assert e.value.rule == "duplicate-suffix"


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        (("W", 0, 0, 7), "field"),
        (("W", 0, 10_000_001, 7), "field"),
        (("w", 0, 10, 7), "range-letters"),
        (("W1", 0, 10, 7), "range-letters"),
        (("W", 0, 10, 0), "field"),
        (("W", 0, 10, 31), "field"),
        (("W", 995, 10, 3), "not-minted-form"),
        (("W" * 60, 0, 10, 3), "suffix-length"),
    ],
)
def test_bad_ranges_are_refused(fields: tuple[str, int, int, int], rule: str) -> None:
    body = ["mint-range", "MA.156.1301", *fields, [], T]
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(_leaf(body))
    assert e.value.rule == rule


def test_range_bounds_when_built_directly() -> None:
    with pytest.raises(OperationError) as e:
        MintRange(CITY, "W", 0, 0, 7, Record(()), T)
    assert e.value.rule == "range-count"
    with pytest.raises(OperationError) as e:
        MintRange(CITY, "W", 0, 10, 31, Record(()), T)
    assert e.value.rule == "range-width"


# -- size -------------------------------------------------------------------------------


def _big_mint(n: int) -> Mint:
    desc = Value.make(1, "DESC", "x" * 2000, 60, T)
    items = tuple(MintItem(f"M{i:05d}", 0, Record.of([desc])) for i in range(n))
    return Mint(CITY, items, T)


def test_leaf_over_65535_bytes_is_refused() -> None:
    op = _big_mint(40)
    assert len(encode_body(op)) > MAX_LEAF
    signed = SignedOperation.sign(op, WRITER)
    with pytest.raises(OperationError) as e:
        signed.encode()
    assert e.value.rule == "leaf-too-large"
    raw = msgpack.packb([VERSION, op.body(), PK, signed.signature], use_bin_type=True)
    assert len(raw) > MAX_LEAF
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(raw)
    assert e.value.rule == "leaf-too-large"
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(b"\x00" * (MAX_LEAF + 1))
    assert e.value.rule == "leaf-too-large"


def test_chunk_items_keeps_leaves_under_the_limit() -> None:
    op = _big_mint(100)
    groups = chunk_items(op.items, CITY)
    assert len(groups) > 1
    assert [it for g in groups for it in g] == list(op.items)
    for g in groups:
        leaf = SignedOperation.sign(Mint(CITY, tuple(g), T), WRITER).encode()
        assert len(leaf) <= MAX_LEAF
        SignedOperation.decode(leaf)


# -- regressions -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [["mint"], {"k": "v"}])
def test_unhashable_kind_is_an_operation_error(kind: object) -> None:
    with pytest.raises(OperationError) as e:
        SignedOperation.decode(_leaf(_body(kind=kind)))
    assert e.value.rule == "kind"


def test_bad_pubkey_in_leaf_is_an_operation_error() -> None:
    body = ["mint", "MA.156.1301", [["A", 0, [[1, "CITYID_PUBKEY", "zz", 60, T]]]], T]
    with pytest.raises(OperationError):
        SignedOperation.decode(_leaf(body))


def test_range_template_must_render() -> None:
    bad = Record.of([Value.make(1, "URL", "https://water.sjz.example/{foo}", 60, T)])
    with pytest.raises(OperationError):
        MintRange(CITY, "W", 0, 10, 7, bad, T)
