"""What a new user meets on the command line (issue 16), against one real ``cityid up``.

``cityid up`` (small demo, free loopback ports) runs the root and city
registrars, witnesses and the resolver; each command is ``python -m cityid.cli``
in a child process, as a user types it. The city prefix MA.156.1301 is
delegated with ``CITYID_SITE registrar=`` naming the city registrar.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_harness import System, running_system
from registrar_harness import cli, free_port

from cityid.keys import VerifierKey
from cityid.ops import key_fingerprint

pytestmark = pytest.mark.timeout(240)

TRAFFIC = "MA.156.1301.02"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with running_system(tmp_path_factory.mktemp("newcomer"), assets=20) as s:
        yield s


def data(system: System) -> Path:
    return Path(system.ready["data"])


def traffic_key(system: System) -> str:
    return str(data(system) / "keys" / "dept-02.key")


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("cityid: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# -- 1, 2: id mint ----------------------------------------------------------------------


def test_mint_finds_the_prefix_registrar_from_the_resolver(system: System) -> None:
    """No --registrar: the write goes to the registrar the delegation's CITYID_SITE names."""
    ident = f"{TRAFFIC}/NEWCOMER-1"
    res = cli("id", "mint", ident, "--key", traffic_key(system), "--resolver", system.base,
              "--url", "https://bus.example/newcomer-1")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith(f"minted {ident}\n"), res.stdout
    assert "CITYID_SITE of MA.156.1301" in res.stderr, res.stderr


def test_mint_says_minted_only_after_the_receipt(system: System) -> None:
    key = traffic_key(system)
    common = ("--key", key, "--resolver", system.base)
    # A duplicate: refused by the registrar (409).
    res = cli("id", "mint", system.sample, *common, "--url", "https://x.example/")
    assert res.returncode == 1 and "minted" not in res.stdout, res.stdout
    assert "[rule: already-exists]" in one_error_line(res.stderr)
    # Bad values: refused before any request.
    for bad in (("--geo", "95,200"), ("--url", "not-a-url")):
        res = cli("id", "mint", f"{TRAFFIC}/NEWCOMER-BAD", *common, *bad)
        assert res.returncode == 1 and "minted" not in res.stdout, (bad, res.stdout)
        one_error_line(res.stderr)


def test_mint_without_a_registrar_names_where_to_look(system: System) -> None:
    """No registrar given and no resolver answering: the default registrar, and a refusal
    that says what to give. (The default's port may be another system's: the refusal is
    taken from this system's root registrar, which does not host the department.)"""
    import argparse

    from cityid.identifiers import Identifier, Prefix
    from cityid.keys import SigningKey
    from cityid.ops import Mint, MintItem, now
    from registrar.cli import DEFAULT_REGISTRAR, _registrar_url, _run
    from registrar.client import RegistrarClient, RegistrarError

    args = argparse.Namespace(registrar=None, resolver=f"http://127.0.0.1:{free_port()}")
    assert _registrar_url(args, Prefix.parse(TRAFFIC)) == DEFAULT_REGISTRAR
    assert args.registrar_fallback

    key = SigningKey.read(traffic_key(system))
    ident = Identifier(Prefix.parse(TRAFFIC), "NEWCOMER-2")

    async def mint_on_the_root() -> None:
        async with RegistrarClient(system.ready["root"]) as client:
            op = Mint(ident.prefix, (MintItem(ident.suffix, 0, _record()),), now())
            await client.submit_ops([op], key)

    with pytest.raises(RegistrarError) as e:
        _run(mint_on_the_root(), args)
    assert e.value.rule == "prefix-not-delegated"
    assert "--registrar" in e.value.message and "--resolver" in e.value.message


def _record() -> Any:
    from cityid.records import Record, Value

    return Record((Value.make(1, "URL", "https://x.example/", timestamp=1),))


# -- 3: id check ------------------------------------------------------------------------


def test_check_says_which_check_character_and_exits_1() -> None:
    res = cli("id", "check", f"{TRAFFIC}/W0000127X")
    assert res.returncode == 1, res.stdout
    assert "ends in 'X' but its check character is 'R'" in res.stdout
    free_form = cli("id", "check", f"{TRAFFIC}/BUS-STOP-17")
    assert free_form.returncode == 0 and "not a minted suffix" in free_form.stdout


# -- 4, 5: resolve --verify -------------------------------------------------------------


@pytest.mark.parametrize("ident", [f"{TRAFFIC}/W0000127X", f"{TRAFFIC}/NEVER-MINTED"])
def test_verify_of_a_bad_identifier_says_it_once(system: System, ident: str) -> None:
    policy = str(data(system) / "trust.policy")
    res = cli("resolve", ident, "--resolver", system.base, "--verify", "--policy", policy)
    assert res.returncode == 1
    assert res.stdout == "", res.stdout
    err = one_error_line(res.stderr)
    assert "nothing to verify" not in err and ident in err, err


def test_verify_names_each_log_key_one_way_once(system: System) -> None:
    policy = str(data(system) / "trust.policy")
    res = cli("resolve", system.sample, "--resolver", system.base, "--verify", "--policy", policy)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    city = VerifierKey.parse((data(system) / "city" / "log.vkey").read_text())
    root = VerifierKey.parse((data(system) / "root" / "log.vkey").read_text())
    for vkey in (city, root):
        short = f"{vkey.name}+{vkey.key_id.hex()}"  # as in its verifier key, name+ID+...
        assert short in out, (short, out)
        assert key_fingerprint(vkey.public_key) not in out, out
    assert len(re.findall(r"\(proven above\)", out)) == 1, out


# -- 6: qr -------------------------------------------------------------------------------


def test_qr_refuses_a_wrong_check_character_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    res = cli("qr", f"{TRAFFIC}/W0000127X", "-o", str(out))
    assert res.returncode == 1 and not out.exists()
    assert "'R'" in one_error_line(res.stderr) and "--force" in res.stderr
    res = cli("qr", f"{TRAFFIC}/W0000127X", "-o", str(out), "--force")
    assert res.returncode == 0 and out.exists(), res.stderr
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{TRAFFIC}/W0000127R\n{TRAFFIC}/W0000127X\n")
    res = cli("qr", "--ids-file", str(ids), "-o", str(tmp_path / "s.pdf"))
    assert res.returncode == 1 and "W0000127X" in one_error_line(res.stderr)


def test_qr_warns_about_an_unregistered_identifier(system: System, tmp_path: Path) -> None:
    res = cli("qr", f"{TRAFFIC}/NEVER-MINTED", "-o", str(tmp_path / "a.png"),
              "--resolver", system.base)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "warning:" in res.stderr and "is not registered" in res.stderr, res.stderr
    res = cli("qr", system.sample, "-o", str(tmp_path / "b.png"), "--resolver", system.base)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stderr


# -- 7: help ------------------------------------------------------------------------------


def test_resolver_group_help_names_both_commands() -> None:
    res = cli("--help")
    line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith("resolver "))
    assert "serve" in line and "dns" in line, line
    res = cli("resolver", "--help")
    assert "dns" in res.stdout.split("positional arguments")[0], res.stdout
