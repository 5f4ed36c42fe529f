"""The `hf-posenc` command line.

Each feature module owns its subcommands: it defines `register_cli(subparsers)`, which adds parsers whose defaults set
`func(args) -> int | None`. This file only lists those modules, so adding a subcommand touches its own module and
one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from safetensors import SafetensorError

CLI_MODULES: tuple[str, ...] = (
    "hf_posenc.hub.cli",
    "hf_posenc.recipes.cli",
    "hf_posenc.bench.cli",
    "hf_posenc.recipes.probes",
)
"""Modules that contribute subcommands (`register_cli`)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-posenc", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--traceback", action="store_true", help="on an error, show the full traceback instead of one line"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in CLI_MODULES:
        importlib.import_module(name).register_cli(subparsers)
    return parser


USER_ERRORS = (ValueError, TypeError, OSError, KeyError, SafetensorError, RuntimeError)
"""What a user's input can cause (bad options, missing or corrupt files, JSON errors, an unreachable Hub): reported
as one line on stderr (`--traceback` shows the traceback). JSON and Unicode errors are ValueErrors; Hub errors are
OSErrors."""

MAYBE_BUGS = (RuntimeError, KeyError)
"""User errors that a bug can raise as well (a state-dict mismatch, or a tensor shape error; the trip-wire of a
patched config, or a missing dict entry): their line says how to see the traceback."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-posenc` console script: exit 0, or 2 with one line on stderr naming the fix."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        if args.traceback:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, MAYBE_BUGS):
            message += f" ({type(error).__name__}; run `hf-posenc --traceback {args.command} ...` for the traceback)"
        print(f"hf-posenc {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
