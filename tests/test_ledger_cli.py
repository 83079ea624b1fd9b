"""``cityid ledger``: verify, proof, checkpoint, help."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from cityid.cli import main
from cityid.keys import SigningKey
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.storage import Log


@pytest.fixture
def log_dir(tmp_path: Path) -> tuple[Path, SigningKey]:
    key = SigningKey.generate("cli.example/log")
    d = tmp_path / "log"
    with Log.create(d, key) as log:
        for b in range(3):
            log.append([f"entry {b * 300 + i}".encode() for i in range(300)])
    (tmp_path / "log.vkey").write_text(str(key.verifier) + "\n")
    key.write(tmp_path / "log.key")
    return d, key


def test_verify_ok_with_key_string_vkey_file_and_key_file(
    log_dir: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    d, key = log_dir
    for k in (str(key.verifier), str(d.parent / "log.vkey"), str(d.parent / "log.key")):
        assert main(["ledger", "verify", str(d), "--key", k]) == 0
        out = capsys.readouterr().out
        assert out.startswith("ok: cli.example/log size 900 root ")


def test_verify_reports_bad_file_and_offset(
    log_dir: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    d, key = log_dir
    p = d / "tile/0/001"
    data = bytearray(p.read_bytes())
    data[17 * 32] ^= 0xFF
    p.write_bytes(bytes(data))
    assert main(["ledger", "verify", str(d), "--key", str(key.verifier)]) == 1
    err = capsys.readouterr().err
    assert "tile/0/001: hash 17 at offset 544 does not match the entries" in err
    assert "[rule: tile-mismatch]" in err and "Traceback" not in err


def test_verify_wrong_key_and_bad_key(
    log_dir: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = log_dir
    other = SigningKey.generate("cli.example/log").verifier
    assert main(["ledger", "verify", str(d), "--key", str(other)]) == 1
    assert "no valid signature by a known key" in capsys.readouterr().err
    assert main(["ledger", "verify", str(d), "--key", "missing.vkey"]) == 1
    assert "no such key file" in capsys.readouterr().err


def test_proof_prints_a_verifiable_proof(
    log_dir: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = log_dir
    for size in (None, 600, 301):
        argv = ["ledger", "proof", str(d), "17"] + ([] if size is None else ["--size", str(size)])
        assert main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        fields = dict(line.split(": ", 1) for line in lines if ": " in line)
        assert fields["index"] == "17"
        assert int(fields["size"]) == (size or 900)
        leaf = base64.b64decode(fields["leaf hash"])
        assert leaf == leaf_hash(b"entry 17")
        n = int(fields["proof"].split()[0])
        proof = [base64.b64decode(x) for x in lines[-n:]]
        verify_inclusion(proof, int(fields["size"]), 17, base64.b64decode(fields["root"]), leaf)
    assert main(["ledger", "proof", str(d), "900"]) == 1
    assert "leaf 900 is not in a tree of size 900" in capsys.readouterr().err


def test_checkpoint_prints_the_note(
    log_dir: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]
) -> None:
    d, _ = log_dir
    assert main(["ledger", "checkpoint", str(d)]) == 0
    assert capsys.readouterr().out == (d / "checkpoint").read_text()
    assert main(["ledger", "checkpoint", str(d.parent / "none")]) == 1
    assert "not a ledger directory" in capsys.readouterr().err


def test_group_help_and_epilogs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger"]) == 2
    out = capsys.readouterr().out
    for cmd in ("verify", "proof", "checkpoint"):
        assert cmd in out
    for cmd in ("verify", "proof", "checkpoint"):
        with pytest.raises(SystemExit):
            main(["ledger", cmd, "--help"])
        assert "example" in capsys.readouterr().out


def test_console_entry_point(log_dir: tuple[Path, SigningKey]) -> None:
    d, key = log_dir
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cityid.cli",
            "ledger",
            "verify",
            str(d),
            "--key",
            str(key.verifier),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "size 900" in r.stdout
