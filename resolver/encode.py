"""Encoding: pure functions from an answer to a :class:`~resolver.reply.Reply`.

Which representation a request gets (:func:`choose`), and the bytes of each:
the 302 (:func:`redirect`), the Handle JSON record (:func:`record_json`,
:func:`encode_record`), and every error (:func:`encode_problem`,
:func:`encode_gone`). The two answers that dominate, the 302 and the plain JSON
record, are filled into templates made once from :meth:`Reply.make`'s own output,
so they cost a string format each, and a cache slot keeps only what fills them
(:mod:`resolver.cache`): the answer is derived on every hit, not stored.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import msgpack

from cityid.errors import CityIdError, IdentifierError, LedgerError, NotFoundError
from cityid.handle import HANDLE_NOT_FOUND, VALUES_NOT_FOUND, error_body
from cityid.records import STRUCTURED_TYPES, Record, iso_timestamp

from . import i18n, pages
from .layout import StoreError
from .qvalues import weighted
from .reply import Reply
from .store import Entry

JSON = "application/json"
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
# Representations of one identifier. HANDLE_API is RECORD_JSON as /api/handles answers
# it: Handle's statuses for what Handle has no word for (see encode_problem).
REDIRECT, RECORD_JSON, PAGE, HANDLE_API = "redirect", "json", "html", "handle"
JSON_REPS = (RECORD_JSON, HANDLE_API)
# The same in Chinese: only pages have words, so only they differ (a 302 is a 302).
REDIRECT_ZH, PAGE_ZH = "redirect zh", "html zh"
#: What a representation becomes when the answer is a page (no URL, or an error).
AS_PAGE = {REDIRECT: PAGE, PAGE: PAGE, REDIRECT_ZH: PAGE_ZH, PAGE_ZH: PAGE_ZH}
#: Headers of every page: it varies on the language as on the representation.
PAGE_VARY = ("Vary", "Accept, Accept-Language")
MAX_ECHO = 512  # characters of a bad request echoed back in an error body
NO_STORE = "no-store"
DEFAULT_MAX_AGE = 300  # a record without values
#: How soon a client may ask again after a 503 (Redis away, or logs still loading).
RETRY_AFTER = "2"


# -- representation choice -------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _prefers_json(accept: str) -> bool:
    """Whether ``accept`` ranks application/json above text/html (RFC 9110 §12.5.1).

    Total on any input: a range that does not parse is ignored, never an error,
    so a garbled header gets the default (the redirect or the page).
    """
    best: dict[str, tuple[int, float]] = {}  # type -> (specificity, q) of the best match
    for media, q in weighted(accept):
        if media.count("/") != 1:
            continue
        for want in ("application/json", "text/html"):
            top, sub = want.split("/")
            mt, ms = media.split("/")
            if (mt, ms) == (top, sub):
                spec = 2
            elif mt == top and ms == "*":
                spec = 1
            elif (mt, ms) == ("*", "*"):
                spec = 0
            else:
                continue
            if want not in best or spec > best[want][0]:
                best[want] = (spec, q)
    q_json = best.get("application/json", (0, 0.0))[1]
    q_html = best.get("text/html", (0, 0.0))[1]
    return q_json > q_html


def choose(accept: str | None, noredirect: bool, lang: str = i18n.EN) -> str:
    """The representation of ``GET /{id}``: the redirect, the JSON record or the page
    (in ``lang``, should it be a page)."""
    if accept and "json" in accept and len(accept) <= 1024 and _prefers_json(accept):
        return RECORD_JSON
    if lang == i18n.ZH:
        return PAGE_ZH if noredirect else REDIRECT_ZH
    return PAGE if noredirect else REDIRECT


def lang_of(rep: str) -> str:
    """The language of a page in representation ``rep``."""
    return i18n.ZH if rep.endswith(" zh") else i18n.EN


def page_headers(rep: str) -> list[tuple[str, str]]:
    """What every HTML page says besides its type: its policy, language and ``Vary``."""
    return [
        ("Content-Type", HTML),
        ("Content-Security-Policy", pages.CSP),
        ("Content-Language", i18n.TAGS[lang_of(rep)]),
        PAGE_VARY,
    ]


# -- pieces ----------------------------------------------------------------------------------


def max_age(record: Record | None) -> int:
    """The smallest TTL of ``record``'s values: how long any client may keep the answer."""
    ttls = [v.ttl for v in record.values] if record is not None else []
    return min(ttls) if ttls else DEFAULT_MAX_AGE


def dumps(body: dict[str, Any], pretty: bool = False) -> bytes:
    if pretty:
        return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


_PLAIN_URI = re.compile(r"(?:[A-Za-z0-9\-._~!$&()*+,;=:@/?#]|%[0-9A-Fa-f]{2})*")


def location(url: str) -> str:
    """``url`` as a URI for the ``Location`` header (RFC 3986; IRI to URI: RFC 3987 §3.1).

    Records may hold IRIs (a Chinese path, an internationalised host) and
    characters no URI carries (``"``, ``<``, ``>``, space, ``\\^`{|}``,
    controls). A header is ASCII, and the value also lands in pages and logs:
    the host goes to its IDNA (xn--) form, and every other character outside
    RFC 3986's set for its component (path, query, fragment; ``[]`` only around
    an IP literal) is percent-encoded as UTF-8. ``'`` is encoded too: RFC 3986
    allows it, but it ends attribute values and script strings wherever a URL
    is echoed, no http(s) server gives it a meaning of its own, and browsers
    already send it as ``%27`` in queries. ``%XX`` escapes are kept, a stray
    ``%`` is encoded. A URL with nothing to encode, the usual case, passes
    unchanged.
    """
    if _PLAIN_URI.fullmatch(url) and url.count("#") <= 1:
        return url
    pchar = "-._~!$&()*+,;=:@%"  # RFC 3986 §3.3 pchar, without "'"

    def encode(text: str, safe: str) -> str:
        return quote(re.sub(r"%(?![0-9A-Fa-f]{2})", "%25", text), safe=safe)

    parts = urlsplit(url)
    try:
        netloc = parts.netloc if parts.netloc.isascii() else parts.netloc.encode("idna").decode()
    except UnicodeError:
        netloc = parts.netloc  # no name IDNA takes: percent-encoded below, as UTF-8
    return urlunsplit(
        (
            parts.scheme,
            encode(netloc, pchar + "[]"),
            encode(parts.path, pchar + "/"),
            encode(parts.query, pchar + "/?"),
            encode(parts.fragment, pchar + "/?"),
        )
    )


# -- templates ---------------------------------------------------------------------------------


def _template(status: int, etag: str, headers: list[tuple[str, str]]) -> bytes:
    """``Reply.make``'s head, with ``%s``/``%d`` where ``headers`` and ``etag`` say ``@s@``/``@d@``.

    The length is the last field, a ``%d``. Made from the general encoder's output, so
    the two cannot drift apart.
    """
    wire = Reply.make(status, headers, b"~", etag=etag).wire.replace(b"%", b"%%")
    wire = wire.replace(b"Content-Length: 1\r\n", b"Content-Length: @d@\r\n")
    return wire.replace(b"@s@", b"%s").replace(b"@d@", b"%d")


# The 302: Location, max-age, version (the ETag), length; its body links the URL.
_REDIRECT_BODY = b'<html><body><a href="%s">%s</a></body></html>\n'
_REDIRECT_BARE = len(_REDIRECT_BODY) - 4
_REDIRECT = _template(
    302,
    '"v@d@-r"',
    [
        ("Location", "@s@"),
        ("Content-Type", HTML),
        ("Cache-Control", "max-age=@d@"),
        ("Vary", "Accept"),
    ],
)
# The Handle JSON record: max-age, version, length.
_RECORD = _template(
    200, '"v@d@-j"', [("Content-Type", JSON), ("Cache-Control", "max-age=@d@"), ("Vary", "Accept")]
)
_VALUE = '{"index":%d,"type":%s,"data":{"format":%s,"value":%s},"ttl":%d,"timestamp":"%s"}'
_DATA = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_FORMATS = {t: encode_basestring(f) for t, f in STRUCTURED_TYPES.items()}
_STRING = encode_basestring("string")
_when = functools.lru_cache(maxsize=1024)(iso_timestamp)  # records share timestamps


def redirect(loc: bytes, esc: bytes, age: int, version: int) -> Reply:
    """The 302 to ``loc`` (the URL as a URI), its body linking ``esc`` (the URL, HTML-escaped).

    The same bytes as :func:`encode_redirect` (``tests/test_resolver_cache.py`` checks).
    """
    return Reply(
        302,
        _REDIRECT % (loc, age, version, _REDIRECT_BARE + 2 * len(esc)),
        _REDIRECT_BODY % (esc, esc),
        f'"v{version}-r"',
    )


def record_json(ident: str, version: int, age: int, data: bytes) -> Reply:
    """The Handle JSON of the record stored as ``data`` (as sync checked it), ``ident``'s.

    The same bytes as :func:`encode_record` with no selection, filled from the stored
    values without building a :class:`Record` (``tests/test_resolver_cache.py`` checks).
    """
    values = [
        _VALUE
        % (
            index,
            encode_basestring(vtype),
            _FORMATS.get(vtype, _STRING),
            encode_basestring(value) if type(value) is str else _DATA(value),
            ttl,
            _when(ts),
        )
        for index, vtype, value, ttl, ts in msgpack.unpackb(data)
    ]
    body = f'{{"responseCode":1,"handle":{encode_basestring(ident)},"values":[{",".join(values)}]}}'
    raw = body.encode()
    return Reply(200, _RECORD % (age, version, len(raw)), raw, f'"v{version}-j"')


# -- the general encoders ------------------------------------------------------------------------


def encode_redirect(entry: Entry, url: str, *, alias: bool = False) -> Reply:
    """302 to ``url``, the record's URL; with ``alias``, 301 to ``url``, this resolver's URL
    of the handle ``entry``'s HS_ALIAS names, as the Handle proxy answers an alias."""
    assert entry.record is not None
    return Reply.make(
        301 if alias else 302,
        [
            ("Location", location(url)),
            ("Content-Type", HTML),
            ("Cache-Control", f"max-age={max_age(entry.record)}"),
            ("Vary", "Accept"),
        ],
        pages.redirect_body(url),
        etag=f'"v{entry.version}-{"a" if alias else "r"}"',
    )


def encode_record(
    entry: Entry,
    record: Record,
    *,
    asked: str | None = None,
    code: int = 1,
    pretty: bool = False,
    callback: str = "",
) -> Reply:
    """The Handle REST body of ``record`` (all of ``entry``'s values, or a selection), its
    ``handle`` field ``asked`` as spelt (Handle clients compare it with what they sent)."""
    body = dumps(record.to_json(entry.ident if asked is None else asked, code), pretty)
    ctype = JSON
    if callback:
        # The comment keeps a crafted callback from being read as a Flash/SWF header.
        body = b"/**/" + callback.encode() + b"(" + body + b");"
        ctype = "application/javascript; charset=utf-8"
    tag = f'"v{entry.version}-j"' if (code == 1 and not pretty and not callback) else None
    return Reply.make(
        200,
        [
            ("Content-Type", ctype),
            ("Cache-Control", f"max-age={max_age(record)}"),
            ("Vary", "Accept"),
        ],
        body,
        etag=tag,
    )


def values_not_found(entry: Entry, asked: str, pretty: bool, callback: str) -> Reply:
    """A selection that matched no value (Handle's 200 with responseCode 200)."""
    return encode_record(
        entry, Record(()), asked=asked, code=VALUES_NOT_FOUND, pretty=pretty, callback=callback
    )


def problem(exc: CityIdError, asked: str) -> tuple[int, dict[str, Any]]:
    """The one place a typed error becomes an HTTP status and a Handle body."""
    if isinstance(exc, StoreError):
        # Redis unreachable is "server too busy" (3 -> 503) in Handle terms; the
        # store's error class is not in cityid.handle's table (see the report).
        exc = LedgerError(exc.message, rule=exc.rule)
    return error_body(exc, asked[:MAX_ECHO])


def encode_problem(
    exc: CityIdError, asked: str, rep: str, *, cache_control: str = NO_STORE
) -> Reply:
    status, body = problem(exc, asked)
    if rep == HANDLE_API and isinstance(exc, IdentifierError):
        # A handle cityid's syntax cannot hold (another prefix's, a '/' in the suffix) is one
        # this server has not, which Handle says with 100; the message still names the rule.
        status, body["responseCode"] = 404, HANDLE_NOT_FOUND
    return _error_reply(status, body, rep, asked, cache_control)


def _error_reply(
    status: int, body: dict[str, Any], rep: str, asked: str, cache_control: str
) -> Reply:
    headers = [("Cache-Control", cache_control)]
    if status == 503:
        headers.append(("Retry-After", RETRY_AFTER))
    if rep in JSON_REPS:
        return Reply.make(
            status, [("Content-Type", JSON), *headers, ("Vary", "Accept")], dumps(body)
        )
    lang = lang_of(rep)
    page = pages.error_page(
        status,
        pages.error_title(status, lang),
        str(body.get("message", "")),
        asked=asked[:MAX_ECHO],
        rule=str(body.get("rule", "")),
        lang=lang,
    )
    return Reply.make(status, [*page_headers(rep), *headers], page)


def encode_gone(entry: Entry, asked: str, rep: str, negative_ttl: int) -> Reply:
    """410: the identifier existed and its deletion is in the log (the signed tombstone)."""
    exc = NotFoundError(f"{entry.ident} was deleted (version {entry.version})", rule="deleted")
    _, body = problem(exc, asked)
    body |= {
        "deleted": True,
        "version": entry.version,
        "origin": entry.origin,
        "leafIndex": entry.leaf_index,
        "proof": f"/api/proofs/{entry.ident}",
    }
    # Handle has no "gone": the code stays 100 (not found), and /api/handles answers
    # Handle's 404 (its clients treat anything else as a fault); the doi-style /{id} says
    # 410 because the log proves it once existed (DESIGN §5).
    status = 404 if rep == HANDLE_API else 410
    return _error_reply(status, body, rep, asked, f"max-age={negative_ttl}")


__all__: Sequence[str] = [
    "HANDLE_API",
    "HTML",
    "JSON",
    "JSON_REPS",
    "MAX_ECHO",
    "NO_STORE",
    "PAGE",
    "PAGE_ZH",
    "RECORD_JSON",
    "REDIRECT",
    "REDIRECT_ZH",
    "TEXT",
    "choose",
    "dumps",
    "encode_gone",
    "encode_problem",
    "encode_record",
    "encode_redirect",
    "lang_of",
    "location",
    "max_age",
    "page_headers",
    "problem",
    "record_json",
    "redirect",
    "values_not_found",
]
