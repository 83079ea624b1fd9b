"""The registrar's engine: check operations, sequence them into the log, acknowledge.

The path of a write: decode the leaf (strict, canonical, signature verified) ->
check and apply it to the in-memory namespace (authority, versions) -> hand the
leaves to the sequencer -> await the batch's checkpoint (durable, cosigned) ->
return receipts. The checks and the hand-over happen with no ``await`` in
between, so the namespace's order is the log's order. A request's operations
are one transaction: all accepted or none. A streamed request's leaves are
decoded as they arrive (``app.read_leaf_stream``: stateless) and handed to
``submit`` already decoded, once the whole body is in.

The namespace is rebuilt from the log on start, so the log is the only state.
If a batch fails to be written, the registrar refuses further writes until it
is restarted and has replayed its log: what the log does not hold never happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cityid.authority import Namespace
from cityid.errors import CityIdError, LedgerError, NotFoundError, OperationError
from cityid.identifiers import Identifier
from cityid.keys import SigningKey
from cityid.ops import SignedOperation, key_fingerprint
from ledger.batcher import NotPublishedError, Sequencer
from ledger.storage import Log

from .config import RegistrarConfig

log = logging.getLogger("cityid.registrar")

MAX_OPS_PER_REQUEST = 10_000
#: The streamed form of ``POST /api/ops``: msgpack bin objects, one per leaf, then nil.
LEAVES = "application/x-cityid-leaves"
END_OF_LEAVES = b"\xc0"


def not_found(ident: Identifier, version: int, writer: bytes) -> NotFoundError:
    """The refusal for changing what does not exist (never created, or deleted)."""
    who = f" (writer key {key_fingerprint(writer)})"
    if version == 0:
        return NotFoundError(f"{ident} does not exist{who}", rule="not-found")
    return NotFoundError(f"{ident} was deleted (version {version}){who}", rule="deleted")


def too_many_ops(count: int) -> OperationError:
    return OperationError(
        f"{count} operations in one request (at most {MAX_OPS_PER_REQUEST})",
        rule="too-many-ops",
    )


@dataclass(frozen=True, slots=True)
class OpReceipt:
    """Where an acknowledged operation lives: its leaf index and the checkpoint."""

    index: int
    kind: str
    target: str
    checkpoint: bytes

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "kind": self.kind, "target": self.target}


class Registrar:
    def __init__(self, config: RegistrarConfig, log_store: Log, sequencer: Sequencer) -> None:
        self.config = config
        self.log = log_store
        self.sequencer = sequencer
        self.namespace = self._fresh_namespace()
        self.broken: str | None = None
        self.rebuild()

    @classmethod
    def open(cls, config: RegistrarConfig) -> Registrar:
        """Open (or create) the log and replay it; witnesses are wired by the server."""
        key: SigningKey = config.log_key()
        log_dir = config.log_dir
        if (log_dir / "checkpoint").exists():
            # With witnesses, a checkpoint signed but not published before a restart waits
            # for their cosignatures (start() asks them) instead of going out without them.
            store = Log.open(log_dir, key, publish_pending=config.quorum == 0)
        else:
            store = Log.create(log_dir, key, config.origin)
        if store.origin != config.origin:
            raise CityIdError(
                f"log in {log_dir} has origin {store.origin!r} but the config says "
                f"{config.origin!r}",
                rule="origin-mismatch",
            )
        seq = Sequencer(
            store,
            max_batch=config.max_batch,
            max_delay=config.max_delay_ms / 1000,
        )
        return cls(config, store, seq)

    def _fresh_namespace(self) -> Namespace:
        ns = Namespace()
        for anchor in self.config.anchors:
            ns.add_anchor(anchor.prefix, anchor.key.public_key, self.config.origin)
        return ns

    def rebuild(self) -> None:
        """Replay the log into a fresh namespace (on start, and after a failed batch)."""
        ns = self._fresh_namespace()
        count = 0
        # Up to the signed size: entries waiting for cosignatures are in the log already.
        for index, leaf in enumerate(self.log.entries(0, self.log.signed_size, signed=True)):
            try:
                ns.apply(SignedOperation.decode(leaf), log=self.config.origin)
            except CityIdError as e:
                # The log is signed history: an entry that no longer checks is a bug
                # or tampering, and the registrar must not write on top of it.
                raise CityIdError(
                    f"log entry {index} does not replay: {e.message}", rule="replay"
                ) from e
            count += 1
        self.namespace = ns
        log.info("replayed %d operations from %s", count, self.log.origin)

    async def start(self) -> None:
        await self.sequencer.publish_pending()
        self.sequencer.start()

    async def aclose(self) -> None:
        """Commit what is queued, then release the log (a restart in this process reopens it)."""
        await self.sequencer.aclose()
        self.log.close()

    def version(self, ident: Identifier) -> tuple[int, bool]:
        return self.namespace.version(ident)

    def admit(
        self, leaves: Sequence[bytes], decoded: Sequence[SignedOperation] | None = None
    ) -> list[SignedOperation]:
        """Decode and apply ``leaves`` to the namespace, all or nothing (no await).

        ``decoded``, when given, is ``leaves`` already decoded (and so checked:
        canonical, values valid, signatures verified) by ``SignedOperation.decode``,
        as a streamed request decodes its leaves while they arrive.
        """
        if not leaves:
            raise OperationError("no operations in the request", rule="empty")
        if len(leaves) > MAX_OPS_PER_REQUEST:
            raise too_many_ops(len(leaves))
        if decoded is not None and len(decoded) != len(leaves):
            raise OperationError("decoded operations do not match the leaves", rule="internal")
        ops: list[SignedOperation] = []
        with self.namespace.transaction():
            for n, leaf in enumerate(leaves):
                try:
                    signed = SignedOperation.decode(leaf) if decoded is None else decoded[n]
                    self.namespace.apply(signed, log=self.config.origin)
                except CityIdError as e:
                    if len(leaves) > 1:
                        e.args = (f"operation {n}: {e.message}",)
                    raise
                ops.append(signed)
        return ops

    async def submit(
        self,
        leaves: Sequence[bytes],
        decoded: Sequence[SignedOperation] | None = None,
        *,
        flush: bool = False,
    ) -> list[OpReceipt]:
        """Admit ``leaves`` (see ``admit``) and wait until their batch is published.

        ``flush`` seals their batch at once rather than after the batching delay
        (a bulk upload, which is worth a checkpoint of its own).
        """
        if self.broken is not None:
            raise LedgerError(self.broken, rule="registrar-stopped")
        ops = self.admit(leaves, decoded)
        try:
            receipt = await self.sequencer.submit(list(leaves), flush=flush)
        except asyncio.CancelledError:
            raise
        except NotPublishedError:
            # In the log, signed, and published with the next checkpoint (e.g. once
            # witnesses answer again): the namespace already agrees with the log.
            raise
        except Exception as e:
            # Operations admitted after this batch were checked against a state that
            # may not be in the log: accept nothing more until a restart replays it.
            self.broken = (
                f"a ledger write failed ({e}); writes are refused until the registrar "
                "restarts and replays its log"
            )
            log.exception("batch failed; refusing writes until restart")
            raise LedgerError(self.broken, rule="registrar-stopped") from e
        return [
            OpReceipt(receipt.first_index + i, s.op.kind, s.op.target, receipt.checkpoint)
            for i, s in enumerate(ops)
        ]

    @property
    def log_dir(self) -> Path:
        return self.config.log_dir
