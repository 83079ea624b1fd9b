"""The HTTP edge of the registrar and the witness (cityid/httpedge.py), on real sockets.

Registrars and witnesses run on 127.0.0.1, in this event loop with small limits, or as
child processes (``cityid registrar serve``, ``cityid ledger witness serve``) under a low
``RLIMIT_NOFILE``. Clients are raw sockets, so a test controls every byte and every
pause: idle sockets, heads trickled a byte at a time, bodies that stall, uploads that
wait on each other. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import msgpack
import pytest
from registrar_harness import CITY, HOST, PYTHON, REPO, SERVE, cli_env, make_registrar

from cityid.httpedge import EDGE_KEY, Edge, EdgeLimits
from cityid.keys import SigningKey
from cityid.ops import Mint, MintItem, SignedOperation
from cityid.records import Record, Value
from ledger.witness import Witness, start_witness
from registrar.server import start_registrar

pytestmark = pytest.mark.timeout(120)

ORIGIN = "edge.cityid.test/log"
MSGPACK = "application/msgpack"
MiB = 1024 * 1024


# -- raw HTTP ------------------------------------------------------------------------------


async def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new connection; all the server sends until it closes (or timeout)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        return await read_until_closed(reader, timeout)
    finally:
        writer.close()


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                out += chunk
    return out


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, bytes]:
    """One response with a Content-Length (what aiohttp sends here): (status, body)."""
    code, _, body = await read_full_response(reader, timeout)
    return code, body


async def read_full_response(
    reader: asyncio.StreamReader, timeout: float = 5.0
) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one response with a Content-Length."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        return int(head.split(b" ")[1]), head, await reader.readexactly(length)


async def ask(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    """Send ``data`` (a request whose body may never come) and read one response."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        return await read_full_response(reader)
    finally:
        writer.close()


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0


def get(path: str, *, close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{conn}\r\n".encode()


def post_head(path: str, ctype: str, length: int | None, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Content-Type: {ctype}"]
    lines.append(
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    )
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def metrics(port: int) -> str:
    reply = await exchange(port, get("/metrics"))
    assert status(reply) == 200, reply[:200]
    return reply.split(b"\r\n\r\n", 1)[1].decode()


async def is_open(reader: asyncio.StreamReader, wait: float = 0.3) -> bool:
    """True if the server has not closed the connection within ``wait`` seconds."""
    try:
        async with asyncio.timeout(wait):
            return await reader.read(1) != b""
    except TimeoutError:
        return True
    except ConnectionError:
        return False


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    edge: Edge


@contextlib.asynccontextmanager
async def registrar(tmp_path: Path, **limits: float) -> AsyncIterator[Served]:
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN)
    _, runner = await start_registrar(spec.config(), limits=EdgeLimits(**limits))  # type: ignore[arg-type]
    try:
        yield Served(spec.port, runner.app[EDGE_KEY])
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def witness(tmp_path: Path, **limits: float) -> AsyncIterator[Served]:
    logs = [SigningKey.generate("log.edge.test").verifier]
    with Witness(SigningKey.generate("w1.edge.test"), logs, tmp_path / "state") as w:
        runner = await start_witness(w, HOST, 0, limits=EdgeLimits(**limits))  # type: ignore[arg-type]
        try:
            port = runner.addresses[0][1]
            yield Served(port, runner.app[EDGE_KEY])
        finally:
            await runner.cleanup()


SERVERS = {"registrar": registrar, "witness": witness}


# -- 1,100 idle sockets under `ulimit -n 1024` ------------------------------------------------


def _low_nofile() -> None:  # in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def child(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=cli_env(),
            preexec_fn=_low_nofile,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.kill()  # by its own pid
        proc.wait(timeout=10)


def _healthz(port: int, timeout: float) -> int:
    """Status of GET /healthz on a new connection, 0 if no answer within ``timeout``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(get("/healthz"))
            return status(s.recv(64))
    except OSError:
        return 0


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        if _healthz(port, 1.0) == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready:\n{log.read_text(errors='replace')[-2000:]}")


def _registrar_args(tmp_path: Path) -> tuple[list[str], int]:
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN)
    return [*SERVE, str(spec.directory), "--listen", spec.listen], spec.port


def _witness_args(tmp_path: Path) -> tuple[list[str], int]:
    key = SigningKey.generate("w1.edge.test")
    key.write(tmp_path / "w1.key")
    log = SigningKey.generate("log.edge.test").verifier
    port = _free_port()
    return [
        PYTHON, "-m", "cityid.cli", "ledger", "witness", "serve", "--key", str(tmp_path / "w1.key"),
        "--state", str(tmp_path / "state"), "--log", str(log), "--listen", f"{HOST}:{port}",
    ], port  # fmt: skip


@pytest.mark.parametrize("service", ["registrar", "witness"])
def test_idle_sockets_do_not_keep_healthz_out_under_a_low_fd_limit(
    service: str, tmp_path: Path
) -> None:
    """`ulimit -n 1024` and 1,100 idle sockets: /healthz is still answered at once.

    Before the edge, accept() hit EMFILE and /healthz went unanswered until the idle
    sockets closed. Now the server keeps 1024 - 128 connections at most and closes the
    longest idle one for each newcomer.
    """
    args, port = (_registrar_args if service == "registrar" else _witness_args)(tmp_path)
    log = tmp_path / f"{service}.log"
    idle: list[socket.socket] = []
    with child(args, log) as proc:
        _wait_ready(port, proc, log)
        try:
            for _ in range(1100):
                idle.append(socket.create_connection((HOST, port), timeout=5))
            time.sleep(0.5)  # let the server accept (and evict) what is queued
            t0 = time.monotonic()
            assert _healthz(port, 5.0) == 200
            assert time.monotonic() - t0 < 2.0
            text = asyncio.run(metrics(port))
        finally:
            for s in idle:
                s.close()
        assert proc.poll() is None
    prefix = f"cityid_{service}_http"
    assert metric(text, f"{prefix}_connection_limit") == 1024 - 128
    assert metric(text, f"{prefix}_connections") <= 1024 - 128
    assert metric(text, f"{prefix}_connections_closed_total", reason="evicted") >= 1100 - 896
    out = log.read_text(errors="replace")
    assert "Too many open files" not in out and "Traceback" not in out, out[-2000:]


# -- timeouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_a_head_trickled_a_byte_at_a_time_is_closed_with_408(
    service: str, tmp_path: Path
) -> None:
    async with SERVERS[service](tmp_path, head_timeout=0.6) as srv:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        t0 = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for b in b"Host: 127.0.0.1\r\nX-Slow: " + b"a" * 40:
                    writer.write(bytes([b]))
                    await asyncio.sleep(0.05)

        slow = asyncio.create_task(trickle())
        # Meanwhile a normal client is answered.
        assert status(await exchange(srv.port, get("/healthz"))) == 200
        reply = await read_until_closed(reader, 5.0)
        elapsed = time.monotonic() - t0
        slow.cancel()
        writer.close()
        assert status(reply) == 408, reply
        assert 0.6 <= elapsed < 2.5, elapsed
        text = await metrics(srv.port)
        assert metric(text, f"cityid_{service}_http_refused_total", reason="head-timeout") == 1


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_idle_connections_are_closed_after_the_idle_timeout(
    service: str, tmp_path: Path
) -> None:
    async with SERVERS[service](tmp_path, idle_timeout=0.6) as srv:
        silent = await asyncio.open_connection(HOST, srv.port)  # never says a word
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(get("/healthz", close=False))
        assert (await read_response(reader))[0] == 200
        t0 = time.monotonic()
        assert await read_until_closed(reader, 5.0) == b""  # closed, with nothing more
        assert await read_until_closed(silent[0], 5.0) == b""
        assert 0.5 <= time.monotonic() - t0 < 2.5
        writer.close()
        silent[1].close()
        text = await metrics(srv.port)
        prefix = f"cityid_{service}_http"
        assert metric(text, f"{prefix}_connections_closed_total", reason="idle") == 2


async def test_a_stalled_body_is_refused_with_408_and_closed(tmp_path: Path) -> None:
    async with registrar(tmp_path, body_timeout=0.5) as srv:
        head = post_head("/api/ops", MSGPACK, 1000)
        t0 = time.monotonic()
        reply = await exchange(srv.port, head + b"\x91\xc5\x03", timeout=5.0)
        assert status(reply) == 408, reply
        assert b'"rule": "body-timeout"' in reply and b"Connection: close" in reply
        assert 0.5 <= time.monotonic() - t0 < 2.5
        assert srv.edge.budget.used == 0


# -- the connection cap --------------------------------------------------------------------


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_at_the_cap_a_newcomer_closes_the_longest_idle_connection(
    service: str, tmp_path: Path
) -> None:
    async with SERVERS[service](tmp_path, max_connections=4) as srv:
        assert srv.edge.cap == 4
        idle = []
        for _ in range(4):
            idle.append(await asyncio.open_connection(HOST, srv.port))
            await asyncio.sleep(0.05)  # accepted in this order
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(get("/healthz", close=False))
        assert (await read_response(reader))[0] == 200
        # The first idle connection went early; the others are still open.
        assert await read_until_closed(idle[0][0], 2.0) == b""
        assert [await is_open(r) for r, _ in idle[1:]] == [True, True, True]
        writer.write(get("/metrics", close=False))
        text = (await read_response(reader))[1].decode()
        prefix = f"cityid_{service}_http"
        assert metric(text, f"{prefix}_connections_closed_total", reason="evicted") == 1
        assert metric(text, f"{prefix}_connections") == 4
        assert metric(text, f"{prefix}_connections_accepted_total") == 5
        for _, w in [*idle, (reader, writer)]:
            w.close()


async def test_at_the_cap_with_every_connection_busy_a_newcomer_is_refused(
    tmp_path: Path,
) -> None:
    async with registrar(tmp_path, max_connections=2) as srv:
        busy = []
        for _ in range(2):  # uploads that have started and wait for the rest of their body
            r, w = await asyncio.open_connection(HOST, srv.port)
            w.write(post_head("/api/ops", MSGPACK, 1000) + b"\x91")
            busy.append((r, w))
        await asyncio.sleep(0.3)
        r3, w3 = await asyncio.open_connection(HOST, srv.port)
        w3.write(get("/healthz"))
        assert await read_until_closed(r3, 3.0) == b""  # refused: closed unanswered
        w3.close()
        for _, w in busy:
            w.close()
        await asyncio.sleep(0.2)
        text = await metrics(srv.port)
        assert metric(text, "cityid_registrar_http_refused_total", reason="over-capacity") == 1


# -- bodies: headers first, a budget for all -----------------------------------------------


async def test_what_the_headers_refuse_is_refused_before_the_body_is_sent(
    tmp_path: Path,
) -> None:
    """Each request declares a big body and sends none of it: the answer comes anyway."""
    big = 60 * MiB
    put = "PUT /api/handles/MA.156.1301/X-1 HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n{}\r\n"
    auth = 'Authorization: CityID-Ed25519 key="{}", sig="{}", time="1700000000"\r\n'.format(
        "A" * 43 + "=", "A" * 86 + "=="
    )
    cases = [
        (put.format(big, "Content-Type: application/json\r\n"), 401, "authentication-needed"),
        (put.format(big, auth + "Content-Type: text/plain\r\n"), 400, "content-type"),
        (put.format(big, auth + "Content-Type: application/json\r\n"), 413, "too-large"),
        (put.format(100, auth + "Content-Type: application/json\r\nIf-Match: x\r\n"), 400,
         "if-match"),
        (post_head("/api/ops", "text/plain", big).decode(), 400, "content-type"),
        (post_head("/api/ops", MSGPACK, 65 * MiB).decode(), 413, "too-large"),
        (post_head("/api/ops", MSGPACK, 100, Content_Encoding="gzip").decode(), 415,
         "content-encoding"),
    ]  # fmt: skip
    async with registrar(tmp_path) as srv:
        for head, want, rule in cases:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(head.encode())
            code, body = await read_response(reader, timeout=3.0)
            writer.close()
            assert code == want, body
            assert f'"rule": "{rule}"'.encode() in body, body


@pytest.mark.parametrize("signer", ["none", "nobody"])
async def test_a_body_is_refused_at_its_first_leaf(signer: str, tmp_path: Path) -> None:
    """60 MiB declared, one leaf sent: a leaf that is not signed, or signed by a key that
    holds nothing, is refused at once, without waiting for the rest."""
    if signer == "none":
        leaf, rule = b"\x00" * 60_000, "encoding"
    else:
        record = Record.of([Value.make(1, "DESC", "x" * 3900, 86400, 1_700_000_000)])
        items = tuple(MintItem(f"X-{i}", 0, record) for i in range(14))
        nobody = SigningKey.generate("nobody")
        leaf, rule = (
            SignedOperation.sign(Mint(CITY, items, 1_700_000_000), nobody).encode(),
            "wrong-key",
        )
    body = msgpack.packb([leaf] * 1000, use_bin_type=True)
    async with registrar(tmp_path) as srv:
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(post_head("/api/ops", MSGPACK, len(body)) + body[: len(leaf) + 10])
        code, answer = await read_response(reader, timeout=3.0)
        writer.close()
        assert code in (400, 403) and b"operation 0:" in answer, answer
        assert f'"rule": "{rule}"'.encode() in answer and b"msgpack array" not in answer
        assert srv.edge.budget.used == 0


async def test_a_large_signed_upload_read_in_big_pieces_is_accepted(tmp_path: Path) -> None:
    """About 4 MiB of mints in one msgpack array, sent in large writes: the body arrives
    in pieces far bigger than a leaf, and every leaf is decoded as it comes."""
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN)
    assert spec.admin is not None
    t = int(time.time())
    record = Record.of([Value.make(1, "DESC", "x" * 3900, 86400, t)])
    leaves = [
        SignedOperation.sign(
            Mint(CITY, tuple(MintItem(f"BIG-{n}-{i}", 0, record) for i in range(15)), t),
            spec.admin,
        ).encode()
        for n in range(70)  # about 59 KB each
    ]
    body = msgpack.packb(leaves, use_bin_type=True)
    assert len(body) > 3.9 * MiB
    _, runner = await start_registrar(spec.config())
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://{HOST}:{spec.port}/api/ops", data=body, headers={"Content-Type": MSGPACK}
            ) as r,
        ):
            answer = await r.json()
        assert r.status == 200, answer
        assert len(answer["receipts"]) == 70
    finally:
        await runner.cleanup()


async def test_uploads_beyond_the_budget_get_503_with_retry_after(tmp_path: Path) -> None:
    """Budget 4 MiB, of which 1 MiB kept for small bodies: one 2 MiB upload in flight,
    a second gets 503 at once; a small write still gets through; then it frees."""
    async with registrar(
        tmp_path, body_budget=4 * MiB, small_body=64 * 1024, small_reserve=1 * MiB
    ) as srv:
        _, w1 = await asyncio.open_connection(HOST, srv.port)
        w1.write(post_head("/api/ops", MSGPACK, 2 * MiB) + b"\xdc\x00\x10")
        await asyncio.sleep(0.2)
        assert srv.edge.budget.used == 2 * MiB
        for _ in range(2):
            code, head, body = await ask(srv.port, post_head("/api/ops", MSGPACK, 2 * MiB))
            assert code == 503 and b"Retry-After: 5\r\n" in head
            assert b'"rule": "busy"' in body and b'"responseCode": 3' in body
        # A small body fits in what is kept for small ones.
        small = post_head("/api/ops", MSGPACK, 3) + b"\x91\xc4\x00"
        code, _, body = await ask(srv.port, small)
        assert code == 400 and b"operation" not in body  # refused for its content only
        text = await metrics(srv.port)
        assert metric(text, "cityid_registrar_http_body_bytes_reserved") == 2 * MiB
        assert metric(text, "cityid_registrar_http_refused_total", reason="busy") == 2
        w1.close()
        deadline = time.monotonic() + 3
        while srv.edge.budget.used and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert srv.edge.budget.used == 0


async def test_concurrent_uploads_never_hold_more_than_the_budget(tmp_path: Path) -> None:
    """12 uploads of 6 MiB start together with a 32 MiB share for large bodies: five are
    read, seven are turned away before their bodies; the reservations never pass 32 MiB."""
    size = 6 * MiB
    body = msgpack.packb([b"\x00" * 60_000] * (size // 60_010), use_bin_type=True)
    async with registrar(
        tmp_path, body_budget=40 * MiB, small_body=1 * MiB, small_reserve=8 * MiB
    ) as srv:
        peak = 0
        go = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, srv.edge.budget.used)
                await asyncio.sleep(0.005)

        async def upload() -> int:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            try:
                writer.write(post_head("/api/ops", MSGPACK, len(body)) + body[:100])
                answer = asyncio.ensure_future(read_response(reader, timeout=20.0))
                await asyncio.wait([answer, asyncio.ensure_future(go.wait())], timeout=10,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if not answer.done():
                    writer.write(body[100:])
                return (await answer)[0]
            finally:
                writer.close()

        watcher = asyncio.create_task(watch())
        tasks = [asyncio.create_task(upload()) for _ in range(12)]
        await asyncio.sleep(0.5)
        go.set()
        codes = sorted(await asyncio.gather(*tasks))
        watcher.cancel()
    assert codes == [400] * 5 + [503] * 7, codes
    assert 5 * len(body) == peak <= 32 * MiB


# -- refused requests: one line each, rate-limited, counted -----------------------------------


MALFORMED = [
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(40)),  # TLS on an http port
    b"GET / HTTP/1.1\nHost: x\n\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  folded\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /api/ops HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
]


def fuzz_corpus(n: int, seed: int = 17) -> list[bytes]:
    """The malformed requests above, then ``n`` seeded mutations of valid and bad ones."""
    import random

    valid = [
        get("/healthz"),
        post_head("/api/ops", MSGPACK, 3) + b"\x91\xc4\x00",
        b"PUT /api/handles/MA.156.1301/X HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: 2\r\n\r\n[]",
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\nold 0\n\n",
        b"POST /api/ops HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-cityid-leaves\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\n\xc4\x01a\r\n1\r\n\xc0\r\n0\r\n\r\n",
    ]
    rng = random.Random(seed)
    out = list(MALFORMED)
    for _ in range(n):
        b = bytearray(rng.choice(valid + MALFORMED))
        for _ in range(rng.randint(1, 4)):
            p = rng.randrange(len(b) + 1)
            op = rng.randrange(3)
            if op == 0 and b:
                b[min(p, len(b) - 1)] = rng.randrange(256)
            elif op == 1:
                b[p:p] = bytes([rng.choice(b'\r\n :;\x00\xff%/?="\t,')])
            else:
                del b[p : p + rng.randint(1, 8)]
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_one_malformed_request_is_one_counted_line(
    service: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with SERVERS[service](tmp_path) as srv:
        reply = await exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        assert status(reply) == 400
        text = await metrics(srv.port)
    lines = [r for r in caplog.records if r.name == f"cityid.{service}.http"]
    assert len(lines) == 1 and lines[0].exc_info is None, caplog.text
    assert lines[0].getMessage().startswith("refused malformed from 127.0.0.1: Invalid header")
    assert "Traceback" not in caplog.text
    assert metric(text, f"cityid_{service}_http_refused_total", reason="malformed") == 1


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_one_server_value_without_versions(service: str, tmp_path: Path) -> None:
    # An application's answer, a head aiohttp refuses before the application sees it, and
    # the edge's own refusal (a head over the size limit): the same Server value.
    async with SERVERS[service](tmp_path) as srv:
        malformed = b"GET / HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n"
        too_long = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 70000 + b"\r\n\r\n"
        for request in (get("/healthz"), malformed, too_long):
            reply = await exchange(srv.port, request)
            fields = reply.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
            servers = [f for f in fields if f.lower().startswith("server:")]
            assert servers == ["Server: cityid"], (request[:40], reply[:300])


@pytest.mark.parametrize("service", ["registrar", "witness"])
async def test_fuzzed_requests_give_no_traceback_and_no_server_error(
    service: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    corpus = fuzz_corpus(1500)
    async with SERVERS[service](tmp_path) as srv:
        gate = asyncio.Semaphore(50)

        async def one(data: bytes) -> int:
            async with gate:
                return status(await exchange(srv.port, data, timeout=1.5))

        t0 = time.monotonic()
        codes = await asyncio.gather(*(one(d) for d in corpus))
        elapsed = time.monotonic() - t0
        text = await metrics(srv.port)
    assert not [c for c in codes if c >= 500], sorted(set(codes))
    assert "Traceback" not in caplog.text
    assert all(r.exc_info is None for r in caplog.records), caplog.text[-3000:]
    refused = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"cityid_{service}_http_refused_total{{")
    )
    answered_400 = sum(1 for c in codes if c == 400)
    assert refused >= len(MALFORMED) and refused >= answered_400 * 0.8, (refused, answered_400)
    # Rate-limited: a burst of 20 lines, then about one a second.
    lines = [r for r in caplog.records if r.name == f"cityid.{service}.http"]
    assert 20 <= len(lines) <= 20 + elapsed + 2, (len(lines), elapsed)
    assert any("more not logged" in r.getMessage() for r in lines)


def test_refusal_log_rate_limits_and_keeps_real_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pure: a clock we move by hand. 20 lines at once, then one a second, each saying how
    many were left out; every refusal counted; an exception that is not the client's fault
    keeps its traceback."""
    caplog.set_level(logging.INFO)
    from aiohttp.http_exceptions import BadHttpMethod

    from cityid.httpedge import RefusalLog

    now = [0.0]
    counted: list[tuple[str, bool]] = []
    log = RefusalLog(
        logging.getLogger("cityid.test.http"),
        on_refused=lambda reason, answered: counted.append((reason, answered)),
        clock=lambda: now[0],
    )
    for _ in range(50):
        log.exception("Error handling request from %s", "192.0.2.1", exc_info=BadHttpMethod("X"))
    now[0] = 1.0
    log.exception("Error handling request from %s", "192.0.2.1", exc_info=BadHttpMethod("X"))
    log.exception("Unhandled exception", exc_info=ValueError("a bug"))
    lines = [r.getMessage() for r in caplog.records if r.name == "cityid.test.http"]
    assert len(lines) == 22 and len(counted) == 51
    assert set(counted) == {("bad-method", True)}
    assert lines[0] == "refused bad-method from 192.0.2.1: Bad HTTP method in status line 'X'"
    assert lines[20].endswith("(30 more not logged)")
    assert lines[21] == "Unhandled exception" and "ValueError: a bug" in caplog.text
