"""Hosts simulated with Linux network namespaces, for multi-host tests.

Every "host" is a network namespace (``ip netns``) with one veth interface whose
peer is enslaved to a bridge in the initial namespace; the bridge holds the
first address of a private test subnet, so the test process reaches every host
directly and the hosts reach each other through the bridge. Nothing is routed
beyond the subnet: the namespaces have no default route, so no traffic leaves
the machine.

Every name (namespaces, the bridge, veth peers) starts with :data:`PREFIX`, so
:func:`sweep` can remove what a crashed earlier run left behind (its processes
first, by the pids ``ip netns pids`` lists for those namespaces only). A
:class:`Net` removes all it made on :meth:`Net.close`, which the fixture calls
from a finalizer, so a failing test cleans up too.

Faults are plain ``ip``/``tc`` commands run in a host's namespace:
:meth:`Host.block` installs ``unreachable`` routes to some addresses (a
partition: the peers' packets are refused at once, as a firewall with REJECT
would), :meth:`Host.link` takes the interface down, :meth:`Host.delay` adds
netem latency towards some addresses only (a ``prio`` qdisc and ``u32``
filters).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PREFIX = "cidmh"  # cityid multi-host: unique to this harness
BRIDGE = f"{PREFIX}br0"
#: A private /24 unlikely to be in use (checked against the routes before use).
SUBNET = ipaddress.ip_network("10.213.47.0/24")
IP = "ip"
TC = "tc"


class NetnsError(RuntimeError):
    pass


def _run(*args: str, ns: str | None = None, check: bool = True, timeout: float = 10) -> str:
    cmd = [IP, "netns", "exec", ns, *args] if ns else list(args)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can (tries one and removes it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}-probe{os.getpid()}"
    try:
        _run(IP, "netns", "add", probe)
    except (NetnsError, OSError) as e:
        return f"'ip netns add' is not permitted here: {e}"
    finally:
        _run(IP, "netns", "del", probe, check=False)
    return None


def netem_reason() -> str | None:
    """Why :meth:`Host.delay` cannot work here (no tc, or a kernel without netem), or None."""
    probe = f"{PREFIX}-tc{os.getpid()}"
    try:
        _run(IP, "netns", "add", probe)
        _run(IP, "link", "add", "name", "a", "type", "veth", "peer", "name", "b", ns=probe)
        for qdisc in (["prio"], ["netem", "delay", "50ms", "10ms"]):
            _run(TC, "qdisc", "add", "dev", "a", "root", *qdisc, ns=probe)
            _run(TC, "qdisc", "del", "dev", "a", "root", ns=probe)
    except (NetnsError, OSError) as e:
        return f"tc netem is not usable here (the kernel may lack sch_netem/sch_prio): {e}"
    finally:
        _run(IP, "netns", "del", probe, check=False)
    return None


def sweep() -> None:
    """Remove every namespace and link named with :data:`PREFIX` (an earlier run's leftovers)."""
    for line in _run(IP, "netns", "list", check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        for pid in _run(IP, "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)  # started by this harness, in its namespace
        _run(IP, "netns", "del", name, check=False)
    for line in _run(IP, "-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            _run(IP, "link", "del", name, check=False)


@dataclass
class Host:
    """One simulated host: a namespace with one address on the test subnet."""

    name: str
    ns: str
    addr: str
    dev: str = "eth0"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 10) -> str:
        return _run(*args, ns=self.ns, check=check, timeout=timeout)

    def spawn(
        self,
        args: Sequence[str],
        *,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` in this host's namespace, output appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # ip netns exec execs the command: the child's pid is the server's own.
            proc = subprocess.Popen(
                [IP, "netns", "exec", self.ns, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], *, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL after ``timeout``: one process, by its pid."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return int(proc.returncode)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()

    # -- faults ------------------------------------------------------------------------

    def block(self, addrs: Sequence[str]) -> None:
        """Partition this host from ``addrs``: its packets to them are refused at once."""
        for a in addrs:
            self.run(IP, "route", "replace", "unreachable", f"{a}/32")

    def unblock(self, addrs: Sequence[str]) -> None:
        for a in addrs:
            self.run(IP, "route", "del", "unreachable", f"{a}/32", check=False)

    def link(self, up: bool) -> None:
        self.run(IP, "link", "set", self.dev, "up" if up else "down")

    def delay(self, addrs: Sequence[str], ms: int, jitter_ms: int) -> None:
        """netem ``ms``±``jitter_ms`` on packets this host sends to ``addrs`` (only those)."""
        dev = self.dev
        self.run(TC, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "prio")
        self.run(TC, "qdisc", "replace", "dev", dev, "parent", "1:3", "handle", "30:",
                 "netem", "delay", f"{ms}ms", f"{jitter_ms}ms")  # fmt: skip
        for a in addrs:
            self.run(TC, "filter", "add", "dev", dev, "protocol", "ip", "parent", "1:0", "prio",
                     "3", "u32", "match", "ip", "dst", f"{a}/32", "flowid", "1:3")  # fmt: skip

    def undelay(self) -> None:
        self.run(TC, "qdisc", "del", "dev", self.dev, "root", check=False)


class Net:
    """A bridge on :data:`SUBNET` and the hosts attached to it; :meth:`close` removes all."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self._next = 2  # .1 is the bridge, the test process's own address

    @property
    def gateway(self) -> str:
        return str(SUBNET.network_address + 1)

    def open(self) -> Net:
        sweep()
        routes = _run(IP, "-4", "route", "show")
        for line in routes.split("\n"):
            dest = line.split(" ")[0]
            with contextlib.suppress(ValueError):
                if dest != "default" and ipaddress.ip_network(dest, strict=False).overlaps(SUBNET):
                    raise NetnsError(f"{SUBNET} is already routed here ({line}); not touching it")
        try:
            _run(IP, "link", "add", BRIDGE, "type", "bridge")
            _run(IP, "addr", "add", f"{self.gateway}/{SUBNET.prefixlen}", "dev", BRIDGE)
            _run(IP, "link", "set", BRIDGE, "up")
        except BaseException:
            self.close()
            raise
        return self

    def add(self, name: str) -> Host:
        """A new host ``name`` (letters and digits, short: it names interfaces)."""
        n = self._next
        self._next += 1
        ns, peer = f"{PREFIX}-{name}", f"{PREFIX}v{n}"
        addr = str(SUBNET.network_address + n)
        _run(IP, "netns", "add", ns)
        host = Host(name, ns, addr)
        self.hosts[name] = host
        _run(IP, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(IP, "link", "set", peer, "master", BRIDGE)
        _run(IP, "link", "set", peer, "up")
        host.run(IP, "addr", "add", f"{addr}/{SUBNET.prefixlen}", "dev", "eth0")
        host.run(IP, "link", "set", "eth0", "up")
        host.run(IP, "link", "set", "lo", "up")
        return host

    def close(self) -> None:
        for host in self.hosts.values():
            host.kill_all()
        self.hosts.clear()
        sweep()

    def __enter__(self) -> Net:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(check: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check()`` until true, or fail naming ``what`` after ``timeout`` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(interval)


@pytest.fixture
def netns() -> Iterator[Net]:
    """A fresh :class:`Net`; skipped, saying why, where namespaces are not permitted."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    net = Net()
    try:
        net.open()
        yield net
    finally:
        net.close()
