"""Write cityid/data/names_en.csv: English names of the provinces and prefecture-level cities.

A development tool, run once; its output is committed, so nothing here is a runtime
dependency. Needs ``pip install pypinyin`` (romanisation of the place's own name);
the administrative words (市, 地区, 盟, 自治州, 自治区, 省) and the ethnic groups
of autonomous prefectures are translated by the tables below, and the few names
with a customary English form by OVERRIDES. Run from the repository root:

    python scripts/gen_names_en.py
"""

from __future__ import annotations

import csv
from pathlib import Path

from pypinyin import lazy_pinyin  # type: ignore[import-not-found]

DATA = Path(__file__).resolve().parent.parent / "cityid" / "data"
ETHNIC = {
    "朝鲜族": "Korean", "蒙古族": "Mongol", "蒙古": "Mongol", "藏族": "Tibetan", "羌族": "Qiang",
    "土家族": "Tujia", "苗族": "Miao", "彝族": "Yi", "布依族": "Bouyei", "傈僳族": "Lisu",
    "回族": "Hui", "柯尔克孜": "Kyrgyz", "白族": "Bai", "壮族": "Zhuang", "侗族": "Dong",
    "哈萨克": "Kazakh", "傣族": "Dai", "哈尼族": "Hani", "景颇族": "Jingpo", "维吾尔": "Uygur",
}  # fmt: skip
OVERRIDES = {
    "陕西省": "Shaanxi", "内蒙古自治区": "Inner Mongolia", "西藏自治区": "Tibet",
    "香港特别行政区": "Hong Kong", "澳门特别行政区": "Macao", "宁夏回族自治区": "Ningxia",
    "新疆维吾尔自治区": "Xinjiang", "广西壮族自治区": "Guangxi",
    # pypinyin reads these characters in their other sound
    "长治市": "Changzhi", "朝阳市": "Chaoyang", "漯河市": "Luohe", "昌都市": "Qamdo",
    # customary English forms (Mongolian, Tibetan and Uygur place names)
    "呼和浩特市": "Hohhot", "乌鲁木齐市": "Urumqi", "拉萨市": "Lhasa", "日喀则市": "Xigaze",
    "林芝市": "Nyingchi", "那曲地区": "Nagqu Prefecture", "阿里地区": "Ngari Prefecture",
    "喀什地区": "Kashgar Prefecture", "和田地区": "Hotan Prefecture",
    "阿克苏地区": "Aksu Prefecture", "阿勒泰地区": "Altay Prefecture",
    "吐鲁番市": "Turpan", "阿拉善盟": "Alxa League", "锡林郭勒盟": "Xilingol League",
    "巴音郭楞蒙古自治州": "Bayingolin Mongol Autonomous Prefecture",
    "克孜勒苏柯尔克孜自治州": "Kizilsu Kyrgyz Autonomous Prefecture",
    "博尔塔拉蒙古自治州": "Bortala Mongol Autonomous Prefecture",
    "伊犁哈萨克自治州": "Ili Kazakh Autonomous Prefecture",
    "果洛藏族自治州": "Golog Tibetan Autonomous Prefecture",
}  # fmt: skip
SKIP = ("市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划")


def romanise(text: str) -> str:
    syllables = lazy_pinyin(text, v_to_u=True)
    out = syllables[0]
    for s in syllables[1:]:
        out += ("'" if s[0] in "aoe" else "") + s
    return out[:1].upper() + out[1:]


def english(name: str) -> str | None:
    if name in OVERRIDES:
        return OVERRIDES[name]
    if name in SKIP:
        return None
    if name.endswith("自治州"):
        body = name.removesuffix("自治州")
        cut = min((body.find(k) for k in ETHNIC if k in body), default=len(body))
        groups, rest = [], body[cut:]
        while rest:
            key = next(
                (k for k in sorted(ETHNIC, key=len, reverse=True) if rest.startswith(k)), None
            )
            if key is None:
                return None
            groups.append(ETHNIC[key])
            rest = rest[len(key) :]
        return f"{romanise(body[:cut])} {' '.join(groups)} Autonomous Prefecture"
    for suffix, word in (("地区", " Prefecture"), ("盟", " League"), ("省", ""), ("市", "")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return romanise(name.removesuffix(suffix)) + word
    return None


def main() -> None:
    with open(DATA / "adcodes.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    wanted = sorted(
        (r for r in rows if r["adcode"].endswith("00000000")), key=lambda r: r["adcode"]
    )
    with open(DATA / "names_en.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["adcode", "name", "name_en"])
        for r in wanted:
            en = english(r["name"])
            if en:
                w.writerow([r["adcode"], r["name"], en])


if __name__ == "__main__":
    main()
