"""OUT/summary.json, OUT/summary.md (one table per experiment) and OUT/*.png of `fedadapt privacy`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.names import SUMMARY_FILE

SUMMARY_MD = "summary.md"


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def _auc(result: dict[str, Any]) -> str:
    return f"{_f(result['auc'])} [{_f(result['ci_low'])}, {_f(result['ci_high'])}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def membership_md(result: dict[str, Any]) -> list[str]:
    pools = result["pools"]
    intro = (f"Members: the {pools['target-in']} target-in users (their data trained the model); non-members: the "
             f"{pools['target-out']} target-out users (same distribution, never trained on). Shadow models: trained "
             f"the same way on {pools['shadow-in']} shadow-in users, {pools['shadow-out']} shadow-out held out. "
             "AUC 0.5 = guessing; [bootstrap 95% interval].")
    header = ["setting", "model", "epsilon", "noise multiplier", "NDCG@10", "loss-threshold AUC", "shadow AUC",
              "mean loss members / non-members"]
    rows = [[row["setting"], row["model"], _f(row.get("epsilon"), 2), _f(row.get("noise_multiplier"), 3),
             _f(row.get("ndcg@10"), 4), _auc(row["loss_threshold"]), _auc(row["shadow"]),
             f"{_f(row['mean_loss_members'])} / {_f(row['mean_loss_non_members'])}"] for row in result["rows"]]
    return ["## Membership inference", "", intro, "", *table(header, rows)]


def segment_md(result: dict[str, Any]) -> list[str]:
    intro = (f"{result['clients']} clients (per-region silos of {_f(result['users_per_client'], 1)} users on "
             f"average, arch {result['arch']}), round-1 updates from the client's own training code; classifier: "
             "nearest centroid, 5-fold cross-validated, on the global bank's delta (plain) or on the masked words the "
             "server receives for it (secure).")
    header = ["server's view", "what it receives", "segment read from the messages", "classifier accuracy",
              "chance", "masked words uniform (KS p)", "max error of the unmasked sums"]
    rows = [[row["mode"], row["seen"], _f(row["by_protocol"], 2), _f(row["classifier"]["accuracy"]),
             _f(row["classifier"]["chance"]), _f(row.get("uniformity_p")), _f(row.get("max_sum_error"), 6)]
            for row in result["rows"]]
    return ["## Segment inference (the server guesses a client's region)", "", intro, "", *table(header, rows)]


def items_md(result: dict[str, Any]) -> list[str]:
    intro = (f"{result['clients']} clients of {_f(result['users_per_client'], 1)} users on average, "
             f"{_f(result['positives_per_client'], 1)} training positives per client, catalog of {result['catalog']}. "
             "The server ranks the catalog by the delta of the global item bias (bias) or by how far each item row "
             "moved against the rows' common move (rows) and takes the top k; precision/recall against the "
             "client's users' training positives.")
    columns = [("bias", "precision@10"), ("bias", "recall@10"), ("bias", "precision@20"), ("bias", "recall@20"),
               ("rows", "precision@10"), ("rows", "recall@20")]
    header = ["server's view", "bias P@10", "bias R@10", "bias P@20", "bias R@20", "rows P@10", "rows R@20"]
    rows = []
    for row in result["rows"]:
        mean = row["mean"]  # the popularity row has one value per metric, the same for both signals
        rows.append([row["view"], *(_f(mean.get(f"{signal}/{metric}", mean.get(f"popularity/{metric}")))
                                    for signal, metric in columns)])
    return ["## Item inference from item-side updates (arch seq)", "", intro, "", *table(header, rows)]


def curve_md(result: dict[str, Any]) -> list[str]:
    header = ["DP", "epsilon (from)", "noise multiplier", "clip", "NDCG@10", "HR@10", "NDCG@10 round 0"]
    rows = [["none" if row["epsilon_target"] is None else f"target epsilon {row['epsilon_target']:g}",
             f"{_f(row['epsilon'], 2)} ({row['epsilon_source']})", _f(row["noise_multiplier"], 3),
             _f(row["clip"], 3), _f(row["ndcg@10"], 4),
             _f(row["hr@10"], 4), _f(row["ndcg@10_round0"], 4)] for row in result["rows"]]
    intro = ("Epsilon is client-level at delta 1e-5, as the run reported it (run) or, where the run's summary has "
             "none, from the project's accountant for its noise multiplier, rounds and cohort (accountant). DP runs "
             "also use secure aggregation (segment mode), the no-DP run is plain FedAvg.")
    return ["## Privacy-utility curve (federated runs on the target-in users)", "", intro, "",
            *table(header, rows)]


SECTIONS = {"membership": membership_md, "segment": segment_md, "items": items_md, "curve": curve_md}


def plot_membership(rows: list[dict[str, Any]], path: Path) -> Path:
    """Attack AUC against epsilon for the federated DP runs; no DP and the central reference as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = sorted((r for r in rows if r.get("epsilon") is not None), key=lambda r: r["epsilon"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for attack, style in (("loss_threshold", "o-"), ("shadow", "s-")):
        ax.plot([r["epsilon"] for r in dp], [r[attack]["auc"] for r in dp], style, label=f"{attack}, with DP")
    for r, style in ((r, "--" if r["setting"] == "federated" else ":") for r in rows if r.get("epsilon") is None):
        ax.axhline(r["loss_threshold"]["auc"], linestyle=style, color="k", label=f"loss threshold, {r['model']}")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (client-level, delta 1e-5)")
    ax.set_ylabel("membership AUC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, header: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write summary.json, summary.md and the plots of the experiments in `results`; returns the summary."""
    from simulations.privacy_curve import plot_curve

    out.mkdir(parents=True, exist_ok=True)
    plots: list[str] = []
    if "curve" in results and any(r["epsilon"] is not None for r in results["curve"]["rows"]):
        plots.append(str(plot_curve(results["curve"]["rows"], out / "curve.png",
                                    f"NDCG@10 vs epsilon ({header['backbone']}, arch {header['arch']})")))
    if "membership" in results:
        plots.append(str(plot_membership(results["membership"]["rows"], out / "membership.png")))
    summary = {**header, **results, "plots": plots}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True, default=str), encoding="utf-8")
    lines = ["# fedadapt privacy", "", f"Command: `{header['command']}`", "",
             f"Data: {header['data']} ({header['users']} user records, pools of {header['pool_users']}); backbone "
             f"{header['backbone']}; arch {header['arch']}; {header['clients']} clients x {header['rounds']} rounds "
             f"per federated run; seed {header['seed']}. Seconds per experiment: "
             + ", ".join(f"{k} {v:.0f}" for k, v in header["seconds"].items()) + ".", ""]
    for name, section in SECTIONS.items():
        if name in results:
            lines += [*section(results[name]), ""]
    lines += [f"Plots: {', '.join(Path(p).name for p in plots) or 'none'}."]
    (out / SUMMARY_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
