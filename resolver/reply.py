"""One HTTP answer as the bytes both front ends send.

A :class:`Reply` is a status, the head's bytes (``wire``: the status line and
headers up to, not including, ``Date`` and the blank line), the body and the
validator. The fast path writes ``wire + Date + CRLF + body``; aiohttp gets
:attr:`Reply.headers`, read back from ``wire`` when asked (rarely: most answers
never leave the fast path). Replies are cheap to make, so answers derived from a
compact cache slot on every hit are Replies too.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus

from cityid.httpedge import SERVER

#: Headers every answer carries: any web page may read them (CORS), and no
#: browser second-guesses the declared content type.
COMMON_HEADERS: tuple[tuple[str, str], ...] = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "ETag, Location"),
    ("X-Content-Type-Options", "nosniff"),
)

_SERVER_LINE = f"Server: {SERVER}\r\n"

_KEEP_304 = {"cache-control", "etag", "vary", "expires"} | {k.lower() for k, _ in COMMON_HEADERS}


class Reply:
    """One HTTP answer, encoded once and written as often as needed."""

    __slots__ = ("body", "etag", "expires", "status", "wire")

    def __init__(
        self,
        status: int,
        wire: bytes,
        body: bytes,
        etag: str | None = None,
        expires: float | None = None,  # monotonic time; None: as long as what it came from
    ) -> None:
        self.status = status
        self.wire = wire
        self.body = body
        self.etag = etag
        self.expires = expires

    @classmethod
    def make(
        cls, status: int, headers: Iterable[tuple[str, str]], body: bytes, etag: str | None = None
    ) -> Reply:
        """The answer with ``headers`` (and the common ones, the ETag, the length)."""
        hdrs = [*COMMON_HEADERS, *headers]
        if etag is not None:
            hdrs.append(("ETag", etag))
        hdrs.append(("Content-Length", str(len(body))))
        return cls(status, head(status, hdrs), body, etag)

    def until(self, expires: float) -> Reply:
        return Reply(self.status, self.wire, self.body, self.etag, expires)

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The headers in ``wire`` but ``Server`` and ``Content-Length`` (aiohttp sets both)."""
        lines = self.wire.decode("latin-1").split("\r\n")[2:-1]  # after status line and Server
        out = []
        for line in lines:
            name, _, value = line.partition(": ")
            if name != "Content-Length":
                out.append((name, value))
        return out

    def headers_304(self) -> list[tuple[str, str]]:
        """RFC 9110 §15.4.5: a 304 repeats the validators and caching headers (and CORS)."""
        return [(k, v) for k, v in self.headers if k.lower() in _KEEP_304]

    def wire_304(self) -> bytes:
        # Built on demand: 304s are rare next to the answers sent whole.
        return head(304, self.headers_304())

    def __repr__(self) -> str:
        return f"Reply({self.status}, etag={self.etag!r}, {len(self.body)} bytes)"


def head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """The status line and ``headers`` (after ``Server``), each line ending in CRLF."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n", _SERVER_LINE]
    lines += [f"{k}: {v}\r\n" for k, v in headers]
    # Values are ours (URLs are checked records, free of CR/LF), never request echoes.
    return "".join(lines).encode("latin-1")


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison of ``If-None-Match`` against ``etag``."""
    if if_none_match.strip() == "*":
        return True
    want = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == want for tag in if_none_match.split(","))


__all__ = ["COMMON_HEADERS", "SERVER", "Reply", "etag_matches", "head"]
