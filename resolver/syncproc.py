"""Sync in a process of its own, for a host that serves in the same program.

Sync's work comes in bursts as large as a log's largest batch (a million-row CSV
is a million records to store), and however finely it is sliced it takes CPU
the fronts would wait for. So ``cityid up`` runs it in a child process, at a
lower scheduling priority (:data:`NICE`): the kernel then gives a core to a
front with a request before it gives one to sync, and sync takes what serving
leaves, which on a busy small host is most of it anyway. (``resolver serve``
already runs it apart from its serving workers.)

:class:`SyncProcess` starts it, restarts it if it dies, and stops it; it is
spawned (a fresh interpreter, nothing inherited but :class:`SyncSpec`) and
dies with its parent. What it has done is read from Redis, where it writes: the
logs' cursors and readiness (:meth:`resolver.store.Store.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
    index_path: str = ""  # the search index sync writes ("" for none)


#: How much lower than its parent sync runs (nice(2) increments: 0 to 19).
NICE = 10


def _main(spec: SyncSpec) -> None:
    with contextlib.suppress(OSError):
        os.nice(NICE)
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
                spec.origin, spec.poll_interval, child_policy=policy,
                index_path=spec.index_path)  # fmt: skip
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
