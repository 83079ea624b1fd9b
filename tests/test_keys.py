"""Keys in the c2sp.org/signed-note encodings: parse, format, files, signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityid.errors import KeyFormatError, SignatureError
from cityid.keys import (
    ALG_COSIGNATURE_V1,
    ALG_ED25519,
    SigningKey,
    VerifierKey,
    key_id,
)

# The example verifier key of c2sp.org/signed-note (and Go's sumdb/note).
C2SP_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
C2SP_BLOB = "AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"


def seed(n: int) -> bytes:
    return hashlib.sha256(b"cityid-test-key-%d" % n).digest()


def blob_of(text: str, parts: int) -> str:
    return text.split("+", parts - 1)[-1]


# Seeds chosen so that the base64 has no '+' (1), a '+' in the verifier key (0), and a '+'
# in the signer key only (2): base64 uses '+', so parsers must split only the first ones.
CLEAN, VKEY_PLUS, SKEY_PLUS = seed(1), seed(0), seed(2)


def test_seed_fixtures_have_the_properties_claimed() -> None:
    def vblob(s: bytes) -> str:
        return blob_of(str(SigningKey("n", s).verifier), 3)

    def sblob(s: bytes) -> str:
        return blob_of(str(SigningKey("n", s)), 5)

    assert "+" not in vblob(CLEAN) and "+" not in sblob(CLEAN)
    assert "+" in vblob(VKEY_PLUS)
    assert "+" in sblob(SKEY_PLUS) and "+" not in vblob(SKEY_PLUS)


def test_c2sp_example_verifier_key() -> None:
    vk = VerifierKey.parse(C2SP_VKEY)
    assert vk.name == "example.com/foo"
    assert vk.key_id.hex() == "530d903a"
    assert vk.key_id == key_id(vk.name, vk.public_key)
    assert vk.alg == ALG_ED25519
    assert len(vk.public_key) == 32
    assert base64.b64decode(C2SP_BLOB) == bytes([ALG_ED25519]) + vk.public_key
    assert str(vk) == C2SP_VKEY
    # The key ID is the first four bytes of SHA-256(name || '\n' || alg || key).
    digest = hashlib.sha256(b"example.com/foo\n" + base64.b64decode(C2SP_BLOB)).digest()
    assert digest[:4].hex() == "530d903a"
    # White space around a key (a line read from a file) is ignored.
    assert VerifierKey.parse(f"  {C2SP_VKEY}\n") == vk


def test_cosignature_key_id_differs() -> None:
    vk = VerifierKey.parse(C2SP_VKEY)
    cosig = vk.with_alg(ALG_COSIGNATURE_V1)
    assert cosig.key_id != vk.key_id
    assert VerifierKey.parse(str(cosig)) == cosig


@pytest.mark.parametrize("s", [CLEAN, VKEY_PLUS, SKEY_PLUS], ids=["clean", "vkey+", "skey+"])
def test_format_parse_round_trip(s: bytes) -> None:
    sk = SigningKey("shijiazhuang.cityid.test/log", s)
    assert SigningKey.parse(str(sk)) == sk
    assert VerifierKey.parse(str(sk.verifier)) == sk.verifier
    assert sk.verifier.key_id == sk.key_id
    assert str(sk).startswith("PRIVATE+KEY+shijiazhuang.cityid.test/log+" + sk.key_id.hex() + "+")


@settings(max_examples=100, deadline=None)
@given(
    s=st.binary(min_size=32, max_size=32), name=st.from_regex(r"[a-z0-9./_-]{1,30}", fullmatch=True)
)
def test_any_key_round_trips(s: bytes, name: str) -> None:
    sk = SigningKey(name, s)
    assert SigningKey.parse(str(sk)) == sk
    assert VerifierKey.parse(str(sk.verifier)) == sk.verifier


def test_repr_never_shows_the_seed() -> None:
    sk = SigningKey("n", CLEAN)
    assert CLEAN.hex() not in repr(sk)
    assert blob_of(str(sk), 5) not in repr(sk)
    assert sk.key_id.hex() in repr(sk)


# -- files ------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [CLEAN, VKEY_PLUS, SKEY_PLUS], ids=["clean", "vkey+", "skey+"])
def test_write_read_round_trip(tmp_path: Path, s: bytes) -> None:
    sk = SigningKey("city.example/log", s)
    path = sk.write(tmp_path / "city.key")
    assert path == tmp_path / "city.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == str(sk) + "\n"
    assert SigningKey.read(path) == sk


def test_generate_write_read(tmp_path: Path) -> None:
    for n in range(8):
        sk = SigningKey.generate(f"k{n}")
        assert len(sk.seed) == 32
        p = sk.write(tmp_path / f"k{n}.key")
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert SigningKey.read(p) == sk
    assert SigningKey.generate("a").seed != SigningKey.generate("a").seed


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        p = SigningKey("n", CLEAN).write(tmp_path / "k.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    p = tmp_path / "k.key"
    first = SigningKey("n", CLEAN)
    first.write(p)
    with pytest.raises(KeyFormatError) as e:
        SigningKey("n", VKEY_PLUS).write(p)
    assert e.value.rule == "key-exists"
    assert str(p) in e.value.message
    assert SigningKey.read(p) == first  # untouched
    second = SigningKey("n", VKEY_PLUS)
    second.write(p, overwrite=True)
    assert SigningKey.read(p) == second
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606])
def test_refuses_a_key_file_others_can_read(tmp_path: Path, mode: int) -> None:
    p = SigningKey("n", CLEAN).write(tmp_path / "k.key")
    p.chmod(mode)
    with pytest.raises(KeyFormatError) as e:
        SigningKey.read(p)
    assert e.value.rule == "key-permissions"
    assert "chmod 600" in e.value.message


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFormatError) as e:
        SigningKey.read(tmp_path / "nope.key")
    assert e.value.rule == "key-file"


def test_read_garbage_file(tmp_path: Path) -> None:
    p = tmp_path / "k.key"
    p.write_text("not a key\n")
    p.chmod(0o600)
    with pytest.raises(KeyFormatError) as e:
        SigningKey.read(p)
    assert e.value.rule == "skey-format"


# -- bad verifier and signer keys -------------------------------------------------------

_raw = base64.b64decode(C2SP_BLOB)

BAD_VKEYS: list[tuple[str, str, str]] = [
    ("wrong hash", C2SP_VKEY.replace("530d903a", "530d903b"), "vkey-hash"),
    ("hash of another name", "example.com/bar+530d903a+" + C2SP_BLOB, "vkey-hash"),
    ("short hash", C2SP_VKEY.replace("530d903a", "530d90"), "vkey-format"),
    ("long hash", C2SP_VKEY.replace("530d903a", "530d903a00"), "vkey-format"),
    ("hash not hex", C2SP_VKEY.replace("530d903a", "530d903z"), "vkey-format"),
    ("bad base64 character", C2SP_VKEY[:-1] + "!", "vkey-format"),
    ("bad base64 padding", C2SP_VKEY[:-2] + "=", "vkey-format"),
    (
        "key too short",
        "example.com/foo+530d903a+" + base64.b64encode(_raw[:-1]).decode(),
        "vkey-format",
    ),
    (
        "key too long",
        "example.com/foo+530d903a+" + base64.b64encode(_raw + b"\0").decode(),
        "vkey-format",
    ),
    (
        "unknown algorithm",
        "example.com/foo+530d903a+" + base64.b64encode(b"\x02" + _raw[1:]).decode(),
        "vkey-format",
    ),
    ("no parts", "example.com/foo", "vkey-format"),
    ("two parts", "example.com/foo+530d903a", "vkey-format"),
    ("empty name", "+530d903a+" + C2SP_BLOB, "key-name"),
    ("name with a space", "example com+530d903a+" + C2SP_BLOB, "key-name"),
    ("name with a tab", "example\tcom+530d903a+" + C2SP_BLOB, "key-name"),
    ("empty string", "", "vkey-format"),
]


@pytest.mark.parametrize(
    ("text", "rule"), [(t, r) for _, t, r in BAD_VKEYS], ids=[n for n, _, _ in BAD_VKEYS]
)
def test_bad_verifier_keys(text: str, rule: str) -> None:
    with pytest.raises(KeyFormatError) as e:
        VerifierKey.parse(text)
    assert e.value.rule == rule


@pytest.mark.parametrize("name", ["a+b", "a b", "", "a\nb", "a\x00b"])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(KeyFormatError) as e:
        SigningKey(name, CLEAN)
    assert e.value.rule == "key-name"
    with pytest.raises(KeyFormatError):
        VerifierKey(name, SigningKey("n", CLEAN).public_key)


def test_bad_key_lengths() -> None:
    with pytest.raises(KeyFormatError) as e:
        VerifierKey("n", b"\0" * 31)
    assert e.value.rule == "key-length"
    with pytest.raises(KeyFormatError) as e:
        SigningKey("n", b"\0" * 33)
    assert e.value.rule == "key-length"


def test_bad_signer_keys() -> None:
    good = str(SigningKey("n", CLEAN))
    cases = {
        good.replace("PRIVATE+KEY", "PUBLIC+KEY", 1): "skey-format",
        good.split("+", 1)[1]: "skey-format",
        good[:-1] + "!": "skey-format",
        "PRIVATE+KEY+n+00000000+" + blob_of(good, 5): "skey-hash",
        "PRIVATE+KEY+n+" + SigningKey("n", CLEAN).key_id.hex() + "+AAAA": "skey-format",
        C2SP_VKEY: "skey-format",
    }
    for text, rule in cases.items():
        with pytest.raises(KeyFormatError) as e:
            SigningKey.parse(text)
        assert e.value.rule == rule, text


# -- signatures -------------------------------------------------------------------------


def test_sign_and_verify() -> None:
    sk = SigningKey("city.example/log", CLEAN)
    msg = b"city.example/log\n42\nroot\n"
    sig = sk.sign(msg)
    assert len(sig) == 64
    sk.verifier.verify(msg, sig)
    VerifierKey.parse(str(sk.verifier)).verify(msg, sig)
    assert sk.sign(msg) == sig  # Ed25519 is deterministic


@pytest.mark.parametrize(
    "tamper",
    ["message", "signature", "other key", "short signature", "empty signature"],
)
def test_bad_signature_raises(tamper: str) -> None:
    sk = SigningKey("city.example/log", CLEAN)
    msg = b"hello"
    sig = sk.sign(msg)
    vk = sk.verifier
    if tamper == "message":
        msg = b"hellp"
    elif tamper == "signature":
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    elif tamper == "other key":
        vk = SigningKey("city.example/log", VKEY_PLUS).verifier
    elif tamper == "short signature":
        sig = sig[:63]
    else:
        sig = b""
    with pytest.raises(SignatureError) as e:
        vk.verify(msg, sig)
    assert e.value.rule == "bad-signature"
    assert vk.key_id.hex() in e.value.message and vk.name in e.value.message


# -- regressions -------------------------------------------------------------------------------


def test_hash_with_spaces_is_refused() -> None:
    with pytest.raises(KeyFormatError):
        VerifierKey.parse(C2SP_VKEY.replace("530d903a", "53 0d 90 3a"))


def test_overwrite_never_exposes_the_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "k.key"
    p.write_text("old\n")
    p.chmod(0o644)
    modes: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    SigningKey("n", CLEAN).write(p, overwrite=True)
    assert modes and all(m == 0o600 for m in modes), [oct(m) for m in modes]
