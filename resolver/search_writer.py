"""Sync's half of the search index: what sync verified and applied goes in, a slice at a time.

:class:`resolver.sync.Sync` calls :meth:`Indexer.write` after each slice it wrote
to Redis, with the effects of the entries the index does not hold yet, and the
log's count of entries applied. The index keeps its own cursor per log, so after
a crash, a deleted file or an index built under another root of trust, the
replay sync does on every start fills it from where it stopped (or from the
start), whatever Redis holds.

A failing index (a full disk, say) never stops sync: the error is logged and
counted, the index stops taking writes, and the next start of sync catches it up.
The SQL is :mod:`resolver.search_index`'s. The writes run in a process of their
own: building the index costs about as much CPU as the Redis writes, and in a
thread it would hold the GIL against sync's decoding (measured: a 300,000-row CSV
resolved 40-70% later with the index written in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from . import search_index
from .layout import Change

log = logging.getLogger("cityid.resolver.search")


_conn: sqlite3.Connection | None = None  # the writer process's connection


def _open_in_writer(path: str, trust: str) -> None:
    global _conn
    # Ctrl-C reaches the whole process group: sync, which owns this process, stops it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _conn = search_index.open_writer(path, trust)


def _apply_in_writer(changes: Sequence[Change], origin: str, applied: int) -> None:
    assert _conn is not None
    search_index.apply(_conn, changes, origin, applied)


class Indexer:
    """The one writer of the index at ``path`` (sync's leader only writes it)."""

    def __init__(self, path: str | Path, trust: str) -> None:
        self.path = str(path)
        self.trust = trust
        self._conn: sqlite3.Connection | None = None
        self._writer: ProcessPoolExecutor | None = None
        self._cursors: dict[str, int] = {}
        self.failed = False
        self.errors = 0

    def open(self) -> None:
        """(Re)open the file, created if missing; read the cursors it holds."""
        self.close()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = search_index.open_writer(self.path, self.trust)
            self._cursors = search_index.cursors(self._conn)
            self.failed = False
        except sqlite3.Error as e:
            self._fail(e)
            return
        # Spawned, not forked: the caller runs an event loop and holds sockets.
        self._writer = ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_open_in_writer, initargs=(self.path, self.trust),
        )  # fmt: skip

    @property
    def is_open(self) -> bool:
        return self._conn is not None or self.failed

    def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True, cancel_futures=True)
            self._writer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.failed = False

    def applied(self, origin: str) -> int:
        """How many of ``origin``'s entries the index holds (a failed index: all of them,
        so sync computes nothing for it until it restarts)."""
        if self.failed or self._conn is None:
            return 1 << 62
        return self._cursors.get(origin, 0)

    async def write(self, changes: Sequence[Change], origin: str, applied: int) -> None:
        pool = self._writer
        if pool is None or self.failed or applied <= self._cursors.get(origin, 0):
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(pool, _apply_in_writer, changes, origin, applied)
        except (sqlite3.Error, BrokenProcessPool) as e:
            self._fail(e)
            return
        self._cursors[origin] = applied

    def _fail(self, e: Exception) -> None:
        self.errors += 1
        self.failed = True
        log.error("search index %s: %s; it takes no more writes until sync restarts", self.path, e)
