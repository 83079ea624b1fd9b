"""HTML for applicants: the ``/apply`` form, the signing step, the status page.

Pure functions from data to bytes; every piece of text that came from a request
or the store goes through :func:`html.escape`. No scripts: the form works as
plain HTML (each error is shown next to its field), and pages load nothing
from elsewhere, so they are served with :data:`CSP`.

The form has two steps, because a browser without scripts cannot sign: the
first checks the fields and shows the canonical application to sign with the
admin key (``cityid apply sign``); the second takes the signature and files the
application, then shows its status page.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'"

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1c1c1c;background:#f6f7f9}
main{max-width:760px;margin:0 auto;padding:24px 16px}
h1{font-size:22px;margin:0 0 4px}.sub{color:#555;margin:0 0 16px}
.card{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px 16px;margin:0 0 12px}
label{display:block;font-weight:600;margin:10px 0 2px}
input[type=text],input[type=email],input[type=tel],input[type=url],textarea{width:100%;
box-sizing:border-box;font:inherit;padding:6px 8px;border:1px solid #bfc6ce;border-radius:6px}
.field.error input,.field.error textarea{border-color:#b3261e}
.msg{color:#b3261e;font-size:13px;margin:2px 0 0}.hint{color:#555;font-size:13px;margin:2px 0 0}
button{font:inherit;padding:6px 14px;border-radius:6px;border:1px solid #0b57d0;background:#0b57d0;
color:#fff;margin-top:14px}
code,.mono{font-family:ui-monospace,monospace;font-size:13px;overflow-wrap:anywhere}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}
dt{color:#555}dd{margin:0;overflow-wrap:anywhere}
.approved{color:#0a7a2f;font-weight:600}.rejected{color:#b3261e;font-weight:600}
.pending{color:#8a5a00;font-weight:600}
"""

#: The form's fields: (name, label, input type, hint).
_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("adcode", "GB/T 2260 code", "text", "a city under MA.156: its 6-digit code, e.g. 130600"),
    ("node", "Node", "text", "or the child node asked for, e.g. MA.156.1301.08"),
    ("name", "Official name", "text", "for a city, as in the divisions table, e.g. 保定市"),
    ("contact_name", "Contact name", "text", "never shown on the status page"),
    ("contact_email", "Contact email", "email", ""),
    ("contact_phone", "Contact phone", "tel", "e.g. +86 312 555 0100"),
    ("admin_key", "Admin verifier key", "text",
     "name+hash+base64, from 'cityid keygen': it will sign everything under your prefix"),
    ("origin", "Own log origin", "text", "self-hosted only, e.g. bd.example/log"),
    ("log_key", "Own log verifier key", "text", "self-hosted only: your log.vkey"),
    ("registrar_url", "Own registrar URL", "url", "self-hosted only"),
    ("ns", "DNS name servers", "textarea", "self-hosted only: one 'host [address...]' a line"),
    ("reason", "Reason", "textarea", "self-hosted only: why you host it yourselves"),
)  # fmt: skip


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    ).encode()


def _field(name: str, label: str, kind: str, hint: str, value: str, error: str) -> str:
    v = escape(value)
    attrs = f'id="f-{name}" name="{name}"'
    if error:
        attrs += f' aria-invalid="true" aria-describedby="e-{name}"'
    if kind == "textarea":
        control = f"<textarea {attrs} rows=3>{v}</textarea>"
    else:
        control = f'<input type="{kind}" {attrs} value="{v}">'
    msg = f'<p class=msg id="e-{name}">{escape(error)}</p>' if error else ""
    tip = f"<p class=hint>{escape(hint)}</p>" if hint else ""
    cls = "field error" if error else "field"
    return (
        f'<div class="{cls}"><label for="f-{name}">{escape(label)}</label>{control}{msg}{tip}</div>'
    )


def _hosting(value: str) -> str:
    own = value == "self"
    return (
        "<fieldset><legend>Hosting</legend>"
        f"<label><input type=radio name=hosting value=parent{'' if own else ' checked'}> "
        "by the parent's registrar</label>"
        f"<label><input type=radio name=hosting value=self{' checked' if own else ''}> "
        "on our own registrar and log</label></fieldset>"
    )


def form_page(
    parents: list[str],
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> bytes:
    """The application form; ``errors`` maps a field to its message ("" for the form)."""
    values, errors = values or {}, errors or {}
    top = errors.get("", "")
    body = [
        "<h1>Apply for a prefix</h1>",
        f"<p class=sub>This registrar delegates under {escape(', '.join(parents))}. "
        "Fill in the form; the next page shows the application to sign with your admin key.</p>",
    ]
    if top:
        body.append(f'<p class=msg id="e-form">{escape(top)}</p>')
    body.append('<form class=card method=post action="/apply">')
    for name, label, kind, hint in _FIELDS:
        body.append(_field(name, label, kind, hint, values.get(name, ""), errors.get(name, "")))
        if name == "admin_key":
            body.append(_hosting(values.get("hosting", "parent")))
    body.append("<button type=submit>Check the application</button></form>")
    return _page("Apply for a prefix", "".join(body))


def sign_page(values: Mapping[str, str], canonical_b64: str, error: str = "") -> bytes:
    """Step two: the canonical application, how to sign it, and the signature field."""
    hidden = "".join(
        f'<input type=hidden name="{escape(k)}" value="{escape(v)}">'
        for k, v in sorted(values.items())
        if k != "signature"
    )
    msg = f'<p class=msg id="e-signature">{escape(error)}</p>' if error else ""
    body = (
        "<h1>Sign your application</h1>"
        "<p class=sub>The fields are valid. Sign the application with the admin key you named "
        "(this proves you hold it), then paste the signature below.</p>"
        f"<div class=card><p>Application (canonical, base64):</p>"
        f"<p><code id=canonical>{escape(canonical_b64)}</code></p>"
        "<p>Sign it on the machine that holds the key:</p>"
        f"<p><code>cityid apply sign --key ADMIN.key {escape(canonical_b64)}</code></p></div>"
        '<form class=card method=post action="/apply">'
        f"{hidden}"
        '<div class="field'
        + (" error" if error else "")
        + '"><label for="f-signature">Signature</label>'
        '<input type=text id="f-signature" name="signature" value="">'
        f"{msg}</div><button type=submit>Send the application</button></form>"
    )
    return _page("Sign your application", body)


def status_page(status: Mapping[str, Any]) -> bytes:
    """An application's status, as ``GET /api/applications/{ticket}`` has it (no contact)."""
    state = str(status["status"])
    rows = [
        ("Status", f'<span class="{escape(state)}" id=status>{escape(state)}</span>'),
        ("Node", f"<span class=mono>{escape(str(status['node']))}</span>"),
        ("Name", escape(str(status["name"]))),
    ]
    if "adcode" in status:
        rows.append(("GB/T 2260", escape(str(status["adcode"])[:6])))
    rows.append(("Hosting", escape(str(status["hosting"]))))
    if status.get("reason"):
        rows.append(("Reason", f"<span id=reason>{escape(str(status['reason']))}</span>"))
    if "leaf" in status:
        rows.append(("Delegation", f"leaf <span id=leaf>{int(status['leaf'])}</span>"))
        rows.append(("Checkpoint", f"<pre class=mono>{escape(str(status['checkpoint']))}</pre>"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    ticket = escape(str(status["ticket"]))
    body = (
        "<h1>Application</h1>"
        f"<p class=sub>Ticket <span class=mono id=ticket>{ticket}</span>: keep this page's "
        "address, it is how you read the decision.</p>"
        f'<div class=card><dl>{dl}</dl></div><p><a href="/api/applications/{ticket}">JSON</a></p>'
    )
    return _page(f"Application {status['node']}", body)


def not_found_page(message: str) -> bytes:
    body = (
        f"<h1>No such application</h1><p class=sub>{escape(message)}: check the address "
        'you were given, or <a href="/apply">apply</a>.</p>'
    )
    return _page("No such application", body)
