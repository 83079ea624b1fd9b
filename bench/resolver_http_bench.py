"""The HTTP front against nginx, per core, counting Valkey's CPU: hits and misses, 302 and JSON.

    .venv/bin/python bench/resolver_http_bench.py [--ids 1000000,10000000] [--hit-ids 1000000]
        [--workload hit-302,hit-api,miss-302,miss-api] [--duration 10] [--rounds 3]
        [--workers 1] [--connections 64] [--baseline DIR]

Needs ``wrk`` and ``nginx`` (Debian: ``apt-get install -y -o DPkg::Lock::Timeout=600
nginx-light wrk``). Everything binds to 127.0.0.1 and runs on this machine:

1. for each tree (this one, and ``--baseline DIR``, another checkout of cityid such as
   ``git archive HEAD | tar -x -C DIR``), a private Valkey filled with the largest
   ``--ids`` count of identifiers ``MA.156.1301.02/L-0000000``... through that tree's
   own writer (layouts differ between versions), each with one URL; its
   ``used_memory`` and resident memory (VmRSS) per identifier;
2. nginx (its own config in a temp dir, one worker process) answering the same
   identifiers with 302s from a ``map`` of all of them: the yardstick, for every
   workload (it does one lookup per request, as cityid does);
3. for each tree, ``cityid resolver serve`` with ``--workers`` processes, twice:
   for the hit workloads with a cache sized for ``--hit-ids`` identifiers and every
   worker warmed by walking them all once per representation; for the miss workloads
   with the default cache (100,000 identifiers per worker);
4. ``--rounds`` rounds, interleaved: in each round, for each workload and each
   ``--ids`` count it applies to, wrk (1 thread, ``--connections`` keep-alive
   connections, random identifiers from a Lua script) for ``--duration`` seconds
   against nginx, then against each tree:

   * ``hit-302`` / ``hit-api``: ``GET /{id}`` (302) / ``GET /api/handles/{id}``
     (Handle JSON), random among the first ``--hit-ids`` identifiers, warm cache;
   * ``miss-302`` / ``miss-api``: the same, random among all ``--ids`` identifiers
     (each count in turn), default cache: nearly every request is a store lookup.

Rates per core come from the CPU time (``/proc``) the servers used during each run;
cityid's includes its Valkey's (nginx needs none). wrk runs on a core of the same
machine, so a run it limits still compares the servers' cost per request. Every
round prints its load average, since other work on the machine shows there and
makes the figures noisy. Prints per workload and target the rate, the rate per
core (min/median/max), p50/p99 latency, the share of cache hits, and the rate per
core as a share of nginx's in the same round; then the resident memory of each
worker, with the hit cache full and with the default cache. Every load loop is
bounded in requests and time; every process started is stopped by its pid.
"""

from __future__ import annotations

import argparse
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
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


from bench.procstat import cpu_seconds, descendants, rss_mb, valkey_memory, workers_of  # noqa: E402
from cityid.valkey import EmbeddedValkey, free_port  # noqa: E402

PREFIX = "MA.156.1301.02"
WORKLOADS = ("hit-302", "hit-api", "miss-302", "miss-api")
PATHS = {"302": f"/{PREFIX}/L-", "api": f"/api/handles/{PREFIX}/L-"}
WARM_LIMIT_S = 1800.0  # per server, every representation
INSTALL = "apt-get install -y -o DPkg::Lock::Timeout=600 nginx-light wrk"

# Run in a tree's own interpreter path (this one's or the baseline's): each fills Valkey
# through its own writer, in its own layout. argv: count; the URL from the environment.
POPULATE = r"""
import asyncio, os, sys, time
import msgpack
from resolver.store import Store
import resolver.store as st

ORIGIN, TS, PREFIX = "bench.test/log", 1_700_000_000, "MA.156.1301.02"

def record(i):
    # The canonical encoding of a one-URL record, built directly (checked by the bench).
    return msgpack.packb([[1, "URL", f"https://assets.example/lamp/L-{i:07d}", 86400, TS]],
                         use_bin_type=True)

async def main(url, n):
    store = await Store.connect(url)
    writer = store.writer(resize_grace=0)
    await writer.prepare()
    if hasattr(writer, "set_ready"):
        await writer.set_ready()  # as sync says once caught up: a miss is final
    t0 = time.perf_counter()
    step = 20_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        if hasattr(st, "MintChange"):  # one change per 20,000 (a bulk mint's leaf)
            items = [(f"L-{i:07d}", 1, record(i)) for i in range(start, stop)]
            await writer.apply([st.MintChange(PREFIX, ORIGIN, start, items)])
        else:
            await writer.apply([st.IdChange(PREFIX, f"L-{i:07d}", 1, False, ORIGIN, i, record(i))
                                for i in range(start, stop)])
    print(f"{time.perf_counter() - t0:.1f}")
    await store.close()

asyncio.run(main(os.environ["REDIS_URL"], int(sys.argv[1])))
"""

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


# -- setup ------------------------------------------------------------------------------------


def populate(tree: Path, url: str, n: int) -> float:
    """Fill the Valkey at ``url`` with ``n`` identifiers through ``tree``'s writer."""
    out = subprocess.run(
        [sys.executable, "-c", POPULATE, str(n)], cwd=tree, capture_output=True, text=True,
        env={**os.environ, "REDIS_URL": url, "PYTHONPATH": str(tree)}, timeout=4 * 3600,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"populate in {tree} failed: {out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def nginx_conf(tmp: Path, port: int, n: int) -> Path:
    with open(tmp / "ids.map", "w") as f:
        for start in range(0, n, 100_000):
            f.writelines(f"/{PREFIX}/{suffix(i)} {target_url(i)};\n"
                         for i in range(start, min(n, start + 100_000)))  # fmt: skip
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


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode}) before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def counters(base: str) -> dict[str, int]:
    text = get(f"{base}/metrics")
    return {k: int(v) for k, v in re.findall(r"^cityid_resolver_(\w+)_total (\d+)$", text, re.M)}


# -- load -------------------------------------------------------------------------------------


@dataclass
class Run:
    rate: float
    per_core: float  # requests per CPU second of the server (and its Valkey)
    p50_ms: float
    p99_ms: float
    hits: float  # share of cache hits (cityid), NaN for nginx
    bad: int  # answers other than 2xx/3xx, and socket errors


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        return float("nan")
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(url: str, script: Path, args: list[str], duration: float, connections: int,
        pids: list[int]) -> tuple[Run, int]:  # fmt: skip
    secs = max(1, round(duration))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{secs}s", "--latency", "-s", str(script),
           url, "--", *args]  # fmt: skip
    c0 = cpu_seconds(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, check=True)
    cpu = cpu_seconds(pids) - c0
    text = out.stdout

    def find(pattern: str) -> str:
        m = re.search(pattern, text)
        if m is None:
            raise RuntimeError(f"wrk said: {text[-1000:]}")
        return m.group(1)

    reqs = int(find(r"(\d+) requests in"))
    bad = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        bad += sum(int(x) for x in m.groups())
    rate = float(find(r"Requests/sec:\s+([\d.]+)"))
    p50, p99 = _ms(find(r"\s50%\s+(\S+)")), _ms(find(r"\s99%\s+(\S+)"))
    run = Run(rate, reqs / max(cpu, 1e-9), p50, p99, float("nan"), bad)
    return run, reqs


@dataclass
class Server:
    """One ``resolver serve``: which tree, which cache, its address and the pids its CPU counts."""

    label: str
    proc: subprocess.Popen[bytes]
    base: str
    pids: list[int]  # supervisor, workers and the Valkey they read
    workers: list[int]


@dataclass
class Target:
    name: str
    runs: dict[str, list[Run]] = field(default_factory=dict)
    ratio: dict[str, list[float]] = field(default_factory=dict)  # per core, vs nginx's


def start_server(tree: Path, url: str, valkey_pid: int, workers: int, cache: int | None,
                 log: object, label: str) -> Server:  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cityid.cli", "resolver", "serve",
           "--listen", f"127.0.0.1:{port}", "--workers", str(workers)]  # fmt: skip
    if cache is not None:
        cmd += ["--cache-size", str(cache), "--cache-ttl", "86400"]
    # The URL carries Valkey's password: in the environment, not on a command line that
    # every local user can read.
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT,  # type: ignore[arg-type]
                            env=env)  # fmt: skip
    wait_http(base + "/healthz", 60, proc)
    deadline = time.monotonic() + 30
    while len(workers_of(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    return Server(label, proc, base, [*descendants(proc.pid), valkey_pid],
                  workers_of(proc.pid))  # fmt: skip


def warm(srv: Server, walk: Path, n: int, connections: int) -> tuple[float, float]:
    """Walk the first ``n`` identifiers once per representation (bounded in time)."""
    t0 = time.monotonic()
    for path in PATHS.values():
        offset = 0
        while offset < n and time.monotonic() - t0 < WARM_LIMIT_S:
            # Each wrk walks from where the last stopped; 10 s each, every worker reached
            # (SO_REUSEPORT spreads the connections).
            _, reqs = wrk(srv.base, walk, [path, str(n), str(offset)], 10, connections, [])
            offset += reqs
    c = counters(srv.base)
    return time.monotonic() - t0, c["cache_misses"] / max(1, c["cache_hits"] + c["cache_misses"])


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spread(xs: list[float], fmt: str = "{:,.0f}") -> str:
    return "/".join(fmt.format(x) for x in (min(xs), statistics.median(xs), max(xs)))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--ids",
        default="1000000,10000000",
        help="identifier counts the miss workloads draw from, comma-separated",
    )
    ap.add_argument(
        "--hit-ids",
        type=int,
        default=1_000_000,
        help="identifiers the hit workloads draw from, all cached",
    )
    ap.add_argument("--workload", default=",".join(WORKLOADS))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--baseline", type=Path, metavar="DIR",
                    help="another cityid tree, run side by side (git archive HEAD)")  # fmt: skip
    args = ap.parse_args()
    # Stop cleanly (the finally below ends every process started) on SIGTERM, and on
    # SIGINT even when started in the background, where the shell ignores it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workloads = [w for w in args.workload.split(",") if w]
    if not workloads or any(w not in WORKLOADS for w in workloads):
        print(f"--workload: some of {', '.join(WORKLOADS)}", file=sys.stderr)
        return 2
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"{tool} not found; on Debian: {INSTALL}", file=sys.stderr)
            return 2
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    counts = sorted({int(x) for x in args.ids.split(",") if x})
    hit_ids = args.hit_ids
    most = max([*counts, hit_ids])
    if most > 10_000_000:
        print("at most 10,000,000 identifiers (7-digit suffixes)", file=sys.stderr)
        return 2
    trees = [("this", REPO)]
    if args.baseline is not None:
        trees.insert(0, ("baseline", args.baseline.resolve()))
    # (workload, identifiers it draws from), in the order each round runs them.
    cases = [(w, hit_ids) for w in workloads if w.startswith("hit")]
    cases += [(w, n) for n in counts for w in workloads if w.startswith("miss")]
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; {most:,} identifiers; "
          f"wrk -t1 -c{args.connections} -d{args.duration:g}s x {args.rounds} rounds; "
          f"{args.workers} worker(s); trees: "
          + ", ".join(f"{label} ({tree})" for label, tree in trees))  # fmt: skip

    procs: list[subprocess.Popen[bytes]] = []
    targets: dict[str, Target] = {"nginx": Target("nginx")}
    memory: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cityid-http-bench-") as tmpdir, \
            contextlib.ExitStack() as stack:  # fmt: skip
        tmp = Path(tmpdir)
        (tmp / "random.lua").write_text(RANDOM_LUA)
        (tmp / "walk.lua").write_text(WALK_LUA)
        valkeys: dict[str, EmbeddedValkey] = {}
        for label, tree in trees:
            v = stack.enter_context(EmbeddedValkey())
            valkeys[label] = v
            took = populate(tree, v.url, most)
            assert v.proc is not None
            mem = valkey_memory(v.url, v.proc.pid, most)
            print(f"{label}: populated {most:,} identifiers through its writer in {took:.0f} s "
                  f"({most / took:,.0f}/s); Valkey {mem}")  # fmt: skip
            targets[label] = Target(label)
        try:
            port = free_port()
            t0 = time.monotonic()
            conf = nginx_conf(tmp, port, most)
            nginx = subprocess.Popen(
                [nginx_bin, "-c", str(conf), "-p", str(tmp), "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=stack.enter_context((tmp / "nginx.out").open("wb")),
            )
            procs.append(nginx)
            nginx_base = f"http://127.0.0.1:{port}"
            wait_http(nginx_base + "/", 1800, nginx)
            nginx_pids = descendants(nginx.pid)
            print(f"nginx: 1 worker, a map of {most:,} identifiers, up in "
                  f"{time.monotonic() - t0:.0f} s, RSS {rss_mb(nginx_pids):,.0f} MiB")  # fmt: skip
            # Two phases, so at most two resolvers per tree hold memory at once: the hit
            # servers (cache sized for hit_ids, warmed), then the miss servers (default cache).
            for phase in ("hit", "miss"):
                mine = [c for c in cases if c[0].startswith(phase)]
                if not mine:
                    continue
                servers: dict[str, Server] = {}
                for label, tree in trees:
                    log = stack.enter_context((tmp / f"{label}-{phase}.log").open("wb"))
                    cache = int(hit_ids * 1.1) + 1000 if phase == "hit" else None
                    v = valkeys[label]
                    assert v.proc is not None
                    srv = start_server(tree, v.url, v.proc.pid, args.workers, cache, log, label)
                    procs.append(srv.proc)
                    servers[label] = srv
                    if phase == "hit":
                        secs, miss = warm(srv, tmp / "walk.lua", hit_ids, args.connections)
                        print(f"{label}: warmed {hit_ids:,} identifiers in {secs:.0f} s "
                              f"(misses {miss:.1%} of requests so far)")  # fmt: skip
                for r in range(args.rounds):
                    for workload, n in mine:
                        key = f"{workload} {n:,}"
                        path = PATHS[workload.rpartition("-")[2]]
                        line = []
                        ng, _ = wrk(nginx_base, tmp / "random.lua", [PATHS["302"], str(n)],
                                    args.duration, args.connections, nginx_pids)  # fmt: skip
                        targets["nginx"].runs.setdefault(key, []).append(ng)
                        line.append(f"nginx {ng.per_core:,.0f}/core-s")
                        for label, srv in servers.items():
                            before = counters(srv.base)
                            run, _ = wrk(srv.base, tmp / "random.lua", [path, str(n)],
                                         args.duration, args.connections, srv.pids)  # fmt: skip
                            after = counters(srv.base)
                            hits = after["cache_hits"] - before["cache_hits"]
                            looked = after["cache_misses"] - before["cache_misses"]
                            run.hits = hits / max(1, hits + looked)
                            t = targets[label]
                            t.runs.setdefault(key, []).append(run)
                            t.ratio.setdefault(key, []).append(run.per_core / ng.per_core)
                            line.append(f"{label} {run.per_core:,.0f}/core-s "
                                        f"({run.per_core / ng.per_core:.0%}, {run.rate:,.0f}/s, "
                                        f"hits {run.hits:.0%})")  # fmt: skip
                            if run.bad:
                                line.append(f"{label}: {run.bad} bad answers or socket errors!")
                        print(f"  round {r + 1} {key} (load {os.getloadavg()[0]:.1f}): "
                              + "; ".join(line), flush=True)  # fmt: skip
                for label, srv in servers.items():
                    ws = workers_of(srv.proc.pid)
                    cached = re.search(r"^cityid_resolver_cache_entries (\d+)$",
                                       get(f"{srv.base}/metrics"), re.M)  # fmt: skip
                    memory.append(
                        f"{label}, {phase} cache ({cached.group(1) if cached else '?'} cached in "
                        f"the answering worker): RSS per worker "
                        + ", ".join(f"{rss_mb([w]):,.0f} MiB" for w in ws)
                    )
                    t0 = time.monotonic()
                    stop(srv.proc)
                    print(f"{label} ({phase}): stopped (SIGTERM) in {time.monotonic() - t0:.1f} s, "
                          f"exit {srv.proc.returncode}")  # fmt: skip
        finally:
            for p in reversed(procs):
                stop(p, signal.SIGQUIT if p is procs[0] else signal.SIGTERM)

    print()
    print(
        f"{'workload':<20} {'target':<10} {'req/s per core (min/med/max)':>30} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'hits':>5} {'vs nginx per core (min/med/max)':>32}"
    )
    for workload, n in cases:
        key = f"{workload} {n:,}"
        for t in targets.values():
            runs = t.runs.get(key)
            if not runs:
                continue
            ratio = spread(t.ratio[key], "{:.0%}") if key in t.ratio else ""
            hits = statistics.median(r.hits for r in runs)
            print(f"{key:<20} {t.name:<10} {spread([r.per_core for r in runs]):>30} "
                  f"{statistics.median(r.p50_ms for r in runs):7.2f} "
                  f"{statistics.median(r.p99_ms for r in runs):7.2f} "
                  f"{'' if hits != hits else f'{hits:.0%}':>5} {ratio:>32}")  # fmt: skip
    print()
    for m in memory:
        print(m)
    return 0


if __name__ == "__main__":
    sys.exit(main())
