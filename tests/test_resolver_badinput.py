"""Malformed requests: every one gets a 400 or 404 with an error body, never a 500 or a traceback.

Over a thousand requests, generated (seeded, so a failure reproduces), in two
groups: raw bytes on sockets against the lean fast path (overlong paths,
invalid UTF-8, control bytes, every percent-escape, dot segments, huge query
strings, bad Accept headers, broken header lines, TLS handshakes and random
garbage), which either answers them itself or hands the connection to aiohttp;
and the Handle API's parameters through an aiohttp client. Afterwards the
server still answers normally and its metrics count no 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import pytest
from test_resolver_http import BUS, PFX, URL1_LOCATION, populate, wait_subscribed

from resolver.http import Resolver, ServeOptions
from resolver.server import start_http
from resolver.store import Store

HOST = b"Host: 127.0.0.1\r\n"
OK_STATUSES = {400, 404}
LEAKS = re.compile(rb"Traceback|File \"|\.py\"|line \d+, in ")


def _req(target: bytes, *headers: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\n" + HOST + b"".join(headers) + b"\r\n"


def raw_cases() -> list[tuple[str, bytes, bool]]:
    """(what, bytes to send, half-close after sending) for the fast path."""
    rng = random.Random(5353)
    out: list[tuple[str, bytes, bool]] = []
    for n in range(64, 8100, 40):  # overlong suffixes, then paths past aiohttp's line limit
        out.append((f"long suffix {n}", _req(b"/MA.156/" + b"A" * n), False))
    for n in (8200, 9000, 20000, 70000):
        out.append((f"path {n}", _req(b"/" + b"A" * n), False))
    for n in range(64, 2000, 97):  # long prefixes and many nodes
        out.append((f"long node {n}", _req(b"/MA." + b"9" * n + b"/X"), False))
        out.append((f"nodes {n}", _req(b"/" + b".".join([b"A"] * n) + b"/X"), False))
    for b in range(0x80, 0x100):  # invalid UTF-8 and non-ASCII bytes
        out.append((f"byte {b:#x}", _req(b"/MA.156/X" + bytes([b]) + b"Y"), False))
    for b in [*range(0x00, 0x20), 0x7F]:  # control bytes (CR and LF break the framing)
        if b not in (0x0A, 0x0D, 0x20):
            out.append((f"control {b:#x}", _req(b"/MA.156/A" + bytes([b]) + b"B"), False))
    for b in range(256):  # every percent-escape, and broken ones
        out.append((f"%{b:02X}", _req(b"/MA.156/A%" + f"{b:02X}".encode() + b"B"), False))
    for bad in (
        b"%",
        b"%z",
        b"%zz",
        b"%0",
        b"%%",
        b"%G0",
        b"%C0%AF",
        b"%ED%A0%80",
        b"%F4%90%80%80",
    ):
        out.append((f"escape {bad!r}", _req(b"/MA.156/X" + bad), False))
    for path in (b"/..", b"/../..", b"/../../etc/passwd", b"/MA.156/..", b"/MA.156/../X",
                 b"/./MA.156/X", b"/MA.156/./X", b"/MA.156/X/..", b"//MA.156/X", b"/MA.156//X",
                 b"/MA.156/X/", b"/.", b"/%2e%2e/%2e%2e", b"/MA.156/%2e%2e", b"/MA.156%2FX",
                 b"/MA.156/X%00", b"/MA.156/X%00.html", b"/\\..\\..", b"/MA.156\\X",
                 b"/0.NA/", b"/0.NA/..", b"/0.NA/MA..156", b"/.MA.156/X",
                 b"/MA.156./X"):  # fmt: skip
        out.append((f"path {path!r}", _req(path), False))
    for n in range(100, 8000, 350):  # huge query strings (valid, unknown identifier: 404)
        out.append((f"query {n}", _req(b"/MA.156/NOBODY?" + b"q=" + b"x" * n), False))
    for n in (9000, 30000):
        out.append((f"query {n}", _req(b"/MA.156/NOBODY?" + b"x" * n), False))
    accepts = [b";;;", b",,,,", b"q=0", b"*/*;q=abc", b"application/json;q=2", b"text/html;q=-1",
               b"application/json;q=nan", b"/", b"//", b"a/b/c", b"application/json" * 200,
               b"\xff\xfe", b"text/html;level=1;q=0.5, application/json;q=0.5",
               b"application/*;q=1, */*;q=0", b"a" * 6000]  # fmt: skip
    for i, a in enumerate(accepts):
        for target in (b"/MA.156/NOBODY", b"/MA.156/BAD*ONE", f"/{PFX}/NOPE".encode()):
            out.append((f"accept {i} {target!r}", _req(target, b"Accept: " + a + b"\r\n"), False))
    for i, h in enumerate((b"NoColon", b": empty-name", b"Bad Name: x", b" leading: space",
                           b"X:\x00nul", b"Content-Length: abc", b"Content-Length: -1",
                           b"Transfer-Encoding: gzip", b"X: " + b"y" * 9000,
                           b"Content-Length: 1\r\nContent-Length: 2")):  # fmt: skip
        out.append((f"header {i}", _req(f"/{PFX}/NOPE".encode(), h + b"\r\n"), False))
    for i in range(120):  # random garbage: TLS-like, binary, printable
        kind = i % 3
        if kind == 0:
            body = b"\x16\x03\x01" + rng.randbytes(rng.randrange(10, 300))
        elif kind == 1:
            body = bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 200)))
        else:
            body = "".join(
                chr(rng.randrange(33, 127)) for _ in range(rng.randrange(1, 200))
            ).encode()
        body = body.lstrip(b"\r\n") or b"x"
        out.append((f"garbage {i}", body + b"\r\n\r\n", False))
        out.append((f"garbage eof {i}", body.replace(b"\r\n\r\n", b"") or b"x", True))
    for line in (b"GET", b"GET / HTTP/9.9", b"GET /MA.156/X HTTP/1.1.1",
                 b"GET /MA.156/X HTTP/1.1 extra",
                 b"GET  /MA.156/X HTTP/1.1", b"get /MA.156/X HTTP/1.1", b"GET MA.156/X HTTP/1.1",
                 b"GET http://[::1/ HTTP/1.1", b"GET /MA.156/X HTTP/1.1\x00"):  # fmt: skip
        out.append((f"line {line!r}", line + b"\r\n" + HOST + b"\r\n", False))
    return out


async def _exchange(port: int, data: bytes, half_close: bool) -> bytes:
    """Send ``data``; read one response (by Content-Length) or until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length:\s*(\d+)\r$", head)
        body = await reader.readexactly(int(m.group(1))) if m else await reader.read()
        return head + body
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        partial = getattr(e, "partial", b"")
        return bytes(partial)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.fixture
async def server(redis_db: str) -> AsyncIterator[tuple[int, Resolver]]:
    store = await Store.connect(redis_db)
    writer = store.writer()
    await writer.prepare()
    await writer.set_ready()  # as sync says once caught up: a miss is final
    await populate(writer)
    resolver = Resolver(store, ServeOptions(fast_path=True))
    srv = await start_http(resolver, "127.0.0.1", 0)
    await wait_subscribed(redis_db)
    try:
        yield srv.port, resolver
    finally:
        await srv.close()
        await resolver.close()
        await store.close()


def _check(what: str, response: bytes) -> str | None:
    """A complaint about ``response``, or None if it is a proper 400/404 with a body."""
    m = re.match(rb"HTTP/\d(?:\.\d)? (\d{3}) ", response)
    if m is None:
        return f"{what}: no HTTP response: {response[:120]!r}"
    status = int(m.group(1))
    body = response.partition(b"\r\n\r\n")[2]
    if status not in OK_STATUSES:
        return f"{what}: status {status}: {response[:200]!r}"
    if not body.strip():
        return f"{what}: {status} without an error body"
    if LEAKS.search(response):
        return f"{what}: the response leaks a traceback: {response[:300]!r}"
    return None


async def test_a_thousand_malformed_requests(server: tuple[int, Resolver]) -> None:
    port, _ = server
    cases = raw_cases()
    sem = asyncio.Semaphore(32)

    async def one(what: str, data: bytes, half: bool) -> str | None:
        async with sem:
            resp = await asyncio.wait_for(_exchange(port, data, half), 10)
        return _check(what, resp)

    problems = [p for p in await asyncio.gather(*(one(*c) for c in cases)) if p]

    # The Handle API's parameters, through a normal client (aiohttp).
    bad_ids = ["", "X", "MA.156", "MA.156/", "/X", "MA..156/X", "MA.156/X/Y", "MA.156/X Y",
               "MA.156/A*B", "MA.156/" + "A" * 64, "MA.156/" + "A" * 5000, "ma.156/✓",
               "MA.156/X\x00", "MA.156/ſ", "0.NA/", "0.NA/a..b", ".".join(["A"] * 40) + "/X",
               "MA.156/%zz", "MA.156/%00", "MA.156/..", "../../etc/passwd", "MA.156/NOBODY",
               f"{PFX}/NOPE", f"0.NA/{PFX}.99"]  # fmt: skip
    params = [{}, {"type": "URL"}, {"type": "a b"}, {"type": "x" * 100}, {"index": "one"},
              {"index": "-1"}, {"index": "9" * 30}, {"callback": "alert(1)"},
              {"callback": "</script>"}, {"callback": "a" * 80}, {"pretty": "1", "auth": "1"},
              {"type": ["URL"] * 40}]  # fmt: skip
    count = 0
    async with aiohttp.ClientSession() as http:
        for ident in bad_ids:
            for route in ("/api/handles/", "/api/proofs/"):
                for q in params if route == "/api/handles/" else params[:1]:
                    url = f"http://127.0.0.1:{port}{route}{quote(ident, safe='/.')}"
                    async with http.get(url, params=q, allow_redirects=False) as r:
                        body = await r.read()
                        count += 1
                        head = f"HTTP/1.1 {r.status} X\r\n\r\n".encode()
                        p = _check(f"{route}{ident[:40]!r} {q}", head + body)
                        if p:
                            problems.append(p)
        # A valid type filter on a good identifier is not an error: 200.
        async with http.get(f"http://127.0.0.1:{port}/api/handles/{BUS}?type=URL") as r:
            assert r.status == 200
        # Still serving normally, and nothing was a 500.
        async with http.get(f"http://127.0.0.1:{port}/{BUS}", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, URL1_LOCATION)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            metrics = await r.text()
    assert len(cases) + count >= 1000, len(cases) + count
    assert not problems, f"{len(problems)} bad answers, e.g.:\n" + "\n".join(problems[:15])
    assert 'status="500"' not in metrics


async def test_pipelined_requests_across_the_hand_off(server: tuple[int, Resolver]) -> None:
    """Fast-path answers, then a request only aiohttp serves, on one connection, in order."""
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    reqs = (
        _req(f"/{BUS}".encode())
        + _req(f"/{PFX}/NOBODY".encode())  # a miss: looked up while the rest waits
        + _req(f"/{BUS}".encode())
        + _req(f"/{BUS}?noredirect".encode(), b"Accept: application/json\r\n")  # hand-off
        + _req(f"/{BUS}".encode(), b"Connection: close\r\n")
    )
    writer.write(reqs)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [302, 404, 302, 200, 302], statuses
    assert data.count(f"Location: {URL1_LOCATION}".encode()) == 3
