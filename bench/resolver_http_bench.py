"""Resolver HTTP throughput and latency against nginx, per core, over 1,000,000 identifiers.

    .venv/bin/python bench/resolver_http_bench.py [--ids 1000000] [--duration 10]
        [--rounds 3] [--workers 1,2] [--connections 64] [--compare-aiohttp]

Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install -y wrk nginx``). Everything
binds to 127.0.0.1 and runs on this machine:

1. a private Valkey, filled with ``--ids`` identifiers ``MA.156.1301.02/L-0000000``...
   through the store's write API (the pipelines sync uses), each with one URL;
2. nginx (its own config in a temp dir, one worker process) answering the same
   identifiers with 302s from a ``map`` of all of them: the yardstick;
3. ``cityid resolver serve`` with each ``--workers`` count, its cache sized for
   every identifier, warmed by walking all of them once per cached
   representation until fewer than 1% of requests miss (bounded in time);
4. ``--rounds`` rounds of: wrk (1 thread, ``--connections`` keep-alive
   connections, random identifiers from a Lua script) for ``--duration``
   seconds against nginx, then against each resolver for ``GET /{id}`` (302)
   and ``GET /api/handles/{id}`` (Handle JSON).

Prints per target the rate (min/median/max over rounds), the rate per serving
core, p50/p99 latency (medians), and each resolver's ratio to nginx per core.
wrk, Valkey and the servers share the machine's cores, which flatters nobody:
with 2 worker processes on a 2-core machine the resolver competes with wrk
itself, so its per-core figure there is a lower bound. Every load loop is
bounded in requests and time; every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402

from cityid.records import Record  # noqa: E402
from cityid.valkey import EmbeddedValkey, free_port  # noqa: E402
from resolver.store import IdChange, Store  # noqa: E402

PREFIX = "MA.156.1301.02"
ORIGIN = "bench.test/log"
TS = 1_700_000_000
WARM_LIMIT_S = 900.0  # per server, all representations

RANDOM_LUA = """
local prefix, n = "/", 1
local counter = 0
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args)
  prefix = args[1]; n = tonumber(args[2])
  math.randomseed(os.time() * 1000 + (tid or 0))
end
function request()
  return wrk.format("GET", string.format("%s%07d", prefix, math.random(0, n - 1)))
end
"""

WALK_LUA = """
local prefix, n, i = "/", 1, 0
function init(args) prefix = args[1]; n = tonumber(args[2]); i = tonumber(args[3]) end
function request()
  local p = string.format("%s%07d", prefix, i % n)
  i = i + 1
  return wrk.format("GET", p)
end
"""


def suffix(i: int) -> str:
    return f"L-{i:07d}"


def target_url(i: int) -> str:
    return f"https://assets.example/lamp/{suffix(i)}"


# -- setup ----------------------------------------------------------------------------------


async def populate(url: str, n: int) -> float:
    """Write ``n`` identifiers through the store's writer, 20,000 per pipeline."""
    store = await Store.connect(url)
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    t0 = time.perf_counter()
    for start in range(0, n, 20_000):
        changes = []
        for i in range(start, min(n, start + 20_000)):
            # The canonical encoding of a one-URL record, built directly: a million
            # Value.make calls would dominate the fill time (checked below).
            data = msgpack.packb([[1, "URL", target_url(i), 86400, TS]], use_bin_type=True)
            changes.append(IdChange(PREFIX, suffix(i), 1, False, ORIGIN, i, data))
        await writer.apply(changes)
    took = time.perf_counter() - t0
    assert Record.decode(changes[-1].record or b"").urls() == [target_url(n - 1)]
    await store.close()
    return took


def nginx_conf(tmp: Path, port: int, n: int) -> Path:
    with open(tmp / "ids.map", "w") as f:
        for i in range(n):
            f.write(f"/{PREFIX}/{suffix(i)} {target_url(i)};\n")
    for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / d).mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    map_hash_max_size {max(1024, 2 * n)};
    map_hash_bucket_size 128;
    map $uri $target {{
        default "";
        include {tmp}/ids.map;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            if ($target = "") {{ return 404; }}
            return 302 $target;
        }}
    }}
}}
""")
    return conf


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def counters(base: str) -> dict[str, int]:
    text = get(f"{base}/metrics")
    return {k: int(v) for k, v in re.findall(r"^(cityid_resolver_\w+_total) (\d+)$", text, re.M)}


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, in MiB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                pids += [int(c) for c in (task / "children").read_text().split()]
    return total / 1024


# -- load -------------------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    bad: int  # non-2xx/3xx answers and socket errors


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        return float("nan")
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(url: str, script: Path, args: list[str], duration: float, connections: int) -> Run:
    secs = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency", "-s", str(script),
           url, "--", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    text = out.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", text).group(1))  # type: ignore[union-attr]
    reqs = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    bad = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        bad += sum(int(x) for x in m.groups())
    return Run(rate, p50, p99, reqs, bad)


@dataclass
class Target:
    name: str
    base: str
    path: str  # the path prefix the Lua script appends 7 digits to
    cores: int
    runs: list[Run] = field(default_factory=list)
    nginx: list[float] = field(default_factory=list)  # nginx's rate in the same round


def warm(base: str, tmp: Path, n: int, connections: int) -> tuple[float, float]:
    """Walk every identifier for each representation until <1% of requests miss."""
    t0 = time.monotonic()
    walk = tmp / "walk.lua"
    for path in (f"/{PREFIX}/L-", f"/api/handles/{PREFIX}/L-"):
        offset = 0
        while time.monotonic() - t0 < WARM_LIMIT_S:
            before = counters(base)
            run = wrk(base, walk, [path, str(n), str(offset)], 10, connections)
            offset += run.requests
            after = counters(base)
            hits = (
                after["cityid_resolver_cache_hits_total"]
                - before["cityid_resolver_cache_hits_total"]
            )
            misses = (after["cityid_resolver_cache_misses_total"]
                      - before["cityid_resolver_cache_misses_total"])  # fmt: skip
            # A representation encoded for the first time is a hit on its slot
            # but work all the same: require one full walk before trusting it.
            if offset >= n and misses <= 0.01 * max(1, hits + misses):
                break
    after = counters(base)
    total = after["cityid_resolver_cache_hits_total"] + after["cityid_resolver_cache_misses_total"]
    return time.monotonic() - t0, after["cityid_resolver_cache_misses_total"] / max(1, total)


def spread(xs: list[float]) -> str:
    return f"{min(xs):9.0f} {statistics.median(xs):9.0f} {max(xs):9.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ids", type=int, default=1_000_000)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument(
        "--compare-aiohttp",
        action="store_true",
        help="also measure one worker with --no-fast-path (aiohttp answers everything)",
    )
    args = ap.parse_args()
    # Stop cleanly (the finally below ends every process started) on SIGTERM, and on
    # SIGINT even when started in the background, where the shell ignores it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"{tool} not found: apt-get install -y wrk nginx", file=sys.stderr)
            return 2
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    workers = [int(w) for w in args.workers.split(",")]
    n = args.ids
    print(f"machine: {os.cpu_count()} cores; {n:,} identifiers; wrk -t1 -c{args.connections} "
          f"-d{args.duration:g}s x {args.rounds} rounds")  # fmt: skip

    procs: list[subprocess.Popen[bytes]] = []
    with (
        tempfile.TemporaryDirectory(prefix="cityid-http-bench-") as tmpdir,
        EmbeddedValkey() as valkey,
        contextlib.ExitStack() as files,
    ):
        tmp = Path(tmpdir)
        (tmp / "random.lua").write_text(RANDOM_LUA)
        (tmp / "walk.lua").write_text(WALK_LUA)
        took = asyncio.run(populate(valkey.url, n))
        print(f"populated {n:,} identifiers through the store writer in {took:.1f} s "
              f"({n / took:,.0f}/s)")  # fmt: skip
        try:
            port = free_port()
            t0 = time.monotonic()
            conf = nginx_conf(tmp, port, n)
            procs.append(subprocess.Popen(
                [nginx_bin, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=files.enter_context((tmp / "nginx.out").open("wb")),
            ))  # fmt: skip
            nginx_base = f"http://127.0.0.1:{port}"
            wait_http(nginx_base + "/", 120)
            print(f"nginx: 1 worker, map of {n:,} identifiers, up in {time.monotonic() - t0:.1f} s")
            nginx = Target("nginx 302", nginx_base, f"/{PREFIX}/L-", 1)
            targets = [nginx]
            # One resolver at a time (a million cached answers per worker take GBs),
            # each measured in rounds alternating with nginx, so every ratio compares
            # runs made a few seconds apart.
            configs = [(w, True) for w in workers]
            if args.compare_aiohttp:
                configs.append((1, False))
            for w, fast in configs:
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                label = f"w={w}" if fast else f"w={w} aiohttp only"
                log = files.enter_context((tmp / f"resolver-{w}-{fast}.log").open("wb"))
                proc = subprocess.Popen(
                    [sys.executable, "-m", "cityid.cli", "resolver", "serve", "--redis",
                     valkey.url, "--listen", f"127.0.0.1:{port}", "--workers", str(w),
                     "--cache-size", str(int(n * 1.1) + 1000),
                     *([] if fast else ["--no-fast-path"])],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                procs.append(proc)
                wait_http(base + "/healthz", 60)
                secs, miss = warm(base, tmp, n, args.connections)
                print(f"resolver {label}: warmed in {secs:.0f} s (misses {miss:.1%} of all "
                      f"requests so far), RSS {rss_mb(proc.pid):,.0f} MiB")  # fmt: skip
                mine = [
                    Target(f"resolver {label} GET /id", base, f"/{PREFIX}/L-", w),
                    Target(f"resolver {label} /api/handles", base, f"/api/handles/{PREFIX}/L-", w),
                ]
                for r in range(args.rounds):
                    for t in (nginx, *mine):
                        run = wrk(t.base, tmp / "random.lua", [t.path, str(n)], args.duration,
                                  args.connections)  # fmt: skip
                        if run.bad:
                            print(f"  {t.name}: {run.bad} bad answers or socket errors!")
                        t.runs.append(run)
                        if t is not nginx:
                            t.nginx.append(nginx.runs[-1].rate)
                    print(f"  round {r + 1} (load {os.getloadavg()[0]:.1f}): " + ", ".join(
                        f"{t.name} {t.runs[-1].rate:,.0f}/s" for t in (nginx, *mine)))  # fmt: skip
                c = counters(base)
                hit = c["cityid_resolver_cache_hits_total"]
                miss_n = c["cityid_resolver_cache_misses_total"]
                print(f"  cache hit ratio since start {hit / max(1, hit + miss_n):.2%}")
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                proc.wait(60)
                print(
                    f"  stopped (SIGTERM) in {time.monotonic() - t0:.1f} s, exit {proc.returncode}"
                )
                targets += mine
        finally:
            for p in reversed(procs):
                if p.poll() is not None:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGQUIT if p is procs[0] else signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    ng_med = statistics.median(r.rate for r in nginx.runs)
    print()
    print(f"{'target':<40} {'req/s min':>9} {'median':>9} {'max':>9} {'per core':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'vs nginx/core (min/med/max)':>28}")  # fmt: skip
    for t in targets:
        rates = [r.rate for r in t.runs]
        per_core = [x / t.cores for x in rates]
        pair = t.nginx if t is not nginx else rates
        ratio = [pc / nr for pc, nr in zip(per_core, pair, strict=True)]
        print(f"{t.name:<40} {spread(rates)} {statistics.median(per_core):9.0f} "
              f"{statistics.median(r.p50_ms for r in t.runs):7.2f} "
              f"{statistics.median(r.p99_ms for r in t.runs):7.2f} "
              f"{min(ratio):8.0%} {statistics.median(ratio):8.0%} {max(ratio):8.0%}")  # fmt: skip
    best = max(statistics.median(x.rate for x in t.runs) / t.cores for t in targets[1:])
    print(f"\nbest resolver rate per core: {best / ng_med:.0%} of nginx's (goal: 40%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
