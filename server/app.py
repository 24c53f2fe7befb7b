"""The ServerApp: a round loop over the adapter-bank strategy, with evaluation, metrics and checkpoints.

Flower's built-in `Strategy.start` sends every client the same arrays; here each client gets the global
adapter plus its own segment adapters, so the loop drives `grid.send_and_receive` itself and keeps the
strategy (server/strategy.py) free of Flower's grid. Per round it:

1. samples a cohort over the grid's node ids (deterministic in seed and round; with DP from OS entropy, so
   that who is sampled stays secret; server/clients.py; recorded in the checkpoint either way), registers
   the sampled nodes it does not know yet (one query each, once per run: server/registration.py), adds
   starting banks for segments it meets for the first time, sends train messages, validates and aggregates;
   with `secure-aggregation` segment | segment-hidden the training and aggregation are a secure round
   (server/secure.py: the server sees only per-bank sums; an aborted round applies nothing);
2. evaluates on a fixed cohort of clients (federated evaluation: test items never leave the clients; in a
   secure run the metrics come back only as cohort sums, server/secure_eval.py);
   a fresh run first evaluates the untrained adapters as "round 0", the no-adapter baseline;
3. appends one line to `<out-dir>/metrics.jsonl` and checkpoints atomically to `<out-dir>/checkpoints/`;
4. with DP on (common/privacy/), composes the round in the accountant (epsilon in the metrics line, its rounds in
   the checkpoint) and, with target-epsilon, stops BEFORE a round that would exceed it: run-complete.json then
   carries `stop_reason`.

No node is asked anything before it is first sampled, so the time before round 1 grows with the cohort, not
with the number of nodes. Each metrics line says how many query messages its round sent
(`registration_queries`) and the seconds they took (`registration_s`), how many nodes are registered so far
(`clients_registered`) and the run's registration rejections by reason (`registration_rejected_reasons`).

`resume=true` continues after the last complete checkpoint (cohorts replay as far as node ids allow, see
server/clients.py; DP cohorts are fresh draws, the finished rounds' cohorts stay in the checkpoint);
`stop-after-round=k` ends the run after round k (how tests and users simulate an interrupted server). At the
end `<out-dir>/run-complete.json` says the run really finished, because `flwr run` exits 0 even when the
ServerApp failed.
"""

from __future__ import annotations

import json
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.federation.records import message_bytes
from common.names import CHECKPOINTS_DIR, COMPLETE_FILE, GLOBAL, METRICS_FILE, STOPPED_FILE
from common.privacy.budget import PrivacyBudget
from common.protocol import FedConfig, RoundHParams
from common.secagg.layout import OFF, SEGMENT_HIDDEN
from server.aggregate import Arrays, split_banks
from server.checkpoint import Checkpoint, check_resumable, latest_complete_round, load_checkpoint, save_checkpoint
from server.clients import ClientInfo, cohort_size, sample_nodes
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.registration import Registry
from server.secure import SecureRound, SecureSettings, hidden_view
from server.secure_eval import SecureEvaluation
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig

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


def initial_banks(cfg: FedConfig, segments: list[str]) -> dict[str, Arrays]:
    """Identity-at-init adapter banks for global + every segment (seeded: same on every run)."""
    from common.federation.task import initial_state  # torch + backbone: imported only when a run starts

    names = [GLOBAL, *segments]
    empty: dict[str, Arrays] = {name: {} for name in names}
    return empty | split_banks(initial_state(cfg, names))


class FederatedRun:
    """One run of the ServerApp: optional resume, rounds (each registering the nodes it samples first), files."""

    def __init__(self, cfg: FedConfig, grid: Grid) -> None:
        if not cfg.out_dir:
            raise ValueError("run config out-dir is empty; the server needs a folder for metrics and checkpoints")
        self.cfg = cfg
        self.grid = grid
        self.out = Path(cfg.out_dir)
        self.ckpt_dir = self.out / CHECKPOINTS_DIR
        self.history: list[dict[str, Any]] = []
        self.optimizer = ServerOptimizer(OptimizerConfig(cfg.strategy, server_lr=cfg.effective_server_lr,
                                                         momentum=cfg.effective_server_momentum))
        self.validation = ValidationConfig(cfg.max_delta_norm, cfg.adapter_segment_keys, cfg.segment_key_tuple,
                                           cfg.max_client_examples)
        self.served: list[str] = []  # segments served after the last complete round (server/strategy.py)
        self.budget = PrivacyBudget(cfg.dp) if cfg.dp.enabled else None  # epsilon so far (common/privacy/)
        self.registry = Registry(self.validation, cfg.round_timeout)
        self.cohorts: dict[str, list[int]] = {}  # round -> its training cohort's partition ids (checkpointed)
        # eval-in-train: a round's result is evaluated inside the next round's train messages (one message per
        # node per round); `pending` is the round whose evaluation is still to come. Secure evaluation needs its
        # own secure round (server/secure_eval.py), so a secure run never folds.
        self.fold = cfg.eval_in_train and cfg.secure_aggregation == OFF and cfg.fraction_evaluate > 0
        self.pending: int | None = None

    def _restore(self) -> tuple[dict[str, Arrays], int]:
        """The banks to start from (segment banks are added as their segments are met) and the first round."""
        last = latest_complete_round(self.ckpt_dir) if self.cfg.resume else None
        if last is None:
            if self.cfg.resume:
                log(WARNING, "resume requested but no checkpoint under %s: starting fresh", self.ckpt_dir)
            return initial_banks(self.cfg, list(self.cfg.secagg_bank_tuple)), 1  # hidden: the public bank list
        ckpt = load_checkpoint(self.ckpt_dir, last)  # CheckpointError names a damaged file
        check_resumable(ckpt, self.cfg, self.ckpt_dir)  # another experiment must not continue this one's rounds
        self.history = list(ckpt.state.get("history", []))
        self.served = list(ckpt.state.get("served_segments", []))
        self.cohorts = {str(k): [int(p) for p in v] for k, v in ckpt.state.get("cohorts", {}).items()}
        self.optimizer.load_state(ckpt.optimizer_arrays, ckpt.state.get("optimizer_steps", {}))
        if self.budget is not None:  # epsilon continues from the rounds the checkpoint composed
            self.budget = PrivacyBudget(self.cfg.dp, ckpt.state.get("dp_rounds", []))
        log(INFO, "resuming after round %d from %s", last, self.ckpt_dir)
        return ckpt.banks, last + 1

    def _cohort(self, strategy: AdapterBankStrategy, fraction: float, rnd: int, salt: int = 0
                ) -> list[ClientInfo]:
        """The usable registered clients of the cohort drawn over the grid's current nodes; registers the
        sampled nodes met for the first time and gives their new segments starting banks (seeded by name,
        so a bank starts the same whenever its segment is first met)."""
        private = self.cfg.dp.enabled and salt == 0  # DP: a training cohort from OS entropy (server/clients.py)
        sampled = sample_nodes(self.grid.get_node_ids(), fraction, self.cfg.seed, rnd, salt, private=private)
        clients = self.registry.resolve(self.grid, sampled)
        if not clients and not self.registry.usable:
            raise RuntimeError(f"none of the {len(sampled)} sampled nodes sent a valid registration (rejected: "
                               f"{dict(self.registry.reasons)}); see the ClientApp log for the clients' errors")
        new = sorted({s for c in clients for s in c.segments} - set(strategy.banks))
        if new:
            strategy.banks.update({k: v for k, v in initial_banks(self.cfg, new).items() if k in new})
        return clients

    def _registration(self, queries_before: int, seconds_before: float) -> dict[str, Any]:
        return {"clients_registered": self.registry.usable,
                "registration_queries": self.registry.queries - queries_before,
                "registration_s": self.registry.seconds - seconds_before,
                "registration_rejected_reasons": dict(sorted(self.registry.reasons.items()))}

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
        nodes = wait_for_nodes(self.grid)
        log(INFO, "%d node(s) connected; each is registered when first sampled", len(nodes))
        banks, first = self._restore()
        strategy = AdapterBankStrategy(banks, self.optimizer, self.validation, cfg.min_segment_clients, self.served,
                                       dp=cfg.dp)
        if first == 1 and not self.history:
            line: dict[str, Any] = {"round": 0}
            if self.fold:
                line["wall_s"] = 0.0  # round 0 is evaluated in round 1's train messages
            elif cfg.fraction_evaluate > 0:
                line.update(self._initial_evaluation(strategy))
            line.update(self._registration(0, 0.0))
            self.history.append(line)
            # round 0 = the starting adapters: what `bench fed-vs-central --round 0` scores, and a resume point
            save_checkpoint(self.ckpt_dir, Checkpoint(0, strategy.banks, self._state(strategy), self._opt_arrays()))
        self._write_history()
        if self.fold and self.history and "eval_clients" not in self.history[-1]:
            self.pending = int(self.history[-1]["round"])
        for rnd in range(first, cfg.num_server_rounds + 1):
            event = self._dp_event(rnd) if self.budget is not None else (0, 0)
            reason = self.budget.stop_reason(*event) if self.budget is not None else None
            if reason:
                self._evaluate_pending(strategy)
                self._marker(COMPLETE_FILE, rnd - 1, t_start, self.registry.usable, stop_reason=reason)
                log(INFO, "[fedadapt] stopping before round %d: %s", rnd, reason)
                return
            self.history.append(self._round(strategy, rnd))
            if self.budget is not None:
                self.history[-1].update(self.budget.record(*event))
                log(INFO, "[fedadapt] round %d epsilon=%.3f (delta %g)", rnd, self.history[-1]["epsilon"], cfg.dp_delta)
            self._write_history()
            save_checkpoint(self.ckpt_dir, Checkpoint(rnd, strategy.banks, self._state(strategy),
                                                      self._opt_arrays()))
            if cfg.stop_after_round and rnd >= cfg.stop_after_round and rnd < cfg.num_server_rounds:
                self._marker(STOPPED_FILE, rnd, t_start, self.registry.usable)
                log(INFO, "stopping after round %d as configured (stop-after-round)", rnd)
                return
        self._marker(COMPLETE_FILE, cfg.num_server_rounds, t_start, self.registry.usable)

    def _evaluate(self, strategy: AdapterBankStrategy, rnd: int) -> dict[str, Any]:
        # the same evaluation cohort every round (while the nodes stay), so that rounds are comparable
        cohort = self._cohort(strategy, self.cfg.fraction_evaluate, 0, salt=1)
        if self.cfg.secure_aggregation == SEGMENT_HIDDEN:  # every served bank; each client picks its own
            cohort = hidden_view(cohort, strategy)
        if self.cfg.secure_aggregation != OFF:  # only cohort sums of the metrics (server/secure_eval.py)
            return SecureEvaluation(self.grid, self.cfg, self.cfg.round_timeout).evaluate(
                strategy, cohort, rnd, self.grid.run.run_id)
        replies = self.grid.send_and_receive(strategy.evaluate_messages(cohort, rnd), timeout=self.cfg.round_timeout)
        return strategy.pool_evaluation(replies, {c.node_id: c for c in cohort})

    def _evaluate_pending(self, strategy: AdapterBankStrategy) -> None:
        """Evaluate the round still waiting for its folded evaluation, with evaluate messages (the run ends)."""
        if self.pending is None:
            return
        rnd, self.pending = self.pending, None
        self._record_evaluation(rnd, self._evaluate(strategy, rnd))
        self._write_history()

    def _record_evaluation(self, rnd: int, evaluation: dict[str, Any]) -> None:
        """Put the evaluation of round `rnd`'s result into that round's metrics line."""
        for line in self.history:
            if line["round"] == rnd:
                line.update(evaluation)
                log(INFO, "[fedadapt] round %d evaluated: ndcg@10=%s hr@10=%s", rnd, _fmt(line.get("ndcg@10")),
                    _fmt(line.get("hr@10")))

    def _last_round(self, rnd: int) -> bool:
        cfg = self.cfg
        return rnd >= cfg.num_server_rounds or bool(cfg.stop_after_round and rnd >= cfg.stop_after_round)

    def _train_and_fold(self, strategy: AdapterBankStrategy, cohort: list[ClientInfo], hp: dict[str, Any],
                        rnd: int, stats: RoundStats) -> None:
        """One exchange: train messages (to the evaluation cohort's members: with the flag that folds the pending
        evaluation in) and evaluate messages only to evaluation-cohort nodes outside the training cohort."""
        cfg = self.cfg
        evaluating: list[ClientInfo] = []
        if self.pending is not None:
            evaluating = self._cohort(strategy, cfg.fraction_evaluate, 0, salt=1)
        asked = {c.node_id for c in evaluating}
        messages, sent = strategy.train_messages(cohort, hp, rnd, evaluate=asked)
        eval_only = [c for c in evaluating if c.node_id not in sent]
        stats.bytes_down = [message_bytes(m) for m in messages]
        others = strategy.evaluate_messages(eval_only, self.pending) if self.pending is not None else []
        replies = list(self.grid.send_and_receive(messages + others, timeout=cfg.round_timeout))
        apart = {c.node_id for c in eval_only}
        train_replies = [r for r in replies if r.metadata.src_node_id not in apart]
        folded = strategy.take_folded(train_replies, asked)
        strategy.aggregate_train(train_replies, sent, {c.node_id: c for c in cohort}, stats)
        if self.pending is not None:
            evaluation = strategy.pool_evaluation([r for r in replies if r.metadata.src_node_id in apart],
                                                  {c.node_id: c for c in evaluating}, folded)
            self._record_evaluation(self.pending, {**evaluation, "eval_folded": True})
            self.pending = None

    def _initial_evaluation(self, strategy: AdapterBankStrategy) -> dict[str, Any]:
        """Round 0: the untrained adapters (identity at init), i.e. the frozen backbone alone, on the same
        evaluation cohort: the no-adapter baseline of this very run."""
        t0 = time.monotonic()
        line = {**self._evaluate(strategy, 0), "wall_s": time.monotonic() - t0}
        log(INFO, "[fedadapt] round 0 (before training) ndcg@10=%s hr@10=%s", _fmt(line.get("ndcg@10")),
            _fmt(line.get("hr@10")))
        return line

    def _round(self, strategy: AdapterBankStrategy, rnd: int) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.monotonic()
        queries, seconds = self.registry.queries, self.registry.seconds
        stats = RoundStats()
        cohort = self._cohort(strategy, cfg.fraction_train, rnd)
        self.cohorts[str(rnd)] = sorted(c.partition_id for c in cohort)
        stats.sampled = len(cohort)
        hp = RoundHParams.from_run(cfg, rnd).to_config()
        secure: dict[str, Any] = {}
        if self.fold:
            self._train_and_fold(strategy, cohort, hp, rnd, stats)
        elif cfg.secure_aggregation == OFF:
            messages, sent = strategy.train_messages(cohort, hp, rnd)
            stats.bytes_down = [message_bytes(m) for m in messages]
            replies = list(self.grid.send_and_receive(messages, timeout=cfg.round_timeout))
            strategy.aggregate_train(replies, sent, {c.node_id: c for c in cohort}, stats)
        else:  # server/secure.py: the four SecAgg+ stages; an abort leaves every bank as it was
            secure = SecureRound(self.grid, SecureSettings.from_config(cfg), cfg.round_timeout,
                                 strategy.noise_rng).run(strategy, cohort, hp, rnd, self.grid.run.run_id, stats)
        t_train = time.monotonic() - t0
        evaluation: dict[str, Any] = {}
        if self.fold and not self._last_round(rnd):
            self.pending = rnd  # evaluated in the next round's train messages
        elif cfg.fraction_evaluate > 0:
            evaluation = self._evaluate(strategy, rnd)
        line = {"round": rnd, **evaluation, **stats.as_dict(), **secure, **self._registration(queries, seconds),
                "train_s": t_train, "wall_s": time.monotonic() - t0}
        log(INFO, "[fedadapt] round %d/%d ndcg@10=%s hr@10=%s loss=%.4f sampled=%d rejected=%d dropped=%d "
            "up=%.0fB down=%.0fB (%.1fs)", rnd, cfg.num_server_rounds, _fmt(line.get("ndcg@10")),
            _fmt(line.get("hr@10")), stats.train_loss, stats.sampled, stats.rejected, stats.dropped,
            line["bytes_up_per_client"], line["bytes_down_per_client"], line["wall_s"])
        return line

    def _dp_event(self, rnd: int) -> tuple[int, int]:
        """(population, cohort) of round `rnd` for the accountant: the grid's nodes and the size of the cohort
        drawn over them (server/clients.py, a fixed-size sample without replacement)."""
        nodes = self.grid.get_node_ids()
        return len(set(nodes)), cohort_size(len(set(nodes)), self.cfg.fraction_train)

    def _state(self, strategy: AdapterBankStrategy) -> dict[str, Any]:
        _, steps = self.optimizer.state()
        return {"seed": self.cfg.seed, "run_config": self.cfg.to_run_config(), "history": self.history,
                "optimizer_steps": steps, "served_segments": sorted(strategy.served), "cohorts": dict(self.cohorts),
                "dp_rounds": self.budget.state() if self.budget is not None else []}

    def _opt_arrays(self) -> Arrays:
        arrays, _ = self.optimizer.state()
        return arrays

    def _marker(self, name: str, rounds: int, t_start: float, n_clients: int, stop_reason: str = "") -> None:
        data: dict[str, Any] = {"rounds": rounds, "num_server_rounds": self.cfg.num_server_rounds,
                                "clients": n_clients, "server_wall_s": time.monotonic() - t_start}
        if stop_reason:  # ended early on purpose (the privacy budget): the runner reports it
            data["stop_reason"] = stop_reason
        tmp = self.out / (name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.out / name)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FedConfig.from_run_config(context.run_config)
    FederatedRun(cfg, grid).run()
