"""c2sp.org/tlog-policy and cosignature/v1: parsing, quorum logic, checking real notes."""

from __future__ import annotations

import pytest

from cityid.errors import KeyFormatError, NoteError, WitnessError
from cityid.keys import SigningKey
from ledger.checkpoint import Checkpoint
from ledger.cosignature import (
    cosign,
    cosigner_vkey,
    signed_message,
    verify_cosignature,
)
from ledger.merkle import MemoryTree
from ledger.note import Signature, add_signatures, parse_note, sign_note
from ledger.policy import Policy, PolicyError, as_policy, parse_vkey

ORIGIN = "ledger.sjz.example.cn/MA.156.1301"


@pytest.fixture(scope="module")
def log_key() -> SigningKey:
    return SigningKey.generate(ORIGIN)


@pytest.fixture(scope="module")
def wkeys() -> dict[str, SigningKey]:
    return {n: SigningKey.generate(f"witness.example/{n}") for n in ("X1", "X2", "X3", "Y1", "Y2")}


def _nested(log_key: SigningKey, wkeys: dict[str, SigningKey]) -> str:
    ws = "\n".join(
        f"witness\t{n}  {cosigner_vkey(k)}  https://{n.lower()}.example/" for n, k in wkeys.items()
    )
    return f"""# two organisations
log {log_key.verifier} https://ledger.sjz.example.cn/MA.156.1301/

{ws}
  group X-witnesses 2 X1 X2 X3
group Y-witnesses any Y1 Y2
group X-and-Y all X-witnesses Y-witnesses
quorum X-and-Y
"""


def _checkpoint_note(log_key: SigningKey, size: int = 3) -> tuple[bytes, str]:
    tree = MemoryTree([b"leaf %d" % i for i in range(size)])
    cp = Checkpoint(ORIGIN, size, tree.root())
    return sign_note(cp.text(), log_key), cp.text()


def _cosigned(note: bytes, text: str, keys: list[SigningKey], ts: int = 1_700_000_000) -> bytes:
    return add_signatures(note, [cosign(text, k, ts) for k in keys])


# --- cosignature/v1 -------------------------------------------------------------


def test_cosignature_message_and_roundtrip(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    _, text = _checkpoint_note(log_key)
    msg = signed_message(text, 1679315147)
    assert msg == b"cosignature/v1\ntime 1679315147\n" + text.encode()
    k = wkeys["X1"]
    sig = cosign(text, k, 1679315147)
    assert sig.sig[:8] == (1679315147).to_bytes(8, "big") and len(sig.sig) == 72
    vk = cosigner_vkey(k)
    assert vk.alg == 0x04 and sig.key_id == vk.key_id != k.key_id
    assert verify_cosignature(text, sig, vk) == 1679315147
    # The vkey string round-trips and still verifies.
    assert verify_cosignature(text, sig, parse_vkey(str(vk))) == 1679315147


def test_cosignature_rejections(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    _, text = _checkpoint_note(log_key)
    k = wkeys["X1"]
    vk = cosigner_vkey(k)
    sig = cosign(text, k, 1000)
    other_text = text.replace("\n3\n", "\n4\n")
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(other_text, sig, vk)
    # Changing the timestamp bytes breaks the signature (the time is signed).
    forged = Signature(sig.name, sig.key_id, (2000).to_bytes(8, "big") + sig.sig[8:])
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignature(text, forged, vk)
    with pytest.raises(WitnessError, match="0x04"):
        verify_cosignature(text, sig, k.verifier)
    with pytest.raises(WitnessError, match="not by witness"):
        verify_cosignature(text, sig, cosigner_vkey(wkeys["X2"]))
    with pytest.raises(NoteError, match="72"):
        verify_cosignature(text, Signature(sig.name, sig.key_id, sig.sig[:40]), vk)
    with pytest.raises(WitnessError, match="timestamp"):
        cosign(text, k, -1)
    with pytest.raises(NoteError):
        cosign("not a checkpoint\n", k, 1)


def test_log_signature_is_not_a_cosignature(log_key: SigningKey):
    """Domain separation: the same key's plain note signature never passes as a cosignature."""
    note, text = _checkpoint_note(log_key)
    _, sigs = parse_note(note)
    as_cosigner = cosigner_vkey(log_key)
    fake = Signature(as_cosigner.name, as_cosigner.key_id, bytes(8) + sigs[0].sig)
    with pytest.raises(NoteError):
        verify_cosignature(text, fake, as_cosigner)


# --- parsing ------------------------------------------------------------------------


def test_parse_nested_example(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    p = Policy.parse(_nested(log_key, wkeys))
    assert [log.origin for log in p.logs] == [ORIGIN]
    assert p.logs[0].url == "https://ledger.sjz.example.cn/MA.156.1301/"
    assert list(p.witnesses) == ["X1", "X2", "X3", "Y1", "Y2"]
    assert p.witnesses["Y2"].url == "https://y2.example/"
    assert p.groups["X-witnesses"].threshold == 2
    assert p.groups["Y-witnesses"].threshold == 1
    assert p.groups["X-and-Y"].threshold == 2
    assert p.quorum == "X-and-Y"
    assert p.describe_quorum() == "all of (2 of (X1, X2, X3), 1 of (Y1, Y2))"
    # Formatting is canonical and parses back to the same policy.
    again = Policy.parse(p.format())
    assert again.format() == p.format()
    assert again.logs == p.logs and dict(again.witnesses) == dict(p.witnesses)
    assert dict(again.groups) == dict(p.groups)


@pytest.mark.parametrize(
    ("cosigned", "ok"),
    [
        (set(), False),
        ({"X1", "X2"}, False),
        ({"Y1"}, False),
        ({"X1", "Y2"}, False),
        ({"X1", "X3", "Y2"}, True),
        ({"X1", "X2", "X3", "Y1", "Y2"}, True),
        ({"X1", "X2", "nobody"}, False),
    ],
)
def test_satisfied(log_key, wkeys, cosigned, ok):
    assert Policy.parse(_nested(log_key, wkeys)).satisfied(cosigned) is ok


def test_quorum_none_and_single_witness(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    p = Policy.parse(f"log {log_key.verifier}\nquorum none\n")
    assert p.satisfied([]) and p.witnesses == {}
    vk = cosigner_vkey(wkeys["X1"])
    p = Policy.parse(f"witness W {vk}\nquorum W\n")
    assert not p.satisfied([]) and p.satisfied(["W"]) and p.logs == ()


@pytest.mark.parametrize(
    ("body", "rule", "match"),
    [
        ("", "policy-quorum", "no quorum"),
        ("quorum none\nquorum none\n", "policy-quorum", "second quorum"),
        ("quorum W\n", "policy-undefined", "not defined"),
        ("witness W {x1}\ngroup G 2 W\nquorum G\n", "policy-group", "between 1 and 1"),
        ("witness W {x1}\ngroup G 0 W\nquorum G\n", "policy-group", "between 1"),
        ("witness W {x1}\ngroup G 01 W\nquorum G\n", "policy-group", "decimal"),
        ("witness W {x1}\ngroup G some W\nquorum G\n", "policy-group", "decimal"),
        ("witness W {x1}\ngroup G any W W\nquorum G\n", "policy-group", "twice"),
        ("witness W {x1}\ngroup G any\nquorum G\n", "policy-syntax", "group"),
        ("group G any W\nwitness W {x1}\nquorum G\n", "policy-undefined", "earlier"),
        ("witness W {x1}\nwitness W {x2}\nquorum W\n", "policy-name", "taken"),
        ("witness none {x1}\nquorum none\n", "policy-name", "taken"),
        ("witness W {x1}\ngroup W any W\nquorum W\n", "policy-name", "taken"),
        ("witness W {x1}\nwitness V {x1}\nquorum W\n", "policy-duplicate", "same key"),
        ("log {log}\nlog {log}\nquorum none\n", "policy-duplicate", "twice"),
        ("log {x1}\nquorum none\n", "policy-key-type", "0x01"),
        ("witness W {log}\nquorum W\n", "policy-key-type", "0x04"),
        ("witness W not-a-key\nquorum W\n", "policy-vkey", "line 1"),
        ("log\nquorum none\n", "policy-syntax", "log <vkey>"),
        ("logs {log}\nquorum none\n", "policy-syntax", "unknown keyword"),
        ("quorum none\x0b\n", "policy-charset", "control byte"),
        ("quorum none\r\n", "policy-charset", "control byte"),
    ],
)
def test_parse_errors(log_key, wkeys, body, rule, match):
    text = body.format(
        log=log_key.verifier, x1=cosigner_vkey(wkeys["X1"]), x2=cosigner_vkey(wkeys["X2"])
    )
    with pytest.raises(PolicyError, match=match) as ei:
        Policy.parse(text)
    assert ei.value.rule == rule


def test_non_ascii_names_are_opaque(wkeys: dict[str, SigningKey]):
    vk1, vk2 = cosigner_vkey(wkeys["X1"]), cosigner_vkey(wkeys["X2"])
    # "K" and the Kelvin sign are different names.
    p = Policy.parse(f"witness K {vk1}\nwitness \u212a {vk2}\ngroup g all K \u212a\nquorum g\n")
    assert set(p.witnesses) == {"K", "\u212a"}
    assert not p.satisfied({"K"}) and p.satisfied({"K", "\u212a"})
    assert Policy.parse(p.format().encode()).format() == p.format()


def test_as_policy(log_key: SigningKey):
    p = as_policy(log_key.verifier)
    assert p.quorum == "none" and p.logs[0].vkey == log_key.verifier
    assert as_policy(str(log_key.verifier)) == p
    assert as_policy(p) is p
    assert as_policy(f"log {log_key.verifier}\nquorum none\n").logs == p.logs


def test_k_of_n(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    ws = {n: cosigner_vkey(k) for n, k in wkeys.items()}
    p = Policy.k_of_n([log_key.verifier], ws, 3)
    assert p.satisfied({"X1", "Y1", "Y2"}) and not p.satisfied({"X1", "Y1"})
    assert Policy.parse(p.format()).satisfied({"X1", "X2", "X3"})


# --- checking notes -------------------------------------------------------------------


def test_check_meets_quorum(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    p = Policy.parse(_nested(log_key, wkeys))
    note, text = _checkpoint_note(log_key)
    ok = _cosigned(note, text, [wkeys["X1"], wkeys["X3"], wkeys["Y2"]])
    cp = p.check(ok)
    assert cp.origin == ORIGIN and cp.size == 3
    v = p.verify(ok)
    assert set(v.cosigners) == {"X1", "X3", "Y2"} and v.log == log_key.verifier


def test_check_names_missing_witnesses(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    p = Policy.parse(_nested(log_key, wkeys))
    note, text = _checkpoint_note(log_key)
    partial = _cosigned(note, text, [wkeys["X1"], wkeys["Y1"]])
    with pytest.raises(WitnessError) as ei:
        p.check(partial)
    msg = ei.value.message
    assert ei.value.rule == "quorum-not-met"
    assert "cosigned by X1, Y1" in msg and "missing X2, X3, Y2" in msg


def test_bad_and_duplicate_cosignatures_do_not_count(log_key, wkeys):
    p = Policy.k_of_n([log_key.verifier], {n: cosigner_vkey(k) for n, k in wkeys.items()}, 2)
    note, text = _checkpoint_note(log_key)
    good = cosign(text, wkeys["X1"], 5)
    bad = cosign(text.replace("\n3\n", "\n9\n"), wkeys["X2"], 5)  # over another checkpoint
    stranger = cosign(text, SigningKey.generate("stranger.example"), 5)
    note2 = add_signatures(note, [good, bad, stranger])
    with pytest.raises(WitnessError, match="rejected: X2"):
        p.check(note2)
    # Two lines by one witness count once (add_signatures keeps only one anyway).
    with pytest.raises(WitnessError):
        p.check(note + good.line().encode() + good.line().encode())


def test_future_cosignature_with_clock(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    vk = cosigner_vkey(wkeys["X1"])
    p = Policy.parse(f"log {log_key.verifier}\nwitness W {vk}\nquorum W\n")
    note, text = _checkpoint_note(log_key)
    cosigned = _cosigned(note, text, [wkeys["X1"]], ts=10_000)
    assert p.check(cosigned, now=10_000).size == 3
    assert p.check(cosigned).size == 3
    with pytest.raises(WitnessError, match="future"):
        p.check(cosigned, now=1_000)


def test_check_log_signature(log_key: SigningKey, wkeys: dict[str, SigningKey]):
    p = Policy.for_log(log_key.verifier)
    note, _ = _checkpoint_note(log_key)
    assert p.check(note).size == 3
    # Signed by an impostor with the same name: unknown key.
    impostor = SigningKey.generate(ORIGIN)
    fake, _ = _checkpoint_note(impostor)
    with pytest.raises(NoteError, match="no valid signature"):
        p.check(fake)
    # Signed by the right key, but for another origin.
    other = sign_note(Checkpoint("other.example/log", 1, bytes(32)).text(), log_key)
    with pytest.raises(NoteError, match="origin"):
        p.check(other)
    with pytest.raises(NoteError):
        p.check(b"garbage")
    with pytest.raises(NoteError, match="origin"):
        p.check(note, origin="somewhere.else/log")
    no_logs = Policy.parse(f"witness W {cosigner_vkey(wkeys['X1'])}\nquorum W\n")
    with pytest.raises(NoteError, match="no log"):
        no_logs.check(note)


def test_parse_vkey_with_plus_in_base64():
    """Standard base64 has '+': only the first two '+' separate name, hash and key."""
    seed = 0
    while True:
        k = SigningKey(ORIGIN, seed.to_bytes(32, "big"))
        text = str(cosigner_vkey(k))
        if "+" in text.split("+", 2)[2]:
            break
        seed += 1
    vk = parse_vkey(text)
    assert vk == cosigner_vkey(k)
    assert Policy.parse(f"witness W {text}\nquorum W\n").witnesses["W"].vkey == vk
    with pytest.raises(KeyFormatError, match="hash"):
        parse_vkey(text.replace(text.split("+")[1], "00000000", 1))
    with pytest.raises(KeyFormatError, match="form"):
        parse_vkey("no-plus-at-all")
