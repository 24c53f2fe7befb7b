"""`fedadapt bench secagg`: what secure aggregation costs per round, in time and bytes per client.

For each cohort size and mode (off = the plain round, segment, segment-hidden) it runs one real round of the
server code (server/strategy.py, or server/secure.py's four stages) against real client handlers
(client/secure.py) over the in-process Grid (simulations/runner/inprocess_grid.py: every message serialized as on the
wire, one process, no SuperLink). Training is replaced by a fixed synthetic delta, so the figures are the
protocol's own cost: with 2 cores a MiniLM client update takes seconds (README), which is added in every mode.

Banks: global + `regions` region banks + `seasons` season banks; client i holds region i mod R and season i
mod S. Bank shapes are the real ones of the chosen arch (text: LoRA on the backbone; seq: the sequential
model's banks for a catalog of `seq_items` items). Reported per row: round wall seconds (all clients and the
server, serially in this one process), mean client compute seconds, server seconds (the rest), and mean bytes
up / down per client (Flower's serialized size of every message of the round).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.names import ARCHS, GLOBAL
from simulations.bench.federation import ML1M_ITEMS

OFF = "off"


@dataclass(frozen=True)
class SecAggBenchOptions:
    clients: tuple[int, ...] = (10, 50, 100)
    modes: tuple[str, ...] = ("off", "segment", "segment-hidden")
    arch: str = "text"
    backbone: str = "tiny"
    regions: int = 4
    seasons: int = 4
    seq_items: int = ML1M_ITEMS
    degree: int = 0

    def __post_init__(self) -> None:
        from common.secagg.layout import SECURE_MODES

        if not self.clients or min(self.clients) < 3:
            raise ValueError(f"--clients must list cohort sizes >= 3, got {list(self.clients)}")
        bad = [m for m in self.modes if m not in SECURE_MODES]
        if bad or not self.modes:
            raise ValueError(f"--modes must be among {', '.join(SECURE_MODES)}, got {list(self.modes)}")
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.regions < 1 or self.seasons < 1:
            raise ValueError("--regions and --seasons must be >= 1")


def bank_names(regions: int, seasons: int) -> list[str]:
    return [GLOBAL, *(f"region=r{i}" for i in range(regions)), *(f"season=s{i}" for i in range(seasons))]


def starting_banks(opts: SecAggBenchOptions) -> dict[str, np.ndarray]:
    """The real bank shapes of the arch, filled with small random values (identical zero tensors would be
    deduplicated by Flower's object store and understate the bytes)."""
    from common.federation.task import initial_state
    from common.protocol import FedConfig
    from simulations.bench.federation import seq_state

    names = bank_names(opts.regions, opts.seasons)
    # Arch branch kept: seq's bank shapes depend on a catalog size this bench sets (--seq-items) without any
    # data folder, which the arch interface (built from a run's data) does not take.
    if opts.arch == "seq":
        state = seq_state(opts.backbone, names, opts.seq_items, 64, 200)
    else:
        state = initial_state(FedConfig(backbone=opts.backbone), names)
    rng = np.random.default_rng(0)
    return {k: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in state.items()}


class Timed:
    """Wraps client handlers and adds up the time spent in them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.seconds += time.perf_counter() - t0

        return wrapped


def measure(mode: str, n: int, state: dict[str, np.ndarray], opts: SecAggBenchOptions) -> dict[str, Any]:
    """One round of `mode` with `n` clients; the row of the table."""
    from flwr.app import Context, Message, MetricRecord, MetricRecordValues, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.supercore.task_identity import TaskIdentity

    from client import secure as client_secure
    from common.federation.records import to_record
    from common.names import bank_of
    from common.protocol import ARRAYS, METRICS, NUM_EXAMPLES, TRAIN_LOSS, FedConfig, RoundHParams, bank_examples_key
    from server.aggregate import split_banks
    from server.clients import ClientInfo
    from server.optimizer import OptimizerConfig, ServerOptimizer
    from server.secure import SecureRound, SecureSettings
    from server.strategy import AdapterBankStrategy, RoundStats
    from server.validate import ValidationConfig
    from simulations.runner.inprocess_grid import InProcessGrid

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    names = bank_names(opts.regions, opts.seasons)
    own = {i: (GLOBAL, names[1 + i % opts.regions], names[1 + opts.regions + i % opts.seasons])
           for i in range(1, n + 1)}
    cfg = FedConfig(secure_aggregation=mode, secagg_degree=opts.degree, min_segment_clients=2,
                    arch=opts.arch, backbone=opts.backbone)

    def synthetic(sent: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        rng = np.random.default_rng(len(sent))
        return ({k: (1e-3 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in sent.items()},
                {b: 20 for b in {bank_of(k) for k in sent}})

    timer = Timed()
    app = ClientApp()

    @app.train()
    @timer
    def train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        if mode != OFF:
            return client_secure.train_and_advertise(msg, context, cfg, own[node],
                                                     lambda sent, hp: synthetic(sent))
        delta, counts = synthetic({k: v.numpy() for k, v in msg.content.array_records[ARRAYS].items()})
        metrics: dict[str, MetricRecordValues] = {NUM_EXAMPLES: counts[GLOBAL], TRAIN_LOSS: 1.0,
                   **{bank_examples_key(b): c for b, c in counts.items()}}
        return Message(RecordDict({ARRAYS: to_record(delta), METRICS: MetricRecord(metrics)}), reply_to=msg)

    @app.query()
    @timer
    def query(msg: Message, context: Context) -> Message:
        return client_secure.answer_stage(msg, context, cfg)

    grid = InProcessGrid(app, {i: {} for i in own}, cfg.to_run_config())
    strategy = AdapterBankStrategy({b: dict(v) for b, v in split_banks(state).items()},
                                   ServerOptimizer(OptimizerConfig("fedavg", 1.0)), ValidationConfig(max_norm=1e9),
                                   cfg.min_segment_clients)
    visible = mode != "segment-hidden"
    cohort = [ClientInfo(i, i, own[i][1:] if visible else (), {b: 100 for b in own[i]}) for i in own]
    stats = RoundStats()
    hp = RoundHParams.from_run(cfg, 1).to_config()
    t0 = time.perf_counter()
    if mode == OFF:
        from common.federation.records import message_bytes

        messages, sent = strategy.train_messages(cohort, hp, 1)
        stats.bytes_down = [message_bytes(m) for m in messages]
        strategy.aggregate_train(list(grid.send_and_receive(messages)), sent, {c.node_id: c for c in cohort}, stats)
        aborted = ""
    else:
        info = SecureRound(grid, SecureSettings.from_config(cfg), 600.0, np.random.default_rng(0)).run(
            strategy, cohort, hp, 1, 1, stats)
        aborted = str(info["secagg_aborted"])
    wall = time.perf_counter() - t0
    if aborted or stats.replied < n:
        raise RuntimeError(f"{mode} with {n} clients did not complete: {aborted or stats.as_dict()}")
    return {"mode": mode, "clients": n, "arch": opts.arch, "round_s": wall, "client_s_mean": timer.seconds / n,
            "server_s": wall - timer.seconds, "bytes_up_per_client": float(np.mean(stats.bytes_up)),
            "bytes_down_per_client": float(np.mean(stats.bytes_down))}


def bench_secagg(opts: SecAggBenchOptions) -> list[dict[str, Any]]:
    state = starting_banks(opts)
    return [measure(mode, n, state, opts) for n in opts.clients for mode in opts.modes]


def format_secagg(rows: list[dict[str, Any]]) -> str:
    lines = ["| arch | clients | mode | round s | client s (mean) | server s | up B/client | down B/client |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['clients']} | {r['mode']} | {r['round_s']:.2f} | {r['client_s_mean']:.3f} "
                     f"| {r['server_s']:.2f} | {r['bytes_up_per_client']:,.0f} | {r['bytes_down_per_client']:,.0f} |")
    return "\n".join(lines)
