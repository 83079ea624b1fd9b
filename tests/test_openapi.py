"""The resolver's OpenAPI document (``resolver/openapi.json``): served, valid, complete, true.

A real Valkey and a real resolver on a loopback port, filled by ``populate`` (what sync
writes for a small department: redirects, a record without URL, an IRI, a deleted
identifier, a range mint, a prefix record), with its log served for real from a
``ledger.storage.Log`` so proofs answer 200 rather than 503. Then:

* the document is served as shipped, parses, is a valid OpenAPI 3.1 document (the
  meta-schema check schemathesis applies), every ``$ref`` in it resolves, and it
  describes every route of the app's router (read from the router, not listed here)
  and nothing the router does not serve;
* schemathesis runs against the live server, once as a browser or curl asks
  (``Accept: */*``: redirects and HTML pages) and once as an API client
  (``Accept: application/json``), with a fixed seed, no redirect followed (records
  point at hosts that are not ours) and these checks: no 5xx; statuses, content
  types, bodies and headers as documented; requests outside the schema refused;
  undocumented methods 405 with ``Allow``. ``positive_data_acceptance`` is left out
  on purpose: the schema cannot say that a dotted suffix is valid only under
  ``0.NA``, nor that ``type`` and ``index`` filters count together (at most 32), nor
  that a malformed ``q`` gets the explorer's 400 page, all of which it documents.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs  # schemathesis's own JSON Schema validator
import pytest
import schemathesis
from test_resolver_http import LOG_KEY, ORIGIN, populate, wait_subscribed

from ledger.http import serve_app, tiles_app
from ledger.storage import Log
from resolver.http import Resolver, ServeOptions
from resolver.server import HttpServer, start_http
from resolver.store import Cursor, Store

pytestmark = pytest.mark.timeout(180)

EXAMPLE = "MA.156.1301.02/A0000000U"  # in populate's range mint: A, 7 digits, 0..999
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
)
MAX_EXAMPLES = 15
SEED = 20261123


@dataclass
class Live:
    base: str
    server: HttpServer


@pytest.fixture
async def live(redis_db: str, tmp_path: Path) -> AsyncIterator[Live]:
    log = Log.create(tmp_path / "log", LOG_KEY)
    log.append([b"leaf %d" % i for i in range(11)])  # populate's entries sit at leaves 2..10
    try:
        async with serve_app(tiles_app(log.directory)) as log_url:
            store = await Store.connect(redis_db)
            writer = store.writer()
            await writer.prepare()
            await writer.set_ready()  # as sync says once caught up: a miss is final
            await populate(writer)
            # populate's cursor names a log nobody serves: point it at this one.
            cursor = Cursor(
                ORIGIN, log.size, log.root, log.checkpoint_note, log.size, log_url,
                str(LOG_KEY.verifier),
            )  # fmt: skip
            await writer.apply([], cursor)
            resolver = Resolver(store, ServeOptions())
            server = await start_http(resolver, "127.0.0.1", 0)
            await wait_subscribed(redis_db)
            try:
                yield Live(f"http://127.0.0.1:{server.port}", server)
            finally:
                await server.close()
                await resolver.close()
                await store.close()
    finally:
        log.close()


# -- the document -------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _pointer(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref}: only local references"
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _examples(doc: Any) -> Iterator[tuple[str, Any, Any]]:
    """(where, schema, example) for every JSON example the document gives."""
    for name, schema in doc["components"]["schemas"].items():
        for i, ex in enumerate(schema.get("examples", [])):
            yield f"schemas/{name}/examples/{i}", schema, ex
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, resp in op["responses"].items():
                resp = _pointer(doc, resp["$ref"]) if "$ref" in resp else resp
                for media, content in resp.get("content", {}).items():
                    if media == "application/json" and "example" in content:
                        yield f"{method} {path} {status}", content["schema"], content["example"]


def _validator(doc: Any, schema: Any) -> Any:
    # The document is the root, so the schema's #/components/... references resolve.
    return jsonschema_rs.Draft202012Validator({**doc, "allOf": [schema]})


def _doc_path(canonical: str) -> str:
    """An aiohttp resource's path as the document writes it: ``{id}`` is two parameters."""
    return canonical.replace("{id}", "{prefix}/{suffix}")


async def test_document_is_served_valid_and_describes_every_route(live: Live) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{live.base}/openapi.json") as r:
            assert r.status == 200 and r.content_type == "application/json"
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert re.search(r"max-age=\d+", r.headers["Cache-Control"])
            raw = await r.read()
            etag = r.headers["ETag"]
        async with s.get(f"{live.base}/openapi.json", headers={"If-None-Match": etag}) as r:
            assert r.status == 304 and await r.read() == b""
        async with s.head(f"{live.base}/openapi.json") as r:
            assert r.status == 200 and r.headers["ETag"] == etag
    assert raw == resources.files("resolver").joinpath("openapi.json").read_bytes()

    doc = json.loads(raw)
    assert doc["openapi"].startswith("3.1.")
    assert [s["url"] for s in doc["servers"]] == ["/"]
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for ref in _refs(doc):
        _pointer(doc, ref)
    for name, schema in doc["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), f"components/schemas/{name}"
    checked = 0
    for where, schema, example in _examples(doc):
        errors = [e.message for e in _validator(doc, schema).iter_errors(example)]
        assert not errors, (where, errors)
        checked += 1
    assert checked >= 5, "the document's JSON examples were not found"
    ops = [op for item in doc["paths"].values() for m, op in item.items() if m != "parameters"]
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    assert EXAMPLE.split("/") == [
        doc["components"]["parameters"]["prefix"]["example"],
        doc["components"]["parameters"]["suffix"]["example"],
    ]

    # Every route of the app's router is in the document, with its methods; and every
    # path of the document is a route. The catch-all (any method, any path) is the
    # middleware's way to answer OPTIONS and 405 everywhere: every path has OPTIONS.
    router = live.server.runner.app.router
    routed: dict[str, set[str]] = {}
    for resource in router.resources():
        methods = {route.method.lower() for route in resource}
        if "*" in methods:
            continue
        routed.setdefault(_doc_path(resource.canonical), set()).update(methods)
    assert routed, "no routes read from the router"
    assert {"/{prefix}/{suffix}", "/api/handles/{prefix}/{suffix}", "/openapi.json"} <= set(routed)
    paths = doc["paths"]
    missing = sorted(set(routed) - set(paths))
    assert not missing, f"routes missing from resolver/openapi.json: {missing}"
    unrouted = sorted(set(paths) - set(routed))
    assert not unrouted, f"documented paths the app does not route: {unrouted}"
    for path, methods in routed.items():
        documented = set(paths[path]) - {"parameters"}
        assert methods | {"options"} == documented, (path, methods, documented)


async def test_a_line_break_in_an_identifier_is_still_answered_as_documented(live: Live) -> None:
    """Found by a longer schemathesis run (-n 150, seed 2): the routes' ``{id:.+}`` did not
    match across a %0A, so such a path was unrouted, a 404 without the Handle body."""
    raw = json.loads(resources.files("resolver").joinpath("openapi.json").read_bytes())
    error = _validator(raw, {"$ref": "#/components/schemas/HandleError"})
    async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as s:
        for path in (
            "/%C2%AE%0Az/s",
            "/MA%0A.156/X",
            "/api/handles/MA%0A/X",
            "/api/proofs/MA%0A/X",
        ):
            async with s.get(live.base + path, allow_redirects=False) as r:
                body = await r.json()
                # /api/handles says it as HANDLE.NET does: no such handle (404, code 100).
                want = 404 if path.startswith("/api/handles/") else 400
                assert r.status == want and body["rule"] == "node-charset", (path, body)
                error.validate(body)
        # Surrounding white space is ignored, a line break included.
        async with s.get(f"{live.base}/{EXAMPLE}%0A", allow_redirects=False) as r:
            assert r.status == 200 and (await r.json())["handle"] == EXAMPLE
        async with s.get(f"{live.base}/api/proofs/{EXAMPLE}") as r:
            assert r.status == 200 and (await r.text()).startswith("c2sp.org/tlog-proof@v1\n")


# -- the live server against it -------------------------------------------------------------


def _schemathesis(base: str, accept: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Only the server under test is asked: loopback, no proxy, no redirect followed.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env |= {"NO_PROXY": "*", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
        "--checks", ",".join(CHECKS),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--max-redirects", "0",
        "--request-timeout", "10",
        "--workers", "1",
        "--generation-database", "none",
        "--header", f"Accept: {accept}",
        "--no-color",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=150)


@pytest.mark.parametrize("accept", ["*/*", "application/json"], ids=["browser", "json"])
async def test_schemathesis_finds_nothing(live: Live, accept: str, tmp_path: Path) -> None:
    # In a thread: this loop keeps serving while the child sends its requests.
    proc = await asyncio.to_thread(_schemathesis, live.base, accept, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    tested = re.search(r"Tested:\s+(\d+)", out)
    generated = re.search(r"(\d+) generated", out)
    assert tested and generated, out
    paths = json.loads(resources.files("resolver").joinpath("openapi.json").read_bytes())["paths"]
    n_ops = sum(len(set(item) - {"parameters"}) for item in paths.values())
    # Every operation but GET /openapi.json, which schemathesis leaves out as the
    # document it loaded (checked in the test above).
    assert int(tested.group(1)) == n_ops - 1, out
    assert int(generated.group(1)) >= 10 * n_ops, out
