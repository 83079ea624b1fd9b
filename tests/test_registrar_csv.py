"""``cityid id mint PREFIX --csv FILE`` against a registrar child process.

A file is one transaction: every row is checked before anything is sent, and
the registrar admits the file's leaves all or none, so a bad row anywhere
leaves the ledger exactly as it was (the same checkpoint bytes).
"""

from __future__ import annotations

import asyncio
import csv
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from registrar_harness import (
    CITY,
    TRAFFIC,
    RegistrarProcess,
    RegistrarSpec,
    audit,
    cli,
    key_path,
    make_registrar,
    new_key,
    replay,
    sign,
    submit,
)

from cityid.identifiers import Identifier, mint_suffix
from cityid.keys import SigningKey
from cityid.ops import Delegate, Mint, SignedOperation, now
from cityid.records import Record

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
