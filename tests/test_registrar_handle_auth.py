"""Writes the Handle way: Handle's Basic authentication, HS_ADMIN permissions, custody.

A real registrar on loopback hosts the city; the traffic department (TRAFFIC) is
delegated with an HS_ADMIN value naming its admin ``300:TRAFFIC/ADMIN``, whose
record holds the salted hash of a secret key (HS_SECKEY). pyhandle, the EUDAT
Handle client, is pointed at the registrar with nothing but its URL, username and
password, and runs its read and write paths; every refusal changes nothing in the
log; and the log proves who authorised each write: the grant signed by the
department's key, and each custodial leaf naming the admin that authenticated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pyhandle.client.resthandleclient import RESTHandleClient
from pyhandle.handleexceptions import HandleAlreadyExistsException, HandleNotFoundException
from registrar_harness import (
    CITY,
    TRAFFIC,
    RegistrarSpec,
    audit,
    checkpoint_bytes,
    cli,
    key_path,
    logged_leaf,
    make_registrar,
    new_key,
    replay,
    serve_in_process,
    sign,
    submit,
    version,
)

from cityid import handle
from cityid.identifiers import Identifier
from cityid.keys import SigningKey
from cityid.ops import Custodial, Custody, Delegate, Mint, MintItem, SignedOperation, Update, now
from cityid.records import Record, Value
from registrar.handle_auth import seckey_value

pytestmark = pytest.mark.timeout(120)

ORIGIN = "sjz.cityid.test/log"
ADMIN_HANDLE = f"{TRAFFIC}/ADMIN"
ADMIN = f"300:{ADMIN_HANDLE}"
OTHER = f"300:{TRAFFIC}/CLERK"  # authenticates, but no HS_ADMIN names it
SECRET = "correct horse battery staple"


def admin_value(index: int, admin_handle: str, permissions: str) -> Value:
    data = {"handle": admin_handle, "index": 300, "permissions": permissions}
    return Value.make(index, "HS_ADMIN", data, timestamp=now())


@dataclass
class World:
    session: aiohttp.ClientSession
    spec: RegistrarSpec
    traffic: SigningKey
    custody: SigningKey
    keys: Path
    grants: int = 0

    @property
    def url(self) -> str:
        return self.spec.url

    async def grant(self, *admins: str) -> None:
        op = Custody(TRAFFIC, self.grants, self.custody.public_key, tuple(sorted(admins)), now())
        await submit(self.session, self.url, [sign(op, self.traffic)])
        self.grants += 1

    async def request(
        self, method: str, ident: str, user: str | None, secret: str = SECRET, **kw: Any
    ) -> tuple[int, dict[str, Any], Any]:
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["Authorization"] = basic(user, secret)
        async with self.session.request(
            method, f"{self.url}/api/handles/{ident}", headers=headers, **kw
        ) as r:
            return r.status, await r.json(content_type=None), r.headers

    def pyhandle(self, user: str = ADMIN) -> RESTHandleClient:
        return RESTHandleClient.instantiate_with_username_and_password(
            self.url, user, SECRET, HTTPS_verify=False, handleowner=user
        )


def setup_leaves(
    city: SigningKey, traffic: SigningKey, custody: SigningKey | None = None
) -> list[bytes]:
    """TRAFFIC delegated with an HS_ADMIN for ADMIN; ADMIN and CLERK minted with the hash of
    SECRET; and, given ``custody``, ADMIN's custody granted to it."""
    t = now()
    prefix_record = Record.of([admin_value(100, ADMIN_HANDLE, "111111111111")])
    seckey = Value.make(300, "HS_SECKEY", seckey_value(SECRET, iterations=1000), timestamp=t)
    admins = (MintItem("ADMIN", 0, Record.of([seckey])), MintItem("CLERK", 0, Record.of([seckey])))
    leaves = [
        sign(Delegate(TRAFFIC, 0, traffic.public_key, None, prefix_record, t), city),
        sign(Mint(TRAFFIC, admins, t), traffic),
    ]
    if custody is not None:
        leaves.append(sign(Custody(TRAFFIC, 0, custody.public_key, (ADMIN,), t), traffic))
    return leaves


def with_custody_key(spec: RegistrarSpec) -> SigningKey:
    """A custodial key for ``spec``'s registrar, named in its registrar.toml."""
    custody = new_key("custody", spec.directory)
    cfg = spec.config()
    cfg.custody_key_file = spec.directory / "custody.key"
    cfg.save()
    return custody


def basic(user: str, secret: str = SECRET) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


@contextlib.asynccontextmanager
async def world(tmp_path: Path, *, granted: bool = True) -> AsyncIterator[World]:
    keys = tmp_path / "keys"
    city, traffic = new_key("city", keys), new_key("traffic", keys)
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN, admin=city)
    custody = with_custody_key(spec)
    async with serve_in_process(spec), aiohttp.ClientSession() as session:
        await submit(session, spec.url, setup_leaves(city, traffic))
        w = World(session, spec, traffic, custody, keys)
        if granted:
            await w.grant(ADMIN, OTHER)
        yield w
        replay(spec)
        audit(spec)


def codes(status: int, body: dict[str, Any], want: int) -> None:
    assert body["responseCode"] == want, body
    assert status == handle.HTTP_STATUS[want], (status, body)


async def test_pyhandle_reads_and_writes_through_the_registrar(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bus, lower = f"{TRAFFIC}/BUS-STOP-17", f"{TRAFFIC}/bus-stop-18".lower()

        def writes() -> None:
            client = w.pyhandle()
            assert client.register_handle(bus, "https://bus.example/17") == bus
            with pytest.raises(HandleAlreadyExistsException):
                client.register_handle(bus, "https://bus.example/other")
            assert client.get_value_from_handle(bus, "URL") == "https://bus.example/17"
            client.modify_handle_value(bus, URL="https://bus.example/17b", EMAIL="ops@bus.example")
            record = client.retrieve_handle_record(bus)
            assert record["URL"] == "https://bus.example/17b"
            assert record["EMAIL"] == "ops@bus.example"
            client.delete_handle_value(bus, "EMAIL")
            assert "EMAIL" not in client.retrieve_handle_record(bus)
            assert client.register_handle_kv(lower, URL="https://bus.example/18") == lower
            assert client.retrieve_handle_record_json(lower)["handle"] == lower
            client.delete_handle(lower)
            assert client.retrieve_handle_record_json(lower) is None
            with pytest.raises(HandleNotFoundException):
                client.delete_handle(lower)

        await asyncio.to_thread(writes)
        # Every write is in the log: signed by the custodial key, naming the admin.
        log = w.spec.open_log()
        custodial = [
            s
            for s in map(SignedOperation.decode, log.entries(0, log.size))
            if isinstance(s.op, Custodial)
        ]
        assert len(custodial) == 5, [s.op for s in custodial]  # 2 mints, 2 updates, 1 delete
        assert {s.signer for s in custodial} == {w.custody.public_key}
        assert {s.op.admin for s in custodial} == {ADMIN}
        assert isinstance(custodial[1].op.op, Update)
        assert await version(w.session, w.url, Identifier(TRAFFIC, "BUS-STOP-17")) == (3, True)


async def test_refusals_change_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bus = f"{TRAFFIC}/BUS-1"
        values = [{"index": 1, "type": "URL", "data": "https://bus.example/1"}]
        status, body, _ = await w.request("PUT", bus, ADMIN, json=values)
        assert status == 201, body
        cp = await checkpoint_bytes(w.session, w.url)
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/2"}]

        # No credentials: 401 (402), offering both schemes this registrar takes.
        status, body, h = await w.request("PUT", bus, None, json=new)
        codes(status, body, handle.AUTHENTICATION_NEEDED)
        assert h.getall("WWW-Authenticate") == ['Basic realm="cityid"', "CityID-Ed25519"]
        # A wrong secret and an unknown admin: the same 403 (403), naming neither.
        wrong = ((ADMIN, "wrong"), (f"300:{TRAFFIC}/NOBODY", SECRET),
                 (f"301:{ADMIN_HANDLE}", SECRET), ("300:10.1000/X", SECRET))  # fmt: skip
        for user, secret in wrong:
            status, body, _ = await w.request("PUT", bus, user, secret, json=new)
            codes(status, body, handle.AUTHENTICATION_FAILED)
            assert body["rule"] == "authentication-failed", body
        for user in ("ADMIN", "x:" + ADMIN_HANDLE):
            status, body, _ = await w.request("PUT", bus, user, json=new)
            assert (status, body["rule"]) == (403, "auth-syntax"), body
        # Authenticated, but no HS_ADMIN value names it: 403 (401).
        status, body, _ = await w.request("PUT", bus, OTHER, json=new)
        codes(status, body, handle.INSUFFICIENT_PERMISSIONS)
        assert body["rule"] == "insufficient-permissions" and "modify value" in body["message"]
        # A malformed handle, a malformed value, a prefix record.
        status, body, _ = await w.request("PUT", f"{TRAFFIC}/BAD*ID", ADMIN, json=new)
        codes(status, body, handle.INVALID_HANDLE)
        evil = [{"index": 1, "type": "URL", "data": "javascript:alert(1)"}]
        status, body, _ = await w.request("PUT", bus, ADMIN, json=evil)
        codes(status, body, handle.INVALID_VALUE)
        status, body, _ = await w.request("PUT", f"0.NA/{TRAFFIC}", ADMIN, json=new)
        assert (status, body["rule"]) == (400, "use-delegate"), body
        # Deleting a value that is not there: Handle's 400 with responseCode 200.
        status, body, _ = await w.request("DELETE", f"{bus}?index=9", ADMIN)
        assert (status, body["responseCode"]) == (400, handle.VALUES_NOT_FOUND), body
        status, body, _ = await w.request("PUT", f"{bus}?overwrite=false", ADMIN, json=new)
        codes(status, body, handle.HANDLE_ALREADY_EXISTS)
        assert await checkpoint_bytes(w.session, w.url) == cp
        assert await version(w.session, w.url, Identifier(TRAFFIC, "BUS-1")) == (1, True)


async def test_repeated_failures_are_slowed(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bus = f"{TRAFFIC}/BUS-1"
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/2"}]
        statuses = []
        for _ in range(12):
            status, body, h = await w.request("PUT", bus, ADMIN, "wrong", json=new)
            statuses.append(status)
        assert statuses[:10] == [403] * 10 and statuses[10:] == [429, 429], statuses
        assert body["responseCode"] == handle.SERVER_TOO_BUSY and int(h["Retry-After"]) >= 1
        # Even the right secret waits: the client is slowed, not the admin's secret guessed.
        status, _, _ = await w.request("PUT", bus, ADMIN, json=new)
        assert status == 429
        assert await version(w.session, w.url, Identifier(TRAFFIC, "BUS-1")) == (0, False)


async def test_custody_must_be_granted_and_revocation_stops_it(tmp_path: Path) -> None:
    async with world(tmp_path, granted=False) as w:
        bus = f"{TRAFFIC}/BUS-1"
        values = [{"index": 1, "type": "URL", "data": "https://bus.example/1"}]
        cp = await checkpoint_bytes(w.session, w.url)
        status, body, _ = await w.request("PUT", bus, ADMIN, json=values)
        codes(status, body, handle.INSUFFICIENT_PERMISSIONS)
        assert body["rule"] == "no-custody" and "grants it with a signed custody" in body["message"]
        assert await checkpoint_bytes(w.session, w.url) == cp

        # The owner grants with the CLI, to the custodial key the registrar announces.
        key = str(key_path(w.keys, w.traffic))
        done = await asyncio.to_thread(
            cli, "handle", "grant", str(TRAFFIC), "--key", key, "--registrar", w.url,
            "--admin", ADMIN.lower(),  # the same admin, however spelt
        )  # fmt: skip
        assert done.returncode == 0 and f"custody for {ADMIN}" in done.stdout, done.stderr
        status, body, _ = await w.request("PUT", bus, ADMIN, json=values)
        assert status == 201, body
        leaf = SignedOperation.decode(logged_leaf(w.spec, body["index"]))
        assert isinstance(leaf.op, Custodial) and leaf.op.admin == ADMIN
        assert leaf.signer == w.custody.public_key

        done = await asyncio.to_thread(
            cli, "handle", "revoke", str(TRAFFIC), "--key", key, "--registrar", w.url
        )
        assert done.returncode == 0 and "custody revoked" in done.stdout, done.stderr
        cp = await checkpoint_bytes(w.session, w.url)
        status, body, _ = await w.request("DELETE", bus, ADMIN)
        assert (status, body["rule"]) == (403, "no-custody"), body
        assert await checkpoint_bytes(w.session, w.url) == cp
        # The owner's own signed writes are untouched by custody.
        assert await version(w.session, w.url, Identifier(TRAFFIC, "BUS-1")) == (1, True)


async def test_index_overwrite_and_mint_new_suffix(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bus = f"{TRAFFIC}/BUS-1"
        values = [
            {"index": 1, "type": "URL", "data": "https://bus.example/1"},
            {"index": 2, "type": "DESC", "data": "Bus stop 1"},
        ]
        status, body, _ = await w.request("PUT", bus, ADMIN, json=values)
        assert status == 201, body

        async def types() -> dict[int, str]:
            status, body, _ = await w.request("GET", bus, None)
            assert status == 200 and body["handle"] == bus, body
            return {v["index"]: v["data"]["value"] for v in body["values"]}

        # The creator got an HS_ADMIN value, as HANDLE.NET gives one (index 100).
        assert (await types())[100]["handle"] == ADMIN_HANDLE  # type: ignore[index]
        # index=: only those values are written, the others kept.
        new = [{"index": 2, "type": "DESC", "data": "Stop 1"}, {"index": 3, "type": "EMAIL",
               "data": "ops@bus.example"}]  # fmt: skip
        status, body, _ = await w.request("PUT", f"{bus}?index=2", ADMIN, json=new)
        assert status == 200, body
        got = await types()
        assert (got[1], got[2], 3 in got) == ("https://bus.example/1", "Stop 1", False)
        # overwrite=false with index=: an existing value is a conflict, a new one is added.
        status, body, _ = await w.request("PUT", f"{bus}?index=2&overwrite=false", ADMIN, json=new)
        assert (status, body["rule"]) == (409, "value-exists"), body
        status, body, _ = await w.request("PUT", f"{bus}?index=3&overwrite=false", ADMIN, json=new)
        assert status == 200 and (await types())[3] == "ops@bus.example", body
        # DELETE ?index= removes only those values.
        status, body, _ = await w.request("DELETE", f"{bus}?index=3&index=2", ADMIN)
        assert status == 200 and sorted(await types()) == [1, 100], body

        # mintNewSuffix: the registrar names the handle, with a check character.
        made = []
        for _ in range(2):
            status, body, _ = await w.request(
                "PUT", f"{TRAFFIC}/?mintNewSuffix=true", ADMIN, json=values[:1]
            )
            assert status == 201, body
            made.append(body["handle"])
        assert made[0] != made[1] and all(m.startswith(f"{TRAFFIC}/H") for m in made)
        for m in made:
            ident = Identifier(TRAFFIC, m.partition("/")[2])
            assert await version(w.session, w.url, ident) == (1, True)
