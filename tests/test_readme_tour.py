"""The README's promise, run as written: its first command brings the system up on a
fresh data directory, and every command of "A five-minute tour" runs verbatim.

Nothing here copies the README: the commands are read from README.md (the first
``sh`` block's first command, and the ``sh`` block under "## A five-minute tour",
backslash-continued lines joined, comments dropped), so a changed README is a
changed test. The checks recognise each command by what it runs (``cityid id
mint``, ``cityid qr``, ``curl -i``, ...) and take what they expect from its own
arguments: the identifier and URL from the mint, the PNG and resolver from the QR
command.

How it is run, as a user would in two terminals:

* ``make -C <repo> up``, with ``CITYID_DATA=<tmp>/cityid-data`` and cwd ``<tmp>``,
  so the tour's relative paths (``cityid-data/keys/dept-02.key``, ...) resolve in
  ``<tmp>`` and the working tree is left alone. It uses the fixed default ports of
  ``cityid up`` (read from :data:`stack.up.DEFAULT_CONFIG`); a port already taken
  fails the test, naming it. ``REDIS_URL`` is removed from its environment: the
  README's system is the embedded default.
* each tour command with ``bash -c`` in ``<tmp>``, ``<repo>/.venv/bin`` first on
  PATH (what ``. .venv/bin/activate`` does).
* Ctrl-C: SIGINT to the process group. ``make`` is started with SIGINT ignored, so
  it waits for ``cityid up`` and exits with its status, which must be 0 (with the
  default disposition make reports any interrupt as its own death by SIGINT and
  the status of ``cityid up`` is lost); ``cityid up`` handles SIGINT itself.
  Afterwards nothing may listen on any of its ports, the private Valkey's included.

Needs ``curl`` (fails, saying how to install it, when missing: the tour cannot be
run without it), ``dig`` and ``delv`` for the DNS commands (skipped with a warning
when missing) and a QR decoder (``zbarimg`` or zxing-cpp, both used when
installed). ``scripts/install-test-tools.sh`` installs the Debian ones.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stack.up import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TOUR_HEADING = "## A five-minute tour"
UP_TIMEOUT = 120.0  # make (venv already built) + first start with the demo namespace
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0
SYNC_TIMEOUT = 30.0
RESOLVER = "http://" + tomllib.loads(DEFAULT_CONFIG)["resolver"]["http"]
INSTALL = "`sh scripts/install-test-tools.sh` (as root) installs it"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


# -- reading the README ------------------------------------------------------------------


def sh_blocks(text: str) -> list[str]:
    """The bodies of the ```sh fenced blocks of ``text``, in order."""
    return re.findall(r"^```sh[ \t]*\n(.*?)^```[ \t]*$", text, re.M | re.S)


def block_commands(block: str) -> list[str]:
    """One string per command: continued lines joined, comment and blank lines dropped."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].strip() + " "
            continue
        commands.append((pending + line.strip()).strip())
        pending = ""
    assert not pending, f"a command ends in a line continuation: {pending!r}"
    return commands


def tour_section(text: str) -> str:
    start = text.find(f"\n{TOUR_HEADING}\n")
    assert start >= 0, f"README.md has no {TOUR_HEADING!r} section"
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def first_command(text: str) -> list[str]:
    """The README's first command (``make up``) as argv, its comment dropped."""
    blocks = sh_blocks(text)
    assert blocks, "README.md has no ```sh block"
    argv = shlex.split(block_commands(blocks[0])[0], comments=True)
    assert argv[0] == "make", f"the README's first command is not a make target: {argv}"
    return argv


def tour_commands(text: str) -> list[str]:
    blocks = sh_blocks(tour_section(text))
    assert blocks, f"no ```sh block under {TOUR_HEADING!r}"
    commands = block_commands(blocks[0])
    assert commands, f"the ```sh block under {TOUR_HEADING!r} has no commands"
    return commands


def browser_url(text: str) -> str:
    """The landing page the README sends the reader to after the tour."""
    found = re.search(r"Open `(https?://[^`\s]+)` in a browser", tour_section(text))
    assert found, f"{TOUR_HEADING!r} no longer says which page to open in a browser"
    return found.group(1)


def test_readme_parsing() -> None:
    block = "# a comment\ncmd one \\\n    --flag x\n\n  # indented comment\ncmd two  # trailing\n"
    assert block_commands(block) == ["cmd one --flag x", "cmd two  # trailing"]
    text = README.read_text()
    assert len(first_command(text)) >= 2  # make and its target
    assert all(not c.endswith("\\") and not c.startswith("#") for c in tour_commands(text))
    assert browser_url(text).startswith(RESOLVER + "/")


# -- the system, as `make up` starts it --------------------------------------------------


def default_ports() -> list[tuple[str, int, str]]:
    """(what, port, protocol) of every loopback listener of ``cityid up``'s defaults."""
    cfg = tomllib.loads(DEFAULT_CONFIG)
    out = [
        ("root registrar", cfg["root"]["listen"], "tcp"),
        ("city registrar", cfg["city"]["listen"], "tcp"),
        *((f"witness {i + 1}", w, "tcp") for i, w in enumerate(cfg["witnesses"]["listen"])),
        ("resolver HTTP", cfg["resolver"]["http"], "tcp"),
        ("resolver DNS", cfg["resolver"]["dns"], "tcp"),
        ("resolver DNS", cfg["resolver"]["dns"], "udp"),
    ]
    ports = []
    for what, hostport, proto in out:
        host, _, port = hostport.rpartition(":")
        assert host == "127.0.0.1", f"{what} listens on {hostport}, not loopback"
        ports.append((what, int(port), proto))
    return ports


def port_taken(port: int, proto: str) -> str:
    """Why ``127.0.0.1:port`` cannot be bound as the servers bind it ('' if it can)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":  # as the servers do: TIME_WAIT leftovers do not count
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # (for UDP, SO_REUSEADDR would let two sockets share the port: bind plainly)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.strerror or str(e)
    return ""


@dataclass
class Up:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None
    stopped: tuple[int | None, str] | None = None

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> tuple[int | None, str]:
        """Ctrl-C (SIGINT to the process group); SIGKILL the group only as a last resort.

        Returns make's exit status (None: still running ``STOP_TIMEOUT`` s after Ctrl-C).
        """
        if self.stopped is not None:
            return self.stopped
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc: int | None = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.reader is not None:
            self.reader.join(timeout=10)
        self.stopped = (rc, self.output)
        return self.stopped


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of GET ``url`` (0: no answer within ``timeout``)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@contextlib.contextmanager
def make_up(tmp: Path, argv: list[str], ports: list[tuple[str, int, str]]) -> Iterator[Up]:
    taken = [(w, p, proto, why) for w, p, proto in ports if (why := port_taken(p, proto))]
    if taken:
        mdns = " 5353 is mDNS's port: avahi-daemon?" if any(t[1] == 5353 for t in taken) else ""
        pytest.fail(
            "the README's system needs these loopback ports, which are taken: "
            + "; ".join(f"{proto} 127.0.0.1:{p} ({w}): {why}" for w, p, proto, why in taken)
            + f". Stop whatever holds them (another `cityid up`?{mdns}) and run again."
        )
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["CITYID_DATA"] = str(tmp / "cityid-data")
    proc = subprocess.Popen(
        [argv[0], "-C", str(ROOT), *argv[1:]],
        cwd=tmp, env=env, text=True, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        process_group=0,  # its own group, as a terminal's foreground job
        # make ignores SIGINT and passes on the exit status of `cityid up`, which
        # installs its own SIGINT handler (see the module docstring)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    up = Up(proc)
    up.reader = threading.Thread(target=up.read, daemon=True)
    up.reader.start()
    healthz = f"{RESOLVER}/healthz"
    registrar = "http://" + tomllib.loads(DEFAULT_CONFIG)["city"]["listen"] + "/"
    deadline = time.monotonic() + UP_TIMEOUT
    try:
        while True:
            if proc.poll() is not None:
                up.reader.join(timeout=10)
                pytest.fail(f"`{shlex.join(argv)}` exited {proc.returncode}:\n{up.output}")
            if (
                "cityid is up" in up.output
                and http_status(healthz) == 200
                and http_status(registrar) == 200
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"`{shlex.join(argv)}` not up after {UP_TIMEOUT:.0f} s:\n{up.output}")
            time.sleep(0.2)
        yield up
    finally:
        up.stop()  # a no-op when the test stopped it already


# -- the tour's commands -----------------------------------------------------------------


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{shlex.join(argv)}: expected {name}"
    return argv[argv.index(name) + 1]


def decode_qr(png: Path) -> dict[str, list[str]]:
    """What every installed decoder reads in ``png`` (zbar and zxing-cpp share no code
    with segno, which drew it)."""
    found: dict[str, list[str]] = {}
    if zbarimg := shutil.which("zbarimg"):
        run = subprocess.run(
            [zbarimg, "--raw", "-q", str(png)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode in (0, 4), run.stderr  # 4: nothing found
        found["zbar"] = run.stdout.splitlines()
    try:
        import zxingcpp
        from PIL import Image
    except ImportError:
        pass
    else:
        with Image.open(png) as image:
            codes = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
        found["zxing-cpp"] = [c.text for c in codes]
    if not found:
        pytest.fail(f"no QR decoder for {png}: pip install zxing-cpp, or zbar-tools ({INSTALL})")
    return found


def require(tool: str) -> None:
    """A tool the tour runs must be installed (``cityid`` comes with the venv; ``dig``,
    when missing, skips its one command)."""
    if tool not in ("cityid", "dig", "delv") and not shutil.which(tool):
        pytest.fail(f"the README's tour runs {tool}, which is not installed: {INSTALL}")


@dataclass
class Tour:
    tmp: Path
    ident: str = ""
    url: str = ""
    checked: set[str] = field(default_factory=set)
    skipped: list[str] = field(default_factory=list)

    def run(self, command: str) -> None:
        argv = shlex.split(command, comments=True)
        tool = argv[0]
        if tool in ("dig", "delv") and not shutil.which(tool):
            reason = f"skipped `{command}`: {tool} is not installed (bind9-dnsutils; {INSTALL})"
            self.skipped.append(reason)
            warnings.warn(reason, stacklevel=1)
            return
        require(tool)
        env = dict(os.environ)
        env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(ROOT / ".venv")
        t0 = time.monotonic()
        r = subprocess.run(
            ["bash", "-c", command], cwd=self.tmp, env=env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        took = time.monotonic() - t0
        print(f"$ {command}  ({took:.2f} s, exit {r.returncode})\n{r.stdout}{r.stderr}")
        assert r.returncode == 0, f"`{command}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        self.check(command, argv, r.stdout)

    def check(self, command: str, argv: list[str], out: str) -> None:
        words = [a for a in argv if not a.startswith("-")]
        if argv[:3] == ["cityid", "id", "mint"]:
            self.check_mint(argv, out)
        elif argv[:2] == ["cityid", "qr"]:
            self.check_qr(argv, out)
        elif argv[0] == "curl" and "/api/handles/" in words[-1]:
            self.check_handle(out)
        elif argv[0] == "curl" and "-i" in argv:
            self.check_redirect(out)
        elif argv[0] == "dig":
            self.check_dns(out)
        elif argv[0] == "delv":
            self.check_dnssec(out)
        elif argv[:2] == ["cityid", "resolve"] and "--verify" in argv:
            self.check_verify(argv, out)
        elif argv[:3] == ["cityid", "ledger", "verify"]:
            assert re.match(r"ok: \S+ size \d+ root ", out), f"`{command}`:\n{out}"
            self.checked.add("audit")
        # any other command: its exit status 0 is the check

    def needs_mint(self) -> None:
        assert self.ident and self.url, "the tour uses an identifier before minting it"

    def check_mint(self, argv: list[str], out: str) -> None:
        self.ident, self.url = argv[3], option(argv, "--url")
        prefix = self.ident.split("/")[0]
        # the registrar's acknowledgment: the receipt (leaf index) and the checkpoint
        # that includes it
        receipt = re.search(rf"^mint\s+{re.escape(prefix)}\s+leaf (\d+)$", out, re.M)
        cp = re.search(r"^checkpoint (\S+) size (\d+)$", out, re.M)
        assert receipt and cp, f"the mint was not acknowledged:\n{out}"
        assert int(cp.group(2)) > int(receipt.group(1)), out
        # ...and the registrar says so too, in a checkpoint a witness cosigned
        registrar = option(argv, "--registrar").rstrip("/")
        with urllib.request.urlopen(f"{registrar}/api/version/{self.ident}", timeout=10) as r:
            assert json.loads(r.read()) == {"handle": self.ident, "version": 1, "exists": True}
        with urllib.request.urlopen(f"{registrar}/log/checkpoint", timeout=10) as r:
            note = r.read().decode()
        assert note.startswith(f"{cp.group(1)}\n"), note
        assert int(note.splitlines()[1]) > int(receipt.group(1)), note
        assert re.search(r"^— witness-\d", note, re.M), f"no witness cosignature:\n{note}"
        self.checked.add("mint")
        self.wait_resolvable()

    def wait_resolvable(self) -> None:
        """Until the resolver serves the new record: its sync follows the logs (a poll
        every 200 ms, then verification), so it trails the registrar's acknowledgment by
        a moment, which a reader typing the next command never notices but a script on a
        loaded machine can. Bounded; the lag is printed."""
        url = f"{RESOLVER}/api/handles/{self.ident}"
        t0 = time.monotonic()
        while (status := http_status(url, timeout=5)) != 200:
            assert time.monotonic() - t0 < SYNC_TIMEOUT, (
                f"the resolver still answers {status} for {self.ident} {SYNC_TIMEOUT:.0f} s "
                "after the registrar acknowledged its mint"
            )
            time.sleep(0.05)
        print(f"(the resolver served {self.ident} {time.monotonic() - t0:.2f} s after the mint)")

    def check_qr(self, argv: list[str], out: str) -> None:
        ident, resolver = argv[2], option(argv, "--resolver")
        want = f"{resolver.rstrip('/')}/{ident}".upper()
        assert want in out, out
        png = self.tmp / option(argv, "-o")
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        for decoder, texts in decode_qr(png).items():
            assert texts == [want], f"{decoder} read {texts} in {png}, not {want}"
        self.checked.add("qr")

    def check_redirect(self, out: str) -> None:
        self.needs_mint()
        head = out.split("\r\n\r\n")[0].split("\n\n")[0]
        status = head.splitlines()[0]
        assert re.match(r"HTTP/[\d.]+ 302\b", status), f"not a 302:\n{head}"
        location = re.search(r"^location:\s*(\S+)\s*$", head, re.I | re.M)
        assert location and location.group(1) == self.url, f"no Location: {self.url}:\n{head}"
        self.checked.add("redirect")

    def check_handle(self, out: str) -> None:
        self.needs_mint()
        answer = json.loads(out)
        assert answer["responseCode"] == 1, answer
        assert answer["handle"] == self.ident, answer
        urls = [v["data"]["value"] for v in answer["values"] if v["type"] == "URL"]
        assert urls == [self.url], answer
        self.checked.add("handle")

    def check_dns(self, out: str) -> None:
        self.needs_mint()
        lines = out.splitlines()
        assert lines and all(ln.startswith('"') for ln in lines), f"no TXT answer:\n{out}"
        assert any(self.url in ln for ln in lines), f"no TXT record with {self.url}:\n{out}"
        self.checked.add("dns")

    def check_dnssec(self, out: str) -> None:
        self.needs_mint()
        assert out.startswith("; fully validated"), f"delv did not validate the answer:\n{out}"
        assert self.url in out and " RRSIG TXT " in out, out
        self.checked.add("dnssec")

    def check_verify(self, argv: list[str], out: str) -> None:
        self.needs_mint()
        assert argv[2] == self.ident and self.url in out, out
        assert re.search(r"^verified offline: ", out, re.M), out
        self.checked.add("verify")


# -- the test ------------------------------------------------------------------------------


def test_readme_tour(tmp_path: Path) -> None:
    text = README.read_text()
    up_argv, commands, page = first_command(text), tour_commands(text), browser_url(text)
    ports = default_ports()
    for command in commands:  # before the system starts, not halfway through the tour
        require(shlex.split(command, comments=True)[0])
    tour = Tour(tmp_path)
    t0 = time.monotonic()
    with make_up(tmp_path, up_argv, ports) as up:
        try:
            print(f"up in {time.monotonic() - t0:.1f} s")
            for command in commands:
                tour.run(command)

            # The page the README sends a browser to: a landing page, not a redirect.
            u = urllib.parse.urlsplit(page)
            assert u.hostname == "127.0.0.1", page
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
            path = u.path + (f"?{u.query}" if u.query else "")
            conn.request("GET", path, headers={"Accept": BROWSER_ACCEPT})
            resp = conn.getresponse()
            body = resp.read().decode()
            conn.close()
            assert resp.status == 200, (page, resp.status, resp.getheaders())
            assert resp.getheader("Content-Type", "").startswith("text/html"), resp.getheaders()
            assert tour.ident and tour.ident in body and tour.url in body, body[:2000]
        finally:
            t1 = time.monotonic()
            rc, out = up.stop()
            print(f"stopped in {time.monotonic() - t1:.1f} s (exit {rc})")

    assert rc == 0, (
        f"`{shlex.join(up_argv)}` did not exit 0 within {STOP_TIMEOUT:.0f} s of Ctrl-C "
        f"(exit {rc}):\n{out}"
    )
    assert "cityid: stopped" in out, out
    # Ctrl-C stops everything: every port is free again, the private Valkey's too.
    # The banner redacts the password: redis://:***@127.0.0.1:PORT/0.
    valkey = re.search(r"^\s*valkey\s+redis://(?:[^@\s]*@)?127\.0\.0\.1:(\d+)", out, re.M)
    assert valkey, f"no embedded Valkey in the banner:\n{out}"
    listeners = [*ports, ("valkey", int(valkey.group(1)), "tcp")]
    deadline = time.monotonic() + 5
    while still := [(w, p, proto) for w, p, proto in listeners if port_taken(p, proto)]:
        assert time.monotonic() < deadline, f"still listening after Ctrl-C: {still}"
        time.sleep(0.1)
    with pytest.raises(ProcessLookupError):
        os.killpg(up.proc.pid, 0)  # nothing left in its process group

    expected = {"mint", "qr", "redirect", "handle", "dns", "dnssec", "verify", "audit"}
    if tour.skipped:  # dig and delv come together (bind9-dnsutils)
        expected -= {"dns", "dnssec"}
    assert tour.checked == expected, (
        f"the tour no longer does {sorted(expected - tour.checked)}: update this test's "
        "checks along with the README"
    )
    print(f"tour done in {time.monotonic() - t0:.1f} s", *tour.skipped, sep="\n")
