"""The resolver's HTTP edge on real sockets: bare-LF requests, malformed requests in the
log and in /metrics, and Location headers as RFC 3986 URIs.

Both front-end modes (the fast path in front of aiohttp, and aiohttp alone) over a real
Valkey, filled as sync would fill it (``test_resolver_http.populate``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from test_httpedge import MALFORMED, exchange, fuzz_corpus, metric, status
from test_resolver_http import BUS, PFX, URL1, URL1_LOCATION, Served, _serve

from resolver.encode import location

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=[True, False], ids=["fastpath", "aiohttp"])
async def served(request: pytest.FixtureRequest, redis_db: str) -> AsyncIterator[Served]:
    async for s in _serve(redis_db, request.param):
        yield s


async def _metrics(served: Served) -> str:
    reply = await exchange(
        served.server.port,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        timeout=2,
    )
    return reply.split(b"\r\n\r\n", 1)[1].decode()


# -- bare LF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        f"GET /{BUS} HTTP/1.1\nHost: x\n\n".encode(),
        f"GET /{BUS} HTTP/1.1\r\nHost: x\n\r\n".encode(),  # one bare LF, then CRLF CRLF
        f"GET /{BUS} HTTP/1.1\r\nHost: x\r\n\n".encode(),  # the blank line is a bare LF
        f"GET /{BUS} HTTP/1.1\r\nHost: x\nAccept: */*\r\n\r\n".encode(),  # a bare LF inside
    ],
    ids=["lf-only", "lf-only-id", "lf-then-crlf", "lf-blank-line", "lf-inside"],
)
async def test_a_request_with_bare_lf_line_ends_is_answered_400(
    served: Served, request_bytes: bytes
) -> None:
    """The fast path waited for a CRLF CRLF that never came; now it answers 400, counted
    in /metrics like any malformed request."""
    counted = ("cityid_resolver_requests_total", {"route": "other", "status": "400"})
    before = metric(await _metrics(served), counted[0], **counted[1])
    t0 = time.monotonic()
    reply = await exchange(served.server.port, request_bytes, timeout=3.0)
    assert status(reply) == 400, reply[:200]
    assert time.monotonic() - t0 < 1.0  # answered, not timed out
    assert metric(await _metrics(served), counted[0], **counted[1]) == before + 1


async def test_a_bare_lf_request_after_a_good_one_on_the_same_connection(served: Served) -> None:
    good = f"GET /{BUS} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    reply = await exchange(served.server.port, good + b"GET / HTTP/1.1\nHost: x\n\n", timeout=3)
    assert b"HTTP/1.1 400 " in reply or b"HTTP/1.0 400 " in reply, reply
    if served.resolver.options.fast_path:  # aiohttp alone refuses the whole read at once
        assert reply.startswith(b"HTTP/1.1 302"), reply


# -- malformed requests: one line each, counted -------------------------------------------------


async def test_a_malformed_request_is_one_line_and_counted(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = metric(await _metrics(served), "cityid_resolver_requests_total",
                    route="other", status="400")  # fmt: skip
    reply = await exchange(
        served.server.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"
    )
    assert status(reply) == 400
    after = metric(await _metrics(served), "cityid_resolver_requests_total",
                   route="other", status="400")  # fmt: skip
    assert after == before + 1
    lines = [r for r in caplog.records if r.name == "cityid.resolver.protocol"]
    assert [r.getMessage()[:40] for r in lines] == ["refused malformed from 127.0.0.1: Invali"]
    assert lines[0].exc_info is None


async def test_fuzzed_requests_give_no_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Every malformed request used to be a traceback in the log (some still were: bodies
    with a broken Content-Encoding, found while aiohttp drained them)."""
    caplog.set_level(logging.INFO)
    corpus = [
        *fuzz_corpus(800),
        f"GET /{BUS} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Encoding: gzip\r\n\r\n"
        "hello".encode(),
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    ]
    gate = asyncio.Semaphore(50)

    async def one(data: bytes) -> int:
        async with gate:
            return status(await exchange(served.server.port, data, timeout=1.5))

    codes = await asyncio.gather(*(one(d) for d in corpus))
    assert 500 not in codes
    assert "Traceback" not in caplog.text, caplog.text[-3000:]
    assert all(r.exc_info is None for r in caplog.records)
    counted = metric(await _metrics(served), "cityid_resolver_requests_total",
                     route="other", status="400")  # fmt: skip
    assert counted >= len(MALFORMED)
    lines = [r for r in caplog.records if r.name == "cityid.resolver.protocol"]
    assert 0 < len(lines) <= 40  # rate-limited: a burst of 20, then one a second


# -- Location: RFC 3986 ---------------------------------------------------------------------------


async def test_location_is_percent_encoded(served: Served) -> None:
    for _ in range(2):  # the second from the cache
        st, h, body = await served.get(f"/{BUS}")
        assert (st, h["Location"]) == (302, URL1_LOCATION)
        assert b"<x>" not in body
    st, h, _ = await served.get(f"/{PFX}/IRI")
    assert (st, h["Location"]) == (
        302,
        "https://xn--fsqu00a.xn--0zwm56d/%E8%B7%AF%E5%BE%84?q=%E5%80%BC",
    )


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (URL1, URL1_LOCATION),
        ("https://x.example/it's", "https://x.example/it%27s"),
        ("https://x.example/<script>", "https://x.example/%3Cscript%3E"),
        ("https://x.example/a b`{|}^\\", "https://x.example/a%20b%60%7B%7C%7D%5E%5C"),
        ("https://x.example/a%20b", "https://x.example/a%20b"),  # escapes are kept
        ("https://x.example/100%", "https://x.example/100%25"),  # a stray % is not one
        ("https://x.example/a#b#c", "https://x.example/a#b%23c"),
        ("https://[2001:db8::1]:8443/p[1]", "https://[2001:db8::1]:8443/p%5B1%5D"),
        (
            "https://例子.测试/路径?q=值",
            "https://xn--fsqu00a.xn--0zwm56d/%E8%B7%AF%E5%BE%84?q=%E5%80%BC",
        ),
        (
            "https://h.example/p;a=1/x:y@z!$&()*+,=-._~?q=/?&x=1#f/?",
            "https://h.example/p;a=1/x:y@z!$&()*+,=-._~?q=/?&x=1#f/?",
        ),
    ],
)
def test_location_encodes_what_rfc_3986_does_not_allow(url: str, want: str) -> None:
    got = location(url)
    assert got == want
    assert got.isascii() and not any(c in got for c in "\"<>' \\^`{|}")
    assert location(got) == got  # what it gives needs nothing more
