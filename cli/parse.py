"""Argument parsers shared by subcommands: each names its flag in the usage error argparse prints."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def fraction(name: str) -> Callable[[str], float]:
    """A parser of a number with 0 <= value < 1 that names its flag (argparse turns the error into a usage error)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0.0 <= value < 1.0:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{name} must be a fraction with 0 <= FRACTION < 1, got {text}")
        return value
    return parse
