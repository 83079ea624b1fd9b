"""Read-only queries of the search index from a serving process.

The index is SQLite (:mod:`resolver.search_index`); a query is CPU and disk work that
would hold the event loop, so each runs in a small thread pool, one read-only
connection per thread, under the resolver's search deadline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cityid.errors import NotFoundError

from . import search_index

T = TypeVar("T")
THREADS = 2


class Searcher:
    """Read-only queries of the index at ``path``, in threads, one connection per thread."""

    def __init__(self, path: str, seconds: float = search_index.DEADLINE_S) -> None:
        self.path = path
        self.seconds = seconds
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="cityid-search")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path:
                raise NotFoundError(
                    "this resolver keeps no search index ([search] index in resolver.toml)",
                    rule="no-search-index",
                )
            conn = self._local.conn = search_index.open_reader(self.path)
        return conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            return fn(self._conn(), *args, seconds=self.seconds)

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @property
    def enabled(self) -> bool:
        return bool(self.path)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
