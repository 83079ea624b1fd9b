"""The resolver's HTTP and DNS fronts in one process of their own, for a one-machine host.

``cityid up`` runs registrars and witnesses in its own event loop; a registrar
taking a million-row CSV checks and seals it there. The fronts answer from a
process of their own (:class:`FrontsProcess`), so nothing the registrars or sync
do holds a lookup up, and a front that dies is started again without them.
(``resolver serve`` and ``resolver dns serve`` are the same fronts, in pools.)

The child binds its sockets and says, on a pipe, whether it listens or which
address it could not take: :meth:`FrontsProcess.start` raises
:class:`~cityid.errors.ListenError` for the caller to name the setting to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from cityid.errors import CityIdError, ListenError

from . import workers


@dataclass(frozen=True, slots=True)
class FrontsSpec:
    """Everything the fronts process needs, picklable."""

    redis_url: str
    http: tuple[str, int]
    dns: tuple[str, int]
    apex: str
    roots: tuple[str, ...]
    identity: str  # CH TXT id.server
    base_url: str  # where 2D codes point
    dnssec_key: str = ""  # the DNSSEC signing key file; "" = unsigned


def _main(spec: FrontsSpec, said: Connection | None) -> None:
    workers.worker_main(lambda: _run(spec, said))


async def _run(spec: FrontsSpec, said: Connection | None) -> None:
    from cityid.keys import SigningKey

    from .dns.answers import ZoneConfig
    from .dns.server import DnsServer, start_dns
    from .dns.signer import Signer
    from .http import Resolver
    from .server import keep_gc_young, start_http
    from .store import Store

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await Store.connect(spec.redis_url)
    resolver = Resolver(store, base_url=spec.base_url)
    closers: list[Any] = [store.close, resolver.close]
    try:
        which = "http"
        try:
            http = await start_http(resolver, *spec.http)
            closers.insert(0, http.close)
            which = "dns"
            signer = Signer(SigningKey.read(spec.dnssec_key)) if spec.dnssec_key else None
            key = signer.zone_key if signer is not None else None
            zone = ZoneConfig.make(spec.apex, spec.roots, identity=spec.identity, key=key)
            dns = await start_dns(DnsServer(store, zone, signer=signer), *spec.dns)
            closers.insert(0, dns.close)
        except ListenError as e:
            if said is not None:
                said.send((which, e.address, e.reason))
            return
        if said is not None:
            said.send(("ok", "", ""))
            said.close()
        gc_task = loop.create_task(keep_gc_young())
        await stop.wait()
        gc_task.cancel()
    finally:
        for close in closers:
            with contextlib.suppress(Exception):
                await close()


class FrontsProcess(workers.Child):
    """A supervised child process answering HTTP and DNS (see the notes)."""

    def __init__(self, spec: FrontsSpec) -> None:
        super().__init__("cityid-resolver", _main, (spec, None))
        self.spec = spec

    async def start_listening(self, timeout: float = 60.0) -> None:
        """Start the process, and return once it listens (or raise why it cannot)."""
        import multiprocessing

        ours, theirs = multiprocessing.get_context("spawn").Pipe(duplex=False)
        self._args = (self.spec, theirs)
        proc = self.spawn()
        theirs.close()
        try:
            got = await asyncio.to_thread(_receive, ours, timeout)
        finally:
            ours.close()
        self._args = (self.spec, None)  # a restart needs no one to tell
        if got is None:
            await self.stop()
            raise CityIdError(
                f"the resolver's fronts did not start within {timeout:.0f} s "
                f"(exit code {proc.exitcode})",
                rule="start-failed",
            )
        which, address, reason = got
        if which != "ok":
            await self.stop()
            raise ListenError(address, reason, which=which)
        self.supervise()


def _receive(conn: Connection, timeout: float) -> tuple[str, str, str] | None:
    if not conn.poll(timeout):
        return None
    try:
        got: tuple[str, str, str] = conn.recv()
    except EOFError:  # the child died before saying anything
        return None
    return got


__all__ = ["FrontsProcess", "FrontsSpec"]
