"""Core commands: ``cityid id check`` and ``cityid keygen``."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from .cli import Subparsers, group
from .errors import IdentifierError
from .identifiers import (
    Identifier,
    Prefix,
    has_valid_check,
    oid_form,
    parse_identifier,
    parse_minted,
    split_minted,
)
from .keys import SigningKey

DEFAULT_APEX = "cityid.test"
DEFAULT_ROOT = "MA.156"
DEFAULT_ROOT_OID = "2.999"  # the ITU-T example arc: operators set their own


def add_commands(sub: Subparsers) -> None:
    ids = group(sub, "id", "identifiers: check, mint, update, delete")
    p = ids.add_parser(
        "check",
        help="validate an identifier and print its canonical, URL, DNS and OID forms",
        description=(
            "Validate ID (PREFIX/SUFFIX, any case) and print its forms: canonical (upper case), "
            "the resolver URL path, the DNS name under --apex, and the OID under --root-oid "
            "(only when every node below --root is a canonical integer). For a minted suffix "
            "(letters, digits, check character) the MOD 37,36 check character is verified. "
            "On a broken rule it prints the rule and exits 1; a suffix shaped like a minted "
            "one (letters, then digits, then one more character) whose check character is wrong "
            "also exits 1, as it is most likely misread or mistyped."
        ),
        epilog=(
            "examples:\n"
            "  cityid id check ma.156.1301.02/w0000127r\n"
            "  cityid id check 0.NA/MA.156.1301 --apex id.city.example --json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", metavar="ID", help="the identifier, e.g. MA.156.1301.02/W0000127R")
    p.add_argument(
        "--apex",
        default=os.environ.get("CITYID_APEX", DEFAULT_APEX),
        help="DNS apex the resolver serves (env CITYID_APEX; default %(default)s)",
    )
    p.add_argument(
        "--root",
        default=os.environ.get("CITYID_ROOT", DEFAULT_ROOT),
        help="the root prefix (env CITYID_ROOT; default %(default)s)",
    )
    p.add_argument(
        "--root-oid",
        default=os.environ.get("CITYID_ROOT_OID", DEFAULT_ROOT_OID),
        help="OID of the root prefix (env CITYID_ROOT_OID; default %(default)s)",
    )
    p.add_argument(
        "--minted",
        action="store_true",
        help="insist that the suffix is a minted one with a valid check character",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_check)

    k = sub.add_parser(
        "keygen",
        help="create an Ed25519 key file and print its verifier key",
        description=(
            "Create a new Ed25519 key named NAME, write it to --out with mode 0600 in the "
            "c2sp.org/signed-note signer-key form (PRIVATE+KEY+name+hash+base64, as Go's "
            "sumdb/note uses) and print the verifier key (name+hash+base64) that others "
            "configure to trust it. For a registrar, NAME is its log origin."
        ),
        epilog="example:\n  cityid keygen shijiazhuang.cityid.test/log -o city.key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("name", metavar="NAME", help="key name (no spaces or '+'), e.g. a log origin")
    k.add_argument("-o", "--out", help="key file to write (default: NAME with / -> _, .key)")
    k.add_argument("--force", action="store_true", help="overwrite an existing key file")
    k.set_defaults(func=cmd_keygen)


def identifier_forms(
    ident: Identifier, apex: str, root: Prefix, root_oid: str
) -> dict[str, str | None]:
    forms: dict[str, str | None] = {
        "canonical": str(ident),
        "url_path": ident.url_path,
        "dns": ident.dns_name(apex),
    }
    try:
        target = ident.named_prefix if ident.is_prefix_record else ident
        assert target is not None
        forms["oid"] = oid_form(target, root, root_oid)
        forms["oid_note"] = None
    except IdentifierError as e:
        forms["oid"] = None
        forms["oid_note"] = e.message
    if ident.is_prefix_record:
        forms["check"] = "not applicable: a prefix record"
    elif has_valid_check(ident.suffix):
        forms["check"] = f"valid: {ident.suffix[-1]} is the check character of {ident.suffix[:-1]}"
    elif (problem := misread_check(ident)) is not None:
        forms["check"] = f"fails: {problem}"
    else:
        forms["check"] = "not a minted suffix (no valid check character)"
    return forms


def misread_check(ident: Identifier) -> str | None:
    """Why ``ident``'s suffix, shaped like a minted one, fails its check character (the
    resolver's words for it); None when it passes or is not minted-shaped.

    Minted-shaped here means letters, digits and one more character, as ``id mint
    --count`` makes them: all-digit suffixes are common free-form names (house and
    meter numbers), so they are not taken for misread minted ones."""
    parts = None if ident.is_prefix_record else split_minted(ident.suffix)
    if parts is None or not parts[0]:
        return None
    try:
        parse_minted(ident.suffix)
    except IdentifierError as e:
        return e.message
    return None


def cmd_check(args: argparse.Namespace) -> int:
    ident = parse_identifier(args.id)
    if args.minted and not ident.is_prefix_record:
        parse_minted(ident.suffix)  # raises with the check-character rule
    forms = identifier_forms(ident, args.apex, Prefix.parse(args.root), args.root_oid)
    failed = str(forms["check"]).startswith("fails:")
    if args.json:
        print(json.dumps(forms, indent=2))
        return 1 if failed else 0
    print(f"canonical  {forms['canonical']}")
    print(f"url path   {forms['url_path']}")
    print(f"dns        {forms['dns']}")
    print(f"oid        {forms['oid'] or 'none: ' + str(forms['oid_note'])}")
    print(f"check      {forms['check']}")
    return 1 if failed else 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.name)
    out = Path(args.out or re.sub(r"[^A-Za-z0-9._-]", "_", args.name) + ".key")
    key.write(out, overwrite=args.force)
    print(f"wrote {out} (mode 0600)")
    print(key.verifier)
    return 0
