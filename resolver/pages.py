"""HTML for people: the landing page of an identifier, error pages, the redirect body.

Pure functions from data to bytes. Every piece of text that came from a record,
a log or a request goes through :func:`html.escape`; the only markup not
written here is the QR code's SVG, which segno draws from the URL (modules,
never text). Pages load nothing: inline CSS, inline SVG, no scripts, no fonts,
no images from elsewhere, so the server can send ``Content-Security-Policy:
default-src 'none'`` (:data:`CSP`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from cityid.records import Record, Value, iso_timestamp

from . import maps
from .layout import Batch
from .maps import Area
from .store import Entry

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1c1c1c;
background:#f6f7f9}
main{max-width:860px;margin:0 auto;padding:24px 16px}
h1{font-size:22px;margin:0 0 4px;word-break:break-all;font-family:ui-monospace,monospace}
h2{font-size:16px;margin:24px 0 8px}
.sub{color:#555;margin:0 0 16px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 16px;margin:0 0 12px}
.top{display:flex;gap:20px;align-items:flex-start;flex-wrap:wrap}
.top .card{flex:1 1 360px}
.qr{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:8px;text-align:center}
.qr small{display:block;color:#555;font-size:11px;word-break:break-all;max-width:180px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-top:1px solid #eef0f3;vertical-align:top}
th{font-size:12px;color:#555;font-weight:600;border-top:0}
td.data{word-break:break-all}
code,.mono{font-family:ui-monospace,monospace;font-size:13px}
.ok{color:#0a7a2f;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
a{color:#0b57d0}
nav{background:#1f2a37;padding:8px 16px}nav a{color:#e8eef5;margin-right:18px;text-decoration:none}
form.search{display:flex;gap:8px;margin:0 0 12px}
form.search input{flex:1;font:inherit;padding:6px 8px;border:1px solid #bfc6ce;border-radius:6px}
form.search button{font:inherit;padding:6px 14px;border-radius:6px;border:1px solid #0b57d0;
background:#0b57d0;color:#fff}
.map{display:block;max-width:100%;height:auto;border-radius:6px}
section h2{margin:0 0 10px;font-family:ui-monospace,monospace}h3{font-size:14px;margin:14px 0 6px}
td.n{white-space:nowrap}
"""


@dataclass(frozen=True, slots=True)
class CheckpointView:
    """A verified checkpoint as pages show it."""

    size: int
    root_b64: str
    signers: tuple[str, ...]  # the log key's name first, then cosigners
    cosigners: tuple[tuple[str, int | None], ...]  # (name, timestamp)


@dataclass(frozen=True, slots=True)
class LogView:
    """What the page says about the log an answer comes from."""

    origin: str
    leaf_index: int
    checkpoint: CheckpointView | None = None  # the last checkpoint sync verified
    state: str = "unknown"  # sync's state for this log: ok, alarm, unreachable, pending
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LogSummary:
    """One followed log as the explorer shows it."""

    origin: str
    url: str  # where its tiles are served
    state: str
    reason: str
    updated_at: float
    checkpoint: CheckpointView | None
    batches: tuple[Batch, ...]  # newest first


_NAV = (
    '<nav><a href="/">resolver</a><a href="/explorer">ledger explorer</a>'
    '<a href="/scan">scan a code</a></nav>'
)


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{_NAV}<main>{body}</main></body></html>"
    ).encode()


def page(title: str, body: str) -> bytes:
    """A page of the resolver's, around ``body`` (for the pages other modules draw)."""
    return _page(title, body)


@functools.lru_cache(maxsize=2048)
def qr_svg(url: str) -> str:
    """The QR code of ``url`` as inline SVG (segno takes ~5 ms: memoised)."""
    import segno

    # Medium error correction, never boosted: the same level as printed codes.
    return str(segno.make_qr(url, error="m", boost_error=False).svg_inline(scale=4, border=2))


def _data_html(v: Value) -> str:
    if isinstance(v.data, Mapping):
        rows = "".join(
            f"<div><span class=mono>{escape(str(k))}</span>: {_link_or_text(str(val))}</div>"
            for k, val in sorted(v.data.items())
        )
        return rows
    text = str(v.data)
    if v.type == "URL":
        return _link_or_text(text)
    if v.type == "EMAIL":
        return f'<a href="mailto:{escape(text)}">{escape(text)}</a>'
    return escape(text)


def _link_or_text(text: str) -> str:
    # Records only hold http(s) URLs (records.check_url); anything else stays text.
    if text.lower().startswith(("http://", "https://")):
        return f'<a href="{escape(text)}" rel="noopener nofollow">{escape(text)}</a>'
    return escape(text)


def _values_table(record: Record) -> str:
    if not record.values:
        return "<p>This record has no values.</p>"
    rows = "".join(
        f"<tr><td>{v.index}</td><td class=mono>{escape(v.type)}</td>"
        f"<td class=data>{_data_html(v)}</td><td>{v.ttl}</td>"
        f"<td class=mono>{escape(iso_timestamp(v.timestamp))}</td></tr>"
        for v in record.values
    )
    return (
        "<table><tr><th>index</th><th>type</th><th>data</th><th>ttl</th><th>timestamp</th></tr>"
        f"{rows}</table>"
    )


def _when(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime(" at %Y-%m-%d %H:%M:%SZ")


def _status_html(state: str, reason: str) -> str:
    if state == "ok":
        return (
            "<span class=ok>verified</span>: this resolver's sync checked the checkpoint's "
            "signature, the witness quorum and consistency with the one before, proved every "
            "entry up to it into the tree, and checked each operation's authority back to "
            "the root key"
        )
    if state == "alarm":
        return f"<span class=bad>alarm</span>: sync stopped following this log: {escape(reason)}"
    why = f": {escape(reason)}" if reason else ""
    return f"<span class=warn>{escape(state)}</span>{why}"


def _checkpoint_rows(cp: CheckpointView | None) -> str:
    if cp is None:
        return "<dt>checkpoint size</dt><dd>not yet known</dd>"
    if cp.cosigners:
        cos = ", ".join(f"{escape(n)}{escape(_when(ts))}" for n, ts in cp.cosigners)
    else:
        cos = "none"
    return (
        f"<dt>checkpoint size</dt><dd class=size>{cp.size}</dd>"
        f"<dt>root hash</dt><dd class=mono>{escape(cp.root_b64)}</dd>"
        f"<dt>cosigned by</dt><dd class=cosigners>{cos}</dd>"
    )


def _log_card(log: LogView, proof_url: str) -> str:
    return (
        "<div class=card><dl>"
        f"<dt>log</dt><dd class=mono>{escape(log.origin)}</dd>"
        f"<dt>leaf index</dt><dd>{log.leaf_index}</dd>"
        + _checkpoint_rows(log.checkpoint)
        + f"<dt>status</dt><dd>{_status_html(log.state, log.reason)}</dd>"
        f'<dt>proof</dt><dd><a href="{escape(proof_url)}">c2sp.org/tlog-proof</a> '
        "of the leaf that set this record, checkable offline "
        "(<code>cityid resolve --verify</code>)</dd>"
        "</dl></div>"
    )


def _map_card(ident: str, record: Record, area: Area | None) -> str:
    geo = record.first("GEO")
    point = maps.parse_point(geo.data) if geo is not None else None
    if point is None:
        return ""
    where = f"inside {escape(area.name)}'s extent" if area is not None and area.name else ""
    return (
        "<h2>Where it is</h2><div class=card>"
        + maps.map_svg(point, area, label=ident)
        + f"<p class=sub>{point[0]:.6f}, {point[1]:.6f} {where}"
        " (drawn here, from the records alone: no map server is asked)</p></div>"
    )


def landing_page(
    entry: Entry,
    log: LogView,
    *,
    resolver_url: str,
    proof_url: str,
    json_url: str,
    area: Area | None = None,
    nearby: str = "",
) -> bytes:
    """The page of a registered identifier: its values, its place, where they come from, its
    2D code. ``nearby``: the card of what is registered near it (resolver.search_pages)."""
    assert entry.record is not None
    ident = entry.ident
    record = entry.record
    name = record.first("NAME") or record.first("DESC")
    sub = escape(str(name.data)) if name is not None and isinstance(name.data, str) else ""
    urls = record.urls()
    go = (
        f'<p>Goes to <a href="{escape(urls[0])}" rel="noopener nofollow">{escape(urls[0])}</a></p>'
        if urls
        else ""
    )
    body = (
        f"<h1>{escape(ident)}</h1>"
        + (f"<p class=sub>{sub}</p>" if sub else "<p class=sub>&nbsp;</p>")
        + "<div class=top><div class=card>"
        + go
        + f"<dl><dt>version</dt><dd>{entry.version}</dd>"
        f'<dt>as JSON</dt><dd><a href="{escape(json_url)}">{escape(json_url)}</a></dd></dl>'
        "</div>"
        f"<div class=qr>{qr_svg(resolver_url)}<small>{escape(resolver_url)}</small></div></div>"
        "<h2>Values</h2><div class=card>"
        + _values_table(record)
        + "</div>"
        + _map_card(ident, record, area)
        + nearby
        + "<h2>Where this answer comes from</h2>"
        + _log_card(log, proof_url)
    )
    return _page(ident, body)


def tombstone_page(entry: Entry, log: LogView, *, proof_url: str) -> bytes:
    body = (
        f"<h1>{escape(entry.ident)}</h1>"
        "<p class=sub><span class=bad>deleted</span>: this identifier was registered and "
        f"has been deleted (version {entry.version}). It will not be reassigned silently: the "
        "deletion is an operation in the log below.</p>"
        "<h2>Where this answer comes from</h2>" + _log_card(log, proof_url)
    )
    return _page(f"{entry.ident} (deleted)", body)


def error_page(status: int, title: str, message: str, *, asked: str, rule: str = "") -> bytes:
    """A 400/404/503 page: what was asked, what is wrong, which rule."""
    rule_html = f"<dt>rule</dt><dd class=mono>{escape(rule)}</dd>" if rule else ""
    body = (
        f"<h1>{status} {escape(title)}</h1>"
        "<div class=card><dl>"
        f"<dt>asked</dt><dd class=mono>{escape(asked)}</dd>"
        f"<dt>why</dt><dd>{escape(message)}</dd>{rule_html}"
        "</dl></div>"
        "<p class=sub>Identifiers look like <code>MA.156.1301.02/W0000127R</code>: a prefix "
        "of dot-separated node codes, a slash, a suffix.</p>"
    )
    return _page(f"{status} {title}", body)


def redirect_body(url: str) -> bytes:
    """The few bytes sent with a 302 for clients that do not follow it."""
    e = escape(url)
    return f'<html><body><a href="{e}">{e}</a></body></html>\n'.encode()


_UP = "<span class=ok>up</span>"
_DOWN = "<span class=bad>unreachable</span>"


def index_page(logs: Sequence[Mapping[str, object]], redis_up: bool) -> bytes:
    rows = "".join(
        f"<tr><td class=mono>{escape(str(lg.get('origin', '')))}</td>"
        f"<td>{escape(str(lg.get('size', '')))}</td><td>{escape(str(lg.get('state', '')))}</td>"
        f"<td>{escape(str(lg.get('reason', '')))}</td></tr>"
        for lg in logs
    )
    body = (
        "<h1>cityid resolver</h1>"
        "<p class=sub>GET <code>/PREFIX/SUFFIX</code> redirects to the identifier's URL; "
        "<code>?noredirect</code> shows its record; <code>/api/handles/ID</code> answers in the "
        "Handle REST shape; <code>/api/proofs/ID</code> returns its tlog-proof.</p>"
        f"<div class=card>Redis: {_UP if redis_up else _DOWN}"
        "<table><tr><th>log</th><th>size</th><th>state</th><th>reason</th></tr>"
        f"{rows}</table></div>"
    )
    return _page("cityid resolver", body)


def _batches_table(batches: Sequence[Batch]) -> str:
    if not batches:
        return "<p class=sub>No batch applied since this resolver's Redis was filled.</p>"
    rows = []
    for b in batches:
        what = ", ".join(
            f"{n:,} {label}"
            for n, label in (
                (b.identifiers, "identifiers"),
                (b.ranges, "ranges"),
                (b.prefixes, "prefix records"),
            )
            if n
        )
        sample = " ".join(
            f'<a class=mono href="/{escape(i)}?noredirect">{escape(i)}</a>' for i in b.sample
        )
        rows.append(
            f"<tr><td class=n>{b.start:,}&ndash;{b.end - 1:,}</td><td>{b.end - b.start:,}</td>"
            f"<td>{escape(what) or 'entries already applied'}</td><td class=data>{sample}</td>"
            f"<td class=mono>{escape(_when(int(b.applied_at)).removeprefix(' at '))}</td></tr>"
        )
    return (
        "<table><tr><th>leaves</th><th>entries</th><th>wrote</th><th>for example</th>"
        f"<th>verified</th></tr>{''.join(rows)}</table>"
    )


def _explorer_log(lg: LogSummary) -> str:
    link = ""
    if lg.url:
        cp_url = lg.url.rstrip("/") + "/checkpoint"
        link = f'<dt>tiles</dt><dd><a class=mono href="{escape(cp_url)}">{escape(cp_url)}</a></dd>'
    return (
        f'<section class=card data-origin="{escape(lg.origin)}">'
        f"<h2>{escape(lg.origin)}</h2><dl>"
        + _checkpoint_rows(lg.checkpoint)
        + link
        + f"<dt>status</dt><dd>{_status_html(lg.state, lg.reason)}</dd>"
        f"<dt>checked</dt><dd>{escape(_when(int(lg.updated_at)).removeprefix(' at '))}</dd>"
        "</dl><h3>Recent batches</h3>" + _batches_table(lg.batches) + "</section>"
    )


def explorer_page(logs: Sequence[LogSummary], *, redis_up: bool, q: str, error: str) -> bytes:
    """Every followed log: its latest verified checkpoint, cosigners, recent batches."""
    err = f"<p class=bad role=alert>{escape(error)}</p>" if error else ""
    body = (
        "<h1>Ledger explorer</h1>"
        "<p class=sub>Each registrar keeps an append-only log of signed operations; this "
        "resolver follows every log, checks each checkpoint's signature, its witnesses' "
        "cosignatures and its consistency with the last one, and serves only what it "
        "verified. Formats: C2SP tlog-checkpoint, tlog-tiles, tlog-cosignature.</p>"
        '<form class=search action="/explorer" method=get role=search>'
        f'<input name=q value="{escape(q)}" placeholder="MA.156.1301.02/A0000000U or MA.156.1301" '
        'aria-label="identifier or prefix" autocomplete=off spellcheck=false>'
        "<button type=submit>Find</button></form>"
        + err
        + ("" if redis_up else f"<p>Redis: {_DOWN}</p>")
        + ("".join(_explorer_log(lg) for lg in logs) or "<p>No log followed yet.</p>")
    )
    return _page("Ledger explorer", body)
