"""Resolver commands: ``cityid resolver serve`` and ``cityid resolve ID [--verify]``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityid.cli import Subparsers, group
from cityid.errors import CityIdError, ProofError
from cityid.identifiers import Identifier, parse_identifier, parse_minted
from cityid.keys import VerifierKey
from cityid.netaddr import host_port
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintRange,
    Operation,
    RotateKey,
    SignedOperation,
    Update,
    content_of,
)
from cityid.records import Record, render_template

RAW = argparse.RawDescriptionHelpFormatter
RESOLVER_ENV = "CITYID_RESOLVER"
DEFAULT_RESOLVER = "http://127.0.0.1:8080"


def add_commands(sub: Subparsers) -> None:
    res = group(sub, "resolver", "run a resolver: serve (HTTP), dns (DNS)")
    s = res.add_parser(
        "serve", formatter_class=RAW,
        help="serve HTTP lookups (redirects, Handle JSON API, proofs) from Redis",
        description=(
            "Serve GET /ID (302 to the identifier's URL), /api/handles/ID (Handle REST JSON), "
            "/api/proofs/ID (c2sp.org/tlog-proof), /metrics and /healthz, from N worker "
            "processes sharing the port (SO_REUSEPORT). With --config, the settings come from "
            "resolver.toml and, unless [sync] enabled = false, this process also runs sync: it "
            "follows and verifies the logs into Redis. With --redis only, it serves what "
            "another process syncs. SIGTERM or Ctrl-C stops it after the requests in flight."
        ),
        epilog=(
            "examples:\n"
            "  cityid resolver serve --config ./resolver/resolver.toml\n"
            "  cityid resolver serve --redis redis://127.0.0.1:6379/0 "
            "--listen 0.0.0.0:8080 --workers 4"
        ),
    )  # fmt: skip
    s.add_argument("--config", type=Path, metavar="FILE", help="resolver.toml (or its directory)")
    s.add_argument("--redis", metavar="URL", help="Redis/Valkey URL (overrides the config)")
    s.add_argument("--listen", metavar="HOST:PORT", help="address (default 127.0.0.1:8080)")
    s.add_argument("--workers", type=int, metavar="N", help="worker processes (default 1)")
    s.add_argument("--public-url", metavar="URL", help="base URL shown in 2D codes on pages")
    s.add_argument("--cache-size", type=int, metavar="N", help="identifiers cached per worker")
    s.add_argument(
        "--cache-ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="longest a cached answer is kept without an invalidation (default %(default)s)",
    )
    s.add_argument(
        "--no-fast-path",
        action="store_true",
        help="answer everything with aiohttp (the lean GET /ID path is on by default)",
    )
    s.add_argument("--no-sync", action="store_true", help="serve only, even with a config")
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser(
        "resolve", formatter_class=RAW,
        help="look an identifier up on a resolver; --verify checks its proof offline",
        description=(
            "Fetch ID's record from a resolver (--resolver, env CITYID_RESOLVER). With "
            "--verify, also fetch the tlog-proof of the log leaf that set the record and "
            "check, without trusting the resolver: the checkpoint's signature by the log key "
            "and the witness quorum (--policy), the leaf's inclusion in that checkpoint, the "
            "leaf's own signature, that the leaf is an operation on ID giving exactly the "
            "record served, and where the log key comes from: the root key you give, or a "
            "delegation leaf proven the same way, up to the root. Each check is printed."
        ),
        epilog=(
            "examples:\n"
            "  cityid resolve MA.156.1301.02/A00000018\n"
            "  cityid resolve MA.156.1301.02/A00000018 --verify --root-key root.vkey\n"
            "  cityid resolve MA.156.1301.02/A00000018 --verify --policy witnesses.policy"
        ),
    )  # fmt: skip
    r.add_argument("id", metavar="ID", help="the identifier, e.g. MA.156.1301.02/W0000127R")
    r.add_argument(
        "--resolver",
        default=os.environ.get(RESOLVER_ENV, DEFAULT_RESOLVER),
        help=f"resolver base URL (env {RESOLVER_ENV}; default %(default)s)",
    )
    r.add_argument("--json", action="store_true", help="print the Handle JSON answer as is")
    r.add_argument("--verify", action="store_true", help="verify the record's proof offline")
    r.add_argument(
        "--root-key",
        metavar="VKEY|FILE",
        help="the root log's verifier key (string or .vkey file)",
    )
    r.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="c2sp tlog-policy: the root log key(s), the witnesses and their quorum",
    )
    r.add_argument("--timeout", type=float, default=30.0, help="seconds (default %(default)s)")
    r.set_defaults(func=cmd_resolve)


# -- serve --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from cityid.valkey import EmbeddedValkey, redis_url

    from .config import setting
    from .http import ServeOptions
    from .server import WorkerSpec, serve

    cfg = None
    if args.config is not None:
        from .config import ResolverConfig

        cfg = ResolverConfig.load(args.config)
    elif not args.redis and not redis_url():
        raise CityIdError("give --config FILE or --redis URL", rule="usage")
    url = args.redis or (cfg.effective_redis_url() if cfg else "") or redis_url() or ""
    listen = setting(args.listen, cfg, "http_listen", "127.0.0.1:8080")
    try:
        host, port = host_port(listen)
    except ValueError as e:
        raise CityIdError(f"--listen {listen!r} is not HOST:PORT", rule="usage") from e
    workers = setting(args.workers, cfg, "processes", 1)
    if not 1 <= workers <= 256:
        raise CityIdError("--workers must be 1..256", rule="usage")
    options = ServeOptions(
        public_url=setting(args.public_url, cfg, "public_url", ""),
        cache_size=setting(args.cache_size, cfg, "cache_size", 100_000),
        cache_ttl=args.cache_ttl,
        fast_path=not args.no_fast_path,
        search_index=cfg.search_index_path() if cfg else "",
    )
    embedded = None
    if not url:
        embedded = EmbeddedValkey()
        url = embedded.start()
    spec = WorkerSpec(
        redis_url=url,
        host=host,
        port=port,
        options=options,
        workers=workers,
        redis_cluster=bool(cfg and cfg.redis_cluster),
        redis_timeout=cfg.redis_timeout_s if cfg else 2.0,
        meta_ttl=cfg.meta_ttl_s if cfg else 1.0,
    )
    starters = []
    if embedded is not None:
        starters.append(_valkey_supervisor(embedded))  # a dead one comes back on its port
    if cfg is not None and cfg.sync and not args.no_sync:
        starters.append(_sync_starter(cfg, url))
    try:
        serve(spec, background=_all(starters) if starters else None)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


Starter = Callable[[], Awaitable[Callable[[], Awaitable[None]]]]


def _all(starters: list[Starter]) -> Starter:
    """Start each in turn; what it returns stops them all, the last started first."""

    async def start() -> Callable[[], Awaitable[None]]:
        stops = [await s() for s in starters]

        async def stop() -> None:
            for s in reversed(stops):
                await s()

        return stop

    return start


def _valkey_supervisor(server: Any) -> Starter:
    """Supervise the embedded server from the supervisor's loop (the thread that started it)."""

    async def start() -> Callable[[], Awaitable[None]]:
        watching = server.supervising()
        await watching.__aenter__()

        async def stop() -> None:
            await watching.__aexit__(None, None, None)

        return stop

    return start


def _sync_starter(cfg: Any, url: str) -> Starter:
    """Start sync in the supervisor process: one follower per server, leader-locked."""

    async def start() -> Callable[[], Awaitable[None]]:
        from .store import Store
        from .sync import Sync

        store = await Store.connect(
            url, cluster=cfg.redis_cluster, meta_ttl=cfg.meta_ttl_s, timeout=cfg.redis_timeout_s
        )
        sync = Sync(
            store,
            cfg.root_log_url,
            cfg.witnesses(),
            cfg.root_anchor(),
            cfg.root_origin or None,
            cfg.poll_interval_ms / 1000,
            log_urls=cfg.log_urls,
            lock_ttl=cfg.lock_ttl_ms / 1000,
            chunk=cfg.chunk,
            resize_grace=cfg.resize_grace_s,
            index_path=cfg.search_index_path(),
        )
        await sync.start()

        async def stop() -> None:
            await sync.stop()
            await store.close()

        return stop

    return start


# -- resolve --------------------------------------------------------------------------------


def cmd_resolve(args: argparse.Namespace) -> int:
    ident = parse_identifier(args.id)
    return asyncio.run(_resolve(args, ident))


async def _resolve(args: argparse.Namespace, ident: Identifier) -> int:
    import aiohttp

    base = args.resolver.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        status, answer = await _get_json(session, f"{base}/api/handles/{ident}")
        # A tombstone is Handle's 404 with the deletion's fields (deleted: true).
        if args.verify and status != 200 and answer.get("deleted") is not True:
            # Nothing to verify: the resolver's refusal, said once, is the whole answer.
            raise CityIdError(
                f"{answer.get('handle') or ident}: HTTP {status}: {answer.get('message', '')}",
                rule=str(answer.get("rule") or "not-found"),
            )
        if args.json:
            print(json.dumps(answer, indent=2, ensure_ascii=False))
        else:
            _print_answer(status, answer)
        if not args.verify:
            return 0 if status == 200 else 1
        verifier = Verifier(session, base, _root_policy(args), say=print)
        print("verify:")
        await verifier.check_answer(ident, status, answer)
        print(f"verified offline: {verifier.summary()}")
    return 0


async def _get_json(session: Any, url: str) -> tuple[int, dict[str, Any]]:
    import aiohttp

    try:
        async with session.get(url, headers={"Accept": "application/json"}) as resp:
            body = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        raise CityIdError(f"cannot reach the resolver at {url}: {e}", rule="unreachable") from e
    try:
        data = json.loads(body)
    except ValueError as e:
        raise CityIdError(f"{url}: HTTP {status}, not JSON", rule="bad-answer") from e
    if not isinstance(data, dict):
        raise CityIdError(f"{url}: HTTP {status}, not a JSON object", rule="bad-answer")
    return status, data


def _print_answer(status: int, answer: dict[str, Any]) -> None:
    handle = answer.get("handle", "")
    if status != 200:
        print(f"{handle}: HTTP {status}, responseCode {answer.get('responseCode')}: "
              f"{answer.get('message', '')}")  # fmt: skip
        return
    print(handle)
    for v in answer.get("values", []):
        data = v.get("data", {})
        value = data.get("value") if isinstance(data, dict) else data
        if isinstance(value, dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        print(f"  {v.get('index'):>4}  {v.get('type', ''):<10} {value}  (ttl {v.get('ttl')})")


def _root_policy(args: argparse.Namespace) -> Any:
    from ledger.policy import LogEntry, Policy

    if args.root_key is None and args.policy is None:
        raise CityIdError(
            "--verify needs the root of trust: --root-key VKEY or --policy FILE", rule="usage"
        )
    policy = None
    if args.policy is not None:
        try:
            policy = Policy.parse(args.policy.read_bytes())
        except OSError as e:
            raise CityIdError(f"{args.policy}: {e.strerror}", rule="usage") from e
    if args.root_key is not None:
        text = args.root_key
        if os.path.exists(text):
            text = Path(text).read_text().strip()
        vkey = VerifierKey.parse(text)
        if policy is None:
            return Policy.for_log(vkey)
        return dataclasses.replace(policy, logs=(LogEntry(vkey),))
    assert policy is not None
    if not policy.logs:
        raise CityIdError(f"{args.policy} lists no log: add the root log key", rule="usage")
    return policy


@dataclass(frozen=True, slots=True)
class Proven:
    """A leaf shown to be in a log whose checkpoint met the policy."""

    ident: str
    signed: SignedOperation
    origin: str
    index: int
    size: int


class Verifier:
    """Check proofs from a resolver against a root of trust, trusting nothing else it says.

    The root policy names the root log's key(s) and the witnesses and quorum
    that every log is held to (as the resolver's own sync does). The key of any
    other log is learnt from the delegation that names it, itself proven, so
    the chain of log keys always ends at the root key given on the command line.
    """

    def __init__(self, session: Any, base: str, root_policy: Any, *, say: Callable[[str], None]):
        self.session = session
        self.base = base
        self.root_policy = root_policy
        self.say = say
        self.log_keys: dict[str, VerifierKey] = {e.origin: e.vkey for e in root_policy.logs}
        self._proven: dict[str, Proven] = {}
        self.checks = 0

    def summary(self) -> str:
        roots = ", ".join(_key_name(e.vkey) for e in self.root_policy.logs)
        return (
            f"{self.checks} proofs against root key {roots}, witness quorum "
            f"{self.root_policy.describe_quorum()}"
        )

    async def _proof(self, ident: str) -> tuple[Any, bytes]:
        import aiohttp

        from ledger.tlogproof import TlogProof

        url = f"{self.base}/api/proofs/{ident}"
        try:
            async with self.session.get(url) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise CityIdError(f"cannot fetch {url}: {e}", rule="unreachable") from e
        if status != 200:
            raise ProofError(f"{url}: HTTP {status}: {body[:200]!r}", rule="proof-fetch")
        proof = TlogProof.parse(body)
        if not proof.extra:
            raise ProofError(f"{url}: the proof does not carry the leaf", rule="proof-no-leaf")
        return proof, proof.extra

    async def prove(self, ident: str) -> Proven:
        """Fetch and check the proof of the leaf behind ``ident``'s current entry."""
        got = self._proven.get(ident)
        if got is not None:
            return got
        from ledger.policy import LogEntry
        from ledger.tlogproof import verify_proof

        proof, leaf = await self._proof(ident)
        origin = proof.checkpoint.origin
        vkey = await self.log_key(origin, parse_identifier(ident))
        policy = dataclasses.replace(self.root_policy, logs=(LogEntry(vkey),))
        verified = policy.verify(proof.note, origin=origin, now=int(time.time()))
        cp = verify_proof(proof, policy, leaf, now=int(time.time()))
        signed = SignedOperation.decode(leaf)  # canonical form and the writer's signature
        cos = ", ".join(sorted(verified.cosigners)) or "no witness"
        self.checks += 1
        self.say(
            f"  ok  {ident}: leaf {proof.index} of log {origin} is in its checkpoint of size "
            f"{cp.size}, signed by log key {_key_name(vkey)}, "
            f"cosigned by {cos} (quorum {policy.describe_quorum()})"
        )
        self.say(
            f"  ok  leaf {proof.index}: a {signed.op.kind} signed by key {signed.fingerprint}, "
            "signature verified"
        )
        out = Proven(ident, signed, origin, proof.index, cp.size)
        self._proven[ident] = out
        return out

    async def log_key(self, origin: str, ident: Identifier) -> VerifierKey:
        """The key of log ``origin``: given (root), or from a proven delegation naming it."""
        known = self.log_keys.get(origin)
        if known is not None:
            return known
        named = ident.named_prefix
        start = named.parent if named is not None else ident.prefix
        # The nearest delegation up the tree that names this log hosts ``ident``.
        for p in start.ancestors() if start is not None else []:
            if origin in self.log_keys:  # learnt while proving a nearer delegation
                return self.log_keys[origin]
            try:
                proven = await self.prove(str(p.record_id))
            except ProofError as e:
                if e.rule == "proof-fetch":
                    continue  # not delegated by a leaf (the root prefix): look higher
                raise
            op = proven.signed.op
            if isinstance(op, Delegate) and op.origin == origin:
                vkey = _delegated_log_key(op, origin)
                self.say(
                    f"  ok  log {origin}: key {_key_name(vkey)} from the delegation of "
                    f"{op.prefix} (proven above)"
                )
                self.log_keys[origin] = vkey
                return vkey
        raise ProofError(
            f"log {origin} is not named by any proven delegation above {ident}: its key cannot "
            "be traced to the root key",
            rule="untrusted-log",
        )

    async def check_answer(self, ident: Identifier, status: int, answer: dict[str, Any]) -> None:
        proven = await self.prove(str(ident))
        op = content_of(proven.signed.op)
        if answer.get("deleted") is True:
            if not isinstance(op, Delete) or str(op.ident) != str(ident):
                raise ProofError(
                    f"the resolver says {ident} is deleted, but leaf {proven.index} is a "
                    f"{op.kind} of {op.target}",
                    rule="proof-mismatch",
                )
            self.say(f"  ok  leaf {proven.index} deletes {ident}: the tombstone is in the log")
            return
        record = record_from_op(op, ident)
        if record is None:
            self.say(
                f"  --  leaf {proven.index} is a {op.kind} of {op.target}: it carries no record, "
                "so the values served are not covered by this proof"
            )
            return
        want = record.to_json(str(ident))["values"]
        if want != answer.get("values"):
            raise ProofError(
                f"the record served for {ident} is not the one in leaf {proven.index}: the "
                "resolver's answer does not match the log",
                rule="proof-mismatch",
            )
        self.say(
            f"  ok  the {len(want)} values served are exactly those leaf {proven.index} "
            f"sets for {ident}"
        )
        await self._signer(ident, proven)

    async def _signer(self, ident: Identifier, proven: Proven) -> None:
        """Say whether the leaf's signer is the key delegated for the prefix it writes under."""
        named = ident.named_prefix
        holder = named.parent if named is not None else ident.prefix
        if holder is None:
            return
        try:
            deleg = await self.prove(str(holder.record_id))
        except ProofError:
            self.say(
                f"  --  {holder} is a root prefix: its key is the root of trust "
                f"({proven.signed.fingerprint} signed this leaf)"
            )
            return
        op = deleg.signed.op
        key = None
        if isinstance(op, Delegate):
            key = op.key
        elif isinstance(op, RotateKey):
            key = op.new_key
        if key == proven.signed.signer:
            self.say(
                f"  ok  the signer {proven.signed.fingerprint} is the key delegated to {holder}"
            )
        else:
            self.say(
                f"  --  the signer {proven.signed.fingerprint} is not the key in {holder}'s "
                "latest leaf (a rotation since, or a write by a parent): offline checks do not "
                "replay the key history; sync checked the authority when it applied the leaf"
            )


def _key_name(vkey: VerifierKey) -> str:
    """A log key as the user configured it: its name and c2sp.org/signed-note key ID (the
    hex in its ``name+ID+base64`` form), the one short name for it in every line."""
    return f"{vkey.name}+{vkey.key_id.hex()}"


def _delegated_log_key(op: Delegate, origin: str) -> VerifierKey:
    # As sync learns it: a CITYID_PUBKEY value named after the origin, else the
    # delegated key under the origin's name.
    for text in op.record.pubkeys():
        try:
            vk = VerifierKey.parse(text)
        except CityIdError:
            continue
        if vk.name == origin:
            return vk
    return VerifierKey(origin, op.key)


def record_from_op(op: Operation, ident: Identifier) -> Record | None:
    """The record ``op`` gives ``ident`` (None if it gives none); raises if not about it."""
    target = str(ident)
    if isinstance(op, Mint) and op.prefix == ident.prefix:
        for item in op.items:
            if item.suffix == ident.suffix:
                return item.record
    elif isinstance(op, MintRange) and op.prefix == ident.prefix:
        m = parse_minted(ident.suffix)
        if op.contains(m.letters, m.number, m.width):
            return render_template(op.template, suffix=ident.suffix, id=target)
    elif (isinstance(op, Update) and str(op.ident) == target) or (
        isinstance(op, Delegate) and str(op.prefix.record_id) == target
    ):
        return op.record
    elif isinstance(op, RotateKey) and str(op.prefix.record_id) == target:
        return None
    raise ProofError(
        f"the leaf is a {op.kind} of {op.target}, not an operation on {target}",
        rule="proof-mismatch",
    )
