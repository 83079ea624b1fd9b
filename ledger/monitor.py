"""Split-view detection: compare the checkpoints a log shows different observers.

A log that shows one resolver one history and another resolver another (a
split view) signs two checkpoints that cannot both be true. Witnesses stop this
at the source, as long as resolvers insist on their cosignatures; this monitor
is the independent check a federation runs on top (c2sp.org's "gossip"): it
fetches the log's checkpoint as each observer is served it (each observer's own
URL for the log), keeps those the log's key really signed, and proves, from the
larger tree's tiles, that each smaller checkpoint is a prefix of each larger one.
Two signed checkpoints that fail that proof are evidence of a fork, signed by the
log itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from cityid.errors import CityIdError, ForkError
from cityid.keys import VerifierKey

from .checkpoint import Checkpoint
from .client import LogClient


@dataclass(frozen=True)
class View:
    """Where ``observer`` reads the log: its tlog-tiles URL."""

    observer: str
    url: str


@dataclass(frozen=True)
class Divergence:
    """Two observers were shown signed checkpoints of one log that do not extend each other."""

    origin: str
    first: str
    second: str
    reason: str

    def __str__(self) -> str:
        return f"split view of {self.origin}: {self.first} and {self.second}: {self.reason}"


@dataclass(frozen=True)
class Comparison:
    checkpoints: dict[str, Checkpoint]  # observer -> the checkpoint it was shown
    unreadable: dict[str, str]  # observer -> why its view could not be read or verified
    divergences: list[Divergence]


async def compare(
    views: Sequence[View], vkey: VerifierKey, session: aiohttp.ClientSession | None = None
) -> Comparison:
    """Fetch each view's checkpoint (signed by ``vkey``) and check every pair for a fork.

    Only the log's signature is required of a checkpoint here: a fork the
    witnesses refused is still a fork, and the log's signature on it is the
    evidence.
    """
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        clients = {v.observer: LogClient(v.url, vkey, session, timeout=10) for v in views}
        seen: dict[str, Checkpoint] = {}
        unreadable: dict[str, str] = {}
        for observer, client in clients.items():
            try:
                seen[observer], _ = await client.fetch_checkpoint()
            except CityIdError as e:
                unreadable[observer] = e.message
        found = []
        for a, b in itertools.combinations(sorted(seen, key=lambda o: seen[o].size), 2):
            try:
                await clients[b].check_consistency(seen[a], seen[b])
            except ForkError as e:
                found.append(Divergence(seen[b].origin, a, b, e.message))
            except CityIdError as e:
                unreadable[b] = e.message
        return Comparison(seen, unreadable, found)
    finally:
        if own:
            await session.close()
