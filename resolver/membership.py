"""Which suffixes a prefix may hold: a Bloom filter a lookup can ask before Redis.

A national resolver sees floods of names nobody minted (random-subdomain attacks
are the commonest against authoritative DNS). With each prefix's filter in the
process, a name under a known prefix that is not registered is answered without a
round trip. The filter never says "absent" for a suffix that was added (a false
positive only costs the lookup it would have cost anyway), and sync adds every
explicit identifier before it says it exists.

Layout: one *block* of :data:`BLOCK_BITS` bits per bucket of the prefix's layout
(``2**bits`` buckets, :mod:`resolver.layout`), so the filter grows with the
buckets, from about 16 bits an identifier after a resize to about 8 when a
resize is due (false positives from ~0.2% to ~2%). A suffix sets
:data:`PROBES` bits in the block of its bucket (the top bits of its CRC-32, as
the layout buckets it), at positions from the CRC's low bits and Adler-32 (double
hashing). Bit ``n`` of the filter is bit ``7 - n % 8`` of byte ``n // 8``, as
Redis counts bits (``SETBIT``, ``BITFIELD``), so the writer sets them in place.

Pure functions: no I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

BLOCK_BITS = 1024  # bits of filter per bucket (a bucket holds up to ~128 identifiers)
assert BLOCK_BITS == 1024  # offsets() and may_contain() mask with 1023
BLOCK_BYTES = BLOCK_BITS // 8
PROBES = 5  # bits per suffix


def size(bits: int) -> int:
    """The filter's size in bytes for a prefix laid out in ``2**bits`` buckets."""
    return BLOCK_BYTES << bits


def offsets(suffix: str, bits: int) -> tuple[int, ...]:
    """The bits ``suffix`` sets in the filter of a prefix laid out in ``2**bits`` buckets."""
    data = suffix.encode()
    c = zlib.crc32(data)
    a = zlib.adler32(data)
    base = (c >> (32 - bits)) * BLOCK_BITS if bits else 0
    h, step = c & 1023, ((a >> 16) ^ (a & 0xFFFF)) | 1
    # PROBES (5) positions, written out: a generator costs more than the arithmetic.
    return (base + h, base + ((h + step) & 1023), base + ((h + 2 * step) & 1023),
            base + ((h + 3 * step) & 1023), base + ((h + 4 * step) & 1023))  # fmt: skip


def add(bloom: bytearray, suffix: str, bits: int) -> None:
    for o in offsets(suffix, bits):
        bloom[o >> 3] |= 0x80 >> (o & 7)


def may_contain(bloom: bytes | bytearray, suffix: str, bits: int) -> bool:
    """False only if ``suffix`` was never added (with the same ``bits``)."""
    data = suffix.encode()
    c = zlib.crc32(data)
    a = zlib.adler32(data)
    base = (c >> (32 - bits)) * BLOCK_BITS if bits else 0
    h, step = c & (BLOCK_BITS - 1), ((a >> 16) ^ (a & 0xFFFF)) | 1
    for i in range(PROBES):
        o = base + ((h + i * step) & (BLOCK_BITS - 1))
        if not bloom[o >> 3] & (0x80 >> (o & 7)):
            return False
    return True


def build(suffixes: Iterable[str], bits: int) -> bytearray:
    """The filter of ``suffixes`` for a prefix laid out in ``2**bits`` buckets."""
    bloom = bytearray(size(bits))
    for s in suffixes:
        add(bloom, s, bits)
    return bloom


__all__ = ["BLOCK_BITS", "BLOCK_BYTES", "PROBES", "add", "build", "may_contain", "offsets", "size"]
