"""``cityid qr``: 2D (QR) codes for identifiers, one at a time or as printable sheets."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cityid.cli import Subparsers
from cityid.errors import IdentifierError

# Light to import: segno itself loads on first use.
from .qrcodes import MAX_SHEET_CODES, QRCodeError

if TYPE_CHECKING:
    from cityid.identifiers import Identifier

DEFAULT_RESOLVER = "http://127.0.0.1:8080"
RESOLVER_ENV = "CITYID_RESOLVER"
# Below this a sheet is done before a bar would be worth reading.
PROGRESS_THRESHOLD = 200
# A suffix this long that ends in a valid check character is taken to include it;
# shorter ones ending in a digit are read as the number alone (see parse_range).
CHECK_INCLUDED_MIN_LENGTH = 9

_BODY_RE = re.compile(r"([A-Z]*)([0-9]+)")

DESCRIPTION = """\
Write the 2D (QR) code of an identifier, or a printable sheet of codes.

A code holds the resolver URL of the identifier, BASE/PREFIX/SUFFIX, all in upper
case: scanning it opens the resolver, which redirects to the thing's page. Upper
case lets QR use its compact alphanumeric mode (0-9 A-Z $%*+-./: and space), so
the code has fewer, larger modules. A suffix with '_' still works, in the larger
byte mode. A path in the resolver URL is upper-cased too: the resolver must
serve it that way.

Three forms:
  cityid qr ID                          one code: PNG or SVG (by -o's suffix)
  cityid qr --range PREFIX/START --count N -o FILE
                                        a sheet for N minted identifiers from START
  cityid qr --ids-file FILE -o FILE     a sheet for the identifiers listed in FILE

Minted suffixes are letters, zero-padded digits, and an ISO/IEC 7064 MOD 37,36
check character: W0000127R is W, 0000127, check R; the next is W0000128 plus its
check. START may be given with or without its check character: a START that ends
in a letter, or that has 9 or more characters and ends in a valid check
character, is read as including it (the check is verified and dropped); any
other START is read as letters and digits alone. The first and last identifiers
are printed, so the reading can be checked.

A sheet is a PDF of A4 pages (each code with its identifier under it, a light
cut grid, page numbers) or one PNG grid image (at most 1,000 codes). Sheets of
more than 200 codes show a progress bar on stderr when it is a terminal."""

EPILOG = """\
examples:
  cityid qr MA.156.1301.02/W0000127R --resolver https://id.city.example
      writes W0000127R.png in the current directory
  cityid qr ma.156.1301.02/w0000127r -o cover.svg --error Q
  cityid qr --range MA.156.1301.02/W0000127R --count 10000 -o covers.pdf
  cityid qr --range MA.156.1301.02/W0000127 --count 12 -o covers.png --columns 3
  cityid qr --ids-file meters.txt -o meters.pdf --resolver https://id.city.example

The ids file has one identifier per line; blank lines and lines starting with #
are skipped; '-' reads standard input.

An identifier shaped like a minted one (letters, digits, check character) whose
check character is wrong is refused unless --force. With --resolver (or env
CITYID_RESOLVER), one code's identifier is looked up there first, and a warning
says when it is not registered (the code would lead to a "not registered" page)."""


# -- ranges and id files ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MintedRange:
    """``count`` minted identifiers under ``prefix``: letters, number, width digits."""

    prefix: str
    letters: str
    first: int
    width: int
    count: int
    start_had_check: bool

    def identifiers(self) -> Iterator[str]:
        from cityid.identifiers import mint_suffix

        for number in range(self.first, self.first + self.count):
            yield f"{self.prefix}/{mint_suffix(self.letters, number, self.width)}"


def parse_range(start: str, count: int) -> MintedRange:
    """Read ``--range PREFIX/START --count N`` (see the command's description).

    Raises :class:`IdentifierError` for a malformed identifier or a wrong check
    character, and :class:`QRCodeError` for a bad count or an overflow.
    """
    from cityid.identifiers import has_valid_check, parse_identifier, parse_minted

    if isinstance(count, bool) or not 1 <= count <= MAX_SHEET_CODES:
        raise QRCodeError(
            f"--count must be from 1 to {MAX_SHEET_CODES:,}, not {count:,}", rule="range-count"
        )
    ident = parse_identifier(start)
    if ident.is_prefix_record:
        raise QRCodeError(
            f"{ident} is a prefix record, not the start of a minted range", rule="range-start"
        )
    suffix = ident.suffix
    if not suffix[-1].isdigit() or (
        len(suffix) >= CHECK_INCLUDED_MIN_LENGTH and has_valid_check(suffix)
    ):
        minted = parse_minted(suffix)  # verifies the check character
        letters, number, width, had_check = minted.letters, minted.number, minted.width, True
    else:
        body = _BODY_RE.fullmatch(suffix)
        if body is None:
            raise QRCodeError(
                f"range start {suffix!r} is not letters then digits "
                "(with or without its check character)",
                rule="range-start",
            )
        letters, digits = body.groups()
        number, width, had_check = int(digits), len(digits), False
    last = number + count - 1
    if len(str(last)) > width:
        raise QRCodeError(
            f"{letters}{number:0{width}d} plus {count:,} codes reaches {letters}{last}, "
            f"which does not fit in {width} digits",
            rule="range-overflow",
        )
    return MintedRange(str(ident.prefix), letters, number, width, count, had_check)


def read_ids_file(path: str) -> list[str]:
    """Canonical identifiers from ``path`` ('-': stdin), one a line; errors name the line."""
    from cityid.identifiers import parse_identifier

    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise QRCodeError(f"cannot read {path!r}: {reason}", rule="ids-file") from None
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(ids) == MAX_SHEET_CODES:
            raise QRCodeError(
                f"{path}: more than {MAX_SHEET_CODES:,} identifiers; split the file",
                rule="sheet-size",
            )
        try:
            ids.append(str(parse_identifier(text)))
        except IdentifierError as e:
            raise IdentifierError(f"{path}:{number}: {e.message}", rule=e.rule) from None
    if not ids:
        raise QRCodeError(f"{path} lists no identifiers", rule="sheet-size")
    return ids


# -- the command -------------------------------------------------------------------


def add_commands(sub: Subparsers) -> None:
    p = sub.add_parser(
        "qr",
        help="write the 2D (QR) code of an identifier, or a printable sheet of codes",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "identifier",
        nargs="?",
        metavar="ID",
        help="one identifier, PREFIX/SUFFIX in any case, e.g. MA.156.1301.02/W0000127R",
    )
    p.add_argument(
        "--range",
        metavar="PREFIX/START",
        help="first identifier of a minted range (with or without its check character)",
    )
    p.add_argument(
        "--count", type=int, metavar="N", help="how many identifiers the range has (1-1,000,000)"
    )
    p.add_argument(
        "--ids-file",
        metavar="FILE",
        help="a file of identifiers, one a line ('-' for standard input)",
    )
    p.add_argument(
        "--resolver",
        metavar="URL",
        help=(
            "resolver base URL, http(s)://host[:port][/path], no query "
            f"(default: env {RESOLVER_ENV}, else {DEFAULT_RESOLVER})"
        ),
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=(
            "where to write: .png or .svg for one code (default SUFFIX.png here), "
            ".pdf or .png for a sheet (required)"
        ),
    )
    p.add_argument(
        "--error",
        type=str.upper,
        choices=("L", "M", "Q", "H"),
        default="M",
        help=(
            "error-correction level: the share of damaged codewords a reader can "
            "restore, L 7%%, M 15%%, Q 25%%, H 30%%; higher means a denser code "
            "(default %(default)s)"
        ),
    )
    p.add_argument(
        "--scale",
        type=int,
        metavar="PX",
        help="PNG pixels (SVG units) per module (default 10 for one code, 4 for a PNG sheet)",
    )
    p.add_argument(
        "--columns",
        type=int,
        default=4,
        metavar="N",
        help="codes across a sheet, 1-10 (default %(default)s: 20 codes per A4 page)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    p.add_argument(
        "--force",
        action="store_true",
        help="make codes even for identifiers shaped like minted ones whose check character "
        "is wrong (refused by default: such an identifier was most likely mistyped)",
    )
    p.set_defaults(func=lambda args: run_qr(args, p))


def _resolver(args: argparse.Namespace) -> str:
    return str(args.resolver or os.environ.get(RESOLVER_ENV) or DEFAULT_RESOLVER)


def run_qr(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    sources = [x for x in (args.identifier, args.range, args.ids_file) if x is not None]
    if len(sources) != 1:
        parser.error("give exactly one of ID, --range PREFIX/START or --ids-file FILE")
    if args.count is not None and args.range is None:
        parser.error("--count goes with --range")
    if args.range is not None and args.count is None:
        parser.error("--range needs --count N")
    if args.identifier is not None:
        return _one_code(args)
    if not args.output:
        parser.error("a sheet needs -o FILE.pdf or -o FILE.png")
    return _sheet(args)


def _one_code(args: argparse.Namespace) -> int:
    from cityid.identifiers import parse_identifier

    from .qrcodes import DEFAULT_SCALE, resolver_url, write_qr

    ident = parse_identifier(args.identifier)
    if not args.force:
        _refuse_misread(ident, "")
    url = resolver_url(_resolver(args), str(ident))
    if args.resolver or os.environ.get(RESOLVER_ENV):
        warning = registration_warning(_resolver(args), str(ident))
        if warning:
            print(f"cityid: warning: {warning}", file=sys.stderr)
    out = Path(args.output) if args.output else Path(f"{ident.suffix}.png")
    write_qr(url, out, scale=args.scale or DEFAULT_SCALE, error=args.error)
    print(f"file: {out}")
    print(f"url:  {url}")
    return 0


def _refuse_misread(ident: Identifier, where: str) -> None:
    from cityid.commands import misread_check

    problem = misread_check(ident)
    if problem is not None:
        raise IdentifierError(
            f"{where}{ident}: {problem}; give --force to make its code anyway",
            rule="check-character",
        )


def registration_warning(resolver: str, ident: str, timeout: float = 5.0) -> str:
    """Why a code for ``ident`` would not lead anywhere useful on ``resolver``, or ""."""
    import json
    import urllib.error
    import urllib.request

    from .qrcodes import check_resolver_url

    base = check_resolver_url(resolver).rstrip("/")
    req = urllib.request.Request(
        f"{base}/api/handles/{ident}", headers={"Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return ""
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("message", "")
        except (ValueError, AttributeError):
            message = ""
        why = f"HTTP {e.code}: {message}" if message else f"HTTP {e.code}"
        return f"{ident} is not registered at {base} ({why}); its code leads to an error page"
    except (urllib.error.URLError, OSError) as e:
        return f"could not check {ident} at {base}: {getattr(e, 'reason', e)}"


def _sheet(args: argparse.Namespace) -> int:
    from cityid.identifiers import parse_identifier
    from cityid.progress import Progress

    from .qrcodes import (
        DEFAULT_SHEET_SCALE,
        check_resolver_url,
        output_kind,
        resolver_url,
        write_sheet,
    )

    output_kind(args.output, ("pdf", "png"))  # refuse a bad name before the long part
    base = _resolver(args)
    check_resolver_url(base)  # and a bad resolver URL
    if args.range is not None:
        ids: Sequence[str] = list(parse_range(args.range, args.count).identifiers())
    else:
        ids = read_ids_file(args.ids_file)
        if not args.force:
            for ident in ids:
                _refuse_misread(parse_identifier(ident), f"{args.ids_file}: ")
    items = [(ident, resolver_url(base, ident)) for ident in ids]
    show = len(items) > PROGRESS_THRESHOLD and not args.no_progress
    with Progress(len(items), "qr", stream=sys.stderr) as bar:
        bar.enabled = bar.enabled and show

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.done)

        info = write_sheet(
            items,
            args.output,
            columns=args.columns,
            progress=progress,
            error=args.error,
            scale=args.scale or DEFAULT_SHEET_SCALE,
        )
    pages = f", {info.pages} pages" if info.path.suffix.lower() == ".pdf" else ""
    print(f"file:  {info.path} ({info.codes:,} codes{pages})")
    print(f"first: {items[0][0]}  {items[0][1]}")
    if len(items) > 1:
        print(f"last:  {items[-1][0]}  {items[-1][1]}")
    return 0
