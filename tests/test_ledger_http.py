"""tlog-tiles over HTTP: the server's headers and the verifying client, on loopback."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from cityid.errors import ForkError, NoteError, TileError, WitnessError
from cityid.keys import SigningKey
from ledger.client import LogClient
from ledger.cosignature import cosigner_vkey
from ledger.http import (
    CACHE_IMMUTABLE,
    CACHE_PARTIAL,
    CHECKPOINT_TYPE,
    TILE_TYPE,
    serve_app,
    tiles_app,
)
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.policy import Policy
from ledger.storage import Log
from ledger.tlogproof import verify_proof

ORIGIN = "ledger.sjz.example.cn/MA.156.1301"
pytestmark = pytest.mark.timeout(60)


def entry(i: int) -> bytes:
    return b"op %d " % i + bytes(i % 7)


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate(ORIGIN)


@pytest.fixture
def served_dir(tmp_path: Path) -> Path:
    """The served path is a symlink, so a test can swap the whole log under the server."""
    return tmp_path / "served"


def point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


@pytest.fixture
async def server(served_dir: Path) -> AsyncIterator[str]:
    async with serve_app(tiles_app(served_dir)) as url:
        yield url


@pytest.fixture
def log(tmp_path: Path, log_key: SigningKey, served_dir: Path) -> Log:
    lg = Log.create(tmp_path / "log", log_key)
    point(served_dir, lg.directory)
    yield lg
    lg.close()


async def get(url: str, path: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(url + path, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


async def raw_get(url: str, target: str) -> bytes:
    """Send a request line exactly as given (no client-side path normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


# --- the server -------------------------------------------------------------------------


async def test_content_types_and_cache_headers(server: str, log: Log):
    log.append([entry(i) for i in range(300)])
    status, h, body = await get(server, "/checkpoint")
    assert status == 200 and body == log.checkpoint_note
    assert h["Content-Type"] == CHECKPOINT_TYPE == "text/plain; charset=utf-8"
    assert h["Cache-Control"] == "no-cache"
    assert h["Access-Control-Allow-Origin"] == "*"
    status, _, body = await get(server, "/checkpoint", **{"If-None-Match": h["ETag"]})
    assert status == 304 and body == b""

    status, h, body = await get(server, "/tile/0/000")
    assert status == 200 and len(body) == 8192
    assert h["Content-Type"] == TILE_TYPE == "application/octet-stream"
    assert h["Cache-Control"] == CACHE_IMMUTABLE == "public, max-age=31536000, immutable"
    status, h, body = await get(server, "/tile/0/001.p/44")
    assert status == 200 and len(body) == 44 * 32
    assert h["Cache-Control"] == CACHE_PARTIAL
    status, h, body = await get(server, "/tile/1/000.p/1")
    assert status == 200 and len(body) == 32

    status, h, body = await get(server, "/tile/entries/000", **{"Accept-Encoding": "identity"})
    assert status == 200 and h["Content-Type"] == TILE_TYPE
    assert h["Cache-Control"] == CACHE_IMMUTABLE and "Content-Encoding" not in h
    assert body[:2] == len(entry(0)).to_bytes(2, "big") and body[2:][: len(entry(0))] == entry(0)
    status, h, zbody = await get(server, "/tile/entries/000", **{"Accept-Encoding": "gzip"})
    assert h["Content-Encoding"] == "gzip" and gzip.decompress(zbody) == body
    assert "Accept-Encoding" in h["Vary"]
    status, h, _ = await get(server, "/tile/entries/001.p/44")
    assert status == 200 and h["Cache-Control"] == CACHE_PARTIAL

    async with aiohttp.ClientSession() as s, s.head(server + "/tile/0/000") as r:
        assert r.status == 200 and r.headers["Content-Type"] == TILE_TYPE


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/tile/0/0",  # not zero-padded
        "/tile/0/x000/001",  # non-canonical leading group
        "/tile/00/000",
        "/tile/0/000.p/256",
        "/tile/0/000.p/0",
        "/tile/0/000.p/05",
        "/tile/64/000",
        "/tile/0/002",  # well-formed but absent
        "/tile/entries/000.p/9",
        "/tile/data/000",
        "/tile/8/0/000",  # Go sumdb layout, not tlog-tiles
        "/.private/state",
        "/.private/config",
        "/tile/",
    ],
)
async def test_404(server: str, log: Log, path: str):
    log.append([entry(i) for i in range(300)])
    status, _, body = await get(server, path)
    assert status == 404, body
    assert b"PRIVATE" not in body and log.origin.encode() not in body


@pytest.mark.parametrize(
    "target",
    [
        "/tile/../.private/state",
        "/tile/0/../../.private/config",
        "/tile/%2e%2e/.private/state",
        "/tile/0/%2e%2e%2f%2e%2e%2f.private%2fstate",
        "/tile/..%2f.private%2fstate",
        "/tile/entries/..%2f..%2f.private/config",
        "/./.private/state",
        "//.private/state",
        "/tile/0/000/../../../checkpoint/../.private/state",
    ],
)
async def test_traversal_refused(server: str, log: Log, target: str):
    log.append([entry(i) for i in range(3)])
    resp = await raw_get(server, target)
    assert resp.split(b"\r\n", 1)[0] == b"HTTP/1.1 404 Not Found", resp[:200]
    assert b"cityid-ledger" not in resp  # the private config's magic line


# --- the client ----------------------------------------------------------------------------


async def test_client_follows_growing_log(server: str, log: Log):
    async with LogClient(server, log.verifier) as client:
        trusted, _ = await client.fetch_checkpoint()
        assert trusted.size == 0
        expected: list[bytes] = []
        for grow in (1, 4, 251, 44, 65536 - 300, 1000):
            new = [entry(len(expected) + i) for i in range(grow)]
            log.append(new)
            expected += new
            cp, note = await client.fetch_checkpoint()
            assert cp == log.checkpoint and note == log.checkpoint_note
            proof = await client.check_consistency(trusted, cp)
            if trusted.size:
                assert proof == log.consistency_proof(trusted.size, cp.size)
            got = [(i, e) async for i, e in client.entries(trusted.size, cp.size, cp)]
            assert got == list(enumerate(expected))[trusted.size :]
            for idx in {0, trusted.size, cp.size - 1, cp.size // 2}:
                p = await client.inclusion_proof(idx, cp)
                verify_inclusion(p, cp.size, idx, cp.root, leaf_hash(expected[idx]))
            tp = await client.tlog_proof(cp.size - 1, cp, note)
            assert verify_proof(tp, log.verifier, expected[-1]) == cp
            trusted = cp
        # A window in the middle of a bundle, and an empty range.
        got = [i async for i, _ in client.entries(300, 310, trusted)]
        assert got == list(range(300, 310))
        assert [x async for x in client.entries(5, 5, trusted)] == []
        with pytest.raises(TileError, match="not in the tree"):
            [x async for x in client.entries(0, trusted.size + 1, trusted)]
        # Unchanged log: consistent with itself, and a rollback is a fork.
        again, _ = await client.follow(trusted)
        assert again == trusted
        assert await client.check_consistency(trusted, trusted) == []


async def test_client_detects_fork(tmp_path: Path, server: str, log: Log, log_key, served_dir):
    log.append([entry(i) for i in range(600)])
    async with LogClient(server, log.verifier) as client:
        trusted, _ = await client.fetch_checkpoint()
        # Warm the client's tile cache with the honest tree.
        await client.inclusion_proof(5, trusted)
        # The operator rewrites history: same key, same origin, entry 5 changed.
        fork = Log.create(tmp_path / "fork", log_key)
        fork.append([entry(i) if i != 5 else b"rewritten" for i in range(700)])
        point(served_dir, fork.directory)
        cp, _ = await client.fetch_checkpoint()
        assert cp.size == 700
        with pytest.raises(ForkError, match="forked") as ei:
            await client.check_consistency(trusted, cp)
        assert ei.value.rule == "fork"
        # Same size, other root; and going back in size.
        other = Log.create(tmp_path / "other", log_key)
        other.append([b"x%d" % i for i in range(600)])
        with pytest.raises(ForkError, match="two different roots"):
            await client.check_consistency(trusted, other.checkpoint)
        with pytest.raises(ForkError, match="went back"):
            await client.check_consistency(cp, trusted)
        fork.close()
        other.close()


async def test_client_detects_tampered_bundle_and_tile(server: str, log: Log):
    log.append([entry(i) for i in range(600)])
    bundle = log.directory / "tile" / "entries" / "001"
    async with LogClient(server, log.verifier) as client:
        cp, _ = await client.fetch_checkpoint()
        data = bytearray(bundle.read_bytes())
        data[-1] ^= 1
        bundle.write_bytes(bytes(data))
        seen = []
        with pytest.raises(TileError) as ei:
            async for i, _ in client.entries(0, cp.size, cp):
                seen.append(i)
        assert ei.value.rule == "bundle-mismatch"
        # Nothing of the bad bundle was yielded.
        assert seen == list(range(256))
        # A truncated bundle is caught too.
        bundle.write_bytes(bytes(data[:-3]))
        with pytest.raises(TileError):
            [x async for x in client.entries(256, 300, cp)]
        # A changed hash tile no longer hashes to the checkpoint root.
        tile = log.directory / "tile" / "0" / "002.p" / "88"
        t = bytearray(tile.read_bytes())
        t[0] ^= 1
        tile.write_bytes(bytes(t))
        # This client already authenticated that tile (it keeps what it verified)...
        assert len(await client.inclusion_proof(520, cp)) > 0
    # ...a fresh one refuses it.
    async with LogClient(server, log.verifier) as fresh:
        with pytest.raises(TileError) as ei:
            await fresh.inclusion_proof(520, cp)
        assert ei.value.rule == "tile-mismatch"


async def test_client_checkpoint_trust(server: str, log: Log, log_key: SigningKey):
    log.append([entry(0)])
    async with aiohttp.ClientSession() as session:
        wrong = LogClient(server, SigningKey.generate(ORIGIN).verifier, session)
        with pytest.raises(NoteError):
            await wrong.fetch_checkpoint()
        w = cosigner_vkey(SigningKey.generate("w.example"))
        needs_witness = LogClient(server, Policy.k_of_n([log.verifier], [w], 1), session)
        with pytest.raises(WitnessError, match=r"missing w\.example"):
            await needs_witness.fetch_checkpoint()
        gone = LogClient(server + "/nothing-here", log.verifier, session)
        with pytest.raises(NoteError, match="cannot fetch"):
            await gone.fetch_checkpoint()
        assert not session.closed
