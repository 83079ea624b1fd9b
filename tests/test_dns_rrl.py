"""Response-rate limiting: the limiter's arithmetic, and a real flood on loopback.

The flood: 10,000 queries a second for 2 s from 127.0.0.1 to ``cityid resolver
dns serve --rrl-rate 100 --rrl-slip 2`` (a separate process, as deployed);
the replies to the flooding network must stay near the rate, every second
dropped reply must come back as an empty TC=1 answer (the slip), and a client
on another /24 (127.0.1.1: loopback, but not the flooder's /24) must still get
every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import dns.flags
import dns.message
import pytest
import redis
from test_dns import W127, cli_server, name, populate

from cityid.keys import SigningKey
from resolver.dns.rrl import DROP, SEND, SLIP, RateLimiter
from resolver.store import Store

RATE = 100
FLOOD_QPS = 10_000
FLOOD_SECONDS = 2.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_rate_burst_and_slip() -> None:
    clock = Clock()
    rrl = RateLimiter(10, slip=3, clock=clock)
    assert [rrl.check("192.0.2.1") for _ in range(10)] == [SEND] * 10  # the burst
    over = [rrl.check("192.0.2.77") for _ in range(9)]  # same /24
    assert over == [DROP, DROP, SLIP] * 3  # every 3rd dropped reply slips
    clock.t += 0.5  # half a second refills 5
    assert [rrl.check("192.0.2.1") for _ in range(6)] == [SEND] * 5 + [DROP]
    assert rrl.check("192.0.3.1") == SEND  # another /24 has its own bucket
    clock.t += 100
    assert [rrl.check("192.0.2.1") for _ in range(11)][-1] != SEND  # capped at the burst


def test_networks_v4_v6_and_mapped() -> None:
    rrl = RateLimiter(1, slip=0)
    assert rrl.network("198.51.100.7") == rrl.network("198.51.100.200")
    assert rrl.network("198.51.100.7") != rrl.network("198.51.101.7")
    assert rrl.network("2001:db8:0:1200::1") == rrl.network("2001:db8:0:12ff:1::2")  # one /56
    assert rrl.network("2001:db8:0:1200::1") != rrl.network("2001:db8:0:1300::1")
    assert rrl.network("::ffff:198.51.100.9") == rrl.network("198.51.100.1")
    assert rrl.network("fe80::1%eth0") == rrl.network("fe80::2")
    v4_16 = RateLimiter(1, v4_prefix=16)
    assert v4_16.network("10.1.2.3") == v4_16.network("10.1.200.3")
    assert rrl.check("2001:db8::1") == SEND and rrl.check("2001:db8::2") == DROP  # slip 0


def test_table_is_bounded() -> None:
    clock = Clock()
    rrl = RateLimiter(5, max_networks=1000, clock=clock)
    for i in range(5000):
        rrl.check(f"10.{i // 256 % 256}.{i % 256}.1")
        clock.t += 0.001
    assert len(rrl) <= 1000


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(5, v4_prefix=33)


@pytest.fixture(scope="module", params=["unsigned", "signed"])
def rrl_port(
    valkey_url: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[int, bool]]:
    """The server, and whether it signs (DNSSEC; its flood then asks with DO)."""
    client = redis.Redis.from_url(valkey_url)
    client.flushdb()

    async def fill() -> None:
        store = await Store.connect(valkey_url)
        try:
            await populate(store)
        finally:
            await store.close()

    asyncio.run(fill())
    args = ["--rrl-rate", str(RATE), "--rrl-slip", "2"]
    if request.param == "signed":
        key = SigningKey.generate("rrl").write(tmp_path_factory.mktemp("rrl") / "dnssec.key")
        args += ["--dnssec-key", str(key)]
    try:
        with cli_server(valkey_url, *args) as port:
            yield port, request.param == "signed"
    finally:
        client.flushdb()
        client.close()


def _loopback_alias_works() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.1.1", 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(not _loopback_alias_works(), reason="cannot bind 127.0.1.1 (loopback)")
def test_flood_is_held_to_the_rate_and_others_are_answered(rrl_port: tuple[int, bool]) -> None:
    port, do = rrl_port
    query = dns.message.make_query(name(W127), "URI", use_edns=0, want_dnssec=do)
    wire = query.to_wire()
    # Let the answer be cached and the buckets refill before the flood.
    first = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
    assert len(first.answer) == (2 if do else 1)  # the URI RRset, and its RRSIG if signed
    time.sleep(1.5)

    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    flood.bind(("127.0.0.1", 0))
    flood.settimeout(0.2)
    full = truncated = 0
    oversized = 0
    done = threading.Event()

    def receive() -> None:
        nonlocal full, truncated, oversized
        quiet_until = None
        while True:
            try:
                r = flood.recv(4096)
            except TimeoutError:
                if done.is_set():
                    if quiet_until is None:
                        quiet_until = time.monotonic() + 0.5
                    elif time.monotonic() > quiet_until:
                        return
                continue
            if r[2] & 0x02:
                truncated += 1
                oversized += len(r) > len(wire)
            else:
                full += 1

    other_answers: list[dns.message.Message] = []

    def other_client() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.1.1", 0))
            s.settimeout(1.0)
            for i in range(20):
                q = dns.message.make_query(name(W127), "URI", use_edns=0, want_dnssec=do)
                q.id = 4000 + i
                s.sendto(q.to_wire(), ("127.0.0.1", port))
                with contextlib.suppress(TimeoutError):
                    other_answers.append(dns.message.from_wire(s.recv(4096)))
                time.sleep(0.1)

    rx = threading.Thread(target=receive)
    other = threading.Thread(target=other_client)
    rx.start()
    other.start()
    sent = 0
    t0 = time.monotonic()
    total = int(FLOOD_QPS * FLOOD_SECONDS)
    try:
        # 100 queries every 10 ms: 10,000 a second, bounded in count and in time.
        while sent < total and time.monotonic() - t0 < FLOOD_SECONDS + 1.0:
            tick = t0 + sent / FLOOD_QPS
            delay = tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in range(100):
                flood.sendto(wire, ("127.0.0.1", port))
            sent += 100
        elapsed = time.monotonic() - t0
    finally:
        done.set()
        rx.join(10)
        other.join(10)
        flood.close()

    print(f"flood: sent {sent} in {elapsed:.2f} s; full answers {full}, TC {truncated}")
    assert sent >= 0.9 * total and elapsed < FLOOD_SECONDS + 1.0
    # Held to the rate: the burst (one second's worth) plus the rate over the flood.
    assert full <= RATE * (elapsed + 0.5) + RATE, (full, truncated, sent, elapsed)
    assert full >= RATE * elapsed * 0.5, (full, truncated, sent)  # and answering at it
    # Slip 2: half the dropped replies come back empty with TC=1, never bigger than the query.
    dropped = sent - full
    assert 0.35 * dropped <= truncated <= 0.55 * dropped, (full, truncated, sent)
    assert oversized == 0
    # The other network was answered every time, in full.
    assert len(other_answers) == 20
    assert all(m.answer and not m.flags & dns.flags.TC for m in other_answers)
