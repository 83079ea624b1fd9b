"""Signed review requests: the parent's operator proves it holds the parent's key.

Listing, showing, approving and rejecting applications carry the Authorization
header of the Handle-style write API (:mod:`registrar.auth`), signed over the
request itself rather than over an operation::

    DOMAIN || METHOD "\\n" PATH?QUERY "\\n" TIME "\\n" || SHA-256(body)

No shared password: the registrar checks the key against the namespace (the
current key of the application's parent prefix). A request is valid for
:data:`MAX_SKEW` seconds either side of its time.
"""

from __future__ import annotations

import hashlib

from cityid.errors import SignatureError
from cityid.keys import SigningKey, VerifierKey
from cityid.ops import key_fingerprint

from .auth import auth_header, parse_auth_header

DOMAIN = b"cityid/review/v1\x00"
MAX_SKEW = 300


def review_message(method: str, path_qs: str, time: int, body: bytes) -> bytes:
    head = f"{method.upper()}\n{path_qs}\n{time}\n".encode()
    return DOMAIN + head + hashlib.sha256(body).digest()


def review_header(key: SigningKey, method: str, path_qs: str, time: int, body: bytes = b"") -> str:
    """The Authorization header for a review request, signed by ``key``."""
    sig = key.sign(review_message(method, path_qs, time, body))
    return auth_header(key.public_key, sig, time)


def check_review(header: str | None, method: str, path_qs: str, body: bytes, now: int) -> bytes:
    """The public key that signed this review request (not yet whether it may review)."""
    key, sig, time = parse_auth_header(header)
    if abs(now - time) > MAX_SKEW:
        raise SignatureError(
            f"the request was signed at {time}, {abs(now - time)} s from the registrar's clock "
            f"(at most {MAX_SKEW}): check the clock and sign again",
            rule="stale-request",
        )
    try:
        VerifierKey("review", key).verify(review_message(method, path_qs, time, body), sig)
    except SignatureError as e:
        raise SignatureError(
            f"the review request's signature does not verify for key {key_fingerprint(key)}",
            rule="bad-signature",
        ) from e
    return key
