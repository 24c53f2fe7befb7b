"""Turn a run's metrics.jsonl into summary.json, summary.md (a table) and plots/*.png.

Kept apart from the runner so a finished (or resumed) run can be re-reported without running anything.
Plots use matplotlib's Agg backend: no display on these machines.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.names import METRICS_FILE, SUMMARY_FILE

METRICS = ("ndcg@10", "hr@10")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the ServerApp wrote no metrics")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def rounds_all_dropped(rows: list[dict[str, Any]]) -> int:
    """Training rounds in which every sampled client dropped (no reply at all: a worker killed, e.g. by Ray's
    memory monitor); such a round changed nothing."""
    return sum(1 for r in rows if int(r.get("clients_sampled", 0)) > 0
               and int(r.get("clients_dropped", 0)) >= int(r["clients_sampled"]))


def summarize(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Final metrics (last round), best round, and totals over all rounds."""
    initial = next((r for r in rows if r.get("round") == 0), None)
    rows = [r for r in rows if r.get("round", 0) >= 1]
    if not rows:
        raise ValueError(f"no rounds in {METRICS_FILE}")
    last = rows[-1]
    walls = [_num(r.get("wall_s")) for r in rows]
    updates = sum(int(r.get("clients_replied", 0)) - int(r.get("clients_rejected", 0)) for r in rows)
    total_wall = sum(w for w in walls if math.isfinite(w))
    summary: dict[str, Any] = {
        "rounds": len(rows),
        "final": {m: _num(last.get(m)) for m in METRICS},
        "initial": {m: _num(initial.get(m)) for m in METRICS} if initial else {},
        "initial_segments": {s: {m: _num(v.get(m)) for m in METRICS}
                             for s, v in sorted((initial or {}).get("segments", {}).items())},
        "final_segments": {s: {m: _num(v.get(m)) for m in (*METRICS, "users")}
                           for s, v in sorted(last.get("segments", {}).items())},
        "best_ndcg@10": max((_num(r.get("ndcg@10")) for r in rows), default=float("nan")),
        "final_train_loss": _num(last.get("train_loss")),
        "bytes_up_per_client_round": _mean([_num(r.get("bytes_up_per_client")) for r in rows]),
        "bytes_down_per_client_round": _mean([_num(r.get("bytes_down_per_client")) for r in rows]),
        "bytes_up_total": sum(int(r.get("bytes_up_total", 0)) for r in rows),
        "bytes_down_total": sum(int(r.get("bytes_down_total", 0)) for r in rows),
        "clients_sampled_total": sum(int(r.get("clients_sampled", 0)) for r in rows),
        "clients_dropped_total": sum(int(r.get("clients_dropped", 0)) for r in rows),
        "clients_rejected_total": sum(int(r.get("clients_rejected", 0)) for r in rows),
        "rounds_all_dropped": rounds_all_dropped(rows),
        "round_wall_s_mean": _mean(walls),
        "client_updates": updates,
        "client_updates_per_minute": updates / total_wall * 60 if total_wall > 0 else float("nan"),
    }
    summary.update(privacy_summary(last))
    summary.update(extra or {})
    return summary


def privacy_summary(last: dict[str, Any]) -> dict[str, Any]:
    """The final epsilon and the DP settings of a run with DP on (the last round's metrics line); {} without."""
    if "epsilon" not in last:
        return {}
    return {"epsilon": _num(last["epsilon"]), "dp_delta": _num(last.get("dp_delta")),
            "dp": {k: last.get(f"dp_{k}") for k in ("noise_multiplier", "clip", "mode")}
            | {"epsilon_poisson": _num(last.get("epsilon_poisson"))}}


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _f(value: object, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else "-"


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A per-round table and a per-segment table of the final round."""
    lines = ["| round | NDCG@10 | HR@10 | loss | sampled | rejected | dropped | up B/client | down B/client | s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("round") == 0:
            continue
        lines.append(
            f"| {r['round']} | {_f(r.get('ndcg@10'))} | {_f(r.get('hr@10'))} | {_f(r.get('train_loss'))} | "
            f"{r.get('clients_sampled', 0)} | {r.get('clients_rejected', 0)} | {r.get('clients_dropped', 0)} | "
            f"{_num(r.get('bytes_up_per_client')):.0f} | {_num(r.get('bytes_down_per_client')):.0f} | "
            f"{_f(r.get('wall_s'), 1)} |"
        )
    init, init_segs = summary.get("initial", {}), summary.get("initial_segments", {})
    lines += ["", "Final round vs round 0 (untrained adapters = frozen backbone), same evaluation users:", "",
              "| segment | users | NDCG@10 | HR@10 | NDCG@10 round 0 | HR@10 round 0 |",
              "|---|---:|---:|---:|---:|---:|",
              f"| overall | | {_f(summary['final'].get('ndcg@10'))} | {_f(summary['final'].get('hr@10'))} | "
              f"{_f(init.get('ndcg@10'))} | {_f(init.get('hr@10'))} |"]
    for seg, v in summary["final_segments"].items():
        i = init_segs.get(seg, {})
        lines.append(f"| {seg} | {v['users']:.0f} | {_f(v['ndcg@10'])} | {_f(v['hr@10'])} | "
                     f"{_f(i.get('ndcg@10'))} | {_f(i.get('hr@10'))} |")
    lines += ["", f"Client updates/minute: {_f(summary['client_updates_per_minute'], 1)}; mean round "
              f"{_f(summary['round_wall_s_mean'], 1)} s; bytes per client-round up "
              f"{summary['bytes_up_per_client_round']:.0f}, down {summary['bytes_down_per_client_round']:.0f}."]
    if "epsilon" in summary:
        dp = summary["dp"]
        lines += ["", f"Differential privacy (client-level, {dp['mode']}): epsilon {_f(summary['epsilon'], 3)} "
                      f"at delta {summary['dp_delta']:g} after {summary['rounds']} round(s), noise multiplier "
                      f"{dp['noise_multiplier']}, clip {dp['clip']} (Poisson-sampling analysis: epsilon "
                      f"{_f(dp['epsilon_poisson'], 3)})."]
    if summary.get("stop_reason"):
        lines += ["", f"Stopped early: {summary['stop_reason']}."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], plots_dir: Path) -> list[Path]:
    """plots/ndcg_by_segment.png and plots/bytes_per_round.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots_dir.mkdir(parents=True, exist_ok=True)
    rounds = [r["round"] for r in rows]  # round 0: before training
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(rounds, [_num(r.get("ndcg@10")) for r in rows], "k-o", label="overall", linewidth=2)
    segments = sorted({s for r in rows for s in r.get("segments", {})})
    for seg in segments:
        ax.plot(rounds, [_num(r.get("segments", {}).get(seg, {}).get("ndcg@10")) for r in rows], "-.", label=seg)
    ax.set_xlabel("round (0: before training)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("NDCG@10")
    ax.set_title("NDCG@10 per segment")
    ax.legend(fontsize=7, ncol=2)
    paths = [plots_dir / "ndcg_by_segment.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    trained = [r for r in rows if r["round"] >= 1]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["round"] for r in trained], [_num(r.get("bytes_up_per_client")) / 1024 for r in trained], "-o",
            label="up per client")
    ax.plot([r["round"] for r in trained], [_num(r.get("bytes_down_per_client")) / 1024 for r in trained], "-s",
            label="down per client")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("KiB")
    ax.set_title("Bytes per client per round (serialized messages)")
    ax.legend()
    paths.append(plots_dir / "bytes_per_round.png")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def write_report(run_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write summary.json, summary.md and plots for `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    summary = summarize(rows, extra)
    (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True), encoding="utf-8")
    (run_dir / "summary.md").write_text(markdown(rows, summary), encoding="utf-8")
    summary["plots"] = [str(p) for p in plot(rows, run_dir / "plots")]
    return summary
