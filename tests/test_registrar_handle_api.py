"""The Handle-style write API: PUT/DELETE /api/handles/{id} with a signature header.

The client signs exactly the operation the server rebuilds from the request
(``registrar/app.py put_handle``): for a new identifier
``Mint(prefix, (MintItem(suffix, prev, values_from_json(body, timestamp=t)),), t)``,
for an existing one ``Update(ident, prev, values_from_json(body, timestamp=t), t)``,
and ``Delete(ident, prev, t)``, where ``prev`` is the ``If-Match`` version or
else the current one. The statuses and response codes are those of
``cityid/handle.py`` (HANDLE.NET 9's REST API).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from registrar_harness import (
    CITY,
    TRAFFIC,
    URBAN,
    RegistrarSpec,
    audit,
    checkpoint_bytes,
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
from cityid.identifiers import Identifier, parse_identifier
from cityid.keys import SigningKey
from cityid.ops import Delegate, Delete, Mint, MintItem, SignedOperation, Update, now
from cityid.records import Record, values_from_json
from registrar.auth import auth_header

pytestmark = pytest.mark.timeout(60)

ORIGIN = "sjz.cityid.test/log"
ID = f"{TRAFFIC}/BUS-STOP-17"

VALUES: list[dict[str, Any]] = [
    {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://bus.example/17"}},
    {"index": "2", "type": "GEO", "data": "38.0428,114.5149"},  # bare string, index as text
    {"index": 3, "type": "DESC", "data": {"format": "string", "value": "Bus stop 17"}},
    {
        "index": "100",
        "type": "HS_ADMIN",
        "data": {
            "format": "admin",
            "value": {
                "handle": "0.NA/MA.156.1301.02",
                "index": "200",
                "permissions": "011111110011",
            },
        },
    },
]


@dataclass
class Api:
    session: aiohttp.ClientSession
    spec: RegistrarSpec
    traffic: SigningKey
    urban: SigningKey

    @property
    def url(self) -> str:
        return self.spec.url

    def signed_header(
        self, method: str, ident: str, body: Any, prev: int, alive: bool, key: SigningKey, t: int
    ) -> str:
        """The Authorization header over the operation the server will rebuild."""
        i = parse_identifier(ident)
        if method == "DELETE":
            op: Any = Delete(i, prev, t)
        else:
            record = values_from_json(body, timestamp=t)
            if alive:
                op = Update(i, prev, record, t)
            else:
                op = Mint(i.prefix, (MintItem(i.suffix, prev, record),), t)
        signed = SignedOperation.sign(op, key)
        return auth_header(key.public_key, signed.signature, t)

    async def put(
        self,
        ident: str,
        body: Any,
        *,
        key: SigningKey | None = None,
        if_match: int | None = None,
        query: str = "",
        t: int | None = None,
        raw: bytes | None = None,
        auth: str | None = "sign",
    ) -> tuple[int, dict[str, Any], Any]:
        t = now() if t is None else t
        headers = {"Content-Type": "application/json"}
        if auth == "sign":
            current, alive = await version(self.session, self.url, ident)
            prev = current if if_match is None else if_match
            headers["Authorization"] = self.signed_header(
                "PUT", ident, body, prev, alive, key or self.traffic, t
            )
        elif auth is not None:
            headers["Authorization"] = auth
        if if_match is not None:
            headers["If-Match"] = f'"v{if_match}"'
        data = json.dumps(body).encode() if raw is None else raw
        async with self.session.put(
            f"{self.url}/api/handles/{ident}{query}", data=data, headers=headers
        ) as r:
            return r.status, await r.json(content_type=None), r.headers

    async def delete(
        self, ident: str, *, key: SigningKey | None = None, auth: str | None = "sign"
    ) -> tuple[int, dict[str, Any]]:
        t = now()
        headers = {}
        if auth == "sign":
            current, alive = await version(self.session, self.url, ident)
            headers["Authorization"] = self.signed_header(
                "DELETE", ident, None, current, alive, key or self.traffic, t
            )
        elif auth is not None:
            headers["Authorization"] = auth
        async with self.session.delete(f"{self.url}/api/handles/{ident}", headers=headers) as r:
            return r.status, await r.json(content_type=None)

    def logged(self, index: int) -> SignedOperation:
        return SignedOperation.decode(logged_leaf(self.spec, index))


@contextlib.asynccontextmanager
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    keys = tmp_path / "keys"
    city, traffic, urban = new_key("city", keys), new_key("traffic", keys), new_key("urban", keys)
    spec = make_registrar(tmp_path / "city", CITY, ORIGIN, admin=city)
    async with serve_in_process(spec), aiohttp.ClientSession() as session:
        t = now()
        await submit(
            session,
            spec.url,
            [
                sign(Delegate(TRAFFIC, 0, traffic.public_key, None, Record(()), t), city),
                sign(Delegate(URBAN, 0, urban.public_key, None, Record(()), t), city),
            ],
        )
        yield Api(session, spec, traffic, urban)
        replay(spec)
        audit(spec)


def unchecked_auth(key: SigningKey) -> str:
    """A well-formed header whose signature is never reached (the request fails before)."""
    return auth_header(key.public_key, bytes(64), now())


def codes(status: int, body: dict[str, Any], want_code: int) -> None:
    """The body's responseCode is ``want_code`` and the status is the one Handle gives it."""
    assert body["responseCode"] == want_code, body
    assert status == handle.HTTP_STATUS[want_code], (status, body)


async def test_create_overwrite_delete(tmp_path: Path) -> None:
    async with api(tmp_path) as a:
        # Create: 201, version 1, and the leaf holds what the client signed.
        t = now()
        status, body, headers = await a.put(ID, VALUES, t=t)
        assert status == 201, body
        assert body["responseCode"] == 1 and body["handle"] == ID and body["version"] == 1
        assert headers["ETag"] == '"v1"'
        signed = a.logged(body["index"])
        assert signed.signer == a.traffic.public_key
        op = signed.op
        assert isinstance(op, Mint) and op.items[0].suffix == "BUS-STOP-17"
        assert op.items[0].record == values_from_json(VALUES, timestamp=t)
        by_index = {v.index: v for v in op.items[0].record.values}
        assert by_index[2].data == "38.0428,114.5149"
        assert by_index[100].data == {
            "handle": "0.NA/MA.156.1301.02",
            "index": 200,
            "permissions": "011111110011",
        }
        assert await version(a.session, a.url, ID) == (1, True)

        # Overwrite with If-Match "v1": 200, version 2. The Handle body shape works too.
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/17b"}]
        status, body, headers = await a.put(ID, {"values": new}, if_match=1)
        assert (status, body["version"], headers["ETag"]) == (200, 2, '"v2"')
        op = a.logged(body["index"]).op
        assert isinstance(op, Update) and op.prev == 1 and op.record.urls() == [new[0]["data"]]

        # Overwrite without If-Match names the current version: 200, version 3.
        status, body, _ = await a.put(ID, new)
        assert (status, body["version"]) == (200, 3)

        # A stale If-Match is a conflict, and nothing is logged.
        cp = await checkpoint_bytes(a.session, a.url)
        status, body, _ = await a.put(ID, new, if_match=1)
        codes(status, body, handle.HANDLE_ALREADY_EXISTS)
        assert body["rule"] == "stale-version"
        # ?overwrite=false on an existing identifier: 409, responseCode 101.
        status, body, _ = await a.put(ID, new, query="?overwrite=false")
        codes(status, body, handle.HANDLE_ALREADY_EXISTS)
        assert status == 409 and body["rule"] == "already-exists"
        assert await checkpoint_bytes(a.session, a.url) == cp

        # ?overwrite=false on a new identifier creates it.
        status, body, _ = await a.put(f"{TRAFFIC}/BUS-STOP-18", new, query="?overwrite=false")
        assert status == 201, body

        # DELETE: 200, then the next DELETE finds nothing alive (404, responseCode 100).
        status, body = await a.delete(ID)
        assert status == 200 and body["responseCode"] == 1, body
        op = a.logged(body["index"]).op
        assert isinstance(op, Delete) and op.prev == 3
        assert await version(a.session, a.url, ID) == (4, False)
        cp = await checkpoint_bytes(a.session, a.url)
        status, body = await a.delete(ID)
        codes(status, body, handle.HANDLE_NOT_FOUND)
        assert body["rule"] == "deleted"
        assert await checkpoint_bytes(a.session, a.url) == cp

        # A deleted identifier can be created again, above its tombstone.
        status, body, _ = await a.put(ID, new)
        assert (status, body["version"]) == (201, 5)


async def test_refusals(tmp_path: Path) -> None:
    async with api(tmp_path) as a:
        status, body, _ = await a.put(ID, VALUES)
        assert status == 201
        cp = await checkpoint_bytes(a.session, a.url)
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/x"}]

        # Bad JSON: 400.
        status, body, _ = await a.put(ID, new, raw=b"{not json")
        assert status == 400 and body["rule"] == "json", body
        codes(status, body, handle.INVALID_VALUE)
        # Bad identifier: 400, responseCode 102.
        for bad in ("MA.156.1301.02/BAD!ID", "NO-SLASH", "MA..156/X"):
            status, body, _ = await a.put(bad, new, auth=None)
            codes(status, body, handle.INVALID_HANDLE)
            assert status == 400
        # A javascript: URL: 400, responseCode 202.
        evil = [{"index": 1, "type": "URL", "data": "javascript:alert(1)"}]
        status, body, _ = await a.put(ID, evil, auth=unchecked_auth(a.traffic), if_match=1)
        codes(status, body, handle.INVALID_VALUE)
        assert (status, body["rule"]) == (400, "url-scheme")
        # A signature by a sibling department's key: 403, and it names the key.
        status, body, _ = await a.put(ID, new, key=a.urban)
        codes(status, body, handle.INSUFFICIENT_PERMISSIONS)
        assert body["rule"] == "sibling-key"
        # A signature over something else (another time than the header says).
        t = now()
        good = a.signed_header("PUT", ID, new, 1, True, a.traffic, t)
        status, body, _ = await a.put(ID, new, auth=good.replace(f'time="{t}"', f'time="{t + 1}"'))
        codes(status, body, handle.AUTHENTICATION_FAILED)
        assert body["rule"] == "forged-signature"
        # A malformed header, and another scheme.
        status, body, _ = await a.put(ID, new, auth='CityID-Ed25519 key="x"')
        assert status == 403 and body["rule"] == "auth-syntax", body
        status, body, _ = await a.put(ID, new, auth="Bearer dXNlcjpwYXNz")
        assert status == 403 and body["rule"] == "auth-scheme", body
        # Handle's Basic scheme is taken (tests/test_registrar_handle_auth.py), "user:pass"
        # is not a Handle username.
        status, body, _ = await a.put(ID, new, auth="Basic dXNlcjpwYXNz")
        assert status == 403 and body["rule"] == "auth-syntax", body
        # A prefix record is created by delegation, not PUT.
        status, body, _ = await a.put(f"0.NA/{CITY}.07", new)
        codes(status, body, handle.INVALID_REQUEST)
        assert body["rule"] == "use-delegate"
        assert await checkpoint_bytes(a.session, a.url) == cp
        assert await version(a.session, a.url, ID) == (1, True)


async def test_missing_authorization_is_401_with_response_code_402(tmp_path: Path) -> None:
    async with api(tmp_path) as a:
        cp = await checkpoint_bytes(a.session, a.url)
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/x"}]
        status, body, _ = await a.put(ID, new, auth=None)
        assert body["rule"] == "authentication-needed"
        assert await checkpoint_bytes(a.session, a.url) == cp
        codes(status, body, handle.AUTHENTICATION_NEEDED)
        status, body = await a.delete(ID, auth=None)
        codes(status, body, handle.AUTHENTICATION_NEEDED)


async def test_delete_of_an_unknown_identifier_is_404(tmp_path: Path) -> None:
    async with api(tmp_path) as a:
        cp = await checkpoint_bytes(a.session, a.url)
        status, body = await a.delete(f"{TRAFFIC}/NEVER-WAS")
        assert await checkpoint_bytes(a.session, a.url) == cp
        codes(status, body, handle.HANDLE_NOT_FOUND)
        assert body["rule"] == "not-found"


async def test_identifier_case_and_echo(tmp_path: Path) -> None:
    async with api(tmp_path) as a:
        lower = ID.lower()
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/y"}]
        status, body, _ = await a.put(lower, new)
        assert status == 201 and body["handle"] == ID  # stored and answered in upper case
        assert await version(a.session, a.url, Identifier(TRAFFIC, "BUS-STOP-17")) == (1, True)


async def test_a_replayed_write_is_refused_as_stale_not_forged(tmp_path: Path) -> None:
    """The same request bytes sent again, after the identifier moved on: without If-Match
    the server rebuilds the operation at the current version, so the old signature did not
    verify and the refusal said forged-signature. It is a replay: stale-version, 409."""
    async with api(tmp_path) as a:
        new = [{"index": 1, "type": "URL", "data": "https://bus.example/r"}]
        t = now()
        create = a.signed_header("PUT", ID, VALUES, 0, False, a.traffic, t)
        status, body, _ = await a.put(ID, VALUES, auth=create)
        assert status == 201, body
        update = a.signed_header("PUT", ID, new, 1, True, a.traffic, t + 1)
        status, body, _ = await a.put(ID, new, auth=update)
        assert (status, body["version"]) == (200, 2), body
        cp = await checkpoint_bytes(a.session, a.url)

        for header, values, signed_for in ((update, new, 1), (create, VALUES, 0)):
            status, body, _ = await a.put(ID, values, auth=header)
            codes(status, body, handle.HANDLE_ALREADY_EXISTS)
            assert body["rule"] == "stale-version", body
            assert f"signed for version {signed_for}: a replay" in body["message"]
        assert await checkpoint_bytes(a.session, a.url) == cp  # nothing logged

        # A DELETE replayed after the identifier was made again.
        delete = a.signed_header("DELETE", ID, None, 2, True, a.traffic, t + 2)
        status, body = await a.delete(ID, auth=delete)
        assert status == 200, body
        status, body, _ = await a.put(ID, new, t=t + 3)
        assert (status, body["version"]) == (201, 4), body
        cp = await checkpoint_bytes(a.session, a.url)
        status, body = await a.delete(ID, auth=delete)
        codes(status, body, handle.HANDLE_ALREADY_EXISTS)
        assert body["rule"] == "stale-version", body

        # Not a replay, still a forgery: the signature is over other values.
        other = a.signed_header("PUT", ID, VALUES, 3, True, a.traffic, t + 4)
        status, body, _ = await a.put(ID, new, auth=other)
        codes(status, body, handle.AUTHENTICATION_FAILED)
        assert body["rule"] == "forged-signature"
        assert await checkpoint_bytes(a.session, a.url) == cp
        assert await version(a.session, a.url, ID) == (4, True)
