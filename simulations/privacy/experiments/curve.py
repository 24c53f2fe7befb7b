"""The privacy-utility curve (`fedadapt privacy curve`): NDCG@10 of the federated target runs against epsilon.

Each point is one federated run on the target-in users (simulations/privacy/runs.py): no DP, then one run per
target epsilon with the noise multiplier the accountant gives for it. NDCG@10 and HR@10 are the federation's
own final evaluation (clients' held-out test items vs 99 sampled negatives, max EVAL_USERS per client), and
epsilon is what the run reported after its last round (client-level, at DELTA). Round 0 (the untrained
banks) is the floor the noise pushes the curve towards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.privacy.registry import Experiment
from simulations.privacy.report import fmt, table
from simulations.privacy.runs import FedRun


def curve_rows(runs: Sequence[FedRun]) -> list[dict[str, Any]]:
    """One row per target run: its DP level, the epsilon it reported, its final and round-0 quality."""
    rows = []
    for run in (r for r in runs if r.pool == "target"):
        rows.append({"epsilon_target": run.epsilon_target, "epsilon": run.epsilon,
                     "epsilon_source": run.epsilon_source,
                     "noise_multiplier": run.noise_multiplier, "clip": run.clip,
                     "ndcg@10": run.ndcg, "hr@10": float(run.summary["final"]["hr@10"]),
                     "ndcg@10_round0": float(run.summary.get("initial", {}).get("ndcg@10", math.nan)),
                     "rounds": int(run.summary["rounds"]), "run": str(run.folder)})
    return rows


def plot_curve(rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """NDCG@10 against epsilon (log scale); no DP as a dashed line, round 0 as a dotted one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = sorted((r for r in rows if r["epsilon"] is not None), key=lambda r: r["epsilon"])
    plain = [r for r in rows if r["epsilon"] is None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["epsilon"] for r in dp], [r["ndcg@10"] for r in dp], "o-", label="with DP")
    for r in dp:
        ax.annotate(f"σ={r['noise_multiplier']:.2f}", (r["epsilon"], r["ndcg@10"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7)
    if plain:
        ax.axhline(plain[0]["ndcg@10"], linestyle="--", color="k", label="no DP")
        ax.axhline(plain[0]["ndcg@10_round0"], linestyle=":", color="grey", label="round 0 (untrained)")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (client-level, delta 1e-5)")
    ax.set_ylabel("NDCG@10 (federated evaluation)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(result: dict[str, Any]) -> list[str]:
    header = ["DP", "epsilon (from)", "noise multiplier", "clip", "NDCG@10", "HR@10", "NDCG@10 round 0"]
    rows = [["none" if row["epsilon_target"] is None else f"target epsilon {row['epsilon_target']:g}",
             f"{fmt(row['epsilon'], 2)} ({row['epsilon_source']})", fmt(row["noise_multiplier"], 3),
             fmt(row["clip"], 3), fmt(row["ndcg@10"], 4),
             fmt(row["hr@10"], 4), fmt(row["ndcg@10_round0"], 4)] for row in result["rows"]]
    intro = ("Epsilon is client-level at delta 1e-5, as the run reported it (run) or, where the run's summary has "
             "none, from the project's accountant for its noise multiplier, rounds and cohort (accountant). DP runs "
             "also use secure aggregation (segment mode), the no-DP run is plain FedAvg.")
    return ["## Privacy-utility curve (federated runs on the target-in users)", "", intro, "",
            *table(header, rows)]


def _plot(result: dict[str, Any], out: Path, header: dict[str, Any]) -> Path | None:
    if not any(r["epsilon"] is not None for r in result["rows"]):
        return None
    title = f"NDCG@10 vs epsilon ({header['backbone']}, arch {header['arch']})"
    return plot_curve(result["rows"], out / "curve.png", title)


EXPERIMENT = Experiment(name="curve", setting="federated runs (fedadapt simulate)",
                        run=lambda setup, runs: {"rows": curve_rows(runs or [])}, section=section, plot=_plot,
                        federated=True)
