"""Pending applications: workflow state in SQLite (stdlib, WAL) in the registrar's directory.

Not truth: a delegation exists only once its signed leaf is in the parent's
log. The store records what was asked and what was decided, and an approval in
two steps around the log write:

1. ``begin_approval``: the ticket turns ``approving`` and keeps the exact leaf
   and the log size before it (committed, fsynced);
2. the leaf goes through the registrar's sequencer (ledger, witnesses);
3. ``finish_approval``: ``approved``, with the leaf's index and checkpoint.

A SIGKILL between 1 and 3 leaves ``approving``; :meth:`ApplicationStore.reconcile`
(at start, before serving) looks for that leaf in the log after the size kept
and settles the ticket either way. ``approving`` is shown to applicants as
pending: until the log says so, nothing was decided.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cityid.errors import ConflictError, NotFoundError

DB_NAME = "applications.sqlite3"

PENDING, APPROVING, APPROVED, REJECTED = "pending", "approving", "approved", "rejected"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS applications (
    ticket TEXT PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    node TEXT NOT NULL,
    parent TEXT NOT NULL,
    admin_key BLOB NOT NULL,
    canonical BLOB NOT NULL,
    signature BLOB NOT NULL,
    client TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'approving', 'approved', 'rejected')),
    submitted INTEGER NOT NULL,
    decided INTEGER,
    reason TEXT,
    leaf BLOB,
    log_size INTEGER,
    leaf_index INTEGER,
    checkpoint TEXT
);
CREATE INDEX IF NOT EXISTS applications_node ON applications (node, status);
CREATE INDEX IF NOT EXISTS applications_key ON applications (admin_key, status);
"""

_OPEN = (PENDING, APPROVING)


@dataclass(frozen=True, slots=True)
class Ticket:
    ticket: str
    digest: bytes
    node: str
    parent: str
    admin_key: bytes
    canonical: bytes
    signature: bytes
    client: str
    status: str
    submitted: int
    decided: int | None
    reason: str | None
    leaf: bytes | None
    log_size: int | None
    leaf_index: int | None
    checkpoint: str | None

    @property
    def shown_status(self) -> str:
        """What applicants see: an approval the log does not hold yet is still pending."""
        return PENDING if self.status == APPROVING else self.status


class ApplicationStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a decision acknowledged to the operator survives a power cut.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    @classmethod
    def in_directory(cls, directory: Path) -> ApplicationStore:
        return cls(directory / DB_NAME)

    def close(self) -> None:
        self.db.close()

    def _one(self, where: str, *args: object) -> Ticket | None:
        row = self.db.execute(f"SELECT * FROM applications WHERE {where}", args).fetchone()
        return Ticket(*row) if row is not None else None

    def get(self, ticket: str) -> Ticket:
        found = self._one("ticket = ?", ticket)
        if found is None:
            raise NotFoundError("no application has this ticket", rule="no-such-ticket")
        return found

    def by_digest(self, digest: bytes) -> Ticket | None:
        return self._one("digest = ?", digest)

    def open_for_node(self, node: str) -> Ticket | None:
        return self._one("node = ? AND status IN (?, ?)", node, *_OPEN)

    def open_for_key(self, key: bytes) -> Ticket | None:
        return self._one("admin_key = ? AND status IN (?, ?)", key, *_OPEN)

    def list(self, parents: Iterable[str], status: str | None = None) -> list[Ticket]:
        parents = list(parents)
        if not parents:
            return []
        marks = ",".join("?" * len(parents))
        sql = f"SELECT * FROM applications WHERE parent IN ({marks})"
        args: list[object] = list(parents)
        if status is not None:
            sql += " AND status IN (?, ?)" if status == PENDING else " AND status = ?"
            args += list(_OPEN) if status == PENDING else [status]
        rows = self.db.execute(sql + " ORDER BY submitted, ticket", args).fetchall()
        return [Ticket(*r) for r in rows]

    def add(
        self,
        ticket: str,
        digest: bytes,
        node: str,
        parent: str,
        admin_key: bytes,
        canonical: bytes,
        signature: bytes,
        client: str,
        submitted: int,
        check: Callable[[], None],
    ) -> Ticket:
        """Insert a pending application; ``check`` runs inside the write transaction (it
        refuses a node or key taken meanwhile), so check and insert are one step."""
        with self._write():
            check()
            self.db.execute(
                "INSERT INTO applications (ticket, digest, node, parent, admin_key, canonical, "
                "signature, client, status, submitted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ticket, digest, node, parent, admin_key, canonical, signature, client, PENDING,
                 submitted),
            )  # fmt: skip
        return self.get(ticket)

    def _write(self) -> _Txn:
        return _Txn(self.db)

    def _transition(self, ticket: str, frm: str, sets: str, *args: object) -> None:
        with self._write():
            cur = self.db.execute(
                f"UPDATE applications SET {sets} WHERE ticket = ? AND status = ?",
                (*args, ticket, frm),
            )
            if cur.rowcount != 1:
                now = self.get(ticket).shown_status
                raise ConflictError(
                    f"the application is {now}, not {frm}: it was decided already",
                    rule="already-decided",
                )

    def begin_approval(self, ticket: str, leaf: bytes, log_size: int) -> None:
        self._transition(
            ticket, PENDING, "status = ?, leaf = ?, log_size = ?", APPROVING, leaf, log_size
        )

    def finish_approval(self, ticket: str, index: int, checkpoint: str, decided: int) -> None:
        self._transition(
            ticket, APPROVING, "status = ?, leaf_index = ?, checkpoint = ?, decided = ?",
            APPROVED, index, checkpoint, decided,
        )  # fmt: skip

    def abort_approval(self, ticket: str) -> None:
        self._transition(ticket, APPROVING, "status = ?, leaf = NULL, log_size = NULL", PENDING)

    def reject(self, ticket: str, reason: str, decided: int) -> None:
        self._transition(
            ticket, PENDING, "status = ?, reason = ?, decided = ?", REJECTED, reason, decided
        )

    def settle(self, ticket: str, index: int | None, checkpoint: str, decided: int) -> str:
        """Settle an ``approving`` ticket once the log's answer is known: ``index`` is its
        leaf's place in the log, or None when the log does not hold it."""
        if index is None:
            self.abort_approval(ticket)
            return PENDING
        self.finish_approval(ticket, index, checkpoint, decided)
        return APPROVED

    def reconcile(
        self, find: Callable[[bytes, int], int | None], checkpoint: str, decided: int
    ) -> list[tuple[str, str]]:
        """Settle every ``approving`` ticket from the log (at start, nothing in flight):
        ``find(leaf, from_size)`` is the leaf's index in the log, or None. Returns
        (ticket, new status) pairs."""
        rows = self.db.execute("SELECT * FROM applications WHERE status = ?", (APPROVING,))
        settled = []
        for t in [Ticket(*r) for r in rows]:
            assert t.leaf is not None and t.log_size is not None
            index = find(t.leaf, t.log_size)
            settled.append((t.ticket, self.settle(t.ticket, index, checkpoint, decided)))
        return settled


class _Txn:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
