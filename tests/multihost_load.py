"""Steady mixed load on the multi-host topology, and what it saw.

A writer mints one identifier on a city registrar every 100 ms; one reader per
resolver and protocol (HTTP, DNS) looks up identifiers acknowledged at least
:data:`SETTLE` seconds earlier, so sync has had time to apply them. Every
lookup is classified:

* ``ok``: the identifier's own URL (HTTP 302 ``Location``, or in the DNS TXT);
* ``wrong``: another URL, or "no such identifier" (404, NXDOMAIN) from a
  resolver that had already answered it correctly: a resolver must never take
  back what it served;
* ``late``: "no such identifier" for one it has not answered yet (sync behind);
* ``error``: no answer, a 5xx, SERVFAIL, a timeout.

Threads, each bounded by the run's stop event and by its duration; every
request has a timeout.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
from multihost_topology import APEX, DNS_PORT, HTTP_PORT, REGISTRARS, RESOLVERS, Topology

from cityid.identifiers import parse_identifier

WRITE_EVERY = 0.1
SETTLE = 2.0
TIMEOUT = 1.0


@dataclass
class Load:
    topo: Topology
    city: str = "sjz"
    #: distinguishes this run's identifiers from an earlier run's on the same logs
    tag: str = field(default_factory=lambda: f"R{time.time_ns() % 10**9:09d}")
    t0: float = field(default_factory=time.monotonic)
    acked: dict[str, tuple[str, float]] = field(default_factory=dict)  # ident -> (url, when)
    refused: list[tuple[float, int, str]] = field(default_factory=list)  # writes not acked
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    #: (resolver, protocol, "first" or "again") -> seconds of each successful lookup; a
    #: resolver's first lookup of an identifier misses its cache, a later one may hit it
    latencies: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    asked: set[tuple[str, str, str]] = field(default_factory=set)
    error_times: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    served: set[tuple[str, str, str]] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- the writer -----------------------------------------------------------------------

    def _writer(self) -> None:
        prefix = REGISTRARS[self.city][0]
        n = 0
        while not self.stop.is_set():
            n += 1
            start = time.monotonic()
            suffix, url = f"{self.tag}-{n}", f"https://load.example/{self.tag}/{n}"
            status, body = self.topo.mint(self.city, suffix, url, timeout=10)
            with self.lock:
                if status == 200:
                    self.acked[f"{prefix}/{suffix}"] = (url, self.now())
                else:
                    self.refused.append((self.now(), status, str(body)[:200]))
            self.stop.wait(max(0.0, WRITE_EVERY - (time.monotonic() - start)))

    # -- the readers ----------------------------------------------------------------------

    def _pick(self) -> tuple[str, str] | None:
        with self.lock:
            ready = [(i, u) for i, (u, t) in self.acked.items() if t < self.now() - SETTLE]
        return random.choice(ready) if ready else None

    def _record(self, res: str, proto: str, ident: str, outcome: str) -> None:
        key = (res, proto, ident)
        with self.lock:
            if outcome == "miss":
                outcome = "wrong" if key in self.served else "late"
            if outcome == "ok":
                self.served.add(key)
            elif outcome == "error":
                self.error_times.append(self.now())
            elif outcome == "wrong":
                self.wrong.append(f"{self.now():.1f}s {res} {proto} {ident}")
            self.outcomes[(res, proto, outcome)] += 1

    def lookup_http(self, res: str, ident: str, url: str) -> str:
        conn = http.client.HTTPConnection(self.topo.host(res).addr, HTTP_PORT, timeout=TIMEOUT)
        try:
            conn.request("GET", f"/{ident}")
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            return "error"
        finally:
            conn.close()
        if r.status == 302:
            return "ok" if r.getheader("Location") == url else "wrong"
        return "miss" if r.status == 404 else "error"

    def lookup_dns(self, res: str, ident: str, url: str) -> str:
        q = dns.message.make_query(parse_identifier(ident).dns_name(APEX), "TXT")
        try:
            r = dns.query.udp(q, self.topo.host(res).addr, port=DNS_PORT, timeout=TIMEOUT)
        except (OSError, dns.exception.DNSException):
            return "error"
        if r.rcode() == dns.rcode.NXDOMAIN:
            return "miss"
        if r.rcode() != dns.rcode.NOERROR:
            return "error"
        txt = b"".join(b"".join(rd.strings) for rrset in r.answer for rd in rrset)
        return "ok" if url.encode() in txt else "wrong"

    def _reader(self, res: str, proto: str) -> None:
        look = self.lookup_http if proto == "http" else self.lookup_dns
        while not self.stop.is_set():
            pick = self._pick()
            if pick is None:
                self.stop.wait(0.05)
                continue
            ident, url = pick
            start = time.monotonic()
            outcome = look(res, ident, url)
            took = time.monotonic() - start
            key = (res, proto, ident)
            with self.lock:
                kind = "again" if key in self.asked else "first"
                self.asked.add(key)
                if outcome == "ok":
                    self.latencies.setdefault((res, proto, kind), []).append(took)
            self._record(res, proto, ident, outcome)
            self.stop.wait(0.01)

    @contextlib.contextmanager
    def running(self, limit: float = 120.0) -> Iterator[Load]:
        """The writer and the readers in threads; stopped on exit, or after ``limit`` s."""
        threads = [threading.Thread(target=self._writer, daemon=True)]
        threads += [
            threading.Thread(target=self._reader, args=(r, p), daemon=True)
            for r in RESOLVERS
            for p in ("http", "dns")
        ]
        timer = threading.Timer(limit, self.stop.set)
        timer.start()
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            timer.cancel()
            for t in threads:
                t.join(timeout=15)

    # -- what it saw ----------------------------------------------------------------------

    def error_seconds(self, since: float = 0.0) -> int:
        """How many distinct seconds (of the run) saw at least one error."""
        return len({int(t) for t in self.error_times if t >= since})

    def errors_on(self, res: str) -> int:
        return sum(
            n for (r, _, outcome), n in self.outcomes.items() if r == res and outcome == "error"
        )

    def error_span(self, since: float = 0.0) -> float:
        """From the first error to the last (0 without errors)."""
        times = [t for t in self.error_times if t >= since]
        return max(times) - min(times) if times else 0.0

    def p99(self, proto: str, kind: str) -> float | None:
        """The 99th percentile (s) of successful lookups over ``proto``, first or repeated."""
        times = sorted(t for (_, p, k), ts in self.latencies.items() if (p, k) == (proto, kind)
                       for t in ts)  # fmt: skip
        return times[min(len(times) - 1, int(len(times) * 0.99))] if times else None

    def latency_summary(self) -> str:
        parts = []
        for proto in ("http", "dns"):
            for kind, what in (("first", "first lookup (cache miss)"), ("again", "repeated")):
                p = self.p99(proto, kind)
                parts.append(f"{proto} {what} p99 {p * 1000:.1f} ms" if p is not None else
                             f"{proto} {what}: none")  # fmt: skip
        return "; ".join(parts)

    def totals(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, _, outcome), n in self.outcomes.items():
            out[outcome] += n
        return out

    def unserved(self, res: str) -> list[str]:
        """Acknowledged identifiers ``res`` does not answer correctly now (HTTP)."""
        return [i for i, (u, _) in self.acked.items() if self.lookup_http(res, i, u) != "ok"]

    def summary(self, title: str) -> str:
        tot = self.totals()
        return (
            f"{title}: {len(self.acked)} writes acknowledged, {len(self.refused)} refused; "
            f"lookups ok {tot['ok']}, late {tot['late']}, errors {tot['error']} "
            f"({self.error_seconds()} s with errors, first to last {self.error_span():.1f} s), "
            f"wrong {tot['wrong']}"
        ) + (
            f"; first refusal at {self.refused[0][0]:.1f} s: {self.refused[0][1]} "
            f"{self.refused[0][2][:120]}"
            if self.refused
            else ""
        )
