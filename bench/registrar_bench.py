"""Benchmark a registrar child process on loopback: range mints, CSV mints, write latency.

Run from the repository root::

    .venv/bin/python bench/registrar_bench.py              # full run (~2-3 min)
    .venv/bin/python bench/registrar_bench.py --quick      # ~30 s smoke run
    .venv/bin/python bench/registrar_bench.py --profile    # also cProfile the CSV path

The registrar is ``python -m cityid.cli registrar serve DIR --listen 127.0.0.1:PORT``
with the batching that ``cityid registrar init`` writes by default (1,000
operations or 250 ms per checkpoint; ``--max-delay-ms`` changes it). Every
acknowledgement means: the batch is durable (fsync) and its signed checkpoint
published. Each measurement is repeated (``--repeat``, at least 3) and printed
as min / median / max:

(a) range: 1,000,000 identifiers minted as one ``MintRange`` leaf; ids/s from
    the client's signing and POST to the acknowledged receipt;
(b) CSV: a 100,000-row file through ``cityid id mint PREFIX --csv FILE``
    (``cityid.cli.main`` in this process: CSV parse, row checks and signing,
    streamed as they are made; the server decodes and verifies each leaf as
    it arrives, then checks authority and appends); rows/s;
(c) latency: single-identifier writes sent open-loop at a fixed pace
    (1,000/s for ~5 s, each at its scheduled time however many are in
    flight); p50/p99 from the scheduled send to the acknowledgement, at the
    default batching delay and at ``--fast-delay-ms``.

Targets: (a) >= 100,000 ids/s, (b) >= 20,000 rows/s.

``--restart`` measures instead how long a registrar takes to start on a big log (issue
17, section 8), at 1,000,000 and 10,000,000 identifiers (``--sizes``; ``--quick``:
100,000 and 1,000,000) of two kinds: *explicit* (Mint leaves of 400 identifiers, half
named ``K6-N``, half auto-numbered ``C`` + 9 digits, one URL each: what CSV uploads
write) and *range* (MintRange leaves of 1,000,000). The log is written straight into
the registrar's directory (``ledger.storage.Log``, no HTTP), then for each round:

* before: the snapshot directory deleted, so the start replays the whole log (what every
  start did before snapshots); the clean stop after it writes a snapshot;
* after: a start from that snapshot (no tail).

Restart time is from spawning ``cityid registrar serve`` to ``/healthz`` answering 200
(interpreter, imports, log open, snapshot load, replay, bind); printed as min / median /
max over ``--repeat`` rounds, with the child's RSS once started (the namespace's
footprint plus the process's base, printed for an empty registrar). Then, in this
process, the event-loop stall of writing a snapshot: a 1 ms timer ticks while
``Registrar.write_snapshot`` merges and writes (periodic: 250,000 new identifiers on top
of the loaded snapshot; first: the whole namespace after a full replay, the worst case).
Every start and stop is bounded (``--start-timeout``); from 5M identifiers the full
replay runs once (``--before-repeat``) and the in-process first snapshot only with
``--first-stall``, as each takes minutes. Goal: a restart <= 3 s at 10M.

    .venv/bin/python bench/registrar_bench.py --restart --quick    # ~10 min
    .venv/bin/python bench/registrar_bench.py --restart            # ~30 min on 2 CPUs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import csv
import gc
import io
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from registrar_harness import (  # noqa: E402
    TRAFFIC,
    RegistrarProcess,
    RegistrarSpec,
    key_path,
    make_registrar,
    new_key,
    post_ops,
    sign,
)

from cityid.authority import Namespace  # noqa: E402
from cityid.cli import main as cityid_main  # noqa: E402
from cityid.identifiers import mint_suffix  # noqa: E402
from cityid.keys import SigningKey  # noqa: E402
from cityid.ops import Mint, MintItem, MintRange, SignedOperation, now, sign_body  # noqa: E402
from cityid.records import DEFAULT_TTL, Record, Value  # noqa: E402
from ledger.storage import Log  # noqa: E402
from registrar.core import Registrar  # noqa: E402
from registrar.csvmint import CsvMint  # noqa: E402
from registrar.server import GC_THRESHOLDS  # noqa: E402

ORIGIN = "traffic.sjz.cityid.test/log"
RANGE_TARGET = 100_000
CSV_TARGET = 20_000


def summary(name: str, values: list[float], unit: str, fmt: str = "{:,.0f}") -> str:
    lo, med, hi = min(values), statistics.median(values), max(values)
    f = fmt.format
    return f"{name:<44} min {f(lo):>12}  median {f(med):>12}  max {f(hi):>12}  {unit}"


# -- (a) one range of a million ------------------------------------------------------


async def bench_range(spec: RegistrarSpec, key: SigningKey, count: int, rep: int) -> float:
    ts = now()
    template = Record((Value.make(1, "URL", "https://t.example/a/{suffix}", timestamp=ts),))
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        op = MintRange(TRAFFIC, "M", rep * count, count, 9, template, ts)
        status, body = await post_ops(session, spec.url, [sign(op, key)])
        took = time.perf_counter() - t0
    if status != 200:
        raise SystemExit(f"range mint refused: {body}")
    return count / took


# -- (b) a CSV file --------------------------------------------------------------------


def write_csv(path: Path, rows: int, tag: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["suffix", "url", "lat", "lon", "desc", "NAME"])
        for i in range(rows):
            suffix = "auto" if i % 2 else f"{tag}-{i:06d}"
            w.writerow([
                suffix,
                f"https://assets.example/{tag}/{i}",
                f"{38 + (i % 1000) / 10_000:.5f}",
                f"{114.4 + (i % 997) / 10_000:.5f}",
                f"manhole cover {i}",
                f"井盖 {i}",
            ])  # fmt: skip


def bench_csv(spec: RegistrarSpec, key: SigningKey, path: Path) -> float:
    rows = path.read_text(encoding="utf-8").count("\n") - 1
    argv = ["id", "mint", str(TRAFFIC), "--key", str(key_path(spec.directory.parent, key))]
    argv += ["--registrar", spec.url, "--csv", str(path), "--letters", "C", "--width", "9"]
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cityid_main(argv)
    took = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"CSV mint failed ({code}): {out.getvalue()}")
    return rows / took


def _phases(
    key: SigningKey, path: Path, prof: cProfile.Profile | None, sprof: cProfile.Profile | None
) -> tuple[int, int, dict[str, float]]:
    """Run the CSV path's CPU work in-process, phase by phase; (rows, leaves, seconds).

    In (b) the client's phase and the server's decoding overlap (the leaves are
    streamed, and decoded as they arrive); applying follows the last leaf.
    """
    ts = now()
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object], p: cProfile.Profile | None) -> object:
        t0 = time.perf_counter()
        if p:
            p.enable()
        try:
            return fn()
        finally:
            if p:
                p.disable()
            timings[name] = time.perf_counter() - t0

    reader = CsvMint(path, TRAFFIC, letters="P", width=9, start=0, timestamp=ts)
    leaves: list[bytes] = timed(  # type: ignore[assignment]
        "client: read, check, sign rows (CsvMint)",
        lambda: list(reader.signed_leaves(key)),
        prof,
    )
    # The server's CPU work on the request, with the registrar process's GC settings:
    # each leaf decoded as it arrives (canonical re-encoding, record checks,
    # signature), then Registrar.admit applies them all to the namespace.
    ns = Namespace()
    ns.add_anchor(TRAFFIC, key.public_key, ORIGIN)
    # The benchmark's registrar holds ranges under the prefix: so does this one.
    tpl = Record((Value.make(1, "URL", "https://t.example/{suffix}", timestamp=ts),))
    ns.apply(SignedOperation.sign(MintRange(TRAFFIC, "M", 0, 10, 9, tpl, ts), key), log=ORIGIN)
    saved = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        ops: list[SignedOperation] = timed(  # type: ignore[assignment]
            "server: decode + verify leaves (as they arrive)",
            lambda: [SignedOperation.decode(leaf) for leaf in leaves],
            sprof,
        )

        def admit() -> None:
            with ns.transaction():
                for op in ops:
                    ns.apply(op, log=ORIGIN)

        timed("server: authority checks, apply (admit)", admit, sprof)
    finally:
        gc.set_threshold(*saved)
    return reader.rows, len(leaves), timings


def csv_phases(key: SigningKey, path: Path, profile: bool) -> None:
    """Where the CSV path's CPU time goes; with ``profile``, the top functions by own time."""
    n, nleaves, timings = _phases(key, path, None, None)
    print(f"\n  CSV phases for {n:,} rows in {nleaves:,} leaves (in-process, no profiler):")
    for name, secs in timings.items():
        rate = f"{n / secs:>10,.0f} rows/s  {secs / n * 1e6:6.1f} us/row"
        print(f"    {name:<46} {secs:7.3f} s  {rate}")
    if not profile:
        return
    prof, sprof = cProfile.Profile(), cProfile.Profile()
    _phases(key, path, prof, sprof)
    for title, p in (("client (read, check, sign)", prof), ("server (decode, admit)", sprof)):
        buf = io.StringIO()
        pstats.Stats(p, stream=buf).sort_stats("tottime").print_stats(25)
        lines = buf.getvalue().splitlines()
        first = next(i for i, line in enumerate(lines) if "ncalls" in line)
        print(f"\n  cProfile, {title}: top 25 by own time")
        for line in lines[first : first + 26]:
            print("    " + line.replace(str(REPO) + "/", "").replace(sys.prefix + "/", ""))


# -- (c) paced single writes -----------------------------------------------------------


async def bench_latency(
    spec: RegistrarSpec, key: SigningKey, rate: int, seconds: float, tag: str
) -> tuple[float, float, float, int]:
    """(p50 ms, p99 ms, achieved writes/s, errors) for open-loop single writes."""
    ts = now()
    n = int(rate * seconds)
    leaves = []
    for i in range(n):
        record = Record((Value.make(1, "URL", f"https://t.example/l/{tag}/{i}", timestamp=ts),))
        leaves.append(sign(Mint(TRAFFIC, (MintItem(f"{tag}-{i}", 0, record),), ts), key))
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=4000)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        loop = asyncio.get_running_loop()

        async def one(leaf: bytes, due: float) -> None:
            nonlocal errors
            try:
                status, _ = await post_ops(session, spec.url, [leaf])
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            if status != 200:
                errors += 1
                return
            latencies.append(loop.time() - due)

        tasks = []
        start = loop.time() + 0.05
        for i, leaf in enumerate(leaves):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(leaf, due)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        took = loop.time() - start
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return p50, p99, len(latencies) / took, errors


# -- the run ----------------------------------------------------------------------------


def start(base: Path, name: str, key: SigningKey, delay_ms: int) -> RegistrarProcess:
    spec = make_registrar(base / name, TRAFFIC, ORIGIN, admin=key, max_delay_ms=delay_ms)
    return RegistrarProcess(spec).start()


def run(args: argparse.Namespace) -> None:
    quick = args.quick
    range_count = 100_000 if quick else 1_000_000
    csv_rows = 10_000 if quick else 100_000
    seconds = 2.0 if quick else 5.0
    repeat = max(3, args.repeat)
    base = Path(tempfile.mkdtemp(prefix="registrar-bench-", dir=args.dir))
    print(
        f"registrar bench: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"logs in {base}, batching {args.max_delay_ms} ms / 1,000 ops, repeat {repeat}"
    )
    key = new_key("traffic", base)
    try:
        with start(base, "reg", key, args.max_delay_ms) as proc:
            spec = proc.spec
            rates = [asyncio.run(bench_range(spec, key, range_count, r)) for r in range(repeat)]
            print(summary(f"(a) range of {range_count:,}, POST to receipt", rates, "ids/s"))
            met = "met" if min(rates) >= RANGE_TARGET else "MISSED"
            print(f"    target >= {RANGE_TARGET:,} ids/s: {met}")

            rows = []
            for r in range(repeat):
                path = base / f"assets-{r}.csv"
                write_csv(path, csv_rows, f"R{r}")
                rows.append(bench_csv(spec, key, path))
            print(summary(f"(b) CSV of {csv_rows:,} rows via 'id mint --csv'", rows, "rows/s"))
            met = "met" if min(rows) >= CSV_TARGET else "MISSED"
            print(f"    target >= {CSV_TARGET:,} rows/s: {met}")
            if args.profile or min(rows) < CSV_TARGET:
                csv_phases(key, base / "assets-0.csv", profile=args.profile)
            proc.stop()

        for delay in dict.fromkeys([args.max_delay_ms, args.fast_delay_ms]):
            with start(base, f"lat-{delay}", key, delay) as proc:
                res = [
                    asyncio.run(bench_latency(proc.spec, key, args.rate, seconds, f"L{delay}-{r}"))
                    for r in range(repeat)
                ]
                proc.stop()
            label = f"(c) {args.rate:,}/s single writes, batch delay {delay} ms"
            print(summary(label + ": p50", [r[0] for r in res], "ms", "{:,.1f}"))
            print(summary(label + ": p99", [r[1] for r in res], "ms", "{:,.1f}"))
            print(summary("    achieved rate", [r[2] for r in res], "writes/s"))
            errs = sum(r[3] for r in res)
            if errs:
                print(f"    {errs} writes failed")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


# -- restart time ------------------------------------------------------------------------

RESTART_GOAL_S = 3.0
IDS_PER_LEAF = 400
RANGE_SIZE = 1_000_000


def explicit_leaves(key: SigningKey, count: int, ts: int) -> Iterator[bytes]:
    """Mint leaves of IDS_PER_LEAF identifiers, packed as ``encode_body`` packs them (the
    canonical form the registrar checks), without building a Record per identifier."""
    packer = msgpack.Packer(use_bin_type=True)
    pack = packer.pack
    head = b"\x94" + pack("mint") + pack(str(TRAFFIC))
    for first in range(0, count, IDS_PER_LEAF):
        items = []
        for n in range(first, min(first + IDS_PER_LEAF, count)):
            suffix = f"K6-{n}" if n % 2 else mint_suffix("C", n // 2, 9)
            value = [[1, "URL", f"https://assets.example/{n}", DEFAULT_TTL, ts]]
            items.append(b"\x93" + pack(suffix) + b"\x00" + pack(value))
        body = head + packer.pack_array_header(len(items)) + b"".join(items) + pack(ts)
        yield sign_body(body, key)


def range_leaves(key: SigningKey, count: int, ts: int) -> Iterator[bytes]:
    template = Record((Value.make(1, "URL", "https://t.example/r/{suffix}", timestamp=ts),))
    for start in range(0, count, RANGE_SIZE):
        n = min(RANGE_SIZE, count - start)
        yield sign(MintRange(TRAFFIC, "R", start, n, 9, template, ts), key)


def build_log(spec: RegistrarSpec, key: SigningKey, kind: str, count: int) -> int:
    """Write ``count`` identifiers of ``kind`` into the registrar's (new) log; its leaves."""
    ts = now()
    make = explicit_leaves if kind == "explicit" else range_leaves
    leaves = 0
    with Log.create(spec.log_dir, spec.log_key, spec.origin) as log:
        batch: list[bytes] = []
        for leaf in make(key, count, ts):
            if not leaves:
                SignedOperation.decode(leaf)  # the registrar will accept what we pack
            batch.append(leaf)
            leaves += 1
            if len(batch) == 256:
                log.append(batch)
                batch = []
        if batch:
            log.append(batch)
    return leaves


def url_record(url: str, ts: int) -> Record:
    return Record((Value.make(1, "URL", url, timestamp=ts),))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_start(proc: RegistrarProcess, timeout: float) -> tuple[float, float, str]:
    """(seconds from spawn to /healthz 200, RSS MB once ready, what the start logged)."""
    before = len(proc.output())
    t0 = time.perf_counter()
    proc.spawn()
    proc.wait_ready(timeout=timeout)
    took = time.perf_counter() - t0
    rss = rss_mb(proc.pid)
    lines = [
        line.split("cityid.registrar ", 1)[1]
        for line in proc.output()[before:].splitlines()
        if "replayed" in line and "cityid.registrar " in line
    ]
    return took, rss, lines[-1] if lines else "?"


def timed_stop(proc: RegistrarProcess, timeout: float) -> float:
    t0 = time.perf_counter()
    code = proc.stop(timeout=timeout)
    if code != 0:
        raise SystemExit(f"registrar exited with {code}:\n{proc.output()[-3000:]}")
    return time.perf_counter() - t0


async def idle_lag(seconds: float = 3.0) -> tuple[float, float]:
    """(max, p99 ms) of the 1 ms timer with nothing else running: the machine's own noise,
    to read the stall figures against."""
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)
    lags.sort()
    return lags[-1] * 1000, lags[int(len(lags) * 0.99)] * 1000


async def snapshot_stall(reg: Registrar) -> tuple[float, float, float]:
    """(seconds, max and p99 event-loop lag in ms) of ``reg.write_snapshot()`` while a
    1 ms timer ticks on the same loop."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    await reg.write_snapshot()
    took = time.perf_counter() - t0
    stop.set()
    await ticker
    lags.sort()
    return took, lags[-1] * 1000, lags[int(len(lags) * 0.99)] * 1000


async def periodic_stall(spec: RegistrarSpec, key: SigningKey, new_ids: int, rep: int) -> Any:
    """Load the snapshot, admit ``new_ids`` identifiers, then snapshot: the steady state."""
    cfg = spec.config()
    cfg.snapshot_every = 0  # only the one we time
    reg = Registrar.open(cfg)
    await reg.start()
    try:
        ts = now()
        leaves = []
        for first in range(0, new_ids, IDS_PER_LEAF):
            items = tuple(
                MintItem(f"P{rep}-{n}", 0, url_record(f"https://p.example/{n}", ts))
                for n in range(first, min(first + IDS_PER_LEAF, new_ids))
            )
            leaves.append(sign(Mint(TRAFFIC, items, ts), key))
        for i in range(0, len(leaves), 100):
            await reg.submit(leaves[i : i + 100], flush=True)
        return await snapshot_stall(reg)
    finally:
        await reg.aclose()


async def first_stall(spec: RegistrarSpec) -> Any:
    """A full replay (no snapshot), then the snapshot that folds the whole namespace."""
    shutil.rmtree(spec.directory / "snapshot", ignore_errors=True)
    cfg = spec.config()
    cfg.snapshot_every = 0
    reg = Registrar.open(cfg)
    try:
        return await snapshot_stall(reg)
    finally:
        await reg.aclose()


def run_restart(args: argparse.Namespace) -> None:
    sizes = args.sizes or ([100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000])
    repeat = max(3, args.repeat)
    base = Path(tempfile.mkdtemp(prefix="registrar-restart-", dir=args.dir))
    print(
        f"registrar restart bench: python {platform.python_version()}, {os.cpu_count()} "
        f"CPUs, logs in {base}, repeat {repeat}, sizes {', '.join(f'{n:,}' for n in sizes)}"
    )
    key = new_key("traffic", base)
    stop_timeout = args.start_timeout * 2
    gc.set_threshold(*GC_THRESHOLDS)  # the in-process registrars run as `serve` does
    try:
        spec = make_registrar(base / "empty", TRAFFIC, ORIGIN, admin=key)
        with RegistrarProcess(spec) as proc:
            took, rss, _ = timed_start(proc, args.start_timeout)
            timed_stop(proc, stop_timeout)
        print(f"empty registrar: start {took:.2f} s, RSS {rss:.0f} MB (the process's base)")
        for count in sizes:
            for kind in ("explicit", "range"):
                spec = make_registrar(base / f"{kind}-{count}", TRAFFIC, ORIGIN, admin=key)
                t0 = time.perf_counter()
                leaves = build_log(spec, key, kind, count)
                log_mb = sum(f.stat().st_size for f in spec.log_dir.rglob("*") if f.is_file())
                print(f"\n{count:,} {kind} ids: {leaves:,} leaves, log {log_mb / 1e6:,.0f} MB "
                      f"(written in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
                before: list[float] = []
                after: list[float] = []
                stops: list[float] = []
                rss: dict[str, float] = {}
                said: dict[str, str] = {}
                # A full replay of 10M explicit ids takes minutes: fewer rounds of it.
                full_rounds = args.before_repeat or (repeat if count < 5_000_000 else 1)
                with RegistrarProcess(spec) as proc:
                    for r in range(max(repeat, full_rounds)):
                        if r < full_rounds:
                            shutil.rmtree(spec.directory / "snapshot", ignore_errors=True)
                            took, rss["before"], said["before"] = timed_start(
                                proc, args.start_timeout
                            )
                            before.append(took)
                            stops.append(timed_stop(proc, stop_timeout))
                        if r < repeat:
                            took, rss["after"], said["after"] = timed_start(
                                proc, args.start_timeout
                            )
                            after.append(took)
                            timed_stop(proc, stop_timeout)
                snap = sorted((spec.directory / "snapshot").glob("namespace-*.snap"))
                snap_mb = snap[-1].stat().st_size / 1e6 if snap else float("nan")
                label = f"{count:,} {kind}"
                print(summary(f"  before (full replay), {label}", before, "s", "{:,.2f}"))
                print(f"    RSS {rss['before']:,.0f} MB; {said['before']}")
                name = "    stop after it (writes the first snapshot)"
                print(summary(name, stops, "s", "{:,.2f}"))
                name = f"  after (snapshot, {snap_mb:,.0f} MB), {label}"
                print(summary(name, after, "s", "{:,.2f}"))
                print(f"    RSS {rss['after']:,.0f} MB; {said['after']}")
                if count >= 10_000_000:
                    met = "met" if max(after) <= RESTART_GOAL_S else "MISSED"
                    print(f"    goal <= {RESTART_GOAL_S:g} s at 10M: {met}")
                if kind == "explicit":
                    new = min(250_000, count // 4)
                    res = [asyncio.run(periodic_stall(spec, key, new, r)) for r in range(repeat)]
                    name = f"  snapshot of {new:,} new ids on top: time"
                    print(summary(name, [r[0] for r in res], "s", "{:,.2f}"))
                    print(summary("    event-loop lag, max", [r[1] for r in res], "ms", "{:,.1f}"))
                    print(summary("    event-loop lag, p99", [r[2] for r in res], "ms", "{:,.1f}"))
                    worst, p99 = asyncio.run(idle_lag())
                    print(f"    the same timer idle (this machine's noise): max {worst:,.1f} ms, "
                          f"p99 {p99:,.1f} ms")  # fmt: skip
                    if count < 5_000_000 or args.first_stall:
                        took, worst, p99 = asyncio.run(first_stall(spec))
                        print(f"  first snapshot after a full replay: {took:,.2f} s, event-loop "
                              f"lag max {worst:,.1f} ms, p99 {p99:,.1f} ms")  # fmt: skip
                if not args.keep:
                    shutil.rmtree(spec.directory, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes, ~30 s")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (at least 3)")
    p.add_argument("--profile", action="store_true", help="cProfile the CSV path")
    p.add_argument("--rate", type=int, default=1000, help="paced writes per second for (c)")
    p.add_argument("--max-delay-ms", type=int, default=250, help="registrar batch delay")
    p.add_argument("--fast-delay-ms", type=int, default=10, help="second batch delay for (c)")
    p.add_argument("--dir", help="where to put the logs (default: system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the logs")
    p.add_argument("--restart", action="store_true", help="measure restart time instead")
    p.add_argument("--sizes", type=int, nargs="+", help="identifiers per log for --restart")
    p.add_argument(
        "--start-timeout", type=float, default=900.0, help="seconds a start may take (--restart)"
    )
    p.add_argument(
        "--before-repeat",
        type=int,
        help="full-replay rounds (--restart; default --repeat, 1 from 5M identifiers)",
    )
    p.add_argument(
        "--first-stall",
        action="store_true",
        help="--restart: time the first snapshot after a full replay from 5M ids too (minutes)",
    )
    args = p.parse_args()
    if args.restart:
        run_restart(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
