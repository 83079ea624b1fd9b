"""Run a registrar: open its log, build the app, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import aiohttp
from aiohttp import web

from cityid.errors import ListenError
from cityid.httpedge import Edge, EdgeLimits, EdgeSite
from ledger.batcher import Cosign
from ledger.policy import Policy
from ledger.storage import Log
from ledger.witness import clients_from_policy, make_cosigner

from .app import make_app
from .config import RegistrarConfig
from .core import Registrar


def _cosigner(cfg: RegistrarConfig, reg_log: Log, session: aiohttp.ClientSession) -> Cosign | None:
    """The sequencer's hook that gathers the configured witnesses' quorum, if any."""
    if not cfg.witnesses or cfg.quorum == 0:
        return None
    policy = Policy.k_of_n(
        [reg_log.verifier],
        {key.name: key for _, key in cfg.witnesses},
        cfg.quorum,
        urls={key.name: url for url, key in cfg.witnesses},
    )
    clients = clients_from_policy(policy, session=session)
    return make_cosigner(reg_log, clients, policy, cfg.witness_timeout_ms / 1000)


async def start_registrar(
    cfg: RegistrarConfig, *, limits: EdgeLimits | None = None
) -> tuple[Registrar, web.AppRunner]:
    """Open and start serving on the configured address; for ``cityid up`` and tests.

    Connections and bodies are bounded by ``limits`` (:mod:`cityid.httpedge`);
    ``runner.cleanup()`` stops it all.
    """
    reg = Registrar.open(cfg)
    edge = Edge("registrar", limits)
    app = make_app(reg, edge)
    if cfg.witnesses:
        session = aiohttp.ClientSession()
        reg.sequencer.cosign = _cosigner(cfg, reg.log, session)

        async def close_session(_: web.Application) -> None:
            await session.close()

        app.on_cleanup.append(close_session)  # after the sequencer's last batch
    runner = web.AppRunner(app, handle_signals=False, **edge.runner_kwargs())
    await runner.setup()
    host, port = cfg.host_port
    try:
        await EdgeSite(runner, edge, host, port, reuse_address=True).start()
    except OSError as e:
        await runner.cleanup()
        raise ListenError(f"{host}:{port}", e.strerror or str(e)) from e
    return reg, runner


#: The cyclic garbage collector's thresholds in a registrar process. A bulk request
#: (a CSV's leaves) keeps about ten container objects per row alive until it is
#: applied, hundreds of thousands of them; with Python's defaults (700, 10, 10) the
#: collector scans them again and again, which costs more than a third of the
#: server's CPU on a 100,000-row upload. Garbage cycles are rare here (everything is
#: freed by reference counting), so collecting less often costs little memory.
GC_THRESHOLDS = (50_000, 20, 100)


def serve(cfg: RegistrarConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        import uvloop

        runner_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner_factory = asyncio.new_event_loop

    async def main() -> None:
        reg, runner = await start_registrar(cfg)
        host, port = cfg.host_port
        print(
            f"registrar {cfg.origin} hosting "
            f"{', '.join(str(a.prefix) for a in cfg.anchors)} on http://{host}:{port}/ "
            f"(log size {reg.log.size})",
            file=sys.stderr,
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("registrar: stopping (finishing the batch in flight)", file=sys.stderr)
        await runner.cleanup()

    with asyncio.Runner(loop_factory=runner_factory) as r:
        r.run(main())
