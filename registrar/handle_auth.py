"""Handle's own authentication, for Handle clients writing through the registrar.

Pure functions, no I/O: the HTTP shell is ``registrar/handle_api.py``.

* **Who:** HTTP Basic with the username ``INDEX:ADMIN-HANDLE`` (``300:P/ADMIN``,
  percent-encoded as clients send it) and a secret key as the password, as
  HANDLE.NET 9 takes it. The secret is checked against an ``HS_SECKEY`` value at
  ``INDEX`` of the admin handle's record, which holds only a salted hash
  (:func:`seckey_value`), never the secret.
* **What they may do:** the ``HS_ADMIN`` values of the record written (or, to
  create a handle, of the prefix's record ``0.NA/P``) name admins ``INDEX:HANDLE``
  and their permissions (those of ``0.NA/P`` hold on every handle under ``P``), a 12-bit
  string written as HANDLE.NET writes it: the
  last character is bit 0 (add handle), the first bit 11 (list handles).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from cityid.errors import AuthorityError, SignatureError
from cityid.records import Record, Value

BASIC = "Basic"
#: Both schemes, for a 401's WWW-Authenticate (one challenge a line, as HANDLE.NET does).
CHALLENGES = ('Basic realm="cityid"', "CityID-Ed25519")

#: The HS_SECKEY value's form: ``pbkdf2-sha256$ITERATIONS$SALT$HASH`` (base64).
SECKEY_SCHEME = "pbkdf2-sha256"
SECKEY_ITERATIONS = 200_000
_B64 = "[A-Za-z0-9+/=]"
_SECKEY_RE = re.compile(rf"pbkdf2-sha256\$([0-9]{{1,7}})\$({_B64}{{8,88}})\$({_B64}{{44}})")

# Bit positions in HANDLE.NET's AdminRecord.
ADD_HANDLE, DELETE_HANDLE = 0, 1
MODIFY_VALUE, REMOVE_VALUE, ADD_VALUE, READ_VALUE = 4, 5, 6, 7
MODIFY_ADMIN, REMOVE_ADMIN, ADD_ADMIN = 8, 9, 10
NAMES = {
    ADD_HANDLE: "add handle",
    DELETE_HANDLE: "delete handle",
    MODIFY_VALUE: "modify value",
    REMOVE_VALUE: "remove value",
    ADD_VALUE: "add value",
    MODIFY_ADMIN: "modify admin",
    REMOVE_ADMIN: "remove admin",
    ADD_ADMIN: "add admin",
}


@dataclass(frozen=True, slots=True)
class Credentials:
    index: int
    handle: str
    secret: str

    @property
    def admin(self) -> str:
        """``INDEX:HANDLE``, as HS_ADMIN values and custody grants name an admin (a handle
        in upper case, as cityid stores it)."""
        return admin_name(self.index, self.handle)


def admin_name(index: int, handle: str) -> str:
    return f"{index}:{handle.strip().upper()}"


def is_handle_auth(header: str | None) -> bool:
    """Whether ``header`` is one of Handle's schemes (else it is cityid's signature)."""
    return header is not None and header.split(" ", 1)[0].lower() in ("basic", "handle")


def parse_basic(header: str) -> Credentials:
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise SignatureError(
            "this registrar takes Handle's Basic scheme (username INDEX:ADMIN-HANDLE, the "
            "secret key as password); the /api/sessions public-key scheme is not served",
            rule="auth-scheme",
        )
    try:
        text = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise SignatureError("Basic credentials are not base64 UTF-8", rule="auth-syntax") from e
    user, sep, secret = text.partition(":")
    if user.isdigit():
        # The username's own colon, not percent-encoded (as some clients send it): the
        # username is INDEX:HANDLE, the secret what follows the next colon.
        handle, sep, secret = secret.partition(":")
        user = f"{user}:{handle}"
    index, colon, handle = unquote(user).partition(":")
    if not sep or not colon or not index.isdigit() or len(index) > 9 or "/" not in handle:
        raise SignatureError(
            "the Basic username is INDEX:ADMIN-HANDLE (such as 300:MA.156.1301.02/ADMIN)",
            rule="auth-syntax",
        )
    return Credentials(int(index), handle.strip(), secret)


def seckey_value(secret: str, *, salt: bytes | None = None, iterations: int = 0) -> str:
    """The HS_SECKEY data for ``secret``: a salted PBKDF2-SHA256 hash, never the secret."""
    salt = os.urandom(16) if salt is None else salt
    n = iterations or SECKEY_ITERATIONS
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, n)
    b64 = base64.b64encode
    return f"{SECKEY_SCHEME}${n}${b64(salt).decode()}${b64(digest).decode()}"


def secret_matches(stored: Any, secret: str) -> bool:
    m = _SECKEY_RE.fullmatch(stored) if isinstance(stored, str) else None
    if m is None:
        return False  # not a hash in the one form taken: a secret in clear never matches
    n, salt, want = int(m[1]), base64.b64decode(m[2]), base64.b64decode(m[3])
    if not 1_000 <= n <= 5_000_000:
        return False
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, n), want)


def authenticate(creds: Credentials, admin_record: Record | None) -> None:
    """Raise unless ``creds``' secret matches the HS_SECKEY at its index of the admin's
    record. The same words for an unknown admin and a wrong secret: which admin
    handles exist is not told to someone who guesses."""
    stored = None
    if admin_record is not None:
        keys = (v for v in admin_record.values if v.type == "HS_SECKEY")
        stored = next((v.data for v in keys if v.index == creds.index), None)
    if not secret_matches(stored, creds.secret):
        raise SignatureError(
            f"authentication as {creds.admin} failed: no such admin, or a wrong secret key",
            rule="authentication-failed",
        )


def _permissions(value: Value) -> tuple[str, str] | None:
    data = value.data
    if value.type != "HS_ADMIN" or not isinstance(data, dict):
        return None
    return f"{data['index']}:{data['handle']}", str(data["permissions"])


def permitted(admin: str, record: Record | None, bit: int) -> bool:
    """Whether an HS_ADMIN value of ``record`` gives ``admin`` permission ``bit``."""
    for v in record.values if record is not None else ():
        got = _permissions(v)
        if got is not None and got[0] == admin:
            bits = got[1]
            if len(bits) > bit and bits[len(bits) - 1 - bit] == "1":
                return True
    return False


def require(admin: str, records: Sequence[Record | None], bits: Iterable[int], where: str) -> None:
    """Raise unless an HS_ADMIN value of one of ``records`` gives ``admin`` each of ``bits``.

    The records are the handle's own and its prefix's ``0.NA/P``: an admin the prefix
    record names holds its permissions on every handle under the prefix, as HANDLE.NET's
    server administrators hold theirs on every handle the server keeps.
    """
    missing = [NAMES[b] for b in bits if not any(permitted(admin, r, b) for r in records)]
    if missing:
        raise AuthorityError(
            f"{admin} may not {', '.join(missing)} on {where}: no HS_ADMIN value of it or of "
            "its prefix record gives it that permission",
            rule="insufficient-permissions",
        )


def change_bits(old: Record, new: Record) -> set[int]:
    """The permissions replacing ``old``'s values by ``new``'s needs, as HANDLE.NET counts
    them: add, modify or remove a value, or an admin value for HS_ADMIN."""
    before = {v.index: v for v in old.values}
    after = {v.index: v for v in new.values}
    bits: set[int] = set()
    for i in before.keys() | after.keys():
        a, b = before.get(i), after.get(i)
        if a is not None and b is not None and (a.type, a.data) == (b.type, b.data):
            continue
        admin = "HS_ADMIN" in (a.type if a else "", b.type if b else "")
        if a is None:
            bits.add(ADD_ADMIN if admin else ADD_VALUE)
        elif b is None:
            bits.add(REMOVE_ADMIN if admin else REMOVE_VALUE)
        else:
            bits.add(MODIFY_ADMIN if admin else MODIFY_VALUE)
    return bits


#: What HANDLE.NET's tools give a handle's creator (hdl-admintool's default).
CREATOR_PERMISSIONS = "011111110011"


def with_creator_admin(record: Record, admin: str, timestamp: int) -> Record:
    """``record``, with an HS_ADMIN value for ``admin`` if it has none, as HANDLE.NET adds
    one for whoever creates a handle without: otherwise nobody could change it again."""
    if any(v.type == "HS_ADMIN" for v in record.values):
        return record
    taken = {v.index for v in record.values}
    index = next(i for i in range(100, 100 + len(taken) + 1) if i not in taken)
    number, _, handle = admin.partition(":")
    data = {"handle": handle, "index": int(number), "permissions": CREATOR_PERMISSIONS}
    value = Value.make(index, "HS_ADMIN", data, timestamp=timestamp)
    return Record(tuple(sorted((*record.values, value), key=lambda v: v.index)))
