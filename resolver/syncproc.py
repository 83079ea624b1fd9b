"""Sync in a process of its own, for a host that serves in the same program.

``cityid up`` runs registrars, witnesses and the resolver's HTTP and DNS fronts
in one event loop. Sync's work comes in bursts as large as a log's largest
batch (a million-row CSV is a million records to store), and however finely it
is sliced it takes CPU the fronts would wait for; so there it runs in a child
process, which the kernel schedules beside the fronts rather than between their
requests. (``resolver serve`` already runs it apart from its serving workers.)

:class:`SyncProcess` starts it, restarts it if it dies, and stops it; it is
spawned (a fresh interpreter, nothing inherited but :class:`SyncSpec`) and
dies with its parent. What it has done is read from Redis, where it writes: the
logs' cursors and readiness (:meth:`resolver.store.Store.status`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from cityid.identifiers import Prefix
from ledger.policy import Policy

from . import workers

log = logging.getLogger("cityid.resolver.sync")


@dataclass(frozen=True, slots=True)
class SyncSpec:
    """Everything the sync process needs, picklable."""

    redis_url: str
    root_log_url: str
    policy: str  # the root log's tlog-policy (its key, the witnesses and their quorum)
    root: str  # the root prefix (the trust anchor)
    root_key: bytes  # and the key that anchors it
    origin: str  # the root log's origin
    poll_interval: float = 0.2


def _main(spec: SyncSpec) -> None:
    workers.worker_main(lambda: _run(spec))


async def _run(spec: SyncSpec) -> None:
    from .store import Store
    from .sync import Sync

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    policy = Policy.parse(spec.policy)
    store = await Store.connect(spec.redis_url)
    sync = Sync(store, spec.root_log_url, policy, (Prefix.parse(spec.root), spec.root_key),
                spec.origin, spec.poll_interval, child_policy=policy)  # fmt: skip
    try:
        await sync.start()
        await stop.wait()
    finally:
        await sync.stop()
        await store.close()


class SyncProcess(workers.Child):
    """A supervised child process running :class:`resolver.sync.Sync` (see the notes)."""

    def __init__(self, spec: SyncSpec) -> None:
        super().__init__("cityid-sync", _main, (spec,))


__all__ = ["SyncProcess", "SyncSpec"]
