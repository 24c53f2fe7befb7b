"""OUT/curve.json, OUT/curve.md (one table) and OUT/curve.png of the user-level curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from simulations.privacy.report import fmt, fmt_auc, table

CURVE_JSON, CURVE_MD, CURVE_PNG = "curve.json", "curve.md", "curve.png"


def _label(value: float | None) -> str:
    return "none (no DP)" if value is None else f"{value:g}"


def curve_table(result: dict[str, Any]) -> list[str]:
    header = ["target epsilon", "epsilon (run)", "sigma", "q", "rounds", "NDCG@10 sampled", "HR@10 sampled",
              "NDCG@10 full", "HR@10 full", "membership AUC [95% CI]", "secure agg. every round", "DP unit"]
    rows = [[_label(r["epsilon_target"]), fmt(r["epsilon"], 2), fmt(r["noise_multiplier"], 3),
             fmt(r["dp_user_rate"], 3), str(r["rounds"]), fmt(r["ndcg@10_sampled"], 4), fmt(r["hr@10_sampled"], 4),
             fmt(r["ndcg@10_full"], 4), fmt(r["hr@10_full"], 4), fmt_auc(r["membership"]),
             "yes" if r["secure_aggregation_every_round"] else "no", ",".join(r["dp_units"])] for r in result["rows"]]
    pub = result.get("public")
    if pub:
        rows.append(["public pre-training only", "-", "-", "-", "0", fmt(pub["ndcg@10_sampled"], 4),
                     fmt(pub["hr@10_sampled"], 4), fmt(pub["ndcg@10_full"], 4), fmt(pub["hr@10_full"], 4),
                     fmt_auc(pub["membership"]), "-", "-"])
    return table(header, rows)


def curve_markdown(result: dict[str, Any]) -> str:
    sides = result["membership_sides"]
    untrained = fmt_auc(result["membership_untrained"]) if "membership_untrained" in result else "-"
    start = ("round-0 model (the public pre-training: trained on no member)" if result.get("public")
             else "untrained (round 0) model")
    intro = (f"{result['members']} members in {result['clients']} silos ({result['members_in_silos']} found in the "
             f"silos' records), {result['holdouts']} users held out of every silo. delta = 1/N^1.1 = "
             f"{result['delta']:.3g} (N = members). Quality: the final global model scored centrally on "
             f"{result['evaluation_users']} members' held-out test items (sampled: vs 99 negatives; full: the whole "
             f"catalog). Membership: mean log-softmax of a user's own training targets, {sides[0]} members vs "
             f"{sides[1]} held-out users; AUC 0.5 = guessing, [bootstrap 95% interval]; the same attack on the "
             f"{start}: {untrained}.")
    pub = result.get("public")
    if pub:
        intro += (f" Every federation starts from a global bank pre-trained centrally, without DP, on "
                  f"{pub['users']} public users ({pub['epochs']} epochs; neither members nor held out): the "
                  f"'public pre-training only' row is that model before any private round.")
    return "\n".join(["# User-level privacy-utility curve", "", f"Command: `{result['command']}`", "", intro, "",
                      *curve_table(result), ""])


def plot_curve(result: dict[str, Any], path: Path) -> Path:
    """NDCG@10 (sampled and full) and the membership AUC against epsilon; no DP as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dp = sorted((r for r in rows if r["epsilon"] is not None), key=lambda r: r["epsilon"])
    plain = [r for r in rows if r["epsilon_target"] is None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style, color in (("ndcg@10_sampled", "o-", "C0"), ("ndcg@10_full", "s-", "C1")):
        left.plot([r["epsilon"] for r in dp], [r[key] for r in dp], style, color=color, label=f"{key}, DP")
        for r in plain:
            left.axhline(r[key], linestyle="--", color=color, label=f"{key}, no DP")
    right.errorbar([r["epsilon"] for r in dp], [r["membership"]["auc"] for r in dp],
                   yerr=[[r["membership"]["auc"] - r["membership"]["ci_low"] for r in dp],
                         [r["membership"]["ci_high"] - r["membership"]["auc"] for r in dp]], fmt="o-", label="DP")
    for r in plain:
        right.axhline(r["membership"]["auc"], linestyle="--", color="k", label="no DP")
    if result.get("public"):
        left.axhline(result["public"]["ndcg@10_sampled"], linestyle=":", color="C0",
                     label="ndcg@10_sampled, public pre-training only")
    if "membership_untrained" in result:
        label = "round 0 (public pre-training)" if result.get("public") else "untrained (round 0)"
        right.axhline(result["membership_untrained"]["auc"], linestyle=":", color="grey", label=label)
    right.axhline(0.5, color="grey", linewidth=0.8)
    for ax, ylabel in ((left, "NDCG@10 (central, final model)"), (right, "membership AUC (members vs held out)")):
        if dp:
            ax.set_xscale("log")
        ax.set_xlabel(f"epsilon per user (delta {result['delta']:.2g})")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"user-level DP: {result['clients']} silos, q {result['dp_user_rate']:g}, "
                 f"{result['rounds']} rounds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_curve(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / CURVE_JSON).write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
    (out / CURVE_MD).write_text(curve_markdown(result), encoding="utf-8")
    plot_curve(result, out / CURVE_PNG)
