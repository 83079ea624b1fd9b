"""Worker processes for the resolver's servers: spawn, restart, stop cleanly.

HTTP and DNS scale the same way: N processes share one port (SO_REUSEPORT) and a
supervisor keeps them alive. A worker that dies is restarted; workers that keep
dying (more than five restarts per worker in a minute) stop the service rather
than spin. SIGTERM or SIGINT stop every worker with SIGTERM, give them
``grace`` seconds to finish what is in flight, then kill what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from multiprocessing.process import BaseProcess
from typing import Any

from cityid.lifetime import die_with_parent

log = logging.getLogger("cityid.resolver.workers")

RESTART_WINDOW = 60.0  # seconds over which restarts are counted
RESTARTS_PER_WORKER = 5

#: Starts the supervisor's own work (sync, for the HTTP server) and returns what stops it.
Background = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop

        return uvloop.new_event_loop  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop


def worker_main(main: Callable[[], Awaitable[None]]) -> None:
    """A worker process's body: die with the supervisor, run ``main`` on uvloop, and
    leave quietly on SIGINT (the supervisor sends SIGTERM, which ``main`` handles)."""
    die_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory()) as r:
        r.run(main())


def spawner(
    target: Callable[[Any], None], name: str, spec_for: Callable[[int], Any]
) -> Callable[[int], BaseProcess]:
    """``spawn(i)``: start worker ``i`` running ``target(spec_for(i))`` in a fresh interpreter."""
    ctx = multiprocessing.get_context("spawn")

    def spawn(i: int) -> BaseProcess:
        p = ctx.Process(target=target, args=(spec_for(i),), name=f"{name}-{i}", daemon=False)
        p.start()
        return p

    return spawn


def stop_workers(procs: list[BaseProcess], grace: float) -> None:
    """SIGTERM every live worker, wait up to ``grace`` seconds for them, then kill."""
    for p in procs:
        if p.is_alive() and p.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(5)


def stop_resource_tracker() -> None:
    """Stop and reap the helper process that every ``spawn`` start leaves behind.

    multiprocessing starts it with the first spawned child and lets it exit only
    when this process does, so it would outlive us for a moment, reparented, in
    our process group: a caller that waits for the group to empty (a terminal, a
    service manager, the tour test) would see a straggler. Call once every spawned
    child has been stopped.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(OSError):
            stop()


def run(
    label: str,
    count: int,
    spawn: Callable[[int], BaseProcess],
    *,
    ready: Callable[[], None],
    grace: float,
    background: Background | None = None,
) -> None:
    """Start ``count`` workers, call ``ready()``, supervise until SIGTERM/SIGINT.

    ``label`` prefixes what is printed ("resolver", "resolver dns").
    """

    # Until the supervisor's loop takes over the signals, SIGTERM/SIGINT unwind
    # through the finally below, which stops every worker already started.
    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, interrupted)
    procs: list[BaseProcess] = []

    async def supervise() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stop_background = await background() if background is not None else None
        restarts: list[float] = []
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                for i, p in enumerate(procs):
                    if stop.is_set() or p.is_alive():
                        continue
                    now = time.monotonic()
                    restarts[:] = [t for t in restarts if now - t < RESTART_WINDOW] + [now]
                    if len(restarts) > RESTARTS_PER_WORKER * count:
                        print(f"{label}: workers keep dying; stopping", file=sys.stderr)
                        stop.set()
                        break
                    log.warning("%s worker %d exited (%s); restarting", label, i, p.exitcode)
                    procs[i] = spawn(i)
            print(f"{label}: stopping (finishing work in flight)", file=sys.stderr, flush=True)
            await asyncio.to_thread(stop_workers, procs, grace)
        finally:
            if stop_background is not None:
                await stop_background()

    try:
        procs += [spawn(i) for i in range(count)]
        ready()
        with asyncio.Runner(loop_factory=loop_factory()) as r:
            r.run(supervise())
    except KeyboardInterrupt:
        print(f"{label}: interrupted while starting; stopping", file=sys.stderr, flush=True)
    finally:
        stop_workers(procs, grace)


RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds before each restart, then the last


class Child:
    """One spawned process kept alive from an event loop: for a host that runs the
    resolver's parts beside other work (``cityid up``).

    ``target(*args)`` runs in a fresh interpreter (nothing inherited but ``args``)
    that dies with its parent. When it exits it is started again, after a delay
    that grows while it keeps dying (:data:`RESTART_DELAYS`) and starts over once it
    has stayed up a minute.
    """

    def __init__(self, name: str, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.name = name
        self._target = target
        self._args = args
        self._proc: BaseProcess | None = None
        self._watch: asyncio.Task[None] | None = None
        self._since = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def spawn(self) -> BaseProcess:
        """Start the process (without supervising it yet)."""
        ctx = multiprocessing.get_context("spawn")
        self._proc = ctx.Process(target=self._target, args=self._args, name=self.name)
        self._proc.start()
        self._since = time.monotonic()
        return self._proc

    def supervise(self) -> None:
        """Restart the process whenever it exits, until :meth:`stop`."""
        self._watch = asyncio.get_running_loop().create_task(self._supervise())

    def start(self) -> None:
        self.spawn()
        self.supervise()

    async def _supervise(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(0.5)
            proc = self._proc
            if proc is None or proc.is_alive():
                if time.monotonic() - self._since > 60:
                    failures = 0  # up a minute: the next death starts the delays over
                continue
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            log.warning("%s exited (%s); restarting in %.1f s", self.name, proc.exitcode, delay)
            await asyncio.sleep(delay)
            failures += 1
            self.restarts += 1
            self.spawn()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (the process finishes what is in flight), then SIGKILL after ``grace``."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        proc, self._proc = self._proc, None
        if proc is not None:
            await asyncio.to_thread(stop_workers, [proc], grace)
