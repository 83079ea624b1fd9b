"""An offline map: a GEO point drawn inside its city's extent, as inline SVG.

Pure functions, no I/O and no tiles: a landing page must not make the reader's
browser call a tile server (privacy, and the page's ``default-src 'none'``), so
the map is geometry only: the extent (a ``GEO_BOX`` from the nearest ancestor
prefix record that has one), a graticule with its degrees, a scale bar in
kilometres, the ancestor's own ``GEO`` (the city's centre) and the point.

The projection is equirectangular scaled by the cosine of the middle latitude:
exact enough for a city (a few tenths of a percent over 100 km) and trivially
checked by a test that recomputes a marker's position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from cityid.records import Record

WIDTH = 360  # px; the height follows the extent's aspect, within bounds
MIN_HEIGHT, MAX_HEIGHT = 160, 360
# Margins around the extent and the point, as shares of the view's span: room on the
# left for the latitude labels, above for the scale bar, below for the longitudes, so
# the dashed extent never runs through a label.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 0.22, 0.06, 0.16, 0.1
LABEL = 'paint-order="stroke" stroke="#eef3f6" stroke-width="3" stroke-linejoin="round"'
KM_PER_DEG = 111.32  # a degree of latitude, and of longitude at the equator
_NICE = (1.0, 2.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class Box:
    south: float
    west: float
    north: float
    east: float

    @classmethod
    def around(cls, lat: float, lon: float, half: float = 0.05) -> Box:
        return cls(lat - half, lon - half, lat + half, lon + half)

    def contains(self, lat: float, lon: float) -> bool:
        return self.south <= lat <= self.north and self.west <= lon <= self.east

    def union(self, lat: float, lon: float) -> Box:
        return Box(
            min(self.south, lat), min(self.west, lon), max(self.north, lat), max(self.east, lon)
        )


@dataclass(frozen=True, slots=True)
class Area:
    """What an ancestor prefix record says about where its children are."""

    name: str  # e.g. the city's NAME, for the caption
    box: Box | None
    centre: tuple[float, float] | None


def parse_point(data: object) -> tuple[float, float] | None:
    """A GEO value's ``lat,lon`` (already checked by the record) as floats."""
    if not isinstance(data, str):
        return None
    lat, _, lon = data.partition(",")
    try:
        return float(lat), float(lon)
    except ValueError:
        return None


def parse_box(data: object) -> Box | None:
    if not isinstance(data, str):
        return None
    parts = data.split(",")
    if len(parts) != 4:
        return None
    try:
        s, w, n, e = (float(p) for p in parts)
    except ValueError:
        return None
    return Box(s, w, n, e) if s <= n and w <= e else None


def area_of(record: Record) -> Area:
    """The map-relevant values of a prefix record (its name, GEO_BOX and GEO)."""
    name = record.first("NAME")
    box = record.first("GEO_BOX")
    geo = record.first("GEO")
    return Area(
        name=str(name.data) if name is not None and isinstance(name.data, str) else "",
        box=parse_box(box.data) if box is not None else None,
        centre=parse_point(geo.data) if geo is not None else None,
    )


def _nice_step(span: float, ticks: int) -> float:
    """A 1/2/2.5/5 x 10^k step giving about ``ticks`` intervals over ``span``."""
    raw = span / max(ticks, 1)
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    return next((n * mag for n in _NICE if n * mag >= raw), 10 * mag)


def _deg(x: float, pos: str, neg: str) -> str:
    text = f"{abs(x):.6f}".rstrip("0").rstrip(".")
    return f"{text}°{pos if x >= 0 else neg}" if text != "0" else "0°"


@dataclass(frozen=True, slots=True)
class Projection:
    view: Box
    width: int
    height: int

    @classmethod
    def fit(cls, view: Box, width: int = WIDTH) -> Projection:
        k = math.cos(math.radians((view.south + view.north) / 2))
        w_deg = max((view.east - view.west) * k, 1e-9)
        h_deg = max(view.north - view.south, 1e-9)
        height = round(min(max(width * h_deg / w_deg, MIN_HEIGHT), MAX_HEIGHT))
        return cls(view, width, height)

    @property
    def xscale(self) -> float:
        # Equal ground distance per pixel on both axes at the middle latitude, when the
        # height was not clamped; when it was, the view is stretched, honestly labelled.
        return self.width / (self.view.east - self.view.west)

    @property
    def yscale(self) -> float:
        return self.height / (self.view.north - self.view.south)

    def xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (
            round((lon - self.view.west) * self.xscale, 1),
            round((self.view.north - lat) * self.yscale, 1),
        )


def _view(point: tuple[float, float], area: Area | None) -> tuple[Box, Box | None]:
    lat, lon = point
    box = area.box if area is not None else None
    view = box.union(lat, lon) if box is not None else Box.around(lat, lon)
    if area is not None and area.centre is not None:
        view = view.union(*area.centre)
    dy = (view.north - view.south) or 0.1
    dx = (view.east - view.west) or 0.1
    return (
        Box(
            view.south - dy * MARGIN_BOTTOM,
            view.west - dx * MARGIN_LEFT,
            view.north + dy * MARGIN_TOP,
            view.east + dx * MARGIN_RIGHT,
        ),
        box,
    )


def map_svg(point: tuple[float, float], area: Area | None = None, *, label: str = "") -> str:
    """The inline SVG map of ``point`` inside ``area``'s extent (or a 0.1° square around it)."""
    lat, lon = point
    view, box = _view(point, area)
    pr = Projection.fit(view)
    parts = [
        f'<svg class="map" xmlns="http://www.w3.org/2000/svg" width="{pr.width}" '
        f'height="{pr.height}" viewBox="0 0 {pr.width} {pr.height}" role="img" '
        f'aria-label="{escape(label or "map")}: {lat:.5f}, {lon:.5f}" '
        'font-family="system-ui,sans-serif" font-size="10">',
        f'<rect width="{pr.width}" height="{pr.height}" fill="#eef3f6"/>',
    ]
    # Graticule: about five lines each way, labelled at the edges.
    g = ['<g class="graticule" stroke="#c9d4dc" stroke-width="0.6">']
    t = [f'<g fill="#6a7780" {LABEL}>']
    step = _nice_step(view.east - view.west, 5)
    for i in range(math.ceil(view.west / step), math.floor(view.east / step) + 1):
        x0 = i * step
        x, _ = pr.xy(view.south, x0)
        g.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{pr.height}"/>')
        if x < pr.width - 48:  # room for the label
            t.append(f'<text x="{x + 2}" y="{pr.height - 3}">{_deg(x0, "E", "W")}</text>')
    step = _nice_step(view.north - view.south, 5)
    for i in range(math.ceil(view.south / step), math.floor(view.north / step) + 1):
        y0 = i * step
        _, y = pr.xy(y0, view.west)
        g.append(f'<line x1="0" y1="{y}" x2="{pr.width}" y2="{y}"/>')
        if 26 < y < pr.height - 14:  # clear of the scale bar above and the longitudes below
            t.append(f'<text x="2" y="{y - 2}">{_deg(y0, "N", "S")}</text>')
    parts += [*g, "</g>"]
    if box is not None:
        x1, y1 = pr.xy(box.north, box.west)
        x2, y2 = pr.xy(box.south, box.east)
        parts.append(
            f'<rect class="extent" x="{x1}" y="{y1}" width="{round(x2 - x1, 1)}" '
            f'height="{round(y2 - y1, 1)}" fill="#ffffff" fill-opacity="0.55" '
            'stroke="#5b7083" stroke-width="1.2" stroke-dasharray="4 3"/>'
        )
    parts += [*t, "</g>"]  # labels above the extent's veil
    if box is not None and area is not None and area.name:
        parts.append(
            f'<text class="area" x="{x1 + 4}" y="{y1 + 13}" fill="#34495e" '
            f'font-weight="600" {LABEL}>{escape(area.name)}</text>'
        )
    if area is not None and area.centre is not None:
        cx, cy = pr.xy(*area.centre)
        parts.append(
            f'<g class="centre" stroke="#34495e" stroke-width="1.2"><line x1="{cx - 4}" '
            f'y1="{cy}" x2="{cx + 4}" y2="{cy}"/><line x1="{cx}" y1="{cy - 4}" x2="{cx}" '
            f'y2="{cy + 4}"/></g>'
        )
    parts.append(_scale_bar(pr))
    px, py = pr.xy(lat, lon)
    parts.append(
        f'<circle class="point" cx="{px}" cy="{py}" r="5" fill="#d93025" stroke="#fff" '
        f'stroke-width="1.5"><title>{lat:.6f}, {lon:.6f}</title></circle>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _scale_bar(pr: Projection) -> str:
    mid = (pr.view.south + pr.view.north) / 2
    km_per_px = KM_PER_DEG * math.cos(math.radians(mid)) / pr.xscale
    km = _nice_step(km_per_px * pr.width / 4, 1)
    px = round(km / km_per_px, 1)
    # Top right, the label left of the bar on the same line: both inside the top margin.
    x, y = pr.width - px - 10, 10
    text = f"{km:g} km"
    return (
        f'<g class="scale" stroke="#34495e" stroke-width="1.5"><line x1="{x}" y1="{y}" '
        f'x2="{x + px}" y2="{y}"/><line x1="{x}" y1="{y - 3}" x2="{x}" y2="{y + 3}"/>'
        f'<line x1="{x + px}" y1="{y - 3}" x2="{x + px}" y2="{y + 3}"/></g>'
        f'<text x="{x - 4}" y="{y + 3.5}" fill="#34495e" text-anchor="end" {LABEL}>{text}</text>'
    )
