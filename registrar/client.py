"""An async client for a registrar: submit signed operations, read versions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import aiohttp
import msgpack

from cityid.errors import CityIdError
from cityid.identifiers import Identifier, Prefix
from cityid.keys import SigningKey
from cityid.ops import Operation, SignedOperation

from .core import END_OF_LEAVES, LEAVES


class RegistrarError(CityIdError):
    """The registrar refused: carries its rule, message and Handle response code."""

    rule = "registrar"

    def __init__(
        self, message: str, *, rule: str | None = None, status: int = 0, response_code: int = 2
    ) -> None:
        super().__init__(message, rule=rule)
        self.status = status
        self.response_code = response_code


class RegistrarClient:
    def __init__(self, base_url: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def __aenter__(self) -> RegistrarClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        url = self.base_url + path
        try:
            async with self._session.request(method, url, **kw) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = {"message": (await resp.text())[:200]}
                if resp.status >= 400 or not isinstance(body, dict):
                    b = body if isinstance(body, dict) else {}
                    raise RegistrarError(
                        f"registrar refused ({resp.status}): {b.get('message', 'no message')}",
                        rule=b.get("rule", "registrar"),
                        status=resp.status,
                        response_code=int(b.get("responseCode", 2)),
                    )
                return body
        except aiohttp.ClientError as e:
            raise RegistrarError(
                f"cannot reach the registrar at {self.base_url}: {e}", rule="unreachable"
            ) from e

    async def submit(self, leaves: list[bytes]) -> dict[str, Any]:
        """POST signed leaves; returns ``{receipts: [...], checkpoint}`` once published."""
        return await self._call(
            "POST",
            "/api/ops",
            data=msgpack.packb(leaves, use_bin_type=True),
            headers={"Content-Type": "application/msgpack"},
        )

    async def submit_stream(self, leaves: Iterable[bytes]) -> dict[str, Any]:
        """POST leaves as they are produced (``application/x-cityid-leaves``), all or none.

        ``leaves`` is iterated while the request is sent, so the registrar checks
        the first leaves while the next ones are being made. If the iterator
        raises (e.g. a bad CSV row), the upload is aborted before its end marker,
        the registrar applies nothing, and that exception is raised here.
        """
        failed: list[BaseException] = []

        async def body() -> AsyncIterator[bytes]:
            pack = msgpack.Packer(use_bin_type=True).pack
            try:
                for leaf in leaves:
                    yield pack(leaf)
            except BaseException as e:
                failed.append(e)
                raise
            yield END_OF_LEAVES

        try:
            return await self._call(
                "POST", "/api/ops", data=body(), headers={"Content-Type": LEAVES}
            )
        except Exception:
            if failed:
                raise failed[0] from None
            raise

    async def submit_ops(self, ops: list[Operation], key: SigningKey) -> dict[str, Any]:
        return await self.submit([SignedOperation.sign(op, key).encode() for op in ops])

    async def version(self, ident: Identifier) -> tuple[int, bool]:
        body = await self._call("GET", f"/api/version/{ident}")
        return int(body["version"]), bool(body["exists"])

    async def key_version(self, prefix: Prefix) -> int:
        """What a key rotation of ``prefix`` must name as ``prev``."""
        body = await self._call("GET", f"/api/version/{prefix.record_id}")
        return int(body.get("key_version", 0))

    async def custody_version(self, prefix: Prefix) -> int:
        """What a custody grant of ``prefix`` must name as ``prev``."""
        body = await self._call("GET", f"/api/version/{prefix.record_id}")
        return int(body.get("custody_version", 0))

    async def next_number(self, prefix: Prefix, letters: str, width: int) -> int:
        body = await self._call(
            "GET", f"/api/next/{prefix}", params={"letters": letters, "width": str(width)}
        )
        return int(body["next"])

    async def info(self) -> dict[str, Any]:
        return await self._call("GET", "/")
