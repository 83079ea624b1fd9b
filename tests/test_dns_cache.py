"""The DNS front's answer cache and the pure pieces of its miss path, without sockets.

* :func:`resolver.dns.answers.plan` reads the common name (a parent at or below a
  root) through a memo of the parent; hypothesis checks that it reads every name
  exactly as the general reading does.
* Negative answers are shared objects encoded once per name length: every label
  length gets a pointer to the right zone name (parsed back with dnspython).
* :class:`resolver.dns.cache.AnswerCache`: stamps shared per zone and second,
  every invalidation message, first-in-first-out bounds, the TTL safety net.
* The miss path builds its store lookups from text, as ``ask_id`` and
  ``ask_prefix`` build them from objects.
"""

from __future__ import annotations

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import msgpack
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cityid.identifiers import Prefix, parse_identifier, split_minted
from cityid.records import Record
from resolver.dns.answers import (
    FORMERR,
    NXDOMAIN,
    REFUSED,
    TXT,
    Answer,
    Lookup,
    ZoneConfig,
    _plan_name,
    decide,
    encode,
    plan,
    render,
    zone_serial,
)
from resolver.dns.cache import AnswerCache
from resolver.store import Ask, Entry, ask_id, ask_prefix

APEX = "cityid.test"
TS = 1_700_000_000


def wire(text: str) -> bytes:
    return dns.name.from_text(text).to_wire()


def record(*values: tuple[str, str]) -> Record:
    rows = [[i + 1, t, d, 3600, TS] for i, (t, d) in enumerate(values)]
    return Record.decode(msgpack.packb(rows, use_bin_type=True))


PREFIX_ENTRY = Entry("0.NA/P", 1, False, record(("DESC", "a prefix")), "o", 0)


def zone_02(step: Lookup) -> list[Entry | None]:
    """The store's prefix entries when MA.156.1301 and MA.156.1301.02 exist, nothing below."""
    return [PREFIX_ENTRY if p.count(".") <= 3 else None for p in step.prefixes]


def query_for(qname: bytes, qtype: int = TXT) -> bytes:
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + qname + qtype.to_bytes(2, "big") \
        + b"\x00\x01"  # fmt: skip


# -- plan: the memoised reading is the general one -----------------------------------------

# Labels of every kind plan tells apart: nodes, suffixes (hyphen, underscore), neither
# (a dot or an upper-case letter inside a label: the key is lowered, these are not),
# and the labels of the configured roots, so names land above, at and below them.
_LABELS = st.one_of(
    st.sampled_from([b"ma", b"156", b"1301", b"02", b"1302", b"w0000127r", b"ns1"]),
    st.from_regex(rb"\A[0-9a-z]{1,5}\Z"),
    st.from_regex(rb"\A[0-9a-z_-]{1,5}\Z"),
    st.from_regex(rb"\A[0-9a-zA-Z_.\-]{1,4}\Z"),
    st.just(b"x" * 63),
)


@settings(max_examples=400, deadline=None)
@example([b"A", b"02", b"1301", b"156", b"ma"], True, TXT)  # not a suffix: no identifier
@example([b"a.b", b"02", b"1301", b"156", b"ma"], True, TXT)
@example([b"x", b"-", b"1301", b"156", b"ma"], True, TXT)  # below a label that is no node
@example([b"w0000127r", b"02", b"1301", b"156", b"ma"], True, TXT)  # a node or a suffix
@example([b"l-1", b"02", b"1301", b"156", b"ma"], True, 256)
@example([b"02", b"1301", b"156", b"ma"], True, TXT)  # a root's apex (nested roots)
@example([b"x", b"02", b"1301", b"156", b"ma"], True, 43)  # DS
@example([b"ns1", b"02", b"1301", b"156", b"ma"], True, 1)  # our own name server
@example([b"x", b"ns1", b"02", b"1301", b"156", b"ma"], True, TXT)
@example([b"156", b"ma"], True, TXT)
@example([b"ma"], True, TXT)  # above the root
@example([b"x", b"ma"], True, TXT)
@example([b"x", b"y"], True, TXT)  # under no root
@example([], True, 6)  # the apex
@example([b"x", b"02", b"1301", b"156", b"ma"], False, TXT)  # outside the apex
@example([b"x"] * 31 + [b"156", b"ma"], True, TXT)  # past MAX_NODES
@given(
    labels=st.lists(_LABELS, min_size=0, max_size=10),
    under_apex=st.booleans(),
    qtype=st.sampled_from([TXT, 1, 2, 6, 43, 256, 35, 252, 41]),
)
def test_plan_reads_each_name_as_the_general_reading_does(
    labels: list[bytes], under_apex: bool, qtype: int
) -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156", "MA.156.1301.02"],
                          ["ns1.02.1301.156.ma.cityid.test. 127.0.0.1"])  # fmt: skip
    apex = [b"cityid", b"test"] if under_apex else [b"example"]
    qname = b"".join(bytes((len(x),)) + x for x in [*labels, *apex]) + b"\x00"
    if len(qname) > 255:
        return
    for _ in range(2):  # once to fill the memo of the parent, once from it
        got = plan(qname, qtype, cfg, 7)
        if qtype in (41, 252):  # OPT, AXFR: never asked, whatever the name
            assert isinstance(got, Answer) and got.rcode in (FORMERR, REFUSED) and not got.cache
        else:
            assert got == _plan_name(qname, qtype, cfg, 7)


def test_plan_of_an_identifier_name() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    step = plan(wire("w0000127r.02.1301.156.ma.cityid.test"), TXT, cfg, 1)
    assert step == Lookup(
        "MA.156",
        ("MA.156.1301", "MA.156.1301.02", "MA.156.1301.02.W0000127R"),  # it may be a node too
        "MA.156.1301.02",
        "W0000127R",
        "MA.156.1301.02/W0000127R",
        3,
        wire("w0000127r.02.1301.156.ma.cityid.test"),
    )
    step = plan(wire("l-1.02.1301.156.ma.cityid.test"), TXT, cfg, 1)
    assert isinstance(step, Lookup) and step.prefixes == ("MA.156.1301", "MA.156.1301.02")
    assert step.ident == "MA.156.1301.02/L-1"


# -- negative answers: shared, and encoded right for every name length ------------------------


def test_negative_answers_are_shared_and_point_at_their_zone() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    zone = dns.name.from_text("02.1301.156.ma.cityid.test")
    answers = []
    for n in range(1, 64):
        qname = wire(f"{'q' * n}.02.1301.156.ma.cityid.test")
        step = plan(qname, TXT, cfg, 42)
        assert isinstance(step, Lookup)
        ans = decide(step, TXT, zone_02(step), None, cfg, 42)
        assert ans.rcode == NXDOMAIN and ans.negative and ans.zone == "MA.156.1301.02"
        answers.append(ans)
        for _ in range(2):  # encoded, then from the memo of that length
            enc = encode(qname, ans)
            query = query_for(qname)
            msg = dns.message.from_wire(render(enc.heads, enc.rest, query, query[12:], b"", 512))
            assert msg.rcode() == dns.rcode.NXDOMAIN
            soa = msg.authority[0]
            assert soa.name == zone and soa.rdtype == dns.rdatatype.SOA
            assert soa[0].serial == zone_serial(PREFIX_ENTRY)
            assert msg.question[0].name == dns.name.from_wire(qname, 0)[0]
    assert all(a is answers[0] for a in answers)  # one object for the zone and serial
    # A name two labels below the zone, and the zone apex itself (NODATA, SOA at offset 12).
    deep = wire("a.b.02.1301.156.ma.cityid.test")
    step = plan(deep, TXT, cfg, 42)
    assert isinstance(step, Lookup)
    ans = decide(step, TXT, zone_02(step), None, cfg, 42)
    q = query_for(deep)
    msg = dns.message.from_wire(render(*encode(deep, ans)[:2], q, q[12:], b"", 512))
    assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority[0].name == zone


# -- the cache --------------------------------------------------------------------------------


def answer_for(cfg: ZoneConfig, text: str, found: bool) -> tuple[bytes, object]:
    qname = wire(text)
    step = plan(qname, TXT, cfg, 1)
    assert isinstance(step, Lookup)
    ident = Entry("x", 1, False, record(("URL", "https://a.example/")), "o", 1) if found else None
    entries = [PREFIX_ENTRY if p.count(".") <= 3 else None for p in step.prefixes]
    return qname + b"\x00\x10", encode(qname, decide(step, TXT, entries, ident, cfg, 1))


def test_cache_shares_stamps_and_follows_every_invalidation() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    cache = AnswerCache(cfg.apex_wire, 1000, ttl=3600, negative_ttl=60)
    names = {
        "pos_02": ("a-1.02.1301.156.ma.cityid.test", True),
        "pos2_02": ("a-2.02.1301.156.ma.cityid.test", True),
        "neg_02": ("no-1.02.1301.156.ma.cityid.test", False),
        "pos_01": ("a-1.01.1301.156.ma.cityid.test", True),
        "neg_01": ("no-1.01.1301.156.ma.cityid.test", False),
        "pos_1301": ("a-1.1301.156.ma.cityid.test", True),
    }
    keys = {}

    def fill() -> None:
        for label, (text, found) in names.items():
            key, enc = answer_for(cfg, text, found)
            cache.put(key, enc)  # type: ignore[arg-type]
            keys[label] = key

    def live() -> set[str]:
        return {label for label, key in keys.items() if cache.get(key) is not None}

    fill()
    assert live() == set(names)
    stamps = {id(cache.entries[keys[k]][0]) for k in ("pos_02", "pos2_02")}
    assert len(stamps) == 1  # one zone, one header shape, one second: one stamp
    assert cache.entries[keys["neg_02"]][0] is not cache.entries[keys["pos_02"]][0]

    cache.invalidate(["MA.156.1301.02/A-1"])  # one identifier: its own name only
    assert live() == set(names) - {"pos_02"}
    cache.invalidate(["MA.156.1301.02/+"])  # new identifiers: the negatives of the zone
    assert live() == set(names) - {"pos_02", "neg_02"}
    cache.invalidate(["MA.156.1301.01/*"])  # everything in zone 01
    assert live() == {"pos2_02", "pos_1301"}
    fill()
    cache.invalidate(["0.NA/MA.156.1301.02"])  # zone 02 and its parent zone (1301)
    assert live() == {"pos_01", "neg_01"}
    fill()
    cache.invalidate(["0.NA/MA.156.1301"])  # 1301 and every zone below it
    assert live() == set()
    fill()
    seq = cache.seq
    cache.invalidate(["*"])
    assert live() == set() and len(cache) == 0 and cache.seq == seq + 1
    fill()  # answers put after an invalidation get new stamps: live again
    assert live() == set(names)


def test_cache_ttl_is_a_safety_net() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    cache = AnswerCache(cfg.apex_wire, 100, ttl=30, negative_ttl=5, jitter=0.0)
    pos, enc_pos = answer_for(cfg, "a-1.02.1301.156.ma.cityid.test", True)
    neg, enc_neg = answer_for(cfg, "no-1.02.1301.156.ma.cityid.test", False)
    cache.put(pos, enc_pos)  # type: ignore[arg-type]
    cache.put(neg, enc_neg)  # type: ignore[arg-type]
    t0 = cache.now
    cache.now = t0 + 4.9
    assert cache.get(pos) is not None and cache.get(neg) is not None
    cache.now = t0 + 5.1
    assert cache.get(pos) is not None and cache.get(neg) is None
    cache.now = t0 + 30.1
    assert cache.get(pos) is None
    cache.put(pos, enc_pos)  # type: ignore[arg-type]  # a new slice, a new stamp
    assert cache.get(pos) is not None


def test_cache_is_bounded_first_in_first_out() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    cache = AnswerCache(cfg.apex_wire, 640)
    keys = []
    for i in range(5000):
        key, enc = answer_for(cfg, f"a-{i}.02.1301.156.ma.cityid.test", True)
        cache.put(key, enc)  # type: ignore[arg-type]
        keys.append(key)
        assert len(cache) <= 640
    assert all(cache.get(k) is not None for k in keys[-600:])
    assert all(cache.get(k) is None for k in keys[:4000])
    # Put again, a key goes to the end: the last to be evicted.
    cache.put(keys[-600], answer_for(cfg, "a-4400.02.1301.156.ma.cityid.test", True)[1])  # type: ignore[arg-type]
    assert next(reversed(cache.entries)) == keys[-600]


def test_cache_skips_types_that_would_alias() -> None:
    cache = AnswerCache(b"\x06cityid\x04test\x00", 10)
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    key, enc = answer_for(cfg, "a-1.02.1301.156.ma.cityid.test", True)
    cache.put(key[:-2] + b"\x00A", enc)  # type: ignore[arg-type]  # type 65: has a letter
    assert len(cache) == 0
    cache.put(key, enc)  # type: ignore[arg-type]
    assert len(cache) == 1


# -- store lookups from text --------------------------------------------------------------------


def test_lookups_built_from_text_are_the_stores() -> None:
    cfg = ZoneConfig.make(APEX, ["MA.156"])
    for text in ("w0000127r.02.1301.156.ma.cityid.test", "l-0000001.02.1301.156.ma.cityid.test",
                 "x_1.1301.156.ma.cityid.test"):  # fmt: skip
        step = plan(wire(text), TXT, cfg, 1)
        assert isinstance(step, Lookup) and step.ident is not None and step.suffix is not None
        ours = Ask(step.parent, step.ident, step.suffix, split_minted(step.suffix))
        assert ours == ask_id(parse_identifier(step.ident))
        for p in step.prefixes:
            assert Ask(p, f"0.NA/{p}", None, None) == ask_prefix(Prefix.parse(p))
