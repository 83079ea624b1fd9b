"""Applications for a child prefix: the canonical format, its checks, its delegation.

A city applies to the root for its node, a department to its city. An
application is a JSON object on the wire (``POST /api/applications``, the
``/apply`` form, ``cityid apply``); it is checked field by field, then encoded
once, canonically, as a msgpack array (:meth:`Application.encode`). The
applicant signs ``DOMAIN + canonical bytes`` with the admin key it asks the
parent to delegate to: a proof that it holds that key. The same bytes name the
application (its digest), so a resend of one signed application is recognised.

Once the parent's operator approves, :func:`delegation` turns the application
into the ``delegate`` operation the parent's key signs: the application's fields
become the prefix record's values (NAME; GEO, GEO_BOX and DESC from the GB/T
2260 table; CITYID_SITE, NS and the log's key for a self-hosted child; the admin key
as CITYID_PUBKEY). Operator and registrar build it with this one function, so the
registrar can check that what was signed is what was applied for.

Pure: no I/O but the packaged divisions table, read once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from cityid import demo
from cityid.errors import CityIdError, KeyFormatError, RecordError, SignatureError
from cityid.identifiers import IdentifierError, Prefix, parse_prefix
from cityid.keys import SigningKey, VerifierKey
from cityid.ops import Delegate
from cityid.records import PUBKEY, SITE, Record, Value

VERSION = "cityid/application/v1"
DOMAIN = b"cityid/application/v1\x00"
#: The national root, under which a city applies with its GB/T 2260 code.
NATIONAL_ROOT = demo.ROOT

#: Bounds (characters) of the free-text fields, and of a whole request body (bytes).
MAX_NAME = 128
MAX_CONTACT_NAME = 128
MAX_EMAIL = 254
MAX_PHONE = 32
MAX_REASON = 2000
MAX_ORIGIN = 255
MAX_NS = 8
MAX_BODY = 16 * 1024

FIELDS = (
    "node", "adcode", "name", "contact_name", "contact_email", "contact_phone", "admin_key",
    "hosting", "origin", "log_key", "registrar_url", "ns", "reason", "webhook", "time",
)  # fmt: skip

_PHONE_RE = re.compile(r"\+?[0-9][0-9 ()./-]{4,30}")
_ADCODE_RE = re.compile(r"[0-9]{6}|[0-9]{12}")
_ORIGIN_RE = re.compile(r"[A-Za-z0-9._~:/-]{1,255}")


class ApplicationError(RecordError):
    """A field of an application is missing or malformed; ``field`` names it (the form
    shows the message next to it)."""

    rule = "application"

    def __init__(self, field: str, message: str, *, rule: str) -> None:
        super().__init__(message, rule=rule)
        self.field = field


@dataclass(frozen=True, slots=True)
class SelfHosting:
    """A child that runs its own registrar and log."""

    origin: str
    log_key: VerifierKey
    registrar_url: str
    ns: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Application:
    node: Prefix
    adcode: str | None  # 12 digits, for a city under the national root
    name: str
    contact_name: str
    contact_email: str
    contact_phone: str
    admin_key: VerifierKey
    hosting: SelfHosting | None  # None: hosted by the parent's registrar
    webhook: str | None
    time: int

    @property
    def parent(self) -> Prefix:
        parent = self.node.parent
        assert parent is not None  # a node of two or more labels (checked on parsing)
        return parent

    def to_wire(self) -> list[Any]:
        h = self.hosting
        hosting = (
            None if h is None else [h.origin, str(h.log_key), h.registrar_url, list(h.ns), h.reason]
        )
        return [
            VERSION, str(self.node), self.adcode, self.name,
            [self.contact_name, self.contact_email, self.contact_phone],
            str(self.admin_key), hosting, self.webhook, self.time,
        ]  # fmt: skip

    def encode(self) -> bytes:
        """The canonical bytes: what is signed, stored and named by the digest."""
        return msgpack.packb(self.to_wire(), use_bin_type=True)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def sign(self, key: SigningKey) -> bytes:
        return key.sign(DOMAIN + self.encode())

    def verify(self, signature: bytes) -> None:
        """Proof of possession: the admin key asked for signed this application."""
        try:
            self.admin_key.verify(DOMAIN + self.encode(), signature)
        except SignatureError as e:
            raise SignatureError(
                f"the signature does not verify for admin key {self.admin_key}: sign the "
                "canonical application with the admin key you apply with",
                rule="bad-signature",
            ) from e

    def to_json(self) -> dict[str, Any]:
        """The wire form :func:`parse_application` reads back to this application."""
        out: dict[str, Any] = {
            "node": str(self.node),
            "name": self.name,
            "contact_name": self.contact_name,
            "contact_email": self.contact_email,
            "contact_phone": self.contact_phone,
            "admin_key": str(self.admin_key),
            "hosting": "parent" if self.hosting is None else "self",
            "time": self.time,
        }
        if self.adcode is not None:
            out["adcode"] = self.adcode
        if self.webhook is not None:
            out["webhook"] = self.webhook
        h = self.hosting
        if h is not None:
            out.update(
                origin=h.origin, log_key=str(h.log_key), registrar_url=h.registrar_url,
                ns=list(h.ns), reason=h.reason,
            )  # fmt: skip
        return out

    @classmethod
    def decode(cls, data: bytes) -> Application:
        """Read canonical bytes back (from the registrar's store); checks them again."""
        try:
            w = msgpack.unpackb(data, raw=False)
            _, node, adcode, name, contact, admin, hosting, webhook, time = w
            fields: dict[str, Any] = {
                "node": node, "name": name, "contact_name": contact[0],
                "contact_email": contact[1], "contact_phone": contact[2], "admin_key": admin,
                "webhook": webhook, "time": time, "hosting": "parent",
            }  # fmt: skip
            if adcode is not None:
                fields["adcode"] = adcode
            if hosting is not None:
                fields.update(
                    hosting="self", origin=hosting[0], log_key=hosting[1],
                    registrar_url=hosting[2], ns=hosting[3], reason=hosting[4],
                )  # fmt: skip
        except (ValueError, TypeError, IndexError, msgpack.ExtraData) as e:
            raise ApplicationError("", f"not a canonical application: {e}", rule="encoding") from e
        app = parse_application(fields)
        if app.encode() != data:
            raise ApplicationError("", "not a canonical application", rule="encoding")
        return app


# -- parsing ------------------------------------------------------------------------------


def _text(obj: Mapping[str, Any], field: str, limit: int, *, required: bool = True) -> str:
    value = obj.get(field)
    if value is None or value == "":
        if required:
            raise ApplicationError(field, f"{field} is required", rule="missing-field")
        return ""
    if not isinstance(value, str):
        raise ApplicationError(field, f"{field} must be a string", rule="field-type")
    value = value.strip()
    if len(value) > limit:
        raise ApplicationError(
            field, f"{field} is {len(value)} characters (at most {limit})", rule="field-too-long"
        )
    if not value.isprintable():
        raise ApplicationError(field, f"{field} holds control characters", rule="field-charset")
    return value


def _checked_value(field: str, vtype: str, data: str) -> str:
    """``data`` as the record value type checks it (one rule for records and applications)."""
    try:
        checked = Value.make(1, vtype, data, timestamp=0).data
    except RecordError as e:
        raise ApplicationError(field, f"{field}: {e.message}", rule=e.rule) from e
    return str(checked)


def _vkey(field: str, text: str) -> VerifierKey:
    try:
        return VerifierKey.parse(text)
    except KeyFormatError as e:
        raise ApplicationError(field, f"{field}: {e.message}", rule=e.rule) from e


def normalise_adcode(text: str) -> str:
    """A GB/T 2260 code as the table spells it (12 digits); 6 digits are padded."""
    if not _ADCODE_RE.fullmatch(text):
        raise ApplicationError(
            "adcode", f"adcode {text[:20]!r} is not a GB/T 2260 code (6 or 12 digits)",
            rule="adcode-syntax",
        )  # fmt: skip
    return text.ljust(12, "0")


def parse_application(obj: Any) -> Application:
    """Check an application's JSON fields one by one; the first fault names its field."""
    if not isinstance(obj, Mapping):
        raise ApplicationError("", "an application is a JSON object", rule="json")
    unknown = sorted(set(obj) - set(FIELDS) - {"signature"})
    if unknown:
        raise ApplicationError(
            unknown[0], f"unknown fields {unknown}; an application has {list(FIELDS)}",
            rule="unknown-field",
        )  # fmt: skip
    adcode_text = _text(obj, "adcode", 12, required=False)
    adcode = normalise_adcode(adcode_text) if adcode_text else None
    node_text = _text(obj, "node", 255, required=adcode is None)
    derived = NATIONAL_ROOT.child(adcode[:4]) if adcode is not None else None
    try:
        node = parse_prefix(node_text) if node_text else derived
    except IdentifierError as e:
        raise ApplicationError("node", f"node: {e.message}", rule=e.rule) from e
    assert node is not None
    if node.parent is None:
        raise ApplicationError("node", f"{node} is a root: apply for a child node", rule="node")
    if derived is not None and node != derived:
        raise ApplicationError(
            "node", f"GB/T 2260 code {adcode} gives node {derived}, not {node}", rule="node-adcode"
        )
    if node.parent == NATIONAL_ROOT and adcode is None:
        raise ApplicationError(
            "adcode", f"a city under {NATIONAL_ROOT} applies with its GB/T 2260 code",
            rule="missing-field",
        )  # fmt: skip
    name = _text(obj, "name", MAX_NAME)
    contact_name = _text(obj, "contact_name", MAX_CONTACT_NAME)
    email = _text(obj, "contact_email", MAX_EMAIL)
    _checked_value("contact_email", "EMAIL", email)
    phone = _text(obj, "contact_phone", MAX_PHONE)
    if not _PHONE_RE.fullmatch(phone) or sum(c.isdigit() for c in phone) < 5:
        raise ApplicationError(
            "contact_phone", f"contact_phone {phone!r} is not a phone number (digits, spaces, "
            "+ ( ) - . /; at least 5 digits)", rule="phone-syntax",
        )  # fmt: skip
    admin_key = _vkey("admin_key", _text(obj, "admin_key", 512))
    webhook_text = _text(obj, "webhook", 2048, required=False)
    webhook = _checked_value("webhook", "URL", webhook_text) if webhook_text else None
    time = obj.get("time")
    if isinstance(time, bool) or not isinstance(time, int) or not 0 <= time < 2**63:
        raise ApplicationError("time", "time is the application's Unix time", rule="field-type")
    mode = _text(obj, "hosting", 8, required=False) or "parent"
    if mode not in ("parent", "self"):
        raise ApplicationError("hosting", "hosting is 'parent' or 'self'", rule="hosting")
    hosting = _self_hosting(obj) if mode == "self" else None
    if mode == "parent":
        extra = [f for f in ("origin", "log_key", "registrar_url", "ns") if obj.get(f)]
        if extra:
            raise ApplicationError(extra[0], f"{extra[0]} goes with hosting 'self'", rule="hosting")
    return Application(
        node, adcode, name, contact_name, email, phone, admin_key, hosting, webhook, time
    )


def _self_hosting(obj: Mapping[str, Any]) -> SelfHosting:
    origin = _text(obj, "origin", MAX_ORIGIN)
    if not _ORIGIN_RE.fullmatch(origin):
        raise ApplicationError(
            "origin", f"origin {origin!r} is a log name such as city.example/log", rule="origin"
        )
    log_key = _vkey("log_key", _text(obj, "log_key", 512))
    if log_key.name != origin:
        raise ApplicationError(
            "log_key", f"log_key is named {log_key.name!r}: a log's checkpoint key is named "
            f"after its origin {origin!r}", rule="log-key-name",
        )  # fmt: skip
    url = _checked_value("registrar_url", "URL", _text(obj, "registrar_url", 2048))
    raw_ns = obj.get("ns") or []
    if isinstance(raw_ns, str):
        raw_ns = [line for line in raw_ns.splitlines() if line.strip()]
    if not isinstance(raw_ns, list) or len(raw_ns) > MAX_NS:
        raise ApplicationError("ns", f"ns is a list of at most {MAX_NS} servers", rule="ns")
    ns = []
    for item in raw_ns:
        if not isinstance(item, str) or len(item) > 512:
            raise ApplicationError("ns", "each ns is 'host [address ...]'", rule="ns-syntax")
        ns.append(_checked_value("ns", "NS", item))
    reason = _text(obj, "reason", MAX_REASON, required=False)
    return SelfHosting(origin, log_key, url, tuple(ns), reason)


def parse_signature(obj: Mapping[str, Any]) -> bytes:
    sig = obj.get("signature")
    try:
        raw = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 64:
        raise SignatureError(
            "signature must be the base64 Ed25519 signature (64 bytes) of the canonical "
            "application by the admin key", rule="bad-signature",
        )  # fmt: skip
    return raw


def signed_json(app: Application, key: SigningKey) -> dict[str, Any]:
    """The body of ``POST /api/applications`` for ``app``, signed by its admin key."""
    return {**app.to_json(), "signature": base64.b64encode(app.sign(key)).decode()}


# -- the divisions table ------------------------------------------------------------------


@functools.cache
def _table() -> dict[str, demo.Division]:
    return {d.code: d for d in demo.divisions()}


def division(code: str) -> demo.Division | None:
    return _table().get(code)


def _level(code: str) -> str:
    if code.endswith("0" * 10):
        return "province"
    if code.endswith("0" * 8):
        return "prefecture"
    return "county"


def check_division(app: Application) -> demo.Division | None:
    """The table's row for a city applying under the national root (None for others).

    The code must exist, be prefecture-level (a county applies to its city, not
    to the root), and the name must be the table's.
    """
    if app.adcode is None:
        return None
    row = division(app.adcode)
    if row is None:
        raise ApplicationError(
            "adcode", f"GB/T 2260 code {app.adcode} is not in the divisions table",
            rule="adcode-unknown",
        )  # fmt: skip
    level = _level(app.adcode)
    if level != "prefecture":
        above = division(app.adcode[:4] + "0" * 8) if level == "county" else None
        where = f": it applies to its city, {above.code[:6]} {above.name}" if above else ""
        raise ApplicationError(
            "adcode", f"{app.adcode[:6]} {row.name} is {level}-level; {NATIONAL_ROOT} delegates "
            f"to prefecture-level cities only{where}", rule="adcode-level",
        )  # fmt: skip
    if app.name != row.name:
        raise ApplicationError(
            "name", f"name {app.name!r} does not match the table's name for {app.adcode[:6]}: "
            f"{row.name!r}", rule="name-mismatch",
        )  # fmt: skip
    return row


# -- the delegation -----------------------------------------------------------------------


def delegation(app: Application, prev: int, time: int) -> Delegate:
    """The ``delegate`` operation an approval writes: the parent's key signs it."""
    values: list[tuple[str, Any]] = [("NAME", app.name)]
    row = division(app.adcode) if app.adcode is not None else None
    if row is not None:
        s, w, n, e = demo.bounding_box(row)
        lat, lon = (row.lat, row.lon) if row.lat is not None and row.lon is not None else (
            (s + n) / 2, (w + e) / 2)  # fmt: skip
        values += [
            ("GEO", demo.geo(lat, lon)),
            ("DESC", f"GB/T 2260 {row.code}"),
            ("GEO_BOX", f"{demo.geo(s, w)},{demo.geo(n, e)}"),
        ]
    values.append((PUBKEY, str(app.admin_key)))
    h = app.hosting
    if h is not None:
        url = h.registrar_url.rstrip("/")
        values.append((SITE, {"registrar": url, "ledger": f"{url}/log"}))
        values.append((PUBKEY, str(h.log_key)))
        values += [("NS", ns) for ns in h.ns]
    record = Record(
        tuple(Value.make(i + 1, t, d, timestamp=time) for i, (t, d) in enumerate(values))
    )
    origin = None if h is None else h.origin
    return Delegate(app.node, prev, app.admin_key.public_key, origin, record, time)


def is_delegation_of(op: Any, app: Application) -> bool:
    """Whether ``op`` is exactly the delegation :func:`delegation` makes of ``app``."""
    if not isinstance(op, Delegate):
        return False
    try:
        want = delegation(app, op.prev, op.time)
    except CityIdError:
        return False
    return want == op
