"""Read a CSV of assets into mint items, every row checked, for one all-or-nothing write.

Columns (header row, case-insensitive): ``suffix`` (a suffix, or empty/``auto``
for the next minted number), ``url``, ``geo`` (``lat,lon``) or ``lat`` and
``lon``, ``desc``, ``email``; any other column becomes a value of that type
(``NAME``, ``10320/LOC``...). Empty cells add no value. A bad row is reported
with its line number, and nothing from the file is applied.

Two ways to read a file:

* :func:`plan_csv`: every row as a :class:`~cityid.ops.MintItem`, all checked
  before it returns;
* :class:`CsvMint`: the rows as signed mint leaves, one leaf at a time, so a
  client can stream them to the registrar while it reads the rest of the file
  (``RegistrarClient.submit_stream``). A bad row raises from the iterator,
  which aborts the upload: the registrar applies a stream only once its end
  marker arrived, so nothing from the file is applied.

Both check each value exactly as ``Value.make`` does (``Value.check``) and each
record as ``Record`` does (``Record.encode_wire``); the leaves are the
canonical encoding of ``Mint`` operations, grouped as ``chunk_items`` groups.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgpack

from cityid.errors import CityIdError, RecordError
from cityid.identifiers import Prefix, mint_suffix, suffix_checker
from cityid.keys import SigningKey
from cityid.ops import MAX_LEAF, Mint, MintItem, sign_body
from cityid.records import Record, Value

KNOWN = {"url": "URL", "geo": "GEO", "desc": "DESC", "email": "EMAIL"}
HEADER_COLUMNS = {*KNOWN, "suffix", "lat", "lon"}
#: What a group of items may hold (``chunk_items``'s default budget).
LEAF_BUDGET = MAX_LEAF - 512


class CsvError(CityIdError, ValueError):
    rule = "csv"


@dataclass(frozen=True, slots=True)
class CsvPlan:
    items: list[MintItem]
    auto: int  # how many suffixes were allocated


class CsvRow(NamedTuple):
    """A checked row: its suffix and its record, as wire values and canonical bytes."""

    line: int
    suffix: str
    values: list[list[Any]]
    record: bytes


class CsvMint:
    """A CSV file read row by row into checked rows, or signed mint leaves.

    Opening reads the whole file (so an encoding error is reported before
    anything is sent) and checks the header; rows are checked as they are
    iterated. ``rows``, ``auto`` and ``leaves`` count what was produced so far;
    ``signed_rows`` the rows inside the leaves made so far (``rows`` runs ahead
    of it by the rows of the leaf being filled).
    """

    def __init__(
        self,
        path: str | Path,
        prefix: Prefix,
        *,
        letters: str,
        width: int,
        start: int,
        timestamp: int,
        ttl: int = 86400,
    ) -> None:
        self.path = Path(path)
        self.prefix = prefix
        self.letters = letters
        self.width = width
        self.start = start
        self.timestamp = timestamp
        self.ttl = ttl
        self.rows = 0
        self.auto = 0
        self.leaves = 0
        self.signed_rows = 0
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise CsvError(f"{self.path}: not UTF-8 (byte {e.start})", rule="csv-encoding") from e
        except OSError as e:
            raise CsvError(f"{self.path}: {e.strerror}", rule="csv-file") from e
        #: Data lines, for a progress bar (a quoted cell may hold a line break).
        self.estimate = max(text.count("\n") - 1, 1)
        self._reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        self._columns = self._header()

    def _header(self) -> list[str]:
        try:
            header = next(self._reader, None)
        except csv.Error as e:
            raise CsvError(f"{self.path}:{self._reader.line_num}: {e}", rule="csv-syntax") from e
        if not header:
            raise CsvError(f"{self.path}: empty file, no header row", rule="csv-header")
        fields = [f.strip().lower() for f in header]
        if not set(fields) & HEADER_COLUMNS:
            raise CsvError(
                f"{self.path}:1: no header row: the first line must name columns, at least one "
                f"of {', '.join(sorted(HEADER_COLUMNS))}",
                rule="csv-header",
            )
        if len(set(fields)) != len(fields):
            raise CsvError(f"{self.path}: duplicate column in header {header}", rule="csv-header")
        return fields

    def _plan(self) -> tuple[int, int, int, int, list[tuple[int, str]]]:
        """Where the suffix, lat, lon and geo cells are, and the value columns in order.

        The order is the one of the header, ``lat``/``lon`` becoming a ``GEO``
        value in place of a ``geo`` column, or after the others (``-1``).
        """
        fields = self._columns

        def at(name: str) -> int:
            return fields.index(name) if name in fields else -1

        lat, lon, geo = at("lat"), at("lon"), at("geo")
        plan = [
            (i, KNOWN.get(col) or col.upper())
            for i, col in enumerate(fields)
            if col not in ("suffix", "lat", "lon")
        ]
        if geo < 0 and (lat >= 0 or lon >= 0):
            plan.append((-1, "GEO"))
        return at("suffix"), lat, lon, geo, plan

    def __iter__(self) -> Iterator[CsvRow]:
        """Every row, checked; raises CsvError naming the first bad line."""
        return map(CsvRow._make, self._checked_rows())

    def _checked_rows(self) -> Iterator[tuple[int, str, list[list[Any]], bytes]]:
        prefix, ttl, ts, path = self.prefix, self.ttl, self.timestamp, self.path
        suffix_at, lat_at, lon_at, geo_at, plan = self._plan()
        ncols = len(self._columns)
        seen: set[str] = set()
        number = self.start
        check = Value.check
        check_suffix = suffix_checker(prefix)
        encode = Record.encode_wire
        reader = self._reader
        try:
            for row in reader:
                line = reader.line_num
                if not row:
                    continue  # a blank line
                if len(row) > ncols:
                    raise CsvError(f"{path}:{line}: more cells than header columns", rule="csv-row")
                cells = [c.strip() for c in row]
                if len(cells) < ncols:
                    cells += [""] * (ncols - len(cells))
                cells.append("")  # cells[-1]: the place of a GEO value with no geo column
                try:
                    suffix = cells[suffix_at] if suffix_at >= 0 else ""
                    if not suffix.isascii():
                        # Before upper(): it maps "ß" to "SS", which would mint another name.
                        check_suffix(suffix)
                    suffix = suffix.upper()
                    if suffix in ("", "AUTO"):
                        suffix = mint_suffix(self.letters, number, self.width)
                        number += 1
                        self.auto += 1
                    check_suffix(suffix)  # what Identifier(prefix, suffix) checks
                    if suffix in seen:
                        raise CsvError(f"suffix {suffix} appears twice", rule="csv-duplicate")
                    seen.add(suffix)
                    lat = cells[lat_at] if lat_at >= 0 else ""
                    lon = cells[lon_at] if lon_at >= 0 else ""
                    if lat or lon:
                        cells[geo_at] = f"{lat},{lon}"
                    values: list[list[Any]] = []
                    for i, vtype in plan:
                        cell = cells[i]
                        if cell:
                            values.append(check(len(values) + 1, vtype, cell, ttl, ts))
                    if not values:
                        raise RecordError("the row has no values", rule="empty-row")
                    record = encode(values)
                except CityIdError as e:
                    raise CsvError(f"{path}:{line}: {e.message}", rule=e.rule) from e
                self.rows += 1
                yield line, suffix, values, record
        except csv.Error as e:
            raise CsvError(f"{path}:{reader.line_num}: {e}", rule="csv-syntax") from e
        if not self.rows:
            raise CsvError(f"{path}: no data rows", rule="csv-empty")

    def signed_leaves(self, key: SigningKey, budget: int = LEAF_BUDGET) -> Iterator[bytes]:
        """The rows as signed ``Mint`` leaves, grouped as ``chunk_items`` groups them."""
        pack = msgpack.Packer(use_bin_type=True).pack
        items: list[bytes] = []  # each item [suffix, 0, record], packed
        size = 0
        for _, suffix, _, record in self._checked_rows():
            n = 12 + len(suffix) + len(record)  # chunk_items's bound of an item
            if items and size + n > budget:
                yield self._leaf(items, key)
                items, size = [], 0
            # msgpack is compositional: the item is its array header, then the
            # suffix, prev 0 and the record's canonical bytes.
            items.append(b"\x93" + pack(suffix) + b"\x00" + record)
            size += n
        if items:
            yield self._leaf(items, key)

    def _leaf(self, items: list[bytes], key: SigningKey) -> bytes:
        # Mint(prefix, items, timestamp)'s body, assembled from the packed items.
        packer = msgpack.Packer(use_bin_type=True)
        body = b"".join((
            b"\x94", packer.pack(Mint.kind), packer.pack(str(self.prefix)),
            packer.pack_array_header(len(items)), *items, packer.pack(self.timestamp),
        ))  # fmt: skip
        self.leaves += 1
        self.signed_rows += len(items)
        return sign_body(body, key)


def plan_csv(
    path: str | Path,
    prefix: Prefix,
    *,
    letters: str,
    width: int,
    start: int,
    timestamp: int,
    ttl: int = 86400,
) -> CsvPlan:
    """Every row as a mint item; raises CsvError naming the first bad line."""
    reader = CsvMint(
        path, prefix, letters=letters, width=width, start=start, timestamp=timestamp, ttl=ttl
    )
    items = [
        MintItem(row.suffix, 0, Record(tuple(Value(*v) for v in row.values))) for row in reader
    ]
    return CsvPlan(items, reader.auto)
