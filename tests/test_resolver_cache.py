"""The resolver's compact cache and what is derived from it, checked against the general code.

A cache slot keeps what the store answered in a few hundred bytes and the 302 and
the Handle JSON are filled into templates on every use (resolver/cache.py,
resolver/encode.py); the fast parse of an identifier skips parse_identifier's objects
(resolver/answers.py). Each must give exactly what the general code gives: the same
bytes, the same lookup. Pure functions, no server: the HTTP tests cover the wire.
"""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cityid.errors import IdentifierError, RecordError
from cityid.identifiers import parse_identifier
from cityid.records import Record, Value, decode_trusted
from resolver.answers import ask_of
from resolver.cache import ABSENT, DELETED, RECORD, ResponseCache, location_of, read
from resolver.encode import encode_record, encode_redirect, record_json, redirect
from resolver.store import Entry, ask_id

KEY = "MA.156.1301.02/L-0000001"
ORIGIN = "city.test/log"
TS = 1_700_000_000
URL_CHARS = st.characters(
    codec="utf-8", categories=("L", "N", "P", "S"), include_characters="&\"'<>%#~[]"
)


def _entry(record: Record, key: str = KEY, version: int = 3) -> Entry:
    # As the store builds it: from the stored bytes, not re-checked.
    return Entry(key, version, False, decode_trusted(record.encode()), ORIGIN, 41)


def _slot(cache: ResponseCache, entry: Entry | None, key: str = KEY) -> tuple[bytes, tuple]:
    blob = cache.put(key, entry)
    got = cache.fresh(key)
    assert got is not None and got[0] is blob
    return got


# -- what is derived from a slot is what the general encoders write ---------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.text(URL_CHARS, max_size=60), ttl=st.integers(1, 2**31 - 1))
@example(path='stops/17?a=1&b="<x>"', ttl=600)
@example(path="路径?q=值#frag", ttl=60)
@example(path="a%2Fb%zz#x#y", ttl=86400)
def test_the_302_from_a_slot_is_the_general_encoders(path: str, ttl: int) -> None:
    url = f"https://bus.example/{path}"
    try:
        record = Record((Value.make(1, "URL", url, ttl=ttl, timestamp=TS),
                         Value.make(2, "DESC", "x", ttl=ttl + 1, timestamp=TS)))  # fmt: skip
    except RecordError:
        return  # not a URL a record may hold
    entry = _entry(record)
    blob, s = _slot(ResponseCache(10), entry)
    loc, esc = location_of(blob, s)
    got, want = redirect(loc, esc, s[5], s[3]), encode_redirect(entry, url)
    assert (got.status, got.wire, got.body, got.etag) == (
        want.status,
        want.wire,
        want.body,
        want.etag,
    )
    assert got.headers == want.headers  # what the aiohttp path sends


_ADMIN = {"handle": "0.NA/MA.156", "index": 200, "permissions": "011111110011"}
_SITE = {"ledger": "https://log.example/city", "resolver": "https://r.example/"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    desc=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40),
    ttls=st.lists(st.integers(0, 2**31 - 1), min_size=4, max_size=4),
    ts=st.integers(0, 2**32),
)
def test_the_json_from_a_slot_is_the_general_encoders(desc: str, ttls: list[int], ts: int) -> None:
    try:
        record = Record(
            (
                Value.make(1, "URL", "https://bus.example/17?a=1&b=2", ttl=ttls[0], timestamp=ts),
                Value.make(2, "DESC", desc or "-", ttl=ttls[1], timestamp=ts),
                Value.make(3, "HS_SITE", _SITE, ttl=ttls[2], timestamp=ts),
                Value.make(100, "HS_ADMIN", _ADMIN, ttl=ttls[3], timestamp=ts + 1),
            )
        )
    except RecordError:
        return
    entry = _entry(record)
    blob, s = _slot(ResponseCache(10), entry)
    got = record_json(KEY, s[3], s[5], blob[s[12] :])
    want = encode_record(entry, entry.record)  # type: ignore[arg-type]
    assert (got.status, got.wire, got.body, got.etag) == (
        want.status,
        want.wire,
        want.body,
        want.etag,
    )


def test_a_slot_gives_back_the_entry_and_knows_what_it_holds() -> None:
    cache = ResponseCache(10)
    record = Record((Value.make(1, "DESC", "no URL", timestamp=TS),))
    entry = _entry(record)
    blob, s = _slot(cache, entry)
    assert s[7] == RECORD and s[9] == 0  # no Location: the landing page answers
    assert cache.entry(KEY, blob) == entry
    gone = Entry(KEY, 4, True, None, ORIGIN, 50)
    blob, s = _slot(cache, gone)
    assert s[7] == DELETED and cache.entry(KEY, blob) == gone
    blob, s = _slot(cache, None)
    assert s[7] == ABSENT and cache.entry(KEY, blob) is None


# -- the fast parse agrees with parse_identifier ----------------------------------------------


@settings(max_examples=2000, deadline=None)
@given(st.text(st.sampled_from("AZaz09.-_/ \t%ßſ0NA✓"), max_size=40))
@example("ma.156.1301.02/l-0000001")
@example("0.na/ma.156")
@example("0.NA/MA.156")
@example(" MA.156/X ")
@example("MA.156/STRAßE")
def test_the_fast_parse_is_parse_identifier(text: str) -> None:
    try:
        want = ask_id(parse_identifier(text))
    except IdentifierError:
        with pytest.raises(IdentifierError):
            ask_of(text)
        return
    got = ask_of(text)
    assert (got.prefix, got.ident, got.suffix, got.minted) == (
        want.prefix,
        want.ident,
        want.suffix,
        want.minted,
    )


# -- freshness -------------------------------------------------------------------------------


def test_invalidations_drop_what_they_name_and_nothing_else() -> None:
    cache = ResponseCache(100, negative_ttl=60)
    record = Record((Value.make(1, "URL", "https://a.example/", timestamp=TS),))
    keys = {
        "P/A": _entry(record, "P/A"),
        "P/B": None,
        "Q/A": _entry(record, "Q/A"),
        "Q/B": None,
        "0.NA/P": _entry(record, "0.NA/P"),
    }

    def fill() -> None:
        for k, e in keys.items():
            cache.put(k, e)

    def cached() -> set[str]:
        return {k for k in keys if cache.fresh(k) is not None}

    fill()
    assert cached() == set(keys)
    cache.invalidate(["P/+"])  # new identifiers under P: only its "not registered" answers
    assert cached() == set(keys) - {"P/B"}
    cache.invalidate(["P/*"])  # all of P (a revocation, a range)
    assert cached() == {"Q/A", "Q/B", "0.NA/P"}
    fill()
    cache.invalidate(["Q/A", "0.NA/P"])
    assert cached() == {"P/A", "P/B", "Q/B"}
    cache.invalidate(["*"])
    assert cached() == set() and len(cache) == 0
    fill()  # and everything can be cached again
    assert cached() == set(keys)


def test_the_least_recently_used_go_first_and_made_up_prefixes_stay_out() -> None:
    cache = ResponseCache(3, max_prefixes=4)
    for k in ("P/1", "P/2", "P/3"):
        cache.put(k, None)
    assert cache.fresh("P/1") is not None  # touched: P/2 is now the oldest
    cache.put("P/4", None)
    assert [k for k in ("P/1", "P/2", "P/3", "P/4") if cache.fresh(k)] == ["P/1", "P/3", "P/4"]
    for i in range(10):  # a flood of names under made-up prefixes
        cache.put(f"X{i}/A", None)
    assert len(cache._prefixes) == 4  # the table stops growing; those answers go uncached
    assert cache.fresh("X9/A") is None and cache.fresh("X2/A") is not None


def test_an_expired_slot_is_kept_for_when_redis_is_away() -> None:
    cache = ResponseCache(10, ttl=0.0)
    record = Record((Value.make(1, "URL", "https://a.example/", timestamp=TS),))
    cache.put(KEY, _entry(record))
    assert cache.fresh(KEY) is None  # not to be served as fresh...
    blob = cache.get(KEY)
    assert blob is not None and read(blob)[7] == RECORD  # ...but there to serve stale


# -- memory ------------------------------------------------------------------------------------


def test_a_cached_identifier_costs_under_400_bytes() -> None:
    """Issue 18's bound, all representations together: the slot is the only one kept."""
    n = 20_000
    cache = ResponseCache(n)
    entries = []
    for i in range(n):
        data = msgpack.packb(
            [[1, "URL", f"https://assets.example/lamp/L-{i:07d}", 86400, TS]], use_bin_type=True
        )
        entries.append(Entry(f"MA.156.1301.02/L-{i:07d}", 1, False, decode_trusted(data),
                             ORIGIN, i))  # fmt: skip
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for e in entries:
            cache.put(e.ident, e)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) == n
    assert used / n < 400, f"{used / n:.0f} bytes per cached identifier"
