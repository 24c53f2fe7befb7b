"""Federation benchmarks: figures to report, not assertions (timings and memory vary by machine and load).

    fedadapt bench bytes [--backbone minilm|tiny] [--kinds lora,bottleneck,seq] [--seq-items N] [--seq-dim D]
    fedadapt bench fed-demo [--out results/bench-demo]
    fedadapt bench scale [--clients 10,1000] [--out results/bench-scale]

bytes: serialized size of a train message (down) and its reply (up) for one client holding global + one
       region + one season adapter, measured with Flower's own serialization, against the backbone's fp32
       size (what full fine-tuning would ship each way). Kind "seq" is arch=seq's banks, whose size grows
       with the catalog: measured for `seq_items` items (default MovieLens-1M's 3,883).
fed-demo: runs the demo preset and prints wall time per round and client updates per minute.
scale: runs the same tiny federation (max(4000, 12 max N) synthetic users) with N virtual clients (10% sampled per
       round, 10% evaluated) and samples the summed RSS of the SuperLink's whole process tree (SuperLink,
       simulation runtime, Ray workers) every 0.5 s. "s before round 1" is the run's wall time minus its
       rounds' own wall time: start-up, registration of the round-0 evaluation cohort, round 0's evaluation
       and shutdown; "registration queries" counts the query messages of the whole run (one per node the
       server sampled, server/registration.py); "registration s up to round 1's training" is the time those
       queries took for round 0's evaluation cohort and round 1's training cohort.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from common.names import GLOBAL, METRICS_FILE
from simulations.runner.flower import SuperLink

MINILM_FP32_BYTES = 22_713_216 * 4
ML1M_ITEMS = 3_883  # MovieLens-1M's catalog: the default catalog size of the seq row
USERS_PER_CLIENT = 12  # scale: 4 per client left nothing after k=5 anonymity; 12 keeps every sampled shard
SEQ_KIND = "seq"  # in `kinds`: arch=seq's banks instead of an adapter kind


def seq_state(backbone: str, names: list[str], items: int, dim: int, max_len: int) -> dict[str, np.ndarray]:
    """arch=seq's starting banks `names` for a catalog of `items` items (bank shapes need no real texts)."""
    import torch

    from common.federation import seq_task
    from common.federation.task import backbone_for
    from common.protocol import FedConfig

    cfg = FedConfig(backbone=backbone, arch=SEQ_KIND, seq_dim=dim, seq_max_len=max_len)
    texts = {f"item-{j:06d}": "" for j in range(items)}
    model = seq_task.new_model(cfg, texts, torch.zeros(items, backbone_for(backbone).hidden_size), names)
    return seq_task.arrays(model, names)


def bench_bytes(backbone: str, kinds: list[str], seq_items: int = ML1M_ITEMS, seq_dim: int = 64,
                seq_max_len: int = 200) -> list[dict[str, Any]]:
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from common.federation.records import message_bytes, to_record
    from common.federation.task import backbone_for, initial_state
    from common.protocol import FedConfig

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    names = [GLOBAL, "region=Europe", "season=holiday"]
    full = sum(p.numel() * p.element_size() for p in backbone_for(backbone).model.parameters())
    rows = []
    rng = np.random.default_rng(0)
    for kind in kinds:
        if kind == SEQ_KIND:
            state = seq_state(backbone, names, seq_items, seq_dim, seq_max_len)
        else:
            state = initial_state(FedConfig(backbone=backbone, adapter_kind=kind), names)
        # random values: identical zero tensors would be deduplicated by Flower's object store
        state = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in state.items()}
        down = Message(RecordDict({"arrays": to_record(state), "config": ConfigRecord({"lr": 1e-3})}), 1, "train")
        up = Message(RecordDict({"arrays": to_record(state), "metrics": MetricRecord({"num-examples": 10})}),
                     reply_to=down)
        params = int(sum(v.size for v in state.values()))
        label = f"{kind} ({seq_items} items, dim {seq_dim})" if kind == SEQ_KIND else kind
        rows.append({"kind": label, "adapter_params": params, "down_bytes": message_bytes(down),
                     "up_bytes": message_bytes(up), "backbone_fp32_bytes": full,
                     "ratio_vs_backbone": message_bytes(up) / full})
    return rows


ROLES = (("flower-superlink", "superlink"), ("flwr-serverapp", "serverapp"), ("flwr-simulation", "simulation"),
         ("ray::", "ray-workers"), ("raylet", "ray-system"), ("gcs_server", "ray-system"), ("ray/", "ray-system"))


def process_role(cmdline: list[str]) -> str:
    """Which part of a simulation a process is, from its command line ("other" when none matches)."""
    text = " ".join(cmdline)
    return next((role for marker, role in ROLES if marker in text), "other")


class TreeRss:
    """Samples the summed RSS of a process and all its descendants in a background thread; also the peak of each
    role's sum (SuperLink, ServerApp, simulation runtime, Ray workers, Ray's own processes), to say what grows."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_by_role: dict[str, int] = {}
        self.processes_by_role: dict[str, int] = {}  # the most processes of each role seen at once
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            roles: dict[str, int] = {}
            counts: dict[str, int] = {}
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    try:
                        rss = proc.memory_info().rss
                        role = process_role(proc.cmdline())
                    except psutil.Error:
                        continue
                    total += rss
                    roles[role] = roles.get(role, 0) + rss
                    counts[role] = counts.get(role, 0) + 1
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            for role, rss in roles.items():
                self.peak_by_role[role] = max(self.peak_by_role.get(role, 0), rss)
                self.processes_by_role[role] = max(self.processes_by_role.get(role, 0), counts[role])
            time.sleep(self.interval)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def bench_scale(clients: list[int], out: Path, rounds: int = 2) -> list[dict[str, Any]]:
    from common.data.schema import write_marketplace
    from common.data.synthetic import generate_marketplace
    from simulations.runner.run import SimOptions, simulate

    # one data set for every N (memory compares like with like); a shard must keep users after k-anonymity
    users = max(4000, USERS_PER_CLIENT * max(clients))
    data = out / f"data-{users}"
    if not (data / ".complete").is_file():
        write_marketplace(generate_marketplace(users, 300, seed=0), data)
        (data / ".complete").write_text("ok\n")
    rows = []
    for n in clients:
        run_dir = out / f"clients-{n}"
        opts = SimOptions(out=run_dir, data=data, clients=n, rounds=rounds, backbone="tiny", fraction=0.1,
                          flwr_home=out / f"flwr-{n}", quiet=True, overwrite=True,
                          config={"fraction-evaluate": 0.1, "min-segment-clients": 1})
        watchers: list[TreeRss] = []

        def watch(link: SuperLink, into: list[TreeRss] = watchers) -> None:
            assert link.process is not None
            into.append(TreeRss(link.process.pid).__enter__())

        t0 = time.monotonic()
        try:
            summary = simulate(opts, on_superlink=watch)
        finally:
            for w in watchers:
                w.__exit__()
        wall = time.monotonic() - t0
        lines = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
        rounds_s = sum(line["wall_s"] for line in lines if line["round"] >= 1)
        before = [line for line in lines if line["round"] == 0] + [line for line in lines if line["round"] == 1]
        rows.append({"clients": n, "sampled_per_round": summary["clients_sampled_total"] / rounds,
                     "peak_rss_mb": watchers[0].peak / 2**20, "wall_s": wall,
                     "peak_rss_mb_by_role": {k: round(v / 2**20) for k, v in sorted(watchers[0].peak_by_role.items())},
                     "processes_by_role": dict(sorted(watchers[0].processes_by_role.items())),
                     "round_wall_s_mean": summary["round_wall_s_mean"], "before_round_1_s": wall - rounds_s,
                     "registration_queries": sum(line.get("registration_queries", 0) for line in lines),
                     "registration_s_to_round_1": sum(line.get("registration_s", 0.0) for line in before)})
    return rows


def format_bytes(rows: list[dict[str, Any]]) -> str:
    """`bench_bytes` rows as a Markdown table."""
    lines = ["| kind | adapter params | down B | up B | backbone fp32 B | up / backbone |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['adapter_params']} | {r['down_bytes']} | {r['up_bytes']} | "
                     f"{r['backbone_fp32_bytes']} | {r['ratio_vs_backbone']:.4f} |")
    return "\n".join(lines)


def format_scale(rows: list[dict[str, Any]]) -> str:
    """`bench_scale` rows as a Markdown table."""
    lines = ["| virtual clients | sampled/round | registration queries | peak RSS (MB, whole tree) | "
             "s before round 1 | registration s up to round 1's training | round s | total s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['sampled_per_round']:.0f} | {r['registration_queries']} | "
                     f"{r['peak_rss_mb']:.0f} | {r['before_round_1_s']:.0f} | {r['registration_s_to_round_1']:.1f} | "
                     f"{r['round_wall_s_mean']:.1f} | {r['wall_s']:.0f} |")
    lines.append("\npeak RSS by role (MB, each role's own peak): " + "; ".join(
        f"{r['clients']} clients: " + ", ".join(f"{k} {v} ({r['processes_by_role'].get(k, 0)} proc)"
                                               for k, v in r["peak_rss_mb_by_role"].items())
        for r in rows))
    return "\n".join(lines)


DEMO_FIGURES = ("rounds", "round_wall_s_mean", "client_updates", "client_updates_per_minute",
                "bytes_up_per_client_round", "bytes_down_per_client_round", "final")


def bench_demo(out: Path) -> dict[str, Any]:
    """Run the demo preset into `out`; the figures of its summary this benchmark reports (DEMO_FIGURES)."""
    from simulations.runner.run import PRESETS, SimOptions, simulate

    p = PRESETS["demo"]
    summary = simulate(SimOptions(out=out, clients=p["clients"], rounds=p["rounds"],
                                  users=p["users"], products=p["products"], backbone=p["backbone"],
                                  fraction=p["fraction"], overwrite=True, config=dict(p["config"])))
    return {k: summary[k] for k in DEMO_FIGURES}
