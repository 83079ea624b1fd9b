"""c2sp.org/signed-note and c2sp.org/tlog-checkpoint: spec vectors, strict parsing."""

from __future__ import annotations

import base64

import pytest

from cityid.errors import NoteError
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey, VerifierKey
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.merkle import EMPTY_ROOT
from ledger.note import Signature, add_signatures, open_note, parse_note, sign_note

# The signed-note specification's example key and note.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n"
    "\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmR"
    "KuwHjG1Yu72IneyaQM=\n"
).encode()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate("example.com/log")


def test_spec_verifier_key_and_key_id() -> None:
    vk = VerifierKey.parse(SPEC_VKEY)
    assert vk.name == "example.com/foo"
    assert vk.key_id.hex() == "530d903a"
    assert str(vk) == SPEC_VKEY


def test_spec_example_note_verifies() -> None:
    vk = VerifierKey.parse(SPEC_VKEY)
    note = open_note(SPEC_NOTE, [vk])
    assert note.text == "This is an example message.\n"
    assert [v.name for v, _ in note.verified] == ["example.com/foo"]
    assert note.unverified == []


def test_spec_example_note_tampered_fails() -> None:
    vk = VerifierKey.parse(SPEC_VKEY)
    bad = SPEC_NOTE.replace(b"example message", b"example massage")
    with pytest.raises(NoteError, match=r"example.com/foo \(key 530d903a\) does not verify"):
        open_note(bad, [vk])


def test_vkey_with_plus_in_base64_parses(key: SigningKey) -> None:
    for _ in range(50):
        k = SigningKey.generate("example.com/plus")
        if "+" in str(k.verifier).split("+", 2)[2]:
            assert VerifierKey.parse(str(k.verifier)) == k.verifier
            break


def test_sign_and_open_round_trip(key: SigningKey) -> None:
    other = SigningKey.generate("example.com/other")
    msg = sign_note("hello\n\nworld\n", key, other)
    text, sigs = parse_note(msg)
    assert text == "hello\n\nworld\n"
    assert [s.name for s in sigs] == ["example.com/log", "example.com/other"]
    note = open_note(msg, [key.verifier])
    assert [v for v, _ in note.verified] == [key.verifier]
    assert [s.name for s in note.unverified] == ["example.com/other"]


def test_unknown_signatures_ignored_but_one_known_needed(key: SigningKey) -> None:
    stranger = SigningKey.generate("example.com/stranger")
    msg = sign_note("hi\n", stranger)
    with pytest.raises(NoteError, match="no valid signature by a known key") as e:
        open_note(msg, [key.verifier])
    assert e.value.rule == "note-no-known-signature"
    # Same name, other key: a different key ID, so ignored, not a failure.
    impostor = SigningKey.generate("example.com/log")
    msg2 = sign_note("hi\n", impostor, key)
    note = open_note(msg2, [key.verifier])
    assert len(note.verified) == 1 and len(note.unverified) == 1


def test_known_key_bad_signature_names_key(key: SigningKey) -> None:
    msg = sign_note("hi\n", key)
    text, sigs = parse_note(msg)
    forged = Signature(sigs[0].name, sigs[0].key_id, bytes(64))
    bad = text.encode() + b"\n" + forged.line().encode()
    with pytest.raises(NoteError, match=f"by example.com/log \\(key {key.key_id.hex()}\\)"):
        open_note(bad, [key.verifier])


def test_cosignature_verifiers_are_not_checked_here(key: SigningKey) -> None:
    witness = SigningKey.generate("witness.example")
    cos_vk = witness.verifier.with_alg(ALG_COSIGNATURE_V1)
    msg = add_signatures(sign_note("hi\n", key), [Signature(cos_vk.name, cos_vk.key_id, b"x" * 72)])
    note = open_note(msg, [key.verifier, cos_vk])
    assert len(note.verified) == 1
    assert [s.name for s in note.unverified] == ["witness.example"]
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(msg, [cos_vk])


@pytest.mark.parametrize(
    ("msg", "rule"),
    [
        (b"no newline at end", "note-format"),
        (b"text\n", "note-format"),
        (b"text\n\n", "note-unsigned"),
        (b"text\n\n- name AAAAAAAA\n", "note-signature-line"),
        ("text\n\n— name AAAAAAAA extra\n".encode(), "note-signature-line"),
        ("text\n\n— na+me AAAAAAAA\n".encode(), "note-signature-line"),
        ("text\n\n— name !!!!\n".encode(), "note-signature-line"),
        ("text\n\n— name AAAA\n".encode(), "note-signature-line"),
        ("te\txt\n\n— name AAAAAAAA\n".encode(), "note-text"),
        ("text\r\n\n— name AAAAAAAA\n".encode(), "note-text"),
        (b"\xff\xfe\n\n", "note-encoding"),
        (b"x" * (1 << 20) + b"\n", "note-size"),
    ],
)
def test_parse_note_rejects(msg: bytes, rule: str) -> None:
    with pytest.raises(NoteError) as e:
        parse_note(msg)
    assert e.value.rule == rule


def test_too_many_signatures_refused(key: SigningKey) -> None:
    line = Signature("n", b"abcd", b"s").line()
    with pytest.raises(NoteError, match="more than 100"):
        parse_note(b"t\n\n" + line.encode() * 101)
    # The spec's floor: at least 16 signatures are accepted.
    assert len(parse_note(b"t\n\n" + line.encode() * 16)[1]) == 16


def test_sign_note_refuses_bad_text(key: SigningKey) -> None:
    with pytest.raises(NoteError, match="end in a newline"):
        sign_note("no newline", key)
    with pytest.raises(NoteError, match="control character"):
        sign_note("a\x00b\n", key)


def test_add_signatures_keeps_order_and_skips_duplicates(key: SigningKey) -> None:
    msg = sign_note("cp\n", key)
    a = Signature("w1.example", b"\x01\x02\x03\x04", b"a" * 72)
    b = Signature("w2.example", b"\x05\x06\x07\x08", b"b" * 72)
    out = add_signatures(msg, [a, b])
    out2 = add_signatures(out, [Signature("w1.example", a.key_id, b"c" * 72), b])
    assert out2 == out
    _, sigs = parse_note(out2)
    assert [s.name for s in sigs] == ["example.com/log", "w1.example", "w2.example"]
    assert open_note(out2, [key.verifier]).text == "cp\n"


# --- checkpoints -------------------------------------------------------------------


def test_checkpoint_text_round_trip() -> None:
    cp = Checkpoint("example.com/log", 20852163, bytes(range(32)), ("ext one",))
    text = cp.text()
    assert text == (
        f"example.com/log\n20852163\n{base64.b64encode(bytes(range(32))).decode()}\next one\n"
    )
    assert Checkpoint.parse(text) == cp
    empty = Checkpoint("o", 0, EMPTY_ROOT)
    assert empty.text() == "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"


ROOT = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (f"o\n1\n{ROOT}", "checkpoint-format"),
        ("o\n1\n", "checkpoint-format"),
        (f"\n1\n{ROOT}\n", "checkpoint-origin"),
        (f"o\n01\n{ROOT}\n", "checkpoint-size"),
        (f"o\n-1\n{ROOT}\n", "checkpoint-size"),
        (f"o\n+1\n{ROOT}\n", "checkpoint-size"),
        (f"o\n1 \n{ROOT}\n", "checkpoint-size"),
        (f"o\n١\n{ROOT}\n", "checkpoint-size"),
        ("o\n1\nAAAA\n", "checkpoint-root"),
        ("o\n1\n!!!\n", "checkpoint-root"),
        (f"o\n1\n{ROOT}\n\n", "checkpoint-extension"),
    ],
)
def test_checkpoint_parse_rejects(text: str, rule: str) -> None:
    with pytest.raises(NoteError) as e:
        Checkpoint.parse(text)
    assert e.value.rule == rule


def test_open_checkpoint(key: SigningKey) -> None:
    cp = Checkpoint("example.com/log", 5, bytes(32))
    msg = sign_note(cp.text(), key)
    got, note = open_checkpoint(msg, key.verifier)
    assert got == cp and note.verified
    with pytest.raises(NoteError, match=r"origin 'example\.com/log' is not the expected 'x'"):
        open_checkpoint(msg, key.verifier, origin="x")


def test_checkpoint_with_bad_signature(key: SigningKey) -> None:
    msg = sign_note(Checkpoint("example.com/log", 5, bytes(32)).text(), key)
    tampered = msg.replace(b"\n5\n", b"\n6\n")
    with pytest.raises(NoteError, match="does not verify") as e:
        open_checkpoint(tampered, key.verifier)
    assert e.value.rule == "note-bad-signature"
