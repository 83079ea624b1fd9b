"""Which registrar hosts a prefix: the ``registrar`` URL in a delegation's ``CITYID_SITE``.

A write under ``MA.156.1301.02`` goes to the registrar whose log hosts that
prefix. The delegation that moved a subtree to another registrar names it in
its ``CITYID_SITE`` value (``registrar=URL``); prefixes delegated further on the
same registrar carry none. So the hosting registrar is the one named by the
nearest record, from the prefix up, that names one. The records are read from
a resolver, which serves them verified from the logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from cityid.identifiers import Prefix
from cityid.records import SITE

#: A lookup that does not answer quickly is skipped: the writer falls back to its default.
LOOKUP_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Hosting:
    """``url`` hosts ``prefix``: named by the ``CITYID_SITE`` of ``named_by``'s record."""

    url: str
    named_by: Prefix


def site_registrar(answer: dict[str, Any]) -> str | None:
    """The ``registrar`` URL in a Handle JSON answer's ``CITYID_SITE`` value, if any."""
    for v in answer.get("values") or ():
        # CITYID_SITE; HS_SITE in records written before cityid had its own type name.
        if not isinstance(v, dict) or v.get("type") not in (SITE, "HS_SITE"):
            continue
        data = v.get("data")
        site = data.get("value") if isinstance(data, dict) else None
        url = site.get("registrar") if isinstance(site, dict) else None
        if isinstance(url, str) and url:
            return url
    return None


async def hosting_registrar(resolver: str, prefix: Prefix) -> Hosting | None:
    """The registrar hosting ``prefix`` per ``resolver``; None if none is named or reachable."""
    base = resolver.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for p in prefix.ancestors():  # itself first, then up
                url = f"{base}/api/handles/{p.record_id}"
                async with session.get(url, headers={"Accept": "application/json"}) as resp:
                    if resp.status != 200:
                        continue
                    answer = await resp.json(content_type=None)
                found = site_registrar(answer) if isinstance(answer, dict) else None
                if found:
                    return Hosting(found, p)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return None
