"""2D codes (QR) for identifiers: the URL they hold, single codes, printable sheets.

A code holds a resolver URL, ``HTTPS://RESOLVER.EXAMPLE/MA.156.1301.02/W0000127R``.

Why the whole URL is upper case: QR has an *alphanumeric* mode whose character set
is ``0-9 A-Z $%*+-./:`` (space too) and which packs two characters into 11 bits,
against 8 bits per character in *byte* mode. An upper-case URL made of that set
takes about 30% fewer bits, so a smaller version (fewer, larger modules at the
same printed size: easier to scan from a dirty manhole cover) or more error
correction. Scheme and host are case-insensitive (RFC 3986 §3.1, §3.2.2) and the
resolver treats identifiers case-insensitively, so nothing is lost. A path in the
resolver base URL (``https://city.example/id``) is upper-cased too, so the
resolver must serve it in upper case. ``_`` is allowed in suffixes but is not in
the alphanumeric set: such a URL still works, but segno falls back to byte mode
for the whole URL and the code grows by about one version.

Every symbol, single or on a sheet, is segno's (:func:`make_qr`). Sheets (many
codes on A4 PDF pages or one PNG grid) are built here from segno's matrices,
without a PDF library: the PDF is a small hand-written file whose modules are
filled vector rectangles (one per horizontal run of dark modules) and whose labels
use Helvetica, one of the 14 standard Type 1 fonts every PDF reader has, so
nothing is embedded. PNG sheets use Pillow.

Speed: segno takes about 5 ms per code, most of it choosing the mask. From
PARALLEL_MIN_CODES codes on, :func:`qr_matrices` spreads that over worker
processes, one per core. Measured with ``cityid qr --range ... --count N`` on a
2-core machine with both cores free: 10,000 codes (500 pages) take about 28 s and
1,000 codes about 3.8 s, against 47-57 s and 5-6 s in one process. On a machine
whose cores are busy with other work, expect the one-process times.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

from cityid.errors import CityIdError

if TYPE_CHECKING:
    import segno

__all__ = [
    "DEFAULT_ERROR",
    "ERROR_LEVELS",
    "MAX_COLUMNS",
    "MAX_PNG_SHEET_CODES",
    "MAX_SHEET_CODES",
    "QR_ALPHANUMERIC",
    "QRCodeError",
    "SheetInfo",
    "check_resolver_url",
    "codes_per_page",
    "make_qr",
    "output_kind",
    "qr_matrices",
    "resolver_url",
    "write_qr",
    "write_sheet",
]


class QRCodeError(CityIdError, ValueError):
    """A resolver URL, output file or sheet request that cannot be honoured."""

    rule = "qr"


#: Characters of the QR alphanumeric mode (ISO/IEC 18004 §7.4.4), in code order.
QR_ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
ERROR_LEVELS = ("L", "M", "Q", "H")
# M restores about 15% of damaged codewords: the usual choice for printed labels
# that get dirty, without the size cost of Q or H.
DEFAULT_ERROR = "M"
QUIET_ZONE = 4  # modules of light margin that ISO/IEC 18004 requires around a QR symbol
MAX_SHEET_CODES = 1_000_000
# One PNG holds the whole grid: past this it gets too tall for image viewers, and
# the PDF (paged) is the right output anyway.
MAX_PNG_SHEET_CODES = 1_000
MAX_COLUMNS = 10
DEFAULT_COLUMNS = 4
DEFAULT_SCALE = 10  # PNG pixels per module for a single code: 370 px for version 3
DEFAULT_SHEET_SCALE = 4

ProgressCallback = Callable[[int, int], None]

_IDENTIFIER_RE = re.compile(r"[0-9A-Za-z./_-]+")
_HOST_RE = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")


# -- the URL ----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)  # a sheet of a million codes checks one base URL
def check_resolver_url(base_url: str) -> str:
    """``base_url`` checked (see :func:`resolver_url`), without a trailing slash."""
    base = base_url.strip()
    if not base:
        raise QRCodeError("the resolver URL is empty", rule="resolver-scheme")
    bad = next((c for c in base if not (c.isascii() and c.isprintable()) or c == " "), None)
    if bad is not None:
        raise QRCodeError(
            f"resolver URL {base[:80]!r} contains {bad!r}: use only printable ASCII "
            "(write an international host name in its xn-- form)",
            rule="resolver-charset",
        )
    if "?" in base or "#" in base:
        raise QRCodeError(
            f"resolver URL {base!r} has a query or fragment: the identifier is appended "
            "to its path, so give only scheme, host, port and optional path",
            rule="resolver-query",
        )
    parts = urlsplit(base)
    if parts.scheme.lower() not in ("http", "https"):
        raise QRCodeError(
            f"resolver URL {base!r} must start with http:// or https:// "
            f"(scheme {parts.scheme or 'missing'!r} is not allowed in a code)",
            rule="resolver-scheme",
        )
    if "@" in parts.netloc:
        raise QRCodeError(
            f"resolver URL {base!r} contains user information: it would be printed on every code",
            rule="resolver-userinfo",
        )
    host = parts.hostname or ""
    if not host or not (_HOST_RE.fullmatch(host) or (":" in host and _IPV6_RE.fullmatch(host))):
        raise QRCodeError(f"resolver URL {base!r} has no valid host name", rule="resolver-host")
    try:
        parts.port  # noqa: B018 -- urllib validates the port lazily, on access
    except ValueError as e:
        raise QRCodeError(f"resolver URL {base!r}: {e}", rule="resolver-port") from None
    return base.rstrip("/")


def resolver_url(base_url: str, identifier: str) -> str:
    """The URL a code for ``identifier`` holds: ``BASE/IDENTIFIER``, all upper case.

    ``base_url`` is ``http(s)://host[:port][/path]`` with no query, fragment or user
    information. ``identifier`` is canonical (``0-9 A-Z . / - _``; lower case is
    accepted and folded). See the module notes for why upper case matters.
    """
    base = check_resolver_url(base_url)
    ident = identifier.strip()
    if not ident or not _IDENTIFIER_RE.fullmatch(ident):
        bad = next((c for c in ident if not _IDENTIFIER_RE.fullmatch(c)), "")
        detail = f"contains {bad!r}" if bad else "is empty"
        raise QRCodeError(
            f"identifier {ident[:80]!r} {detail}: a URL in a code takes only 0-9, A-Z, "
            "'.', '/', '-' and '_'",
            rule="url-identifier",
        )
    return f"{base}/{ident}".upper()


# -- single codes -----------------------------------------------------------------


def _error_level(error: str) -> str:
    level = str(error).upper()
    if level not in ERROR_LEVELS:
        raise QRCodeError(
            f"error-correction level {error!r} is not one of L, M, Q, H", rule="error-level"
        )
    return level


def make_qr(url: str, *, error: str = DEFAULT_ERROR) -> segno.QRCode:
    """A QR code (never Micro QR) for ``url`` at error-correction level ``error``.

    ``boost_error`` is off: segno would otherwise raise the level whenever the data
    happens to fit, so codes of one batch would differ in level for no visible
    reason. The mode is segno's choice: alphanumeric when every character allows it.
    """
    # Imported on first use: segno takes tens of milliseconds to import, and every
    # `cityid` command loads this module's CLI.
    import segno

    return segno.make_qr(url, error=_error_level(error), boost_error=False)


def output_kind(path: str | os.PathLike[str], allowed: Sequence[str]) -> str:
    """``png``, ``svg`` or ``pdf`` from the suffix of ``path``, if in ``allowed``."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in allowed:
        wanted = " or ".join(f".{k}" for k in allowed)
        raise QRCodeError(
            f"cannot write {str(path)!r}: the file name must end in {wanted}",
            rule="output-format",
        )
    return kind


def _check_range(name: str, value: int, low: int, high: int, rule: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise QRCodeError(
            f"{name} must be an integer from {low} to {high}, not {value!r}", rule=rule
        )
    return value


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it into place only on success.

    An interrupted 10,000-code sheet must not leave a truncated PDF that looks
    finished.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise QRCodeError(f"cannot write {str(path)!r}: {e.strerror or e}", rule="output") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_qr(
    url: str,
    path: str | os.PathLike[str],
    *,
    scale: int = DEFAULT_SCALE,
    error: str = DEFAULT_ERROR,
) -> Path:
    """Write the code for ``url`` as PNG or SVG, chosen by the suffix of ``path``.

    ``scale`` is the size of one module in pixels (PNG) or user units (SVG); the
    symbol keeps its 4-module quiet zone. Returns the path written.
    """
    out = Path(path)
    kind = output_kind(out, ("png", "svg"))
    _check_range("scale", scale, 1, 100, "scale")
    qr = make_qr(url, error=error)
    with _atomic(out) as tmp:
        qr.save(str(tmp), kind=kind, scale=scale, border=QUIET_ZONE)
    return out


# -- symbols for sheets ------------------------------------------------------------

Matrix = tuple[bytes, ...]  # rows of 0 (light) and 1 (dark), without the quiet zone

# Below this many codes a sheet is generated in this process: starting workers
# would cost more than it saves.
PARALLEL_MIN_CODES = 500
_CHUNK = 100  # codes per task sent to a worker: about half a second of segno
_INFLIGHT_PER_WORKER = 2  # tasks queued ahead per worker: bounded memory, no idling


def _matrix(url: str, error: str) -> Matrix:
    return tuple(bytes(row) for row in make_qr(url, error=error).matrix)


def _chunk_matrices(urls: Sequence[str], error: str) -> list[Matrix]:
    return [_matrix(url, error) for url in urls]


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the sheet (and
    # removes its temporary file); workers should not each print a traceback.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def qr_matrices(urls: Iterable[str], *, error: str = DEFAULT_ERROR) -> Iterator[Matrix]:
    """For each URL in order, the matrix of ``make_qr(url, error=error)``.

    Rows are bytes of 0 (light) and 1 (dark), without the quiet zone. Every symbol
    is segno's; for PARALLEL_MIN_CODES URLs or more on a machine with several
    cores, they are made in worker processes, chunk by chunk, and yielded in the
    order of ``urls`` as they arrive.
    """
    level = _error_level(error)
    urls = urls if isinstance(urls, Sequence) else list(urls)
    workers = _workers()
    if workers < 2 or len(urls) < PARALLEL_MIN_CODES:
        for url in urls:
            yield _matrix(url, level)
        return
    from concurrent.futures import Future, ProcessPoolExecutor

    chunks = (urls[i : i + _CHUNK] for i in range(0, len(urls), _CHUNK))
    pending: deque[Future[list[Matrix]]] = deque()
    with ProcessPoolExecutor(workers, initializer=_ignore_sigint) as pool:
        try:
            for chunk in chunks:
                pending.append(pool.submit(_chunk_matrices, list(chunk), level))
                if len(pending) > _INFLIGHT_PER_WORKER * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:
            # Stopped early (an error, an interrupt): drop what has not started.
            for future in pending:
                future.cancel()


# -- sheets -----------------------------------------------------------------------

A4_WIDTH = 595.276  # 210 mm in PDF points
A4_HEIGHT = 841.890  # 297 mm
PAGE_MARGIN = 36.0  # 12.7 mm: inside what office printers can reach
CELL_PAD = 4.0
LABEL_BAND = 16.0
LABEL_SIZE = 8.0
MIN_LABEL_SIZE = 4.5
GRID_GREY = 0.75

# Advance widths of Helvetica (WinAnsiEncoding) for ASCII 32-126, in 1/1000 em,
# from Adobe's AFM: to centre and fit labels without a font file.
_HELVETICA_WIDTHS = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SheetInfo:
    """What :func:`write_sheet` wrote."""

    path: Path
    codes: int
    pages: int


@dataclass(frozen=True, slots=True)
class _PageGrid:
    columns: int
    rows: int
    cell_width: float
    cell_height: float
    left: float
    top: float

    @property
    def per_page(self) -> int:
        return self.columns * self.rows


def _page_grid(columns: int) -> _PageGrid:
    _check_range("columns", columns, 1, MAX_COLUMNS, "columns")
    width = (A4_WIDTH - 2 * PAGE_MARGIN) / columns
    height = width - 2 * CELL_PAD + CELL_PAD + LABEL_BAND
    rows = max(1, int((A4_HEIGHT - 2 * PAGE_MARGIN) // height))
    # Centre the grid vertically: the leftover space splits between top and bottom.
    top = A4_HEIGHT - PAGE_MARGIN - ((A4_HEIGHT - 2 * PAGE_MARGIN) - rows * height) / 2
    return _PageGrid(columns, rows, width, height, PAGE_MARGIN, top)


def codes_per_page(columns: int = DEFAULT_COLUMNS) -> int:
    """How many codes one A4 PDF page holds with ``columns`` columns."""
    return _page_grid(columns).per_page


def _ascii_label(label: str) -> str:
    # Helvetica here is used with WinAnsiEncoding and labels are identifiers
    # (ASCII); anything else becomes '?' rather than mojibake.
    return "".join(c if " " <= c <= "~" else "?" for c in label)


def _text_width(text: str, size: float) -> float:
    return sum(_HELVETICA_WIDTHS[ord(c) - 32] for c in text) * size / 1000


Measure = Callable[[str, float], float]  # (text, font size) -> width


def _truncate(text: str, size: float, room: float, width: Measure) -> str:
    # Cut the middle: the end of an identifier (number, check character) is what
    # tells neighbouring codes apart.
    head, tail = text[: len(text) // 2], text[len(text) // 2 :]
    while (head or tail) and width(f"{head}...{tail}", size) > room:
        if len(head) >= len(tail):
            head = head[:-1]
        else:
            tail = tail[1:]
    return f"{head}...{tail}"


def _fit_label(
    text: str,
    room: float,
    width: Measure,
    sizes: Sequence[float],
    two_line_sizes: Sequence[float],
) -> tuple[float, list[str]]:
    """The largest font size (tried in the order given) at which ``text`` fits in
    ``room``: on one line, else on two split after the '/', else truncated.

    The code itself carries the identifier; the label only has to be readable.
    """
    for size in sizes:
        if width(text, size) <= room:
            return size, [text]
    lines, size = [text], sizes[-1]
    if "/" in text:
        head, _, tail = text.partition("/")
        lines = [head + "/", tail]
        for size in two_line_sizes:
            if all(width(line, size) <= room for line in lines):
                return size, lines
    return size, [x if width(x, size) <= room else _truncate(x, size, room, width) for x in lines]


_PDF_SIZES = tuple(LABEL_SIZE - 0.25 * i for i in range(int((LABEL_SIZE - MIN_LABEL_SIZE) * 4) + 1))
_PDF_TWO_LINE_SIZES = tuple(x for x in _PDF_SIZES if x <= 6.0)


def _label_lines(label: str, room: float) -> tuple[float, list[str]]:
    """Font size and lines of a PDF label in ``room`` points."""
    return _fit_label(_ascii_label(label), room, _text_width, _PDF_SIZES, _PDF_TWO_LINE_SIZES)


def _pdf_string(text: str) -> str:
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def _num(x: float) -> str:
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


_DARK_RUNS = re.compile(rb"\x01+")


def _draw_symbol(out: list[str], matrix: Matrix, x: float, y: float, side: float) -> None:
    """PDF path operators filling the dark modules of ``matrix`` in a ``side`` square.

    Each horizontal run of dark modules in a row is one rectangle, in module units
    (small integers); one fill for the whole symbol avoids hairline seams between
    rectangles in anti-aliasing viewers.
    """
    n = len(matrix)
    module = side / (n + 2 * QUIET_ZONE)
    ox = x + QUIET_ZONE * module
    oy = y + QUIET_ZONE * module
    out.append(f"q {_num(module)} 0 0 {_num(module)} {_num(ox)} {_num(oy)} cm")
    for r, row in enumerate(matrix):
        yy = n - 1 - r  # PDF y grows upwards, matrix rows go down
        out.extend(f"{m.start()} {yy} {m.end() - m.start()} 1 re" for m in _DARK_RUNS.finditer(row))
    out.append("f Q")


class _PdfWriter:
    """A streaming PDF 1.4 writer: objects go to disk as they are made."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.offsets: dict[int, int] = {}
        self.position = 0
        self._write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # binary marker: keep it 8-bit clean

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.position += len(data)

    def object(self, number: int, body: str) -> None:
        self.offsets[number] = self.position
        self._write(f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1"))

    def stream(self, number: int, entries: str, data: bytes) -> None:
        """A stream object; ``entries`` are its dictionary's entries other than /Length."""
        self.offsets[number] = self.position
        head = f"{number} 0 obj\n<< {entries} /Length {len(data)} >>\nstream\n"
        self._write(head.encode("latin-1") + data + b"\nendstream\nendobj\n")

    def close(self, root: int, info: int) -> None:
        size = max(self.offsets) + 1
        xref = self.position
        lines = [f"xref\n0 {size}\n", "0000000000 65535 f \n"]
        for number in range(1, size):
            lines.append(f"{self.offsets[number]:010d} 00000 n \n")
        lines.append(f"trailer\n<< /Size {size} /Root {root} 0 R /Info {info} 0 R >>\n")
        lines.append(f"startxref\n{xref}\n%%EOF\n")
        self._write("".join(lines).encode("latin-1"))


_CATALOG, _PAGES, _FONT, _INFO, _FIRST_PAGE_OBJECT = 1, 2, 3, 4, 5


def _write_pdf(
    items: Sequence[tuple[str, str]],
    symbols: Iterator[Matrix],
    stream: IO[bytes],
    columns: int,
    progress: ProgressCallback | None,
) -> int:
    grid = _page_grid(columns)
    total = len(items)
    pages = math.ceil(total / grid.per_page)
    pdf = _PdfWriter(stream)
    pdf.object(_CATALOG, f"<< /Type /Catalog /Pages {_PAGES} 0 R >>")
    pdf.object(
        _FONT, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    title = _ascii_label(f"{items[0][0]} .. {items[-1][0]}" if total > 1 else items[0][0])
    pdf.object(_INFO, f"<< /Title {_pdf_string(title)} /Producer (cityid) >>")
    side = grid.cell_width - 2 * CELL_PAD
    label_room = grid.cell_width - 2 * CELL_PAD
    kids: list[str] = []
    done = 0
    for page in range(pages):
        chunk = items[page * grid.per_page : (page + 1) * grid.per_page]
        used_rows = math.ceil(len(chunk) / grid.columns)
        out: list[str] = []
        # Cut grid: light grey lines on the cell borders of the rows in use.
        out.append(f"q {GRID_GREY} G 0.3 w")
        bottom = grid.top - used_rows * grid.cell_height
        right = grid.left + grid.columns * grid.cell_width
        for col in range(grid.columns + 1):
            x = _num(grid.left + col * grid.cell_width)
            out.append(f"{x} {_num(bottom)} m {x} {_num(grid.top)} l")
        for row in range(used_rows + 1):
            y = _num(grid.top - row * grid.cell_height)
            out.append(f"{_num(grid.left)} {y} m {_num(right)} {y} l")
        out.append("S Q")
        texts: list[str] = []
        for i, (label, _url) in enumerate(chunk):
            row, col = divmod(i, grid.columns)
            x = grid.left + col * grid.cell_width
            y = grid.top - (row + 1) * grid.cell_height  # bottom of the cell
            _draw_symbol(out, next(symbols), x + CELL_PAD, y + LABEL_BAND, side)
            size, lines = _label_lines(label, label_room)
            baselines = [y + 6.0] if len(lines) == 1 else [y + 9.0, y + 2.5]
            for line, base in zip(lines, baselines, strict=True):
                tx = x + (grid.cell_width - _text_width(line, size)) / 2
                texts.append(f"/F1 {_num(size)} Tf 1 0 0 1 {_num(tx)} {_num(base)} Tm ")
                texts.append(f"{_pdf_string(line)} Tj")
            done += 1
            if progress is not None:
                progress(done, total)
        footer_y = PAGE_MARGIN / 2
        range_text = _ascii_label(f"{chunk[0][0]} .. {chunk[-1][0]}")
        page_text = f"page {page + 1} of {pages}"
        texts.append(f"/F1 7 Tf 1 0 0 1 {_num(PAGE_MARGIN)} {_num(footer_y)} Tm ")
        texts.append(f"{_pdf_string(range_text)} Tj")
        page_x = A4_WIDTH - PAGE_MARGIN - _text_width(page_text, 7)
        texts.append(f"1 0 0 1 {_num(page_x)} {_num(footer_y)} Tm {_pdf_string(page_text)} Tj")
        out.append("BT 0 g")
        out.extend(texts)
        out.append("ET")
        content = zlib.compress("\n".join(out).encode("latin-1"), 6)
        content_obj = _FIRST_PAGE_OBJECT + 2 * page
        page_obj = content_obj + 1
        pdf.stream(content_obj, "/Filter /FlateDecode", content)
        pdf.object(
            page_obj,
            f"<< /Type /Page /Parent {_PAGES} 0 R "
            f"/MediaBox [0 0 {_num(A4_WIDTH)} {_num(A4_HEIGHT)}] "
            f"/Resources << /Font << /F1 {_FONT} 0 R >> >> /Contents {content_obj} 0 R >>",
        )
        kids.append(f"{page_obj} 0 R")
    pdf.object(_PAGES, f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {pages} >>")
    pdf.close(_CATALOG, _INFO)
    return pages


def _write_png_sheet(
    items: Sequence[tuple[str, str]],
    matrices: Iterator[Matrix],
    path: Path,
    columns: int,
    scale: int,
    progress: ProgressCallback | None,
) -> None:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise QRCodeError(
            "PNG sheets need Pillow (pip install Pillow); PDF sheets do not",
            rule="missing-dependency",
        ) from None
    total = len(items)
    symbols: list[Matrix] = []
    for matrix in matrices:
        symbols.append(matrix)
        if progress is not None:
            progress(len(symbols), total)
    widest = max(len(matrix) for matrix in symbols) + 2 * QUIET_ZONE
    pad = 2 * scale
    band = max(18, 5 * scale)
    cell_w = widest * scale + 2 * pad
    cell_h = pad + widest * scale + band
    n_rows = math.ceil(total / columns)
    sheet = Image.new("L", (columns * cell_w + 1, n_rows * cell_h + 1), 255)
    draw = ImageDraw.Draw(sheet)
    base_size = max(10, round(band * 0.6))
    fonts: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}

    def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        if size not in fonts:
            try:
                fonts[size] = ImageFont.load_default(size=size)
            except (TypeError, ImportError, OSError):  # Pillow without FreeType
                fonts[size] = ImageFont.load_default()
        return fonts[size]

    white_margin = b"\xff" * QUIET_ZONE
    to_grey = bytes.maketrans(b"\x00\x01", b"\xff\x00")
    for i, ((label, _url), rows) in enumerate(zip(items, symbols, strict=True)):
        row, col = divmod(i, columns)
        x, y = col * cell_w, row * cell_h
        size = len(rows) + 2 * QUIET_ZONE
        quiet = b"\xff" * size * QUIET_ZONE
        data = (
            quiet
            + b"".join(white_margin + r.translate(to_grey) + white_margin for r in rows)
            + quiet
        )
        symbol = Image.frombytes("L", (size, size), data).resize(
            (size * scale, size * scale), Image.Resampling.NEAREST
        )
        offset = (widest - size) * scale // 2
        sheet.paste(symbol, (x + pad + offset, y + pad + offset))
        fsize, lines = _fit_label(
            _ascii_label(label),
            cell_w - 2 * pad,
            lambda text, size: draw.textlength(text, font=font(int(size))),
            range(base_size, 7, -1),
            range(min(base_size, band // 2 - 1), 6, -1),
        )
        line_h = band // len(lines)
        for k, line in enumerate(lines):
            width = draw.textlength(line, font=font(int(fsize)))
            draw.text(
                (x + (cell_w - width) / 2, y + pad + widest * scale + k * line_h),
                line,
                fill=0,
                font=font(int(fsize)),
            )
    for c in range(columns + 1):
        draw.line([(c * cell_w, 0), (c * cell_w, n_rows * cell_h)], fill=190)
    for r in range(n_rows + 1):
        draw.line([(0, r * cell_h), (columns * cell_w, r * cell_h)], fill=190)
    with _atomic(path) as tmp:
        sheet.save(tmp, format="PNG")


def write_sheet(
    items: Sequence[tuple[str, str]],
    path: str | os.PathLike[str],
    *,
    columns: int = DEFAULT_COLUMNS,
    progress: ProgressCallback | None = None,
    error: str = DEFAULT_ERROR,
    scale: int = DEFAULT_SHEET_SCALE,
) -> SheetInfo:
    """A printable sheet of ``(label, url)`` pairs: each code with its label under it.

    ``.pdf``: A4 pages, ``columns`` codes across (default 4: 20 codes a page, about
    1 mm per module), a light cut grid, a footer with the page's first and last
    label and the page number; as many pages as needed. ``.png``: one grid image
    (at most MAX_PNG_SHEET_CODES codes), ``scale`` pixels per module. ``progress``
    is called as ``progress(done, total)`` after each code.
    """
    out = Path(path)
    kind = output_kind(out, ("pdf", "png"))
    error = _error_level(error)
    _check_range("columns", columns, 1, MAX_COLUMNS, "columns")
    total = len(items)
    if not 1 <= total <= MAX_SHEET_CODES:
        raise QRCodeError(
            f"a sheet holds 1 to {MAX_SHEET_CODES:,} codes, not {total:,}", rule="sheet-size"
        )
    if kind == "png":
        if total > MAX_PNG_SHEET_CODES:
            raise QRCodeError(
                f"a PNG sheet holds at most {MAX_PNG_SHEET_CODES:,} codes ({total:,} asked): "
                "write a .pdf, which is paged",
                rule="sheet-size",
            )
        _check_range("scale", scale, 1, 40, "scale")
    # Closed on the way out, so an interrupted sheet stops its worker processes.
    with contextlib.closing(qr_matrices([url for _, url in items], error=error)) as symbols:
        if kind == "png":
            _write_png_sheet(items, symbols, out, columns, scale, progress)
            return SheetInfo(out, total, 1)
        with _atomic(out) as tmp, tmp.open("wb") as stream:
            pages = _write_pdf(items, symbols, stream, columns, progress)
    return SheetInfo(out, total, pages)
