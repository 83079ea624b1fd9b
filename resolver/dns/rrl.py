"""Response-rate limiting (RRL), so the resolver cannot be used to amplify attacks.

A UDP source address can be forged: an attacker sends small queries "from" a
victim and the server sends the (larger) answers to the victim. RRL bounds
what any one network receives: a token bucket per client /24 (IPv4) or /56
(IPv6), refilled at ``rate`` responses per second and holding at most
``burst``. A response over the limit is dropped, except every ``slip``-th one,
which is sent as an empty truncated answer (TC=1, no records: no larger than
the query). A real client behind a flooded network thus still gets a TC now
and then and retries over TCP, where the address cannot be forged and no
limit applies; a forged flood gets nothing worth reflecting.

One limiter per process: with N processes sharing the port (SO_REUSEPORT
spreads clients by address and port), a network may get up to N times the
rate. The table of networks is bounded: when full, networks whose bucket has
refilled (idle ones: forgetting them changes nothing) are dropped, then the
oldest half if that was not enough.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

SEND, DROP, SLIP = 0, 1, 2


class RateLimiter:
    """Token buckets per client network; :meth:`check` says what to do with a response."""

    __slots__ = (
        "_clock",
        "_table",
        "_v6_shift",
        "burst",
        "dropped",
        "max_networks",
        "rate",
        "slip",
        "slipped",
        "v4_prefix",
    )

    def __init__(
        self,
        rate: float,
        *,
        slip: int = 2,
        burst: float | None = None,
        v4_prefix: int = 24,
        v6_prefix: int = 56,
        max_networks: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("the RRL rate must be positive (use no limiter to turn it off)")
        if slip < 0 or not 0 <= v4_prefix <= 32 or not 0 <= v6_prefix <= 128:
            raise ValueError("slip >= 0, IPv4 prefix 0..32, IPv6 prefix 0..128")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else rate)  # one second's worth
        self.slip = slip
        self.v4_prefix = v4_prefix
        self._v6_shift = 128 - v6_prefix
        self.max_networks = max_networks
        self._clock = clock
        # network -> [tokens, last refill time, responses dropped]
        self._table: dict[object, list[float]] = {}
        self.dropped = 0
        self.slipped = 0

    def network(self, ip: str) -> object:
        """The key of ``ip``'s network: a /24 string is the cheap common case."""
        if ":" not in ip:
            if self.v4_prefix == 24:
                return ip.rpartition(".")[0]
            return int(ipaddress.IPv4Address(ip)) >> (32 - self.v4_prefix)
        addr = ipaddress.IPv6Address(ip.partition("%")[0])
        if addr.ipv4_mapped is not None:
            return self.network(str(addr.ipv4_mapped))
        return ("6", int(addr) >> self._v6_shift)

    def check(self, ip: str) -> int:
        """SEND, DROP or SLIP for one response to ``ip``."""
        now = self._clock()
        key = self.network(ip)
        b = self._table.get(key)
        if b is None:
            if len(self._table) >= self.max_networks:
                self._prune(now)
            self._table[key] = [self.burst - 1.0, now, 0.0]
            return SEND
        tokens = b[0] + (now - b[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        b[1] = now
        if tokens >= 1.0:
            b[0] = tokens - 1.0
            return SEND
        b[0] = tokens
        b[2] += 1
        if self.slip and b[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def _prune(self, now: float) -> None:
        full = self.burst / self.rate  # seconds for an empty bucket to refill
        table = self._table
        for key in [k for k, b in table.items() if now - b[1] >= full]:
            del table[key]
        if len(table) >= self.max_networks:
            for key in list(table)[: len(table) // 2]:
                del table[key]

    def __len__(self) -> int:
        return len(self._table)
