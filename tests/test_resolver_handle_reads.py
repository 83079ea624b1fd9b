"""Reads the Handle way: the resolver's /api/handles as Handle clients expect it.

pyhandle (the EUDAT Handle client) reads through a real resolver on loopback, in
both front-end modes: the ``handle`` field echoes the request as spelt, a deleted
or impossible handle is Handle's 404 with responseCode 100 (the doi-style /{id}
keeps 410 and 400), and a write to the read-only resolver is a 405 whose body
carries a responseCode. pyhandle is synchronous (requests): it runs in a thread
while the server runs on this test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pyhandle.client.resthandleclient import RESTHandleClient
from pyhandle.handleexceptions import HandleNotFoundException
from test_resolver_http import (
    BUS,
    ORIGIN,
    PFX,
    TS,
    URL1,
    URL1_LOCATION,
    Served,
    _record,
    _serve,
)

from cityid import handle
from cityid.records import Value
from resolver.store import IdChange

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[True, False], ids=["fastpath", "aiohttp"])
async def served(request: pytest.FixtureRequest, redis_db: str) -> AsyncIterator[Served]:
    async for s in _serve(redis_db, request.param):
        yield s


async def test_the_handle_field_echoes_the_request(served: Served) -> None:
    lower = BUS.lower()
    for asked in (BUS, lower, lower):  # the last from the cache
        status, body = await served.json(f"/api/handles/{asked}")
        assert (status, body["responseCode"], body["handle"]) == (200, 1, asked), body
        status, body = await served.json(f"/api/handles/{asked}?type=URL&pretty")
        assert (status, body["handle"]) == (200, asked), body
        status, body = await served.json(f"/api/handles/{asked}?type=NOPE")
        assert (status, body["responseCode"], body["handle"]) == (200, 200, asked), body
        status, body = await served.json(f"/{asked}")  # the doi-style JSON too
        assert (status, body["handle"]) == (200, asked), body


async def test_deleted_is_404_on_the_handle_api_and_410_on_the_doi_path(served: Served) -> None:
    for query in ("", "?type=URL"):
        for _ in range(2):  # the second from the cache
            status, body = await served.json(f"/api/handles/{PFX}/GONE{query}")
            assert (status, body["responseCode"]) == (404, handle.HANDLE_NOT_FOUND), body
            assert body["rule"] == "deleted" and body["proof"] == f"/api/proofs/{PFX}/GONE"
    status, body = await served.json(f"/{PFX}/GONE")
    assert (status, body["responseCode"], body["deleted"]) == (410, 100, True)


async def test_impossible_handles_are_404_with_the_rule(served: Served) -> None:
    cases = {
        f"{PFX}/A/B": "no-slash",  # a '/' in the suffix
        "MA..156/X": "empty-node",
        "MA.156/A*B": "suffix-charset",
        "10.1000/182": "check-character",  # a DOI: a suffix that fails its check
    }
    for asked, rule in cases.items():
        status, body = await served.json(f"/api/handles/{asked}")
        assert (status, body["responseCode"]) == (404, handle.HANDLE_NOT_FOUND), body
        assert (body["handle"], body["rule"]) == (asked, rule) and body["message"], body
        status, body = await served.json(f"/{asked}")
        assert (status, body["responseCode"]) == (400, handle.INVALID_HANDLE), body
    # Another fault of the request, not of the handle, stays a 400.
    status, body = await served.json(f"/api/handles/{BUS}?index=one")
    assert (status, body["rule"]) == (400, "index")


async def test_405_bodies_carry_a_response_code(served: Served) -> None:
    for method in ("PUT", "DELETE", "POST"):
        for path in (f"/{BUS}", f"/api/handles/{BUS}"):
            async with served.session.request(method, served.base + path, data=b"{}") as r:
                body = await r.json()
                assert (r.status, body["responseCode"]) == (405, handle.INVALID_REQUEST), body


async def test_pyhandle_reads_the_resolver(served: Served) -> None:
    client = RESTHandleClient.instantiate_for_read_access(served.base)

    def reads() -> None:
        for asked in (BUS, BUS.lower()):
            record = client.retrieve_handle_record_json(asked)
            assert record is not None and record["handle"] == asked
            assert client.get_value_from_handle(asked, "URL") == URL1
            assert client.retrieve_handle_record(asked)["DESC.EN"] == "Bus stop"
        assert client.retrieve_handle_record_json(f"{PFX}/NOT-THERE") is None
        assert client.retrieve_handle_record_json(f"{PFX}/GONE") is None
        assert client.retrieve_handle_record_json("10.1000/182") is None
        with pytest.raises(HandleNotFoundException):
            client.get_value_from_handle(f"{PFX}/GONE", "URL")

    await asyncio.to_thread(reads)


async def test_urlappend_extends_the_redirect_on_its_own_site(served: Served) -> None:
    status, h, _ = await served.get(f"/{BUS}?urlappend=%26page%3D2")
    assert (status, h["Location"]) == (302, URL1_LOCATION + "&page=2")
    assert h["Cache-Control"] == "no-store" and "ETag" not in h
    # Appended text that would move the redirect to another host is not appended.
    record = _record(Value.make(1, "URL", "https://bare.example", timestamp=TS))
    await served.writer.apply([IdChange(PFX, "BARE", 1, False, ORIGIN, 20, record)])
    status, h, _ = await served.get(f"/{PFX}/BARE?urlappend=%40evil.example")
    assert (status, h["Location"]) == (302, "https://bare.example")
    status, h, _ = await served.get(f"/{PFX}/BARE?urlappend=/path")
    assert (status, h["Location"]) == (302, "https://bare.example/path")
    status, h, _ = await served.get(f"/{BUS}")  # the plain redirect is unchanged
    assert h["Location"] == URL1_LOCATION and h["ETag"] == '"v3-r"'


async def test_an_alias_is_a_301_to_its_target(served: Served) -> None:
    alias = _record(Value.make(1, "HS_ALIAS", BUS.lower(), timestamp=TS))
    broken = _record(Value.make(1, "HS_ALIAS", "not a handle", timestamp=TS))
    await served.writer.apply([
        IdChange(PFX, "OLD-STOP", 1, False, ORIGIN, 21, alias),
        IdChange(PFX, "ODD", 1, False, ORIGIN, 22, broken),
    ])  # fmt: skip
    for _ in range(2):  # the second from the cache
        status, h, _ = await served.get(f"/{PFX}/OLD-STOP")
        assert (status, h["Location"]) == (301, f"{served.resolver.base_url}/{BUS}")
    # The Handle API shows the alias as a value; ?noredirect shows the page.
    status, body = await served.json(f"/api/handles/{PFX}/OLD-STOP")
    assert status == 200 and body["values"][0]["type"] == "HS_ALIAS"
    assert (await served.get(f"/{PFX}/OLD-STOP?noredirect"))[0] == 200
    assert (await served.get(f"/{PFX}/ODD"))[0] == 200  # no handle named: the landing page
