"""Applications for a child prefix: format, refusals, review, approval (real registrars).

A root registrar (``MA.156``) and a city registrar run on loopback; cities apply to
the root over HTTP and the CLI, a department applies to the city; the parent's
operator lists, approves and rejects with signed requests. After approval the
applicant mints under its new prefix with its own key. Every refusal is a 4xx
naming its rule, and leaves the store and the log as they were.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from registrar_harness import (
    CITY,
    ROOT,
    RegistrarSpec,
    checkpoint_bytes,
    cli,
    free_port,
    key_path,
    logged_leaf,
    make_registrar,
    new_key,
    serve_in_process,
    sign,
    submit,
)

from cityid.errors import SignatureError
from cityid.identifiers import Identifier, Prefix
from cityid.keys import SigningKey
from cityid.ops import Delegate, Mint, MintItem, SignedOperation, now
from cityid.records import Record, Value
from registrar.application_store import DB_NAME
from registrar.applications import (
    Application,
    ApplicationError,
    SelfHosting,
    check_division,
    delegation,
    is_delegation_of,
    parse_application,
    signed_json,
)
from registrar.apply_cli import ApplicationClient
from registrar.apply_http import DESK_KEY, RateLimiter
from registrar.review_auth import review_header

pytestmark = pytest.mark.timeout(120)

ROOT_ORIGIN = "root.cityid.test/log"
CITY_ORIGIN = "sjz.cityid.test/log"
BAODING = Prefix.parse("MA.156.1306")
TANGSHAN = Prefix.parse("MA.156.1302")


def application(key: SigningKey, **over: Any) -> Application:
    fields: dict[str, Any] = {
        "adcode": "130600", "name": "保定市", "contact_name": "Li Wei",
        "contact_email": "it@baoding.example", "contact_phone": "+86 312 555 0100",
        "admin_key": str(key.verifier), "time": now(),
    }  # fmt: skip
    fields.update(over)
    return parse_application({k: v for k, v in fields.items() if v is not None})


# -- the format (pure) -------------------------------------------------------------------------


def test_canonical_form_round_trips_and_is_signed_by_the_admin_key() -> None:
    key = SigningKey.generate("MA.156.1306-admin")
    app = application(key)
    assert app.node == BAODING and app.adcode == "130600000000"
    assert Application.decode(app.encode()) == app
    assert parse_application(app.to_json()) == app
    app.verify(app.sign(key))
    with pytest.raises(SignatureError) as e:
        app.verify(app.sign(SigningKey.generate("other")))
    assert e.value.rule == "bad-signature"
    # One signed application, one digest: what makes a resend idempotent.
    assert app.digest == application(key, time=app.time).digest
    assert app.digest != application(key, time=app.time + 1).digest


@pytest.mark.parametrize(
    ("over", "field", "rule"),
    [
        ({"adcode": "130632"}, "adcode", "adcode-level"),  # 安新县, a county
        ({"adcode": "130000", "name": "河北省"}, "adcode", "adcode-level"),  # a province
        ({"adcode": "139900"}, "adcode", "adcode-unknown"),
        ({"adcode": "13060"}, "adcode", "adcode-syntax"),
        ({"name": "Baoding"}, "name", "name-mismatch"),
        ({"node": "MA.156.1302"}, "node", "node-adcode"),
        ({"contact_email": "it-at-baoding"}, "contact_email", "email-syntax"),
        ({"contact_phone": "call me"}, "contact_phone", "phone-syntax"),
        ({"admin_key": "not+a+key"}, "admin_key", "vkey-format"),
        ({"webhook": "javascript:alert(1)"}, "webhook", "url-scheme"),
        ({"contact_name": "x" * 129}, "contact_name", "field-too-long"),
        ({"name": None}, "name", "missing-field"),
        ({"hosting": "self", "origin": "bd.example/log"}, "log_key", "missing-field"),
        ({"colour": "red"}, "colour", "unknown-field"),
    ],
)
def test_bad_fields_name_their_field_and_rule(over: dict[str, Any], field: str, rule: str) -> None:
    key = SigningKey.generate("k")
    with pytest.raises(ApplicationError) as e:
        check_division(application(key, **over))
    assert (e.value.field, e.value.rule) == (field, rule), e.value.message
    if rule == "adcode-level" and over["adcode"] == "130632":
        assert "安新县" in e.value.message and "130600 保定市" in e.value.message


def test_delegation_carries_the_application_and_the_table() -> None:
    key, log_key = SigningKey.generate("MA.156.1306-admin"), SigningKey.generate("bd.example/log")
    hosting = SelfHosting(
        "bd.example/log", log_key.verifier, "https://reg.bd.example", ("ns1.bd.example 192.0.2.1",)
    )
    app = replace(application(key), hosting=hosting)
    op = delegation(app, 0, 1_700_000_000)
    assert op.prefix == BAODING and op.key == key.public_key and op.origin == "bd.example/log"
    by_type = {v.type: v.data for v in op.record.values}
    assert by_type["NAME"] == "保定市"
    assert by_type["GEO"] == "38.874434,115.464589"  # the table's point for 130600000000
    assert by_type["CITYID_SITE"] == {
        "registrar": "https://reg.bd.example", "ledger": "https://reg.bd.example/log"
    }  # fmt: skip
    assert by_type["NS"] == "ns1.bd.example 192.0.2.1"
    assert is_delegation_of(op, app)
    assert not is_delegation_of(replace(op, key=log_key.public_key), app)


# -- over HTTP --------------------------------------------------------------------------------


@dataclass
class World:
    session: aiohttp.ClientSession
    root: RegistrarSpec
    city: RegistrarSpec
    root_key: SigningKey
    city_key: SigningKey
    keys: Path
    app: Any  # the root's aiohttp application (for its desk)

    async def post(self, body: Any, url: str | None = None) -> tuple[int, dict[str, Any]]:
        async with self.session.post(f"{url or self.root.url}/api/applications", json=body) as r:
            return r.status, await r.json()

    async def status(self, ticket: str, url: str | None = None) -> dict[str, Any]:
        async with self.session.get(f"{url or self.root.url}/api/applications/{ticket}") as r:
            assert r.status == 200
            return dict(await r.json())

    def rows(self, spec: RegistrarSpec | None = None) -> int:
        db = sqlite3.connect((spec or self.root).directory / DB_NAME)
        try:
            return int(db.execute("SELECT count(*) FROM applications").fetchone()[0])
        finally:
            db.close()


@contextlib.asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    keys = tmp_path / "keys"
    root_key, city_key = new_key("root-admin", keys), new_key("sjz-admin", keys)
    root = make_registrar(tmp_path / "root", ROOT, ROOT_ORIGIN, admin=root_key)
    city = make_registrar(tmp_path / "city", CITY, CITY_ORIGIN, admin=city_key)
    async with (
        serve_in_process(root) as running,
        serve_in_process(city),
        aiohttp.ClientSession() as session,
    ):
        ts = now()
        site = Record((Value.make(1, "HS_SITE", {"registrar": city.url}, timestamp=ts),))
        op = Delegate(CITY, 0, city_key.public_key, CITY_ORIGIN, site, ts)
        await submit(session, root.url, [sign(op, root_key)])
        app = running.runner.app
        yield World(session, root, city, root_key, city_key, keys, app)


async def test_apply_approve_mint(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bd = new_key("MA.156.1306-admin", w.keys)
        body = signed_json(application(bd), bd)
        status, first = await w.post(body)
        assert status == 201 and first["status"] == "pending" and first["node"] == str(BAODING)
        ticket = first["ticket"]
        assert len(ticket) >= 22
        # The same signed application again: the same ticket, nothing new stored.
        status, again = await w.post(body)
        assert (status, again["ticket"]) == (200, ticket) and w.rows() == 1
        shown = await w.status(ticket)
        assert "contact" not in json.dumps(shown) and "baoding.example" not in json.dumps(shown)

        async with ApplicationClient(w.root.url) as client:
            listed = await client.review_list(w.root_key, "pending")
            assert [a["ticket"] for a in listed["applications"]] == [ticket]
            full = await client.review_show(w.root_key, ticket)
            assert full["application"]["contact_email"] == "it@baoding.example"
            assert full["prev"] == 0
            decided = await client.approve(w.root_key, ticket)
        assert decided["status"] == "approved"
        shown = await w.status(ticket)
        leaf = SignedOperation.decode(logged_leaf(w.root, shown["leaf"]))
        assert isinstance(leaf.op, Delegate) and leaf.op.prefix == BAODING
        assert leaf.op.key == bd.public_key and leaf.signer == w.root_key.public_key
        assert shown["checkpoint"].startswith(ROOT_ORIGIN)

        # The applicant's key now writes under its prefix, on the root's registrar.
        ts = now()
        rec = Record((Value.make(1, "URL", "https://bd.example/1", timestamp=ts),))
        await submit(
            w.session, w.root.url, [sign(Mint(BAODING, (MintItem("A1", 0, rec),), ts), bd)]
        )


async def test_reject_then_apply_again(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        ts_key = new_key("MA.156.1302-admin", w.keys)
        app = application(ts_key, adcode="130200", name="唐山市")
        _, first = await w.post(signed_json(app, ts_key))
        async with ApplicationClient(w.root.url) as client:
            decided = await client.reject(w.root_key, first["ticket"], "send the mayor's letter")
            assert decided["status"] == "rejected"
            with pytest.raises(Exception) as e:  # a decision is final
                await client.approve(w.root_key, first["ticket"])
            assert getattr(e.value, "rule", "") == "already-decided"
        shown = await w.status(first["ticket"])
        assert shown["reason"] == "send the mayor's letter"
        again = replace(app, time=app.time + 1)
        status, second = await w.post(signed_json(again, ts_key))
        assert status == 201 and second["ticket"] != first["ticket"]


async def test_a_department_applies_to_its_city(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        water = new_key("sjz-water", w.keys)
        app = parse_application({
            "node": "MA.156.1301.08", "name": "Water supply", "contact_name": "Wang Fang",
            "contact_email": "water@sjz.example", "contact_phone": "+86 311 555 0108",
            "admin_key": str(water.verifier), "time": now(),
        })  # fmt: skip
        status, body = await w.post(signed_json(app, water), w.city.url)
        assert status == 201
        # The root's key holds no prefix on the city's registrar: it may not review there.
        async with ApplicationClient(w.city.url) as client:
            with pytest.raises(Exception) as e:
                await client.review_list(w.root_key)
            assert getattr(e.value, "status", 0) == 403
            await client.approve(w.city_key, body["ticket"])
        assert (await w.status(body["ticket"], w.city.url))["status"] == "approved"


async def test_refusals_store_nothing(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bd = new_key("MA.156.1306-admin", w.keys)
        _, pending = await w.post(signed_json(application(bd), bd))
        before = await checkpoint_bytes(w.session, w.root.url)

        async def refused(body: Any, status: int, rule: str, field: str | None = None) -> None:
            got, answer = await w.post(body)
            assert (got, answer.get("rule")) == (status, rule), answer
            if field is not None:
                assert answer["field"] == field
            assert w.rows() == 1

        other = new_key("other", w.keys)
        # already pending (another key), already delegated, key reused
        await refused(signed_json(application(other), other), 409, "already-pending")
        sjz = application(other, adcode="130100", name="石家庄市")
        await refused(signed_json(sjz, other), 409, "already-delegated")
        ts_app = application(bd, adcode="130200", name="唐山市")
        await refused(signed_json(ts_app, bd), 400, "key-in-use", "admin_key")
        city_key_app = application(w.city_key, adcode="130200", name="唐山市")
        await refused(signed_json(city_key_app, w.city_key), 400, "key-in-use", "admin_key")
        # a signature by another key than the admin key applied with
        forged = {**signed_json(ts_app, bd), "admin_key": str(other.verifier)}
        await refused(forged, 403, "bad-signature")
        # malformed fields, each named
        good = signed_json(application(other, adcode="130200", name="唐山市"), other)
        await refused({**good, "contact_email": "x@"}, 400, "email-syntax", "contact_email")
        await refused({**good, "contact_phone": "12"}, 400, "phone-syntax", "contact_phone")
        await refused({**good, "admin_key": "abc"}, 400, "vkey-format", "admin_key")
        await refused({**good, "adcode": "130203"}, 400, "adcode-level", "adcode")
        await refused({**good, "name": "n" * 200}, 400, "field-too-long", "name")
        # an oversized body is refused before it is read
        await refused({**good, "reason": "r" * 20_000}, 413, "too-large")
        # a child of a prefix this registrar does not host
        dept = application(other, node="MA.156.1301.09", adcode=None, name="Water")
        await refused(signed_json(dept, other), 404, "parent-not-hosted")
        assert await checkpoint_bytes(w.session, w.root.url) == before
        assert (await w.status(pending["ticket"]))["status"] == "pending"


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        w.app[DESK_KEY].rate = RateLimiter(limit=3)
        key = new_key("k", w.keys)
        body = signed_json(application(key), key)
        for _ in range(3):
            assert (await w.post(body))[0] in (200, 201)
        async with w.session.post(f"{w.root.url}/api/applications", json=body) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 3000
            assert (await r.json())["rule"] == "rate-limit"
        assert w.rows() == 1


async def test_review_needs_the_parent_key_signature(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bd = new_key("MA.156.1306-admin", w.keys)
        _, body = await w.post(signed_json(application(bd), bd))
        url = f"{w.root.url}/api/review/applications/{body['ticket']}"
        async with w.session.get(url) as r:
            assert (r.status, (await r.json())["rule"]) == (401, "authentication-needed")
        path = f"/api/review/applications/{body['ticket']}"
        cases = [
            (review_header(w.city_key, "GET", path, now()), 403, "not-parent-key"),
            (review_header(bd, "GET", path, now()), 403, "not-parent-key"),
            (review_header(w.root_key, "GET", path, now() - 3600), 403, "stale-request"),
            (review_header(w.root_key, "GET", path + "x", now()), 403, "bad-signature"),
        ]
        for header, status, rule in cases:
            async with w.session.get(url, headers={"Authorization": header}) as r:
                assert (r.status, (await r.json())["rule"]) == (status, rule)
        # A leaf that is not this application's delegation is refused, and nothing changes.
        before = await checkpoint_bytes(w.session, w.root.url)
        other = Delegate(TANGSHAN, 0, bd.public_key, None, Record(()), now())
        wrong = base64.b64encode(SignedOperation.sign(other, w.root_key).encode()).decode()
        raw = json.dumps({"leaf": wrong}).encode()
        header = review_header(w.root_key, "POST", path + "/approve", now(), raw)
        headers = {"Authorization": header, "Content-Type": "application/json"}
        async with w.session.post(url + "/approve", data=raw, headers=headers) as r:
            assert (r.status, (await r.json())["rule"]) == (400, "not-this-delegation")
        assert await checkpoint_bytes(w.session, w.root.url) == before
        assert (await w.status(body["ticket"]))["status"] == "pending"


async def test_cli_apply_status_list_approve(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        bd = new_key("MA.156.1306-admin", w.keys)
        reg = ["--registrar", w.root.url]

        def run(*args: str) -> str:
            # The CLI runs in a child process while this loop serves: off the loop.
            res = cli(*args)
            assert res.returncode == 0, res.stderr
            return res.stdout

        out = await asyncio.to_thread(
            run, "apply", *reg, "--key", str(key_path(w.keys, bd)), "--adcode", "130600",
            "--name", "保定市", "--contact-name", "Li Wei", "--contact-email",
            "it@baoding.example", "--contact-phone", "+86 312 555 0100",
        )  # fmt: skip
        ticket = out.split("ticket", 1)[1].split()[0]
        assert out.startswith("pending") and f"/api/applications/{ticket}" in out
        status_url = f"{w.root.url}/api/applications/{ticket}"
        out = await asyncio.to_thread(run, "apply", "status", status_url)
        assert out.startswith("pending   MA.156.1306")
        root_key = str(key_path(w.keys, w.root_key))
        out = await asyncio.to_thread(run, "applications", "list", "--key", root_key, *reg)
        assert ticket in out and "保定市" in out
        out = await asyncio.to_thread(run, "applications", "show", ticket, "--key", root_key, *reg)
        assert "it@baoding.example" in out
        out = await asyncio.to_thread(
            run, "applications", "approve", ticket, "--key", root_key, *reg
        )
        assert out.startswith("approved") and "leaf" in out
        bad = await asyncio.to_thread(
            cli, "apply", *reg, "--key", str(key_path(w.keys, bd)), "--adcode", "130632",
            "--name", "安新县", "--contact-name", "x", "--contact-email", "x@y.example",
            "--contact-phone", "+86 312 555 0100",
        )  # fmt: skip
        assert bad.returncode == 1 and "[rule: adcode-level]" in bad.stderr
        assert "Traceback" not in bad.stderr


async def test_a_self_hosted_city_is_followed_once_approved(tmp_path: Path, redis_db: str) -> None:
    """Baoding runs its own registrar and log; the resolver's sync follows that log from
    the delegation the root's approval writes (its HS_SITE and log key), not before."""
    from resolver.store import Store
    from resolver.sync import Sync

    async with world(tmp_path) as w:
        bd = new_key("MA.156.1306-admin", w.keys)
        own = make_registrar(tmp_path / "baoding", BAODING, "bd.cityid.test/log", admin=bd)
        async with serve_in_process(own):
            store = await Store.connect(redis_db)
            sync = Sync(
                store, f"{w.root.url}/log", w.root.vkey, (ROOT, w.root_key.public_key),
                poll_interval=0.05, resize_grace=0,
            )  # fmt: skip
            await sync.start()
            try:
                ts = now()
                rec = Record((Value.make(1, "URL", "https://bd.example/p/1", timestamp=ts),))
                await submit(
                    w.session, own.url, [sign(Mint(BAODING, (MintItem("P1", 0, rec),), ts), bd)]
                )
                app = application(
                    bd, hosting="self", origin=own.origin, log_key=str(own.vkey),
                    registrar_url=own.url, ns=["ns1.bd.example 192.0.2.1"],
                    reason="we run our own registry",
                )  # fmt: skip
                status, body = await w.post(signed_json(app, bd))
                assert status == 201 and body["hosting"] == "self"
                await asyncio.sleep(0.3)  # several polls: nothing delegates Baoding yet
                assert await store.lookup_prefix(BAODING) is None
                assert await store.lookup(Identifier(BAODING, "P1")) is None
                async with ApplicationClient(w.root.url) as client:
                    await client.approve(w.root_key, body["ticket"])
                t0 = asyncio.get_running_loop().time()
                while await store.lookup(Identifier(BAODING, "P1")) is None:
                    if asyncio.get_running_loop().time() - t0 > 30:
                        pytest.fail(f"Baoding's log not followed: {await store.status()}")
                    await asyncio.sleep(0.02)
                info = await store.prefix_info(BAODING)
                assert info is not None and info.host == own.origin
            finally:
                await sync.stop()
                await store.close()


async def test_webhook_is_told_with_retries_and_never_holds_the_decision(tmp_path: Path) -> None:
    from aiohttp import web

    from registrar.webhook import Webhooks

    got: list[dict[str, Any]] = []
    calls = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(2)  # longer than the delivery's timeout: a failed attempt
        if calls <= 2:
            return web.Response(status=503)
        got.append(await request.json())
        return web.Response(status=204)

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with world(tmp_path) as w:
            w.app[DESK_KEY].webhooks = Webhooks(delays=(0.05, 0.05, 0.05), timeout=0.5)
            bd = new_key("MA.156.1306-admin", w.keys)
            app = application(bd, webhook=f"http://127.0.0.1:{port}/hook")
            _, body = await w.post(signed_json(app, bd))
            async with ApplicationClient(w.root.url) as client:
                t0 = asyncio.get_running_loop().time()
                decided = await client.approve(w.root_key, body["ticket"])
                assert asyncio.get_running_loop().time() - t0 < 2  # not held by the hook
            t0 = asyncio.get_running_loop().time()
            while not got:
                assert asyncio.get_running_loop().time() - t0 < 10, f"{calls} calls"
                await asyncio.sleep(0.02)
            assert calls == 3 and got == [decided]
            assert "contact_email" not in got[0]
    finally:
        await runner.cleanup()


async def test_status_page_of_an_unknown_ticket(tmp_path: Path) -> None:
    async with world(tmp_path) as w, w.session.get(f"{w.root.url}/apply/nope") as r:
        assert r.status == 404 and r.content_type == "text/html"
        assert "No such application" in await r.text()
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
