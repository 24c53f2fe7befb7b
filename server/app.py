"""The ServerApp: a round loop over the adapter-bank strategy, with evaluation, metrics and checkpoints.

Flower's built-in `Strategy.start` sends every client the same arrays; here each client gets the global
adapter plus its own segment adapters, so the loop drives `grid.send_and_receive` itself and keeps the
strategy (server/strategy.py) free of Flower's grid. Per round it:

1. samples a cohort (deterministic in seed and round), sends train messages, validates and aggregates;
2. evaluates on a fixed cohort of clients (federated evaluation: test items never leave the clients);
   a fresh run first evaluates the untrained adapters as "round 0", the no-adapter baseline;
3. appends one line to `<out-dir>/metrics.jsonl` and checkpoints atomically to `<out-dir>/checkpoints/`.

`resume=true` continues after the last complete checkpoint; `stop-after-round=k` ends the run after round
k (how tests and users simulate an interrupted server). At the end `<out-dir>/run-complete.json` says the
run really finished, because `flwr run` exits 0 even when the ServerApp failed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.federation.records import message_bytes
from common.names import CHECKPOINTS_DIR, COMPLETE_FILE, GLOBAL, METRICS_FILE, STOPPED_FILE
from common.protocol import CONFIG, FedConfig, RoundHParams
from server.aggregate import Arrays, split_banks
from server.checkpoint import Checkpoint, check_resumable, latest_complete_round, load_checkpoint, save_checkpoint
from server.clients import ClientInfo, sample_clients
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import Rejected, ValidationConfig, parse_registration, screen_senders

app = ServerApp()



def wait_for_nodes(grid: Grid, timeout: float = 120.0) -> list[int]:
    """Node ids once the count is non-zero and stable (simulation nodes register right at start-up)."""
    deadline = time.monotonic() + timeout
    previous: list[int] = []
    while time.monotonic() < deadline:
        nodes = sorted(grid.get_node_ids())
        if nodes and nodes == previous:
            return nodes
        previous = nodes
        time.sleep(1.0)
    if previous:
        return previous
    raise RuntimeError(f"no nodes connected within {timeout:.0f} s")


def register_clients(grid: Grid, timeout: float, validation: ValidationConfig
                     ) -> tuple[list[ClientInfo], Counter[str]]:
    """Ask every node for its partition id, segments and counts (see server/strategy.py for the privacy
    trade-off); returns the valid registrations and the rejected ones counted by reason."""
    nodes = wait_for_nodes(grid)
    messages = [Message(RecordDict({CONFIG: ConfigRecord({})}), n, MessageType.QUERY, group_id="register")
                for n in nodes]
    single, reasons, _ = screen_senders(grid.send_and_receive(messages, timeout=timeout), nodes)
    infos: list[ClientInfo] = []
    for node, msg in sorted(single.items()):
        if msg.has_error():
            log(WARNING, "node %d failed the registration query: %s", node, msg.error.reason)
            continue
        try:
            infos.append(parse_registration(msg, validation))
        except Rejected as exc:
            reasons[exc.reason] += 1
            log(WARNING, "node %d: registration rejected (%s)", node, exc)
    claimed = Counter(c.partition_id for c in infos)
    for pid in sorted(p for p, n in claimed.items() if n > 1):
        log(WARNING, "partition id %d claimed by %d nodes: all of them rejected", pid, claimed[pid])
        reasons["partition-id"] += claimed[pid]
    infos = [c for c in infos if claimed[c.partition_id] == 1]
    if not infos:
        raise RuntimeError(f"none of {len(nodes)} nodes sent a valid registration (rejected: {dict(reasons)}); "
                           "see the ClientApp log for the clients' errors")
    empty = [c.partition_id for c in infos if c.num_examples <= 0]
    if empty:
        log(WARNING, "partitions %s have no usable users and are left out of sampling", empty)
        infos = [c for c in infos if c.num_examples > 0]
        if not infos:
            raise RuntimeError("no client has any usable user")
    log(INFO, "registered %d/%d clients, %d segment(s)", len(infos), len(nodes),
        len({s for c in infos for s in c.segments}))
    return sorted(infos, key=lambda c: c.partition_id), reasons


def initial_banks(cfg: FedConfig, segments: list[str]) -> dict[str, Arrays]:
    """Identity-at-init adapter banks for global + every segment (seeded: same on every run)."""
    from common.federation.task import initial_state  # torch + backbone: imported only when a run starts

    names = [GLOBAL, *segments]
    empty: dict[str, Arrays] = {name: {} for name in names}
    return empty | split_banks(initial_state(cfg, names))


class FederatedRun:
    """One run of the ServerApp: registration, optional resume, rounds, files."""

    def __init__(self, cfg: FedConfig, grid: Grid) -> None:
        if not cfg.out_dir:
            raise ValueError("run config out-dir is empty; the server needs a folder for metrics and checkpoints")
        self.cfg = cfg
        self.grid = grid
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / CHECKPOINTS_DIR
        self.history: list[dict[str, Any]] = []
        self.optimizer = ServerOptimizer(OptimizerConfig(cfg.strategy, server_lr=cfg.effective_server_lr))
        self.validation = ValidationConfig(cfg.max_delta_norm, cfg.adapter_segment_keys, cfg.segment_key_tuple,
                                           cfg.max_client_examples)
        self.served: list[str] = []  # segments served after the last complete round (server/strategy.py)

    def _restore(self, clients: list[ClientInfo]) -> tuple[dict[str, Arrays], int]:
        segments = sorted({s for c in clients for s in c.segments})
        last = latest_complete_round(self.ckpt_dir) if self.cfg.resume else None
        if last is None:
            if self.cfg.resume:
                log(WARNING, "resume requested but no checkpoint under %s: starting fresh", self.ckpt_dir)
            return initial_banks(self.cfg, segments), 1
        ckpt = load_checkpoint(self.ckpt_dir, last)  # CheckpointError names a damaged file
        check_resumable(ckpt, self.cfg, self.ckpt_dir)  # another experiment must not continue this one's rounds
        self.history = list(ckpt.state.get("history", []))
        self.served = list(ckpt.state.get("served_segments", []))
        self.optimizer.load_state(ckpt.optimizer_arrays, ckpt.state.get("optimizer_steps", {}))
        missing = sorted(set(segments) - set(ckpt.banks))
        banks = ckpt.banks
        if missing:
            log(WARNING, "segments %s have no bank in the checkpoint: starting them fresh", missing)
            banks.update({k: v for k, v in initial_banks(self.cfg, missing).items() if k in missing})
        log(INFO, "resuming after round %d from %s", last, self.ckpt_dir)
        return banks, last + 1

    def _write_history(self) -> None:
        tmp = self.out / (METRICS_FILE + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for line in self.history:
                fh.write(json.dumps(line) + "\n")
        tmp.replace(self.out / METRICS_FILE)

    def run(self) -> None:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        for marker in (COMPLETE_FILE, STOPPED_FILE):
            (self.out / marker).unlink(missing_ok=True)
        t_start = time.monotonic()
        clients, rejected = register_clients(self.grid, cfg.round_timeout, self.validation)
        banks, first = self._restore(clients)
        strategy = AdapterBankStrategy(banks, self.optimizer, self.validation, cfg.min_segment_clients, self.served)
        if first == 1 and not self.history:
            line: dict[str, Any] = {"round": 0, "clients_registered": len(clients),
                                    "registration_rejected_reasons": dict(sorted(rejected.items()))}
            if cfg.fraction_evaluate > 0:
                line.update(self._initial_evaluation(strategy, clients))
            self.history.append(line)
            # round 0 = the starting adapters: what `bench fed-vs-central --round 0` scores, and a resume point
            save_checkpoint(self.ckpt_dir, Checkpoint(0, strategy.banks, self._state(strategy), self._opt_arrays()))
        self._write_history()
        for rnd in range(first, cfg.num_server_rounds + 1):
            self.history.append(self._round(strategy, clients, rnd))
            self._write_history()
            save_checkpoint(self.ckpt_dir, Checkpoint(rnd, strategy.banks, self._state(strategy),
                                                      self._opt_arrays()))
            if cfg.stop_after_round and rnd >= cfg.stop_after_round and rnd < cfg.num_server_rounds:
                self._marker(STOPPED_FILE, rnd, t_start, len(clients))
                log(INFO, "stopping after round %d as configured (stop-after-round)", rnd)
                return
        self._marker(COMPLETE_FILE, cfg.num_server_rounds, t_start, len(clients))

    def _evaluate(self, strategy: AdapterBankStrategy, clients: list[ClientInfo], rnd: int) -> dict[str, Any]:
        # the same evaluation cohort every round, so that rounds are comparable
        cohort = sample_clients(clients, self.cfg.fraction_evaluate, self.cfg.seed, 0, salt=1)
        replies = self.grid.send_and_receive(strategy.evaluate_messages(cohort, rnd), timeout=self.cfg.round_timeout)
        return strategy.pool_evaluation(replies, {c.node_id: c for c in cohort})

    def _initial_evaluation(self, strategy: AdapterBankStrategy, clients: list[ClientInfo]) -> dict[str, Any]:
        """Round 0: the untrained adapters (identity at init), i.e. the frozen backbone alone, on the same
        evaluation cohort: the no-adapter baseline of this very run."""
        t0 = time.monotonic()
        line = {**self._evaluate(strategy, clients, 0), "wall_s": time.monotonic() - t0}
        log(INFO, "[fedadapt] round 0 (before training) ndcg@10=%s hr@10=%s", _fmt(line.get("ndcg@10")),
            _fmt(line.get("hr@10")))
        return line

    def _round(self, strategy: AdapterBankStrategy, clients: list[ClientInfo], rnd: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.monotonic()
        stats = RoundStats()
        cohort = sample_clients(clients, cfg.fraction_train, cfg.seed, rnd)
        stats.sampled = len(cohort)
        hp = RoundHParams.from_run(cfg, rnd).to_config()
        messages, sent = strategy.train_messages(cohort, hp, rnd)
        stats.bytes_down = [message_bytes(m) for m in messages]
        replies = list(self.grid.send_and_receive(messages, timeout=cfg.round_timeout))
        strategy.aggregate_train(replies, sent, {c.node_id: c for c in cohort}, stats)
        t_train = time.monotonic() - t0
        evaluation: dict[str, Any] = {}
        if cfg.fraction_evaluate > 0:
            evaluation = self._evaluate(strategy, clients, rnd)
        line = {"round": rnd, **evaluation, **stats.as_dict(), "train_s": t_train, "wall_s": time.monotonic() - t0}
        log(INFO, "[fedadapt] round %d/%d ndcg@10=%s hr@10=%s loss=%.4f sampled=%d rejected=%d dropped=%d "
            "up=%.0fB down=%.0fB (%.1fs)", rnd, cfg.num_server_rounds, _fmt(line.get("ndcg@10")),
            _fmt(line.get("hr@10")), stats.train_loss, stats.sampled, stats.rejected, stats.dropped,
            line["bytes_up_per_client"], line["bytes_down_per_client"], line["wall_s"])
        return line

    def _state(self, strategy: AdapterBankStrategy) -> dict[str, Any]:
        _, steps = self.optimizer.state()
        return {"seed": self.cfg.seed, "run_config": self.cfg.to_run_config(), "history": self.history,
                "optimizer_steps": steps, "served_segments": sorted(strategy.served)}

    def _opt_arrays(self) -> Arrays:
        arrays, _ = self.optimizer.state()
        return arrays

    def _marker(self, name: str, rounds: int, t_start: float, n_clients: int) -> None:
        data = {"rounds": rounds, "num_server_rounds": self.cfg.num_server_rounds, "clients": n_clients,
                "server_wall_s": time.monotonic() - t_start}
        tmp = self.out / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.out / name)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FedConfig.from_run_config(context.run_config)
    FederatedRun(cfg, grid).run()
