"""A registrar restarted while its witnesses are away never publishes an uncosigned checkpoint.

Real witness and registrar servers on loopback: a write while the witness is down is
signed into the log but not published (503 not-published); a restart keeps it
pending (the published checkpoint is unchanged and still cosigned, and the
registrar's namespace already holds the pending write); once the witness is back,
the next start cosigns and publishes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web
from registrar_harness import (
    HOST,
    RegistrarSpec,
    checkpoint_bytes,
    free_port,
    make_registrar,
    post_ops,
    submit,
)
from registrar_harness import serve_in_process as serve

from cityid.identifiers import Prefix
from cityid.keys import ALG_COSIGNATURE_V1, SigningKey
from cityid.ops import Mint, MintItem, SignedOperation
from cityid.records import Record, Value
from ledger.checkpoint import Checkpoint
from ledger.note import parse_note
from ledger.witness import Witness, witness_app
from registrar.config import RegistrarConfig

TS = 1_700_000_000
PREFIX = Prefix.parse("MA.156.1301")


@asynccontextmanager
async def witness_on(port: int, key: SigningKey, logs: list, state: Path) -> AsyncIterator[None]:
    witness = Witness(key, logs, state)
    runner = web.AppRunner(witness_app(witness), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield
    finally:
        await runner.cleanup()
        witness.close()


def mint(admin: SigningKey, suffix: str) -> bytes:
    record = Record((Value.make(1, "URL", f"https://x.example/{suffix}", timestamp=TS),))
    return SignedOperation.sign(Mint(PREFIX, (MintItem(suffix, 0, record),), TS), admin).encode()


def published(note: bytes) -> tuple[int, list[str]]:
    text, sigs = parse_note(note)
    return Checkpoint.parse(text).size, [s.name for s in sigs]


def witnessed_registrar(tmp_path: Path) -> tuple[SigningKey, RegistrarSpec, SigningKey, int]:
    """A registrar asking one witness (quorum 1, 500 ms) on a free port, not started yet:
    (admin key, registrar, witness key, witness port)."""
    admin = SigningKey.generate("city-admin")
    spec = make_registrar(tmp_path / "reg", PREFIX, "sjz.test/log", admin=admin)
    wkey, wport = SigningKey.generate("witness.test"), free_port()
    cfg = RegistrarConfig.load(spec.directory)
    cfg.witnesses = [(f"http://{HOST}:{wport}", wkey.verifier.with_alg(ALG_COSIGNATURE_V1))]
    cfg.quorum = 1
    cfg.witness_timeout_ms = 500
    cfg.save()
    return admin, spec, wkey, wport


async def test_restart_without_witnesses_keeps_the_checkpoint_pending(tmp_path: Path) -> None:
    admin, spec, wkey, wport = witnessed_registrar(tmp_path)
    state = tmp_path / "witness"
    async with aiohttp.ClientSession() as http:
        async with witness_on(wport, wkey, [spec.vkey], state), serve(spec) as run:
            await submit(http, run.url, [mint(admin, "A-1")])
            cosigned = await checkpoint_bytes(http, run.url)
        assert published(cosigned) == (1, ["sjz.test/log", "witness.test"])

        async with serve(spec) as run:  # the witness is away
            status, body = await post_ops(http, run.url, [mint(admin, "A-2")])
            assert status == 503 and body["rule"] == "not-published", body
            assert await checkpoint_bytes(http, run.url) == cosigned

        async with serve(spec) as run:  # restarted, the witness still away
            assert await checkpoint_bytes(http, run.url) == cosigned  # not published bare
            # The pending write is in the namespace: minting it again is refused.
            status, body = await post_ops(http, run.url, [mint(admin, "A-2")])
            assert status == 409 and "A-2" in body["message"], body

        async with witness_on(wport, wkey, [spec.vkey], state), serve(spec) as run:
            note = await checkpoint_bytes(http, run.url)
            assert published(note) == (2, ["sjz.test/log", "witness.test"])
            await submit(http, run.url, [mint(admin, "A-3")])
            assert published(await checkpoint_bytes(http, run.url))[0] == 3


async def test_an_empty_log_is_cosigned_at_start(tmp_path: Path) -> None:
    """A city delegated before its first write: its empty checkpoint meets the quorum, so a
    resolver holding every log to the witnesses does not put it in alarm."""
    admin, spec, wkey, wport = witnessed_registrar(tmp_path)
    async with aiohttp.ClientSession() as http:
        async with serve(spec) as run:  # the witness is away: published bare, as before
            assert published(await checkpoint_bytes(http, run.url)) == (0, ["sjz.test/log"])
        async with witness_on(wport, wkey, [spec.vkey], tmp_path / "w"), serve(spec) as run:
            note = await checkpoint_bytes(http, run.url)
            assert published(note) == (0, ["sjz.test/log", "witness.test"])
            # and it extends as usual from there
            await submit(http, run.url, [mint(admin, "A-1")])
            assert published(await checkpoint_bytes(http, run.url)) == (
                1, ["sjz.test/log", "witness.test"],
            )  # fmt: skip
        async with witness_on(wport, wkey, [spec.vkey], tmp_path / "w"), serve(spec) as run:
            assert published(await checkpoint_bytes(http, run.url))[0] == 1  # not redone
