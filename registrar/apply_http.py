"""Applications on every registrar: apply, read the status, review (HTTP).

Routes (added to the registrar's app by :func:`add_application_routes`):

* ``POST /api/applications``: a signed application (JSON, at most
  :data:`~registrar.applications.MAX_BODY` bytes). 201 with a new ticket, or
  200 with the same ticket when the same signed application comes again.
* ``GET /api/applications/{ticket}``: its status, decision, and once approved
  the delegation's leaf and checkpoint. Never the contact.
* Review, each signed with the parent's key (:mod:`registrar.review_auth`):
  ``GET /api/review/applications[?status=pending]``,
  ``GET /api/review/applications/{ticket}`` (everything, contact included, and
  the version a delegation must name), ``POST .../{ticket}/approve`` (body:
  the delegate leaf the parent's key signed), ``POST .../{ticket}/reject``
  (body: ``{"reason": ...}``).

Every refusal is a typed error (4xx with its ``rule``; a field's fault also
names the ``field``), raised before anything is stored. Approvals are written
through the registrar's own path (``Registrar.submit``: namespace check,
sequencer, witnesses) and made crash-safe by :mod:`registrar.application_store`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import secrets
import time
import urllib.parse
from typing import Any

from aiohttp import web

from cityid.errors import (
    AuthorityError,
    CityIdError,
    ConflictError,
    LedgerError,
    NotFoundError,
    OperationError,
    SignatureError,
)
from cityid.handle import error_body
from cityid.httpedge import EDGE_KEY, EdgeRefusal
from cityid.ops import SignedOperation

from . import apply_pages
from .application_store import APPROVED, PENDING, ApplicationStore, Ticket
from .applications import (
    FIELDS,
    MAX_BODY,
    Application,
    ApplicationError,
    check_division,
    is_delegation_of,
    parse_application,
    parse_signature,
)
from .core import Registrar
from .review_auth import check_review
from .webhook import Webhooks

log = logging.getLogger("cityid.registrar.applications")

RATE_WINDOW = 3600.0
#: Addresses the rate limiter remembers at most (the oldest are forgotten first).
RATE_ADDRESSES = 100_000
MAX_REVIEW_BODY = 70 * 1024  # a delegate leaf (at most 64 KiB) in base64, in JSON


class TooManyApplications(EdgeRefusal):
    rule = "rate-limit"
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimiter:
    """At most ``limit`` events per address in a sliding ``window`` (seconds)."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit, self.window = limit, window
        self.seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def hit(self, address: str, now: float) -> None:
        times = self.seen.pop(address, None) or collections.deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self.seen[address] = times
            wait = max(1, int(times[0] + self.window - now) + 1)
            raise TooManyApplications(
                f"{self.limit} applications an hour from one address at most: try again in "
                f"{wait} s",
                retry_after=wait,
            )
        times.append(now)
        self.seen[address] = times
        while len(self.seen) > RATE_ADDRESSES:
            self.seen.popitem(last=False)


class ApplicationDesk:
    """The applications of one registrar: its store, its checks, its approvals."""

    def __init__(self, reg: Registrar, *, rate: RateLimiter | None = None) -> None:
        self.reg = reg
        # Every attempt counts, refused ones too: each costs a signature check.
        self.rate = rate or RateLimiter(reg.config.applications_per_hour)
        self.webhooks = Webhooks()
        self._store: ApplicationStore | None = None

    @property
    def store(self) -> ApplicationStore:
        if self._store is None:
            raise OperationError("the application store is not open", rule="internal")
        return self._store

    def open(self) -> None:
        """Open the store and settle approvals a crash interrupted, from the log."""
        self._store = ApplicationStore.in_directory(self.reg.config.directory)
        self.reconcile()

    async def aclose(self) -> None:
        await self.webhooks.aclose()
        if self._store is not None:
            self._store.close()
            self._store = None

    def _decided(self, ticket: str) -> Ticket:
        """The ticket as decided; its webhook, if any, is told in the background."""
        t = self.store.get(ticket)
        webhook = Application.decode(t.canonical).webhook
        if webhook is not None:
            self.webhooks.send(webhook, status_json(t))
        return t

    def reconcile(self) -> None:
        settled = self.store.reconcile(
            self._find_leaf, self.reg.log.checkpoint_note.decode(), int(time.time())
        )
        for ticket, status in settled:
            if status == APPROVED:
                self._decided(ticket)
            log.info("application %s…: interrupted approval settled from the log: %s",
                     ticket[:6], status)  # fmt: skip

    def _find_leaf(self, leaf: bytes, start: int) -> int | None:
        end = self.reg.log.signed_size
        for index, entry in enumerate(self.reg.log.entries(start, end, signed=True), start):
            if entry == leaf:
                return index
        return None

    # -- applying ------------------------------------------------------------------------

    def submit(self, body: Any, client: str) -> tuple[Ticket, bool]:
        """Check and store an application; (its ticket, whether it is new)."""
        app = parse_application(body)
        check_division(app)  # a field's fault first: the form shows it next to the field
        signature = parse_signature(body)
        app.verify(signature)
        canonical = app.encode()
        same = self.store.by_digest(app.digest)
        if same is not None:
            return same, False
        self._check_parent(app)

        def still_free() -> None:
            self._check_free(app)

        ticket = self.store.add(
            secrets.token_urlsafe(16), app.digest, str(app.node), str(app.parent),
            app.admin_key.public_key, canonical, signature, client, int(time.time()),
            still_free,
        )  # fmt: skip
        log.info("application for %s received (ticket %s…)", app.node, ticket.ticket[:6])
        return ticket, True

    def check(self, app: Application) -> None:
        """Every check but the signature's, storing nothing (the form's first step)."""
        check_division(app)
        self._check_parent(app)
        self._check_free(app)

    def _check_parent(self, app: Application) -> None:
        ns = self.reg.namespace
        try:
            st = ns.live_prefix(app.parent)
        except (NotFoundError, AuthorityError) as e:
            raise NotFoundError(
                f"{app.parent} is not delegated here, so {app.node} cannot be applied for "
                f"at this registrar ({e.message})",
                rule="parent-not-hosted",
            ) from e
        if st.host != self.reg.config.origin:
            raise NotFoundError(
                f"{app.parent} is hosted by log {st.host}: apply to its registrar",
                rule="parent-not-hosted",
            )

    def _check_free(self, app: Application) -> None:
        ns = self.reg.namespace
        node = str(app.node)
        if app.node in ns.prefixes and not ns.prefixes[app.node].revoked:
            raise ConflictError(f"{node} is already delegated", rule="already-delegated")
        if self.store.open_for_node(node) is not None:
            raise ConflictError(
                f"an application for {node} is already pending", rule="already-pending"
            )
        key = app.admin_key.public_key
        holders = ns.holder_of(key)
        if holders:
            raise ApplicationError(
                "admin_key", f"admin_key already holds {holders[0]}: each prefix has its own key",
                rule="key-in-use",
            )  # fmt: skip
        other = self.store.open_for_key(key)
        if other is not None:
            raise ApplicationError(
                "admin_key", f"admin_key is already in a pending application (for {other.node})",
                rule="key-in-use",
            )  # fmt: skip

    # -- reviewing -----------------------------------------------------------------------

    def reviewable(self, key: bytes) -> list[str]:
        """The prefixes hosted here whose current key is ``key``."""
        ns, origin = self.reg.namespace, self.reg.config.origin
        return [str(p) for p in ns.holder_of(key) if ns.prefixes[p].host == origin]

    def authorise(self, key: bytes, ticket: Ticket) -> None:
        if ticket.parent not in self.reviewable(key):
            raise AuthorityError(
                f"the request is signed by a key that does not hold {ticket.parent}: only the "
                "parent's key reviews its applications",
                rule="not-parent-key",
            )

    def prev(self, ticket: Ticket) -> int:
        """The version the delegation must name (0 unless the node was delegated before)."""
        app = Application.decode(ticket.canonical)
        return self.reg.version(app.node.record_id)[0]

    async def approve(self, ticket: Ticket, leaf: bytes, key: bytes) -> Ticket:
        try:
            signed = SignedOperation.decode(leaf)
        except (OperationError, ValueError) as e:
            raise OperationError(f"leaf: {e}", rule="leaf") from e
        app = Application.decode(ticket.canonical)
        if signed.signer != key or not is_delegation_of(signed.op, app):
            raise OperationError(
                "the leaf is not the delegation of this application signed with the request's "
                "key: build it with registrar.applications.delegation",
                rule="not-this-delegation",
            )
        if ticket.status != PENDING:
            raise ConflictError(f"the application is {ticket.shown_status}", rule="already-decided")
        reg = self.reg
        if reg.broken is not None:  # before the ticket turns approving: nothing to reconcile
            raise LedgerError(reg.broken, rule="registrar-stopped")
        reg.namespace.check(signed, log=reg.config.origin)  # refuse before any state changes
        # From here to submit's admit there is no await: the check still holds.
        start = reg.log.signed_size  # the leaf can only land at or after this index
        self.store.begin_approval(ticket.ticket, leaf, start)
        # Shielded: a client that goes away does not stop the leaf's batch, so the ticket
        # is settled by whoever learns the leaf's fate: this task, or the next start.
        commit = self._commit(ticket.ticket, leaf, signed, start)
        await asyncio.shield(asyncio.ensure_future(commit))
        log.info("application %s…: %s delegated", ticket.ticket[:6], app.node)
        return self._decided(ticket.ticket)

    async def _commit(self, ticket: str, leaf: bytes, signed: SignedOperation, start: int) -> None:
        reg = self.reg
        try:
            receipts = await reg.submit([leaf], [signed])
        except BaseException:
            if reg.broken is None:  # the leaf is in the log (awaiting witnesses) or not at all
                self.store.settle(
                    ticket, self._find_leaf(leaf, start), reg.log.checkpoint_note.decode(),
                    int(time.time()),
                )  # fmt: skip
            raise
        self.store.finish_approval(
            ticket, receipts[0].index, receipts[0].checkpoint.decode(), int(time.time())
        )

    def reject(self, ticket: Ticket, reason: str) -> Ticket:
        reason = reason.strip()
        if not reason or len(reason) > 2000 or not reason.isprintable():
            raise OperationError("a rejection gives a reason (1-2000 characters)", rule="reason")
        self.store.reject(ticket.ticket, reason, int(time.time()))
        return self._decided(ticket.ticket)


DESK_KEY: web.AppKey[ApplicationDesk] = web.AppKey("applications", ApplicationDesk)


# -- JSON shapes -----------------------------------------------------------------------------


def status_json(t: Ticket) -> dict[str, Any]:
    """What anyone holding the ticket may read: never the contact."""
    app = Application.decode(t.canonical)
    out: dict[str, Any] = {
        "ticket": t.ticket,
        "node": t.node,
        "name": app.name,
        "hosting": "parent" if app.hosting is None else "self",
        "status": t.shown_status,
        "submitted": t.submitted,
        "status_url": f"/api/applications/{t.ticket}",
    }
    if app.adcode is not None:
        out["adcode"] = app.adcode
    if t.shown_status != PENDING:
        out["decided"] = t.decided
    if t.reason is not None:
        out["reason"] = t.reason
    if t.leaf_index is not None:
        out["leaf"] = t.leaf_index
        out["checkpoint"] = t.checkpoint
    return out


def review_json(t: Ticket, prev: int) -> dict[str, Any]:
    app = Application.decode(t.canonical)
    return {
        **status_json(t),
        "application": app.to_json(),
        "canonical": base64.b64encode(t.canonical).decode(),
        "signature": base64.b64encode(t.signature).decode(),
        "client": t.client,
        "prev": prev,
    }


def _json(status: int, body: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False),
        content_type="application/json", headers=headers,
    )  # fmt: skip


def field_error(e: ApplicationError) -> web.Response:
    status, body = error_body(e)
    body["field"] = e.field
    return _json(status, body)


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_type != "application/json":
        raise OperationError(
            f"this endpoint takes application/json, not {request.content_type}",
            rule="content-type",
        )
    async with request.app[EDGE_KEY].body(request, limit) as body:
        raw = await body.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApplicationError("", f"the body is not JSON: {e}", rule="json") from e


# -- handlers --------------------------------------------------------------------------------


async def post_application(request: web.Request) -> web.Response:
    desk = request.app[DESK_KEY]
    desk.rate.hit(request.remote or "?", time.monotonic())
    body = await _read_json(request, MAX_BODY)
    try:
        ticket, created = desk.submit(body, request.remote or "?")
    except ApplicationError as e:
        return field_error(e)
    return _json(201 if created else 200, status_json(ticket))


async def get_application(request: web.Request) -> web.Response:
    t = request.app[DESK_KEY].store.get(request.match_info["ticket"])
    return _json(200, status_json(t), **{"Cache-Control": "no-store"})


async def _reviewer(request: web.Request, body: bytes = b"") -> bytes:
    return check_review(
        request.headers.get("Authorization"), request.method, request.path_qs, body,
        int(time.time()),
    )  # fmt: skip


async def review_list(request: web.Request) -> web.Response:
    desk = request.app[DESK_KEY]
    key = await _reviewer(request)
    parents = desk.reviewable(key)
    if not parents:
        raise AuthorityError(
            "the request is signed by a key that holds no prefix hosted here",
            rule="not-parent-key",
        )
    status = request.query.get("status") or None
    if status not in (None, "pending", "approved", "rejected"):
        raise OperationError("status is pending, approved or rejected", rule="status")
    tickets = desk.store.list(parents, status)
    return _json(200, {"parents": parents, "applications": [status_json(t) for t in tickets]})


async def review_show(request: web.Request) -> web.Response:
    desk = request.app[DESK_KEY]
    key = await _reviewer(request)
    t = desk.store.get(request.match_info["ticket"])
    desk.authorise(key, t)
    return _json(200, review_json(t, desk.prev(t)))


async def _decision(request: web.Request) -> tuple[ApplicationDesk, bytes, Ticket, Any]:
    """(desk, reviewer's key, ticket, JSON body) of an approve or reject request, its
    signature checked and its key the ticket's parent's."""
    desk = request.app[DESK_KEY]
    async with request.app[EDGE_KEY].body(request, MAX_REVIEW_BODY) as reader:
        raw = await reader.read()
    key = await _reviewer(request, raw)
    t = desk.store.get(request.match_info["ticket"])
    desk.authorise(key, t)
    try:
        return desk, key, t, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OperationError(f"the body is not JSON: {e}", rule="json") from e


async def review_approve(request: web.Request) -> web.Response:
    desk, key, t, body = await _decision(request)
    try:
        leaf = base64.b64decode(body["leaf"], validate=True)
    except (TypeError, KeyError, binascii.Error) as e:
        raise OperationError('the body is {"leaf": "<base64 delegate leaf>"}', rule="leaf") from e
    return _json(200, status_json(await desk.approve(t, leaf, key)))


async def review_reject(request: web.Request) -> web.Response:
    desk, _, t, body = await _decision(request)
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str):
        raise OperationError('the body is {"reason": "..."}', rule="reason")
    return _json(200, status_json(desk.reject(t, reason)))


# -- the HTML form ---------------------------------------------------------------------------

FORM = "application/x-www-form-urlencoded"
_FORM_KEYS = (*FIELDS, "signature")


def _html(status: int, body: bytes) -> web.Response:
    return web.Response(
        status=status, body=body, content_type="text/html", charset="utf-8",
        headers={"Content-Security-Policy": apply_pages.CSP, "Cache-Control": "no-store"},
    )  # fmt: skip


def _parents(desk: ApplicationDesk) -> list[str]:
    return [str(a.prefix) for a in desk.reg.config.anchors]


async def get_form(request: web.Request) -> web.Response:
    return _html(200, apply_pages.form_page(_parents(request.app[DESK_KEY])))


def _form_body(values: dict[str, str]) -> dict[str, Any]:
    """The JSON body the form's fields stand for."""
    body: dict[str, Any] = dict(values)
    if "time" in body:
        try:
            body["time"] = int(body["time"])
        except ValueError:
            body.pop("time")
    if "ns" in body:
        body["ns"] = [line.strip() for line in body["ns"].splitlines() if line.strip()]
    return body


async def post_form(request: web.Request) -> web.Response:
    desk = request.app[DESK_KEY]
    desk.rate.hit(request.remote or "?", time.monotonic())
    if request.content_type != FORM:
        raise OperationError(f"the form is sent as {FORM}", rule="content-type")
    async with request.app[EDGE_KEY].body(request, MAX_BODY) as body:
        raw = await body.read()
    pairs = urllib.parse.parse_qsl(raw.decode("utf-8", "replace"), max_num_fields=64)
    values = {k: v.strip() for k, v in pairs if k in (*_FORM_KEYS, "hosting") and v.strip()}
    # The time is the server's on the first step, then carried (and signed) as is.
    values.setdefault("time", str(int(time.time())))
    fields = _form_body(values)
    parents = _parents(desk)
    try:
        app = parse_application({k: v for k, v in fields.items() if k != "signature"})
        desk.check(app)
    except ApplicationError as e:
        status, _ = error_body(e)
        return _html(status, apply_pages.form_page(parents, values, {e.field: e.message}))
    except CityIdError as e:
        status, _ = error_body(e)
        return _html(status, apply_pages.form_page(parents, values, {"": e.message}))
    canonical = base64.b64encode(app.encode()).decode()
    if "signature" not in values:
        return _html(200, apply_pages.sign_page(values, canonical))
    try:
        ticket, _ = desk.submit(fields, request.remote or "?")
    except SignatureError as e:
        status, _ = error_body(e)
        return _html(status, apply_pages.sign_page(values, canonical, e.message))
    raise web.HTTPSeeOther(f"/apply/{ticket.ticket}")


async def get_status_page(request: web.Request) -> web.Response:
    try:
        t = request.app[DESK_KEY].store.get(request.match_info["ticket"])
    except NotFoundError as e:
        return _html(404, apply_pages.not_found_page(e.message))
    return _html(200, apply_pages.status_page(status_json(t)))


def add_application_routes(app: web.Application, reg: Registrar) -> ApplicationDesk:
    """Serve applications on ``app``; the store opens (and reconciles) at start."""
    desk = ApplicationDesk(reg)
    app[DESK_KEY] = desk
    app.router.add_get("/apply", get_form)
    app.router.add_post("/apply", post_form)
    app.router.add_get("/apply/{ticket}", get_status_page)
    app.router.add_post("/api/applications", post_application)
    app.router.add_get("/api/applications/{ticket}", get_application)
    app.router.add_get("/api/review/applications", review_list)
    app.router.add_get("/api/review/applications/{ticket}", review_show)
    app.router.add_post("/api/review/applications/{ticket}/approve", review_approve)
    app.router.add_post("/api/review/applications/{ticket}/reject", review_reject)

    async def on_startup(_: web.Application) -> None:
        desk.open()  # after the registrar's start: its log is open and published

    async def on_cleanup(_: web.Application) -> None:
        await desk.aclose()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return desk
