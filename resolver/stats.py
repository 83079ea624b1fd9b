"""Counters of the processes that serve no ``/metrics`` of their own: sync and DNS workers.

Each such process writes its counters into one Redis hash, :data:`STATS_KEY`
(one key: no cross-slot command on a cluster), every :data:`INTERVAL` seconds:
field ``<kind>/<instance>`` -> msgpack ``[unix time, {name: value}]``. An HTTP
worker's ``/metrics`` reads the hash once per scrape and exports every entry
fresher than :data:`STALE` seconds with an ``instance`` label, so one scrape of
any resolver shows every sync and DNS process that shares its Redis. A process
that stops removes its field; the reader drops fields a killed one left behind.

Pure encoding and formatting here, plus two thin async shells (publish, read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from .layout import REDIS_ERRORS

log = logging.getLogger("cityid.resolver.stats")

STATS_KEY = "meta:stats"
INTERVAL = 5.0  # seconds between two writes of one process's counters
STALE = 30.0  # entries older than this are left out (their process is gone)

Metrics = Mapping[str, int | float]
Entry = tuple[str, str, dict[str, int | float]]  # (kind, instance, metrics)


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def encode(metrics: Metrics, now: float) -> bytes:
    return msgpack.packb([now, dict(metrics)], use_bin_type=True)


def decode(data: bytes) -> tuple[float, dict[str, int | float]]:
    at, values = msgpack.unpackb(data, raw=False)
    if not isinstance(values, dict):
        raise ValueError("stats entry is not a map")
    return float(at), {str(k): v for k, v in values.items() if isinstance(v, int | float)}


def _with_instance(name: str, instance: str) -> str:
    label = 'instance="' + instance.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if name.endswith("}"):
        return f"{name[:-1]},{label}}}"
    return f"{name}{{{label}}}"


def prometheus_lines(entries: list[Entry]) -> list[str]:
    """``cityid_<name>{...,instance="..."} value`` lines, grouped by metric family.

    A name already starting with its kind (``sync_writes_total``) keeps it; DNS
    counters (``queries``) become ``cityid_dns_queries``.
    """
    samples: list[tuple[str, str]] = []
    for kind, instance, values in entries:
        for name, value in values.items():
            full = "cityid_" + (name if name.startswith(f"{kind}_") else f"{kind}_{name}")
            samples.append((full.split("{", 1)[0], f"{_with_instance(full, instance)} {value}"))
    samples.sort()  # a family's samples together, as the text format requires
    return [line for _, line in samples]


async def publish(redis: Any, kind: str, metrics: Callable[[], Metrics]) -> None:
    """Write ``metrics()`` every :data:`INTERVAL` s until cancelled, then remove the entry."""
    field = f"{kind}/{instance_name()}"
    me = asyncio.current_task()
    try:
        while True:
            with contextlib.suppress(*REDIS_ERRORS):
                await redis.hset(STATS_KEY, field, encode(metrics(), time.time()))
            if me is not None and me.cancelling():
                break  # the Redis client swallowed our cancellation: stop anyway
            await asyncio.sleep(INTERVAL)
    finally:
        # Best effort and bounded: a stop must not wait on a Redis that is going away.
        with contextlib.suppress(*REDIS_ERRORS, RuntimeError, TimeoutError):
            await asyncio.wait_for(redis.hdel(STATS_KEY, field), 1.0)


async def read(redis: Any, now: float | None = None) -> list[Entry]:
    """Every fresh entry as ``(kind, instance, metrics)``; stale ones are deleted."""
    now = time.time() if now is None else now
    raw = await redis.hgetall(STATS_KEY)
    out: list[Entry] = []
    stale = []
    for field, data in sorted(raw.items()):
        name = field.decode() if isinstance(field, bytes) else str(field)
        kind, _, instance = name.partition("/")
        try:
            at, values = decode(data)
        except (ValueError, TypeError, msgpack.UnpackException):
            stale.append(field)
            continue
        if now - at > STALE:
            stale.append(field)
        else:
            out.append((kind, instance, values))
    if stale:
        with contextlib.suppress(*REDIS_ERRORS):
            await redis.hdel(STATS_KEY, *stale)
    return out
