"""``cityid id mint PREFIX --csv FILE`` against a registrar child process.

A file is one transaction: every row is checked before anything is sent, and
the registrar admits the file's leaves all or none, so a bad row anywhere
leaves the ledger exactly as it was (the same checkpoint bytes).
"""

from __future__ import annotations

import asyncio
import csv
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from registrar_harness import (
    CITY,
    TRAFFIC,
    RegistrarProcess,
    RegistrarSpec,
    audit,
    checkpoint_bytes,
    cli,
    forge,
    key_path,
    make_registrar,
    new_key,
    prove_receipts,
    replay,
    sign,
    submit,
    version,
)

from cityid.identifiers import Identifier, mint_suffix
from cityid.keys import SigningKey
from cityid.ops import Delegate, Mint, MintItem, SignedOperation, now
from cityid.records import Record, Value
from registrar.client import RegistrarClient
from registrar.core import END_OF_LEAVES, LEAVES
from registrar.csvmint import CsvMint, plan_csv

pytestmark = pytest.mark.timeout(120)

ORIGIN = "sjz.cityid.test/log"
HEADER = ["suffix", "url", "lat", "lon", "desc", "NAME"]


@dataclass
class Env:
    spec: RegistrarSpec
    proc: RegistrarProcess
    traffic: SigningKey
    keys: Path

    def checkpoint(self) -> bytes:
        with urllib.request.urlopen(f"{self.spec.url}/log/checkpoint", timeout=10) as r:
            return bytes(r.read())

    def version(self, ident: str) -> tuple[int, bool]:
        import json

        with urllib.request.urlopen(f"{self.spec.url}/api/version/{ident}", timeout=10) as r:
            body = json.loads(r.read())
        return int(body["version"]), bool(body["exists"])

    def mint_csv(self, path: Path, *extra: str) -> tuple[int, str, str]:
        res = cli(
            "id",
            "mint",
            str(TRAFFIC),
            "--key",
            str(key_path(self.keys, self.traffic)),
            "--registrar",
            self.spec.url,
            "--csv",
            str(path),
            *extra,
        )
        return res.returncode, res.stdout, res.stderr


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("csv")
    keys = tmp / "keys"
    city, traffic = new_key("city", keys), new_key("traffic", keys)
    spec = make_registrar(tmp / "city", CITY, ORIGIN, admin=city)
    with RegistrarProcess(spec) as proc:
        proc.start()

        async def delegate() -> None:
            async with aiohttp.ClientSession() as s:
                op = Delegate(TRAFFIC, 0, traffic.public_key, None, Record(()), now())
                await submit(s, spec.url, [sign(op, city)])

        asyncio.run(delegate())
        yield Env(spec, proc, traffic, keys)
        assert proc.stop() == 0, proc.output()[-2000:]
    replay(spec)
    audit(spec)


def write_rows(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def asset_rows(n: int, tag: str) -> list[list[str]]:
    """``n`` rows: every third one auto-numbered (empty or 'auto'), the rest named."""
    rows = []
    for i in range(n):
        suffix = "" if i % 6 == 0 else "auto" if i % 3 == 0 else f"{tag}-{i:04d}"
        lat, lon = f"{38 + i / 10_000:.5f}", f"{114.5 + i / 10_000:.5f}"
        rows.append(
            [suffix, f"https://assets.example/{tag}/{i}", lat, lon, f"{tag} asset {i}", f"名 {i}"]
        )
    return rows


def refused(env: Env, path: Path, *needles: str) -> str:
    """Run the CSV mint, expect exit 1 with a one-line error and an unchanged ledger."""
    before = env.checkpoint()
    code, out, err = env.mint_csv(path)
    assert code == 1, (out, err)
    assert "Traceback" not in err and "rule: " in err, err
    for n in needles:
        assert n in err, err
    assert env.checkpoint() == before
    return err


def test_thousand_rows(env: Env, tmp_path: Path) -> None:
    rows = asset_rows(1000, "OK")
    path = write_rows(tmp_path / "assets.csv", rows)
    before = env.checkpoint()
    code, out, err = env.mint_csv(path, "--letters", "C", "--width", "6")
    assert code == 0, err
    assert "minted 1,000 identifiers" in out and "(334 auto-numbered)" in out, out
    assert env.checkpoint() != before
    # Named rows and auto-numbered rows (C000000.., in row order) all exist.
    assert env.version(f"{TRAFFIC}/OK-0001") == (1, True)
    assert env.version(f"{TRAFFIC}/OK-0998") == (1, True)
    assert env.version(f"{TRAFFIC}/{mint_suffix('C', 0, 6)}") == (1, True)
    assert env.version(f"{TRAFFIC}/{mint_suffix('C', 333, 6)}") == (1, True)
    assert env.version(f"{TRAFFIC}/{mint_suffix('C', 334, 6)}") == (0, False)
    # The leaves hold each row's values, the extra column as a NAME value.
    log = env.spec.open_log()
    items = {}
    for leaf in log.entries(0, log.size):
        op = SignedOperation.decode(leaf).op
        if isinstance(op, Mint):
            items.update({i.suffix: i.record for i in op.items})
    assert len(items) == 1000
    r = items["OK-0001"]
    assert r.urls() == ["https://assets.example/OK/1"]
    assert {v.type: v.data for v in r.values} == {
        "URL": "https://assets.example/OK/1",
        "GEO": "38.0001,114.5001",
        "DESC": "OK asset 1",
        "NAME": "名 1",
    }
    # Auto numbers continue from the registrar's next free number.
    path2 = write_rows(tmp_path / "more.csv", [["", "https://assets.example/more", "", "", "", ""]])
    code, out, err = env.mint_csv(path2, "--letters", "C", "--width", "6")
    assert code == 0, err
    assert env.version(str(Identifier(TRAFFIC, mint_suffix("C", 334, 6)))) == (1, True)


def test_bad_geo_at_line_503_logs_nothing(env: Env, tmp_path: Path) -> None:
    rows = asset_rows(1000, "GEO")
    rows[501][2] = "95.5"  # line 503: the header is line 1, rows[0] is line 2
    path = write_rows(tmp_path / "bad-geo.csv", rows)
    err = refused(env, path, f"{path}:503:", "latitude", "rule: geo-range")
    assert err.count("\n") == 1
    # Nothing from the file, not even the rows before the bad one.
    assert env.version(f"{TRAFFIC}/GEO-0001") == (0, False)
    rows[501][2] = "north"
    path = write_rows(tmp_path / "bad-geo2.csv", rows)
    refused(env, path, ":503:", "rule: geo-syntax")


def test_duplicate_suffix(env: Env, tmp_path: Path) -> None:
    rows = asset_rows(20, "DUP")
    rows[15][0] = rows[4][0]  # line 17 repeats line 6
    path = write_rows(tmp_path / "dup.csv", rows)
    refused(env, path, f"{path}:17:", "DUP-0004", "appears twice", "rule: csv-duplicate")


def test_row_that_already_exists_refuses_the_whole_file(env: Env, tmp_path: Path) -> None:
    first = write_rows(
        tmp_path / "first.csv", [["EXISTS-1", "https://a.example/1", "", "", "", ""]]
    )
    code, _, err = env.mint_csv(first)
    assert code == 0, err
    rows = asset_rows(900, "LATE")  # several leaves: the clash is in the last one
    rows.append(["EXISTS-1", "https://a.example/again", "", "", "", ""])
    path = write_rows(tmp_path / "late.csv", rows)
    refused(env, path, "EXISTS-1", "already exists", "rule: already-exists")
    assert env.version(f"{TRAFFIC}/LATE-0001") == (0, False)


def test_missing_header(env: Env, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    refused(env, empty, "no header row", "rule: csv-header")
    header_only = write_rows(tmp_path / "header-only.csv", [])
    refused(env, header_only, "no data rows", "rule: csv-empty")


def test_headerless_file_is_reported_as_missing_header(env: Env, tmp_path: Path) -> None:
    rows = asset_rows(10, "NOHDR")
    path = write_rows(tmp_path / "assets.csv", rows, header=[])
    err = refused(env, path).replace(str(path), "FILE")
    assert "header" in err, err


def test_not_utf8(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("suffix,url,desc\nX-1,https://a.example/1,caf\xe9\n".encode("latin-1"))
    refused(env, path, "not UTF-8", "rule: csv-encoding")


def test_more_cells_than_columns_and_bad_url(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "extra.csv"
    path.write_text("suffix,url\nX-1,https://a.example/1\nX-2,https://a.example/2,surplus\n")
    refused(env, path, f"{path}:3:", "rule: csv-row")
    rows = asset_rows(10, "JS")
    rows[7][1] = "javascript:alert(1)"
    refused(env, write_rows(tmp_path / "js.csv", rows), ":9:", "rule: url-scheme")


# -- the streamed form of POST /api/ops (application/x-cityid-leaves) ----------------


def mint_leaves(env: Env, tag: str, n: int, per_leaf: int = 3) -> list[bytes]:
    """``n`` signed mint leaves of ``per_leaf`` identifiers ``TAG-<leaf>-<item>`` each."""
    ts = now()
    leaves = []
    for i in range(n):
        items = tuple(
            MintItem(
                f"{tag}-{i}-{j}",
                0,
                Record((Value.make(1, "URL", f"https://s.example/{tag}/{i}/{j}", timestamp=ts),)),
            )
            for j in range(per_leaf)
        )
        leaves.append(sign(Mint(TRAFFIC, items, ts), env.traffic))
    return leaves


def framed(leaves: list[bytes], end: bool = True) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    return b"".join(packer.pack(leaf) for leaf in leaves) + (END_OF_LEAVES if end else b"")


async def post_stream(
    session: aiohttp.ClientSession, url: str, body: Any, content_type: str = LEAVES
) -> tuple[int, dict[str, Any]]:
    async with session.post(
        f"{url}/api/ops", data=body, headers={"Content-Type": content_type}
    ) as r:
        return r.status, await r.json(content_type=None)


def test_streamed_leaves_are_one_request(env: Env) -> None:
    leaves = mint_leaves(env, "STREAM", 4)

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            status, body = await post_stream(s, env.spec.url, framed(leaves[:2]))
            assert status == 200, body
            assert len(body["receipts"]) == 2
            await prove_receipts(s, env.spec, leaves[:2], body)

            async def chunked() -> AsyncIterator[bytes]:  # sent as it is made, in pieces
                data = framed(leaves[2:])
                for i in range(0, len(data), 100):
                    yield data[i : i + 100]

            status, body = await post_stream(s, env.spec.url, chunked())
            assert status == 200, body
            await prove_receipts(s, env.spec, leaves[2:], body)
            for i in range(4):
                assert await version(s, env.spec.url, f"{TRAFFIC}/STREAM-{i}-2") == (1, True)

    asyncio.run(go())


def test_streamed_upload_aborted_mid_file_applies_nothing(env: Env) -> None:
    leaves = mint_leaves(env, "ABORT", 5, per_leaf=200)
    before = env.checkpoint()

    class BadRow(Exception):
        pass

    def rows_then_a_bad_one() -> Iterator[bytes]:
        yield from leaves[:4]  # ~4 leaves on their way, checked by the registrar
        raise BadRow("line 1001: not a URL")

    async def go() -> None:
        async with RegistrarClient(env.spec.url) as client:
            with pytest.raises(BadRow, match="line 1001"):
                await client.submit_stream(rows_then_a_bad_one())
            assert env.checkpoint() == before
            assert await client.version(Identifier(TRAFFIC, "ABORT-0-0")) == (0, False)
            # Nothing was half-applied: the very same leaves are accepted in full.
            body = await client.submit_stream(iter(leaves))
            assert len(body["receipts"]) == 5
            assert await client.version(Identifier(TRAFFIC, "ABORT-4-199")) == (1, True)

    asyncio.run(go())
    assert env.checkpoint() != before


def test_csv_with_a_bad_row_after_several_leaves(env: Env, tmp_path: Path) -> None:
    rows = asset_rows(3000, "DEEP")
    rows[2497][1] = "ftp://assets.example/x"  # line 2499, ~6 leaves into the upload
    path = write_rows(tmp_path / "deep.csv", rows)
    reader = CsvMint(path, TRAFFIC, letters="D", width=6, start=0, timestamp=now())
    with pytest.raises(Exception, match=":2499:"):
        for _ in reader.signed_leaves(env.traffic):
            pass
    assert reader.leaves >= 5  # these were streamed before the bad row was read
    refused(env, path, f"{path}:2499:", "rule: url-scheme")
    assert env.version(f"{TRAFFIC}/DEEP-0001") == (0, False)


def test_stream_refusals_leave_the_ledger_unchanged(env: Env) -> None:
    leaves = mint_leaves(env, "REFUSED", 3)
    bad = [leaves[0], forge(leaves[1]), leaves[2]]
    cases: list[tuple[Any, str, str]] = [
        (framed(leaves, end=False), "truncated", "end marker"),  # the body just stops
        (framed(leaves) + b"\x01", "encoding", "after the end"),
        (framed(leaves) + framed(leaves[:1]), "encoding", "after the end"),
        (framed([]), "empty", "no operations"),
        (msgpack.packb("not a leaf") + END_OF_LEAVES, "encoding", "stream of leaves"),
        (msgpack.packb([leaves[0]]) + END_OF_LEAVES, "encoding", "stream of leaves"),
        (framed([b"\x94" + b"x" * 10]), "encoding", "operation 0:"),
        (framed([leaves[0], b"x" * 70_000]), "encoding", "stream of leaves"),  # > a leaf
        (framed(bad), "forged-signature", "operation 1:"),
    ]

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            before = await checkpoint_bytes(s, env.spec.url)
            for body, rule, needle in cases:
                status, answer = await post_stream(s, env.spec.url, body)
                assert (status, answer.get("rule")) == (
                    403 if rule == "forged-signature" else 400,
                    rule,
                ), answer
                assert needle in answer["message"], answer
            status, answer = await post_stream(s, env.spec.url, framed(leaves), "text/plain")
            assert (status, answer["rule"]) == (400, "content-type"), answer
            assert LEAVES in answer["message"]
            assert await checkpoint_bytes(s, env.spec.url) == before
            assert await version(s, env.spec.url, f"{TRAFFIC}/REFUSED-0-0") == (0, False)

    asyncio.run(go())


def test_plan_and_stream_make_the_same_leaves(tmp_path: Path) -> None:
    """The streamed leaves are the canonical Mint leaves of plan_csv's items."""
    from cityid.ops import chunk_items

    key = new_key("plan")
    rows = asset_rows(1200, "SAME")
    rows[5] = ["same-x", "https://a.example/x", "38.10000", "-0.000", "", ""]
    path = write_rows(tmp_path / "same.csv", rows)
    ts = now()
    plan = plan_csv(path, TRAFFIC, letters="S", width=6, start=7, timestamp=ts)
    groups = chunk_items(plan.items, TRAFFIC)
    want = [SignedOperation.sign(Mint(TRAFFIC, tuple(g), ts), key).encode() for g in groups]
    reader = CsvMint(path, TRAFFIC, letters="S", width=6, start=7, timestamp=ts)
    got = list(reader.signed_leaves(key))
    assert got == want and len(got) > 1
    assert (reader.rows, reader.auto, reader.leaves) == (1200, plan.auto, len(got))
    assert SignedOperation.decode(got[0]).op.items[5].record.first("GEO") == Value.make(
        2, "GEO", "38.1,0", timestamp=ts
    )


def test_non_ascii_suffix_is_refused_not_folded(tmp_path: Path) -> None:
    # str.upper() turns "ß" into "SS": the row must be refused, not minted as another name.
    from cityid.identifiers import parse_prefix
    from registrar.csvmint import CsvError, plan_csv

    f = tmp_path / "ss.csv"
    f.write_text("suffix,url\nß,https://x.example/\n", encoding="utf-8")
    with pytest.raises(CsvError) as e:
        plan_csv(f, parse_prefix("MA.156.1301.02"), letters="W", width=7, start=0, timestamp=1)
    assert ":2:" in e.value.message and e.value.rule == "suffix-charset"
