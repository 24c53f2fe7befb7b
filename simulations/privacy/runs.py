"""The federated runs the privacy experiments attack and plot: one per (pool, DP level), through `simulate`.

Each run is a real `fedadapt simulate` federation (simulations/runner/run.py: Flower, SuperLink, per-bank
aggregation, checkpoints) on the users of one pool only (target-in for the attacked model, shadow-in for the
attacker's shadow model, trained the same way), so its members are known: exactly the users of that pool
(minus those the clients' k-anonymity leaves out, counted in `members_trained`). The DP levels are no DP plus
one run per target epsilon, whose noise multiplier is calibrated by the project's accountant
(common/privacy/accountant.py) for the run's rounds and sampling rate at DELTA. A DP run also uses secure
aggregation (segment mode, server/secure.py: each update clipped to dp-clip, central noise on each unmasked
bank sum); the no-DP run is plain FedAvg, whose accepted-update norms set the clip.

The privacy-utility curve reads NDCG@10 and epsilon of the target runs from their summary.json; membership
inference loads their last checkpoints (simulations/bench/compare.py `federated_model`).
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.names import COMPLETE_FILE, SUMMARY_FILE
from simulations.privacy.setup import DELTA, PrivacyOptions, Setup
from simulations.runner.run import SimOptions

log = logging.getLogger(__name__)

FED_DIR = "federated"  # OUT/federated/<pool>-data and OUT/federated/<run name>/
EVAL_USERS = 20  # max-eval-users per client: the curve's NDCG@10 is measured on these
RUN_POOLS = ("target", "shadow")
RUN_CONFIG_FILE = "run_config.toml"  # what simulations/runner/run.py writes into a run folder


@dataclass(frozen=True)
class FedRun:
    """One finished federated run: its pool, DP level and what its summary says."""

    pool: str  # "target" or "shadow"
    epsilon_target: float | None  # None: no DP
    noise_multiplier: float
    clip: float  # dp-clip (0 without DP)
    folder: Path
    data: Path
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return run_name(self.pool, self.epsilon_target)

    @property
    def epsilon(self) -> float | None:
        """Epsilon after the run's last round (None without DP): what the run reported, or, where its summary
        carries none, the project's accountant for the rounds it ran (every client sampled each round)."""
        if self.noise_multiplier == 0:
            return None
        value = self.summary.get("epsilon")
        if isinstance(value, int | float):
            return float(value)
        from common.privacy.accountant import epsilon_fixed_size

        clients = int(self.summary["clients"])
        return epsilon_fixed_size(self.noise_multiplier, DELTA, [(clients, clients)] * int(self.summary["rounds"]))

    @property
    def epsilon_source(self) -> str:
        return "none" if self.noise_multiplier == 0 else "run" if "epsilon" in self.summary else "accountant"

    @property
    def ndcg(self) -> float:
        return float(self.summary["final"]["ndcg@10"])


def run_name(pool: str, epsilon: float | None) -> str:
    return f"{pool}-no-dp" if epsilon is None else f"{pool}-eps-{epsilon:g}"


def noise_for_epsilon(epsilon: float, rounds: int, population: int, cohort: int, delta: float = DELTA) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after `rounds` cohorts of `cohort` drawn from
    `population` clients is <= `epsilon`, by the accountant the runs report with (bisection)."""
    from common.privacy.accountant import epsilon_fixed_size

    def eps(sigma: float) -> float:
        return epsilon_fixed_size(sigma, delta, [(population, cohort)] * rounds)

    low, high = 0.05, 1.0
    while eps(high) > epsilon:
        high *= 2
        if high > 1e4:
            raise ValueError(f"epsilon {epsilon} is out of reach for {rounds} rounds of {cohort} of {population}")
    if eps(low) <= epsilon:
        return low
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= epsilon else (mid, high)
    return high


def median_delta_norm(run_folder: Path) -> float:
    """The median over rounds of the median L2 norm of the accepted client updates of a run (metrics.jsonl)."""
    from simulations.runner.report import read_metrics

    norms = [float(r["delta_norm_median"]) for r in read_metrics(run_folder)
             if r.get("round", 0) >= 1 and isinstance(r.get("delta_norm_median"), int | float)]
    if not norms or not all(math.isfinite(n) and n > 0 for n in norms):
        raise ValueError(f"{run_folder}: no client update norms in its metrics to set the DP clip from")
    return float(np.median(norms))


def run_config(opts: PrivacyOptions, noise: float, clip: float) -> dict[str, Any]:
    """Run-config overrides of every run: cheap evaluation, the DP level. Segments are released from 2 clients in
    every run (secure aggregation, which the DP runs use, refuses a bank summed over one client; the no-DP run
    uses the same minimum so that the curve compares noise levels only)."""
    config: dict[str, Any] = {"arch": opts.arch, "max-eval-users": EVAL_USERS, "min-segment-clients": 2,
                              "local-epochs": 2}
    # batch size and lr: the arch's defaults (common/defaults.py: seq 32 users at 1e-3, text 16 pairs at 1e-2)
    if noise > 0:  # central DP on secure sums: the server never sees an update or an un-noised sum
        config.update({"dp-noise-multiplier": noise, "dp-clip": clip, "secure-aggregation": "segment"})
    return config


def pool_data(setup: Setup, pool: str) -> Path:
    """OUT/federated/<pool>-data: the tables of the pool's `-in` users (written once, reused by every run)."""
    from common.data.schema import write_marketplace

    folder = (setup.opts.out / FED_DIR / f"{pool}-data").resolve()
    if not (folder / ".complete").is_file():
        write_marketplace(setup.pool_market(f"{pool}-in"), folder, meta={"source": "fedadapt privacy",
                                                                         "pool": f"{pool}-in"})
        (folder / ".complete").write_text("ok\n")
    return folder


def finished_summary(sim: SimOptions) -> dict[str, Any] | None:
    """The summary of a run already finished in `sim.out` with exactly the run config `sim` describes, else None
    (a later `fedadapt privacy` call into the same OUT reuses it instead of training it again)."""
    from simulations.runner.run import run_config

    folder = sim.out
    if not all((folder / name).is_file() for name in (COMPLETE_FILE, SUMMARY_FILE, RUN_CONFIG_FILE)):
        return None
    with open(folder / RUN_CONFIG_FILE, "rb") as fh:
        written = tomllib.load(fh)
    if written != run_config(sim, Path(sim.data or "")).to_run_config():
        return None
    summary: dict[str, Any] = json.loads((folder / SUMMARY_FILE).read_text())
    return summary


def federate(setup: Setup, pool: str, epsilon: float | None, clip: float = 0.0) -> FedRun:
    """Run the federation of `pool` at the DP level of `epsilon` with dp-clip `clip` (replacing an earlier run
    in its folder), or reuse the finished run there when its run config is the same."""
    from simulations.runner.run import simulate

    opts = setup.opts
    noise = 0.0 if epsilon is None else noise_for_epsilon(epsilon, opts.rounds, opts.clients, opts.clients)
    data = pool_data(setup, pool)
    folder = (opts.out / FED_DIR / run_name(pool, epsilon)).resolve()
    log.info("federated run %s: %d clients, %d rounds, noise multiplier %.3f, clip %.3g", folder.name,
             opts.clients, opts.rounds, noise, clip)
    sim = SimOptions(out=folder, clients=opts.clients, rounds=opts.rounds, data=data, seed=opts.seed,
                     backbone=opts.fed_backbone, overwrite=True, quiet=True, config=run_config(opts, noise, clip))
    summary = finished_summary(sim)
    if summary is None:
        summary = simulate(sim)
    else:
        log.info("federated run %s: reusing the finished run with the same run config", folder.name)
    return FedRun(pool, epsilon, noise, clip if noise > 0 else 0.0, folder, data, summary)


def dp_levels(opts: PrivacyOptions) -> list[float | None]:
    """No DP, then every target epsilon from the largest (least noise) to the smallest."""
    return [None, *sorted(opts.epsilons, reverse=True)]


def dp_runs(setup: Setup, pools: tuple[str, ...] = RUN_POOLS) -> list[FedRun]:
    """Every (pool, DP level) run, targets first. The DP runs of a pool clip at the median update norm of its
    no-DP run (the usual choice: most honest updates pass unchanged, and the noise is no larger than needed)."""
    runs = []
    for pool in pools:
        plain = federate(setup, pool, None)
        clip = median_delta_norm(plain.folder)
        runs += [plain, *(federate(setup, pool, eps, clip) for eps in dp_levels(setup.opts)[1:])]
    return runs
