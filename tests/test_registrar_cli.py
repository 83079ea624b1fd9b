"""The registrar's command line, each command a child process against registrar children.

``cityid registrar init`` and ``registrar serve`` set up a root and a city
registrar; ``prefix delegate``, ``id mint`` (one, ``--count``, ``--csv``),
``id update``, ``id delete`` and ``key rotate`` drive them. A refusal is one
line on stderr naming the rule and the key (its fingerprint), exit code 1,
never a traceback.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from registrar_harness import (
    HOST,
    RegistrarProcess,
    RegistrarSpec,
    cli,
    free_port,
    init_with_cli,
)

from cityid.cli import main
from cityid.identifiers import mint_suffix
from cityid.keys import SigningKey
from cityid.ops import key_fingerprint

pytestmark = pytest.mark.timeout(150)

ROOT_ORIGIN = "root.cityid.test/log"
CITY_ORIGIN = "sjz.cityid.test/log"
TRAFFIC = "MA.156.1301.02"


def ok(*args: str) -> str:
    res = cli(*args)
    assert res.returncode == 0, f"cityid {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr
    return res.stdout


def refused(*args: str, rule: str, key: SigningKey | None = None) -> str:
    """Exit 1, one error line naming ``rule`` (and ``key``'s fingerprint), no traceback.

    The error is the last line of stderr (``serve`` logs a line before it fails).
    """
    res = cli(*args)
    assert res.returncode == 1, f"cityid {' '.join(args)}:\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    err = res.stderr.splitlines()[-1] + "\n"
    assert err.startswith("cityid: error: "), res.stderr
    assert f"[rule: {rule}]" in err, err
    if key is not None:
        assert key_fingerprint(key.public_key) in err, err
    return err


def version(spec: RegistrarSpec, ident: str) -> tuple[int, bool]:
    with urllib.request.urlopen(f"{spec.url}/api/version/{ident}", timeout=10) as r:
        body = json.loads(r.read())
    return int(body["version"]), bool(body["exists"])


def keygen(keys: Path, name: str) -> SigningKey:
    out = ok("keygen", name, "-o", str(keys / f"{name}.key"))
    vkey = out.splitlines()[-1]
    (keys / f"{name}.vkey").write_text(vkey + "\n")
    key = SigningKey.read(keys / f"{name}.key")
    assert str(key.verifier) == vkey
    return key


def test_registrar_lifecycle_from_the_command_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    city_key, traffic, urban = (keygen(keys, n) for n in ("sjz-admin", "traffic", "urban"))
    traffic2 = keygen(keys, "traffic-2024")
    root = init_with_cli(tmp_path / "root", "MA.156", ROOT_ORIGIN)
    city = init_with_cli(
        tmp_path / "city", "MA.156.1301", CITY_ORIGIN, prefix_key=keys / "sjz-admin.vkey"
    )
    assert root.admin is not None and city.anchor == city_key.verifier
    assert (root.directory / "admin.key").stat().st_mode & 0o777 == 0o600
    assert not (city.directory / "admin.key").exists()
    refused(
        "registrar", "init", str(root.directory), "--prefix", "MA.156", "--origin", "x/y",
        rule="exists",
    )  # fmt: skip
    k = str
    with RegistrarProcess(root) as rp, RegistrarProcess(city) as cp:
        rp.start()
        cp.start()
        R, C = ("--registrar", root.url), ("--registrar", city.url)

        # The root delegates the city to the city's key, log and registrar.
        out = ok(
            "prefix", "delegate", "MA.156.1301", "--key", k(root.directory / "admin.key"),
            "--child-key", k(keys / "sjz-admin.vkey"), "--origin", CITY_ORIGIN,
            "--site", f"registrar={city.url}", "--name", "Shijiazhuang", "--geo", "38.04,114.51",
            *R,
        )  # fmt: skip
        assert "delegate" in out and "0.NA/MA.156.1301" in out and "leaf 0" in out, out
        assert version(root, "0.NA/MA.156.1301") == (1, True)
        # The city delegates its departments on its own registrar.
        for node, name in (("02", "traffic"), ("01", "urban")):
            ok(
                "prefix", "delegate", f"MA.156.1301.{node}", "--key", k(keys / "sjz-admin.key"),
                "--child-key", k(keys / f"{name}.vkey"), "--name", name, *C,
            )  # fmt: skip
        tk = ("--key", k(keys / "traffic.key"))

        # id mint: one identifier, a range, a CSV.
        out = ok(
            "id", "mint", f"{TRAFFIC}/BUS-STOP-17", *tk, "--url", "https://bus.example/17",
            "--geo", "38.0428,114.5149", "--value", "NAME=Bus stop 17", *C,
        )  # fmt: skip
        assert f"mint       {TRAFFIC}  leaf 2" in out, out  # a mint's target is its prefix
        assert "checkpoint sjz.cityid.test/log size 3" in out, out
        assert version(city, f"{TRAFFIC}/BUS-STOP-17") == (1, True)
        out = ok(
            "id", "mint", TRAFFIC, *tk, "--count", "100000", "--letters", "W",
            "--template", "https://bus.example/asset/{suffix}", *C,
        )  # fmt: skip
        assert "100,000 identifiers, one leaf" in out, out
        assert f"{TRAFFIC}/W0000000" in out
        last = out.split(" .. ")[1].split()[0]
        assert version(city, last) == (1, True)
        csv = tmp_path / "stops.csv"
        rows = [f"CSV-{i},https://bus.example/c/{i},38.1,114.4,stop {i},n{i}" for i in range(50)]
        header, auto = "suffix,url,lat,lon,desc,NAME", "auto,https://bus.example/c/auto,,,,"
        csv.write_text("\n".join([header, *rows, auto]) + "\n")
        out = ok("id", "mint", TRAFFIC, *tk, "--csv", k(csv), *C)
        assert "minted 51 identifiers" in out and "(1 auto-numbered)" in out, out
        assert version(city, f"{TRAFFIC}/CSV-49") == (1, True)
        # The auto-numbered row continued after the range.
        assert version(city, f"{TRAFFIC}/{mint_suffix('W', 100_000, 7)}") == (1, True)

        # A CSV bigger than a request may carry goes in several, each all or none
        # (--max-body stands in for the registrar's 64 MiB: one leaf per request).
        big = tmp_path / "big.csv"
        big.write_text(
            "suffix,url\n" + "".join(f"BIG-{i},https://b.example/{i}\n" for i in range(3000))
        )
        out = ok("id", "mint", TRAFFIC, *tk, "--csv", k(big), "--max-body", "70000", *C)
        assert "minted 3,000 identifiers" in out and "requests" in out, out
        assert (
            version(city, f"{TRAFFIC}/BIG-0") == version(city, f"{TRAFFIC}/BIG-2999") == (1, True)
        )
        # A later request refused (its rows include one that exists): the error says
        # which rows the requests before it minted, and those, only those, exist.
        again = tmp_path / "again.csv"
        again.write_text("suffix,url\n" + "".join(
            f"{'BIG-7' if i == 2999 else f'MORE-{i}'},https://b.example/{i}\n" for i in range(3000)
        ))  # fmt: skip
        err = refused("id", "mint", TRAFFIC, *tk, "--csv", k(again), "--max-body", "70000", *C,
                      rule="already-exists")  # fmt: skip
        minted = int(err.split("The first ")[1].split()[0].replace(",", ""))
        assert 0 < minted < 3000 and f"rows {minted + 1:,} on were not" in err, err
        assert version(city, f"{TRAFFIC}/MORE-{minted - 1}") == (1, True)
        assert version(city, f"{TRAFFIC}/MORE-{minted}") == (0, False)

        # id update and id delete.
        out = ok("id", "update", f"{TRAFFIC}/BUS-STOP-17", *tk, "--url", "https://b.example/17", *C)
        assert "update" in out
        assert version(city, f"{TRAFFIC}/BUS-STOP-17") == (2, True)
        ok("id", "delete", f"{TRAFFIC}/CSV-0", *tk, *C)
        assert version(city, f"{TRAFFIC}/CSV-0") == (2, False)

        # Refusals: one line, the rule, the key's fingerprint, exit 1, no traceback.
        refused(
            "id", "mint", f"{TRAFFIC}/BUS-STOP-99", "--key", k(keys / "urban.key"),
            "--url", "https://bus.example/99", *C, rule="sibling-key", key=urban,
        )  # fmt: skip
        refused(
            "prefix", "delegate", "MA.156.1301.03", *tk, "--child-key", k(keys / "urban.vkey"),
            *C, rule="sibling-node", key=traffic,
        )  # fmt: skip
        refused(
            "prefix", "delegate", "MA.156.1302", "--key", k(keys / "sjz-admin.key"),
            "--child-key", k(keys / "urban.vkey"), *R, rule="sibling-node", key=city_key,
        )  # fmt: skip
        refused(
            "id", "update", f"{TRAFFIC}/CSV-1", "--key", k(keys / "traffic-2024.key"),
            "--url", "https://x.example/", *C, rule="wrong-key", key=traffic2,
        )  # fmt: skip
        refused("id", "mint", f"{TRAFFIC}/CSV-1", *tk, "--url", "https://x.example/", *C,
                rule="already-exists", key=traffic)  # fmt: skip
        refused("id", "update", f"{TRAFFIC}/CSV-0", *tk, "--url", "https://x.example/", *C,
                rule="deleted", key=traffic)  # fmt: skip
        refused("id", "mint", f"{TRAFFIC}/X-1", *tk, "--url", "javascript:alert(1)", *C,
                rule="url-scheme")  # fmt: skip

        # key rotate: the new key works, the old one is refused as rotated out.
        out = ok("key", "rotate", TRAFFIC, *tk, "--new-key", k(keys / "traffic-2024.vkey"), *C)
        assert f"{TRAFFIC} is now signed by {traffic2.verifier}" in out, out
        refused(
            "id", "mint", f"{TRAFFIC}/AFTER-1", *tk, "--url", "https://bus.example/a", *C,
            rule="rotated-out-key", key=traffic,
        )  # fmt: skip
        refused("key", "rotate", TRAFFIC, *tk, "--new-key", k(keys / "urban.vkey"), *C,
                rule="rotated-out-key", key=traffic)  # fmt: skip
        ok("id", "mint", f"{TRAFFIC}/AFTER-1", "--key", k(keys / "traffic-2024.key"),
           "--url", "https://bus.example/a", *C)  # fmt: skip
        assert version(city, f"{TRAFFIC}/AFTER-1") == (1, True)

        # serve stops cleanly on SIGTERM (exit 0) after finishing its batch.
        assert cp.stop() == 0, cp.output()[-2000:]
        assert rp.stop() == 0, rp.output()[-2000:]
        assert "stopping" in cp.output()
    for spec in (root, city):
        out = ok("ledger", "verify", k(spec.log_dir), "--key", k(spec.directory / "log.vkey"))
        assert out.startswith(f"ok: {spec.origin} size "), out
    assert "size 1 " in ok(
        "ledger", "verify", k(root.log_dir), "--key", k(root.directory / "log.vkey")
    )


@pytest.fixture
def dept(tmp_path: Path) -> Iterator[tuple[RegistrarSpec, SigningKey, tuple[str, ...]]]:
    """A department registrar child process; its key; the CLI arguments to write to it."""
    keys = tmp_path / "keys"
    keys.mkdir()
    admin = keygen(keys, "admin")
    spec = init_with_cli(tmp_path / "reg", TRAFFIC, CITY_ORIGIN, prefix_key=keys / "admin.vkey")
    with RegistrarProcess(spec) as p:
        p.start()
        yield spec, admin, ("--key", str(keys / "admin.key"), "--registrar", spec.url)


def test_every_refusal_names_the_key(
    dept: tuple[RegistrarSpec, SigningKey, tuple[str, ...]],
) -> None:
    _, admin, w = dept
    url = ("--url", "https://x.example/")
    ok("id", "mint", f"{TRAFFIC}/X-1", *w, *url)
    refused("id", "mint", f"{TRAFFIC}/X-1", *w, *url, rule="already-exists", key=admin)
    ok("id", "delete", f"{TRAFFIC}/X-1", *w)
    refused("id", "update", f"{TRAFFIC}/X-1", *w, *url, rule="deleted", key=admin)


def test_delete_of_an_unknown_identifier_says_not_found(
    dept: tuple[RegistrarSpec, SigningKey, tuple[str, ...]],
) -> None:
    _, admin, w = dept
    refused("id", "delete", f"{TRAFFIC}/NEVER", *w, rule="not-found", key=admin)
    refused("id", "update", f"{TRAFFIC}/NEVER", *w, "--url", "https://x.example/",
            rule="not-found", key=admin)  # fmt: skip


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    spec = init_with_cli(tmp_path / "reg", TRAFFIC, CITY_ORIGIN)
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen(1)
        busy = s.getsockname()[1]
        err = refused("registrar", "serve", str(spec.directory), "--listen", f"{HOST}:{busy}",
                      rule="listen")  # fmt: skip
    assert "cannot listen" in err
    refused("registrar", "serve", str(tmp_path / "nothing-here"), rule="no-config")


def test_config_without_witnesses_leaves_quorum_to_its_default_and_refuses_typos(
    tmp_path: Path,
) -> None:
    from registrar.config import RegistrarConfig

    spec = init_with_cli(tmp_path / "reg", TRAFFIC, CITY_ORIGIN)
    path = spec.directory / "registrar.toml"
    text = path.read_text()
    assert "\nquorum" not in text  # a written 0 would outlive witnesses added later
    w = SigningKey.generate("w.test").verifier
    path.write_text(text + f'\n[[witness]]\nurl = "http://127.0.0.1:9"\nkey = "{w}"\n')
    assert RegistrarConfig.load(spec.directory).quorum == 1
    path.write_text(text.replace("[batch]", "[batch]\nmax_sise = 10"))
    err = refused("registrar", "serve", str(spec.directory), rule="bad-config")
    assert "batch.max_sise (did you mean 'max_size'?" in err


def test_usage_errors_and_unreachable_registrar(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    SigningKey.generate("k").write(key)
    dead = f"http://{HOST}:{free_port()}"
    refused("id", "mint", TRAFFIC, "--key", str(key), "--registrar", dead, rule="usage")
    refused(
        "id", "mint", TRAFFIC, "--key", str(key), "--count", "10", "--registrar", dead,
        rule="usage",
    )  # fmt: skip
    err = refused(
        "id", "mint", f"{TRAFFIC}/X", "--key", str(key), "--url", "https://x.example/",
        "--registrar", dead, rule="unreachable",
    )  # fmt: skip
    assert "cannot reach the registrar" in err
    refused("id", "mint", f"{TRAFFIC}/X", "--key", str(tmp_path / "missing.key"), rule="key-file")
    key.chmod(0o644)
    refused("id", "delete", f"{TRAFFIC}/X", "--key", str(key), rule="key-permissions")


@pytest.mark.parametrize(
    "command",
    [
        ("registrar", "init"),
        ("registrar", "serve"),
        ("prefix", "delegate"),
        ("id", "mint"),
        ("id", "update"),
        ("id", "delete"),
        ("key", "rotate"),
        ("ledger", "verify"),
    ],
)
def test_help(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cityid {' '.join(command)}"), out
    assert "example" in out
