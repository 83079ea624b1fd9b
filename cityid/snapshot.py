"""Namespace snapshots: the authority state as bytes, bound to the logs it was replayed from.

A :class:`~cityid.authority.Namespace` is derived state: replaying the logs
from the trust anchors rebuilds it, and at millions of identifiers that takes
long. A snapshot is that state at one position, so a replay can start from it
and read only the log's tail. It never outranks the logs: whoever loads one
checks that its :class:`Position` is a position of the logs it has (same
origins, and each root the log's own root at that size), and falls back to a
full replay otherwise.

API (pure functions, no I/O)::

    data = encode(ns, position)            # bytes
    ns, position = decode(data)            # SnapshotError if the bytes are not a snapshot
    position = peek(data)                  # the position alone, before a costly decode

and, for a writer that must not stop serving while it encodes (the registrar)::

    image = ns.freeze()                    # O(prefixes), on the thread that writes ns
    tables = compact(image)                # the costly merge: any thread
    dropped = ns.install(image, tables)    # back on the writer's thread: compaction
    for piece in chunks(image, tables, position): ...   # any thread
    authority.release(dropped)             # any thread: frees what install replaced

The format (``FORMAT``): the line ``CITYID-NS <format>\\n``; the manifest's
length (8 bytes, little-endian); the manifest (msgpack: the position, the
prefixes, the child nodes, and per prefix its ranges and how long each of its
sections is); the sections, raw; then the SHA-256 of everything before it. A
prefix's explicit identifiers are its :class:`~cityid.idtable.IdTable` as is:
the fence (suffixes joined by ``\\n``), the offset of each block and of its
end (``u64`` little-endian), the blocks, then one section per ``(letters, width)``
of minted-shape numbers. Loading is then a few slices and no per-identifier
work: the blocks are searched where they lie in the file's bytes, and 10
million identifiers load in about half a second.

A reader refuses any other format number (:class:`SnapshotError`, rule
``snapshot-format``): bump ``FORMAT`` whenever the layout or the meaning of the
state changes, and old snapshots are ignored (rebuilt) rather than misread.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from .authority import IdsImage, Namespace, NamespaceImage, PrefixState
from .errors import CityIdError
from .identifiers import Prefix
from .idtable import IdTable, number_kind, numbers_from_bytes, numbers_to_bytes
from .ops import MintRange
from .records import Record

FORMAT = 2  # 2: custody grants (ops.Custody) in each prefix
MAGIC = b"CITYID-NS "
_DIGEST = 32
_LEN = struct.Struct("<Q")
#: Bytes of blocks per piece of :func:`chunks`: no single copy holds the GIL long.
_PIECE = 512 * 1024


class SnapshotError(CityIdError):
    """Bytes that are not a usable snapshot: a foreign or newer format, or corrupt."""

    rule = "snapshot-corrupt"


@dataclass(frozen=True, slots=True)
class Position:
    """What a state was replayed from: its trust anchors and, per log, the tree head
    (origin, size, root hash) up to which it applied that log's entries.

    A registrar has one log; a resolver follows several. Two states with equal
    positions are equal (replay is deterministic), which is what makes a
    snapshot safe to use in place of a replay.
    """

    anchors: tuple[tuple[str, bytes, str], ...]  # (prefix, key, host), sorted
    logs: tuple[tuple[str, int, bytes], ...]  # (origin, size, root), sorted

    @classmethod
    def of(
        cls, anchors: list[tuple[str, bytes, str]], logs: list[tuple[str, int, bytes]]
    ) -> Position:
        return cls(tuple(sorted(anchors)), tuple(sorted(logs)))

    def size(self, origin: str) -> int | None:
        """Entries of log ``origin`` the state holds (None: not a log of this state)."""
        return next((s for o, s, _ in self.logs if o == origin), None)

    def to_wire(self) -> dict[str, Any]:
        return {"anchors": [list(a) for a in self.anchors], "logs": [list(x) for x in self.logs]}

    @classmethod
    def from_wire(cls, obj: Any) -> Position:
        anchors = [(str(p), bytes(k), str(h)) for p, k, h in obj["anchors"]]
        logs = [(str(o), int(s), bytes(r)) for o, s, r in obj["logs"]]
        for _, key, _ in anchors:
            if len(key) != 32:
                raise ValueError("an anchor key is 32 bytes")
        for _, size, root in logs:
            if size < 0 or len(root) != 32:
                raise ValueError("a log position is a size and a 32-byte root")
        return cls.of(anchors, logs)


# -- encoding ------------------------------------------------------------------------------


def compact(image: NamespaceImage) -> dict[Prefix, IdTable]:
    """Each prefix's layers merged into one table: the costly step, safe on any thread
    (a frozen image is never written again)."""
    return {p: img.merged() for p, img in image.ids.items()}


def _prefix_wire(st: PrefixState) -> list[Any]:
    return [
        str(st.prefix), st.key, st.version, st.host, st.record.encode(), st.key_version,
        sorted(st.old_keys), st.revoked, st.custody_version,
        sorted((k, sorted(a)) for k, a in st.custody.items()),
    ]  # fmt: skip


def chunks(
    image: NamespaceImage, tables: dict[Prefix, IdTable], position: Position
) -> Iterator[bytes | memoryview]:
    """The snapshot of ``image`` (its identifiers in ``tables``, from :func:`compact`) at
    ``position``, in pieces of at most a few MB: written one after the other they are
    the bytes :func:`encode` returns. The last piece is the SHA-256 of the others."""
    manifest_ids = []
    sections: list[tuple[bytes | memoryview, IdTable, list[bytes | memoryview]]] = []
    for p in sorted(image.ids):
        img = image.ids[p]
        table = tables[p] if p in tables else img.merged()
        nums = [(lw, numbers_to_bytes(n)) for lw, n in sorted(table.numbers.items()) if n]
        offsets = table.block_offsets()
        manifest_ids.append({
            "prefix": str(p),
            "ranges": [r.body() for r in img.ranges],
            "count": table.count,
            "fence": table.fence_size(),
            "blocks": len(table.fence),
            "data": offsets[-1] - offsets[0],
            "numbers": [[lt, w, number_kind(w), len(raw)] for (lt, w), raw in nums],
        })  # fmt: skip
        sections.append((numbers_to_bytes(offsets), table, [raw for _, raw in nums]))
    manifest = msgpack.packb(
        {
            "position": position.to_wire(),
            "prefixes": [_prefix_wire(image.prefixes[p]) for p in sorted(image.prefixes)],
            "children": [[str(p), sorted(image.children[p])] for p in sorted(image.children)],
            "ids": manifest_ids,
        },
        use_bin_type=True,
    )
    digest = hashlib.sha256()

    def out(piece: bytes | memoryview) -> bytes | memoryview:
        digest.update(piece)
        return piece

    yield out(MAGIC + b"%d\n" % FORMAT + _LEN.pack(len(manifest)) + manifest)
    for offsets, table, nums in sections:
        for piece in table.fence_bytes():
            yield out(piece)
        yield out(offsets)
        for piece in table.block_bytes(_PIECE):
            yield out(piece)
        for raw in nums:
            yield out(raw)
    yield digest.digest()


def encode(ns: Namespace, position: Position) -> bytes:
    """The snapshot of ``ns`` at ``position``, in one go (``ns`` is not changed)."""
    image = ns.image()
    return b"".join(chunks(image, compact(image), position))


# -- decoding ------------------------------------------------------------------------------


def _start(data: bytes | memoryview) -> int:
    """Offset of the manifest's length, after the magic and format checks."""
    head = bytes(data[: len(MAGIC) + 12])
    line, newline, _ = head[len(MAGIC) :].partition(b"\n")
    if not head.startswith(MAGIC) or not newline or not line.isdigit():
        raise SnapshotError("not a cityid namespace snapshot", rule="snapshot-format")
    if int(line) != FORMAT:
        newer = "a newer" if int(line) > FORMAT else "an older"
        raise SnapshotError(
            f"snapshot format {int(line)} is {newer} format than this cityid reads ({FORMAT})",
            rule="snapshot-format",
        )
    return len(MAGIC) + len(line) + 1


def _manifest(data: bytes | memoryview, at: int) -> tuple[int, dict[str, Any]]:
    """(offset of the first section, manifest)."""
    if len(data) < at + _LEN.size + _DIGEST:
        raise SnapshotError("snapshot is truncated")
    (size,) = _LEN.unpack(data[at : at + _LEN.size])
    at += _LEN.size
    if at + size > len(data) - _DIGEST:
        raise SnapshotError("snapshot is truncated")
    try:
        manifest = msgpack.unpackb(data[at : at + size], raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise SnapshotError(f"snapshot manifest is not msgpack: {e}") from e
    if not isinstance(manifest, dict):
        raise SnapshotError("snapshot manifest is not a map")
    return at + size, manifest


def peek(data: bytes | memoryview) -> Position:
    """The position a snapshot claims, without checking or decoding the rest."""
    _, manifest = _manifest(data, _start(data))
    try:
        return Position.from_wire(manifest["position"])
    except (KeyError, TypeError, ValueError) as e:
        raise SnapshotError(f"snapshot position is malformed: {e}") from e


def decode(data: bytes | memoryview | mmap.mmap) -> tuple[Namespace, Position]:
    """The namespace and position :func:`encode` wrote, or :class:`SnapshotError`.

    Checks the format number, the SHA-256 over the whole file (in a helper thread,
    while the rest is parsed: ``hashlib`` releases the GIL) and the structure.
    Given ``bytes``, the namespace's tables search them in place: no copy, so
    10 million identifiers decode in about half a second, mostly the checksum. Any
    other buffer (an ``mmap``) is copied from once; nothing returned refers to it.
    """
    with memoryview(data) as view:  # released on return: the caller may close an mmap
        at = _start(view)
        if len(view) < at + _DIGEST:
            raise SnapshotError("snapshot is truncated")
        check = _Checksum(view)
        try:
            at, manifest = _manifest(view, at)
            result = _decode(view, data if type(data) is bytes else None, at, manifest)
        except (SnapshotError, CityIdError, KeyError, TypeError, ValueError, IndexError) as e:
            check.verify()  # a corrupt file is reported as such, not by what broke on it
            if isinstance(e, SnapshotError):
                raise
            raise SnapshotError(f"snapshot does not decode: {e}") from e
        check.verify()
        return result


class _Checksum:
    """The SHA-256 of a snapshot's bytes, computed in a thread from the start."""

    def __init__(self, view: memoryview) -> None:
        self._ok = False
        self._thread = threading.Thread(target=self._run, args=(view,), name="snapshot-sha256")
        self._thread.start()

    def _run(self, view: memoryview) -> None:
        self._ok = hashlib.sha256(view[:-_DIGEST]).digest() == bytes(view[-_DIGEST:])

    def verify(self) -> None:
        self._thread.join()
        if not self._ok:
            raise SnapshotError("snapshot checksum does not match: corrupt or truncated")


def _decode(
    view: memoryview, whole: bytes | None, at: int, manifest: dict[str, Any]
) -> tuple[Namespace, Position]:
    end = len(view) - _DIGEST

    def skip(n: int) -> int:
        nonlocal at
        if n < 0 or at + n > end:
            raise SnapshotError("snapshot sections overrun its length")
        at += n
        return at - n

    def take(n: int) -> bytes:
        start = skip(n)
        return view[start : start + n].tobytes()

    def peek(n: int) -> memoryview:  # for arrays, which copy from a view themselves
        start = skip(n)
        return view[start : start + n]

    position = Position.from_wire(manifest["position"])
    prefixes: dict[Prefix, PrefixState] = {}
    for (text, key, version, host, record, key_version, old_keys, revoked, custody_version,
         custody) in manifest["prefixes"]:  # fmt: skip
        p = Prefix.parse(text)
        prefixes[p] = PrefixState(
            p, bytes(key), int(version), str(host), Record.decode(record), int(key_version),
            {bytes(k) for k in old_keys}, bool(revoked),
            {bytes(k): frozenset(map(str, a)) for k, a in custody}, int(custody_version),
        )  # fmt: skip
    children = {Prefix.parse(p): frozenset(map(str, nodes)) for p, nodes in manifest["children"]}
    ids: dict[Prefix, IdsImage] = {}
    tables: dict[Prefix, IdTable] = {}
    for entry in manifest["ids"]:
        p = Prefix.parse(entry["prefix"])
        ranges = tuple(MintRange.from_body(body) for body in entry["ranges"])
        if any(r.prefix != p for r in ranges):
            raise SnapshotError(f"snapshot has a range of another prefix under {p}")
        fence_blob, nblocks = take(entry["fence"]), int(entry["blocks"])
        fence = fence_blob.split(b"\n") if nblocks else []
        offsets = numbers_from_bytes("u64", peek(8 * (nblocks + 1)))
        size = int(entry["data"])
        if len(fence) != nblocks or offsets[0] != 0 or offsets[-1] != size:
            raise SnapshotError(f"snapshot blocks of {p} do not add up")
        if whole is not None:  # the blocks are searched where they lie in the file's bytes
            blob, base = whole, skip(size)
        else:
            blob, base = take(size), 0
        # A cheap consistency check (the checksum guards the bytes; this, the writer): a
        # sample of the blocks start with their fence suffix.
        for i in {0, nblocks - 1, *range(0, nblocks, 61)} if nblocks else ():
            if not blob.startswith(b"\n" + fence[i] + b"=", base + offsets[i]):
                raise SnapshotError(f"snapshot blocks of {p} are inconsistent")
        count = int(entry["count"])
        numbers = {}
        for letters, width, kind, nbytes in entry["numbers"]:
            if kind != number_kind(width):
                raise SnapshotError(f"snapshot numbers of {p} have an unknown layout {kind!r}")
            raw = take(nbytes) if kind == "int" else peek(nbytes)
            numbers[(str(letters), int(width))] = numbers_from_bytes(kind, raw)
        ids[p] = IdsImage(ranges, (), None)
        tables[p] = IdTable(fence, None, count, numbers, blob=blob, offsets=offsets, base=base)
    if at != end:
        raise SnapshotError("snapshot has bytes after its last section")
    image = NamespaceImage(prefixes, children, ids)
    return Namespace.from_image(image, tables), position


# -- comparing -----------------------------------------------------------------------------


def describe(ns: Namespace) -> dict[str, Any]:
    """Everything ``ns`` holds as plain, sorted data: two namespaces are the same state
    exactly when their descriptions are equal (for tests and debugging; O(identifiers))."""
    image = ns.image()
    ids = {}
    for p, img in sorted(image.ids.items()):
        table = img.merged()
        ids[str(p)] = {
            "ranges": [r.body() for r in img.ranges],
            "explicit": dict(table.items()),
            "numbers": {f"{lt}/{w}": list(n) for (lt, w), n in sorted(table.numbers.items()) if n},
        }
    return {
        "prefixes": {str(p): _prefix_wire(st) for p, st in sorted(image.prefixes.items())},
        "children": {str(p): sorted(c) for p, c in sorted(image.children.items())},
        "ids": ids,
    }
