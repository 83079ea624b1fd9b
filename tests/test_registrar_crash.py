"""SIGKILL a registrar child process at random points, many writes in flight, again and again.

Each cycle starts ``python -m cityid.cli registrar serve DIR --listen 127.0.0.1:PORT``,
drives range mints, explicit mints and multi-leaf requests from concurrent
clients, and kills the process with SIGKILL after a random delay (in some
cycles while it is still starting and replaying its log). After every restart:

* every acknowledged operation is in the log, at its receipt's index, byte for byte;
* nothing is half-visible: every leaf is one the clients sent, decodes and
  replays; a request's leaves are all present, contiguous and in order, or
  all absent; what was published before the crash is still there unchanged;
* ``ledger.audit.verify_log`` passes, and the restarted registrar knows every
  acknowledged identifier.

Set ``CITYID_CRASH_SEED`` to replay a campaign's random choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from registrar_harness import (
    TRAFFIC,
    RegistrarProcess,
    RegistrarSpec,
    cli,
    make_registrar,
    new_key,
    post_ops,
    sign,
    version,
)

from cityid.authority import Namespace
from cityid.identifiers import Identifier, mint_suffix
from cityid.keys import SigningKey
from cityid.ops import Mint, MintItem, MintRange, SignedOperation, now
from cityid.records import Record, Value
from ledger.audit import verify_log

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ORIGIN = "traffic.sjz.cityid.test/log"
KILLS = 22  # at least 20 SIGKILLs
TIME_BUDGET = 80.0  # seconds for the whole campaign; stops early (after 20 kills) if slow
WORKERS = 16
REQUESTS_PER_WORKER = 20  # per cycle: bounds the log (and so the replay on each restart)


@dataclass
class Request:
    leaves: tuple[bytes, ...]
    idents: tuple[Identifier, ...]  # one identifier per leaf, to ask the registrar about
    acked: list[int] | None = None  # receipt indexes once acknowledged


@dataclass
class Campaign:
    spec: RegistrarSpec
    key: SigningKey
    rng: random.Random
    ts: int = field(default_factory=now)
    requests: list[Request] = field(default_factory=list)
    by_leaf: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # leaf -> (request, pos)
    next_range: int = 0
    next_explicit: int = 0
    seen: list[bytes] = field(default_factory=list)  # the published log at the last check
    ns: Namespace | None = None

    def _leaf(self) -> tuple[bytes, Identifier]:
        if self.rng.random() < 0.4:
            count = self.rng.randint(1, 50_000)
            start, self.next_range = self.next_range, self.next_range + count
            template = Record(
                (Value.make(1, "URL", "https://t.example/{suffix}", timestamp=self.ts),)
            )
            op = MintRange(TRAFFIC, "R", start, count, 9, template, self.ts)
            return sign(op, self.key), Identifier(TRAFFIC, op.suffix(count - 1))
        items = []
        for _ in range(self.rng.randint(1, 6)):
            n, self.next_explicit = self.next_explicit, self.next_explicit + 1
            suffix = mint_suffix("E", n, 9) if n % 2 else f"ASSET-{n}"
            record = Record((
                Value.make(1, "URL", f"https://t.example/a/{n}", timestamp=self.ts),
                Value.make(2, "GEO", f"38.{n % 1000:03d},114.5", timestamp=self.ts),
            ))  # fmt: skip
            items.append(MintItem(suffix, 0, record))
        leaf = sign(Mint(TRAFFIC, tuple(items), self.ts), self.key)
        return leaf, Identifier(TRAFFIC, items[-1].suffix)

    def new_request(self) -> Request:
        n = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 4)
        pairs = [self._leaf() for _ in range(n)]
        req = Request(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
        rid = len(self.requests)
        self.requests.append(req)
        for pos, leaf in enumerate(req.leaves):
            self.by_leaf[leaf] = (rid, pos)
        return req

    async def worker(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        for _ in range(REQUESTS_PER_WORKER):
            if stop.is_set():
                return
            req = self.new_request()
            try:
                status, body = await post_ops(session, self.spec.url, req.leaves)
            except (TimeoutError, aiohttp.ClientError):
                return  # the registrar died: this request may or may not be logged
            assert status == 200, body  # unique suffixes and ranges: never a refusal
            req.acked = [r["index"] for r in body["receipts"]]

    def check(self, when: str) -> None:
        """The invariants, on the log as published now (read-only open)."""
        log = self.spec.open_log()
        entries = list(log.entries(0, log.size))
        assert entries[: len(self.seen)] == self.seen, f"{when}: published history changed"
        present: dict[int, list[tuple[int, int]]] = {}
        for index, leaf in enumerate(entries):
            owner = self.by_leaf.get(leaf)
            assert owner is not None, f"{when}: leaf {index} is not one the clients sent"
            present.setdefault(owner[0], []).append((owner[1], index))
        for rid, req in enumerate(self.requests):
            got = present.get(rid, [])
            if req.acked is not None:
                for leaf, index in zip(req.leaves, req.acked, strict=True):
                    assert index < len(entries) and entries[index] == leaf, (
                        f"{when}: acknowledged leaf {index} of request {rid} is lost"
                    )
            if got:
                assert len(got) == len(req.leaves), f"{when}: request {rid} is half-logged {got}"
                first = got[0][1]
                assert got == [(p, first + p) for p in range(len(req.leaves))], (
                    f"{when}: request {rid} is not contiguous and in order: {got}"
                )
        ns = self.ns or self.spec.namespace()
        for index in range(len(self.seen), len(entries)):
            ns.apply(SignedOperation.decode(entries[index]), log=ORIGIN)
        self.ns, self.seen = ns, entries
        cp = verify_log(self.spec.log_dir, self.spec.vkey)
        assert cp.size == len(entries)


async def campaign(c: Campaign, proc: RegistrarProcess) -> tuple[int, int]:
    kills = cycles = 0
    began = time.monotonic()
    conn = aiohttp.TCPConnector(limit=WORKERS * 2, force_close=False)
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=20)
    ) as session:
        while kills < KILLS and (kills < 20 or time.monotonic() - began < TIME_BUDGET):
            cycles += 1
            if cycles % 6 == 0:
                # Kill while it starts: opening the log, recovering, replaying.
                proc.spawn()
                await asyncio.sleep(c.rng.uniform(0.0, 0.4))
                proc.kill()
                kills += 1
                c.check(f"cycle {cycles} (killed while starting)")
                continue
            await asyncio.to_thread(proc.start)
            c.check(f"cycle {cycles} after restart")
            # The restarted registrar knows what it acknowledged, and nothing it lost.
            logged = {c.by_leaf[leaf][0] for leaf in c.seen}
            for rid in c.rng.sample(range(len(c.requests)), min(8, len(c.requests))):
                want = (1, True) if rid in logged else (0, False)
                assert rid in logged or c.requests[rid].acked is None
                for ident in c.requests[rid].idents:
                    assert await version(session, c.spec.url, ident) == want, (rid, ident)
            stop = asyncio.Event()
            workers = [asyncio.create_task(c.worker(session, stop)) for _ in range(WORKERS)]
            await asyncio.sleep(c.rng.uniform(0.0, 0.5))
            proc.kill()
            kills += 1
            stop.set()
            await asyncio.wait_for(asyncio.gather(*workers), timeout=30)
            c.check(f"cycle {cycles} after SIGKILL")
        # A last clean start and stop: still consistent, and the CLI auditor agrees.
        await asyncio.to_thread(proc.start)
        c.check("final restart")
        assert proc.stop() == 0
    return kills, cycles


def test_sigkill_at_random_points(tmp_path: Path) -> None:
    seed = int(os.environ.get("CITYID_CRASH_SEED", random.randrange(2**32)))
    print(f"CITYID_CRASH_SEED={seed}")
    key = new_key("traffic", tmp_path / "keys")
    spec = make_registrar(
        tmp_path / "reg", TRAFFIC, ORIGIN, admin=key, max_batch=64, max_delay_ms=3
    )
    c = Campaign(spec, key, random.Random(seed))
    began = time.monotonic()
    with RegistrarProcess(spec) as proc:
        kills, cycles = asyncio.run(campaign(c, proc))
    took = time.monotonic() - began
    acked = sum(1 for r in c.requests if r.acked is not None)
    logged = {c.by_leaf[leaf][0] for leaf in c.seen}
    print(
        f"{kills} kills in {cycles} cycles, {took:.1f} s: {len(c.requests)} requests sent, "
        f"{acked} acknowledged, {len(logged) - acked} logged but never acknowledged, "
        f"log size {len(c.seen)}"
    )
    assert kills >= 20
    assert acked > 0 and len(c.seen) >= acked
    res = cli("ledger", "verify", str(spec.log_dir), "--key", str(spec.directory / "log.vkey"))
    assert res.returncode == 0, res.stderr
    assert f"size {len(c.seen)} " in res.stdout
