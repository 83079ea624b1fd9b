"""Registrar commands: run a registrar, and write to one with signed operations."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cityid.cli import Subparsers, group
from cityid.errors import CityIdError
from cityid.identifiers import Identifier, Prefix, parse_identifier, parse_prefix
from cityid.keys import SigningKey, VerifierKey
from cityid.ops import (
    Delegate,
    Delete,
    Mint,
    MintItem,
    MintRange,
    Operation,
    RotateKey,
    Update,
    now,
)
from cityid.progress import Progress
from cityid.records import DEFAULT_TTL, PUBKEY, SITE, Record, Value

from .client import RegistrarClient, RegistrarError
from .config import Anchor, RegistrarConfig
from .core import MAX_BODY, not_found

RAW = argparse.RawDescriptionHelpFormatter
DEFAULT_REGISTRAR = "http://127.0.0.1:8000"
REGISTRAR_ENV = "CITYID_REGISTRAR"
DEFAULT_RESOLVER = "http://127.0.0.1:8080"
RESOLVER_ENV = "CITYID_RESOLVER"


def add_commands(sub: Subparsers) -> None:
    reg = group(sub, "registrar", "run a registrar: init, serve")
    p = reg.add_parser(
        "init", formatter_class=RAW,
        help="create a registrar's data directory, keys and config",
        description=(
            "Create DIR with registrar.toml, a log key (signs checkpoints) and, unless "
            "--prefix-key names one, an admin key for PREFIX (signs operations under it). "
            "The root registrar hosts the root prefix; a city registrar hosts the prefix its "
            "parent delegated to it, with the key named in that delegation."
        ),
        epilog=(
            "examples:\n"
            "  cityid registrar init ./root --prefix MA.156 --origin root.cityid.test/log\n"
            "  cityid registrar init ./sjz --prefix MA.156.1301 "
            "--origin sjz.cityid.test/log --prefix-key city.vkey --listen 127.0.0.1:8001"
        ),
    )  # fmt: skip
    p.add_argument("dir", metavar="DIR", type=Path, help="data directory to create")
    p.add_argument("--prefix", required=True, help="the prefix this registrar hosts")
    p.add_argument(
        "--origin",
        required=True,
        help="ledger origin: a unique name for this log, e.g. city.example/log",
    )
    p.add_argument(
        "--prefix-key",
        metavar="VKEY|FILE",
        help="verifier key (string, .vkey file or key file) of the prefix's writer",
    )
    p.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    p.add_argument("--public-url", default="", help="URL others use to reach it")
    p.add_argument("--max-batch", type=int, default=1000, help="operations per checkpoint")
    p.add_argument("--max-delay-ms", type=int, default=250, help="batching delay in ms")
    p.set_defaults(func=cmd_init)

    s = reg.add_parser(
        "serve", formatter_class=RAW,
        help="run the registrar's HTTP service",
        description=(
            "Serve the registrar in DIR: POST /api/ops (signed operations), the Handle-style "
            "write API (PUT/DELETE /api/handles/ID), GET /api/version/ID, and the ledger as "
            "static tlog-tiles files under /log/. Ctrl-C stops it cleanly."
        ),
        epilog="example:\n  cityid registrar serve ./root",
    )  # fmt: skip
    s.add_argument("dir", metavar="DIR", type=Path, help="data directory (from init)")
    s.add_argument("--listen", help="HOST:PORT, overriding the config")
    s.set_defaults(func=cmd_serve)

    pre = group(sub, "prefix", "prefixes: delegate")
    d = pre.add_parser(
        "delegate", formatter_class=RAW,
        help="delegate a child prefix to a key (and optionally another registrar)",
        description=(
            "Delegate CHILD (e.g. MA.156.1301.02) to the holder of --child-key. The operation "
            "is signed with --key, which must be the key of CHILD's parent. Without --origin "
            "the child stays on this registrar (its key signs its own writes here); with "
            "--origin it is hosted by another registrar's log. Run again to change a "
            "delegation (a new version)."
        ),
        epilog=(
            "examples:\n"
            "  cityid prefix delegate MA.156.1301 --key root-admin.key --child-key city.vkey \\\n"
            "      --origin sjz.cityid.test/log --log-key sjz/log.vkey \\\n"
            "      --site registrar=http://127.0.0.1:8001 --name Shijiazhuang --geo 38.04,114.51\n"
            "  cityid prefix delegate MA.156.1301.02 --key city.key --child-key traffic.vkey "
            "--name 'Traffic management'"
        ),
    )  # fmt: skip
    d.add_argument("child", metavar="CHILD", help="the prefix to delegate")
    _writer_args(d)
    d.add_argument(
        "--child-key",
        required=True,
        metavar="VKEY|FILE",
        help="the child's verifier key (string, .vkey file or key file)",
    )
    d.add_argument("--origin", help="the child's ledger origin when another registrar hosts it")
    d.add_argument(
        "--log-key",
        metavar="VKEY|FILE",
        help="with --origin: the verifier key that signs that log's checkpoints "
        "(its log.vkey), so resolvers can verify it",
    )
    d.add_argument("--name", help="a NAME value for the prefix record")
    d.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="ROLE=URL",
        help="CITYID_SITE entry: registrar=URL, ledger=URL or resolver=URL (repeat)",
    )
    d.add_argument(
        "--ns",
        action="append",
        default=[],
        metavar="'HOST [ADDR...]'",
        help="a DNS name server for referrals, with optional glue (repeat)",
    )
    d.add_argument(
        "--ds",
        action="append",
        default=[],
        metavar="'TAG ALG DIGEST-TYPE HEX'",
        help="the DS of the child's DNSSEC key, for a prefix whose --ns servers sign its zone "
        "(repeat; as the child's server prints it: see docs/dns.md#dnssec)",
    )
    _value_args(d)
    d.set_defaults(func=cmd_delegate)

    ids = group(sub, "id", "identifiers: check, mint, update, delete")
    m = ids.add_parser(
        "mint", formatter_class=RAW,
        help="mint one identifier, a range, or one per CSV row",
        description=(
            "Mint under a prefix, signed with --key (the prefix's key). Three forms:\n"
            "  PREFIX/SUFFIX        one identifier with the values given\n"
            "  PREFIX --count N     a range of N minted suffixes (letters + digits + MOD 37,36\n"
            "                       check character) from --template: one ledger leaf\n"
            "  PREFIX --csv FILE    one identifier per row (columns suffix|auto, url, geo or\n"
            "                       lat+lon, desc, email, any other TYPE); rows are checked and\n"
            "                       streamed as they are read, and the whole file is accepted\n"
            "                       or refused as one (a bad row is reported by line number);\n"
            "                       a file over --max-body goes in several requests, each\n"
            "                       accepted or refused as one, and a refusal says which rows\n"
            "                       the requests before it minted"
        ),
        epilog=(
            "examples:\n"
            "  cityid id mint MA.156.1301.02/BUS-STOP-17 --key traffic.key "
            "--url https://bus.example/17\n"
            "  cityid id mint MA.156.1301.02 --key traffic.key --count 1000000 --letters W \\\n"
            "      --template 'https://water.example/asset/{suffix}'\n"
            "  cityid id mint MA.156.1301.02 --key traffic.key --csv assets.csv"
        ),
    )  # fmt: skip
    m.add_argument("target", metavar="PREFIX[/SUFFIX]", help="prefix, or one identifier")
    _writer_args(m)
    m.add_argument("--count", type=int, help="mint a range of this many identifiers")
    m.add_argument("--csv", type=Path, help="mint one identifier per row of this CSV file")
    m.add_argument("--letters", default="W", help="letters before the number (default W)")
    m.add_argument("--width", type=int, default=7, help="digits in the number (default 7)")
    m.add_argument(
        "--start", type=int, help="first number (default: the registrar's next free number)"
    )
    m.add_argument("--template", help="URL template for a range, with {suffix} or {id}")
    m.add_argument(
        "--max-body",
        type=int,
        default=MAX_BODY,
        metavar="BYTES",
        help=f"with --csv: bytes per request at most (default {MAX_BODY:,}, the registrar's "
        "limit; lower it behind a proxy with a smaller one)",
    )
    _value_args(m)
    m.set_defaults(func=cmd_mint)

    u = ids.add_parser(
        "update", formatter_class=RAW,
        help="replace the values of an identifier",
        description=("Replace ID's record with the values given, signed with --key (the key "
                     "of ID's prefix). The registrar's current version is named in the "
                     "operation, so a concurrent change makes this one fail as stale."),
        epilog="example:\n  cityid id update MA.156.1301.02/W0000127R --key traffic.key "
               "--url https://new.example/127",
    )  # fmt: skip
    u.add_argument("id", metavar="ID")
    _writer_args(u)
    _value_args(u)
    u.set_defaults(func=cmd_update)

    x = ids.add_parser(
        "delete", formatter_class=RAW,
        help="delete an identifier (a signed tombstone stays in the log)",
        description="Delete ID, signed with --key (the key of ID's prefix).",
        epilog="example:\n  cityid id delete MA.156.1301.02/W0000127R --key traffic.key",
    )  # fmt: skip
    x.add_argument("id", metavar="ID")
    _writer_args(x)
    x.set_defaults(func=cmd_delete)

    key = group(sub, "key", "keys: rotate")
    r = key.add_parser(
        "rotate", formatter_class=RAW,
        help="replace a prefix's key; the old key stops working",
        description=("Rotate PREFIX's key to --new-key, signed with its current --key. After "
                     "this, operations signed with the old key are refused."),
        epilog="example:\n  cityid key rotate MA.156.1301.02 --key old.key --new-key new.key",
    )  # fmt: skip
    r.add_argument("prefix", metavar="PREFIX")
    _writer_args(r)
    r.add_argument("--new-key", required=True, metavar="VKEY|FILE", help="the new key")
    r.set_defaults(func=cmd_rotate)


def _writer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key",
        required=True,
        type=Path,
        metavar="FILE",
        help="your signing key file (from 'cityid keygen')",
    )
    p.add_argument(
        "--registrar",
        metavar="URL",
        help="registrar URL (default: env CITYID_REGISTRAR, else the registrar named in the "
        "CITYID_SITE of the prefix's delegation, looked up on --resolver, else "
        f"{DEFAULT_REGISTRAR})",
    )
    p.add_argument(
        "--resolver",
        metavar="URL",
        help="resolver to find the prefix's registrar on, without --registrar (default: env "
        f"{RESOLVER_ENV}, else {DEFAULT_RESOLVER})",
    )


def _value_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", action="append", default=[], help="a URL value (repeat)")
    p.add_argument("--desc", help="a DESC value")
    p.add_argument("--geo", help="a GEO value: latitude,longitude (WGS-84)")
    p.add_argument("--email", help="an EMAIL value")
    p.add_argument(
        "--value",
        action="append",
        default=[],
        metavar="TYPE=DATA",
        help="any other value, e.g. NAME='Bus stop 17' (repeat)",
    )
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="TTL of the values (seconds)")


def _values(args: argparse.Namespace, ts: int, extra: list[tuple[str, Any]] = ()) -> Record:
    pairs: list[tuple[str, Any]] = [("URL", u) for u in args.url]
    if getattr(args, "template", None):
        pairs.insert(0, ("URL", args.template))
    for vtype, attr in (("DESC", "desc"), ("GEO", "geo"), ("EMAIL", "email")):
        if getattr(args, attr, None):
            pairs.append((vtype, getattr(args, attr)))
    for item in args.value:
        vtype, sep, data = item.partition("=")
        if not sep:
            raise CityIdError(f"--value {item!r} is not TYPE=DATA", rule="usage")
        pairs.append((vtype, data))
    pairs += list(extra)
    return Record(tuple(Value.make(i + 1, t, d, args.ttl, ts) for i, (t, d) in enumerate(pairs)))


def read_vkey(text: str, name: str = "key") -> VerifierKey:
    """A verifier key from a string, a file holding one, or a signing-key file."""
    path = Path(text)
    if path.exists():
        content = path.read_text().strip()
        if content.startswith("PRIVATE+KEY+"):
            return SigningKey.read(path).verifier
        return VerifierKey.parse(content)
    if "+" in text:
        return VerifierKey.parse(text)
    raise CityIdError(f"{name} {text!r} is neither a verifier key nor a file", rule="usage")


def _registrar_url(args: argparse.Namespace, prefix: Prefix | None) -> str:
    """Where to write under ``prefix``: --registrar, env, the hosting registrar, or the default.

    The hosting registrar is the one the prefix's delegation names (CITYID_SITE), as
    the resolver serves it; the choice is said on stderr, so a write never goes
    somewhere the user did not see.
    """
    given = args.registrar or os.environ.get(REGISTRAR_ENV)
    if given:
        return str(given)
    if prefix is not None:
        from .locate import hosting_registrar

        resolver = args.resolver or os.environ.get(RESOLVER_ENV) or DEFAULT_RESOLVER
        found = asyncio.run(hosting_registrar(resolver, prefix))
        if found is not None:
            print(
                f"registrar: {found.url} (it hosts {prefix}: CITYID_SITE of {found.named_by}, "
                f"from the resolver at {resolver})",
                file=sys.stderr,
            )
            return found.url
    args.registrar_fallback = True
    return DEFAULT_REGISTRAR


def _written_under(ident: Identifier) -> Prefix | None:
    """The prefix whose registrar records a change of ``ident``: a prefix record (``0.NA/P``)
    is kept by the registrar of P's parent, which delegated it."""
    if ident.is_prefix_record:
        return ident.named_prefix.parent if ident.named_prefix is not None else None
    return ident.prefix


def _run(coro: Any, args: argparse.Namespace | None = None) -> Any:
    try:
        return asyncio.run(coro)
    except RegistrarError as e:
        if e.rule != "prefix-not-delegated" or not getattr(args, "registrar_fallback", False):
            raise
        raise RegistrarError(
            f"{e.message}, on the default registrar {DEFAULT_REGISTRAR}: if another registrar "
            "hosts it, give its URL with --registrar (or env CITYID_REGISTRAR), or a resolver "
            "that serves its delegation with --resolver",
            rule=e.rule,
            status=e.status,
            response_code=e.response_code,
        ) from e


async def _submit(url: str, ops: list[Operation], key: SigningKey) -> dict[str, Any]:
    async with RegistrarClient(url) as client:
        return await client.submit_ops(ops, key)


def _report(result: dict[str, Any]) -> None:
    for r in result["receipts"]:
        print(f"{r['kind']:<10} {r['target']}  leaf {r['index']}")
    lines = result["checkpoint"].splitlines()
    if len(lines) >= 2:
        print(f"checkpoint {lines[0]} size {lines[1]}")


# -- registrar ---------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    d: Path = args.dir
    if (d / "registrar.toml").exists():
        raise CityIdError(f"{d} already holds a registrar", rule="exists")
    d.mkdir(parents=True, exist_ok=True)
    prefix = parse_prefix(args.prefix)
    log_key = SigningKey.generate(args.origin)
    log_key.write(d / "log.key")
    (d / "log.vkey").write_text(f"{log_key.verifier}\n")
    if args.prefix_key:
        anchor_key = read_vkey(args.prefix_key, "--prefix-key")
    else:
        admin = SigningKey.generate(re.sub(r"[^A-Za-z0-9.-]", "_", str(prefix)) + "-admin")
        admin.write(d / "admin.key")
        anchor_key = admin.verifier
        print(f"wrote {d / 'admin.key'}: the key that signs operations under {prefix}")
    cfg = RegistrarConfig(
        directory=d, origin=args.origin, log_key_file=d / "log.key",
        anchors=[Anchor(prefix, anchor_key)], listen=args.listen, public_url=args.public_url,
        max_batch=args.max_batch, max_delay_ms=args.max_delay_ms,
    )  # fmt: skip
    path = cfg.save()
    print(f"wrote {path}")
    print(f"log key (in {d / 'log.vkey'}; give it to resolvers and witnesses): {log_key.verifier}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    cfg = RegistrarConfig.load(args.dir)
    if args.listen:
        cfg.listen = args.listen
    serve(cfg)
    return 0


# -- writes ------------------------------------------------------------------------


def cmd_delegate(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    child = parse_prefix(args.child)
    child_key = read_vkey(args.child_key, "--child-key")
    ts = now()
    extra: list[tuple[str, Any]] = []
    if args.name:
        extra.append(("NAME", args.name))
    if args.site:
        sites = {}
        for s in args.site:
            role, sep, url = s.partition("=")
            if not sep:
                raise CityIdError(f"--site {s!r} is not ROLE=URL", rule="usage")
            sites[role] = url
        extra.append((SITE, sites))
    if args.ds and not args.ns:
        raise CityIdError(
            "--ds goes with --ns: a DS vouches for the key of the name servers the prefix is "
            "delegated to; a prefix served by this deployment's resolvers has its DS already",
            rule="usage",
        )
    extra += [("NS", ns) for ns in args.ns]
    extra += [("DS", ds) for ds in args.ds]
    extra.append((PUBKEY, str(child_key)))
    if args.log_key:
        if not args.origin:
            raise CityIdError(
                "--log-key goes with --origin: it is the key of that log", rule="usage"
            )
        log_vkey = read_vkey(args.log_key, "--log-key")
        if log_vkey.name != args.origin:
            raise CityIdError(
                f"--log-key is named {log_vkey.name!r} but --origin is {args.origin!r}: a log's "
                "checkpoint key is named after its origin",
                rule="usage",
            )
        extra.append((PUBKEY, str(log_vkey)))
    record = _values(args, ts, extra)
    url = _registrar_url(args, child.parent)  # the parent's registrar records the delegation

    async def go() -> dict[str, Any]:
        async with RegistrarClient(url) as client:
            version, _ = await client.version(child.record_id)
            op = Delegate(child, version, child_key.public_key, args.origin, record, ts)
            return await client.submit_ops([op], key)

    _report(_run(go(), args))
    return 0


def cmd_mint(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    ts = now()
    if "/" in args.target:
        if args.count or args.csv:
            raise CityIdError("give PREFIX (not PREFIX/SUFFIX) with --count or --csv", rule="usage")
        ident = parse_identifier(args.target)

        record = _values(args, ts)  # bad values are refused before any request
        url = _registrar_url(args, ident.prefix)

        async def one() -> dict[str, Any]:
            async with RegistrarClient(url) as client:
                version, _ = await client.version(ident)
                op = Mint(ident.prefix, (MintItem(ident.suffix, version, record),), ts)
                return await client.submit_ops([op], key)

        result = _run(one(), args)
        print(f"minted {ident}")  # only once the registrar has acknowledged it
        _report(result)
        return 0
    prefix = parse_prefix(args.target)
    if args.csv:
        return _mint_csv(args, prefix, key, ts)
    if not args.count:
        raise CityIdError(
            "give PREFIX/SUFFIX, or PREFIX with --count N or --csv FILE", rule="usage"
        )
    if not args.template and not args.url:
        raise CityIdError(
            "a range needs --template (e.g. 'https://x.example/{suffix}')", rule="usage"
        )
    letters = args.letters.upper()
    record = _values(args, ts)
    url = _registrar_url(args, prefix)

    async def rng() -> dict[str, Any]:
        async with RegistrarClient(url) as client:
            start = args.start
            if start is None:
                start = await client.next_number(prefix, letters, args.width)
            op = MintRange(prefix, letters, start, args.count, args.width, record, ts)
            result = await client.submit_ops([op], key)
            print(
                f"minted {prefix}/{op.suffix(0)} .. {prefix}/{op.suffix(op.count - 1)} "
                f"({op.count:,} identifiers, one leaf)"
            )
            return result

    _report(_run(rng(), args))
    return 0


def _mint_csv(args: argparse.Namespace, prefix: Prefix, key: SigningKey, ts: int) -> int:
    from .csvmint import CsvMint

    letters = args.letters.upper()
    url = _registrar_url(args, prefix)

    async def go() -> list[dict[str, Any]]:
        async with RegistrarClient(url) as client:
            start = args.start
            if start is None:
                start = await client.next_number(prefix, letters, args.width)
            reader = CsvMint(
                args.csv,
                prefix,
                letters=letters,
                width=args.width,
                start=start,
                timestamp=ts,
                ttl=args.ttl,
            )
            leaves = reader.signed_leaves(key)
            # The first leaf before the request: a file whose header or first rows
            # are bad is refused without a request at all.
            limit = max(args.max_body - FRAMING, 1)
            parts = _parts(itertools.chain([next(leaves)], leaves), limit)
            results: list[dict[str, Any]] = []
            minted = through = 0  # rows acknowledged; rows in the leaves sent so far
            with Progress(reader.estimate, "minting") as bar:

                def sent(part: Iterator[bytes]) -> Iterator[bytes]:
                    # Rows are read, checked and signed while the leaves before
                    # them are on their way and being checked by the registrar.
                    nonlocal through
                    for leaf in part:
                        through = reader.signed_rows  # the leaf just made is this one
                        bar.update(reader.rows - bar.done)
                        yield leaf
                    bar.update(reader.rows - bar.done)

                for part in parts:
                    try:
                        results.append(await client.submit_stream(sent(part)))
                    except CityIdError as e:
                        if not results:
                            raise
                        raise CityIdError(
                            f"{e.message}. The first {minted:,} rows of {args.csv} were minted "
                            f"before this, in {len(results)} request(s) (leaves "
                            f"{results[0]['receipts'][0]['index']}.."
                            f"{results[-1]['receipts'][-1]['index']}); rows {minted + 1:,} "
                            "on were not: mint those from a CSV of the remaining rows",
                            rule=e.rule,
                        ) from e
                    minted = through
            print(
                f"minted {reader.rows:,} identifiers from {args.csv} "
                f"({reader.auto:,} auto-numbered) in {reader.leaves} leaves"
                + (f", {len(results)} requests" if len(results) > 1 else "")
            )
            return results

    results = _run(go(), args)
    lines = results[-1]["checkpoint"].splitlines()
    print(
        f"leaves {results[0]['receipts'][0]['index']}..{results[-1]['receipts'][-1]['index']}; "
        f"checkpoint {lines[0]} size {lines[1]}"
    )
    return 0


#: What a request's body holds besides its leaves (the end marker), with room to spare.
FRAMING = 1024


def _parts(leaves: Iterator[bytes], limit: int) -> Iterator[Iterator[bytes]]:
    """``leaves`` cut into runs whose streamed bodies stay within ``limit`` bytes.

    Each run is one request, all or none; a file too big for one request is
    minted in several, one after another. A run is never empty: the next leaf is
    made before a run starts, and one that would overflow a run begins the next.
    """
    carry: list[bytes] = []

    def run() -> Iterator[bytes]:
        size = 0
        for leaf in itertools.chain([carry.pop()], leaves):
            size += len(leaf) + 5  # a msgpack bin header is at most 5 bytes
            if size > limit and size > len(leaf) + 5:
                carry.append(leaf)
                return
            yield leaf

    while True:
        if not carry:
            carry.extend(itertools.islice(leaves, 1))
            if not carry:
                return
        yield run()


def cmd_update(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    ident = parse_identifier(args.id)
    ts = now()
    record = _values(args, ts)
    url = _registrar_url(args, _written_under(ident))

    async def go() -> dict[str, Any]:
        async with RegistrarClient(url) as client:
            version, alive = await client.version(ident)
            if not alive:
                raise not_found(ident, version, key.public_key)
            return await client.submit_ops([Update(ident, version, record, ts)], key)

    _report(_run(go(), args))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    ident = parse_identifier(args.id)
    url = _registrar_url(args, _written_under(ident))

    async def go() -> dict[str, Any]:
        async with RegistrarClient(url) as client:
            version, alive = await client.version(ident)
            if not alive:
                raise not_found(ident, version, key.public_key)
            return await client.submit_ops([Delete(ident, version, now())], key)

    _report(_run(go(), args))
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    prefix = parse_prefix(args.prefix)
    new = read_vkey(args.new_key, "--new-key")
    url = _registrar_url(args, prefix)

    async def go() -> dict[str, Any]:
        async with RegistrarClient(url) as client:
            version = await client.key_version(prefix)
            return await client.submit_ops([RotateKey(prefix, version, new.public_key, now())], key)

    _report(_run(go(), args))
    print(f"{prefix} is now signed by {new}")
    return 0
