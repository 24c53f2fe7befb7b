"""`fedadapt privacy`: run the chosen privacy experiments in order and write OUT/summary.{md,json} and plots.

The federated runs (simulations/privacy/runs.py) are shared: membership inference attacks their checkpoints
and the curve plots their quality, so `all` runs them once, after the in-process experiments (segment, items).
Everything is validated before anything is written (simulations/privacy/setup.py); the summary is rewritten
after every experiment, so a long run that is stopped keeps what it finished.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from simulations.privacy.setup import PrivacyOptions, validate, write_data

log = logging.getLogger(__name__)

def run_privacy(opts: PrivacyOptions, command: str) -> dict[str, Any]:
    """Validate, then run every experiment of `opts.experiments`; returns the summary (also on disk)."""
    from simulations.privacy.registry import run_order
    from simulations.privacy.report import write_report

    setup = validate(opts)
    write_data(setup)
    order = run_order(opts.experiments)
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    header = {"command": command, "data": str(opts.data_dir), "users": len(setup.records),
              "pool_users": len(setup.pools["target-in"]),
              "backbone": opts.backbone, "arch": opts.arch, "clients": opts.clients, "rounds": opts.rounds,
              "seed": opts.seed, "epsilons": list(opts.epsilons), "seconds": seconds,
              "settings": {exp.name: exp.setting for exp in order}}
    summary: dict[str, Any] = {}
    runs: list[Any] | None = None
    for exp in order:
        if exp.federated and runs is None:
            from simulations.privacy.runs import dp_runs

            started = time.perf_counter()
            runs = dp_runs(setup, ("target", "shadow") if any(e.needs_shadow for e in order) else ("target",))
            seconds["federated runs"] = time.perf_counter() - started
        started = time.perf_counter()
        results[exp.name] = exp.run(setup, runs)
        seconds[exp.name] = time.perf_counter() - started
        log.info("privacy %s done in %.0f s", exp.name, seconds[exp.name])
        summary = write_report(opts.out, header, results)  # after each experiment: a long run keeps what it has
    return summary
