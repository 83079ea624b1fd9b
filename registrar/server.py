"""Run a registrar: open its log, build the app, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from cityid.errors import CityIdError

from .app import make_app
from .config import RegistrarConfig
from .core import Registrar


def _cosigner(cfg: RegistrarConfig, reg_log: object) -> object | None:
    if not cfg.witnesses:
        return None
    from ledger.policy import Policy
    from ledger.witness import make_cosigner

    policy = Policy.k_of_n(reg_log.verifier, [k for _, k in cfg.witnesses], cfg.quorum)  # type: ignore[attr-defined]
    return make_cosigner(reg_log, cfg.witnesses, policy, cfg.witness_timeout_ms / 1000)


async def start_registrar(cfg: RegistrarConfig) -> tuple[Registrar, web.AppRunner]:
    """Open and start serving on the configured address; for ``cityid up`` and tests."""
    reg = Registrar.open(cfg)
    if cfg.witnesses:
        reg.sequencer.cosign = _cosigner(cfg, reg.log)  # type: ignore[assignment]
    runner = web.AppRunner(make_app(reg), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = cfg.host_port
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise CityIdError(
            f"cannot listen on {host}:{port}: {e.strerror}; choose another with --listen",
            rule="listen",
        ) from e
    return reg, runner


def serve(cfg: RegistrarConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
