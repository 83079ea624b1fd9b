"""Group submitted entries into batches, each sealed by one published checkpoint.

A :class:`Sequencer` owns a writable :class:`ledger.storage.Log`. Submitters
await a :class:`Receipt`, which arrives only once their batch's checkpoint is
published (after witnesses cosigned it, when a ``cosign`` hook is given). A
batch closes when it holds ``max_batch`` entries, when its first submit has
waited ``max_delay`` seconds, or when a submit asks to ``flush``. File work runs
in a worker thread so the event loop keeps serving while the disk syncs;
batches are strictly sequential.

One submit's entries always land contiguously in one batch. If signing
succeeded but cosigning or publishing failed, the batch's entries are already
part of the signed tree: the log can never sign a conflicting tree, so they
will be published with the next checkpoint. The submitters still get the
exception (with a note saying so), because their receipt could not be issued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from cityid.errors import LedgerError

from .note import parse_note
from .storage import GC_STEP, Log
from .tiles import MAX_ENTRY_SIZE

log = logging.getLogger("cityid.ledger.batcher")

Cosign = Callable[[bytes], Awaitable[bytes]]


class NotPublishedError(LedgerError):
    """The batch is durable and signed, but its checkpoint could not be published yet."""

    rule = "not-published"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where a submit's entries landed, and the checkpoint that seals them."""

    first_index: int
    count: int
    checkpoint: bytes


@dataclass(slots=True)
class _Pending:
    entries: list[bytes]
    future: asyncio.Future[Receipt]
    arrived: float
    flush: bool = False


class Sequencer:
    """Batch entries into ``log``; see the module docstring for the guarantees."""

    def __init__(
        self,
        log: Log,
        *,
        max_batch: int = 1000,
        max_delay: float = 0.25,
        cosign: Cosign | None = None,
    ) -> None:
        if max_batch < 1 or max_delay < 0:
            raise LedgerError("max_batch must be >= 1 and max_delay >= 0", rule="bad-config")
        if not log.writable:
            raise LedgerError(f"{log.directory} is open read-only", rule="read-only")
        self.log = log
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.cosign = cosign
        self._queue: deque[_Pending] = deque()
        self._queued = 0
        self._flushes = 0  # queued submits that asked not to wait for more
        self._wakeup: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self._task is not None:
            return
        if self._closing:
            raise LedgerError("sequencer is closed", rule="sequencer-closed")
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ledger-sequencer")

    async def publish_pending(self) -> bool:
        """Cosign and publish a checkpoint signed before a restart but never published.

        Returns False, and leaves it pending, when that fails (witnesses away): its
        entries are in the log and are published with the next checkpoint.
        """
        note = self.log.pending_note
        if note is None and self.cosign is not None and self.log.size == 0:
            # An empty log's checkpoint is published bare when the log is created; until its
            # first batch, a resolver holding every log to a witness quorum would put it in
            # alarm. Witnesses cosign an empty tree, so have it cosigned now.
            bare = self.log.checkpoint_note
            if len(parse_note(bare)[1]) <= 1:
                note = bare
        if note is None:
            return True
        try:
            if self.cosign is not None:
                note = await self.cosign(note)
            await asyncio.to_thread(self.log.publish, note)
        except Exception as e:
            log.warning("%s: the checkpoint signed before the restart is not published yet: %s",
                        self.log.origin, e)  # fmt: skip
            return False
        return True

    async def aclose(self) -> None:
        """Stop accepting submits, commit what is queued, and wait for the last batch."""
        self._closing = True
        if self._task is None:
            return
        assert self._wakeup is not None and self._full is not None
        self._wakeup.set()
        self._full.set()
        await self._task

    async def __aenter__(self) -> Sequencer:
        self.start()
        return self

    async def __aexit__(
        self,
        t: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- submitting ------------------------------------------------------------------

    async def submit(self, entries: Sequence[bytes], *, flush: bool = False) -> Receipt:
        """Queue ``entries``; return once their batch's checkpoint is published.

        With ``flush``, their batch closes without waiting ``max_delay`` for more
        submits (a bulk write that is worth a checkpoint of its own).
        """
        if self._closing or self._task is None:
            state = "closed" if self._closing else "not started"
            raise LedgerError(f"sequencer is {state}", rule="sequencer-closed")
        if not entries:
            raise LedgerError("cannot submit an empty list of entries", rule="empty-batch")
        for i, e in enumerate(entries):
            if len(e) > MAX_ENTRY_SIZE:
                raise LedgerError(
                    f"entry {i} is {len(e)} bytes; log entries are at most {MAX_ENTRY_SIZE}",
                    rule="leaf-too-large",
                )
        loop = asyncio.get_running_loop()
        pending = _Pending([bytes(e) for e in entries], loop.create_future(), loop.time(), flush)
        self._queue.append(pending)
        self._queued += len(entries)
        self._flushes += flush
        assert self._wakeup is not None and self._full is not None
        self._wakeup.set()
        if self._queued >= self.max_batch or flush:
            self._full.set()
        # Shielded: a cancelled submitter does not un-append its entries.
        return await asyncio.shield(pending.future)

    # --- the batching task ----------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None and self._full is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._idle()
                    continue
                deadline = self._queue[0].arrived + self.max_delay
                while self._queued < self.max_batch and not self._closing and not self._flushes:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
                await self._commit(self._take())
        finally:
            err = LedgerError("sequencer stopped before this batch", rule="sequencer-closed")
            while self._queue:
                p = self._queue.popleft()
                if not p.future.done():
                    p.future.set_exception(err)

    async def _idle(self) -> None:
        """Wait for a submit; meanwhile delete superseded partial tiles as they fall due.

        Publishing deletes them too, but an idle log would otherwise keep the
        last grace period's leftovers until its next batch.
        """
        assert self._wakeup is not None
        due = self.log.garbage_due_in()
        if due is None:
            await self._wakeup.wait()
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), due)
        except TimeoutError:
            await asyncio.to_thread(self.log.collect_garbage, GC_STEP)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].entries) <= self.max_batch):
            p = self._queue.popleft()
            batch.append(p)
            count += len(p.entries)
            self._flushes -= p.flush
        self._queued -= count
        return batch

    def _stage(self, entries: list[bytes]) -> tuple[int, bytes]:
        base = self.log.signed_size
        return base, self.log.stage(entries)

    async def _commit(self, batch: list[_Pending]) -> None:
        entries = [e for p in batch for e in p.entries]
        staged: tuple[int, bytes] | None = None
        try:
            staged = await asyncio.to_thread(self._stage, entries)
            note = staged[1]
            if self.cosign is not None:
                note = await self.cosign(note)
            await asyncio.to_thread(self.log.publish, note)
        except BaseException as e:
            err: BaseException = e
            if staged is not None and isinstance(e, Exception):
                # Signed entries cannot be taken back (that would sign a conflicting
                # tree later): the caller must read this as "appended, not yet
                # published", not as "refused".
                base = staged[0]
                err = NotPublishedError(
                    f"entries {base}..{base + len(entries) - 1} are signed into the log but "
                    f"not yet published ({e}); they will be published with the next "
                    "checkpoint",
                    rule="not-published",
                )
                err.__cause__ = e
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
            if not isinstance(e, Exception):
                raise
            return
        index = staged[0]
        for p in batch:
            if not p.future.done():
                p.future.set_result(Receipt(index, len(p.entries), note))
            index += len(p.entries)
