"""`fedadapt privacy`: run the chosen privacy experiments in order and write OUT/summary.{md,json} and plots.

The federated runs (simulations/privacy_runs.py) are shared: membership inference attacks their checkpoints
and the curve plots their quality, so `all` runs them once, after the in-process experiments (segment, items).
Everything is validated before anything is written (simulations/privacy_setup.py); the summary is rewritten
after every experiment, so a long run that is stopped keeps what it finished.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from simulations.privacy_setup import PrivacyOptions, validate, write_data

log = logging.getLogger(__name__)

FEDERATED = ("membership", "curve")  # the experiments on federated runs (run once, shared)


def run_privacy(opts: PrivacyOptions, command: str) -> dict[str, Any]:
    """Validate, then run every experiment of `opts.experiments`; returns the summary (also on disk)."""
    from simulations.privacy_report import write_report

    setup = validate(opts)
    write_data(setup)
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    header = {"command": command, "data": str(opts.data_dir), "users": len(setup.records),
              "pool_users": len(setup.pools["target-in"]),
              "backbone": opts.backbone, "arch": opts.arch, "clients": opts.clients, "rounds": opts.rounds,
              "seed": opts.seed, "epsilons": list(opts.epsilons), "seconds": seconds,
              "settings": {"membership": "central reference (over-fitted, no DP) and federated checkpoints",
                           "segment": "honest round-1 client updates; SecAgg+ rounds in one process",
                           "items": "honest round-1 client updates of the seq model",
                           "curve": "federated runs (fedadapt simulate)"}}
    summary: dict[str, Any] = {}
    runs: list[Any] | None = None
    for name in sorted(opts.experiments, key=lambda e: e in FEDERATED):  # the in-process experiments first
        if name in FEDERATED and runs is None:
            from simulations.privacy_runs import dp_runs

            started = time.perf_counter()
            runs = dp_runs(setup, ("target", "shadow") if "membership" in opts.experiments else ("target",))
            seconds["federated runs"] = time.perf_counter() - started
        started = time.perf_counter()
        if name == "membership":
            from simulations.privacy_membership import run_membership

            assert runs is not None
            results[name] = run_membership(setup, runs)
        elif name == "curve":
            from simulations.privacy_curve import curve_rows

            assert runs is not None
            results[name] = {"rows": curve_rows(runs)}
        elif name == "segment":
            from simulations.privacy_segment import run_segment

            results[name] = run_segment(setup)
        elif name == "items":
            from simulations.privacy_items import run_items

            results[name] = run_items(setup)
        seconds[name] = time.perf_counter() - started
        log.info("privacy %s done in %.0f s", name, seconds[name])
        summary = write_report(opts.out, header, results)  # after each experiment: a long run keeps what it has
    return summary
