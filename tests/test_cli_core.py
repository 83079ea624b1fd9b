"""The ``cityid`` command line: help, ``id check``, ``keygen``.

The main paths run the real CLI in a subprocess; the many small variations run ``main()``
in-process (same parser and error mapping), which keeps the suite fast.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cityid.cli import main
from cityid.keys import SigningKey, VerifierKey

MAIN = Path(__file__).resolve().parents[1]


def cityid(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYID_")}
    env["PYTHONPATH"] = str(MAIN) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "cityid.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_main(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path, *args: str
) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit code, stdout, stderr)."""
    for k in list(os.environ):
        if k.startswith("CITYID_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(cwd)
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse --help and usage errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


LABELS = ("canonical", "url path", "dns", "oid", "check")


def lines(out: str) -> dict[str, str]:
    """The text output of ``id check``: one ``label  value`` line per form, in order."""
    got = {}
    for label, ln in zip(LABELS, out.splitlines(), strict=True):
        assert ln.startswith(label + " "), ln
        got[label] = ln[len(label) :].strip()
    return got


def test_help(tmp_path: Path) -> None:
    r = cityid(tmp_path, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: cityid" in r.stdout
    assert "id" in r.stdout and "keygen" in r.stdout
    assert "MA.156.1301.02/W0000127R" in r.stdout
    assert r.stderr == ""


def test_check_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_main(capsys, monkeypatch, tmp_path, "id", "check", "--help")
    assert code == 0
    for flag in ("--apex", "--root", "--root-oid", "--minted", "--json"):
        assert flag in out


def test_id_alone_prints_the_group_help(tmp_path: Path) -> None:
    r = cityid(tmp_path, "id")
    assert r.returncode == 2
    assert "usage: cityid id" in r.stdout
    assert "check" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_no_command_prints_help(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run_main(capsys, monkeypatch, tmp_path)
    assert code == 2
    assert "usage: cityid" in out


def test_id_check_text(tmp_path: Path) -> None:
    r = cityid(tmp_path, "id", "check", "ma.156.1301.02/w0000127r")
    assert r.returncode == 0, r.stderr
    got = lines(r.stdout)
    assert got["canonical"] == "MA.156.1301.02/W0000127R"
    assert got["url path"] == "/MA.156.1301.02/W0000127R"
    assert got["dns"] == "w0000127r.02.1301.156.ma.cityid.test."
    assert got["oid"].startswith("none: ") and "'02'" in got["oid"] and "leading zero" in got["oid"]
    assert got["check"].startswith("valid: R")


def test_id_check_oid_and_apex(tmp_path: Path) -> None:
    r = cityid(
        tmp_path,
        "id",
        "check",
        "MA.156.1301/1234",
        "--apex",
        "id.city.example.",
        "--root-oid",
        "1.2.156",
    )
    assert r.returncode == 0, r.stderr
    got = lines(r.stdout)
    assert got["dns"] == "1234.1301.156.ma.id.city.example."
    assert got["oid"] == "1.2.156.1301.1234"
    assert got["check"].startswith("not a minted suffix")


def test_id_check_json(tmp_path: Path) -> None:
    r = cityid(tmp_path, "id", "check", "MA.156.1301/7", "--json")
    assert r.returncode == 0, r.stderr
    forms = json.loads(r.stdout)
    assert forms["canonical"] == "MA.156.1301/7"
    assert forms["url_path"] == "/MA.156.1301/7"
    assert forms["dns"] == "7.1301.156.ma.cityid.test."
    assert forms["oid"] == "2.999.1301.7"
    assert forms["oid_note"] is None


def test_id_check_json_prefix_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_main(
        capsys,
        monkeypatch,
        tmp_path,
        "id",
        "check",
        "0.na/ma.156.1301.02",
        "--json",
        "--apex",
        "cityid.test",
    )
    assert code == 0, err
    forms = json.loads(out)
    assert forms["canonical"] == "0.NA/MA.156.1301.02"
    assert forms["dns"] == "02.1301.156.ma.cityid.test."
    assert forms["oid"] is None and "leading zero" in forms["oid_note"]
    assert forms["check"].startswith("not applicable")


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["MA.156/a b"], "suffix-charset"),
        (["MA..156/A"], "empty-node"),
        (["MA.156"], "no-slash"),
        (["MA.156/é"], "suffix-charset"),
        (["--minted", "MA.156.1301.02/W0000127X"], "check-character"),
        (["--minted", "MA.156/NOT-MINTED"], "not-minted-form"),
        ([f"MA.{'.'.join(['A' * 63] * 4)}/X"], "dns-name-length"),
        (["MA.156/A", "--apex", "a..b"], "dns-label"),
    ],
)
def test_bad_id_exits_1_with_the_rule(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    rule: str,
) -> None:
    code, out, err = run_main(capsys, monkeypatch, tmp_path, "id", "check", *args)
    assert code == 1
    assert out == ""
    assert f"rule: {rule}" in err
    assert err.startswith("cityid: error: ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        (["MA.156/a b"], "suffix-charset"),
        (["--minted", "MA.156.1301.02/W0000127X"], "check-character"),
    ],
)
def test_bad_id_in_a_subprocess(tmp_path: Path, args: list[str], rule: str) -> None:
    r = cityid(tmp_path, "id", "check", *args)
    assert r.returncode == 1
    assert r.stdout == ""
    assert f"rule: {rule}" in r.stderr
    assert r.stderr.startswith("cityid: error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_minted_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run_main(
        capsys,
        monkeypatch,
        tmp_path,
        "id",
        "check",
        "--minted",
        "MA.156.1301.02/W0000127R",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["check"].startswith("valid")


def _independent_vkey_check(line: str) -> tuple[str, bytes]:
    """Check name+hash+base64 without cityid: the hash is SHA-256(name \\n alg key)[:4]."""
    name, hash_hex, blob = line.split("+", 2)
    raw = base64.b64decode(blob, validate=True)
    assert len(raw) == 33 and raw[0] == 0x01
    assert hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() == hash_hex
    return name, raw[1:]


def test_keygen(tmp_path: Path) -> None:
    r = cityid(tmp_path, "keygen", "shijiazhuang.cityid.test/log", "-o", "city.key")
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip().splitlines()
    assert out[0] == "wrote city.key (mode 0600)"
    vline = out[-1]
    name, public = _independent_vkey_check(vline)
    assert name == "shijiazhuang.cityid.test/log"
    path = tmp_path / "city.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    vk = VerifierKey.parse(vline)
    assert vk.name == name and vk.public_key == public
    sk = SigningKey.read(path)
    assert sk.verifier == vk
    assert str(vk) == vline


def test_keygen_default_file_name_and_no_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run_main(capsys, monkeypatch, tmp_path, "keygen", "root.cityid.test/log")
    assert code == 0, err
    path = tmp_path / "root.cityid.test_log.key"
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_text()
    code, _, err = run_main(capsys, monkeypatch, tmp_path, "keygen", "root.cityid.test/log")
    assert code == 1
    assert "rule: key-exists" in err
    assert path.read_text() == before
    code, _, err = run_main(
        capsys, monkeypatch, tmp_path, "keygen", "root.cityid.test/log", "--force"
    )
    assert code == 0, err
    assert path.read_text() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["a b", "a+b"])
def test_keygen_bad_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    code, _, err = run_main(capsys, monkeypatch, tmp_path, "keygen", name, "-o", "k.key")
    assert code == 1
    assert "rule: key-name" in err
    assert not (tmp_path / "k.key").exists()


def test_an_unexpected_error_is_one_line_with_the_traceback_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cityid.cli import EXIT_FAILURE, _crashed

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("CITYID_TRACEBACK", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    try:
        {}["missing"]
    except KeyError as e:
        assert _crashed(e) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert (
        err.startswith("cityid: internal error: KeyError: 'missing' [a bug")
        and err.count("\n") == 1
    )
    (log,) = tmp_path.glob("cityid-crash-*.log")
    assert "Traceback" in log.read_text() and "KeyError" in log.read_text()
    monkeypatch.setenv("CITYID_TRACEBACK", "1")
    try:
        raise ValueError("boom")
    except ValueError as e:
        _crashed(e)
    err = capsys.readouterr().err
    assert "Traceback" in err and "printed above" in err
