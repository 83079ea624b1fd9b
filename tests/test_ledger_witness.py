"""c2sp.org/tlog-witness: a real witness over HTTP on loopback, a real log on disk."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cityid.cli import main
from cityid.errors import WitnessError
from cityid.keys import SigningKey
from ledger.batcher import Sequencer
from ledger.checkpoint import Checkpoint
from ledger.cosignature import cosigner_vkey, verify_cosignature
from ledger.http import serve_app
from ledger.note import add_signatures, parse_note, sign_note
from ledger.policy import Policy, parse_vkey
from ledger.storage import Log
from ledger.witness import (
    CONTENT_TYPE_SIZE,
    AddCheckpointRequest,
    Witness,
    WitnessClient,
    WitnessConflict,
    gather_cosignatures,
    make_cosigner,
    witness_app,
)

ORIGIN = "ledger.sjz.example.cn/MA.156.1301"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate(ORIGIN)


@pytest.fixture
def log(tmp_path: Path, log_key: SigningKey) -> Log:
    lg = Log.create(tmp_path / "log", log_key)
    lg.append([b"op %d" % i for i in range(10)])
    yield lg
    lg.close()


def _witness(tmp_path: Path, log: Log, name: str = "witness.example/w1", **kw) -> Witness:
    key = kw.pop("key", None) or SigningKey.generate(name)
    return Witness(key, [log.verifier], tmp_path / f"state-{name.replace('/', '_')}", **kw)


async def _post(url: str, body: bytes) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(url + "/add-checkpoint", data=body) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


@pytest.fixture
async def served(tmp_path: Path, log: Log) -> AsyncIterator[tuple[Witness, str]]:
    w = _witness(tmp_path, log)
    async with serve_app(witness_app(w)) as url:
        yield w, url
    w.close()


def _req(old: int, proof: list[bytes], note: bytes) -> bytes:
    return AddCheckpointRequest(old, tuple(proof), note).encode()


# --- the protocol over HTTP --------------------------------------------------------


async def test_cosign_200(served, log: Log):
    w, url = served
    status, ctype, body = await _post(url, _req(0, [], log.checkpoint_note))
    assert status == 200, body
    assert ctype.startswith("text/plain")
    text, _ = parse_note(log.checkpoint_note)
    _, sigs = parse_note(log.checkpoint_note + body)
    assert len(sigs) == 2 and sigs[1].name == w.name
    ts = verify_cosignature(text, sigs[1], w.vkey)
    assert ts > 1_600_000_000
    assert w.latest(ORIGIN).checkpoint == log.checkpoint
    # Resubmitting the same checkpoint from its own size is fine (idempotent).
    status, _, _ = await _post(url, _req(10, [], log.checkpoint_note))
    assert status == 200


async def test_conflict_409_returns_size(served, log: Log):
    _, url = served
    assert (await _post(url, _req(0, [], log.checkpoint_note)))[0] == 200
    log.append([b"more %d" % i for i in range(5)])
    status, ctype, body = await _post(url, _req(0, [], log.checkpoint_note))
    assert status == 409
    assert ctype == CONTENT_TYPE_SIZE
    assert body == b"10\n"
    # With the right old size and proof it goes through.
    proof = log.consistency_proof(10, 15)
    status, _, _ = await _post(url, _req(10, proof, log.checkpoint_note))
    assert status == 200


async def test_bad_proof_422(served, log: Log):
    _, url = served
    assert (await _post(url, _req(0, [], log.checkpoint_note)))[0] == 200
    log.append([b"more %d" % i for i in range(7)])
    proof = log.consistency_proof(10, 17)
    bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    status, _, body = await _post(url, _req(10, bad, log.checkpoint_note))
    assert status == 422, body
    assert b"consistency proof" in body
    status, _, _ = await _post(url, _req(10, proof[:-1], log.checkpoint_note))
    assert status == 422


async def test_bad_signature_403(served, log: Log, log_key: SigningKey):
    _, url = served
    text, _ = parse_note(log.checkpoint_note)
    # Same name, other key: not a key the witness trusts.
    impostor = sign_note(text, SigningKey.generate(ORIGIN))
    status, _, body = await _post(url, _req(0, [], impostor))
    assert status == 403, body
    # The trusted key's ID with a corrupted signature.
    raw = bytearray(log.checkpoint_note)
    raw[-10] = ord("A") if raw[-10] != ord("A") else ord("B")
    status, _, _ = await _post(url, _req(0, [], bytes(raw)))
    assert status == 403


async def test_unknown_log_404_and_bad_requests_400(served, log_key: SigningKey, log: Log):
    _, url = served
    other = SigningKey.generate("other.example/log")
    note = sign_note(Checkpoint("other.example/log", 0, bytes(32)).text(), other)
    assert (await _post(url, _req(0, [], note)))[0] == 404
    for body in (
        b"",
        b"old 01\n\n" + log.checkpoint_note,
        b"old 1\nnot-base64!\n\n" + log.checkpoint_note,
        b"old 1\n" + base64.b64encode(b"short") + b"\n\n" + log.checkpoint_note,
        b"old 0\n" + log.checkpoint_note,  # no blank line: the note is read as proof lines
        b"old 0\n\nnot a note",
        b"old 11\n\n" + log.checkpoint_note,  # old beyond the checkpoint size
        _req(0, [bytes(32)], log.checkpoint_note),  # a proof from size 0
        b"old 1\n" + (base64.b64encode(bytes(32)) + b"\n") * 64 + b"\n" + log.checkpoint_note,
    ):
        status, _, got = await _post(url, body)
        assert status == 400, (body[:40], got)
    async with aiohttp.ClientSession() as s, s.get(url + "/add-checkpoint") as r:
        assert r.status == 405


async def test_fork_same_size_409_and_evidence(tmp_path: Path, served, log: Log, log_key):
    w, url = served
    assert (await _post(url, _req(0, [], log.checkpoint_note)))[0] == 200
    forked = sign_note(Checkpoint(ORIGIN, 10, bytes(32)).text(), log_key)
    status, ctype, body = await _post(url, _req(10, [], forked))
    assert (status, ctype, body) == (409, CONTENT_TYPE_SIZE, b"10\n")
    assert any((w.state.dir / "evidence").iterdir())
    assert w.latest(ORIGIN).checkpoint == log.checkpoint
    # A smaller checkpoint is a rollback: old (10) beyond its size is refused.
    small = sign_note(Checkpoint(ORIGIN, 3, bytes(32)).text(), log_key)
    assert (await _post(url, _req(10, [], small)))[0] == 400
    assert (await _post(url, _req(3, [], small)))[0] == 409


async def test_state_survives_restart(tmp_path: Path, log: Log):
    key = SigningKey.generate("witness.example/w1")
    w = _witness(tmp_path, log, key=key)
    assert w.add_checkpoint(_req(0, [], log.checkpoint_note)).status == 200
    with pytest.raises(WitnessError, match="in use"):
        _witness(tmp_path, log, key=key)
    w.close()
    log.append([b"x"])
    w2 = _witness(tmp_path, log, key=key)
    async with serve_app(witness_app(w2)) as url:
        status, _, body = await _post(url, _req(0, [], log.checkpoint_note))
        assert (status, body) == (409, b"10\n")
        status, _, _ = await _post(url, _req(10, log.consistency_proof(10), log.checkpoint_note))
        assert status == 200
    w2.close()
    w3 = _witness(tmp_path, log, key=key)
    assert w3.latest(ORIGIN).size == 11
    # A corrupt state file is an error, never a silent restart from zero.
    w3.state.path(ORIGIN).write_bytes(b"garbage")
    resp = w3.add_checkpoint(_req(0, [], log.checkpoint_note))
    assert resp.status == 500 and b"corrupt" in resp.body
    with pytest.raises(WitnessError, match="corrupt"):
        w3.latest(ORIGIN)
    w3.close()
    # A closed witness answers nothing from its (no longer locked) state.
    assert w3.add_checkpoint(_req(11, [], log.checkpoint_note)).status == 503


async def test_concurrent_requests_never_roll_back(tmp_path: Path, log: Log):
    """Racing submissions of sizes N and N+K: the stored state only moves forward."""
    w = _witness(tmp_path, log)
    assert w.add_checkpoint(_req(0, [], log.checkpoint_note)).status == 200
    notes = []
    for i in range(6):
        log.append([b"r%d" % i])
        notes.append((log.size, log.checkpoint_note))
    async with serve_app(witness_app(w)) as url:
        # Everyone claims the witness is at 10; exactly one wins, the rest 409.
        results = await asyncio.gather(
            *(_post(url, _req(10, log.consistency_proof(10, size), note)) for size, note in notes)
        )
    statuses = sorted(r[0] for r in results)
    assert statuses.count(200) == 1 and statuses.count(409) == 5
    winner = w.latest(ORIGIN).size
    assert winner in {size for size, _ in notes}
    w.close()


# --- the client and quorum gathering -------------------------------------------------


async def test_client_retries_after_409(tmp_path: Path, served, log: Log):
    w, url = served
    client = WitnessClient(url, w.vkey)
    try:
        sig = await client.add_checkpoint(log.checkpoint_note, 0, [])
        text, _ = parse_note(log.checkpoint_note)
        verify_cosignature(text, sig, w.vkey)
        log.append([b"y"])
        with pytest.raises(WitnessConflict) as ei:
            await client.add_checkpoint(log.checkpoint_note, 0, [])
        assert ei.value.size == 10
        # gather_cosignatures does the retry itself, with a fresh client (no memory).
        fresh = WitnessClient(url, w.vkey)
        policy = Policy.k_of_n([log.verifier], [w.vkey], 1)
        out = await gather_cosignatures(
            log.checkpoint_note,
            [fresh],
            policy,
            proof_provider=lambda old, new: log.consistency_proof(old, new),
            timeout=5,
        )
        assert policy.check(out).size == 11
        assert fresh.sizes[ORIGIN] == 11
        await fresh.close()
    finally:
        await client.close()


async def _slow_app(delay: float) -> web.Application:
    # A real server that answers too late: a witness that hangs.
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/add-checkpoint", handler)
    return app


async def test_quorum_k_of_n_with_one_down_and_one_hanging(tmp_path: Path, log: Log):
    ws = [_witness(tmp_path, log, f"witness.example/w{i}") for i in range(3)]
    hang_key = cosigner_vkey(SigningKey.generate("witness.example/hang"))
    down_key = cosigner_vkey(SigningKey.generate("witness.example/down"))
    # A port that was just bound and released: nothing listens there.
    async with serve_app(web.Application()) as dead:
        pass
    async with (
        serve_app(witness_app(ws[0])) as u0,
        serve_app(witness_app(ws[1])) as u1,
        serve_app(witness_app(ws[2])) as u2,
        serve_app(await _slow_app(3), shutdown_timeout=0.1) as slow,
    ):
        named = {"w0": ws[0].vkey, "w1": ws[1].vkey, "w2": ws[2].vkey, "hang": hang_key}
        named["down"] = down_key
        clients = [
            WitnessClient(u0, ws[0].vkey),
            WitnessClient(u1, ws[1].vkey),
            WitnessClient(slow, hang_key),
            WitnessClient(dead, down_key),
        ]
        proof = log.consistency_proof
        # 2 of {w0, w1, hang, down}: met despite one down and one hanging.
        p2 = Policy.k_of_n([log.verifier], {k: named[k] for k in ("w0", "w1", "hang", "down")}, 2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        out = await gather_cosignatures(
            log.checkpoint_note, clients, p2, proof_provider=proof, timeout=2
        )
        assert loop.time() - t0 < 1.5  # quorum met: no wait for the deadline
        v = p2.verify(out)
        assert set(v.cosigners) == {"w0", "w1"}
        # 3 of the same: cannot be met; the error names who is missing and why.
        p3 = Policy.k_of_n([log.verifier], {k: named[k] for k in ("w0", "w1", "hang", "down")}, 3)
        t0 = loop.time()
        with pytest.raises(WitnessError) as ei:
            await gather_cosignatures(
                log.checkpoint_note, clients, p3, proof_provider=proof, timeout=1
            )
        assert 1 <= loop.time() - t0 < 3
        msg = ei.value.message
        assert ei.value.rule == "quorum-not-met"
        assert "missing hang, down" in msg
        assert "no answer within 1" in msg and "unreachable" in msg
        # wait_all collects every answering witness, including w2 not in the policy.
        clients.insert(2, WitnessClient(u2, ws[2].vkey))
        log.append([b"z"])
        out = await gather_cosignatures(
            log.checkpoint_note, clients, p2, proof_provider=proof, timeout=1, wait_all=True
        )
        names = {s.name for s in parse_note(out)[1]}
        assert {"witness.example/w0", "witness.example/w1", "witness.example/w2"} <= names
        for c in clients:
            await c.close()
    for w in ws:
        w.close()


async def test_make_cosigner_stage_then_publish(tmp_path: Path, log: Log):
    """The sequencer flow: stage (signed, private), cosign, publish the cosigned note."""
    ws = [_witness(tmp_path, log, f"witness.example/c{i}") for i in range(2)]
    async with serve_app(witness_app(ws[0])) as u0, serve_app(witness_app(ws[1])) as u1:
        policy = Policy.k_of_n([log.verifier], [w.vkey for w in ws], 2)
        clients = [WitnessClient(u0, ws[0].vkey), WitnessClient(u1, ws[1].vkey)]
        # The witnesses start from an older view, so the first call needs a 409 retry.
        first = log.checkpoint_note
        for w in ws:
            assert w.add_checkpoint(_req(0, [], first)).status == 200
        cosign = make_cosigner(log, clients, policy, timeout=5)
        for batch in range(3):
            staged = log.stage([b"batch %d op %d" % (batch, i) for i in range(100)])
            assert log.size < log.signed_size  # staged, not yet public
            cosigned = await cosign(staged)
            log.publish(cosigned)
            assert policy.check(log.checkpoint_note).size == log.size == 10 + 100 * (batch + 1)
            assert all(w.latest(ORIGIN).size == log.size for w in ws)
        for c in clients:
            await c.close()
    for w in ws:
        w.close()


async def test_witness_refuses_cosign_keys_for_logs(tmp_path: Path, log: Log):
    with pytest.raises(WitnessError, match="0x01"):
        Witness(
            SigningKey.generate("w.example"),
            [cosigner_vkey(SigningKey.generate("x"))],
            tmp_path / "s",
        )
    with pytest.raises(WitnessError, match="0x04"):
        WitnessClient("http://127.0.0.1:1", log.verifier)


def test_add_signatures_keeps_cosignature(log: Log, tmp_path: Path):
    w = _witness(tmp_path, log)
    resp = w.add_checkpoint(_req(0, [], log.checkpoint_note))
    out = add_signatures(log.checkpoint_note, parse_note(log.checkpoint_note + resp.body)[1])
    assert out == log.checkpoint_note + resp.body
    w.close()


async def test_sequencer_with_cosigner(tmp_path: Path, log: Log):
    """make_cosigner plugs into the Sequencer: receipts carry quorum-cosigned checkpoints."""
    ws = [_witness(tmp_path, log, f"witness.example/s{i}") for i in range(3)]
    async with (
        serve_app(witness_app(ws[0])) as u0,
        serve_app(witness_app(ws[1])) as u1,
        serve_app(await _slow_app(3), shutdown_timeout=0.1) as slow,
    ):
        policy = Policy.k_of_n([log.verifier], [w.vkey for w in ws], 2)
        clients = [
            WitnessClient(u0, ws[0].vkey),
            WitnessClient(u1, ws[1].vkey),
            WitnessClient(slow, ws[2].vkey),
        ]
        async with Sequencer(
            log, max_batch=50, max_delay=0.05, cosign=make_cosigner(log, clients, policy, 1.0)
        ) as seq:
            receipts = await asyncio.gather(*(seq.submit([b"op %d" % i]) for i in range(120)))
        assert sorted(r.first_index for r in receipts) == list(range(10, 130))
        for r in receipts:
            v = policy.verify(r.checkpoint)
            assert set(v.cosigners) == {"witness.example/s0", "witness.example/s1"}
            assert r.first_index < v.checkpoint.size
        assert policy.check(log.checkpoint_note).size == 130
        for c in clients:
            await c.close()
    for w in ws:
        w.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_cli_keygen_and_serve(tmp_path: Path, log: Log, capsys):
    assert (
        main(
            ["ledger", "witness", "keygen", "witness.example/cli", "--out", str(tmp_path / "w.key")]
        )
        == 0
    )
    vkey_text = capsys.readouterr().out.strip()
    assert (
        main(
            [
                "ledger",
                "witness",
                "serve",
                "--key",
                str(tmp_path / "w.key"),
                "--state",
                str(tmp_path / "st"),
                "--log",
                str(log.verifier),
                "--listen",
                "nope",
            ]
        )
        == 1
    )
    assert "HOST:PORT" in capsys.readouterr().err
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cityid.cli",
            "ledger",
            "witness",
            "serve",
            "--key",
            str(tmp_path / "w.key"),
            "--state",
            str(tmp_path / "st"),
            "--log",
            str(log.verifier),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        for _ in range(50):
            line = proc.stderr.readline().decode()
            if "listening" in line or not line:
                break
        assert "listening" in line
        client = WitnessClient(f"http://127.0.0.1:{port}", parse_vkey(vkey_text))
        for _ in range(50):
            try:
                sig = await client.add_checkpoint(log.checkpoint_note, 0, [])
                break
            except WitnessError as e:
                if e.rule != "witness-unreachable":
                    raise
                await asyncio.sleep(0.1)
        assert sig.name == "witness.example/cli"
        await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
