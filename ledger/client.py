"""An async follower of a c2sp.org/tlog-tiles log: trust nothing the server sends.

Everything fetched is checked before it is used:

- the checkpoint must meet the policy (log signature, witness quorum);
- every hash tile is authenticated against the checkpoint root before any of
  its hashes is used (partial tiles by recomputing the root, full tiles by their
  hash in the tile above: :class:`ledger.tiles.TileHashReader` with ``root``);
- every entry bundle must hash, entry by entry, to the authenticated level-0
  tile, so an entry is yielded only once it is proven to be in the tree;
- a new checkpoint must be consistent with the last one trusted, proven from
  the new tree's tiles; otherwise :class:`~cityid.errors.ForkError`.

The Merkle code is synchronous and reads hashes through a ``HashReader``; to
fetch over HTTP without blocking, each operation first runs against a
recording reader to learn which stored hashes it needs (the indexes depend
only on the sizes, never on hash values), fetches the tiles holding them
concurrently, then runs for real on the fetched tiles.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import aiohttp

from cityid.errors import ForkError, NoteError, ProofError, TileError
from cityid.keys import VerifierKey

from . import merkle
from .checkpoint import Checkpoint
from .merkle import EMPTY_ROOT, HASH_SIZE, HashReader, leaf_hash, stored_hash_index
from .note import MAX_NOTE_SIZE
from .policy import Policy, as_policy
from .session import SessionUser
from .tiles import (
    MAX_ENTRY_SIZE,
    TILE_WIDTH,
    TileHashReader,
    decode_bundle,
    encode_bundle,
    entries_path,
    parse_tile_path,
)
from .tlogproof import TlogProof

T = TypeVar("T")

MAX_TILE = TILE_WIDTH * HASH_SIZE
MAX_BUNDLE = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)


class _Recorder:
    """A HashReader that answers zeros and remembers what was asked."""

    def __init__(self) -> None:
        self.indexes: list[int] = []

    def read_hashes(self, indexes: Sequence[int]) -> list[bytes]:
        self.indexes.extend(indexes)
        return [bytes(HASH_SIZE)] * len(indexes)


class LogClient(SessionUser):
    """Follow the log at ``base_url`` (its tlog-tiles prefix), trusting only ``policy_or_vkey``.

    ``policy_or_vkey`` is a :class:`~ledger.policy.Policy` or the log's
    verifier key (then no witnesses are required). ``origin`` defaults to the
    name of the policy's only log key. ``session`` is borrowed, not closed,
    unless omitted.
    """

    def __init__(
        self,
        base_url: str,
        policy_or_vkey: Policy | VerifierKey | str,
        session: aiohttp.ClientSession | None = None,
        *,
        origin: str | None = None,
        timeout: float = 30.0,
        parallel: int = 8,
        cache_tiles: int = 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = as_policy(policy_or_vkey)
        if origin is None and len(self.policy.logs) == 1:
            origin = self.policy.logs[0].origin
        self.origin = origin
        super().__init__(session)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sem = asyncio.Semaphore(parallel)
        self._parallel = parallel
        self._tiles: OrderedDict[str, bytes] = OrderedDict()
        self._cache_tiles = cache_tiles
        self._readers: OrderedDict[Checkpoint, TileHashReader] = OrderedDict()
        self._available: dict[str, bytes] = {}

    # -- plumbing -------------------------------------------------------------------

    async def _get(self, path: str, limit: int, *, fresh: bool = False) -> bytes:
        url = f"{self.base_url}/{path}"
        headers = {"Accept-Encoding": "gzip, identity"}
        if fresh:
            headers["Cache-Control"] = "no-cache"
        async with self._sem:
            try:
                async with self.session.get(url, headers=headers, timeout=self._timeout) as resp:
                    if resp.status == 404:
                        raise TileError(f"{url}: not found (404)", rule="tile-missing")
                    if resp.status != 200:
                        raise TileError(f"{url}: HTTP {resp.status}", rule="tile-fetch")
                    buf = bytearray()
                    async for chunk in resp.content.iter_chunked(65536):
                        buf += chunk
                        if len(buf) > limit:
                            raise TileError(f"{url}: more than {limit} bytes", rule="tile-size")
                    return bytes(buf)
            except TimeoutError as e:
                raise TileError(f"{url}: timed out", rule="tile-fetch") from e
            except aiohttp.ClientError as e:
                raise TileError(f"{url}: {e}", rule="tile-fetch") from e

    async def _get_tile(self, path: str) -> bytes:
        """A hash tile or entry bundle; a vanished partial is cut from its full tile.

        Logs may delete a partial tile once the full one exists (the spec
        allows it), so a client verifying an older checkpoint falls back to
        the full tile's prefix, which holds the same leading hashes or entries.
        """
        tp = parse_tile_path(path)
        limit = MAX_BUNDLE if tp.is_entries else MAX_TILE
        try:
            return await self._get(path, limit)
        except TileError as e:
            if e.rule != "tile-missing" or tp.width == TILE_WIDTH:
                raise
        full = await self._get(tp._replace(width=TILE_WIDTH).path(), limit)
        if not tp.is_entries:
            return full[: tp.width * HASH_SIZE]
        # Re-encode the first W entries; the caller checks every one of them.
        return encode_bundle(decode_bundle(full, name=path)[: tp.width])

    def _reader_for(self, cp: Checkpoint) -> TileHashReader:
        # One authenticating reader per recent checkpoint: tiles it verified
        # stay verified (its pyramid cache), so following a log in many small
        # steps re-checks the right edge once per checkpoint, not per call.
        r = self._readers.get(cp)
        if r is None:
            r = TileHashReader(cp.size, self._fetch_available, cp.root, cache_tiles=256)
            self._readers[cp] = r
            while len(self._readers) > 4:
                self._readers.popitem(last=False)
        else:
            self._readers.move_to_end(cp)
        return r

    def _fetch_available(self, path: str) -> bytes:
        data = self._available.get(path)
        if data is None:
            raise TileError(f"{path}: needed but not fetched", rule="tile-missing")
        return data

    async def _prefetch(self, paths: Sequence[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        need = []
        for p in paths:
            data = self._tiles.get(p)
            if data is None:
                need.append(p)
            else:
                self._tiles.move_to_end(p)
                out[p] = data
        datas = await asyncio.gather(*(self._get_tile(p) for p in need))
        for p, data in zip(need, datas, strict=True):
            out[p] = self._tiles[p] = data
        # A tile path names immutable bytes (a partial's width is in its path),
        # so raw tiles are cached across checkpoints; each reader still
        # authenticates them against its own root before use.
        while len(self._tiles) > self._cache_tiles:
            self._tiles.popitem(last=False)
        return out

    async def _with_tiles(self, cp: Checkpoint, op: Callable[[HashReader], T]) -> T:
        """Run ``op`` (pure, sync) on authenticated tiles of ``cp``'s tree, fetched async."""
        recorder = _Recorder()
        op(recorder)
        for attempt in range(2):
            reader = self._reader_for(cp)
            self._available = await self._prefetch(reader.paths_for(recorder.indexes))
            try:
                return op(reader)
            except TileError as e:
                # Cached tiles from another view of the log (a fork, or a
                # rewritten mirror) fail authentication: retry once from scratch.
                if attempt or e.rule not in ("tile-mismatch", "tile-missing", "tile-size"):
                    raise
                self._tiles.clear()
                self._readers.pop(cp, None)
            finally:
                self._available = {}
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the API ----------------------------------------------------------------------

    async def fetch_checkpoint(self) -> tuple[Checkpoint, bytes]:
        """Fetch and verify the current checkpoint; return it and the signed note."""
        try:
            note = await self._get("checkpoint", MAX_NOTE_SIZE, fresh=True)
        except TileError as e:
            raise NoteError(
                f"cannot fetch the checkpoint: {e.message}", rule="checkpoint-fetch"
            ) from e
        cp = self.policy.check(note, origin=self.origin)
        return cp, note

    async def check_consistency(self, old: Checkpoint, new: Checkpoint) -> list[bytes]:
        """Prove from ``new``'s tiles that ``old`` is a prefix of it; return the proof.

        Raises :class:`ForkError` if it is not (a rollback, a different root at
        the same size, or an inconsistent history) and :class:`TileError` if
        the server's tiles do not match its own checkpoint.
        """
        if old.origin != new.origin:
            raise NoteError(
                f"checkpoints are of different logs ({old.origin!r}, {new.origin!r})",
                rule="checkpoint-origin",
            )
        if old.size > new.size:
            raise ForkError(
                f"{new.origin}: the log went back from size {old.size} to {new.size}",
                rule="rollback",
            )
        if old.size == new.size:
            if old.root != new.root:
                raise ForkError(
                    f"{new.origin}: two different roots for size {new.size}", rule="fork"
                )
            return []
        if old.size == 0:
            if old.root != EMPTY_ROOT:
                raise ForkError(f"{new.origin}: size 0 with a non-empty root", rule="fork")
            return []
        proof = await self._with_tiles(
            new, lambda r: merkle.consistency_proof(new.size, old.size, r)
        )
        try:
            merkle.verify_consistency(proof, new.size, new.root, old.size, old.root)
        except ProofError as e:
            raise ForkError(
                f"{new.origin}: checkpoint of size {new.size} does not extend the trusted one "
                f"of size {old.size} ({e.message}): the log forked",
                rule="fork",
            ) from e
        return proof

    async def inclusion_proof(self, index: int, checkpoint: Checkpoint) -> list[bytes]:
        """The inclusion proof of entry ``index`` under ``checkpoint``, from authenticated tiles."""
        if not 0 <= index < checkpoint.size:
            raise ProofError(
                f"entry {index} is not in the checkpoint of size {checkpoint.size}",
                rule="index-out-of-range",
            )
        return await self._with_tiles(
            checkpoint, lambda r: merkle.inclusion_proof(checkpoint.size, index, r)
        )

    async def tlog_proof(self, index: int, checkpoint: Checkpoint, note: bytes) -> TlogProof:
        """A c2sp.org/tlog-proof for entry ``index`` under the verified ``note``."""
        return TlogProof(index, tuple(await self.inclusion_proof(index, checkpoint)), note)

    async def leaf_hashes(self, start: int, stop: int, checkpoint: Checkpoint) -> list[bytes]:
        """Authenticated leaf hashes ``[start, stop)`` of ``checkpoint``'s tree."""
        if not 0 <= start <= stop <= checkpoint.size:
            raise TileError(
                f"range [{start}, {stop}) is not in the tree of size {checkpoint.size}",
                rule="entry-out-of-range",
            )
        if start == stop:
            return []

        def op(r: HashReader) -> list[bytes]:
            if isinstance(r, TileHashReader):
                return r.leaf_hashes(start, stop)
            # Recording pass: one index per level-0 tile is enough to plan.
            return r.read_hashes(
                [stored_hash_index(0, i) for i in range(start, stop, TILE_WIDTH)]
                + [stored_hash_index(0, stop - 1)]
            )

        return await self._with_tiles(checkpoint, op)

    async def _bundle(self, t: int, checkpoint: Checkpoint) -> list[bytes]:
        width = min(TILE_WIDTH, checkpoint.size - t * TILE_WIDTH)
        path = entries_path(t, width)
        data, want = await asyncio.gather(
            self._get_tile(path),
            self.leaf_hashes(t * TILE_WIDTH, t * TILE_WIDTH + width, checkpoint),
        )
        bundle = decode_bundle(data, count=width, name=path)
        for j, entry in enumerate(bundle):
            if leaf_hash(entry) != want[j]:
                raise TileError(
                    f"{path}: entry {t * TILE_WIDTH + j} does not hash to its leaf in the tree "
                    f"of checkpoint size {checkpoint.size}",
                    rule="bundle-mismatch",
                )
        return bundle

    async def entries(
        self, start: int, stop: int, checkpoint: Checkpoint
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield ``(index, entry)`` for ``[start, stop)``, each proven to be in ``checkpoint``.

        Bundles are fetched a few at a time ahead of the consumer; a bundle
        that does not match the authenticated tiles raises :class:`TileError`
        before any of its entries is yielded.
        """
        if not 0 <= start <= stop <= checkpoint.size:
            raise TileError(
                f"range [{start}, {stop}) is not in the tree of size {checkpoint.size}",
                rule="entry-out-of-range",
            )
        if start == stop:
            return
        first, last = start // TILE_WIDTH, (stop - 1) // TILE_WIDTH
        ahead: list[asyncio.Task[list[bytes]]] = []
        nxt = first
        try:
            for t in range(first, last + 1):
                while nxt <= last and len(ahead) < self._parallel:
                    ahead.append(asyncio.ensure_future(self._bundle(nxt, checkpoint)))
                    nxt += 1
                bundle = await ahead.pop(0)
                base = t * TILE_WIDTH
                for i in range(max(start, base), min(stop, base + len(bundle))):
                    yield i, bundle[i - base]
        finally:
            for task in ahead:
                task.cancel()
            if ahead:
                await asyncio.gather(*ahead, return_exceptions=True)

    async def follow(self, trusted: Checkpoint | None) -> tuple[Checkpoint, bytes]:
        """Fetch the checkpoint and check it extends ``trusted``; return the new one."""
        cp, note = await self.fetch_checkpoint()
        if trusted is not None:
            await self.check_consistency(trusted, cp)
        return cp, note
