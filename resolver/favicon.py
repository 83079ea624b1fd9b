"""The resolver's icon (``/favicon.ico``), drawn in code: three QR finder patterns.

An ICO file holding one 32x32 PNG (accepted by every browser since Windows
Vista's format change), built once from a pixel rule with ``zlib`` and
``struct``: no image library, no binary file in the tree.
"""

from __future__ import annotations

import functools
import struct
import zlib

SIZE = 32
INK = (0x1F, 0x2A, 0x37, 0xFF)  # the pages' navigation bar
PAPER = (0xFF, 0xFF, 0xFF, 0xFF)
ACCENT = (0x0B, 0x57, 0xD0, 0xFF)  # the pages' link colour
CLEAR = (0, 0, 0, 0)


def _finder(x: int, y: int) -> tuple[int, int, int, int] | None:
    """A 12x12 finder pattern at the origin: ring, gap, centre (as in a QR code)."""
    if not (0 <= x < 12 and 0 <= y < 12):
        return None
    ring = min(x, y, 11 - x, 11 - y)
    if ring < 2:
        return INK
    if ring < 4:
        return PAPER
    return INK


def pixel(x: int, y: int) -> tuple[int, int, int, int]:
    for ox, oy in ((2, 2), (18, 2), (2, 18)):
        got = _finder(x - ox, y - oy)
        if got is not None:
            return got
    if 18 <= x < 30 and 18 <= y < 30:
        return ACCENT if (x // 4 + y // 4) % 2 == 0 else PAPER
    return PAPER if 1 <= x < SIZE - 1 and 1 <= y < SIZE - 1 else CLEAR


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png() -> bytes:
    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(SIZE)) for y in range(SIZE)
    )
    header = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


@functools.cache
def ico() -> bytes:
    """An ICO directory of one entry, the PNG."""
    image = png()
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(image), 6 + 16)
    return directory + entry + image
