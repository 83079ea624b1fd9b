"""Benchmark the search index against a plain SQL ``LIKE`` scan of the same rows.

Run from the repository root::

    .venv/bin/python bench/search_bench.py                      # 1,000,000 identifiers
    .venv/bin/python bench/search_bench.py --ids 2000 --runs 1  # seconds: a correctness check

It builds, in a temporary directory (``--dir``), an index of ``--ids`` demo-like
assets (a URL, a description and a GEO point each, under ten city prefixes) through
:func:`resolver.search_index.apply`, the writer sync uses, in slices of 2,500 (what
one sync slice of a bulk mint hands it), and the naive peer: one table of the same
values with no index but the primary key. Then, for each kind of query, ``--queries``
random ones against each:

* ``exact``: one URL, a whole value (B2HANDLE's ``URL=...``);
* ``wildcard``: ``https://assets.<city>.example/<kind>/A0012*``;
* ``radius``: GEO points within 2 km of a random point;
* ``listing``: a random page of 100 of a prefix's identifiers (Handle's listing).

Printed as JSON: build rate (ids/s) and bytes per identifier for the index, and p50 /
p99 latency (ms) per kind for both, each as min / median / max over ``--runs``
builds. Every query's answer from the index is checked against the scan's, so a
small run is a correctness test of the index's query paths.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cityid.records import Record, Value
from resolver import search_index
from resolver.layout import MintChange
from resolver.search_index import Circle, Query, term

CITIES = [f"MA.156.{c}" for c in ("1101", "1301", "1302", "3101", "3201", "4401", "4403",
                                    "5101", "6101", "3301")]  # fmt: skip
KINDS = ("bus-stop", "hydrant", "street-light", "water-meter", "bench", "tree")
SLICE = 2500
PAGE = 100
CENTRE = (34.0, 112.0)  # every point within ~3 degrees of it


def asset(i: int, rng: random.Random) -> tuple[str, str, str, float, float]:
    """(prefix, suffix, url, lat, lon) of the i-th asset."""
    prefix = CITIES[i % len(CITIES)]
    suffix = f"A{i:07d}"
    kind = KINDS[i % len(KINDS)]
    lat = round(CENTRE[0] + rng.uniform(-3, 3), 5)
    lon = round(CENTRE[1] + rng.uniform(-3, 3), 5)
    return prefix, suffix, f"https://assets.{prefix[7:]}.example/{kind}/{suffix}", lat, lon


def build(directory: Path, n: int, seed: int) -> tuple[float, int, sqlite3.Connection]:
    """The index of ``n`` assets and the naive table; (seconds to build the index, its bytes)."""
    rng = random.Random(seed)
    path = directory / "index.sqlite"
    conn = search_index.open_writer(str(path), "bench")
    naive = sqlite3.connect(directory / "naive.sqlite", isolation_level=None)
    naive.execute("PRAGMA journal_mode=WAL")
    naive.execute("CREATE TABLE plain(handle TEXT, type TEXT, data TEXT, lat REAL, lon REAL)")
    spent = 0.0
    for start in range(0, n, SLICE):
        by_prefix: dict[str, list[tuple[str, int, bytes]]] = {}
        rows = []
        for i in range(start, min(n, start + SLICE)):
            prefix, suffix, url, lat, lon = asset(i, rng)
            rec = Record.of([Value.make(1, "URL", url, timestamp=1),
                             Value.make(2, "DESC", f"{KINDS[i % len(KINDS)]} {i}", timestamp=1),
                             Value.make(3, "GEO", f"{lat},{lon}", timestamp=1)])  # fmt: skip
            by_prefix.setdefault(prefix, []).append((suffix, 1, rec.encode()))
            handle = f"{prefix}/{suffix}"
            rows += [(handle, "URL", url, None, None), (handle, "GEO", "", lat, lon)]
        changes = [MintChange(p, "bench/log", start, items) for p, items in by_prefix.items()]
        t0 = time.perf_counter()
        search_index.apply(conn, changes, "bench/log", start + SLICE)
        spent += time.perf_counter() - t0
        naive.execute("BEGIN")
        naive.executemany("INSERT INTO plain VALUES (?, ?, ?, ?, ?)", rows)
        naive.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    naive.close()
    size = sum(p.stat().st_size for p in directory.glob("index.sqlite*"))
    return spent, size, search_index.open_reader(str(path))


def queries(kind: str, n: int, count: int, rng: random.Random) -> list[tuple[Any, str, list[Any]]]:
    """``count`` queries of ``kind``: (index query, naive SQL, its arguments)."""
    out: list[tuple[Any, str, list[Any]]] = []
    for _ in range(count):
        i = rng.randrange(n)
        prefix, _, url, _, _ = asset(i, random.Random(0))
        if kind == "exact":
            q = Query(fields={"URL": term(url, whole=True)}, limit=PAGE)
            sql, args = "type = 'URL' AND data LIKE ?", [url]
        elif kind == "wildcard":
            pattern = url[:-3] + "*"
            q = Query(fields={"URL": term(pattern, whole=True)}, limit=PAGE)
            sql, args = "type = 'URL' AND data LIKE ?", [pattern.replace("*", "%")]
        elif kind == "radius":
            c = Circle(CENTRE[0] + rng.uniform(-3, 3), CENTRE[1] + rng.uniform(-3, 3), 2.0)
            s, nn, w, e = c.box()
            q = Query(near=c, limit=PAGE)
            sql = "type = 'GEO' AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?"
            args = [s, nn, w, e]
        else:
            page = rng.randrange(max(1, n // len(CITIES) // PAGE))
            q = ("page", prefix, page)
            sql = "handle > ? AND handle < ? ORDER BY handle LIMIT ? OFFSET ?"
            out.append((q, sql, [prefix + "/", prefix + "0", PAGE, page * PAGE]))
            continue
        out.append((q, sql + " ORDER BY handle LIMIT ?", [*args, PAGE * 4]))
    return out


def timed(fn: Callable[[], list[str]]) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    got = fn()
    return (time.perf_counter() - t0) * 1000, got


def run_once(directory: Path, n: int, count: int, seed: int) -> dict[str, float]:
    spent, size, conn = build(directory, n, seed)
    naive = sqlite3.connect(f"file:{directory / 'naive.sqlite'}?mode=ro", uri=True)
    out: dict[str, float] = {"build_ids_per_s": n / spent, "bytes_per_id": size / n}
    rng = random.Random(seed + 1)
    for kind in ("exact", "wildcard", "radius", "listing"):
        ix_ms: list[float] = []
        naive_ms: list[float] = []
        for q, sql, args in queries(kind, n, count, rng):
            if isinstance(q, tuple):
                _, prefix, page = q
                ms, got = timed(lambda p=prefix, g=page: search_index.page(conn, p, g, PAGE, 60)[1])
            else:
                ms, got = timed(lambda q=q: [h.handle for h in search_index.search(conn, q, 60)[0]])
            ix_ms.append(ms)
            ms, rows = timed(
                lambda sql=sql, args=args: [r[0] for r in naive.execute(
                    f"SELECT DISTINCT handle FROM plain WHERE {sql}", args)]
            )  # fmt: skip
            naive_ms.append(ms)
            if kind == "radius":  # the scan's box is wider than the circle: check the hits
                assert set(got) <= set(rows), (kind, q)
            else:
                assert got == rows[: len(got)] and (len(got) == PAGE or got == rows), (kind, q)
        for who, ms in (("index", ix_ms), ("like_scan", naive_ms)):
            qs = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
            out[f"{kind}_{who}_p50_ms"] = qs[49]
            out[f"{kind}_{who}_p99_ms"] = qs[98]
    conn.close()
    naive.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ids", type=int, default=1_000_000, help="identifiers (default 1,000,000)")
    ap.add_argument("--queries", type=int, default=200, help="queries of each kind (default 200)")
    ap.add_argument("--runs", type=int, default=3, help="builds measured (default 3)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build (default: temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.ids < PAGE * len(CITIES) or args.queries < 1 or args.runs < 1:
        ap.error(f"--ids must be at least {PAGE * len(CITIES)}; --queries and --runs at least 1")
    runs = []
    for r in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="search-bench-") as d:
            runs.append(run_once(Path(d), args.ids, args.queries, args.seed + r))
            print(f"run {r + 1}/{args.runs} done", file=sys.stderr)
    # Each figure as [min, median, max] over the runs.
    summary = {k: [round(f(r[k] for r in runs), 3) for f in (min, statistics.median, max)]
               for k in runs[0]}  # fmt: skip
    print(json.dumps({"ids": args.ids, "queries": args.queries, "runs": args.runs,
                      "min_median_max": summary}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
