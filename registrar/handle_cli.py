"""``cityid handle``: what a prefix owner runs to let Handle clients write through a registrar.

* ``cityid handle seckey``: the HS_SECKEY value (a salted hash) for an admin's secret
  key, to put in the admin handle's record with a signed write;
* ``cityid handle grant``: a signed custody grant of a prefix to a registrar's
  custodial key, for named admin handles (``300:PREFIX/ADMIN``);
* ``cityid handle revoke``: the grant withdrawn; the next Handle write is refused.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from cityid.cli import Subparsers, group
from cityid.errors import CityIdError
from cityid.identifiers import parse_prefix
from cityid.keys import SigningKey
from cityid.ops import Custody, now

from .cli import RAW, _report, _run, _writer_args, read_vkey
from .client import RegistrarClient
from .handle_auth import admin_name, seckey_value


def add_commands(sub: Subparsers) -> None:
    h = group(sub, "handle", "Handle clients: secret keys and custody grants")
    s = h.add_parser(
        "seckey", formatter_class=RAW,
        help="print the HS_SECKEY value (a salted hash) for an admin's secret key",
        description=("Read a secret key (from stdin, or asked for on a terminal) and print the "
                     "HS_SECKEY value that stores its salted PBKDF2-SHA256 hash, as JSON for a "
                     "record's values. The secret itself is never stored."),
        epilog=("example:\n  cityid handle seckey --index 300 > seckey.json\n"
                "  cityid id update MA.156.1301.02/ADMIN --key traffic.key "
                "--value HS_SECKEY=\"$(jq -r .data seckey.json)\""),
    )  # fmt: skip
    s.add_argument("--index", type=int, default=300, help="the value's index (default 300)")
    s.set_defaults(func=cmd_seckey)

    for name, verb in (("grant", "grant"), ("revoke", "revoke")):
        g = h.add_parser(
            name, formatter_class=RAW,
            help=f"{verb} a registrar custody of PREFIX for Handle-authenticated writes",
            description=(
                "Sign, with PREFIX's --key, a custody operation naming the registrar's custodial "
                "key (--custodian, default: the one the registrar announces) and the admin "
                "handles (--admin INDEX:HANDLE, repeat) it may act for. The registrar then signs "
                "writes for clients that authenticate as those admins the Handle way; each leaf "
                "names the admin. 'revoke' names no admin: the next such write is refused."
                if name == "grant" else
                "Withdraw the custody of PREFIX from the registrar's custodial key: its next "
                "Handle-authenticated write under PREFIX is refused."
            ),
            epilog=(f"example:\n  cityid handle {name} MA.156.1301.02 --key traffic.key"
                    + (" --admin 300:MA.156.1301.02/ADMIN" if name == "grant" else "")),
        )  # fmt: skip
        g.add_argument("prefix", metavar="PREFIX")
        _writer_args(g)
        g.add_argument("--custodian", metavar="VKEY|FILE", help="the registrar's custodial key")
        if name == "grant":
            g.add_argument("--admin", action="append", required=True, metavar="INDEX:HANDLE")
        g.set_defaults(func=cmd_grant)


def cmd_seckey(args: argparse.Namespace) -> int:
    secret = getpass.getpass("secret key: ") if sys.stdin.isatty() else sys.stdin.read()
    secret = secret.rstrip("\n")
    if not secret:
        raise CityIdError("the secret key is empty", rule="usage")
    print(json.dumps({"index": args.index, "type": "HS_SECKEY", "data": seckey_value(secret)}))
    return 0


def _admin(text: str) -> str:
    index, sep, handle = text.partition(":")
    if not sep or not index.isdigit() or "/" not in handle:
        raise CityIdError(f"--admin {text!r} is INDEX:HANDLE, e.g. 300:P/ADMIN", rule="usage")
    return admin_name(int(index), handle)


def cmd_grant(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    prefix = parse_prefix(args.prefix)
    admins = tuple(sorted({_admin(a) for a in getattr(args, "admin", None) or ()}))

    async def go() -> dict[str, Any]:
        async with RegistrarClient(args.registrar) as client:
            if args.custodian:
                custodian = read_vkey(args.custodian, "--custodian").public_key
            else:
                announced = (await client.info()).get("custody_key")
                if not announced:
                    raise CityIdError(
                        f"{args.registrar} announces no custodial key: name one with "
                        "--custodian, or set custody_key in its registrar.toml",
                        rule="usage",
                    )
                custodian = read_vkey(announced, "custody_key").public_key
            prev = await client.custody_version(prefix)
            return await client.submit_ops([Custody(prefix, prev, custodian, admins, now())], key)

    _report(_run(go()))
    print(f"{prefix}: custody for {', '.join(admins)}" if admins else f"{prefix}: custody revoked")
    return 0
