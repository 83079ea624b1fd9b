"""``cityid ledger``: audit a log directory, print proofs and checkpoints."""

from __future__ import annotations

import argparse
import base64
import sys
import time
from pathlib import Path

from cityid.cli import Subparsers, group
from cityid.errors import KeyFormatError, LedgerError
from cityid.keys import SigningKey, VerifierKey
from cityid.progress import Progress

from .audit import verify_log
from .merkle import verify_inclusion
from .storage import Log

RAW = argparse.RawDescriptionHelpFormatter


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def read_vkey(value: str) -> VerifierKey:
    """A verifier key given inline, in a ``.vkey`` file, or as a private key file."""
    path = Path(value)
    if path.is_file():
        text = path.read_text().strip()
        if text.startswith("PRIVATE+KEY+"):
            return SigningKey.read(path).verifier
        return VerifierKey.parse(text)
    if "+" not in value:
        raise KeyFormatError(f"{value}: no such key file", rule="key-file")
    return VerifierKey.parse(value)


def cmd_verify(args: argparse.Namespace) -> int:
    vkey = read_vkey(args.key)
    start = time.monotonic()
    bar: Progress | None = None
    done = 0

    def progress(n: int, total: int) -> None:
        nonlocal bar, done
        if bar is None and total >= 100_000:
            bar = Progress(total, "verifying", force=args.progress)
        if bar is not None:
            bar.update(n - done)
        done = n

    try:
        cp = verify_log(args.dir, vkey, progress)
    finally:
        if bar is not None:
            bar.close()
    secs = time.monotonic() - start
    print(
        f"ok: {cp.origin} size {cp.size} root {_b64(cp.root)} "
        f"(every entry, tile and the checkpoint signature verified in {secs:.2f} s)"
    )
    return 0


def cmd_proof(args: argparse.Namespace) -> int:
    log = Log.open(args.dir)
    size = log.size if args.size is None else args.size
    if not 0 <= args.index < size:
        raise LedgerError(f"leaf {args.index} is not in a tree of size {size}", rule="bad-index")
    proof = log.inclusion_proof(args.index, size)
    leaf = log.leaf_hash(args.index)
    root = log.root if size == log.size else log.root_at(size)
    verify_inclusion(proof, size, args.index, root, leaf)
    print(f"origin: {log.origin}")
    print(f"index: {args.index}")
    print(f"size: {size}")
    print(f"leaf hash: {_b64(leaf)}")
    print(f"root: {_b64(root)}")
    print(f"proof: {len(proof)} hashes")
    for h in proof:
        print(_b64(h))
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    log = Log.open(args.dir)
    sys.stdout.write(log.checkpoint_note.decode())
    return 0


def add_commands(sub: Subparsers) -> None:
    ledger = group(
        sub,
        "ledger",
        "transparency logs: verify a log, print proofs and checkpoints",
        "Each registrar's ledger is a C2SP transparency log in a directory laid out as "
        "c2sp.org/tlog-tiles static files (checkpoint, tile/..., tile/entries/...). "
        "These commands read such a directory.",
    )

    p = ledger.add_parser(
        "verify",
        formatter_class=RAW,
        help="recompute a whole log and check it against its signed checkpoint",
        description=(
            "Read every entry bundle in DIR, recompute every leaf hash and hash tile, compare "
            "them with the files, and check the checkpoint's signature and root. Trusts only "
            "--key. On the first difference it names the file and byte offset and exits 1."
        ),
        epilog=(
            "examples:\n"
            "  cityid ledger verify ./root/ledger --key root.vkey\n"
            "  cityid ledger verify ./log --key 'example.com/log+1a2b3c4d+AZ...'"
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the log directory (holds 'checkpoint')")
    p.add_argument(
        "--key",
        required=True,
        metavar="VKEY|FILE",
        help="the log's verifier key: a name+hash+base64 string, a .vkey file, or its key file",
    )
    p.add_argument(
        "--progress",
        action="store_true",
        help="show the progress bar even when stderr is not a terminal",
    )
    p.set_defaults(func=cmd_verify)

    p = ledger.add_parser(
        "proof",
        formatter_class=RAW,
        help="print the inclusion proof of one entry",
        description=(
            "Print the RFC 9162 inclusion proof of entry INDEX in the tree of --size entries "
            "(default: the published checkpoint's size): the leaf hash, the root, then the "
            "proof hashes, one base64 line each, innermost first."
        ),
        epilog=(
            "examples:\n  cityid ledger proof ./log 17\n  cityid ledger proof ./log 17 --size 1000"
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the log directory")
    p.add_argument("index", metavar="INDEX", type=int, help="entry index, from 0")
    p.add_argument(
        "--size", type=int, metavar="N", help="tree size to prove against (default: published)"
    )
    p.set_defaults(func=cmd_proof)

    p = ledger.add_parser(
        "checkpoint",
        formatter_class=RAW,
        help="print the published signed checkpoint",
        description=(
            "Print DIR/checkpoint, the c2sp.org/tlog-checkpoint signed note: origin, size, "
            "root, a blank line, then the log's signature and any witness cosignatures. "
            "Its signature is checked against the key the log was created with."
        ),
        epilog="example:\n  cityid ledger checkpoint ./log",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the log directory")
    p.set_defaults(func=cmd_checkpoint)

    # --- witness commands (ledger/witness_cli.py, built separately) ---------------
    try:
        from . import witness_cli
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.witness_cli":
            raise
    else:
        witness_cli.add_commands(ledger)
