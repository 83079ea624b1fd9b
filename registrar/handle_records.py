"""The current record of an identifier, read back from the registrar's own log.

The namespace keeps versions, not records (they live in the log). The Handle API
needs records: to answer ``GET /api/handles`` on the registrar (read your writes),
to find an admin's ``HS_SECKEY``, and the ``HS_ADMIN`` values that say who may
change a record. This index maps each identifier to the leaf that last set it, and
reads that one leaf when asked. It follows the log lazily: each lookup first reads
the leaves signed since the last one (in a worker thread: the first reads the whole
log), so writes through ``POST /api/ops`` are seen too. Memory: one dict entry per
identifier written by name (ranges are kept as their leaf, searched on a miss).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from cityid.authority import Namespace
from cityid.errors import LedgerError
from cityid.identifiers import Identifier, parse_minted
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintRange,
    Operation,
    Update,
    content_of,
    decode_for_replay,
)
from cityid.records import Record, render_template
from ledger.storage import Log


@dataclass(slots=True)
class RecordIndex:
    log: Log
    leaf: dict[str, int] = field(default_factory=dict)
    ranges: dict[str, list[int]] = field(default_factory=dict)
    scanned: int = 0
    # One reader at a time (a worker thread's catch-up, or a request's on the event loop):
    # two interleaved would let an older leaf overwrite a newer one's index.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _op(self, index: int) -> Operation:
        leaf = next(self.log.entries(index, index + 1, signed=True))
        return content_of(decode_for_replay(leaf, verified=True).op)

    def catch_up(self) -> None:
        """Index the leaves signed since the last call (the registrar checked them)."""
        with self._lock:
            self._catch_up()

    def _catch_up(self) -> None:
        end = self.log.signed_size
        for i, leaf in enumerate(self.log.entries(self.scanned, end, signed=True), self.scanned):
            op = content_of(decode_for_replay(leaf, verified=True).op)
            if isinstance(op, Mint):
                prefix = str(op.prefix)
                for item in op.items:
                    self.leaf[f"{prefix}/{item.suffix}"] = i
            elif isinstance(op, Update | Delete):
                self.leaf[str(op.ident)] = i
            elif isinstance(op, Delegate):
                self.leaf[str(op.prefix.record_id)] = i
            elif isinstance(op, MintRange):
                self.ranges.setdefault(str(op.prefix), []).append(i)
        self.scanned = end

    def record(self, ns: Namespace, ident: Identifier) -> Record | None:
        """The current record of ``ident``; None if it does not exist (never, or deleted).
        Read from the leaves indexed so far: :meth:`catch_up` first."""
        version, alive = ns.version(ident)
        if not alive:
            return None
        named = ident.named_prefix
        if ident.is_prefix_record and named is not None:
            return ns.prefixes[named].record  # kept by the namespace, as for an anchor
        key = str(ident)
        index = self.leaf.get(key)
        if index is not None:
            op = self._op(index)
            got = _record(op, ident)
            if got is not None and got[1] == version:
                return got[0]
        else:
            for i in reversed(self.ranges.get(str(ident.prefix), [])):
                op = self._op(i)
                if isinstance(op, MintRange):
                    m = parse_minted(ident.suffix)
                    if op.contains(m.letters, m.number, m.width) and version == 1:
                        return render_template(op.template, suffix=ident.suffix, id=key)
        # Admitted but not yet in the signed log (its batch is being written): ask again.
        raise LedgerError(
            f"the record of {ident} version {version} is not in the log yet: try again",
            rule="not-yet-logged",
        )


def _record(op: Operation, ident: Identifier) -> tuple[Record, int] | None:
    """The record ``op`` gives ``ident``, and the version it makes."""
    if isinstance(op, Mint):
        for item in op.items:
            if item.suffix == ident.suffix:
                return item.record, item.prev + 1
    elif isinstance(op, Update | Delegate):
        return op.record, op.prev + 1
    return None
