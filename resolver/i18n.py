"""The pages' words in English and Simplified Chinese, and which one a request gets.

Every piece of text a page writes is here, as plain dicts keyed by the same
names; :func:`t` picks one and fills its ``{fields}``. A request's language is
its ``?lang=`` (the switch on every page) or else the best of its
``Accept-Language`` (RFC 9110 §12.5.4), English by default. Pages in a language
chosen from the header say ``Vary: Accept-Language``; every page says
``Content-Language``.
"""

from __future__ import annotations

import functools

from .qvalues import weighted

EN, ZH = "en", "zh"
LANGS = (EN, ZH)
DEFAULT = EN
#: What the switch on a page offers, in the language it switches to.
NAMES = {EN: "English", ZH: "中文"}
#: ``<html lang>`` and ``Content-Language``.
TAGS = {EN: "en", ZH: "zh-Hans"}

TEXT: dict[str, dict[str, str]] = {
    EN: {
        "nav.home": "resolver",
        "nav.explorer": "ledger explorer",
        "nav.scan": "scan a code",
        "switch": "Language",
        "id.example": "Identifiers look like {example}: a prefix of dot-separated node codes, "
        "a slash, a suffix.",
        "goes_to": "Goes to",
        "version": "version",
        "as_json": "as JSON",
        "values": "Values",
        "values.none": "This record has no values.",
        "col.index": "index",
        "col.type": "type",
        "col.data": "data",
        "col.ttl": "ttl",
        "col.timestamp": "timestamp",
        "where": "Where it is",
        "where.inside": "inside {name}'s extent",
        "where.offline": "drawn here, from the records alone: no map server is asked",
        "source": "Where this answer comes from",
        "log": "log",
        "leaf": "leaf index",
        "cp.size": "checkpoint size",
        "cp.unknown": "not yet known",
        "cp.root": "root hash",
        "cp.cosigned": "cosigned by",
        "cp.none": "none",
        "status": "status",
        "proof": "proof",
        "proof.text": "of the leaf that set this record, checkable offline",
        "state.ok": "verified",
        "state.ok.text": "this resolver's sync checked the checkpoint's signature, the witness "
        "quorum and consistency with the one before, proved every entry up to it into the "
        "tree, and checked each operation's authority back to the root key",
        "state.alarm": "alarm",
        "state.alarm.text": "sync stopped following this log",
        "deleted": "deleted",
        "deleted.text": "this identifier was registered and has been deleted (version "
        "{version}). It will not be reassigned silently: the deletion is an operation in the "
        "log below.",
        "deleted.title": "{ident} (deleted)",
        "err.asked": "asked",
        "err.why": "why",
        "err.rule": "rule",
        "err.400": "Bad identifier",
        "err.404": "Not registered",
        "err.410": "Deleted",
        "err.503": "Unavailable",
        "err.other": "Error",
        "err.search": "Look for another identifier or prefix:",
        "err.back": "Back to the resolver's home page",
        "home.title": "cityid resolver",
        "home.text": "GET {id} redirects to the identifier's URL; {noredirect} shows its "
        "record; {handles} answers in the Handle REST shape; {proofs} returns its tlog-proof.",
        "home.redis": "Redis",
        "home.up": "up",
        "home.down": "unreachable",
        "home.size": "size",
        "home.state": "state",
        "home.reason": "reason",
        "search.placeholder": "MA.156.1301.02/A0000000U, MA.156.1301, or a resolver URL",
        "search.label": "identifier, prefix or resolver URL",
        "search.button": "Find",
        "ex.title": "Ledger explorer",
        "ex.text": "Each registrar keeps an append-only log of signed operations; this resolver "
        "follows every log, checks each checkpoint's signature, its witnesses' cosignatures "
        "and its consistency with the last one, and serves only what it verified. Formats: "
        "C2SP tlog-checkpoint, tlog-tiles, tlog-cosignature.",
        "ex.none": "No log followed yet.",
        "ex.tiles": "tiles",
        "ex.checked": "checked",
        "ex.recent": "Recent batches",
        "ex.no_batch": "No batch applied since this resolver's Redis was filled.",
        "ex.leaves": "leaves",
        "ex.entries": "entries",
        "ex.wrote": "wrote",
        "ex.example": "for example",
        "ex.verified": "verified",
        "ex.applied": "entries already applied",
        "n.identifiers.one": "{n} identifier",
        "n.identifiers": "{n} identifiers",
        "n.ranges.one": "{n} range",
        "n.ranges": "{n} ranges",
        "n.prefixes.one": "{n} prefix record",
        "n.prefixes": "{n} prefix records",
        "map.label": "map",
        "scan.title": "Scan a cityid code",
        "scan.intro": "Point the camera at a 2D code of an identifier: its page on this resolver "
        "opens (wherever the code was printed).",
        "scan.starting": "Starting…",
        "scan.noscript": "The scanner needs JavaScript. Type the identifier after this "
        "resolver's address instead:",
        "scan.decoder": "decoder",
        "scan.read": "read",
        "scan.again": "Try the camera again",
        "scan.photo": "or choose a photo",
        "scan.holds": "A code holds an identifier, or a resolver's URL ending in one, such as",
        "js.none": "none",
        "js.found": "Found {id}: opening its page…",
        "js.not_cityid": "Not a cityid code: it names no identifier (it holds the text shown "
        "below).",
        "js.still": "Still scanning.",
        "js.decode_failed": "Decoding failed ({name}): {message}",
        "js.no_media": "This browser gives no camera to this page (a camera needs HTTPS): choose "
        "a photo instead.",
        "js.starting": "Starting the camera…",
        "js.prompt": "Allow the camera when the browser asks, or pick a photo below.",
        "js.denied": "Camera access was denied: allow it for this site, or choose a photo.",
        "js.no_camera": "No camera found: choose a photo instead.",
        "js.not_started": "The camera did not start ({name}): choose a photo instead.",
        "js.stopped": "The camera stopped: start it again, or choose a photo.",
        "js.scanning": "Scanning: hold the code inside the frame.",
        "js.reading": "Reading the photo…",
        "js.not_image": "That file is not an image this browser can read.",
        "js.no_code": "No QR code found in that photo: try a sharper or closer one.",
        "js.photo_failed": "Reading the photo failed ({name}): {message}",
        "js.cannot_run": "The scanner cannot run: {message}",
    },
    ZH: {
        "nav.home": "解析服务",
        "nav.explorer": "账本浏览",
        "nav.scan": "扫码",
        "switch": "语言",
        "id.example": "标识符形如 {example}：以点分隔的节点代码组成的前缀、一个斜杠和一个后缀。",
        "goes_to": "跳转到",
        "version": "版本",
        "as_json": "JSON 格式",
        "values": "数据值",
        "values.none": "此记录没有数据值。",
        "col.index": "序号",
        "col.type": "类型",
        "col.data": "数据",
        "col.ttl": "TTL",
        "col.timestamp": "时间戳",
        "where": "位置",
        "where.inside": "位于{name}范围内",
        "where.offline": "仅根据记录在本页绘制，不访问任何地图服务器",
        "source": "此答复的来源",
        "log": "日志",
        "leaf": "叶子序号",
        "cp.size": "检查点大小",
        "cp.unknown": "尚不清楚",
        "cp.root": "根哈希",
        "cp.cosigned": "联署方",
        "cp.none": "无",
        "status": "状态",
        "proof": "证明",
        "proof.text": "设置此记录的叶子的证明，可离线核验",
        "state.ok": "已验证",
        "state.ok.text": "本解析服务的同步进程已核验检查点的签名、见证人法定数以及与上一检查点的"
        "一致性，证明了截至该检查点的每一条目都在树中，并逐一核验了每项操作直至根密钥的授权",
        "state.alarm": "告警",
        "state.alarm.text": "同步已停止跟随此日志",
        "deleted": "已删除",
        "deleted.text": "此标识符曾经注册，现已删除（版本 {version}）。它不会被悄悄重新分配："
        "删除本身是下方日志中的一项操作。",
        "deleted.title": "{ident}（已删除）",
        "err.asked": "查询内容",
        "err.why": "原因",
        "err.rule": "规则",
        "err.400": "标识符有误",
        "err.404": "未注册",
        "err.410": "已删除",
        "err.503": "暂不可用",
        "err.other": "错误",
        "err.search": "查找其他标识符或前缀：",
        "err.back": "返回解析服务首页",
        "home.title": "cityid 解析服务",
        "home.text": "GET {id} 跳转到标识符的网址；{noredirect} 显示其记录；{handles} 以 "
        "Handle REST 格式答复；{proofs} 返回其 tlog 证明。",
        "home.redis": "Redis",
        "home.up": "正常",
        "home.down": "无法连接",
        "home.size": "大小",
        "home.state": "状态",
        "home.reason": "原因",
        "search.placeholder": "MA.156.1301.02/A0000000U、MA.156.1301 或解析网址",
        "search.label": "标识符、前缀或解析网址",
        "search.button": "查找",
        "ex.title": "账本浏览",
        "ex.text": "每个注册机构都维护一份只追加的已签名操作日志；本解析服务跟随每份日志，"
        "核验每个检查点的签名、见证人的联署及其与上一检查点的一致性，只提供经过核验的内容。"
        "格式：C2SP tlog-checkpoint、tlog-tiles、tlog-cosignature。",
        "ex.none": "尚未跟随任何日志。",
        "ex.tiles": "瓦片",
        "ex.checked": "核验时间",
        "ex.recent": "最近批次",
        "ex.no_batch": "自本解析服务的 Redis 填充以来尚无批次。",
        "ex.leaves": "叶子",
        "ex.entries": "条目",
        "ex.wrote": "写入",
        "ex.example": "示例",
        "ex.verified": "核验时间",
        "ex.applied": "条目已应用",
        "n.identifiers.one": "{n} 个标识符",
        "n.identifiers": "{n} 个标识符",
        "n.ranges.one": "{n} 个号段",
        "n.ranges": "{n} 个号段",
        "n.prefixes.one": "{n} 条前缀记录",
        "n.prefixes": "{n} 条前缀记录",
        "map.label": "地图",
        "scan.title": "扫描 cityid 二维码",
        "scan.intro": "将摄像头对准标识符的二维码：本解析服务上的对应页面随即打开"
        "（无论二维码印在何处）。",
        "scan.starting": "正在启动…",
        "scan.noscript": "扫码功能需要 JavaScript。也可以在本解析服务地址后输入标识符：",
        "scan.decoder": "解码器",
        "scan.read": "读到",
        "scan.again": "重新启动摄像头",
        "scan.photo": "或选择一张照片",
        "scan.holds": "二维码中是一个标识符，或以标识符结尾的解析网址，例如",
        "js.none": "无",
        "js.found": "找到 {id}：正在打开其页面…",
        "js.not_cityid": "这不是 cityid 二维码：其中没有标识符（内容见下方）。",
        "js.still": "继续扫描中。",
        "js.decode_failed": "解码失败（{name}）：{message}",
        "js.no_media": "此浏览器不向本页面提供摄像头（摄像头需要 HTTPS）：请改为选择照片。",
        "js.starting": "正在启动摄像头…",
        "js.prompt": "请在浏览器询问时允许使用摄像头，或在下方选择一张照片。",
        "js.denied": "摄像头权限被拒绝：请为本网站允许摄像头，或选择一张照片。",
        "js.no_camera": "未找到摄像头：请改为选择照片。",
        "js.not_started": "摄像头未能启动（{name}）：请改为选择照片。",
        "js.stopped": "摄像头已停止：请重新启动，或选择一张照片。",
        "js.scanning": "扫描中：请将二维码置于框内。",
        "js.reading": "正在读取照片…",
        "js.not_image": "此文件不是本浏览器能读取的图片。",
        "js.no_code": "照片中未找到二维码：请换一张更清晰或更近的照片。",
        "js.photo_failed": "读取照片失败（{name}）：{message}",
        "js.cannot_run": "扫码功能无法运行：{message}",
    },
}


def t(lang: str, key: str, **fields: object) -> str:
    """The text ``key`` in ``lang`` (English where a translation is missing), filled."""
    text = TEXT.get(lang, TEXT[DEFAULT]).get(key) or TEXT[DEFAULT][key]
    return text.format(**fields) if fields else text


def count(lang: str, n: int, what: str) -> str:
    """``n`` things in words: "1 identifier", "2,000 identifiers"."""
    return t(lang, f"n.{what}.one" if n == 1 else f"n.{what}", n=f"{n:,}")


def chosen(query_lang: str | None) -> str | None:
    """The language a ``?lang=`` names, if it names one of ours."""
    if not query_lang:
        return None
    code = query_lang.strip().lower()
    return next((lang for lang in LANGS if code == lang or code.startswith(lang + "-")), None)


@functools.lru_cache(maxsize=256)
def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an ``Accept-Language`` header (English by default).

    Total on any input: a malformed range is skipped. ``zh`` of any region or
    script gets the Simplified Chinese pages (the only Chinese ones there are).
    """
    if not accept_language or len(accept_language) > 1024:
        return DEFAULT
    best, best_q = DEFAULT, 0.0
    for tag, q in weighted(accept_language):
        if q == 0.0:
            continue
        lang = next((lg for lg in LANGS if tag == lg or tag.startswith(lg + "-")), None)
        if tag == "*":
            lang = DEFAULT
        # Equal q: the first listed wins (order breaks ties, as browsers mean it).
        if lang is not None and q > best_q:
            best, best_q = lang, q
    return best


def request_lang(query_lang: str | None, accept_language: str | None) -> tuple[str, bool]:
    """(language, whether it came from the header: the answer then varies on it)."""
    lang = chosen(query_lang)
    if lang is not None:
        return lang, False
    return negotiate(accept_language), True


__all__ = ["EN", "LANGS", "NAMES", "TAGS", "TEXT", "ZH", "count", "negotiate", "request_lang", "t"]
