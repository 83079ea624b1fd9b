"""Run the resolver's HTTP front: uvloop, N worker processes on one port, clean stops.

Each worker is a separate process (the GIL makes threads useless for this)
with its own listening socket on the same address (SO_REUSEPORT: the kernel
spreads connections across them by a hash of the 4-tuple, no accept lock), its
own store connection and its own cache. The supervisor (this process)
reserves the port first, so ``--listen 127.0.0.1:0`` gets one port for all,
starts the workers, optionally runs sync (one leader per Redis: the others
wait on the lock), restarts a worker that dies, and on SIGTERM or SIGINT asks
every worker to finish: stop accepting, answer the requests in flight, close
keep-alive connections, exit.

Metrics are shared through one anonymous memory file mapped by every worker
(see :class:`resolver.http.Metrics`), so ``/metrics`` from any worker is the
whole server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import mmap
import os
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field

from aiohttp import web

from cityid.errors import ListenError
from cityid.httpedge import RefusalLog
from cityid.valkey import redact

from . import workers
from .fastpath import FastFront
from .http import Metrics, Resolver, ServeOptions, make_app
from .store import Store

log = logging.getLogger("cityid.resolver.server")

SHUTDOWN_TIMEOUT = 10.0


_protocol_log = logging.getLogger("cityid.resolver.protocol")


def _refusal_log(resolver: Resolver) -> RefusalLog:
    """aiohttp's protocol logger, and the fast path's: a malformed request is one
    rate-limited line, not a traceback (a scanner sending garbage must not fill the
    log), and is counted in ``/metrics`` as ``route="other",status="400"`` when it was
    answered."""

    def count(reason: str, answered: bool) -> None:
        if answered:
            resolver.metrics.request("other", 400)

    return RefusalLog(_protocol_log, on_refused=count)


BACKLOG = 2048


def listen_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound (not yet listening) TCP socket; ``reuse_port`` to share the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ListenError(f"{host}:{port}", e.strerror or str(e)) from e
    sock.setblocking(False)
    return sock


class HttpServer:
    """One process's HTTP listener: the fast path in front of aiohttp, or aiohttp alone."""

    def __init__(
        self,
        resolver: Resolver,
        runner: web.AppRunner,
        server: asyncio.AbstractServer | None,
        front: FastFront | None,
        port: int,
    ) -> None:
        self.resolver = resolver
        self.runner = runner
        self.server = server
        self.front = front
        self.port = port

    async def close(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop accepting, let answers in flight finish, close every connection."""
        if self.server is not None:
            self.server.close()
        if self.front is not None:
            await self.front.close(timeout)
        await self.runner.cleanup()  # aiohttp's own and the handed-off connections


async def start_http(
    resolver: Resolver,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    fast: bool | None = None,
) -> HttpServer:
    """Serve ``resolver`` on ``sock`` (or a new socket on ``host:port``) in this loop."""
    fast = resolver.options.fast_path if fast is None else fast
    sock = sock or listen_socket(host, port)
    bound_port = int(sock.getsockname()[1])
    refusals = _refusal_log(resolver)
    runner = web.AppRunner(
        make_app(resolver),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        logger=refusals,
    )
    await runner.setup()
    if not fast:
        site = web.SockSite(runner, sock, backlog=BACKLOG)
        await site.start()
        return HttpServer(resolver, runner, None, None, bound_port)
    assert runner.server is not None
    front = FastFront(resolver, runner.server, refusals)
    front.start()
    sock.listen(BACKLOG)
    server = await asyncio.get_running_loop().create_server(front.protocol, sock=sock)
    return HttpServer(resolver, runner, server, front, bound_port)


# -- worker processes -------------------------------------------------------------------


@dataclass(slots=True)
class WorkerSpec:
    """Everything a worker needs, picklable (workers are spawned, not forked)."""

    redis_url: str
    host: str
    port: int
    options: ServeOptions = field(default_factory=ServeOptions)
    workers: int = 1
    index: int = 0
    metrics_path: str = ""
    redis_cluster: bool = False
    redis_timeout: float = 2.0
    meta_ttl: float = 1.0


def _metrics(spec: WorkerSpec) -> Metrics:
    if not spec.metrics_path:
        return Metrics()
    with open(spec.metrics_path, "r+b") as f:
        region = mmap.mmap(f.fileno(), 8 * Metrics.ROW * spec.workers)
    return Metrics(region, spec.index, spec.workers)


async def run_worker(spec: WorkerSpec, stop: asyncio.Event | None = None) -> None:
    """One serving process: connect, listen (SO_REUSEPORT), serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    store = await Store.connect(
        spec.redis_url,
        cluster=spec.redis_cluster,
        meta_ttl=spec.meta_ttl,
        timeout=spec.redis_timeout,
    )
    resolver = Resolver(
        store, spec.options, metrics=_metrics(spec), base_url=f"http://{spec.host}:{spec.port}"
    )
    try:
        sock = listen_socket(spec.host, spec.port, reuse_port=True)
        server = await start_http(resolver, sock=sock)
        gc_task = loop.create_task(keep_gc_young())
        await stop.wait()
        gc_task.cancel()
        await server.close()
    finally:
        await resolver.close()
        await store.close()


async def keep_gc_young(period: float = 1.0) -> None:
    """Keep the cyclic GC off the cache: collect young objects, then freeze the survivors.

    A worker's cache holds millions of long-lived objects that never form
    cycles. Left to itself, CPython's full collection walks all of them each
    time enough new ones have accumulated: pauses that grow with the cache and
    showed up as p99 latencies of hundreds of ms while a cache filled. Each
    second this collects the young generations (where request-scoped cycles
    die) and moves what survived into the permanent generation, which
    collections never scan; reference counting still frees it when dropped.
    """
    gc.freeze()
    while True:
        await asyncio.sleep(period)
        gc.collect(1)
        gc.freeze()


def _worker_entry(spec: WorkerSpec) -> None:
    workers.worker_main(lambda: run_worker(spec))


def _wait_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return True
        time.sleep(0.05)
    return False


def serve(
    spec: WorkerSpec,
    *,
    background: workers.Background | None = None,
) -> None:
    """Run ``spec.workers`` workers until SIGTERM/SIGINT (:func:`workers.run`).

    ``background`` starts work for the supervisor itself (sync) and returns
    the coroutine function that stops it.
    """
    # Hold the address (bound, never listening: the kernel only balances among
    # listening sockets) so port 0 resolves once, for every worker.
    reserve = listen_socket(spec.host, spec.port, reuse_port=True)
    port = int(reserve.getsockname()[1])
    tmp = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
        prefix="cityid-metrics-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    tmp.truncate(8 * Metrics.ROW * spec.workers)

    def ready() -> None:
        mode = "fast path + aiohttp" if spec.options.fast_path else "aiohttp"
        if _wait_listening(spec.host, port, 30.0):
            print(
                f"resolver: http://{spec.host}:{port}/ with {spec.workers} worker process(es) "
                f"({mode}, uvloop), Redis {redact(spec.redis_url)}",
                file=sys.stderr,
                flush=True,
            )

    spawn = workers.spawner(
        _worker_entry,
        "cityid-resolver",
        lambda i: dataclasses.replace(spec, port=port, index=i, metrics_path=tmp.name),
    )
    try:
        workers.run(
            "resolver",
            spec.workers,
            spawn,
            ready=ready,
            grace=SHUTDOWN_TIMEOUT + 5,
            background=background,
        )
    finally:
        workers.stop_resource_tracker()
        reserve.close()
        tmp.close()
