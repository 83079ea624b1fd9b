"""2D codes: URLs, single codes, sheets and ``cityid qr``, checked by decoding them.

Codes are decoded by readers that share no code with segno: zxing-cpp (PyPI) and
zbar (``zbarimg``, Debian's zbar-tools). A test that needs one and finds neither
skips and says how to install them. PDF pages are rasterised with poppler's
``pdftoppm`` (Debian's poppler-utils) where installed.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import segno
from stdnum.iso7064 import mod_37_36

from cityid.cli import main as cli_main
from cityid.errors import CityIdError, IdentifierError
from registrar import qrcodes
from registrar.qr_cli import parse_range, read_ids_file
from registrar.qrcodes import (
    MAX_PNG_SHEET_CODES,
    MAX_SHEET_CODES,
    QRCodeError,
    codes_per_page,
    make_qr,
    qr_matrices,
    resolver_url,
    write_qr,
    write_sheet,
)

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://resolver.example"
ID = "MA.156.1301.02/W0000127R"
URL = "HTTPS://RESOLVER.EXAMPLE/MA.156.1301.02/W0000127R"

try:
    import zxingcpp
    from PIL import Image
except ImportError:  # pragma: no cover - depends on the machine
    zxingcpp = None

ZBARIMG = shutil.which("zbarimg")
PDFTOPPM = shutil.which("pdftoppm")
NO_DECODER = "no QR decoder: pip install zxing-cpp, or apt-get install zbar-tools"


def _zxing(path: Path) -> list[str]:
    assert zxingcpp is not None
    with Image.open(path) as image:
        found = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    return [b.text for b in found]


def _zbar(path: Path) -> list[str]:
    # zbarimg exits 4 when it finds nothing; its stderr has D-Bus noise.
    run = subprocess.run(
        [ZBARIMG or "zbarimg", "--raw", "-q", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 4), run.stderr
    return run.stdout.splitlines()


DECODERS: dict[str, tuple[Callable[[Path], list[str]], bool]] = {
    "zxing-cpp": (_zxing, zxingcpp is not None),
    "zbar": (_zbar, ZBARIMG is not None),
}


@pytest.fixture(params=sorted(DECODERS))
def decode(request: pytest.FixtureRequest) -> Callable[[Path], list[str]]:
    """Each independent decoder in turn (skipped where not installed)."""
    fn, available = DECODERS[request.param]
    if not available:
        pytest.skip(f"{request.param} not installed ({NO_DECODER})")
    return fn


def _first_decoder() -> Callable[[Path], list[str]] | None:
    return next((fn for fn, available in DECODERS.values() if available), None)


@pytest.fixture
def any_decode() -> Callable[[Path], list[str]]:
    fn = _first_decoder()
    if fn is None:
        pytest.skip(NO_DECODER)
    return fn


def _minted(letters: str, number: int, width: int) -> str:
    """A minted suffix computed with python-stdnum directly, not with cityid's code."""
    body = f"{letters}{number:0{width}d}"
    return body + mod_37_36.calc_check_digit(body)


def _range_items(count: int, base: str = BASE) -> list[tuple[str, str]]:
    ids = [f"MA.156.1301.02/{_minted('W', n, 7)}" for n in range(127, 127 + count)]
    return [(i, resolver_url(base, i)) for i in ids]


# -- URLs ----------------------------------------------------------------------------


def test_the_example_identifier_is_minted() -> None:
    assert _minted("W", 127, 7) == "W0000127R"


@pytest.mark.parametrize(
    ("base", "ident", "url"),
    [
        (BASE, ID, URL),
        ("https://resolver.example/", "ma.156.1301.02/w0000127r", URL),
        ("http://127.0.0.1:8080", ID, f"HTTP://127.0.0.1:8080/{ID}"),
        ("https://City.Example/id/", "MA.156/A_1", "HTTPS://CITY.EXAMPLE/ID/MA.156/A_1"),
        ("http://[::1]:8080", "0.NA/MA.156", "HTTP://[::1]:8080/0.NA/MA.156"),
    ],
)
def test_resolver_url_is_upper_case_base_slash_identifier(base: str, ident: str, url: str) -> None:
    assert resolver_url(base, ident) == url


@pytest.mark.parametrize(
    ("base", "rule"),
    [
        ("javascript:alert(1)", "resolver-scheme"),
        ("JavaScript://x.example/%0Aalert(1)", "resolver-scheme"),
        ("ftp://files.example", "resolver-scheme"),
        ("resolver.example", "resolver-scheme"),
        ("", "resolver-scheme"),
        ("https://", "resolver-host"),
        ("https://bad_host!.example", "resolver-host"),
        ("https://resolver.example/?id=", "resolver-query"),
        ("https://resolver.example/#top", "resolver-query"),
        ("https://user:secret@resolver.example", "resolver-userinfo"),
        ("https://résolveur.example", "resolver-charset"),
        ("https://resolver .example", "resolver-charset"),
        ("https://resolver.example:99999", "resolver-port"),
    ],
)
def test_resolver_url_refuses_bad_bases(base: str, rule: str) -> None:
    with pytest.raises(QRCodeError) as e:
        resolver_url(base, ID)
    assert isinstance(e.value, ValueError) and isinstance(e.value, CityIdError)
    assert e.value.rule == rule
    assert base.strip()[:20] in e.value.message


@pytest.mark.parametrize("ident", ["", "MA.156/W 1", "MA.156/W1?x=1", "MA.156/Ä1"])
def test_resolver_url_refuses_characters_outside_identifiers(ident: str) -> None:
    with pytest.raises(QRCodeError) as e:
        resolver_url(BASE, ident)
    assert e.value.rule == "url-identifier"


# -- single codes --------------------------------------------------------------------


def test_png_decodes_to_the_exact_url(tmp_path: Path, decode: Callable[[Path], list[str]]) -> None:
    out = write_qr(URL, tmp_path / "code.png")
    assert out == tmp_path / "code.png"
    assert decode(out) == [URL]


def test_byte_mode_url_with_underscore_still_decodes(
    tmp_path: Path, decode: Callable[[Path], list[str]]
) -> None:
    url = resolver_url(BASE, "MA.156.1301.02/BUS_STOP-17")
    assert make_qr(url).mode == "byte"  # '_' is outside the alphanumeric set
    assert decode(write_qr(url, tmp_path / "bus.png", scale=4)) == [url]


def test_svg_is_well_formed(tmp_path: Path) -> None:
    out = write_qr(URL, tmp_path / "code.svg", scale=3)
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    size = (make_qr(URL).symbol_size(scale=1, border=4))[0] * 3
    assert root.get("width") == str(size) == root.get("height")
    assert root.find("{http://www.w3.org/2000/svg}path") is not None


def test_upper_case_url_uses_alphanumeric_mode_and_a_smaller_code() -> None:
    upper = make_qr(URL)
    lower = make_qr(URL.lower())
    assert upper.mode == "alphanumeric"
    assert lower.mode == "byte"
    assert upper.version < lower.version
    assert upper.error == "M"  # the default, and not boosted


def test_error_level_is_configurable_and_checked() -> None:
    assert make_qr(URL, error="h").error == "H"
    with pytest.raises(QRCodeError) as e:
        make_qr(URL, error="X")
    assert e.value.rule == "error-level"


@pytest.mark.parametrize("name", ["code.gif", "code", "code.png.txt", "code.pdf"])
def test_write_qr_refuses_other_suffixes(tmp_path: Path, name: str) -> None:
    with pytest.raises(QRCodeError) as e:
        write_qr(URL, tmp_path / name)
    assert e.value.rule == "output-format"
    assert ".png or .svg" in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_write_into_a_missing_directory_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(QRCodeError) as e:
        write_qr(URL, tmp_path / "missing" / "code.png")
    assert e.value.rule == "output"


# -- symbols for sheets -------------------------------------------------------------


def _segno_matrix(url: str, error: str = "M") -> tuple[bytes, ...]:
    return tuple(bytes(row) for row in segno.make_qr(url, error=error, boost_error=False).matrix)


@pytest.mark.parametrize("parallel", [False, True])
def test_qr_matrices_are_segnos_in_order(monkeypatch: pytest.MonkeyPatch, parallel: bool) -> None:
    if parallel:  # worker processes, small chunks: order must survive both
        monkeypatch.setattr(qrcodes, "PARALLEL_MIN_CODES", 1)
        monkeypatch.setattr(qrcodes, "_CHUNK", 7)
        monkeypatch.setattr(qrcodes, "_workers", lambda: 2)
    urls = [u for _, u in _range_items(30)]
    urls += [resolver_url(BASE, "MA.156/A_1"), URL]  # byte mode; a repeat
    given = urls if parallel else iter(urls)  # any iterable
    assert list(qr_matrices(given, error="q")) == [_segno_matrix(u, "Q") for u in urls]
    with pytest.raises(QRCodeError) as e:
        next(qr_matrices(urls, error="X"))
    assert e.value.rule == "error-level"
    # segno's own error for data no QR version holds, from a worker or not.
    too_long = [URL, "HTTPS://X.EXAMPLE/" + "A" * 5_000, URL]
    with pytest.raises(segno.DataOverflowError):
        list(qr_matrices(too_long))


# -- sheets --------------------------------------------------------------------------


def _check_pdf_structure(data: bytes) -> int:
    """Check header, trailer, xref offsets and streams; return the page count."""
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    startxref = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", data).group(1))
    assert data[startxref:].startswith(b"xref")
    header = re.match(rb"xref\s+0 (\d+)\s+", data[startxref:])
    size = int(header.group(1))
    table = data[startxref + header.end() :]
    for number in range(1, size):
        entry = table[20 * number : 20 * number + 20]
        offset = int(entry[:10])
        assert data[offset:].startswith(b"%d 0 obj" % number), number
    for m in re.finditer(rb"/Length (\d+) >>\nstream\n", data):
        stream = data[m.end() : m.end() + int(m.group(1))]
        assert b" re" in zlib.decompress(stream) or b"Tj" in zlib.decompress(stream)
    pages = len(re.findall(rb"/Type /Page\b(?!s)", data))
    assert re.search(rb"/Type /Pages /Kids \[[^\]]*\] /Count %d" % pages, data)
    return pages


def test_pdf_sheet_of_100_codes(tmp_path: Path) -> None:
    items = _range_items(100)
    calls: list[tuple[int, int]] = []
    info = write_sheet(items, tmp_path / "sheet.pdf", progress=lambda d, t: calls.append((d, t)))
    assert codes_per_page() == 20
    assert info.pages == math.ceil(100 / codes_per_page()) == 5
    assert info.codes == 100
    assert _check_pdf_structure((tmp_path / "sheet.pdf").read_bytes()) == 5
    assert calls == [(i, 100) for i in range(1, 101)]
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.pdf"]  # no temporary left


def test_pdf_pages_render_and_decode(
    tmp_path: Path, any_decode: Callable[[Path], list[str]]
) -> None:
    if PDFTOPPM is None:
        pytest.skip("pdftoppm not installed (apt-get install poppler-utils)")
    items = _range_items(45)
    write_sheet(items, tmp_path / "sheet.pdf", columns=5)
    if shutil.which("pdfinfo"):
        info = subprocess.run(
            ["pdfinfo", str(tmp_path / "sheet.pdf")], capture_output=True, text=True, timeout=60
        )
        pages = math.ceil(45 / codes_per_page(5))
        assert re.search(rf"^Pages:\s+{pages}$", info.stdout, re.M)
    every = subprocess.run(
        [PDFTOPPM, "-r", "20", "-png", str(tmp_path / "sheet.pdf"), str(tmp_path / "low")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert every.returncode == 0 and "Error" not in every.stderr, every.stderr
    assert len(list(tmp_path.glob("low*.png"))) == math.ceil(45 / codes_per_page(5))
    subprocess.run(
        [PDFTOPPM, "-r", "150", "-f", "1", "-l", "1", "-singlefile", "-png", "sheet.pdf", "page1"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=60,
    )
    found = any_decode(tmp_path / "page1.png")
    assert found, "no code decoded from page 1"
    assert set(found) <= {url for _, url in items[: codes_per_page(5)]}


def test_png_sheet_decodes_to_several_urls(
    tmp_path: Path, decode: Callable[[Path], list[str]]
) -> None:
    items = _range_items(12)
    info = write_sheet(items, tmp_path / "sheet.png", columns=4)
    assert info.pages == 1
    found = decode(tmp_path / "sheet.png")
    assert len(set(found)) >= 6
    assert set(found) <= {url for _, url in items}


class _Huge(Sequence[tuple[str, str]]):
    """A sequence that only claims its length: size checks must come first."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: object) -> tuple[str, str]:  # type: ignore[override]
        raise AssertionError("a refused sheet must not read its items")

    def __iter__(self) -> Iterator[tuple[str, str]]:
        raise AssertionError("a refused sheet must not read its items")


@pytest.mark.parametrize(
    ("items", "name", "rule"),
    [
        ([], "sheet.pdf", "sheet-size"),
        (_Huge(MAX_SHEET_CODES + 1), "sheet.pdf", "sheet-size"),
        (_Huge(MAX_PNG_SHEET_CODES + 1), "sheet.png", "sheet-size"),
        ([(ID, URL)], "sheet.gif", "output-format"),
        ([(ID, URL)], "sheet.svg", "output-format"),
    ],
)
def test_sheet_refusals(
    tmp_path: Path, items: Sequence[tuple[str, str]], name: str, rule: str
) -> None:
    with pytest.raises(QRCodeError) as e:
        write_sheet(items, tmp_path / name)
    assert e.value.rule == rule
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("columns", [0, 11, -1])
def test_sheet_columns_are_bounded(tmp_path: Path, columns: int) -> None:
    with pytest.raises(QRCodeError) as e:
        write_sheet([(ID, URL)], tmp_path / "sheet.pdf", columns=columns)
    assert e.value.rule == "columns"


@pytest.mark.parametrize("parallel", [False, True])
def test_interrupted_sheet_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: bool
) -> None:
    if parallel:
        monkeypatch.setattr(qrcodes, "PARALLEL_MIN_CODES", 1)
        monkeypatch.setattr(qrcodes, "_CHUNK", 5)
        monkeypatch.setattr(qrcodes, "_workers", lambda: 2)

    def stop(done: int, total: int) -> None:
        if done == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_sheet(_range_items(60), tmp_path / "sheet.pdf", progress=stop)
    assert list(tmp_path.iterdir()) == []
    assert multiprocessing.active_children() == []  # the workers are gone too


def test_thousand_code_pdf(tmp_path: Path) -> None:
    # 10,000 codes take about 28 s with 2 free cores (see the module notes): too
    # long for every run. 1,000 go through the worker processes too (on 2+ cores).
    items = _range_items(1_000, "http://127.0.0.1:8080")
    calls: list[tuple[int, int]] = []
    info = write_sheet(items, tmp_path / "big.pdf", progress=lambda d, t: calls.append((d, t)))
    assert info.pages == 50
    assert calls == [(i, 1_000) for i in range(1, 1_001)]
    assert _check_pdf_structure((tmp_path / "big.pdf").read_bytes()) == 50


# -- ranges and id files -------------------------------------------------------------


@pytest.mark.parametrize("start", ["MA.156.1301.02/W0000127R", "ma.156.1301.02/w0000127"])
def test_range_start_with_or_without_check(start: str) -> None:
    r = parse_range(start, 3)
    assert list(r.identifiers()) == [
        f"MA.156.1301.02/{_minted('W', n, 7)}" for n in (127, 128, 129)
    ]
    assert r.start_had_check == start.endswith("R")


@pytest.mark.parametrize(
    ("start", "count", "error", "rule"),
    [
        ("MA.156.1301.02/W0000127X", 3, IdentifierError, "check-character"),
        ("MA.156.1301.02/W0000127R", 0, QRCodeError, "range-count"),
        ("MA.156.1301.02/W0000127R", 1_000_001, QRCodeError, "range-count"),
        ("MA.156.1301.02/W9999999", 2, QRCodeError, "range-overflow"),
        ("MA.156.1301.02/BUS-17", 2, QRCodeError, "range-start"),
        ("0.NA/MA.156", 2, QRCodeError, "range-start"),
        ("MA.156..02/W1", 2, IdentifierError, "empty-node"),
    ],
)
def test_range_refusals(start: str, count: int, error: type[Exception], rule: str) -> None:
    with pytest.raises(CityIdError) as e:
        parse_range(start, count)
    assert e.value.rule == rule
    if error is IdentifierError:
        assert isinstance(e.value, IdentifierError)


def test_ids_file(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("# meters\nma.156.1301.02/w0000127r\n\n  MA.156/A_1  \n", encoding="utf-8")
    assert read_ids_file(str(f)) == ["MA.156.1301.02/W0000127R", "MA.156/A_1"]
    f.write_text("MA.156/A1\nMA.156/bad suffix\n", encoding="utf-8")
    with pytest.raises(IdentifierError) as e:
        read_ids_file(str(f))
    assert e.value.message.startswith(f"{f}:2: ")
    f.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(CityIdError) as e2:
        read_ids_file(str(f))
    assert e2.value.rule == "sheet-size"


# -- the command, end to end ---------------------------------------------------------


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CITYID_RESOLVER"}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "cityid.cli", "qr", *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_one_code(tmp_path: Path) -> None:
    run = _cli(tmp_path, "ma.156.1301.02/w0000127r", "--resolver", BASE)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["file: W0000127R.png", f"url:  {URL}"]
    assert (tmp_path / "W0000127R.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    decode = _first_decoder()
    if decode is not None:  # else the decode tests above say why they skipped
        assert decode(tmp_path / "W0000127R.png") == [URL]


def test_cli_range_sheet_uses_the_resolver_from_the_environment(tmp_path: Path) -> None:
    run = _cli(
        tmp_path,
        "--range",
        "MA.156.1301.02/W0000127",
        "--count",
        "30",
        "-o",
        "sheet.pdf",
        CITYID_RESOLVER="https://env.example",
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "file:  sheet.pdf (30 codes, 2 pages)"
    assert lines[1] == f"first: {ID}  HTTPS://ENV.EXAMPLE/{ID}"
    last = f"MA.156.1301.02/{_minted('W', 156, 7)}"
    assert lines[2] == f"last:  {last}  HTTPS://ENV.EXAMPLE/{last}"
    assert _check_pdf_structure((tmp_path / "sheet.pdf").read_bytes()) == 2


def test_cli_bad_input_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    run = _cli(tmp_path, ID, "--resolver", "javascript:alert(1)")
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("cityid: error: resolver URL 'javascript:alert(1)'")
    assert run.stderr.rstrip().endswith("[rule: resolver-scheme]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "rule"),
    [
        ((ID, "-o", "code.gif"), "output-format"),
        (("--range", ID, "--count", "0", "-o", "s.pdf"), "range-count"),
        (("--range", ID, "--count", "1000001", "-o", "s.pdf"), "range-count"),
        (("--range", ID, "--count", "3", "-o", "s.gif"), "output-format"),
        (("--range", "MA.156.1301.02/W0000127Q", "--count", "3", "-o", "s.pdf"), "check-character"),
        ((ID, "--resolver", "https://resolver.example/?x=1"), "resolver-query"),
    ],
)
def test_cli_refusals(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    rule: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli_main(["qr", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("cityid: error: ") and err.rstrip().endswith(f"[rule: {rule}]")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args",
    [
        (),
        (ID, "--range", ID, "--count", "2", "-o", "s.pdf"),
        ("--range", ID, "-o", "s.pdf"),
        ("--range", ID, "--count", "2"),
        (ID, "--count", "2"),
    ],
)
def test_cli_usage_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(["qr", *args])
    assert e.value.code == 2
    assert "usage: cityid qr" in capsys.readouterr().err


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["qr", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for needle in ("alphanumeric", "MOD 37,36", "CITYID_RESOLVER", "examples:", "--ids-file"):
        assert needle in text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("count", "shown"), [(250, True), (150, False)])
def test_cli_progress_bar_for_big_sheets_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, shown: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert cli_main(["qr", "--range", ID, "--count", str(count), "-o", "s.pdf"]) == 0
    text = err.getvalue()
    if shown:
        assert text.startswith("\rqr [") and f"{count}/{count}" in text and text.endswith("\n")
    else:
        assert text == ""
