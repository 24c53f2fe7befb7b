"""`fedadapt` entry point: one subcommand per job, each parsed by its own module.

Each module named in COMMANDS exposes `add_parser(subparsers) -> None`, which registers its subcommand and sets
`func=<callable(args) -> int>` as the parser default. Keeping the registry here, and the options in the modules,
means `fedadapt --help` lists everything without this file knowing any option.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common.errors import UserError

# Subcommand -> (module that parses it, one-line help). Only the chosen subcommand's module is imported, so
# `fedadapt data ...` and `fedadapt --help` do not pay for importing torch and transformers.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("cli.data", "generate, load or fetch marketplace tables"),
    "train": ("cli.train", "train a centralized baseline and write RUN/summary.json"),
    "simulate": ("cli.simulate", "run a federated simulation with Flower and write results"),
    "deploy": ("cli.deploy", "run the federation on Flower's deployment runtime (TLS, node authentication)"),
    "bench": ("cli.bench", "benchmarks (reported, not asserted)"),
    "privacy": ("cli.privacy", "privacy experiments: membership, segment and item inference, privacy-utility curve"),
    "serve": ("cli.serve", "serve recommendations from a trained run over HTTP"),
}

# What a subcommand raises for a user's mistake: printed as one line, exit status 2, never a traceback.
USER_ERRORS = (UserError, ValueError, FileNotFoundError)


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The first positional argument, if it names a subcommand."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser for `command` (every subcommand when None); the others are listed with their help only."""
    parser = argparse.ArgumentParser(
        prog="fedadapt",
        description="Federated adapter fine-tuning of a frozen transformer for personalized recommendation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: sys.argv), run the chosen subcommand, return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _chosen_command(argv)
    parser = build_parser(chosen) if chosen else build_parser("")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"fedadapt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
