"""``cityid ledger witness``: run a c2sp.org/tlog-witness for other cities' logs.

Added to ``cityid ledger`` by :mod:`ledger.cli` through :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cityid.errors import KeyFormatError, WitnessError
from cityid.keys import SigningKey, VerifierKey

from .cosignature import cosigner_vkey
from .policy import parse_vkey

DEFAULT_LISTEN = "127.0.0.1:7380"

_WITNESS_HELP = """\
A witness cosigns the checkpoints of transparency logs it follows. For each log
it keeps the latest checkpoint it cosigned and cosigns a newer one only when the
log signed it and a consistency proof shows it extends that one. Clients that
require k of n witnesses' cosignatures (a tlog-policy 'quorum') can then trust
that everyone is shown the same history: a log cannot fork or roll back without
the witnesses refusing. Protocol: c2sp.org/tlog-witness (POST /add-checkpoint);
cosignatures: c2sp.org/tlog-cosignature (cosignature/v1, Ed25519).
"""

_KEYGEN_HELP = """\
Create a witness key. NAME identifies the witness in cosignature lines and
policies; use a schema-less URL you control, e.g. witness.sjz.example.cn/w1.
The private key is written to --out (mode 0600, never overwritten); the public
cosignature verifier key (type 0x04) is printed on stdout: give it to the logs
you witness and put it in clients' policy files as
  witness <short-name> <vkey> <submission-url>
"""

_SERVE_HELP = """\
Serve POST /add-checkpoint for the given logs. Each --log is a log's checkpoint
verifier key (name+hash+base64, type 0x01); its name is the log's origin. The
state directory records the last cosigned checkpoint of each log, written
crash-safely before any cosignature is returned. It is this witness's memory:
back it up, and never start a witness with an empty state for logs it already
cosigned (it could then be made to cosign a fork). Only one process may use a
state directory at a time.
"""


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_s = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise WitnessError(
            f"--listen {text!r} is not HOST:PORT (e.g. 127.0.0.1:7380)", rule="bad-listen"
        )
    return host, int(port_s)


def _load_logs(values: list[str], files: list[str]) -> list[VerifierKey]:
    texts = list(values)
    for f in files:
        try:
            lines = Path(f).read_text().splitlines()
        except OSError as e:
            raise WitnessError(f"cannot read --logs-file {f}: {e.strerror}", rule="bad-log") from e
        texts += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not texts:
        raise WitnessError("give at least one --log VKEY (or --logs-file)", rule="no-logs")
    out = []
    for t in texts:
        try:
            v = parse_vkey(t)
        except KeyFormatError as e:
            raise WitnessError(f"--log {t!r}: {e.message}", rule="bad-log") from e
        if v.alg != 0x01:
            raise WitnessError(
                f"--log {v.name}: that is a cosignature key (0x04); give the log's "
                "checkpoint key (0x01)",
                rule="bad-log",
            )
        out.append(v)
    return out


def _keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.name)
    path = key.write(args.out)
    print(cosigner_vkey(key))
    print(f"private key written to {path}", file=sys.stderr)
    return 0


def _serve(args: argparse.Namespace) -> int:
    # uvloop, as every cityid server: it hands each accepted socket to the edge at once.
    import uvloop

    from .witness import Witness, start_witness

    host, port = _parse_listen(args.listen)
    key = SigningKey.read(args.key)
    logs = _load_logs(args.log or [], args.logs_file or [])
    # Refused requests are logged one line each (rate-limited), at INFO.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main(witness: Witness) -> None:
        runner = await start_witness(witness, host, port)
        print(f"witness {witness.name}", file=sys.stderr)
        print(f"vkey {witness.vkey}", file=sys.stderr)
        for origin in sorted(witness.logs):
            print(f"log {origin}", file=sys.stderr)
        print(f"listening on http://{host}:{port}/add-checkpoint", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    with (
        Witness(key, logs, args.state) as witness,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(main(witness))
    return 0


def add_commands(ledger_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``witness serve`` and ``witness keygen`` under ``cityid ledger``."""
    w = ledger_sub.add_parser(
        "witness",
        help="run a transparency-log witness (cosign other logs' checkpoints)",
        description=_WITNESS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.set_defaults(_parser=w)
    sub = w.add_subparsers(dest="witness_command", metavar="COMMAND")

    keygen = sub.add_parser(
        "keygen",
        help="create a witness key and print its cosignature verifier key",
        description=_KEYGEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keygen.epilog = (
        "example:\n  cityid ledger witness keygen witness.sjz.example.cn/w1 --out w1.key > w1.vkey"
    )
    keygen.add_argument("name", metavar="NAME", help="witness name, e.g. witness.example.org/w1")
    keygen.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        default="witness.key",
        help="where to write the private key (default: witness.key; never overwritten)",
    )
    keygen.set_defaults(func=_keygen)

    serve = sub.add_parser(
        "serve",
        help="serve POST /add-checkpoint for the given logs",
        description=_SERVE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.epilog = (
        "example:\n"
        "  cityid ledger witness serve --key w1.key --state /var/lib/cityid/witness \\\n"
        '      --log "$(cat root-ledger.vkey)" --listen 127.0.0.1:7380\n'
        "then a log asks it to cosign with POST http://127.0.0.1:7380/add-checkpoint"
    )
    serve.add_argument("--key", required=True, metavar="FILE", help="witness private key file")
    serve.add_argument(
        "--state", required=True, metavar="DIR", help="state directory (created if missing)"
    )
    serve.add_argument(
        "--log",
        action="append",
        metavar="VKEY",
        help="a log's checkpoint verifier key; repeat for each log",
    )
    serve.add_argument(
        "--logs-file",
        action="append",
        metavar="FILE",
        help="a file of log verifier keys, one per line ('#' comments allowed)",
    )
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default: {DEFAULT_LISTEN})",
    )
    serve.set_defaults(func=_serve)
