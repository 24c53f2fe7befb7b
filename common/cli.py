"""`fedadapt` command line: one subcommand per job, each owned by the module that does the job.

Each module in COMMANDS exposes `add_parser(subparsers) -> None`, which registers its subcommand and sets
`func=<callable(args) -> int>` as the parser default. Keeping the registry here, and the work in the modules,
means `fedadapt --help` lists everything without this file knowing any option.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

COMMANDS: tuple[str, ...] = (
    "common.data.commands",
    "common.rec.commands",
    "simulations.commands",
    "simulations.bench",
)


class CliError(Exception):
    """A user mistake on the command line; printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedadapt",
        description="Federated adapter fine-tuning of a frozen transformer for personalized recommendation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMANDS:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except (CliError, ValueError, FileNotFoundError) as exc:
        print(f"fedadapt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
