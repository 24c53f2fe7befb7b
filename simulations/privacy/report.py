"""OUT/summary.json, OUT/summary.md (one table per experiment) and OUT/*.png of `fedadapt privacy`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.names import SUMMARY_FILE

SUMMARY_MD = "summary.md"


def fmt(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "-"


def fmt_auc(result: dict[str, Any]) -> str:
    return f"{fmt(result['auc'])} [{fmt(result['ci_low'])}, {fmt(result['ci_high'])}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def write_report(out: Path, header: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write summary.json, summary.md and the plots of the experiments in `results`; returns the summary."""
    from simulations.privacy.registry import experiments

    out.mkdir(parents=True, exist_ok=True)
    done = [exp for name, exp in experiments().items() if name in results]
    plots = [str(path) for exp in done if exp.plot is not None
             and (path := exp.plot(results[exp.name], out, header)) is not None]
    summary = {**header, **results, "plots": plots}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True, default=str), encoding="utf-8")
    lines = ["# fedadapt privacy", "", f"Command: `{header['command']}`", "",
             f"Data: {header['data']} ({header['users']} user records, pools of {header['pool_users']}); backbone "
             f"{header['backbone']}; arch {header['arch']}; {header['clients']} clients x {header['rounds']} rounds "
             f"per federated run; seed {header['seed']}. Seconds per experiment: "
             + ", ".join(f"{k} {v:.0f}" for k, v in header["seconds"].items()) + ".", ""]
    for exp in done:
        lines += [*exp.section(results[exp.name]), ""]
    lines += [f"Plots: {', '.join(Path(p).name for p in plots) or 'none'}."]
    (out / SUMMARY_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
