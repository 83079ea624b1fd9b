"""The demo's Handle admin: so Handle clients can write to ``cityid up`` with config only.

On the first start, Shijiazhuang's traffic department (``MA.156.1301.02``) gets what a
Handle prefix needs, each a normal signed operation in the city's log:

* its prefix record gains an HS_ADMIN value naming ``300:MA.156.1301.02/ADMIN`` with
  every permission (the city, its parent, signs the update);
* ``MA.156.1301.02/ADMIN`` is minted with an HS_SECKEY value holding the salted hash of
  a random secret, which is written to ``keys/handle-admin.secret`` (mode 0600);
* the department grants the city registrar's custodial key custody for that admin.

A Handle client (pyhandle's ``RESTHandleClient``) then writes through the city
registrar with username ``300:MA.156.1301.02/ADMIN`` and that secret (docs/handle.md).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cityid.identifiers import Prefix
from cityid.keys import SigningKey
from cityid.ops import Custody, Mint, MintItem, SignedOperation, Update
from cityid.records import Record, Value
from registrar.core import Registrar
from registrar.handle_auth import seckey_value

DEPARTMENT = Prefix(("MA", "156", "1301", "02"))
ADMIN = f"300:{DEPARTMENT}/ADMIN"
SECRET_FILE = "handle-admin.secret"


def admin_secret(keys: Path) -> str:
    """The admin's secret key, made on first use (random, kept only in this file)."""
    path = keys / SECRET_FILE
    if not path.exists():
        keys.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return path.read_text().strip()


async def seed(
    city: Registrar, city_admin: SigningKey, dept: SigningKey, keys: Path, ts: int
) -> None:
    ns = city.namespace
    st = ns.prefixes[DEPARTMENT]
    admin_index, _, admin_handle = ADMIN.partition(":")
    hs_admin = {"handle": admin_handle, "index": int(admin_index), "permissions": "111111111111"}
    record = Record((*st.record.values, Value.make(100, "HS_ADMIN", hs_admin, timestamp=ts)))
    seckey = seckey_value(admin_secret(keys))
    admin_record = Record((
        Value.make(1, "DESC", "Handle admin of the traffic department", timestamp=ts),
        Value.make(int(admin_index), "HS_SECKEY", seckey, timestamp=ts),
    ))  # fmt: skip
    custodian = SigningKey.read(city.config.custody_key_file).public_key  # type: ignore[arg-type]
    signed = [
        SignedOperation.sign(Update(DEPARTMENT.record_id, st.version, record, ts), city_admin),
        SignedOperation.sign(Mint(DEPARTMENT, (MintItem("ADMIN", 0, admin_record),), ts), dept),
        SignedOperation.sign(Custody(DEPARTMENT, 0, custodian, (ADMIN,), ts), dept),
    ]
    await city.submit([s.encode() for s in signed], signed)
