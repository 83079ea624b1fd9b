"""Sync under bulk load, on a real ``cityid up``: apply rate, and what serving feels meanwhile.

    .venv/bin/python bench/sync_bench.py [--rows 2000000] [--range 10000000] [--rounds 1]
        [--probe-rate 200] [--idle 10]

Everything binds to 127.0.0.1 and runs on this machine:

1. ``cityid up`` on a fresh data directory (free ports, no demo assets), and 1,000
   identifiers minted and fetched once over HTTP and DNS: the *cached* set;
2. a prober asks for random cached identifiers, ``--probe-rate`` a second over HTTP
   (keep-alive) and a twentieth as many over DNS (UDP: half the response-rate limit),
   one at a time, and keeps every latency;
   for ``--idle`` seconds first (the idle p99), then through each bulk write;
3. a CSV of ``--rows`` rows minted through ``cityid id mint --csv`` (the registrar
   streams and seals it; each checkpoint is applied by sync as it is published),
   then one identifier minted right after it: the time from its acknowledgement
   until it resolves is what a user waits behind the CSV (goal: 15 s);
4. a range of ``--range`` identifiers (one leaf): the time until its last resolves;
5. ``cityid up`` stopped, its Valkey directory deleted, started again: the time until it is
   up (every log loaded again), and the identifiers rebuilt a second (start-up included;
   goal: 200,000/s).

The apply rate is identifiers over the seconds from the CSV's first checkpoint to
the moment its last identifier resolves (goal: 200,000/s). Serving p99 during the
apply against idle p99 is the other figure (goal: at most 2x). Every loop here is
bounded in count and time; ``cityid up`` is stopped with SIGINT, then killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import dns.asyncquery  # noqa: E402
import dns.message  # noqa: E402

from bench.upctl import CLI, start_up, stop_up, write_config  # noqa: E402
from cityid.identifiers import mint_suffix, parse_identifier  # noqa: E402

DEPT = "MA.156.1301.07"  # the CSV's department
WARM_DEPT = "MA.156.1301.02"


def mint(*args: str, key: Path, registrar: str) -> float:
    """Run ``cityid id mint``; the seconds it took (it returns once acknowledged)."""
    t0 = time.monotonic()
    r = subprocess.run([*CLI, "id", "mint", *args, "--key", str(key), "--registrar", registrar],
                       capture_output=True, text=True, timeout=3600)  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"mint {args[:2]} failed: {r.stderr.strip()[-500:]}")
    return time.monotonic() - t0


def write_csv(path: Path, rows: int, tag: str) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suffix", "url"])
        for i in range(rows):
            w.writerow([f"{tag}-{i}", f"https://bulk.example/{tag}/{i}"])


# -- the prober ----------------------------------------------------------------------------


@dataclass
class Probe:
    http: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    dns: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0


async def probe(
    base: str, dns_port: int, names: list[str], rate: float, until: asyncio.Event, p: Probe
) -> None:
    """Ask for cached names at ``rate`` a second over HTTP and over DNS until ``until``."""
    rnd = random.Random(5)
    gap = 1.0 / rate
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one_http() -> None:
            ident = rnd.choice(names)
            t0 = time.perf_counter()
            try:
                async with session.get(f"{base}/{ident}", allow_redirects=False) as r:
                    await r.read()
                    ok = r.status == 302
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            p.http.append((time.monotonic(), time.perf_counter() - t0))
            p.errors += not ok

        async def one_dns() -> None:
            name = parse_identifier(rnd.choice(names)).dns_name("cityid.test")
            t0 = time.perf_counter()
            try:
                q = dns.message.make_query(name, "TXT")
                a = await dns.asyncquery.udp(q, "127.0.0.1", port=dns_port, timeout=5)
                ok = bool(a.answer)
            except (dns.exception.DNSException, OSError):
                ok = False
            p.dns.append((time.monotonic(), time.perf_counter() - t0))
            p.errors += not ok

        # DNS at a twentieth of the rate: half the response-rate limit (20/s a client),
        # and a late prober does not catch up in a burst, which the limit would drop.
        nxt = time.monotonic()
        n = 0
        while not until.is_set() and n < 10_000_000:
            await (asyncio.gather(one_http(), one_dns()) if n % 20 == 0 else one_http())
            n += 1
            nxt = max(nxt + gap, time.monotonic())
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))


def p99(samples: list[tuple[float, float]], lo: float = 0.0, hi: float = float("inf")) -> float:
    xs = sorted(s for t, s in samples if lo <= t <= hi)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000 if xs else float("nan")


async def resolves(base: str, ident: str, *, timeout: float) -> float:
    """Seconds until ``ident`` answers 302 (polling every 20 ms), or inf."""
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - t0 < timeout:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/{ident}", allow_redirects=False) as r:
                    if r.status == 302:
                        return time.monotonic() - t0
            await asyncio.sleep(0.02)
    return float("inf")


# -- one round ------------------------------------------------------------------------------


@dataclass
class Round:
    rows: int
    csv_ack_s: float
    apply_s: float
    after_s: float
    range_s: float
    idle_http: float
    idle_dns: float
    busy_http: float
    busy_dns: float
    errors: int
    rebuild_s: float  # from a start without the Valkey directory until `cityid up` is up

    @property
    def rebuild_rate(self) -> float:
        return (self.rows + 1001) / self.rebuild_s  # the CSV, the warm set, the one after it

    @property
    def rate(self) -> float:
        return self.rows / self.apply_s


async def one_round(args: argparse.Namespace, tmp: Path, n: int) -> Round:
    data = tmp / f"data-{n}"
    ports = write_config(data)
    log = tmp / f"up-{n}.log"
    proc = start_up(data, log)
    try:
        base = f"http://127.0.0.1:{ports['http']}"
        city = f"http://127.0.0.1:{ports['city']}"
        keys = data / "keys"
        warm_csv = tmp / f"warm-{n}.csv"
        write_csv(warm_csv, 1000, "WARM")
        mint(WARM_DEPT, "--csv", str(warm_csv), key=keys / "dept-02.key", registrar=city)
        names = [f"{WARM_DEPT}/WARM-{i}" for i in range(1000)]
        assert await resolves(base, names[-1], timeout=60) < 60, "the warm set never resolved"
        p = Probe()
        until = asyncio.Event()
        # Fetch each once (the caches), then idle.
        async with aiohttp.ClientSession() as s:
            for ident in names:
                async with s.get(f"{base}/{ident}", allow_redirects=False) as r:
                    await r.read()
        prober = asyncio.create_task(probe(base, ports["dns"], names, args.probe_rate, until, p))
        await asyncio.sleep(args.idle)
        idle_end = time.monotonic()

        big = tmp / f"big-{n}.csv"
        write_csv(big, args.rows, f"K{n}")
        t_csv = time.monotonic()
        ack = await asyncio.to_thread(
            mint, DEPT, "--csv", str(big), key=keys / "dept-07.key", registrar=city
        )
        after = f"{WARM_DEPT}/AFTER-{n}"
        t_after = time.monotonic()
        await asyncio.to_thread(mint, after, "--url", "https://after.example/",
                                key=keys / "dept-02.key", registrar=city)  # fmt: skip
        await resolves(base, after, timeout=600)
        after_s = time.monotonic() - t_after  # from the mint command to an answer
        last = f"{DEPT}/K{n}-{args.rows - 1}"
        last_s = await resolves(base, last, timeout=3600)
        t_done = time.monotonic()
        # From the CSV's start: sync applies each checkpoint as the registrar seals it.
        apply_s = (t_done - t_csv) if last_s != float("inf") else float("inf")

        # A range: one leaf, however many identifiers.
        t_range = time.monotonic()
        await asyncio.to_thread(mint, DEPT, "--count", str(args.range), "--letters", "R",
                                "--template", "https://range.example/{suffix}",
                                key=keys / "dept-07.key", registrar=city)  # fmt: skip
        await resolves(base, f"{DEPT}/{mint_suffix('R', args.range - 1, 7)}", timeout=600)
        range_s = time.monotonic() - t_range  # from the mint command to an answer
        until.set()
        await prober
        # The cache lost: stop, delete the Valkey directory, start again. `cityid up` is up
        # once every log is loaded again, the whole namespace rebuilt from the logs.
        stop_up(proc)
        shutil.rmtree(data / "valkey")
        t_rebuild = time.monotonic()
        proc = start_up(data, log)
        rebuild_s = time.monotonic() - t_rebuild
        assert await resolves(base, last, timeout=60) < 60, "not rebuilt"
        return Round(
            rows=args.rows,
            csv_ack_s=ack,
            apply_s=apply_s,
            after_s=after_s,
            range_s=range_s,
            idle_http=p99(p.http, hi=idle_end),
            idle_dns=p99(p.dns, hi=idle_end),
            busy_http=p99(p.http, lo=t_csv, hi=t_done),
            busy_dns=p99(p.dns, lo=t_csv, hi=t_done),
            errors=p.errors,
            rebuild_s=rebuild_s,
        )
    finally:
        stop_up(proc)


def spread(xs: list[float], fmt: str = "{:,.0f}") -> str:
    return " / ".join(fmt.format(x) for x in (min(xs), statistics.median(xs), max(xs)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--range", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--probe-rate", type=float, default=200.0, help="probes a second, each")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle probing")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; CSV of "
          f"{args.rows:,} rows, range of {args.range:,}, {args.rounds} round(s)")  # fmt: skip
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="cityid-sync-bench-") as tmpdir:
        for n in range(args.rounds):
            r = asyncio.run(one_round(args, Path(tmpdir), n))
            rounds.append(r)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in vars(r).items()}))  # fmt: skip
            print(f"  round {n + 1}: applied {r.rows:,} ids at {r.rate:,.0f}/s "
                  f"(CSV acknowledged in {r.csv_ack_s:.1f} s); a mint right after it resolved "
                  f"in {r.after_s:.1f} s; a range of {args.range:,} in {r.range_s:.1f} s; "
                  f"p99 HTTP {r.idle_http:.1f} -> {r.busy_http:.1f} ms, DNS {r.idle_dns:.1f} -> "
                  f"{r.busy_dns:.1f} ms; {r.errors} probe errors; rebuilt from the logs in "
                  f"{r.rebuild_s:.1f} s ({r.rebuild_rate:,.0f} ids/s, start-up included); "
                  f"load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print()
    print(
        f"apply rate, ids/s (min / median / max): {spread([r.rate for r in rounds])}  "
        "(goal: 200,000)"
    )
    print(
        f"a mint right after the CSV, s: {spread([r.after_s for r in rounds], '{:.1f}')}  "
        "(goal: 15)"
    )
    print(
        f"rebuild from the logs, ids/s: {spread([r.rebuild_rate for r in rounds])}  (goal: 200,000)"
    )
    print(
        "serving p99 during apply / idle p99: HTTP "
        f"{spread([r.busy_http / r.idle_http for r in rounds], '{:.2f}')}, DNS "
        f"{spread([r.busy_dns / r.idle_dns for r in rounds], '{:.2f}')}  (goal: 2)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
