"""One registry of `fedadapt privacy` experiments: a new experiment is one module in `experiments/`.

Each module of `simulations/privacy/experiments/` defines `EXPERIMENT = Experiment(...)`: its name (the module's),
what it attacks (the summary's settings line), whether it runs on the shared federated runs, how it runs, its
Markdown section and its plot. The runner (`simulations/privacy/run.py`), the report and the CLI ask this module
and never name an experiment. Names are read from the package without importing it (the CLI's help stays fast);
the modules are imported when an experiment runs. (Setup and FedRun are typed `Any` here: this module imports
nothing of the experiments' own, so that setup.py can ask it for the names.)
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = "simulations.privacy.experiments"
Result = dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One experiment: `run(setup, runs)` returns its result; `section(result)` and `plot(result, out, header)`
    turn that result into the summary's Markdown lines and an optional figure."""

    name: str
    setting: str  # what the experiment attacks, one line in the summary
    run: Callable[[Any, Sequence[Any] | None], Result]  # (Setup, the federated runs or None)
    section: Callable[[Result], list[str]]
    plot: Callable[[Result, Path, dict[str, Any]], Path | None] | None = None
    federated: bool = False  # runs on the shared federated runs (run once, after the in-process experiments)
    needs_shadow: bool = False  # the federated runs must include the shadow pool


def names() -> tuple[str, ...]:
    """Every experiment's name, sorted, without importing any experiment module."""
    package = importlib.util.find_spec(PACKAGE)
    assert package is not None and package.submodule_search_locations is not None
    return tuple(sorted(m.name for m in pkgutil.iter_modules(list(package.submodule_search_locations))))


@cache
def experiments() -> dict[str, Experiment]:
    """{name: Experiment}, every module imported; a module without EXPERIMENT or a misnamed one is refused."""
    found: dict[str, Experiment] = {}
    for name in names():
        exp = getattr(importlib.import_module(f"{PACKAGE}.{name}"), "EXPERIMENT", None)
        if not isinstance(exp, Experiment):
            raise TypeError(f"{PACKAGE}.{name} defines no EXPERIMENT = Experiment(...)")
        if exp.name != name:
            raise ValueError(f"{PACKAGE}.{name} registers its experiment as {exp.name!r}; name it {name!r}")
        found[name] = exp
    return found


def run_order(chosen: Sequence[str]) -> list[Experiment]:
    """The chosen experiments, the in-process ones first (the federated runs are built once, then shared)."""
    table = experiments()
    return sorted((table[n] for n in chosen), key=lambda e: (e.federated, e.name))
