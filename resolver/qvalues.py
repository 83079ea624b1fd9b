"""The ranges of an ``Accept``-style header with their weights (RFC 9110 §12.4.2).

Shared by the choice of representation (``Accept``) and of language
(``Accept-Language``). Total on any input: a weight that does not parse, or is
outside 0..1, is 0 (the range is not acceptable), never an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

MAX_RANGES = 32  # ranges read from one header: the rest is ignored


def weighted(header: str) -> Iterator[tuple[str, float]]:
    """Each range of ``header``, lower-cased, with its ``q`` (1 when absent)."""
    for item in header.split(",")[:MAX_RANGES]:
        token, *params = item.strip().split(";")
        q = 1.0
        for p in params:
            k, _, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0 or math.isnan(q):
                    q = 0.0
        yield token.strip().lower(), q
