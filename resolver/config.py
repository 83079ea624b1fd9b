"""A resolver's configuration: one TOML file (``resolver.toml``).

Every key has a default here except the root of trust (``[root]``); ``save``
writes the file with every key and a comment, and docs/config.md lists them.
"""

from __future__ import annotations

import base64
import binascii
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cityid.errors import CityIdError, KeyFormatError
from cityid.identifiers import Prefix
from cityid.keys import VerifierKey
from cityid.netaddr import host_port
from cityid.tomlkeys import ANY_TABLE, VALUE, unknown_keys_message
from ledger.policy import LogEntry, Policy, PolicyError

CONFIG_NAME = "resolver.toml"


#: Every key ``from_dict`` reads; any other is refused (:mod:`cityid.tomlkeys`).
SCHEMA: dict[str, Any] = {
    "root": dict.fromkeys(("log_url", "log_key", "prefix", "prefix_key", "origin"), VALUE),
    "redis": dict.fromkeys(("url", "cluster", "timeout_s"), VALUE),
    "sync": dict.fromkeys(
        ("enabled", "poll_interval_ms", "witness_policy", "lock_ttl_ms", "chunk", "resize_grace_s"),
        VALUE,
    ),
    "log_urls": ANY_TABLE,
    "http": dict.fromkeys(("listen", "public_url"), VALUE),
    "dns": dict.fromkeys(
        (
            "listen",
            "apex",
            "ttl_s",
            "rrl_per_second",
            "rrl_slip",
            "negative_ttl_s",
            "max_udp",
            "nameservers",
            "identity",
            "dnssec_key",
        ),
        VALUE,
    ),
    "serve": dict.fromkeys(("processes", "cache_size", "meta_ttl_s"), VALUE),
}


class ConfigError(CityIdError):
    rule = "config"


def _listen(text: str, what: str) -> tuple[str, int]:
    try:
        return host_port(text)
    except ValueError as e:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT", rule="bad-config") from e


def setting(flag: Any, cfg: ResolverConfig | None, key: str, default: Any) -> Any:
    """A command-line flag if given, else the config file's ``key``, else ``default``:
    the one rule every ``cityid resolver`` command applies to each setting."""
    if flag is not None:
        return flag
    return getattr(cfg, key) if cfg is not None else default


def parse_public_key(text: str) -> bytes:
    """A prefix key: a verifier key (``name+hash+base64``) or 32 bytes in base64 or hex."""
    text = text.strip()
    if text.count("+") >= 2:
        try:
            return VerifierKey.parse(text).public_key
        except KeyFormatError as e:
            raise ConfigError(f"root.prefix_key: {e.message}", rule="bad-config") from e
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            return raw
    raise ConfigError(
        "root.prefix_key must be a verifier key, or a 32-byte Ed25519 key in hex or base64",
        rule="bad-config",
    )


@dataclass(slots=True)
class ResolverConfig:
    # [root]: the trust anchor. The root log's key signs its checkpoints; the root
    # prefix key signs the delegations to cities.
    root_log_url: str
    root_log_key: str
    root_prefix: str
    root_prefix_key: str
    root_origin: str = ""  # default: the root log key's name
    # [redis]
    redis_url: str = ""  # "" = a private embedded Valkey (or REDIS_URL)
    redis_cluster: bool = False
    redis_timeout_s: float = 2.0
    # [sync]
    sync: bool = True  # false: serve only (another process syncs this Redis)
    poll_interval_ms: int = 200
    witness_policy: str = ""  # c2sp tlog-policy file: its witnesses and quorum apply to every log
    lock_ttl_ms: int = 10_000
    chunk: int = 1024
    resize_grace_s: float = 10.0
    log_urls: dict[str, str] = field(default_factory=dict)  # origin -> tiles URL overrides
    # [http] / [dns]
    http_listen: str = "127.0.0.1:8080"
    public_url: str = ""  # the URL printed in 2D codes, if not http://<http_listen>
    dns_listen: str = "127.0.0.1:5353"
    apex: str = "cityid.test"
    dns_ttl_s: int = 300
    rrl_per_second: int = 20  # DNS response-rate limit per client /24 (/56)
    rrl_slip: int = 2  # every Nth dropped answer goes out truncated (TC) instead
    negative_ttl_s: int = 60  # the SOA minimum: how long NXDOMAIN/NODATA are cached
    max_udp: int = 1232  # EDNS(0) UDP payload size
    nameservers: list[str] = field(default_factory=list)  # "HOST=ADDR[,ADDR]"; [] = ns1.<apex>
    identity: str = "{hostname}/{index}"  # CH TXT id.server answer; "" refuses it
    dnssec_key: str = ""  # the DNSSEC signing key file (relative: to this file); "" = unsigned
    # [serve]
    processes: int = 1  # processes sharing the ports with SO_REUSEPORT
    cache_size: int = 100_000  # answers kept per process
    meta_ttl_s: float = 1.0  # how long a process trusts a cached prefix layout
    path: Path | None = None

    # -- derived ------------------------------------------------------------------------

    def log_vkey(self) -> VerifierKey:
        try:
            return VerifierKey.parse(self.root_log_key)
        except KeyFormatError as e:
            raise ConfigError(f"root.log_key: {e.message}", rule="bad-config") from e

    @property
    def origin(self) -> str:
        return self.root_origin or self.log_vkey().name

    def root_anchor(self) -> tuple[Prefix, bytes]:
        return Prefix.parse(self.root_prefix), parse_public_key(self.root_prefix_key)

    def dnssec_key_path(self) -> str:
        """``[dns] dnssec_key``, a relative path taken from this file's directory."""
        if not self.dnssec_key:
            return ""
        path = Path(self.dnssec_key)
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        return str(path)

    def witnesses(self) -> Policy:
        """The witness policy every log is held to (``quorum none`` without a file)."""
        vkey = self.log_vkey()
        if not self.witness_policy:
            return Policy.for_log(vkey, self.root_log_url)
        path = Path(self.witness_policy)
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        try:
            policy = Policy.parse(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"sync.witness_policy {path}: {e.strerror}", rule="bad-config") from e
        except PolicyError as e:
            raise ConfigError(f"sync.witness_policy {path}: {e.message}", rule="bad-config") from e
        return replace(policy, logs=(LogEntry(vkey, self.root_log_url),))

    @property
    def http_address(self) -> tuple[str, int]:
        return _listen(self.http_listen, "http.listen")

    @property
    def dns_address(self) -> tuple[str, int]:
        return _listen(self.dns_listen, "dns.listen")

    def effective_redis_url(self) -> str:
        return os.environ.get("REDIS_URL") or self.redis_url

    # -- files --------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ResolverConfig:
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_NAME
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"{p} not found", rule="no-config") from e
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: {e}", rule="bad-config") from e
        return cls.from_dict(raw, p)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | None = None) -> ResolverConfig:
        where = str(path) if path else "resolver config"
        bad = unknown_keys_message(raw, SCHEMA, where)
        if bad:
            raise ConfigError(bad, rule="bad-config")
        root = raw.get("root", {})
        redis = raw.get("redis", {})
        sync = raw.get("sync", {})
        http = raw.get("http", {})
        dns = raw.get("dns", {})
        serve = raw.get("serve", {})
        d = cls.__dataclass_fields__
        try:
            cfg = cls(
                root_log_url=str(root["log_url"]),
                root_log_key=str(root["log_key"]),
                root_prefix=str(root["prefix"]),
                root_prefix_key=str(root["prefix_key"]),
                root_origin=str(root.get("origin", "")),
                redis_url=str(redis.get("url", "")),
                redis_cluster=bool(redis.get("cluster", False)),
                redis_timeout_s=float(redis.get("timeout_s", d["redis_timeout_s"].default)),
                sync=bool(sync.get("enabled", True)),
                poll_interval_ms=int(sync.get("poll_interval_ms", 200)),
                witness_policy=str(sync.get("witness_policy", "")),
                lock_ttl_ms=int(sync.get("lock_ttl_ms", 10_000)),
                chunk=int(sync.get("chunk", 1024)),
                resize_grace_s=float(sync.get("resize_grace_s", 10.0)),
                log_urls={str(k): str(v) for k, v in raw.get("log_urls", {}).items()},
                http_listen=str(http.get("listen", "127.0.0.1:8080")),
                public_url=str(http.get("public_url", "")),
                dns_listen=str(dns.get("listen", "127.0.0.1:5353")),
                apex=str(dns.get("apex", "cityid.test")),
                dns_ttl_s=int(dns.get("ttl_s", 300)),
                rrl_per_second=int(dns.get("rrl_per_second", 20)),
                rrl_slip=int(dns.get("rrl_slip", 2)),
                negative_ttl_s=int(dns.get("negative_ttl_s", 60)),
                max_udp=int(dns.get("max_udp", 1232)),
                nameservers=[str(n) for n in dns.get("nameservers", [])],
                identity=str(dns.get("identity", d["identity"].default)),
                dnssec_key=str(dns.get("dnssec_key", "")),
                processes=int(serve.get("processes", 1)),
                cache_size=int(serve.get("cache_size", 100_000)),
                meta_ttl_s=float(serve.get("meta_ttl_s", 1.0)),
                path=path,
            )
        except KeyError as e:
            raise ConfigError(f"{where}: missing [root] key {e}", rule="bad-config") from e
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: {e}", rule="bad-config") from e
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.log_vkey()
        self.root_anchor()
        self.http_address  # noqa: B018 - parses
        self.dns_address  # noqa: B018
        if not 10 <= self.poll_interval_ms <= 60_000:
            raise ConfigError("sync.poll_interval_ms must be 10..60000", rule="bad-config")
        if self.lock_ttl_ms < 1000:
            raise ConfigError("sync.lock_ttl_ms must be at least 1000", rule="bad-config")
        if not 1 <= self.processes <= 256:
            raise ConfigError("serve.processes must be 1..256", rule="bad-config")
        if self.cache_size < 0:
            raise ConfigError("serve.cache_size must be 0 or more", rule="bad-config")

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        if p.is_dir():
            p = p / CONFIG_NAME
        lines = [
            "# cityid resolver configuration (docs/config.md explains every key).",
            "",
            "[root]  # the root of trust: everything else is learnt from the logs",
            f"log_url = {_q(self.root_log_url)}  # tlog-tiles URL of the root log",
            f"log_key = {_q(self.root_log_key)}  # verifier key of its checkpoints",
            f"origin = {_q(self.root_origin)}  # default: the log key's name",
            f"prefix = {_q(self.root_prefix)}",
            f"prefix_key = {_q(self.root_prefix_key)}  # signs the delegations to cities",
            "",
            "[redis]",
            f'url = {_q(self.redis_url)}  # "" = a private embedded Valkey (REDIS_URL overrides)',
            f"cluster = {_b(self.redis_cluster)}  # a Redis/Valkey Cluster",
            f"timeout_s = {self.redis_timeout_s}",
            "",
            "[sync]",
            f"enabled = {_b(self.sync)}  # false: serve only; another process syncs this Redis",
            f"poll_interval_ms = {self.poll_interval_ms}  # how often each checkpoint is fetched",
            f"witness_policy = {_q(self.witness_policy)}  # tlog-policy file for every log",
            f"lock_ttl_ms = {self.lock_ttl_ms}  # the sync leader lock",
            f"chunk = {self.chunk}  # entries verified and written together",
            f"resize_grace_s = {self.resize_grace_s}  # old bucket levels kept after a resize",
            "",
            "[http]",
            f"listen = {_q(self.http_listen)}",
            f"public_url = {_q(self.public_url)}  # the URL in 2D codes",
            "",
            "[dns]",
            f"listen = {_q(self.dns_listen)}",
            f"apex = {_q(self.apex)}",
            f"ttl_s = {self.dns_ttl_s}",
            f"rrl_per_second = {self.rrl_per_second}  # responses per client network",
            f"rrl_slip = {self.rrl_slip}  # every Nth dropped answer is sent truncated",
            f"negative_ttl_s = {self.negative_ttl_s}  # SOA minimum: NXDOMAIN/NODATA caching",
            f"max_udp = {self.max_udp}  # EDNS(0) UDP payload size",
            f"nameservers = [{', '.join(_q(n) for n in self.nameservers)}]"
            "  # HOST=ADDR[,ADDR]; none: ns1.<apex>=127.0.0.1",
            f"identity = {_q(self.identity)}  # CH TXT id.server ({{hostname}}, {{index}})",
            f"dnssec_key = {_q(self.dnssec_key)}  # signing key file; empty: no DNSSEC",
            "",
            "[serve]",
            f"processes = {self.processes}  # share the ports with SO_REUSEPORT",
            f"cache_size = {self.cache_size}  # answers cached per process",
            f"meta_ttl_s = {self.meta_ttl_s}  # prefix layouts cached per process",
            "",
            "[log_urls]  # origin = URL: where to fetch a log instead of its delegation's URL",
        ]
        lines += [f"{_q(k)} = {_q(v)}" for k, v in sorted(self.log_urls.items())]
        tmp = p.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, p)
        return p


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _b(x: bool) -> str:
    return "true" if x else "false"
