"""SIGKILL a registrar while it approves applications, again and again.

Each cycle starts ``python -m cityid.cli registrar serve DIR``, sends approvals
(read, build, sign, send: ``ApplicationClient.approve``), a rejection and new
applications at once, and kills the process with SIGKILL after a random delay
(in some cycles while it is still starting, and so reconciling). Then:

* after a kill: every ticket the store calls approved has its delegation in the
  log at the index it names, and every approval acknowledged to the operator is
  in the log;
* after a restart: ticket and log agree both ways: a node's delegation is in the
  log if and only if its ticket says approved (and at that leaf); no ticket is
  left half-way (``approving``); ``ledger.audit.verify_log`` passes.

Set ``CITYID_CRASH_SEED`` to replay a campaign's random choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from registrar_harness import ROOT, RegistrarProcess, RegistrarSpec, make_registrar, new_key

from cityid import demo
from cityid.keys import SigningKey
from cityid.ops import Delegate, SignedOperation, now
from ledger.audit import verify_log
from registrar.application_store import APPROVED, APPROVING, DB_NAME
from registrar.applications import parse_application, signed_json
from registrar.apply_cli import ApplicationClient
from registrar.client import RegistrarError
from registrar.config import RegistrarConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ORIGIN = "root.cityid.test/log"
KILLS = 14
TIME_BUDGET = 60.0  # seconds; stops early (after 10 kills) if the machine is slow
APPROVALS_PER_CYCLE = 5


@dataclass
class Campaign:
    spec: RegistrarSpec
    root_key: SigningKey
    rng: random.Random
    cities: list[demo.Division]
    filed: dict[str, str] = field(default_factory=dict)  # ticket -> node
    acked: set[str] = field(default_factory=set)  # tickets whose approval was acknowledged
    next_city: int = 0
    interrupted: int = 0  # approvals a kill left half-way (settled by the next start)

    def tickets(self) -> dict[str, tuple[str, str, int | None, bytes]]:
        """ticket -> (node, status, leaf index, admin key), read from the store's file."""
        db = sqlite3.connect(self.spec.directory / DB_NAME)
        try:
            rows = db.execute(
                "SELECT ticket, node, status, leaf_index, admin_key FROM applications"
            )
            return {t: (n, s, i, k) for t, n, s, i, k in rows}
        finally:
            db.close()

    def delegations(self) -> dict[str, tuple[int, bytes]]:
        """node -> (leaf index, key) of every delegation in the published log."""
        log = self.spec.open_log()
        out = {}
        for index, leaf in enumerate(log.entries(0, log.size)):
            op = SignedOperation.decode(leaf).op
            if isinstance(op, Delegate):
                out[str(op.prefix)] = (index, op.key)
        return out

    def check(self, when: str, *, restarted: bool) -> None:
        tickets, logged = self.tickets(), self.delegations()
        if not restarted:
            self.interrupted += sum(1 for _, s, _, _ in tickets.values() if s == APPROVING)
        for ticket, (node, status, index, key) in tickets.items():
            if status == APPROVED:
                assert logged.get(node) == (index, key), f"{when}: {node} approved, not logged"
            if ticket in self.acked:
                assert node in logged, f"{when}: acknowledged approval of {node} is lost"
            if restarted:
                assert status != APPROVING, f"{when}: {node} left approving after restart"
                if node in logged:
                    assert status == APPROVED, f"{when}: {node} is in the log but {status}"
        if restarted:
            by_node = {node: status for node, status, _, _ in tickets.values()}
            for node in logged:
                assert by_node.get(node) == APPROVED, f"{when}: {node} logged, ticket disagrees"
            cp = verify_log(self.spec.log_dir, self.spec.vkey)
            assert cp.size == self.spec.open_log().size

    async def file(self, client: ApplicationClient) -> None:
        city = self.cities[self.next_city]
        self.next_city += 1
        key = SigningKey.generate(f"{city.code[:4]}-admin")
        app = parse_application({
            "adcode": city.code, "name": city.name, "contact_name": "Ops",
            "contact_email": "ops@city.example", "contact_phone": "+86 10 5555 0100",
            "admin_key": str(key.verifier), "time": now(),
        })  # fmt: skip
        try:
            body = await client.apply(signed_json(app, key))
        except RegistrarError as e:
            if e.rule != "unreachable":
                raise
            return  # the registrar died: the application may or may not be stored
        self.filed[body["ticket"]] = body["node"]

    async def approve(self, client: ApplicationClient, ticket: str) -> None:
        try:
            body = await client.approve(self.root_key, ticket)
        except RegistrarError as e:
            if e.rule != "unreachable":
                raise
            return
        assert body["status"] == APPROVED
        self.acked.add(ticket)

    async def reject(self, client: ApplicationClient, ticket: str) -> None:
        try:
            await client.reject(self.root_key, ticket, "not this time")
        except RegistrarError as e:
            if e.rule != "unreachable":
                raise


async def campaign(c: Campaign, proc: RegistrarProcess) -> int:
    kills = cycles = 0
    began = time.monotonic()
    async with ApplicationClient(c.spec.url, timeout=20) as client:
        await asyncio.to_thread(proc.start)
        for _ in range(30):
            await c.file(client)
        proc.kill()
        while kills < KILLS and (kills < 10 or time.monotonic() - began < TIME_BUDGET):
            cycles += 1
            if cycles % 5 == 0:
                proc.spawn()  # killed while it starts: opening the log, reconciling
                await asyncio.sleep(c.rng.uniform(0.0, 0.5))
                proc.kill()
                kills += 1
                c.check(f"cycle {cycles} (killed while starting)", restarted=False)
                continue
            await asyncio.to_thread(proc.start)
            c.check(f"cycle {cycles} after restart", restarted=True)
            pending = [t for t, (_, s, _, _) in c.tickets().items() if s == "pending"]
            chosen = c.rng.sample(pending, min(APPROVALS_PER_CYCLE + 1, len(pending)))
            tasks = [asyncio.create_task(c.approve(client, t)) for t in chosen[1:]]
            if chosen:
                tasks.append(asyncio.create_task(c.reject(client, chosen[0])))
            tasks += [asyncio.create_task(c.file(client)) for _ in range(2)]
            await asyncio.sleep(c.rng.uniform(0.0, 0.4))
            proc.kill()
            kills += 1
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
            c.check(f"cycle {cycles} after SIGKILL", restarted=False)
        await asyncio.to_thread(proc.start)
        c.check("final restart", restarted=True)
        assert proc.stop() == 0
    return kills


def test_sigkill_during_approvals(tmp_path: Path) -> None:
    seed = int(os.environ.get("CITYID_CRASH_SEED", random.randrange(2**32)))
    print(f"CITYID_CRASH_SEED={seed}")
    root_key = new_key("root-admin", tmp_path / "keys")
    # A batching delay that leaves time to be killed between the intent and the log.
    spec = make_registrar(tmp_path / "root", ROOT, ORIGIN, admin=root_key, max_delay_ms=40)
    cfg = RegistrarConfig.load(spec.directory)
    cfg.applications_per_hour = 10_000  # one test client sends them all
    cfg.save()
    cities = [c for c in demo.cities() if c.code[:4] != "1301"]
    c = Campaign(spec, root_key, random.Random(seed), cities)
    proc = RegistrarProcess(spec)
    try:
        kills = asyncio.run(campaign(c, proc))
    finally:
        proc.kill()
    approved = sum(1 for _, s, _, _ in c.tickets().values() if s == APPROVED)
    assert kills >= 10 and approved > 0, (kills, approved)
    print(f"{kills} kills, {approved} approved, {len(c.acked)} acknowledged, "
          f"{c.interrupted} interrupted half-way")  # fmt: skip
