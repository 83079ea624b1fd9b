"""English names of China's provinces and prefecture-level cities, for pages in English.

``data/names_en.csv`` (adcode, Chinese name, English name) is generated once
from ``data/adcodes.csv`` by ``scripts/gen_names_en.py`` (pypinyin at
development time, with hand-checked customary forms) and committed: nothing
here romanises at run time. Read on first use.
"""

from __future__ import annotations

import csv
import functools
from importlib import resources


@functools.cache
def _english() -> dict[str, str]:
    text = resources.files("cityid").joinpath("data/names_en.csv").read_text(encoding="utf-8")
    return {r["name"]: r["name_en"] for r in csv.DictReader(text.splitlines())}


def english_name(name: str) -> str | None:
    """The English name of the province or city called ``name`` in Chinese, if known."""
    return _english().get(name.strip())


def both_scripts(name: str) -> str:
    """``name`` with its English form after it, where one is known: "石家庄市 Shijiazhuang"."""
    en = english_name(name)
    return f"{name} {en}" if en and en != name else name
