"""The ``cityid`` command line.

Each package owns its commands: it exposes ``add_commands(subparsers)`` which
adds its parsers and sets ``func`` (``args -> int``) on each. This module only
assembles them and maps typed errors to one line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

from . import __version__
from .errors import CityIdError

# Modules that contribute commands, in the order ``--help`` lists them. A module
# that is missing (a service not built yet) is skipped, so the CLI always starts.
COMMAND_MODULES = (
    "cityid.commands",
    "ledger.cli",
    "registrar.cli",
    "registrar.handle_cli",
    "registrar.qr_cli",
    "registrar.apply_cli",
    "resolver.cli",
    "resolver.dns.cli",
    "stack.up",
)

EXIT_USAGE = 2
EXIT_FAILURE = 1

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def group(sub: Subparsers, name: str, help: str, description: str = "") -> Subparsers:
    """The subcommands of group ``name``, created on first use.

    Several packages add commands to one group (``cityid id check`` comes from
    the core, ``cityid id mint`` from the registrar).
    """
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help, description=description or help)
        parser.set_defaults(_parser=parser)
        parser._cityid_sub = parser.add_subparsers(metavar="COMMAND")  # type: ignore[attr-defined]
    return parser._cityid_sub  # type: ignore[attr-defined,no-any-return]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityid",
        description=(
            "Open, verifiable, hierarchical identifiers for smart cities. "
            "Identifiers look like MA.156.1301.02/W0000127R: a node-code prefix, a slash, "
            "a suffix. Every write is a signed operation anchored in a transparency log."
        ),
        epilog="Run 'cityid COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"cityid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue
            raise
        add: Callable[[Subparsers], None] = module.add_commands
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # A group named without a subcommand: show that group's help.
        (getattr(args, "_parser", None) or parser).print_help()
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except CityIdError as e:
        print(f"cityid: error: {e.message} [rule: {e.rule}]", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("cityid: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so in one line, keep the details in a file
        return _crashed(e)


def _crashed(e: Exception) -> int:
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(e))
    if os.environ.get("CITYID_TRACEBACK"):
        print(text, file=sys.stderr, end="")
        where = "printed above"
    else:
        fd, path = tempfile.mkstemp(prefix="cityid-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = f"in {path} (CITYID_TRACEBACK=1 prints it)"
    print(
        f"cityid: internal error: {type(e).__name__}: {e} [a bug: the traceback is {where}; "
        "please report it]",
        file=sys.stderr,
    )
    return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
