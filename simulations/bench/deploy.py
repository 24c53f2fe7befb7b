"""Deployment benchmarks: figures to report, not assertions (timings vary with load; say what the machine did).

    fedadapt bench deploy [--nodes 4] [--rounds 2] [--backbone tiny|minilm] [--out results/bench-deploy]

Runs the same federation twice, as `fedadapt simulate` and as `fedadapt deploy local` (TLS and node
authentication on), and reports per runtime: wall time per round, the ServerApp's own accounting of bytes per
round (metrics.jsonl bytes_up/down_total, Flower's serialized message sizes) and, for the deployment, what the
SuperLink reports (`flwr ls`: network traffic in/out per round, ClientApp compute seconds per message). It also
samples the summed RSS of one SuperNode's process tree (the SuperNode and the ClientApp processes it spawns)
every 0.2 s, and times the last-started SuperNode from its start until every node is online (`flwr supernode
ls`): what an edge box must hold and how long it takes to join.

Where deployment time goes: every message to a node spawns a ClientApp process (imports torch, transformers and
the app, builds the node's data and model) that lives for one message; `client_start_s` is that import alone,
timed in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.names import METRICS_FILE
from deployment.local import Deployment, DeployOptions, deploy_local
from simulations.bench.federation import TreeRss
from simulations.runner.run import SimOptions, simulate

CONFIG = {"batch-size": 16, "lr": 5e-3, "min-segment-clients": 1}  # the smoke preset's


def client_import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what a ClientApp process imports before its first message."""
    code = "import time; t = time.monotonic(); import client.app; print(time.monotonic() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    return float(out.stdout.strip().splitlines()[-1])


def _rounds(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    return [r for r in rows if r["round"] >= 1]


def _row(runtime: str, run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    rounds = _rounds(run)
    n = len(rounds)
    row = {"runtime": runtime, "round_wall_s": sum(r["wall_s"] for r in rounds) / n,
           "train_s": sum(r["train_s"] for r in rounds) / n,
           "app_bytes_up_per_round": sum(r["bytes_up_total"] for r in rounds) / n,
           "app_bytes_down_per_round": sum(r["bytes_down_total"] for r in rounds) / n,
           "wall_s_total": summary["wall_s_total"]}
    if runtime == "deployment":
        messages = sum(r["clients_sampled"] + r.get("eval_clients", 0) for r in rounds)
        messages += summary.get("clients", 0) * 2  # round 0: one query and one evaluation per node
        row.update({"runtime_in_per_round": (summary.get("runtime_inbound_bytes") or 0) / n,
                    "runtime_out_per_round": (summary.get("runtime_outbound_bytes") or 0) / n,
                    "clientapp_s_per_message": (summary.get("runtime_clientapp_seconds") or 0) / max(1, messages)})
    return row


def bench_deploy(out: Path, nodes: int = 4, rounds: int = 2, backbone: str = "tiny") -> dict[str, Any]:
    """Simulation and deployment of the same federation into out/sim and out/deploy; the figures above."""
    common = {"clients": nodes, "rounds": rounds, "users": 160, "products": 300, "backbone": backbone,
              "quiet": True, "overwrite": True, "config": dict(CONFIG)}
    sim_summary = simulate(SimOptions(out=out / "sim", **common))  # type: ignore[arg-type]
    watch: dict[str, Any] = {}

    def on_started(dep: Deployment) -> None:
        watch["rss"] = TreeRss(dep.nodes[0].pid, interval=0.2).__enter__()
        watch["online_s"] = time.monotonic() - dep.started_at[max(dep.started_at)]  # the last node started

    dep_summary = deploy_local(DeployOptions(out=out / "deploy", **common), on_started=on_started)  # type: ignore[arg-type]
    watch["rss"].__exit__()
    return {"rows": [_row("simulation", out / "sim", sim_summary), _row("deployment", out / "deploy", dep_summary)],
            "node_peak_rss_mb": watch["rss"].peak / 2**20, "nodes_online_s": watch["online_s"],
            "client_start_s": client_import_seconds(), "backbone": backbone or "minilm", "nodes": nodes}


def format_deploy(result: dict[str, Any]) -> str:
    """`bench_deploy`'s figures as a Markdown table and three lines."""
    lines = ["| runtime | round s | train phase s | app bytes up/round | app bytes down/round | runtime in/round | "
             "runtime out/round | ClientApp s/message |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['runtime']} | {r['round_wall_s']:.1f} | {r['train_s']:.1f} | "
                     f"{r['app_bytes_up_per_round']:.0f} | {r['app_bytes_down_per_round']:.0f} | "
                     f"{r.get('runtime_in_per_round', float('nan')):.0f} | "
                     f"{r.get('runtime_out_per_round', float('nan')):.0f} | "
                     f"{r.get('clientapp_s_per_message', float('nan')):.1f} |")
    lines.append(f"\nbackbone {result['backbone']}, {result['nodes']} nodes; one SuperNode + its ClientApp processes: "
                 f"peak RSS {result['node_peak_rss_mb']:.0f} MB; SuperNode start to online "
                 f"{result['nodes_online_s']:.1f} s; ClientApp import in a fresh "
                 f"process {result['client_start_s']:.1f} s")
    return "\n".join(lines)
