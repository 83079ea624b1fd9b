"""``cityid resolver dns serve``: the DNS front over the Redis that sync fills."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from dns.exception import DNSException

from cityid.cli import Subparsers, group
from cityid.errors import CityIdError
from cityid.netaddr import host_port

RAW = argparse.RawDescriptionHelpFormatter


def add_commands(sub: Subparsers) -> None:
    res = group(sub, "resolver", "run a resolver: serve")
    dns_group = group(res, "dns", "the resolver's DNS front end")
    s = dns_group.add_parser(
        "serve", formatter_class=RAW,
        help="answer DNS (UDP and TCP) from Redis: TXT, URI, NAPTR, SOA, NS, referrals",
        description=(
            "Serve identifiers over DNS: MA.156.1301.02/W0000127R is "
            "w0000127r.02.1301.156.ma.<apex>. TXT (one string per value, TYPE=data), URI "
            "(URL values), NAPTR (10320/LOC locations); SOA and NS at the apex of every "
            "prefix served here; referrals for prefixes whose record names other name "
            "servers (NS values); NXDOMAIN with SOA for what does not exist. EDNS(0), TC and "
            "TCP fallback, response-rate limiting per client /24 (/56). N processes share "
            "the port (SO_REUSEPORT). The answers come from the Redis that "
            "'cityid resolver serve' (sync) fills: give the same --config or --redis."
        ),
        epilog=(
            "examples:\n"
            "  cityid resolver dns serve --config ./resolver/resolver.toml\n"
            "  cityid resolver dns serve --redis redis://127.0.0.1:6379/0 --root MA.156 "
            "--apex cityid.test --listen 127.0.0.1:5353 --processes 2\n"
            "  dig @127.0.0.1 -p 5353 w0000127r.02.1301.156.ma.cityid.test TXT"
        ),
    )  # fmt: skip
    s.add_argument("--config", type=Path, metavar="FILE", help="resolver.toml (or its directory)")
    s.add_argument("--redis", metavar="URL", help="Redis/Valkey URL (overrides the config)")
    s.add_argument("--listen", metavar="HOST:PORT", help="address (default 127.0.0.1:5353)")
    s.add_argument("--apex", help="the DNS apex of the namespace (default cityid.test)")
    s.add_argument(
        "--root", action="append", metavar="PREFIX",
        help="a root prefix served here (repeatable; default: the config's [root] prefix)",
    )  # fmt: skip
    s.add_argument(
        "--ns", action="append", metavar="HOST=ADDR[,ADDR]",
        help="this server's own NS host and addresses (repeatable; default ns1.<apex>=127.0.0.1)",
    )  # fmt: skip
    s.add_argument("--processes", type=int, metavar="N", help="processes (default 1)")
    s.add_argument("--ttl", type=int, metavar="S", help="TTL of SOA/NS and cap on all (300)")
    s.add_argument("--negative-ttl", type=int, metavar="S", help="SOA minimum (60)")
    s.add_argument("--max-udp", type=int, metavar="N", help="EDNS UDP size (1232)")
    s.add_argument("--cache-size", type=int, metavar="N", help="answers cached per process")
    s.add_argument(
        "--cache-ttl", type=float, default=3600.0, metavar="S",
        help="seconds an answer stays cached if no invalidation comes first (3600)",
    )  # fmt: skip
    s.add_argument(
        "--rrl-rate", type=float, metavar="N",
        help="responses per second per client /24 (/56); 0 turns RRL off (default 20)",
    )  # fmt: skip
    s.add_argument("--rrl-slip", type=int, metavar="N", help="every Nth drop: TC (2)")
    s.add_argument(
        "--identity", metavar="TEXT",
        help="CH TXT id.server answer ({hostname}, {index}); '' refuses it",
    )  # fmt: skip
    s.add_argument(
        "--dnssec-key", metavar="FILE",
        help="sign answers to DO queries with this Ed25519 key (made with 'cityid keygen', "
        "kept 0600); see docs/dns.md#dnssec. Default: the config's [dns] dnssec_key, or unsigned",
    )  # fmt: skip
    s.add_argument(
        "--dnssec-next-key", action="append", default=[], metavar="KEY",
        help="publish this key too (DNSKEY, CDS and DS), without signing with it: the first "
        "step of a key roll (repeatable; a key file or a verifier key); see docs/dns.md#dnssec",
    )  # fmt: skip
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from cityid.valkey import redis_url
    from ledger.cli import read_vkey

    from ..config import setting
    from .server import DEFAULT_PORT, DnsOptions, DnsSpec, serve

    cfg = None
    if args.config is not None:
        from ..config import ResolverConfig

        cfg = ResolverConfig.load(args.config)
    url = args.redis or os.environ.get("REDIS_URL") or (cfg.effective_redis_url() if cfg else "")
    url = url or redis_url() or ""
    if not url:
        raise CityIdError(
            "the DNS front reads the Redis that sync fills: give --redis URL, REDIS_URL, or a "
            "--config whose [redis] url is set",
            rule="usage",
        )

    def pick(flag: object, key: str, default: object) -> Any:
        return setting(flag, cfg, key, default)

    roots = tuple(args.root or ([cfg.root_prefix] if cfg else []))
    if not roots:
        raise CityIdError("give --root PREFIX (or --config)", rule="usage")
    listen = pick(args.listen, "dns_listen", f"127.0.0.1:{DEFAULT_PORT}")
    try:
        host, port = host_port(listen)
    except ValueError as e:
        raise CityIdError(f"--listen {listen!r} is not HOST:PORT", rule="usage") from e
    processes = pick(args.processes, "processes", 1)
    if not 1 <= processes <= 256:
        raise CityIdError("--processes must be 1..256", rule="usage")
    rate = pick(args.rrl_rate, "rrl_per_second", 20)

    options = DnsOptions(
        max_udp=pick(args.max_udp, "max_udp", 1232),
        cache_size=pick(args.cache_size, "cache_size", 200_000),
        cache_ttl=args.cache_ttl,
        rrl_rate=float(rate),
        rrl_slip=pick(args.rrl_slip, "rrl_slip", 2),
    )  # fmt: skip
    if not 512 <= options.max_udp <= 65535:
        raise CityIdError("--max-udp must be 512..65535", rule="usage")
    spec = DnsSpec(
        redis_url=url,
        apex=pick(args.apex, "apex", "cityid.test"),
        roots=roots,
        host=host,
        port=port,
        nameservers=tuple(pick(args.ns, "nameservers", ())),
        ttl=pick(args.ttl, "dns_ttl_s", 300),
        negative_ttl=pick(args.negative_ttl, "negative_ttl_s", 60),
        identity=pick(args.identity, "identity", "{hostname}/{index}"),
        dnssec_key=args.dnssec_key or (cfg.dnssec_key_path() if cfg else ""),
        dnssec_next_keys=tuple(str(read_vkey(k)) for k in args.dnssec_next_key),
        options=options,
        processes=processes,
        redis_cluster=bool(cfg and cfg.redis_cluster),
        redis_timeout=cfg.redis_timeout_s if cfg else 2.0,
        meta_ttl=cfg.meta_ttl_s if cfg else 1.0,
    )
    signer = spec.signer()  # a bad key file says so under its own rule (key-permissions, ...)
    try:
        spec.zone(signer)  # check the settings before starting workers
    except (ValueError, CityIdError, DNSException) as e:
        raise CityIdError(f"bad DNS settings: {e}", rule="usage") from e
    serve(spec)
    return 0
