"""The demo's pending applications, filed over HTTP on ``cityid up``'s first start.

The cities in :data:`cityid.demo.APPLICANTS` (Baoding, Tangshan) apply to the root
for their node, and a parks department applies to Shijiazhuang, each with its own
key in ``keys/`` (``keys/cities/1306.key``, ``keys/dept-08.key``): an operator can
approve one (README tour) and mint with the applicant's key.
"""

from __future__ import annotations

from pathlib import Path

from cityid import demo
from cityid.keys import SigningKey
from cityid.ops import now

from .applications import Application, parse_application, signed_json
from .apply_cli import ApplicationClient

PARKS = ("08", "Parks and green spaces")


def _application(key: SigningKey, contact: str, phone: str, **fields: str) -> Application:
    return parse_application({
        **fields, "contact_name": "Operations", "contact_email": contact,
        "contact_phone": phone, "admin_key": str(key.verifier), "time": now(),
    })  # fmt: skip


async def file_demo_applications(root_url: str, city_url: str, keys: Path) -> list[str]:
    """File the demo's applications; returns their nodes."""
    table = {d.code: d for d in demo.divisions()}
    filed = []
    async with ApplicationClient(root_url) as root:
        for code in demo.APPLICANTS:
            city = table[code]
            node = demo.city_prefix(city)
            key = SigningKey.read_or_create(keys / "cities" / f"{code[:4]}.key", f"{node}-admin")
            app = _application(
                key, f"it@{code[:4]}.city.example", f"+86 {code[:3]} 555 0100",
                adcode=code, name=city.name,
            )  # fmt: skip
            await root.apply(signed_json(app, key))
            filed.append(str(node))
    node, name = PARKS
    prefix = demo.SHIJIAZHUANG.child(node)
    key = SigningKey.read_or_create(keys / f"dept-{node}.key", f"{prefix}-admin")
    app = _application(key, "parks@sjz.example", "+86 311 555 0108", node=str(prefix), name=name)
    async with ApplicationClient(city_url) as city_client:
        await city_client.apply(signed_json(app, key))
    filed.append(str(prefix))
    return filed
