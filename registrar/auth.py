"""The signature header of the Handle-style write API.

``PUT``/``DELETE /api/handles/{id}`` carry the writer's signature over the
operation the server rebuilds from the request (method, identifier, values,
``If-Match`` version and time), in one header::

    Authorization: CityID-Ed25519 key="<base64 public key>", sig="<base64>", time="<unix>"

The server rebuilds exactly the operation a client would have signed; if the
two differ by one byte the signature fails, so nothing but what the writer
meant can be logged.
"""

from __future__ import annotations

import base64
import re

from cityid.errors import AuthenticationRequired, OperationError, SignatureError

SCHEME = "CityID-Ed25519"
_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def auth_header(public_key: bytes, signature: bytes, time: int) -> str:
    key = base64.b64encode(public_key).decode()
    sig = base64.b64encode(signature).decode()
    return f'{SCHEME} key="{key}", sig="{sig}", time="{time}"'


def parse_auth_header(value: str | None) -> tuple[bytes, bytes, int]:
    """(public key, signature, time) from an Authorization header."""
    if not value:
        raise AuthenticationRequired(
            f"no Authorization header: sign the operation and send '{SCHEME} key=..., "
            "sig=..., time=...'",
            rule="authentication-needed",
        )
    scheme, _, rest = value.partition(" ")
    if scheme != SCHEME:
        raise SignatureError(
            f"Authorization scheme must be {SCHEME} (a signed write) or Basic (Handle's "
            "secret key, where custody is granted: docs/handle.md)",
            rule="auth-scheme",
        )
    params = dict(_PARAM_RE.findall(rest))
    try:
        key = base64.b64decode(params["key"], validate=True)
        sig = base64.b64decode(params["sig"], validate=True)
        time = int(params["time"])
    except (KeyError, ValueError) as e:
        raise SignatureError(
            'Authorization needs key="base64", sig="base64" and time="unix seconds"',
            rule="auth-syntax",
        ) from e
    if len(key) != 32 or len(sig) != 64 or time < 0:
        raise SignatureError("Authorization key is 32 bytes, sig 64 bytes", rule="auth-syntax")
    return key, sig, time


def parse_if_match(value: str | None) -> int | None:
    """The version named by ``If-Match: "v3"`` (or ``3``); None when absent."""
    if value is None:
        return None
    v = value.strip().removeprefix("W/").strip('"').removeprefix("v")
    if not v.isdigit() or len(v) > 18:
        raise OperationError(
            f'If-Match {value!r} must name a version such as "v3"', rule="if-match"
        )
    return int(v)
