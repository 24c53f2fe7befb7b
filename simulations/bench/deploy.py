"""Deployment benchmarks: figures to report, not assertions (timings vary with load; say what the machine did).

    fedadapt bench deploy [--nodes 4] [--rounds 2] [--backbone tiny|minilm] [--out results/bench-deploy]

Runs the same federation twice, as `fedadapt simulate` and as `fedadapt deploy local` (TLS and node
authentication on), and reports per runtime: wall time per round, the ServerApp's own accounting of bytes per
round (metrics.jsonl bytes_up/down_total, Flower's serialized message sizes) and, for the deployment, what the
SuperLink reports (`flwr ls`: network traffic in/out per round, ClientApp compute seconds per message). It also
samples the summed RSS of one SuperNode's process tree (the SuperNode and the ClientApp processes it spawns)
every 0.2 s, and times the last-started SuperNode from its start until every node is online (`flwr supernode
ls`): what an edge box must hold and how long it takes to join.

Where deployment time goes: every message to a node spawns a ClientApp process (imports torch and the app, builds
the node's data and model) that lives for one message; `client_start_s` is that import alone, timed in a fresh
interpreter, and the cold-start rows (simulations/bench/cold_start.py) time a fresh process from spawn to its
first training batch on node 0's data, with an empty node cache and with the cache the first process left.

Both runtimes run the same run config, `eval-in-train` on (one message per node per round; the last round's
evaluation has its own messages), so the per-round ratio deployed / simulated compares like with like. Messages
per round are counted from the metrics lines: train messages, evaluate messages of rounds not folded, and the
registration queries; "s/message" is the round's wall time over them (both runtimes), and for the deployment
also the SuperLink's ClientApp compute seconds per message. A "steady round" has no registration queries and is not
the last (whose evaluation has messages of its own): what each round of a longer run costs; run 3 or more rounds to
have one (the first round also pays each runtime's warm-up). The nodes keep their caches in
RUN/deploy/nodes/*/state/client/cache across bench runs (RUN = out/deploy); the result says how many cache files were
there when the deployment started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common.names import METRICS_FILE
from deployment.local import Deployment, DeployOptions, deploy_local
from simulations.bench.federation import TreeRss
from simulations.runner.run import SimOptions, simulate

CONFIG = {"batch-size": 16, "lr": 5e-3, "min-segment-clients": 1, "eval-in-train": True}  # the smoke preset's


def client_import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what a ClientApp process imports before its first message."""
    code = "import time; t = time.monotonic(); import client.app; print(time.monotonic() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(Path(__file__).resolve().parents[2]))
    return float(out.stdout.strip().splitlines()[-1])


def _rounds(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    return [r for r in rows if r["round"] >= 1]


def messages_of(line: dict[str, Any]) -> int:
    """Messages a metrics line's round sent: train, evaluate (unless folded into the next round's train
    messages) and registration queries."""
    evaluations = 0 if line.get("eval_folded") else int(line.get("eval_clients", 0))
    return int(line.get("clients_sampled", 0)) + evaluations + int(line.get("registration_queries", 0))


def _row(runtime: str, run: Path, summary: dict[str, Any]) -> dict[str, Any]:
    lines = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    rounds = [r for r in lines if r["round"] >= 1]
    n = len(rounds)
    messages = sum(messages_of(r) for r in lines)
    # steady rounds: no registration queries, and not the last round (whose evaluation has its own messages):
    # what every round of a longer run costs; the first round also pays the runtime's warm-up
    steady = [r for r in rounds[:-1] if not r.get("registration_queries")] or rounds
    row = {"runtime": runtime, "round_wall_s": sum(r["wall_s"] for r in rounds) / n,
           "steady_round_s": sum(r["wall_s"] for r in steady) / len(steady), "steady_rounds": len(steady),
           "train_s": sum(r["train_s"] for r in rounds) / n,
           "messages_per_round": sum(messages_of(r) for r in rounds) / n,
           "s_per_message": sum(r["wall_s"] for r in rounds) / max(1, sum(messages_of(r) for r in rounds)),
           "app_bytes_up_per_round": sum(r["bytes_up_total"] for r in rounds) / n,
           "app_bytes_down_per_round": sum(r["bytes_down_total"] for r in rounds) / n,
           "wall_s_total": summary["wall_s_total"]}
    if runtime == "deployment":
        row.update({"runtime_in_per_round": (summary.get("runtime_inbound_bytes") or 0) / n,
                    "runtime_out_per_round": (summary.get("runtime_outbound_bytes") or 0) / n,
                    "clientapp_s_per_message": (summary.get("runtime_clientapp_seconds") or 0) / max(1, messages)})
    return row


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPUs this process may use, the CPU model, the load averages."""
    from common.device import cpu_model

    return {"cpus": len(os.sched_getaffinity(0)), "cpu_model": cpu_model(), "load_avg": list(os.getloadavg())}


def cache_files(folder: Path) -> int:
    """Cache files the nodes of the deployment run in `folder` (RUN/deploy/nodes/node-i/state) hold."""
    return sum(1 for _ in folder.glob("deploy/nodes/*/state/client/cache/*.safetensors"))


def bench_deploy(out: Path, nodes: int = 4, rounds: int = 2, backbone: str = "tiny", arch: str = "text",
                 cold_start: bool = True) -> dict[str, Any]:
    """Simulation and deployment of the same federation into out/sim and out/deploy; the figures above."""
    config = {**CONFIG, "arch": arch}
    common = {"clients": nodes, "rounds": rounds, "users": 160, "products": 300, "backbone": backbone,
              "quiet": True, "overwrite": True, "config": config}
    before = machine()
    sim_summary = simulate(SimOptions(out=out / "sim", **common))  # type: ignore[arg-type]
    warm_files = cache_files(out / "deploy")
    watch: dict[str, Any] = {}

    def on_started(dep: Deployment) -> None:
        watch["rss"] = TreeRss(dep.nodes[0].pid, interval=0.2).__enter__()
        watch["online_s"] = time.monotonic() - dep.started_at[max(dep.started_at)]  # the last node started

    dep_summary = deploy_local(DeployOptions(out=out / "deploy", **common), on_started=on_started)  # type: ignore[arg-type]
    watch["rss"].__exit__()
    rows = [_row("simulation", out / "sim", sim_summary), _row("deployment", out / "deploy", dep_summary)]
    result = {"rows": rows, "node_peak_rss_mb": watch["rss"].peak / 2**20, "nodes_online_s": watch["online_s"],
              "client_start_s": client_import_seconds(), "backbone": backbone or "minilm", "nodes": nodes,
              "arch": arch, "node_cache_files_at_start": warm_files,
              "round_ratio": rows[1]["round_wall_s"] / rows[0]["round_wall_s"],
              "steady_round_ratio": rows[1]["steady_round_s"] / rows[0]["steady_round_s"],
              "message_ratio": rows[1]["s_per_message"] / rows[0]["s_per_message"], "machine_before": before}
    if cold_start:
        from simulations.bench.cold_start import bench_cold_start

        result["cold_start"] = [bench_cold_start(out / "sim" / "data", out / "cold-start", a, backbone, nodes,
                                                 {k: v for k, v in CONFIG.items() if k != "eval-in-train"})
                                for a in ("seq", "text")]
    result["machine_after"] = machine()
    return result


def format_deploy(result: dict[str, Any]) -> str:
    """`bench_deploy`'s figures as Markdown tables and a few lines."""
    lines = ["| runtime | round s | steady round s | messages/round | s/message | train phase s | "
             "app bytes up/round | app bytes down/round | runtime in/round | runtime out/round | ClientApp s/message |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['runtime']} | {r['round_wall_s']:.1f} | {r['steady_round_s']:.1f} | "
                     f"{r['messages_per_round']:.1f} | "
                     f"{r['s_per_message']:.2f} | {r['train_s']:.1f} | "
                     f"{r['app_bytes_up_per_round']:.0f} | {r['app_bytes_down_per_round']:.0f} | "
                     f"{r.get('runtime_in_per_round', float('nan')):.0f} | "
                     f"{r.get('runtime_out_per_round', float('nan')):.0f} | "
                     f"{r.get('clientapp_s_per_message', float('nan')):.1f} |")
    lines.append(f"\nbackbone {result['backbone']}, {result['nodes']} nodes; one SuperNode + its ClientApp processes: "
                 f"peak RSS {result['node_peak_rss_mb']:.0f} MB; SuperNode start to online "
                 f"{result['nodes_online_s']:.1f} s; ClientApp import in a fresh "
                 f"process {result['client_start_s']:.1f} s")
    lines.append(f"deployed / simulated: round {result['round_ratio']:.2f}x, steady round "
                 f"{result['steady_round_ratio']:.2f}x ({result['rows'][1]['steady_rounds']} of them), "
                 f"per message {result['message_ratio']:.2f}x "
                 f"(arch {result['arch']}, eval-in-train; node cache files at the deployment's start: "
                 f"{result['node_cache_files_at_start']})")
    for when in ("machine_before", "machine_after"):
        m = result[when]
        lines.append(f"{when.replace('_', ' ')}: {m['cpus']} CPUs ({m['cpu_model']}), load average "
                     + " ".join(f"{x:.2f}" for x in m["load_avg"]))
    if "cold_start" in result:
        from simulations.bench.cold_start import format_cold_start

        lines.append("\nClientApp cold start, spawn to first training batch (node 0's data):\n")
        lines.append(format_cold_start(result["cold_start"]))
    return "\n".join(lines)
