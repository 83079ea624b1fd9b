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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from cityid.placenames import both_scripts
from cityid.records import Record, Value, iso_timestamp

from . import maps
from .i18n import EN, NAMES, TAGS, TEXT, ZH, count, t
from .layout import Batch
from .maps import Area
from .store import Entry

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"

# Mobile first: most pages are opened by scanning a code with a phone. The base
# rules are for a narrow screen (390 px); wider screens get tables and side-by-side
# cards from the one media query.
_STYLE = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei",sans-serif;
margin:0;color:#1c1c1c;background:#f6f7f9;-webkit-text-size-adjust:100%}
main{max-width:880px;margin:0 auto;padding:16px 12px 32px}
h1{font-size:20px;line-height:1.3;margin:0 0 4px;overflow-wrap:anywhere;
font-family:ui-monospace,monospace}
h2{font-size:16px;margin:22px 0 8px}
.sub{color:#555;margin:0 0 14px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:10px;padding:12px 14px;margin:0 0 12px}
.top{display:flex;flex-direction:column;gap:12px}
.top .card{margin:0}
.qr{background:#fff;border:1px solid #dde1e6;border-radius:10px;padding:10px;text-align:center}
.qr svg{display:block;margin:0 auto;width:200px;max-width:100%;height:auto}
.seg{display:inline-block;max-width:100%}
.qr small{display:block;margin:6px auto 0;color:#555;font-size:12px;max-width:240px;
overflow-wrap:anywhere;font-family:ui-monospace,monospace}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top}
.rows thead{display:none}
.rows tr{display:block;padding:8px 0;border-top:1px solid #eef0f3}
.rows tr:first-child{border-top:0}
.rows td{display:block;padding:1px 0}
.rows td[data-label]::before{content:attr(data-label) ": ";color:#555;font-size:13px}
.rows td.head{font-weight:600}
.rows td.small{display:inline-block;margin-right:14px;font-size:13px;color:#444}
td.data{overflow-wrap:anywhere}
code,.mono{font-family:ui-monospace,monospace;font-size:14px}
.ok{color:#0a7a2f;font-weight:600}.bad{color:#b3261e;font-weight:600}.warn{color:#8a5a00}
dl{display:grid;grid-template-columns:minmax(0,max-content) minmax(0,1fr);gap:4px 12px;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere;min-width:0}
a{color:#0b57d0}
nav{background:#1f2a37;padding:6px 12px;display:flex;flex-wrap:wrap;gap:2px 16px;
align-items:center}
nav a{color:#e8eef5;text-decoration:none;padding:6px 0}
nav .lang{margin-left:auto;border:1px solid #5b6b7c;border-radius:6px;padding:2px 10px}
form.search{display:flex;gap:8px;margin:0 0 12px}
form.search input{flex:1;min-width:0;font:inherit;padding:8px 10px;border:1px solid #bfc6ce;
border-radius:8px}
form.search button{font:inherit;padding:8px 16px;border-radius:8px;border:1px solid #0b57d0;
background:#0b57d0;color:#fff}
.map{display:block;width:100%;max-width:640px;height:auto;margin:0 auto;border-radius:8px}
.map+.sub{margin:10px 0 0}
section h2{margin:0 0 10px;font-family:ui-monospace,monospace;overflow-wrap:anywhere}
h3{font-size:14px;margin:14px 0 6px}
.ids{display:flex;flex-wrap:wrap;gap:2px 12px}
.ids a{white-space:nowrap}
.when{white-space:nowrap}
@media (min-width:640px){
main{padding:24px 16px 40px}
h1{font-size:22px}
.top{flex-direction:row;align-items:flex-start}
.top .card{flex:1 1 0}
.qr{flex:0 0 auto}
.rows thead{display:table-header-group}
.rows tr{display:table-row;padding:0;border:0}
.rows td,.rows th{display:table-cell;padding:6px 8px;border-top:1px solid #eef0f3}
.rows th{font-size:12px;color:#555;font-weight:600;border-top:0}
.rows td[data-label]::before{content:none}
.rows td.head{font-weight:normal}
.rows td.small{display:table-cell;margin:0;font-size:inherit;color:inherit}
td.data{width:60%}
}
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


def _href(path: str, lang: str, *params: str) -> str:
    """A link to one of this resolver's pages that keeps the reader's language."""
    return f"{path}?{'&'.join((*params, f'lang={lang}'))}"


def _other(lang: str) -> str:
    return ZH if lang == EN else EN


def _nav(lang: str, switch: str) -> str:
    other = _other(lang)
    return (
        f'<nav><a href="{_href("/", lang)}">{t(lang, "nav.home")}</a>'
        f'<a href="{_href("/explorer", lang)}">{t(lang, "nav.explorer")}</a>'
        f'<a href="{_href("/scan", lang)}">{t(lang, "nav.scan")}</a>'
        f'<a class=lang href="{escape(switch)}" hreflang={TAGS[other]} lang={TAGS[other]} '
        f'title="{t(lang, "switch")}">{NAMES[other]}</a></nav>'
    )


def _page(title: str, body: str, lang: str, switch: str) -> bytes:
    """The whole page; ``switch`` is this page's address in the other language."""
    return (
        f"<!doctype html><html lang={TAGS[lang]}><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{_nav(lang, switch)}<main>{body}</main></body></html>"
    ).encode()


def switch_to(path: str, lang: str, *params: str) -> str:
    """``path`` (with ``params``) in the language other than ``lang``: the switch's link."""
    return _href(quote(path, safe="/:@!$&'()*+,;="), _other(lang), *params)


def breakable(text: str) -> str:
    """``text`` escaped, to wrap at its slashes first and then at its dots, never inside
    a node code or a suffix: each part up to a '/' is a box that moves to the next line
    whole, and breaks after its dots only when it is wider than the line."""
    parts = re.findall(r"[^/]*/+|[^/]+$", text) or [text]
    return "<wbr>".join(f"<span class=seg>{escape(p).replace('.', '.<wbr>')}</span>" for p in parts)


@functools.lru_cache(maxsize=2048)
def qr_svg(url: str) -> str:
    """The QR code of ``url`` as inline SVG (segno takes ~5 ms: memoised)."""
    import segno

    # Medium error correction, never boosted: the same level as printed codes.
    # A viewBox and no fixed size: the page's CSS sizes it for the screen.
    qr = segno.make_qr(url, error="m", boost_error=False)
    return str(qr.svg_inline(scale=4, border=2, omitsize=True))


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
        return f'<a href="{escape(text)}" rel="noopener nofollow">{breakable(text)}</a>'
    return escape(text)


def _values_table(record: Record, lang: str) -> str:
    if not record.values:
        return f"<p>{t(lang, 'values.none')}</p>"
    cols = ("col.index", "col.type", "col.data", "col.ttl", "col.timestamp")
    ttl, stamp = t(lang, "col.ttl"), t(lang, "col.timestamp")
    rows = "".join(
        f'<tr><td class="small head">#{v.index}</td><td class="mono head">{escape(v.type)}</td>'
        f'<td class=data>{_data_html(v)}</td><td class=small data-label="{ttl}">{v.ttl}</td>'
        f'<td class="small mono" data-label="{stamp}">{escape(iso_timestamp(v.timestamp))}</td>'
        "</tr>"
        for v in record.values
    )
    head = "".join(f"<th>{t(lang, c)}</th>" for c in cols)
    return f'<table class="rows values"><thead><tr>{head}</tr></thead>{rows}</table>'


def _when(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime(" at %Y-%m-%d %H:%M:%SZ")


def _stamp(ts: float) -> str:
    """A time as the explorer shows it, kept on one line."""
    text = _when(int(ts)).removeprefix(" at ")
    return f"<span class=when>{escape(text)}</span>" if text else ""


def _status_html(state: str, reason: str, lang: str) -> str:
    if state == "ok":
        return f"<span class=ok>{t(lang, 'state.ok')}</span>: {t(lang, 'state.ok.text')}"
    if state == "alarm":
        return (
            f"<span class=bad>{t(lang, 'state.alarm')}</span>: {t(lang, 'state.alarm.text')}: "
            f"{escape(reason)}"
        )
    why = f": {escape(reason)}" if reason else ""
    return f"<span class=warn>{escape(state)}</span>{why}"


def _checkpoint_rows(cp: CheckpointView | None, lang: str) -> str:
    if cp is None:
        return f"<dt>{t(lang, 'cp.size')}</dt><dd>{t(lang, 'cp.unknown')}</dd>"
    if cp.cosigners:
        cos = ", ".join(f"{escape(n)}{' ' + _stamp(ts) if ts else ''}" for n, ts in cp.cosigners)
    else:
        cos = t(lang, "cp.none")
    return (
        f"<dt>{t(lang, 'cp.size')}</dt><dd class=size>{cp.size}</dd>"
        f"<dt>{t(lang, 'cp.root')}</dt><dd class=mono>{escape(cp.root_b64)}</dd>"
        f"<dt>{t(lang, 'cp.cosigned')}</dt><dd class=cosigners>{cos}</dd>"
    )


def _log_card(log: LogView, proof_url: str, lang: str) -> str:
    return (
        "<div class=card><dl>"
        f"<dt>{t(lang, 'log')}</dt><dd class=mono>{escape(log.origin)}</dd>"
        f"<dt>{t(lang, 'leaf')}</dt><dd>{log.leaf_index}</dd>"
        + _checkpoint_rows(log.checkpoint, lang)
        + f"<dt>{t(lang, 'status')}</dt><dd>{_status_html(log.state, log.reason, lang)}</dd>"
        f'<dt>{t(lang, "proof")}</dt><dd><a href="{escape(proof_url)}">c2sp.org/tlog-proof</a> '
        f"{t(lang, 'proof.text')} (<code>cityid resolve --verify</code>)</dd>"
        "</dl></div>"
    )


def _map_card(ident: str, record: Record, area: Area | None, lang: str) -> str:
    geo = record.first("GEO")
    point = maps.parse_point(geo.data) if geo is not None else None
    if point is None:
        return ""
    name = both_scripts(area.name) if area is not None and area.name else ""
    where = t(lang, "where.inside", name=escape(name)) if name else ""
    shown = Area(name, area.box, area.centre) if area is not None else None
    return (
        f"<h2>{t(lang, 'where')}</h2><div class=card>"
        + maps.map_svg(point, shown, label=ident)
        + f"<p class=sub>{point[0]:.6f}, {point[1]:.6f} {where}"
        f" ({t(lang, 'where.offline')})</p></div>"
    )


def landing_page(
    entry: Entry,
    log: LogView,
    *,
    resolver_url: str,
    proof_url: str,
    json_url: str,
    area: Area | None = None,
    lang: str = EN,
) -> bytes:
    """The page of a registered identifier: its values, its place, where they come from, its
    2D code."""
    assert entry.record is not None
    ident = entry.ident
    record = entry.record
    name = record.first("NAME") or record.first("DESC")
    sub = (
        escape(both_scripts(str(name.data)))
        if name is not None and isinstance(name.data, str)
        else ""
    )
    urls = record.urls()
    go = (
        f'<p>{t(lang, "goes_to")} <a href="{escape(urls[0])}" rel="noopener nofollow">'
        f"{breakable(urls[0])}</a></p>"
        if urls
        else ""
    )
    body = (
        f"<h1>{breakable(ident)}</h1>"
        + (f"<p class=sub>{sub}</p>" if sub else "<p class=sub>&nbsp;</p>")
        + "<div class=top><div class=card>"
        + go
        + f"<dl><dt>{t(lang, 'version')}</dt><dd>{entry.version}</dd>"
        f'<dt>{t(lang, "as_json")}</dt><dd><a href="{escape(json_url)}">'
        f"{breakable(json_url)}</a></dd></dl>"
        "</div>"
        f"<div class=qr>{qr_svg(resolver_url)}<small>{breakable(resolver_url)}</small></div>"
        "</div>"
        f"<h2>{t(lang, 'values')}</h2><div class=card>"
        + _values_table(record, lang)
        + "</div>"
        + _map_card(ident, record, area, lang)
        + f"<h2>{t(lang, 'source')}</h2>"
        + _log_card(log, proof_url, lang)
    )
    return _page(ident, body, lang, switch_to(f"/{ident}", lang, "noredirect"))


def tombstone_page(entry: Entry, log: LogView, *, proof_url: str, lang: str = EN) -> bytes:
    body = (
        f"<h1>{breakable(entry.ident)}</h1>"
        f"<p class=sub><span class=bad>{t(lang, 'deleted')}</span>: "
        f"{t(lang, 'deleted.text', version=entry.version)}</p>"
        f"<h2>{t(lang, 'source')}</h2>" + _log_card(log, proof_url, lang)
    )
    title = t(lang, "deleted.title", ident=entry.ident)
    return _page(title, body, lang, switch_to(f"/{entry.ident}", lang, "noredirect"))


def search_form(lang: str, q: str = "") -> str:
    """The search box of the explorer, also on error pages and the home page."""
    return (
        '<form class=search action="/explorer" method=get role=search>'
        f'<input name=q value="{escape(q)}" placeholder="{t(lang, "search.placeholder")}" '
        f'aria-label="{t(lang, "search.label")}" autocomplete=off autocapitalize=characters '
        "spellcheck=false>"
        f"<input type=hidden name=lang value={lang}>"
        f"<button type=submit>{t(lang, 'search.button')}</button></form>"
    )


def error_title(status: int, lang: str) -> str:
    key = f"err.{status}"
    return t(lang, key if key in TEXT[EN] else "err.other")


def error_page(
    status: int, title: str, message: str, *, asked: str, rule: str = "", lang: str = EN
) -> bytes:
    """A 400/404/503 page: what was asked, what is wrong, which rule; a search box and a
    way back."""
    rule_html = f"<dt>{t(lang, 'err.rule')}</dt><dd class=mono>{escape(rule)}</dd>" if rule else ""
    body = (
        f"<h1>{status} {escape(title)}</h1>"
        "<div class=card><dl>"
        f"<dt>{t(lang, 'err.asked')}</dt><dd class=mono>{breakable(asked)}</dd>"
        f"<dt>{t(lang, 'err.why')}</dt><dd>{escape(message)}</dd>{rule_html}"
        "</dl></div>"
        f"<p class=sub>{t(lang, 'id.example', example='<code>MA.156.1301.02/W0000127R</code>')}"
        f"</p><p>{t(lang, 'err.search')}</p>"
        + search_form(lang)
        + f'<p><a href="/" class=home>&larr; {t(lang, "err.back")}</a></p>'
    )
    return _page(f"{status} {title}", body, lang, switch_to(f"/{asked.strip()}", lang))


def redirect_body(url: str) -> bytes:
    """The few bytes sent with a 302 for clients that do not follow it."""
    e = escape(url)
    return f'<html><body><a href="{e}">{e}</a></body></html>\n'.encode()


def _up(lang: str) -> str:
    return f"<span class=ok>{t(lang, 'home.up')}</span>"


def _down(lang: str) -> str:
    return f"<span class=bad>{t(lang, 'home.down')}</span>"


def index_page(logs: Sequence[Mapping[str, object]], redis_up: bool, lang: str = EN) -> bytes:
    rows = "".join(
        f'<tr><td class="mono head">{escape(str(lg.get("origin", "")))}</td>'
        f'<td class=small data-label="{t(lang, "home.size")}">'
        f"{escape(str(lg.get('size', '')))}</td>"
        f'<td class=small data-label="{t(lang, "home.state")}">'
        f"{escape(str(lg.get('state', '')))}</td>"
        f"<td>{escape(str(lg.get('reason', '')))}</td></tr>"
        for lg in logs
    )
    head = "".join(
        f"<th>{t(lang, k)}</th>" for k in ("log", "home.size", "home.state", "home.reason")
    )
    text = t(
        lang,
        "home.text",
        id="<code>/PREFIX/SUFFIX</code>",
        noredirect="<code>?noredirect</code>",
        handles="<code>/api/handles/ID</code>",
        proofs="<code>/api/proofs/ID</code>",
    )
    body = (
        f"<h1>{t(lang, 'home.title')}</h1>"
        f"<p class=sub>{text}</p>"
        + search_form(lang)
        + f"<div class=card>{t(lang, 'home.redis')}: {_up(lang) if redis_up else _down(lang)}"
        f"<table class=rows><thead><tr>{head}</tr></thead>{rows}</table></div>"
    )
    return _page(t(lang, "home.title"), body, lang, switch_to("/", lang))


def _leaves(b: Batch) -> str:
    last = b.end - 1
    return f"{b.start:,}" if last == b.start else f"{b.start:,}&ndash;{last:,}"


def _batches_table(batches: Sequence[Batch], lang: str) -> str:
    if not batches:
        return f"<p class=sub>{t(lang, 'ex.no_batch')}</p>"
    rows = []
    for b in batches:
        what = ", ".join(
            count(lang, n, label)
            for n, label in (
                (b.identifiers, "identifiers"),
                (b.ranges, "ranges"),
                (b.prefixes, "prefixes"),
            )
            if n
        )
        sample = "".join(
            f'<a class=mono href="{escape(_href("/" + i, lang, "noredirect"))}">{escape(i)}</a>'
            for i in b.sample
        )
        rows.append(
            f'<tr><td class="n head" data-label="{t(lang, "ex.leaves")}">{_leaves(b)}</td>'
            f'<td class=small data-label="{t(lang, "ex.entries")}">{b.end - b.start:,}</td>'
            f"<td>{escape(what) or t(lang, 'ex.applied')}</td>"
            f"<td class=data><div class=ids>{sample}</div></td>"
            f'<td class=small data-label="{t(lang, "ex.verified")}">{_stamp(b.applied_at)}</td>'
            "</tr>"
        )
    head = "".join(
        f"<th>{t(lang, k)}</th>"
        for k in ("ex.leaves", "ex.entries", "ex.wrote", "ex.example", "ex.verified")
    )
    return f'<table class="rows batches"><thead><tr>{head}</tr></thead>{"".join(rows)}</table>'


def _explorer_log(lg: LogSummary, lang: str) -> str:
    link = ""
    if lg.url:
        cp_url = lg.url.rstrip("/") + "/checkpoint"
        link = (
            f'<dt>{t(lang, "ex.tiles")}</dt><dd><a class=mono href="{escape(cp_url)}">'
            f"{breakable(cp_url)}</a></dd>"
        )
    return (
        f'<section class=card data-origin="{escape(lg.origin)}">'
        f"<h2>{escape(lg.origin)}</h2><dl>"
        + _checkpoint_rows(lg.checkpoint, lang)
        + link
        + f"<dt>{t(lang, 'status')}</dt><dd>{_status_html(lg.state, lg.reason, lang)}</dd>"
        f"<dt>{t(lang, 'ex.checked')}</dt><dd>{_stamp(lg.updated_at)}</dd>"
        f"</dl><h3>{t(lang, 'ex.recent')}</h3>" + _batches_table(lg.batches, lang) + "</section>"
    )


def explorer_page(
    logs: Sequence[LogSummary], *, redis_up: bool, q: str, error: str, lang: str = EN
) -> bytes:
    """Every followed log: its latest verified checkpoint, cosigners, recent batches."""
    err = f"<p class=bad role=alert>{escape(error)}</p>" if error else ""
    params = (f"q={quote(q)}",) if q else ()
    body = (
        f"<h1>{t(lang, 'ex.title')}</h1>"
        f"<p class=sub>{t(lang, 'ex.text')}</p>"
        + search_form(lang, q)
        + err
        + ("" if redis_up else f"<p>Redis: {_down(lang)}</p>")
        + ("".join(_explorer_log(lg, lang) for lg in logs) or f"<p>{t(lang, 'ex.none')}</p>")
    )
    return _page(t(lang, "ex.title"), body, lang, switch_to("/explorer", lang, *params))
