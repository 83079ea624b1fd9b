"""``cityid apply`` (a city or department applies) and ``cityid applications`` (its parent
reviews): clients of the registrar's application API (:mod:`registrar.apply_http`)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cityid.cli import Subparsers, group
from cityid.errors import CityIdError
from cityid.identifiers import parse_prefix
from cityid.keys import SigningKey
from cityid.ops import SignedOperation, now

from .applications import Application, delegation, parse_application, signed_json
from .cli import read_vkey
from .client import RegistrarClient
from .review_auth import review_header

RAW = argparse.RawDescriptionHelpFormatter
DEFAULT_REGISTRAR = "http://127.0.0.1:8000"
REVIEW = "/api/review/applications"
_TICKET_HELP = "the ticket, or the node of a pending application (e.g. MA.156.1306)"


class ApplicationClient(RegistrarClient):
    """The application API of one registrar; review calls are signed with ``key``."""

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/api/applications", json=body)

    async def status(self, ticket: str) -> dict[str, Any]:
        return await self._call("GET", f"/api/applications/{ticket}")

    async def _review(
        self, key: SigningKey, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        path_qs = urlsplit(self.base_url).path.rstrip("/") + path
        headers = {"Authorization": review_header(key, method, path_qs, now(), raw)}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return await self._call(method, path, data=raw or None, headers=headers)

    async def review_list(self, key: SigningKey, status: str | None = None) -> dict[str, Any]:
        return await self._review(key, "GET", REVIEW + (f"?status={status}" if status else ""))

    async def review_show(self, key: SigningKey, ticket: str) -> dict[str, Any]:
        return await self._review(key, "GET", f"{REVIEW}/{await self.ticket(key, ticket)}")

    async def ticket(self, key: SigningKey, ticket_or_node: str) -> str:
        """A ticket as given, or the ticket of the pending application for a node (a ticket
        never holds a '.'; a node always does)."""
        if "." not in ticket_or_node:
            return ticket_or_node
        node = str(parse_prefix(ticket_or_node))
        listed = await self.review_list(key, "pending")
        for st in listed["applications"]:
            if st["node"] == node:
                return str(st["ticket"])
        raise CityIdError(f"no pending application for {node}", rule="no-such-ticket")

    async def approve(self, key: SigningKey, ticket: str) -> dict[str, Any]:
        """Read the application, build its delegation, sign it with ``key``, send it."""
        ticket = await self.ticket(key, ticket)
        shown = await self.review_show(key, ticket)
        app = Application.decode(base64.b64decode(shown["canonical"]))
        leaf = SignedOperation.sign(delegation(app, int(shown["prev"]), now()), key).encode()
        body = {"leaf": base64.b64encode(leaf).decode()}
        return await self._review(key, "POST", f"{REVIEW}/{ticket}/approve", body)

    async def reject(self, key: SigningKey, ticket: str, reason: str) -> dict[str, Any]:
        ticket = await self.ticket(key, ticket)
        return await self._review(key, "POST", f"{REVIEW}/{ticket}/reject", {"reason": reason})


def _registrar_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--registrar",
        default=os.environ.get("CITYID_REGISTRAR", DEFAULT_REGISTRAR),
        help="the parent's registrar URL (env CITYID_REGISTRAR; default %(default)s)",
    )


def _key_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--key", required=True, type=Path, metavar="FILE", help=help)


def add_commands(sub: Subparsers) -> None:
    a = sub.add_parser(
        "apply", formatter_class=RAW,
        help="apply to a parent prefix for a child prefix (a city, a department)",
        description=(
            "Apply to the registrar of the parent prefix for NODE, to be delegated to the key "
            "in --key. The application is signed with that key (proof that you hold it) and "
            "prints a ticket: keep it, it is how you read the decision. A city under MA.156 "
            "gives its GB/T 2260 code (--adcode), from which its node is derived (130600 -> "
            "MA.156.1306), and its name as the divisions table spells it. Without --origin "
            "the parent's registrar hosts the new prefix; with it, your own registrar and log "
            "do (--log-key, --registrar-url, optional --ns).\n\n"
            "'cityid apply status TICKET' shows where an application stands."
        ),
        epilog=(
            "examples:\n"
            "  cityid keygen MA.156.1306-admin -o baoding.key\n"
            "  cityid apply --registrar http://127.0.0.1:8000 --key baoding.key \\\n"
            "      --adcode 130600 \\\n"
            "      --name 保定市 --contact-name 'Li Wei' --contact-email it@baoding.example \\\n"
            "      --contact-phone '+86 312 555 0100'\n"
            "  cityid apply --registrar http://127.0.0.1:8001 --key water.key "
            "--node MA.156.1301.08 \\\n"
            "      --name 'Water supply' --contact-name 'Wang Fang' "
            "--contact-email water@sjz.example \\\n"
            "      --contact-phone '+86 311 555 0108'\n"
            "  cityid apply status 3q2W... --registrar http://127.0.0.1:8000"
        ),
    )  # fmt: skip
    _registrar_arg(a)
    a.add_argument("--key", type=Path, metavar="FILE",
                   help="the admin key you apply with: it signs the application and, once "
                        "approved, everything under your prefix")  # fmt: skip
    a.add_argument("--node", help="the child prefix (derived from --adcode for a city)")
    a.add_argument("--adcode", help="GB/T 2260 code of a city under MA.156 (6 or 12 digits)")
    a.add_argument("--name", help="the official name (for a city: as in the divisions table)")
    a.add_argument("--contact-name", help="who the parent's operator may contact")
    a.add_argument("--contact-email", help="their email (never shown on the status page)")
    a.add_argument("--contact-phone", help="their phone, e.g. '+86 311 555 0100'")
    a.add_argument("--origin", help="self-hosted: your log's origin, e.g. city.example/log")
    a.add_argument("--log-key", metavar="VKEY|FILE", help="self-hosted: your log's verifier key")
    a.add_argument("--registrar-url", help="self-hosted: the URL of your own registrar")
    a.add_argument("--ns", action="append", default=[], metavar="'HOST [ADDR...]'",
                   help="self-hosted: a DNS name server for referrals (repeat)")  # fmt: skip
    a.add_argument("--reason", default="", help="self-hosted: why you host it yourselves")
    a.add_argument("--webhook", help="a URL the decision is POSTed to")
    a.set_defaults(func=cmd_apply)
    asub = a.add_subparsers(metavar="COMMAND")
    s = asub.add_parser(
        "status", formatter_class=RAW,
        help="show where an application stands",
        description="Show an application's status: pending, approved (with the delegation's "
        "leaf and checkpoint) or rejected (with the reason).",
        epilog="example:\n  cityid apply status 3q2W... --registrar http://127.0.0.1:8000",
    )  # fmt: skip
    s.add_argument("ticket", metavar="TICKET", help="the ticket, or its status URL")
    _registrar_arg(s)
    s.set_defaults(func=cmd_status)
    sg = asub.add_parser(
        "sign", formatter_class=RAW,
        help="sign an application the /apply form shows (proof that you hold the key)",
        description="Sign CANONICAL (the base64 application the /apply form shows) with --key, "
        "the admin key the application names, and print the signature to paste into the form. "
        "What is signed is printed first: read it.",
        epilog="example:\n  cityid apply sign --key baoding.key lZZjaXR5aWQv...",
    )  # fmt: skip
    sg.add_argument("canonical", metavar="CANONICAL", help="the application, base64")
    _key_arg(sg, "the admin key the application names")
    sg.set_defaults(func=cmd_sign)

    rev = group(sub, "applications", "review applications to your prefix: list, show, approve, "
                "reject")  # fmt: skip
    lst = rev.add_parser(
        "list", formatter_class=RAW, help="list the applications to the prefixes your key holds",
        description="List applications to the prefixes --key holds on this registrar. The "
        "request is signed with --key: no password.",
        epilog="example:\n  cityid applications list --status pending --key root-admin.key",
    )  # fmt: skip
    lst.add_argument("--status", choices=("pending", "approved", "rejected"))
    _key_arg(lst, "the parent prefix's key")
    _registrar_arg(lst)
    lst.set_defaults(func=cmd_list)
    show = rev.add_parser(
        "show", help="show one application in full (contact included)",
        description="Show an application in full, contact included, signed with --key.",
    )  # fmt: skip
    show.add_argument("ticket", metavar="TICKET|NODE", help=_TICKET_HELP)
    _key_arg(show, "the parent prefix's key")
    _registrar_arg(show)
    show.set_defaults(func=cmd_show)
    ap = rev.add_parser(
        "approve", formatter_class=RAW, help="approve: delegate the prefix (a signed operation)",
        description="Approve TICKET: build the delegation from the application (NAME, GEO from "
        "the divisions table, CITYID_SITE, NS, the admin key), sign it with --key (the parent's "
        "key) and write it through the registrar's log and witnesses.",
        epilog="examples:\n  cityid applications approve 3q2W... --key root-admin.key\n"
        "  cityid applications approve MA.156.1306 --key root-admin.key",
    )  # fmt: skip
    ap.add_argument("ticket", metavar="TICKET|NODE", help=_TICKET_HELP)
    _key_arg(ap, "the parent prefix's key: it signs the delegation")
    _registrar_arg(ap)
    ap.set_defaults(func=cmd_approve)
    rj = rev.add_parser(
        "reject", help="reject, with a reason the applicant reads",
        description="Reject TICKET with --reason (shown on the status page). The applicant "
        "may apply again.",
    )  # fmt: skip
    rj.add_argument("ticket", metavar="TICKET|NODE", help=_TICKET_HELP)
    rj.add_argument("--reason", required=True, help="why, for the applicant")
    _key_arg(rj, "the parent prefix's key")
    _registrar_arg(rj)
    rj.set_defaults(func=cmd_reject)


def _call(
    url: str, call: Callable[[ApplicationClient], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """``call`` with a client of the registrar at ``url``, to its end."""

    async def go() -> dict[str, Any]:
        async with ApplicationClient(url) as client:
            return await call(client)

    return asyncio.run(go())


def _print_status(st: dict[str, Any], base: str) -> None:
    line = f"{st['status']:<9} {st['node']}  {st['name']}"
    print(line + (f"  (GB/T 2260 {st['adcode'][:6]})" if "adcode" in st else ""))
    print(f"ticket    {st['ticket']}")
    print(f"status    {base.rstrip('/')}{st['status_url']}")
    if st.get("reason"):
        print(f"reason    {st['reason']}")
    if "leaf" in st:
        lines = str(st["checkpoint"]).splitlines()
        print(f"leaf      {st['leaf']} (checkpoint {lines[0]} size {lines[1]})")


def _application_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "node": args.node, "adcode": args.adcode, "name": args.name,
        "contact_name": args.contact_name, "contact_email": args.contact_email,
        "contact_phone": args.contact_phone, "webhook": args.webhook, "time": now(),
    }  # fmt: skip
    if args.origin:
        fields.update(
            hosting="self", origin=args.origin, registrar_url=args.registrar_url, ns=args.ns,
            reason=args.reason,
            log_key=str(read_vkey(args.log_key, "--log-key")) if args.log_key else None,
        )  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None}


def cmd_apply(args: argparse.Namespace) -> int:
    if args.key is None:
        raise CityIdError("give --key (the admin key you apply with)", rule="usage")
    key = SigningKey.read(args.key)
    fields = _application_fields(args)
    fields["admin_key"] = str(key.verifier)
    app = parse_application(fields)  # the registrar checks again; this names a fault first

    _print_status(_call(args.registrar, lambda c: c.apply(signed_json(app, key))), args.registrar)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    ticket, base = args.ticket, args.registrar
    if "://" in ticket:  # the status URL: it names its registrar
        parts = urlsplit(ticket)
        base, ticket = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/").split("/")[-1]

    _print_status(_call(base, lambda c: c.status(ticket)), base)
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)
    try:
        raw = base64.b64decode(args.canonical, validate=True)
    except ValueError as e:
        raise CityIdError(
            "CANONICAL is not base64: copy it whole from the form", rule="usage"
        ) from e
    app = Application.decode(raw)
    if app.admin_key.public_key != key.public_key:
        raise CityIdError(
            f"the application names admin key {app.admin_key}, but --key holds {key.verifier}",
            rule="wrong-key",
        )
    print(f"signing the application for {app.node} ({app.name}) to be delegated to "
          f"{app.admin_key}", file=sys.stderr)  # fmt: skip
    print(base64.b64encode(app.sign(key)).decode())
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)

    body = _call(args.registrar, lambda c: c.review_list(key, args.status))
    apps = body["applications"]
    print(f"{len(apps)} application(s) to {', '.join(body['parents'])}")
    for st in apps:
        print(f"{st['ticket']}  {st['status']:<9} {st['node']:<16} {st['name']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)

    body = _call(args.registrar, lambda c: c.review_show(key, args.ticket))
    _print_status(body, args.registrar)
    print(f"from      {body['client']}")
    for k, v in body["application"].items():
        print(f"  {k:<14} {v}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)

    _print_status(_call(args.registrar, lambda c: c.approve(key, args.ticket)), args.registrar)
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    key = SigningKey.read(args.key)

    decided = _call(args.registrar, lambda c: c.reject(key, args.ticket, args.reason))
    _print_status(decided, args.registrar)
    return 0
