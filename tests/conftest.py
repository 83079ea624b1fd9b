"""Shared fixtures: real servers on loopback, never fakes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cityid.valkey import EmbeddedValkey


@pytest.fixture(scope="session")
def valkey_url() -> Iterator[str]:
    """A private Valkey on a free loopback port for the whole session (or REDIS_URL)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    with EmbeddedValkey() as server:
        yield server.url


@pytest.fixture
def redis_db(valkey_url: str) -> Iterator[str]:
    """The session server, flushed before and after the test."""
    import redis

    client = redis.Redis.from_url(valkey_url)
    client.flushdb()
    yield valkey_url
    client.flushdb()
    client.close()
