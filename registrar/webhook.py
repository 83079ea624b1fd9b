"""Tell an applicant's webhook about a decision: POST, retry with backoff, never block.

A decision is made and stored first; only then is its status (the same JSON as
``GET /api/applications/{ticket}``: no contact) POSTed to the application's
webhook, in a task of its own. A failure (a connection error, a timeout, a
status other than 2xx) is retried after each of :data:`DELAYS`, then given up
with a log line: the status URL stays the record. Redirects are not followed
and the answer's body is not read. Deliveries pending at a stop are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

log = logging.getLogger("cityid.registrar.webhook")

#: Seconds to wait before each retry (so 1 + len(DELAYS) attempts at most).
DELAYS: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)
TIMEOUT = 10.0


class Webhooks:
    """The deliveries in flight of one registrar."""

    def __init__(self, delays: Sequence[float] = DELAYS, timeout: float = TIMEOUT) -> None:
        self.delays, self.timeout = tuple(delays), timeout
        self._tasks: set[asyncio.Task[bool]] = set()
        self._session: aiohttp.ClientSession | None = None

    def send(self, url: str, payload: dict[str, Any]) -> asyncio.Task[bool]:
        """Start delivering ``payload`` to ``url``; returns at once."""
        task = asyncio.get_running_loop().create_task(self._deliver(url, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, url: str, payload: dict[str, Any]) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        ticket = str(payload.get("ticket", ""))[:6]
        for attempt, delay in enumerate((0.0, *self.delays)):
            await asyncio.sleep(delay)
            try:
                async with self._session.post(url, json=payload, allow_redirects=False) as r:
                    if 200 <= r.status < 300:
                        return True
                    why = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as e:
                why = str(e) or type(e).__name__
            log.info("webhook for application %s…: attempt %d failed (%s)", ticket, attempt + 1,
                     why)  # fmt: skip
        log.warning("webhook for application %s…: given up after %d attempts", ticket,
                    1 + len(self.delays))  # fmt: skip
        return False

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
