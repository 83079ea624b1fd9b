"""Who may do what: the namespace state that every operation is checked against.

The state holds, per delegated prefix, its current key, version, and the log
that hosts its content (its *host*: the origin of the registrar log whose
operations may write under it), and per identifier its version. It starts from
trust anchors (the root prefix and the root key; a city registrar starts from
its own delegated prefix) and grows only by applying checked operations.

Rules, each refused with a message naming the rule and the keys involved:

* content (mint, update, delete of ``P/S``) is signed by the current key of ``P``;
* a delegation of ``P.N`` (create, change, revoke) is signed by the key of ``P``;
* a key rotation of ``P`` is signed by the current key of ``P``; the old key
  then stops working; rotations have their own version counter (``key_version``),
  apart from the delegation's, because they are written in another log;
* every operation names the version it replaces (replays are stale);
* a prefix hosted in another log is delegated once: its key then changes only by
  rotation in its own log, since no order exists between two logs' histories;
* an operation read from a log must be for a prefix that log hosts;
* a suffix and a child node of the same name cannot both exist under one
  prefix, which keeps the DNS mapping a bijection;
* a custody grant of ``P`` is signed by the current key of ``P``; a custodial
  write (a registrar's, for a client that authenticated the Handle way) is
  accepted only while ``P`` grants the registrar's key custody for the admin
  handle the write names, and is then checked as if ``P``'s key had signed it.

Pure state, no I/O: the registrar uses it before appending, the resolver
while replaying logs.
"""

from __future__ import annotations

import copy
import operator
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import AuthorityError, ConflictError, IdentifierError, NotFoundError
from .identifiers import (
    CHECK_ALPHABET,
    Identifier,
    Prefix,
    has_valid_check,
    parse_minted,
    split_minted,
)
from .idtable import IdTable
from .ops import (
    Custodial,
    Custody,
    Delegate,
    Delete,
    Mint,
    MintRange,
    Operation,
    RotateKey,
    SignedOperation,
    Update,
    key_fingerprint,
)
from .records import Record


@dataclass(slots=True)
class PrefixState:
    prefix: Prefix
    key: bytes
    version: int  # of the delegation: written by the parent, in the parent's log
    host: str
    record: Record = field(default_factory=lambda: Record(()))
    # Rotations are written by the prefix itself, in its own log: a separate counter,
    # so replaying the parent's and the child's logs in either order agrees.
    key_version: int = 0
    old_keys: set[bytes] = field(default_factory=set)
    revoked: bool = False
    # Custody grants (ops.Custody): custodial key -> the admin handles it may act for.
    custody: dict[bytes, frozenset[str]] = field(default_factory=dict)
    custody_version: int = 0


@dataclass(slots=True)
class _Ids:
    """Identifier versions under one prefix: explicit entries plus minted ranges.

    A range mint records one interval instead of its million suffixes; an
    identifier of a range that was later updated or deleted gets an explicit
    entry that overrides the range. Versions are stored as ``2*v + alive``.

    Explicit entries live in layers, newest first: ``explicit`` (the live dict
    every write goes to), ``frozen`` (dicts a snapshot in progress is folding
    into a table; never changed again) and ``table`` (an immutable
    :class:`~cityid.idtable.IdTable`: what the last snapshot holds, compact and
    loaded without building a dict). A suffix's entry is the newest layer's.
    """

    explicit: dict[str, int] = field(default_factory=dict)
    ranges: list[MintRange] = field(default_factory=list)
    # (letters, width) -> numbers with explicit entries, to check new ranges fast
    numbered: dict[tuple[str, int], set[int]] = field(default_factory=lambda: defaultdict(set))
    # Frozen layers, newest first: (explicit, numbered) as they were when frozen.
    frozen: tuple[Layer, ...] = ()
    table: IdTable | None = None

    def packed(self, suffix: str) -> int | None:
        """The explicit entry of ``suffix`` (``2*v + alive``), from the newest layer holding it."""
        packed = self.explicit.get(suffix)
        if packed is not None:
            return packed
        for layer, _ in self.frozen:
            packed = layer.get(suffix)
            if packed is not None:
                return packed
        return None if self.table is None else self.table.get(suffix)

    def get(self, suffix: str) -> tuple[int, bool]:
        packed = self.explicit.get(suffix)
        if packed is None and (self.frozen or self.table is not None):
            packed = self.packed(suffix)
        if packed is not None:
            return packed >> 1, bool(packed & 1)
        if self.ranges:
            parts = split_minted(suffix)
            if (
                parts is not None
                and any(r.contains(*parts) for r in self.ranges)
                and has_valid_check(suffix)
            ):
                return 1, True
        return 0, False

    def set(self, suffix: str, version: int, alive: bool) -> None:
        self.explicit[suffix] = version << 1 | alive
        parts = split_minted(suffix)
        if parts is not None:
            letters, number, width = parts
            self.numbered[(letters, width)].add(number)

    def forget_number(self, suffix: str) -> None:
        """Undo what ``set`` added to ``numbered`` for a ``suffix`` no longer in ``explicit``.

        ``numbered`` stays exactly the numbers of ``explicit`` (a snapshot takes them as
        they are): a number stays while another suffix of the same letters and digits,
        with another check character, holds it.
        """
        parts = split_minted(suffix)
        if parts is None:
            return
        letters, number, width = parts
        body = suffix[:-1]
        if not any(body + c in self.explicit for c in CHECK_ALPHABET):
            self.numbered[(letters, width)].discard(number)

    def range_clash(self, r: MintRange) -> str | None:
        for other in self.ranges:
            if (other.letters, other.width) == (r.letters, r.width) and (
                other.start < r.start + r.count and r.start < other.start + other.count
            ):
                return f"range {other.suffix(0)}..{other.suffix(other.count - 1)}"
        lo, hi = r.start, r.start + r.count
        for numbered in (self.numbered, *(n for _, n in self.frozen)):
            taken = numbered.get((r.letters, r.width), set())
            hits = (
                (n for n in taken if lo <= n < hi)
                if len(taken) < r.count
                else (n for n in range(lo, hi) if n in taken)
            )
            if (clash := self._confirm(r, hits)) is not None:
                return clash
        if self.table is not None:
            return self._confirm(r, self.table.numbers_between(r.letters, r.width, lo, hi))
        return None

    def _confirm(self, r: MintRange, hits: Iterable[int]) -> str | None:
        for n in hits:
            suffix = r.suffix(n - r.start)
            # A number may be held by a suffix with another check character (not
            # the range's identifier): the range's own identifier must exist.
            if self.packed(suffix) is not None:
                return f"identifier {suffix}"
        return None

    def next_number(self, letters: str, width: int) -> int:
        ends = [r.start + r.count for r in self.ranges if (r.letters, r.width) == (letters, width)]
        for numbered in (self.numbered, *(n for _, n in self.frozen)):
            taken = numbered.get((letters, width))
            if taken:
                ends.append(max(taken) + 1)
        if self.table is not None and (top := self.table.max_number(letters, width)) is not None:
            ends.append(top + 1)
        return max(ends, default=0)

    def freeze(self) -> IdsImage:
        """Move the live layer below (it is never changed again) and describe the layers."""
        if self.explicit:
            self.frozen = ((self.explicit, self.numbered), *self.frozen)
            self.explicit, self.numbered = {}, defaultdict(set)
        return IdsImage(tuple(self.ranges), self.frozen, self.table)


Layer = tuple[dict[str, int], dict[tuple[str, int], set[int]]]  # (explicit, numbered)


@dataclass(frozen=True, slots=True)
class IdsImage:
    """One prefix's identifiers as a snapshot sees them: its ranges, its explicit layers
    (newest first, each with its ``numbered``; none of them changes any more) and its table."""

    ranges: tuple[MintRange, ...]
    layers: tuple[Layer, ...]
    table: IdTable | None

    def merged(self) -> IdTable:
        """The layers folded into the table (the costly part of a snapshot: run it off the
        event loop; it reads only what no write changes)."""
        table = self.table or IdTable.empty()
        if len(self.layers) == 1:  # the usual case: no copy
            explicit, numbered = self.layers[0]
            return table.merged(explicit, numbered)
        changes: dict[str, int] = {}
        numbers: dict[tuple[str, int], set[int]] = defaultdict(set)
        for explicit, numbered in reversed(self.layers):  # oldest first: the newest wins
            for suffix, packed in explicit.items():  # a loop, not update(): GIL breaks
                changes[suffix] = packed
            for lw, nums in numbered.items():
                numbers[lw] |= nums
        return table.merged(changes, numbers)


@dataclass(frozen=True, slots=True)
class NamespaceImage:
    """A namespace's state frozen at one moment (:meth:`Namespace.freeze`): copies of the
    prefixes and child sets, and per prefix an :class:`IdsImage`."""

    prefixes: dict[Prefix, PrefixState]
    children: dict[Prefix, frozenset[str]]
    ids: dict[Prefix, IdsImage]


@dataclass(slots=True)
class Dropped:
    """What :meth:`Namespace.install` replaced: no namespace reads it any more."""

    layers: list[Layer] = field(default_factory=list)
    tables: list[IdTable] = field(default_factory=list)


def release(dropped: Dropped) -> None:
    """Empty what ``install`` dropped, a little at a time: run it in a worker thread.
    Dropping a 10-million-entry dict, or a table's 300,000 blocks, at once frees them in
    one C loop that holds the GIL for up to a second: a stalled event loop."""
    for explicit, numbered in dropped.layers:
        pop = explicit.popitem
        while explicit:
            pop()
        for nums in numbered.values():
            while nums:
                nums.pop()
    for table in dropped.tables:
        table.discard()
    dropped.layers.clear()
    dropped.tables.clear()


def _holds(ids: _Ids) -> bool:
    return bool(ids.explicit or ids.frozen or ids.table or ids.ranges)


def _copy_prefix(st: PrefixState) -> PrefixState:
    return PrefixState(
        st.prefix, st.key, st.version, st.host, st.record, st.key_version, set(st.old_keys),
        st.revoked, dict(st.custody), st.custody_version,
    )  # fmt: skip


class Namespace:
    """The authority state of one namespace (the whole tree, or one registrar's part)."""

    def __init__(self) -> None:
        self.prefixes: dict[Prefix, PrefixState] = {}
        self._ids: dict[Prefix, _Ids] = defaultdict(_Ids)
        self._children: dict[Prefix, set[str]] = defaultdict(set)
        self._undo: list[Callable[[], None]] | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Apply several operations all or nothing: on an exception, undo them all."""
        if self._undo is not None:
            yield  # nested: the outer transaction owns the undo log
            return
        self._undo = []
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo = None

    def _remember(self, op: Operation) -> None:
        """Record how to undo ``op`` (which has passed its check)."""
        if self._undo is None:
            return
        if isinstance(op, Delegate | RotateKey | Custody) or (
            isinstance(op, Update | Delete) and op.ident.is_prefix_record
        ):
            target = (
                op.prefix
                if isinstance(op, Delegate | RotateKey | Custody)
                else op.ident.named_prefix
            )
            assert target is not None
            old = copy.deepcopy(self.prefixes.get(target))
            parent = target.parent
            had_child = parent is not None and target.nodes[-1] in self._children.get(parent, ())

            def undo_prefix() -> None:
                if old is None:
                    self.prefixes.pop(target, None)
                else:
                    self.prefixes[target] = old
                if parent is not None and not had_child:
                    self._children[parent].discard(target.nodes[-1])

            self._undo.append(undo_prefix)
        elif isinstance(op, MintRange):
            ids = self._ids[op.prefix]
            self._undo.append(lambda: ids.ranges.remove(op))
        else:
            assert isinstance(op, Mint | Update | Delete)
            ids = self._ids[op.prefix if isinstance(op, Mint) else op.ident.prefix]
            suffixes = [i.suffix for i in op.items] if isinstance(op, Mint) else [op.ident.suffix]
            saved = {s: ids.explicit.get(s) for s in suffixes}

            def undo_ids() -> None:
                for suffix, packed in saved.items():
                    if packed is None:
                        ids.explicit.pop(suffix, None)
                        ids.forget_number(suffix)
                    else:
                        ids.explicit[suffix] = packed

            self._undo.append(undo_ids)

    def add_anchor(self, prefix: Prefix, key: bytes, host: str, version: int = 1) -> None:
        """Trust ``key`` for ``prefix`` without an operation (the root, or a city's own node)."""
        self.prefixes[prefix] = PrefixState(prefix, key, version, host)

    # -- snapshots (cityid/snapshot.py encodes these) -------------------------------------

    def freeze(self) -> NamespaceImage:
        """The state as it is now, for a snapshot, without copying the identifiers.

        Each prefix's live layer of explicit identifiers becomes a frozen layer,
        never changed again, and a new empty one takes the writes, so the image
        can be encoded in another thread while this namespace goes on. Costs
        O(prefixes). Not inside a transaction: its undo writes the live layer.
        """
        if self._undo is not None:
            raise RuntimeError("a namespace cannot be frozen inside a transaction")
        return self._image({p: i.freeze() for p, i in self._ids.items() if _holds(i)})

    def image(self) -> NamespaceImage:
        """Like :meth:`freeze` but changing nothing: the image shares the live layers, so it
        is valid only until the next write (for encoding at once, in the same thread)."""
        ids = {}
        for p, i in self._ids.items():
            if _holds(i):
                live = ((i.explicit, i.numbered),) if i.explicit else ()
                ids[p] = IdsImage(tuple(i.ranges), live + i.frozen, i.table)
        return self._image(ids)

    def _image(self, ids: dict[Prefix, IdsImage]) -> NamespaceImage:
        return NamespaceImage(
            {p: _copy_prefix(st) for p, st in self.prefixes.items()},
            {p: frozenset(c) for p, c in self._children.items() if c},
            ids,
        )

    def install(self, image: NamespaceImage, tables: Mapping[Prefix, IdTable]) -> Dropped:
        """Replace the layers ``image`` froze with ``tables``, their merge (compaction), and
        return the layers and tables replaced (for :func:`release`, off the event loop).

        Writes made since the freeze stay in the live layer, above the new table.
        A prefix whose layers are not the ones frozen (another freeze came
        between) is left as it is: correct, only less compact.
        """
        dropped = Dropped()
        for prefix, table in tables.items():
            ids, img = self._ids.get(prefix), image.ids.get(prefix)
            if ids is None or img is None or ids.table is not img.table:
                continue
            k = len(img.layers)
            keep = len(ids.frozen) - k  # the image's layers are the oldest frozen ones
            if keep < 0 or any(map(operator.is_not, ids.frozen[keep:], img.layers)):
                continue
            dropped.layers += ids.frozen[keep:]
            if ids.table is not None and ids.table is not table:
                dropped.tables.append(ids.table)
            ids.frozen = ids.frozen[:keep]
            ids.table = table
        return dropped

    @classmethod
    def from_image(cls, image: NamespaceImage, tables: Mapping[Prefix, IdTable]) -> Namespace:
        """A namespace holding ``image``, each prefix's identifiers in ``tables`` (the
        image's layers merged: :meth:`IdsImage.merged`, done here for a prefix that
        ``tables`` lacks). Takes ownership of both."""
        ns = cls()
        ns.prefixes = dict(image.prefixes)
        for p, c in image.children.items():
            ns._children[p] = set(c)
        for p, img in image.ids.items():
            table = tables[p] if p in tables else img.merged()
            ns._ids[p] = _Ids(ranges=list(img.ranges), table=table or None)
        return ns

    # -- queries ---------------------------------------------------------------------

    def version(self, ident: Identifier) -> tuple[int, bool]:
        """(version, alive) of an identifier or prefix record; (0, False) if never created."""
        if ident.is_prefix_record:
            named = ident.named_prefix
            assert named is not None
            st = self.prefixes.get(named)
            return (st.version, not st.revoked) if st else (0, False)
        ids = self._ids.get(ident.prefix)
        if not ids:
            return 0, False
        version, alive = ids.get(ident.suffix)
        return version, alive and not self._revoked(ident.prefix)

    def _revoked(self, prefix: Prefix) -> bool:
        """True when ``prefix`` or an ancestor was revoked: all below it is gone."""
        return any(
            (st := self.prefixes.get(anc)) is not None and st.revoked for anc in prefix.ancestors()
        )

    def next_number(self, prefix: Prefix, letters: str, width: int) -> int:
        """The first number after every minted suffix ``letters`` + ``width`` digits."""
        ids = self._ids.get(prefix)
        return 0 if ids is None else ids.next_number(letters, width)

    def holder_of(self, public_key: bytes) -> list[Prefix]:
        return sorted(p for p, st in self.prefixes.items() if st.key == public_key)

    def live_prefix(self, prefix: Prefix) -> PrefixState:
        """The state of ``prefix`` if it and all its ancestors are delegated and not revoked."""
        st = self.prefixes.get(prefix)
        if st is None:
            raise NotFoundError(f"prefix {prefix} is not delegated", rule="prefix-not-delegated")
        for anc in prefix.ancestors():
            a = self.prefixes.get(anc)
            if a is not None and a.revoked:
                raise AuthorityError(f"prefix {anc} was revoked", rule="prefix-revoked")
        return st

    # -- the check ------------------------------------------------------------------

    def _who(self, key: bytes) -> str:
        held = self.holder_of(key)
        owner = f" (it holds {', '.join(map(str, held))})" if held else " (it holds no prefix)"
        return f"key {key_fingerprint(key)}{owner}"

    def _require_key(
        self,
        st: PrefixState,
        signed: SignedOperation,
        action: str,
        relation: str = "",
        node: Prefix | None = None,
    ) -> None:
        """Refuse unless ``st``'s key signed; ``node`` is the child of ``st`` acted on,
        for a delegation or a change of a prefix record (it names the rule broken)."""
        if signed.signer == st.key:
            return
        if signed.signer in st.old_keys:
            raise AuthorityError(
                f"{self._who(signed.signer)} was rotated out of {st.prefix}; "
                f"{action} needs its current key {key_fingerprint(st.key)}",
                rule="rotated-out-key",
            )
        held = self.holder_of(signed.signer)
        rule = "wrong-key"
        if node is not None and any(h != node and h.parent == node.parent for h in held):
            rule = "sibling-node"  # a node delegating its sibling: only their parent may
        elif any(h != st.prefix and h.is_within(st.prefix) for h in held):
            rule = "child-key"  # a node below acting on its ancestor
        elif any(h != st.prefix and h.parent == st.prefix.parent for h in held):
            rule = "sibling-key"
        raise AuthorityError(
            f"{self._who(signed.signer)} may not {action}: only the key of {st.prefix}"
            f"{relation} ({key_fingerprint(st.key)}) may",
            rule=rule,
        )

    def _require_host(self, st: PrefixState, log: str | None, action: str) -> None:
        if log is not None and st.host != log:
            raise AuthorityError(
                f"log {log} may not {action}: {st.prefix} is hosted by log {st.host}",
                rule="wrong-log",
            )

    @staticmethod
    def _stale(target: str, current: int, prev: int) -> ConflictError:
        return ConflictError(
            f"{target} is at version {current} but the operation replaces version {prev} "
            "(stale or replayed)",
            rule="stale-version",
        )

    def check(self, signed: SignedOperation, *, log: str | None = None) -> None:
        """Raise unless ``signed`` may be applied now (signature already verified)."""
        try:
            self._check(signed, log)
        except (AuthorityError, ConflictError, NotFoundError) as e:
            if "key " not in e.message:  # say who signed, and whose key decides
                holder = self._responsible(signed.op)
                st = self.prefixes.get(holder) if holder else None
                whose = f"; the key of {holder} is {key_fingerprint(st.key)}" if st else ""
                e.args = (f"{e.message} (signed by key {signed.fingerprint}{whose})",)
            raise

    @staticmethod
    def _responsible(op: Operation) -> Prefix | None:
        """The prefix whose key decides on ``op``."""
        if isinstance(op, Custodial):
            op = op.op
        if isinstance(op, Delegate):
            return op.prefix.parent
        if isinstance(op, RotateKey | Mint | MintRange | Custody):
            return op.prefix
        if op.ident.is_prefix_record:
            named = op.ident.named_prefix
            return named.parent if named else None
        return op.ident.prefix

    def key_version(self, prefix: Prefix) -> int:
        """How many times ``prefix``'s key was rotated (what a rotation must name)."""
        st = self.prefixes.get(prefix)
        return st.key_version if st else 0

    def _check(self, signed: SignedOperation, log: str | None) -> None:
        op = signed.op
        if isinstance(op, Delegate):
            self._check_delegate(op, signed, log)
        elif isinstance(op, RotateKey | Custody):
            # The prefix's own acts, each kind with its own counter.
            st = self.live_prefix(op.prefix)
            rotate = isinstance(op, RotateKey)
            action = f"{'rotate the key' if rotate else 'grant custody'} of {op.prefix}"
            current = st.key_version if rotate else st.custody_version
            self._require_host(st, log, action)
            self._require_key(st, signed, action)
            if op.prev != current:
                what = "key" if rotate else "custody"
                raise self._stale(f"the {what} of {op.prefix}", current, op.prev)
        elif isinstance(op, Mint | MintRange):
            self._check_mint(op, signed, log)
        elif isinstance(op, Update | Delete):
            self._check_change(op, signed, log)
        elif isinstance(op, Custodial):
            self._check_custodial(op, signed, log)
        else:  # pragma: no cover - KINDS is closed
            raise AuthorityError(f"unknown operation {op!r}")

    def _check_delegate(self, op: Delegate, signed: SignedOperation, log: str | None) -> None:
        parent = op.prefix.parent
        if parent is None or parent not in self.prefixes:
            raise AuthorityError(
                f"{op.prefix} has no delegated parent here: only a delegated prefix "
                "may delegate a child",
                rule="no-parent",
            )
        pst = self.live_prefix(parent)
        action = f"delegate {op.prefix}"
        self._require_host(pst, log, action)
        self._require_key(pst, signed, action, relation=", its parent", node=op.prefix)
        cur = self.prefixes.get(op.prefix)
        current = cur.version if cur else 0
        if op.prev != current:
            raise self._stale(str(op.prefix.record_id), current, op.prev)
        if cur is not None and cur.host != pst.host:
            # Its log's history is signed by the keys it had; a new key or host decreed from
            # this log could not be ordered against that history when a resolver replays the
            # two logs (it would refuse the child's past writes as signed by a dropped key).
            raise AuthorityError(
                f"{op.prefix} is hosted by {cur.host}, not in this log: its parent cannot "
                "change its key or host. Its key changes in its own log (cityid key rotate, "
                "signed by its current key); its record changes with an update of "
                f"{op.prefix.record_id}; a compromised prefix is revoked (cityid id delete "
                f"{op.prefix.record_id})",
                rule="redelegate-hosted-elsewhere",
            )
        node = op.prefix.nodes[-1]
        if self._ids[parent].get(node)[1]:
            raise AuthorityError(
                f"{parent}/{node} is an identifier; a child node {op.prefix} would take its "
                "DNS name",
                rule="suffix-is-node",
            )

    def _check_mint(self, op: Mint | MintRange, signed: SignedOperation, log: str | None) -> None:
        st = self.live_prefix(op.prefix)
        action = f"mint under {op.prefix}"
        self._require_host(st, log, action)
        self._require_key(st, signed, action)
        ids = self._ids[op.prefix]
        children = self._children.get(op.prefix, set())
        if isinstance(op, MintRange):
            clash = ids.range_clash(op)
            if clash is not None:
                raise ConflictError(
                    f"range overlaps {clash} under {op.prefix}", rule="already-exists"
                )
            for node in children:
                try:
                    m = parse_minted(node)
                except IdentifierError:
                    continue
                if op.contains(m.letters, m.number, m.width):
                    raise AuthorityError(
                        f"{op.prefix}.{node} is a delegated node", rule="suffix-is-node"
                    )
            return
        for item in op.items:
            version, alive = ids.get(item.suffix)
            if alive:
                raise ConflictError(
                    f"{op.prefix}/{item.suffix} already exists (version {version})",
                    rule="already-exists",
                )
            if item.prev != version:
                raise self._stale(f"{op.prefix}/{item.suffix}", version, item.prev)
            if item.suffix in children:
                raise AuthorityError(
                    f"{op.prefix}.{item.suffix} is a delegated node; its "
                    "identifier would share its DNS name",
                    rule="suffix-is-node",
                )

    def _check_change(self, op: Update | Delete, signed: SignedOperation, log: str | None) -> None:
        verb = "update" if isinstance(op, Update) else "delete"
        if op.ident.is_prefix_record:
            named = op.ident.named_prefix
            assert named is not None
            parent = named.parent
            if parent is None or parent not in self.prefixes:
                raise AuthorityError(
                    f"{named} is a trust anchor here: its record is configuration, not "
                    "changed by an operation",
                    rule="root",
                )
            st = self.live_prefix(named)
            pst = self.live_prefix(parent)
            # A prefix record belongs to the delegation: the parent changes it.
            self._require_host(pst, log, f"{verb} {op.ident}")
            self._require_key(
                pst, signed, f"{verb} {op.ident}", relation=", its parent", node=named
            )
            if op.prev != st.version:
                raise self._stale(str(op.ident), st.version, op.prev)
            return
        st = self.live_prefix(op.ident.prefix)
        self._require_host(st, log, f"{verb} {op.ident}")
        self._require_key(st, signed, f"{verb} {op.ident}")
        version, alive = self._ids[op.ident.prefix].get(op.ident.suffix)
        if not alive:
            if version == 0:
                raise NotFoundError(f"{op.ident} does not exist", rule="not-found")
            raise NotFoundError(f"{op.ident} was deleted (version {version})", rule="deleted")
        if op.prev != version:
            raise self._stale(str(op.ident), version, op.prev)

    def _check_custodial(self, op: Custodial, signed: SignedOperation, log: str | None) -> None:
        inner = op.op
        prefix = inner.prefix if isinstance(inner, Mint) else inner.ident.prefix
        st = self.live_prefix(prefix)
        admins = st.custody.get(signed.signer)
        if admins is None or op.admin not in admins:
            granted = f" (it may act for {', '.join(sorted(admins))})" if admins else ""
            raise AuthorityError(
                f"key {key_fingerprint(signed.signer)} has no custody of {prefix} for "
                f"{op.admin}{granted}: the key of {prefix} ({key_fingerprint(st.key)}) grants "
                "it with a signed custody operation naming this key and the admin handle "
                "(cityid handle grant; docs/handle.md)",
                rule="no-custody",
            )
        # Then the write itself, as if the prefix's own key had signed it.
        self._check(SignedOperation(inner, st.key, signed.signature, signed.body), log)

    # -- applying ---------------------------------------------------------------------

    def apply(self, signed: SignedOperation, *, log: str | None = None) -> None:
        """Check, then change the state. On any error the state is unchanged."""
        self.check(signed, log=log)
        op = signed.op
        if isinstance(op, Custodial):
            op = op.op  # checked above: it changes the state as the write it carries
        self._remember(op)
        if isinstance(op, Delegate):
            parent = op.prefix.parent
            assert parent is not None
            host = op.origin or self.prefixes[parent].host
            old = self.prefixes.get(op.prefix)
            st = PrefixState(op.prefix, op.key, op.prev + 1, host, op.record)
            if old is not None:
                st.old_keys = old.old_keys | ({old.key} - {op.key})
                st.key_version = old.key_version
                # A grant was the key holder's: it ends with a new key, and its counter
                # goes on so no earlier grant can be replayed.
                st.custody = old.custody if old.key == op.key else {}
                st.custody_version = old.custody_version
            self.prefixes[op.prefix] = st
            self._children[parent].add(op.prefix.nodes[-1])
        elif isinstance(op, RotateKey):
            st = self.prefixes[op.prefix]
            st.old_keys.add(st.key)
            st.key, st.key_version = op.new_key, st.key_version + 1
        elif isinstance(op, Custody):
            st = self.prefixes[op.prefix]
            if op.admins:
                st.custody[op.key] = frozenset(op.admins)
            else:
                st.custody.pop(op.key, None)
            st.custody_version += 1
        elif isinstance(op, MintRange):
            self._ids[op.prefix].ranges.append(op)
        elif isinstance(op, Mint):
            ids = self._ids[op.prefix]
            for item in op.items:
                ids.set(item.suffix, item.prev + 1, True)
        elif isinstance(op, Update | Delete):
            alive = isinstance(op, Update)
            if op.ident.is_prefix_record:
                named = op.ident.named_prefix
                assert named is not None
                st = self.prefixes[named]
                st.version = op.prev + 1
                if isinstance(op, Update):
                    st.record = op.record
                else:
                    st.revoked = True
            else:
                self._ids[op.ident.prefix].set(op.ident.suffix, op.prev + 1, alive)
