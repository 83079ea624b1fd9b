"""The demo namespace, built from China's administrative division codes.

* every prefecture-level city under the root ``MA.156`` (node = the first four
  digits of its GB/T 2260 code: 130100 -> ``MA.156.1301``), its prefix record
  carrying its name and coordinates;
* Shijiazhuang's departments, as at the 2019 launch: ``01`` urban management,
  ``02`` traffic management, then water, education, health, gas, environment;
* assets minted by a department, with GEO points inside the city's bounding
  box (taken from the coordinates of the city's own districts and counties).

Pure: it returns operations; the caller signs, submits and stores keys.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from importlib import resources

from .identifiers import Prefix, mint_suffix
from .ops import Delegate, Mint, MintItem, chunk_items
from .records import PUBKEY, SITE, Record, Value

ROOT = Prefix(("MA", "156"))
SHIJIAZHUANG = Prefix(("MA", "156", "1301"))
#: Cities the demo leaves out of the first delegation: they apply for their node instead
#: (``registrar.apply_demo``), so an operator can approve one (Baoding, Tangshan).
APPLICANTS = ("130600000000", "130200000000")

DEPARTMENTS: tuple[tuple[str, str, str], ...] = (
    ("01", "Urban management bureau", "城市管理局"),
    ("02", "Traffic management", "交通管理"),
    ("03", "Water", "水务"),
    ("04", "Education", "教育"),
    ("05", "Health", "卫生健康"),
    ("06", "Gas", "燃气"),
    ("07", "Environment", "生态环境"),
)

ASSET_KINDS: dict[str, tuple[str, str]] = {
    "01": ("manhole-cover", "Manhole cover"),
    "02": ("bus-stop", "Bus stop"),
    "03": ("water-meter", "Water meter"),
    "04": ("school", "School building"),
    "05": ("clinic", "Clinic"),
    "06": ("gas-valve", "Gas valve"),
    "07": ("air-sensor", "Air quality sensor"),
}


@dataclass(frozen=True, slots=True)
class Division:
    code: str
    name: str
    lon: float | None
    lat: float | None


def divisions() -> list[Division]:
    """Every row of the packaged adcodes.csv (GB/T 2260, WGS-84 coordinates)."""
    text = resources.files("cityid").joinpath("data/adcodes.csv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines())
    return [
        Division(r["adcode"], r["name"], _float(r["longitude"]), _float(r["latitude"]))
        for r in rows
    ]


def _float(text: str) -> float | None:
    return float(text) if text else None


def _centre(city: Division, rows: list[Division]) -> tuple[float, float] | None:
    """The city's own point, else the mean of its districts' points (a few rows lack one)."""
    if city.lat is not None and city.lon is not None:
        return city.lat, city.lon
    pts = [
        (d.lat, d.lon)
        for d in rows
        if d.code[:4] == city.code[:4] and d.lat is not None and d.lon is not None
    ]
    if not pts:
        return None
    return sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)


def cities(rows: list[Division] | None = None) -> list[Division]:
    """Prefecture-level cities: codes ending in eight zeros but not ten."""
    rows = rows if rows is not None else divisions()
    found = [d for d in rows if d.code.endswith("00000000") and not d.code.endswith("0" * 10)]
    return sorted(found, key=lambda d: d.code)


def city_prefix(city: Division) -> Prefix:
    return ROOT.child(city.code[:4])


def bounding_box(
    city: Division, rows: list[Division] | None = None
) -> tuple[float, float, float, float]:
    """(min_lat, min_lon, max_lat, max_lon) around the city's districts, padded a little."""
    rows = rows if rows is not None else divisions()
    pts = [
        (d.lat, d.lon)
        for d in rows
        if d.code[:4] == city.code[:4] and d.lat is not None and d.lon is not None
    ]
    if not pts:
        centre = _centre(city, rows)
        pts = [centre] if centre else [(0.0, 0.0)]
    lats, lons = [p[0] for p in pts], [p[1] for p in pts]
    pad = 0.05
    return min(lats) - pad, min(lons) - pad, max(lats) + pad, max(lons) + pad


def geo(lat: float, lon: float) -> str:
    return f"{lat:.6f},{lon:.6f}"


def city_delegations(
    city_keys: dict[Prefix, bytes],
    origins: dict[Prefix, str],
    sites: dict[Prefix, dict[str, str]],
    ts: int,
    log_keys: dict[Prefix, str] | None = None,
    leave_out: Collection[str] = (),
) -> Iterator[Delegate]:
    """One delegation per city but those ``leave_out`` names (GB/T 2260 codes);
    ``origins`` names the cities hosted elsewhere.

    A city hosted elsewhere also gets its log's checkpoint key (``log_keys``: a
    verifier key named after the origin) as a CITYID_PUBKEY value, so resolvers
    learn from the delegation which key signs that log.
    """
    log_keys = log_keys or {}
    rows = divisions()
    for city in cities(rows):
        if city.code in leave_out:
            continue
        prefix = city_prefix(city)
        values = [
            Value.make(1, "NAME", city.name, timestamp=ts),
            Value.make(3, "DESC", f"GB/T 2260 {city.code}", timestamp=ts),
        ]
        centre = _centre(city, rows)
        if centre is not None:
            values.append(Value.make(2, "GEO", geo(*centre), timestamp=ts))
            # The extent the landing pages draw their maps in (offline: no tile server).
            s, w, n, e = bounding_box(city, rows)
            values.append(Value.make(6, "GEO_BOX", f"{geo(s, w)},{geo(n, e)}", timestamp=ts))
        if prefix in sites:
            values.append(Value.make(4, SITE, sites[prefix], timestamp=ts))
        if prefix in log_keys:
            values.append(Value.make(5, PUBKEY, log_keys[prefix], timestamp=ts))
        yield Delegate(prefix, 0, city_keys[prefix], origins.get(prefix), Record(tuple(values)), ts)


def department_delegations(
    city: Prefix, dept_keys: dict[Prefix, bytes], ts: int
) -> Iterator[Delegate]:
    for node, name, local in DEPARTMENTS:
        prefix = city.child(node)
        record = Record(
            (Value.make(1, "NAME", name, timestamp=ts), Value.make(2, "DESC", local, timestamp=ts))
        )
        yield Delegate(prefix, 0, dept_keys[prefix], None, record, ts)


def asset_mints(
    dept: Prefix,
    count: int,
    bbox: tuple[float, float, float, float],
    ts: int,
    *,
    letters: str = "A",
    start: int = 0,
    seed: int = 1301,
    base_url: str = "https://assets.cityid.test",
) -> list[Mint]:
    """``count`` assets with GEO points in ``bbox``, grouped into leaves under 64 KiB."""
    rng = random.Random(seed)
    slug, label = ASSET_KINDS.get(dept.nodes[-1], ("asset", "Asset"))
    min_lat, min_lon, max_lat, max_lon = bbox
    items = []
    for n in range(start, start + count):
        suffix = mint_suffix(letters, n, 7)
        point = geo(rng.uniform(min_lat, max_lat), rng.uniform(min_lon, max_lon))
        record = Record((
            Value.make(1, "URL", f"{base_url}/{slug}/{suffix}", timestamp=ts),
            Value.make(2, "GEO", point, timestamp=ts),
            Value.make(3, "DESC", f"{label} {n}", timestamp=ts),
        ))  # fmt: skip
        items.append(MintItem(suffix, 0, record))
    return [Mint(dept, tuple(group), ts) for group in chunk_items(items, dept)]
