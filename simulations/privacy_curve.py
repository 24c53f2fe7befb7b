"""The privacy-utility curve (`fedadapt privacy curve`): NDCG@10 of the federated target runs against epsilon.

Each point is one federated run on the target-in users (simulations/privacy_runs.py): no DP, then one run per
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

from simulations.privacy_runs import FedRun


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
