"""The one mapping from typed errors to Handle response codes and HTTP statuses.

HANDLE.NET's REST API carries a ``responseCode`` in every body and derives the
HTTP status from it; cityid's HTTP edges (registrar and resolver) both answer
through :func:`error_body` so a client sees the same code for the same fault.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    AuthenticationRequired,
    AuthorityError,
    CityIdError,
    ConflictError,
    IdentifierError,
    LedgerError,
    NotFoundError,
    OperationError,
    RecordError,
    SignatureError,
)

SUCCESS = 1
ERROR = 2
SERVER_TOO_BUSY = 3
INVALID_REQUEST = 4
HANDLE_NOT_FOUND = 100
HANDLE_ALREADY_EXISTS = 101
INVALID_HANDLE = 102
VALUES_NOT_FOUND = 200
VALUE_ALREADY_EXISTS = 201
INVALID_VALUE = 202
NOT_AUTHORIZED = 400
INSUFFICIENT_PERMISSIONS = 401
AUTHENTICATION_NEEDED = 402
AUTHENTICATION_FAILED = 403

#: HTTP status for each response code, as HANDLE.NET 9 answers.
HTTP_STATUS = {
    SUCCESS: 200,
    ERROR: 500,
    SERVER_TOO_BUSY: 503,
    INVALID_REQUEST: 400,
    HANDLE_NOT_FOUND: 404,
    HANDLE_ALREADY_EXISTS: 409,
    INVALID_HANDLE: 400,
    VALUES_NOT_FOUND: 200,
    VALUE_ALREADY_EXISTS: 409,
    INVALID_VALUE: 400,
    NOT_AUTHORIZED: 403,
    INSUFFICIENT_PERMISSIONS: 403,
    AUTHENTICATION_NEEDED: 401,
    AUTHENTICATION_FAILED: 403,
}

# Most specific first: the first matching class decides.
_CODES: tuple[tuple[type[CityIdError], int], ...] = (
    (IdentifierError, INVALID_HANDLE),
    (RecordError, INVALID_VALUE),
    (AuthenticationRequired, AUTHENTICATION_NEEDED),
    (SignatureError, AUTHENTICATION_FAILED),
    (AuthorityError, INSUFFICIENT_PERMISSIONS),
    (ConflictError, HANDLE_ALREADY_EXISTS),
    (NotFoundError, HANDLE_NOT_FOUND),
    (OperationError, INVALID_REQUEST),
    (LedgerError, SERVER_TOO_BUSY),
)


def response_code(exc: CityIdError) -> int:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return ERROR


def error_body(exc: CityIdError, handle: str | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, Handle REST error body) for ``exc``."""
    code = response_code(exc)
    body: dict[str, Any] = {"responseCode": code}
    if handle is not None:
        body["handle"] = handle
    body["message"] = exc.message
    body["rule"] = exc.rule
    return HTTP_STATUS.get(code, 500), body
