"""A soak of ``cityid up``: mixed load for half an hour, and what every process holds meanwhile.

    .venv/bin/python bench/soak.py [--minutes 30] [--lookups 200] [--csv-rows 200000]
        [--csv-every 300] [--mint-every 0.1] [--assets 10000]

Outside CI (it takes its full length); everything binds to 127.0.0.1:

* ``cityid up`` on a fresh data directory (free ports, ``--assets`` demo assets);
* lookups of random minted identifiers, ``--lookups`` a second over HTTP and a
  twentieth as many over DNS (half the response-rate limit), each checked (a 302 to
  the right place, TXT records);
* one mint every ``--mint-every`` seconds through the registrar's API, and the
  time from its acknowledgement until the resolver answers it (*freshness*);
* a CSV of ``--csv-rows`` rows every ``--csv-every`` seconds (``cityid id mint
  --csv``), its first and last identifiers then checked;
* every minute, for every process of ``cityid up`` (itself, its Valkey, sync, the
  fronts): resident memory and open file descriptors, one line each.

At the end: errors by kind, freshness p50/p99/max, and each process's memory and
descriptors at the first and the last minute. Every loop is bounded by the
duration; ``cityid up`` is stopped with SIGINT, then killed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import csv
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import dns.asyncquery  # noqa: E402
import dns.message  # noqa: E402

from bench.procstat import descendants, rss_kib  # noqa: E402
from bench.upctl import CLI, start_up, stop_up, write_config  # noqa: E402
from cityid.identifiers import Identifier, Prefix, parse_identifier  # noqa: E402
from cityid.keys import SigningKey  # noqa: E402
from cityid.ops import Mint, MintItem  # noqa: E402
from cityid.records import Record, Value  # noqa: E402
from registrar.client import RegistrarClient  # noqa: E402

DEPT = Prefix.parse("MA.156.1301.03")


def describe(pid: int) -> tuple[str, int, int] | None:
    """(command, resident KiB, open descriptors) of ``pid``."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = rss_kib(pid)
    return None if rss is None else (cmd, rss, fds)


class Soak:
    def __init__(self, args: argparse.Namespace, data: Path, ports: dict[str, int]) -> None:
        self.args = args
        self.data = data
        self.ports = ports
        self.base = f"http://127.0.0.1:{ports['http']}"
        self.registrar = f"http://127.0.0.1:{ports['city']}"
        self.errors: collections.Counter[str] = collections.Counter()
        self.fresh: list[float] = []
        self.known: list[str] = []
        self.samples: dict[int, list[tuple[float, str, int, int]]] = collections.defaultdict(list)
        self.counts: collections.Counter[str] = collections.Counter()

    async def lookups(self, until: float) -> None:
        rnd = random.Random(3)
        gap = 1.0 / self.args.lookups
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            n, nxt = 0, time.monotonic()
            while time.monotonic() < until:
                ident = rnd.choice(self.known)
                try:
                    async with session.get(f"{self.base}/{ident}", allow_redirects=False) as r:
                        await r.read()
                        if r.status != 302:
                            self.errors[f"http {r.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.errors[f"http {type(e).__name__}"] += 1
                self.counts["http lookups"] += 1
                if n % 20 == 0:
                    await self.dns_lookup(parse_identifier(ident))
                n += 1
                nxt = max(nxt + gap, time.monotonic())  # late: no catch-up burst
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def dns_lookup(self, ident: Identifier) -> None:
        q = dns.message.make_query(ident.dns_name("cityid.test"), "TXT")
        try:
            a = await dns.asyncquery.udp(q, "127.0.0.1", port=self.ports["dns"], timeout=5)
            if not a.answer:
                self.errors[f"dns rcode {a.rcode()}"] += 1
        except (dns.exception.DNSException, OSError) as e:
            self.errors[f"dns {type(e).__name__}"] += 1
        self.counts["dns lookups"] += 1

    async def mints(self, until: float) -> None:
        """A mint every ``--mint-every`` s, each followed until it answers (at most 100 open)."""
        key = SigningKey.read(self.data / "keys" / "dept-03.key")
        open_ = asyncio.Semaphore(100)
        async with RegistrarClient(self.registrar) as client, aiohttp.ClientSession() as http:

            async def one(n: int) -> None:
                suffix = f"SOAK-{n}"
                rec = Record.of([Value.make(1, "URL", f"https://soak.example/{suffix}")])
                op = Mint(DEPT, (MintItem(suffix, 0, rec),), int(time.time()))
                try:
                    await client.submit_ops([op], key)
                    acked = time.monotonic()
                    ident = f"{DEPT}/{suffix}"
                    self.fresh.append(await self.until_resolves(http, ident, acked))
                    self.known.append(ident)
                except Exception as e:
                    self.errors[f"mint {type(e).__name__}"] += 1
                finally:
                    open_.release()
                self.counts["mints"] += 1

            tasks: set[asyncio.Task[None]] = set()
            n, nxt = 0, time.monotonic()
            while time.monotonic() < until:
                await open_.acquire()
                t = asyncio.create_task(one(n))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                n += 1
                nxt += self.args.mint_every
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            await asyncio.gather(*tasks)

    async def until_resolves(self, http: aiohttp.ClientSession, ident: str, since: float) -> float:
        while time.monotonic() - since < 60:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.base}/{ident}", allow_redirects=False) as r:
                    if r.status == 302:
                        return time.monotonic() - since
            await asyncio.sleep(0.01)
        self.errors["not fresh within 60 s"] += 1
        return 60.0

    async def csvs(self, until: float, tmp: Path) -> None:
        n = 0
        while time.monotonic() + 1 < until:
            await asyncio.sleep(min(self.args.csv_every, max(0.0, until - time.monotonic())))
            if time.monotonic() >= until:
                break
            path = tmp / f"soak-{n}.csv"
            with path.open("w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["suffix", "url"])
                w.writerows([f"BULK{n}-{i}", f"https://bulk.example/{n}/{i}"]
                            for i in range(self.args.csv_rows))  # fmt: skip
            r = await asyncio.to_thread(
                subprocess.run,
                [*CLI, "id", "mint", str(DEPT), "--csv", str(path), "--key",
                 str(self.data / "keys" / "dept-03.key"), "--registrar", self.registrar],
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            self.counts["csv"] += 1
            if r.returncode != 0:
                self.errors["csv refused"] += 1
            else:
                self.known += [f"{DEPT}/BULK{n}-0", f"{DEPT}/BULK{n}-{self.args.csv_rows - 1}"]
            path.unlink()
            n += 1

    async def monitor(self, until: float, pid: int) -> None:
        t0 = time.monotonic()
        while time.monotonic() < until:
            now = time.monotonic() - t0
            lines = []
            for p in descendants(pid):
                d = describe(p)
                if d is not None:
                    self.samples[p].append((now, *d))
                    lines.append(f"    {p:>7} {d[1] / 1024:8.1f} MiB {d[2]:5d} fds  {d[0]}")
            err = sum(self.errors.values())
            print(f"[{now / 60:5.1f} min] {dict(self.counts)}, {err} errors, load "
                  f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
            print("\n".join(lines), flush=True)
            await asyncio.sleep(min(60.0, max(0.0, until - time.monotonic())))


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cityid-soak-") as tmpdir:
        tmp = Path(tmpdir)
        data = tmp / "data"
        ports = write_config(data, assets=args.assets)
        try:
            proc = start_up(data, tmp / "up.log")
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        try:
            soak = Soak(args, data, ports)
            per = -(-args.assets // 7)
            soak.known = [f"MA.156.1301.0{d}/{s}" for d in range(1, 8)
                          for s in _minted(min(per, 50))]  # fmt: skip
            until = time.monotonic() + args.minutes * 60
            print(f"soak: {args.minutes} min on {os.cpu_count()} cores; cityid up pid {proc.pid}",
                  flush=True)  # fmt: skip
            await asyncio.gather(soak.lookups(until), soak.mints(until), soak.csvs(until, tmp),
                                 soak.monitor(until, proc.pid))  # fmt: skip
        finally:
            stop_up(proc)
            said = (tmp / "up.log").read_text(errors="replace").splitlines()
            warnings = [line for line in said if "WARNING" in line or "ERROR" in line]
    report(soak)
    print(f"cityid up said {len(warnings)} warning or error lines; the last few:")
    print("\n".join(warnings[-10:]))
    return 0


def _minted(n: int) -> list[str]:
    from cityid.identifiers import mint_suffix

    return [mint_suffix("A", i, 7) for i in range(n)]


def report(soak: Soak) -> None:
    print("\nerrors:", dict(soak.errors) or "none")
    print("done:", dict(soak.counts))
    if soak.fresh:
        f = sorted(soak.fresh)
        print(f"freshness (mint acknowledged -> answered), s: p50 {statistics.median(f):.3f}, "
              f"p99 {f[min(len(f) - 1, int(len(f) * 0.99))]:.3f}, max {f[-1]:.3f} "
              f"over {len(f)} mints")  # fmt: skip
    print("per process, first -> last minute (resident MiB, open fds):")
    for pid, rows in soak.samples.items():
        (_, cmd, rss0, fd0), (_, _, rss1, fd1) = rows[0], rows[-1]
        print(f"  {pid:>7} {rss0 / 1024:8.1f} -> {rss1 / 1024:8.1f} MiB  {fd0:4d} -> {fd1:4d} fds"
              f"  {cmd}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--lookups", type=float, default=200.0, help="HTTP lookups a second")
    ap.add_argument("--mint-every", type=float, default=0.1, help="seconds between mints")
    ap.add_argument("--csv-rows", type=int, default=200_000)
    ap.add_argument("--csv-every", type=float, default=300.0, help="seconds between CSVs")
    ap.add_argument("--assets", type=int, default=10_000)
    return asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
