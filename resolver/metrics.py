"""The HTTP front's counters, shared by every worker process of one server."""

from __future__ import annotations

import mmap
from typing import ClassVar

ROUTES = ("resolve", "handles", "proofs", "metrics", "healthz", "index", "search", "other")
STATUSES = (200, 204, 301, 302, 304, 400, 404, 405, 410, 500, 503, 0)  # 0: any other
COUNTERS = (
    "cache_hits",
    "cache_misses",
    "cache_stale",
    "store_lookups",
    "store_errors",
    "fast_requests",
    "handoffs",
    "search_deadline",
)
HELP = {
    "cache_hits": "answers served from the in-process cache",
    "cache_misses": "answers that needed a store lookup",
    "cache_stale": "expired answers served because Redis was unreachable",
    "store_lookups": "lookups sent to the store (one round trip per event-loop pass)",
    "store_errors": "lookups that failed because Redis was unreachable",
    "fast_requests": "requests answered by the lean fast path",
    "handoffs": "connections handed from the fast path to the full application",
    "search_deadline": "searches stopped at their deadline (answered 503 with Retry-After)",
}


class Metrics:
    """Counters in a flat int64 array, one row per worker process.

    The server maps one shared anonymous region before starting its workers;
    each worker writes only its own row (no locks: aligned 8-byte stores are
    atomic), and ``/metrics`` in any worker sums every row, so a scrape that
    SO_REUSEPORT sends to one worker still sees the whole server.
    """

    _REQ: ClassVar[dict[tuple[str, int], int]] = {
        (r, s): i for i, (r, s) in enumerate((r, s) for r in ROUTES for s in STATUSES)
    }
    _CTR: ClassVar[dict[str, int]] = {
        name: len(ROUTES) * len(STATUSES) + i for i, name in enumerate(COUNTERS)
    }
    ROW = len(ROUTES) * len(STATUSES) + len(COUNTERS)

    def __init__(self, region: mmap.mmap | None = None, worker: int = 0, workers: int = 1) -> None:
        self.workers = workers
        self._region = region if region is not None else mmap.mmap(-1, 8 * self.ROW * workers)
        self.cells = memoryview(self._region).cast("q")
        self.base = worker * self.ROW

    @classmethod
    def region(cls, workers: int) -> mmap.mmap:
        """A zeroed region shared with processes forked or spawned after it (MAP_SHARED)."""
        return mmap.mmap(-1, 8 * cls.ROW * workers)

    def request_index(self, route: str, status: int) -> int:
        i = self._REQ.get((route, status))
        return i if i is not None else self._REQ[(route if route in ROUTES else "other", 0)]

    def counter_index(self, name: str) -> int:
        return self._CTR[name]

    def request(self, route: str, status: int) -> None:
        self.cells[self.base + self.request_index(route, status)] += 1

    def inc(self, name: str, n: int = 1) -> None:
        self.cells[self.base + self._CTR[name]] += n

    def totals(self) -> list[int]:
        cells, row = self.cells, self.ROW
        return [sum(cells[w * row + i] for w in range(self.workers)) for i in range(row)]

    def counter(self, name: str) -> int:
        return self.totals()[self._CTR[name]]

    def lines(self, cache_entries: int) -> list[str]:
        """The Prometheus text of these counters, summed over the workers."""
        totals = self.totals()
        lines = [
            "# HELP cityid_resolver_requests_total HTTP requests answered, by route and status.",
            "# TYPE cityid_resolver_requests_total counter",
        ]
        for (route, status), i in self._REQ.items():
            if totals[i]:
                s = str(status) if status else "other"
                lines.append(
                    f'cityid_resolver_requests_total{{route="{route}",status="{s}"}} {totals[i]}'
                )
        for name, i in self._CTR.items():
            metric = f"cityid_resolver_{name}_total"
            lines += [f"# HELP {metric} {HELP[name]}.", f"# TYPE {metric} counter"]
            lines.append(f"{metric} {totals[i]}")
        lines += [
            "# HELP cityid_resolver_cache_entries Identifiers cached in the answering process.",
            "# TYPE cityid_resolver_cache_entries gauge",
            f"cityid_resolver_cache_entries {cache_entries}",
            "# HELP cityid_resolver_workers Serving processes sharing the port.",
            "# TYPE cityid_resolver_workers gauge",
            f"cityid_resolver_workers {self.workers}",
        ]
        return lines


__all__ = ["COUNTERS", "ROUTES", "STATUSES", "Metrics"]
