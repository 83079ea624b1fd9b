"""Read a CSV of assets into mint items, all rows checked before anything is sent.

Columns (header row, case-insensitive): ``suffix`` (a suffix, or empty/``auto``
for the next minted number), ``url``, ``geo`` (``lat,lon``) or ``lat`` and
``lon``, ``desc``, ``email``; any other column becomes a value of that type
(``NAME``, ``10320/LOC``...). Empty cells add no value. A bad row is reported
with its line number, and nothing from the file is sent.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cityid.errors import CityIdError, RecordError
from cityid.identifiers import Identifier, Prefix, mint_suffix
from cityid.ops import MintItem
from cityid.records import Record, Value

KNOWN = {"url": "URL", "geo": "GEO", "desc": "DESC", "email": "EMAIL"}
HEADER_COLUMNS = {*KNOWN, "suffix", "lat", "lon"}


class CsvError(CityIdError, ValueError):
    rule = "csv"


@dataclass(frozen=True, slots=True)
class CsvPlan:
    items: list[MintItem]
    auto: int  # how many suffixes were allocated


def _rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise CsvError(f"{path}: not UTF-8 (byte {e.start})", rule="csv-encoding") from e
    except OSError as e:
        raise CsvError(f"{path}: {e.strerror}", rule="csv-file") from e
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    if not reader.fieldnames:
        raise CsvError(f"{path}: empty file, no header row", rule="csv-header")
    fields = [f.strip().lower() for f in reader.fieldnames]
    if not set(fields) & HEADER_COLUMNS:
        raise CsvError(
            f"{path}:1: no header row: the first line must name columns, at least one of "
            f"{', '.join(sorted(HEADER_COLUMNS))}",
            rule="csv-header",
        )
    if len(set(fields)) != len(fields):
        raise CsvError(f"{path}: duplicate column in header {reader.fieldnames}", rule="csv-header")
    reader.fieldnames = fields
    try:
        for row in reader:
            if None in row:
                raise CsvError(
                    f"{path}:{reader.line_num}: more cells than header columns", rule="csv-row"
                )
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items()}
    except csv.Error as e:
        raise CsvError(f"{path}:{reader.line_num}: {e}", rule="csv-syntax") from e


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
    p = Path(path)
    items: list[MintItem] = []
    seen: set[str] = set()
    number = start
    auto = 0
    for line, row in _rows(p):
        try:
            suffix = row.pop("suffix", "").upper()
            if suffix in ("", "AUTO"):
                suffix = mint_suffix(letters, number, width)
                number += 1
                auto += 1
            Identifier(prefix, suffix)  # validates the suffix
            if suffix in seen:
                raise CsvError(f"suffix {suffix} appears twice", rule="csv-duplicate")
            seen.add(suffix)
            lat, lon = row.pop("lat", ""), row.pop("lon", "")
            if lat or lon:
                row["geo"] = f"{lat},{lon}"
            values = []
            for col, cell in row.items():
                if cell:
                    vtype = KNOWN.get(col, col.upper())
                    values.append(Value.make(len(values) + 1, vtype, cell, ttl, timestamp))
            if not values:
                raise RecordError("the row has no values", rule="empty-row")
            items.append(MintItem(suffix, 0, Record(tuple(values))))
        except CityIdError as e:
            raise CsvError(f"{p}:{line}: {e.message}", rule=e.rule) from e
    if not items:
        raise CsvError(f"{p}: no data rows", rule="csv-empty")
    return CsvPlan(items, auto)
