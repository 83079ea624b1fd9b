"""Refuse configuration keys nobody reads.

A misspelt key (``[sync] sync`` for ``[sync] enabled``) would otherwise be
ignored in silence and its default used: every config loader describes the keys
it reads as a schema, and :func:`unknown_keys_message` names the others together
with the keys their table does know.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

#: A schema maps each known key to ``VALUE`` (a plain value), a nested schema
#: (a table), ``[schema]`` (an array of tables) or ``ANY_TABLE`` (a table of free keys).
VALUE = None
ANY_TABLE = "*"


def unknown_keys(
    raw: Mapping[str, Any], schema: Mapping[str, Any], where: str = ""
) -> list[tuple[str, list[str]]]:
    """``(dotted name, keys its table knows)`` for each key of ``raw`` not in ``schema``."""
    out = []
    for key, value in raw.items():
        name = f"{where}{key}"
        if key not in schema:
            out.append((name, sorted(schema)))
            continue
        sub = schema[key]
        if isinstance(sub, Mapping) and isinstance(value, Mapping):
            out += unknown_keys(value, sub, f"{name}.")
        elif isinstance(sub, list) and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    out += unknown_keys(item, sub[0], f"{name}[{i}].")
    return out


def unknown_keys_message(raw: Mapping[str, Any], schema: Mapping[str, Any], path: object) -> str:
    """What is wrong with ``raw``'s keys, for an error naming ``path``; "" when nothing is."""
    parts = []
    for name, known in unknown_keys(raw, schema):
        leaf = name.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        parts.append(f"{name} ({hint}known here: {', '.join(known)})")
    if not parts:
        return ""
    return f"{path}: unknown key {'; '.join(parts)}"
