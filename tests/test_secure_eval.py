"""Issue 23, leak 6: in a secure run evaluation metrics reach the server only as sums over the evaluation cohort.

The attack: a curious server sends one client a perturbed segment bank and watches that client's evaluation.
Before the fix every client replied with its own sums in the clear, and in segment-hidden mode it evaluated with
its own banks only, so the perturbed client's metrics moved exactly when it held the segment: the server read
one client's quality and its segment. Now evaluation is a SecAgg+ round of its own (server/secure_eval.py,
client/secure_eval.py): replies carry keys, ciphertexts and masked ring vectors, and the server learns one sum
per row over at least max(2, min-segment-clients) clients.

server/secure_eval.py against client/secure_eval.py + client/secure.py over the in-process grid (every message
serialized), with a stand-in evaluator whose metrics depend on the banks a client evaluates.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import secure as client_secure
from client import secure_eval
from common.names import GLOBAL, OVERALL, bank_of
from common.protocol import EVAL_METRICS, EVAL_USERS, METRICS, FedConfig, metric_key
from common.secagg.evaluation import eval_fixed_point
from common.secagg.layout import SEGMENT, SEGMENT_HIDDEN
from server.clients import ClientInfo
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.secure import hidden_view
from server.secure_eval import SecureEvaluation
from server.strategy import AdapterBankStrategy, pool_evaluation
from server.validate import ValidationConfig
from simulations.runner.inprocess_grid import InProcessGrid
from tests.fed_fakes import set_task_identity

EU, NA = "region=EU", "region=NA"
SEGMENTS = {1: EU, 2: NA, 3: EU, 4: NA, 5: EU}
BANKS = {GLOBAL: {"global::w": np.zeros(3, np.float32)}, EU: {f"{EU}::w": np.zeros(3, np.float32)},
         NA: {f"{NA}::w": np.zeros(3, np.float32)}}
TARGET = 1  # the client whose bank the server perturbs


def _sums(node: int, banks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """A client's evaluation sums: its users all in its segment; quality rises with its banks' mean."""
    users = float(10 + node)
    level = float(np.clip(0.3 + 0.02 * node + sum(float(np.mean(v)) for v in banks.values()), 0.0, 1.0))
    out = {EVAL_USERS: users}
    for seg in (OVERALL, SEGMENTS[node]):
        out[metric_key(seg, "users")] = users
        out.update({metric_key(seg, m): level * users for m in EVAL_METRICS})
    return out


def _app(cfg: FedConfig) -> ClientApp:
    app = ClientApp()

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        return secure_eval.evaluate_and_advertise(msg, context, cfg, {GLOBAL, SEGMENTS[node]}, [SEGMENTS[node]],
                                                  lambda banks: _sums(node, banks))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_secure.answer_stage(msg, context, cfg)

    return app


class Curious(AdapterBankStrategy):
    """A server that sends TARGET a perturbed EU bank (everyone else the true one)."""

    def payload(self, client: ClientInfo, served_only: bool = False) -> dict[str, np.ndarray]:
        out = super().payload(client, served_only)
        if client.node_id == TARGET:
            out = {k: (v + 0.5 if bank_of(k) == EU else v) for k, v in out.items()}
        return out


def _evaluate(mode: str, nodes: list[int], strategy_cls: type[AdapterBankStrategy] = AdapterBankStrategy,
              min_segment_clients: int = 2) -> tuple[dict[str, object], list[Message]]:
    set_task_identity()
    cfg = FedConfig(secure_aggregation=mode, min_segment_clients=min_segment_clients)
    replies: list[Message] = []

    def keep(msg: Message, reply: Message) -> list[Message]:
        replies.append(reply)
        return [reply]

    grid = InProcessGrid(_app(cfg), {n: {} for n in nodes}, cfg.to_run_config(), intercept=keep)
    strategy = strategy_cls(copy.deepcopy(BANKS), ServerOptimizer(OptimizerConfig("fedavg", 1.0)), ValidationConfig(),
                            min_segment_clients, served=(EU, NA))
    cohort = [ClientInfo(n, n, (SEGMENTS[n],) if mode == SEGMENT else (), {GLOBAL: 1}, 10 + n) for n in nodes]
    if mode == SEGMENT_HIDDEN:
        cohort = hidden_view(cohort, strategy)
    return SecureEvaluation(grid, cfg, 60.0).evaluate(strategy, cohort, 1, 1), replies


def _own(node: int, perturbed: bool) -> dict[str, np.ndarray]:
    banks = {**BANKS[GLOBAL], **BANKS[SEGMENTS[node]]}
    return {k: (v + 0.5 if perturbed and bank_of(k) == EU else v) for k, v in banks.items()}


def test_old_clear_replies_told_the_server_a_clients_segment() -> None:
    """Before: hidden-mode clients replied with their own overall sums, evaluated on their own banks; the
    target's reply moved with the perturbed EU bank, so the server learned that it holds EU (and its quality)."""
    plain = _sums(TARGET, _own(TARGET, perturbed=False))
    perturbed = _sums(TARGET, _own(TARGET, perturbed=True))
    assert perturbed[metric_key(OVERALL, "ndcg@10")] != plain[metric_key(OVERALL, "ndcg@10")]


def test_a_curious_server_learns_only_the_cohort_sum_in_hidden_mode() -> None:
    nodes = sorted(SEGMENTS)
    result, replies = _evaluate(SEGMENT_HIDDEN, nodes, Curious)
    target = _sums(TARGET, _own(TARGET, perturbed=True))
    # what the server received: no metrics record, no number equal to the target's sums, masked vectors only
    assert replies and all(METRICS not in r.content for r in replies)
    values = {float(v) for r in replies for rec in r.content.config_records.values() for v in rec.values()
              if isinstance(v, int | float) and not isinstance(v, bool)}
    assert not values & {target[metric_key(OVERALL, m)] for m in ("users", *EVAL_METRICS)}
    fixed = eval_fixed_point(FedConfig(), len(nodes))
    masked = [fixed.decode(a.numpy()) for r in replies for a in r.content.array_records.get("arrays", {}).values()]
    assert len(masked) == len(nodes) and not any(np.allclose(m[:2], [target[metric_key(OVERALL, "users")],
                                                                      target[metric_key(OVERALL, "ndcg@10")]])
                                                 for m in masked)
    # what it learned: the overall row summed over all five clients, and no per-segment row
    expected = pool_evaluation([{OVERALL: {"users": s[metric_key(OVERALL, "users")],
                                           **{m: s[metric_key(OVERALL, m)] for m in EVAL_METRICS}}}
                                for s in (_sums(n, _own(n, n == TARGET)) for n in nodes)])
    assert result["eval_clients"] == len(nodes) and result["segments"] == {}
    assert result["users"] == expected["users"]
    assert result["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-9)
    assert result["secagg_eval_aborted"] == ""


def test_segment_mode_sums_each_segment_and_never_a_lone_member() -> None:
    """Segment mode: a row per segment over its members; NA has one member in this cohort, so its row is not
    uploaded and the server learns no NA metrics (with min-segment-clients 2)."""
    nodes = [1, 2, 3, 5]  # EU: 1, 3, 5; NA: 2 alone
    result, replies = _evaluate(SEGMENT, nodes)
    assert sorted(result["segments"]) == [EU]  # type: ignore[call-overload]
    eu_users = sum(10 + n for n in (1, 3, 5))
    assert result["segments"][EU]["users"] == eu_users  # type: ignore[index]
    assert result["users"] == sum(10 + n for n in nodes) and result["eval_clients"] == 4
    uploaded = {name for r in replies for name in r.content.array_records.get("arrays", {}).keys()}
    assert NA not in uploaded and {OVERALL, EU} <= uploaded


def test_too_small_an_evaluation_cohort_learns_nothing() -> None:
    result, replies = _evaluate(SEGMENT, [1, 2, 3], min_segment_clients=4)
    assert result == {"eval_clients": 0, "secagg_eval_aborted": result["secagg_eval_aborted"]}
    assert "fewer than 4" in str(result["secagg_eval_aborted"]) and not replies


def test_a_plain_evaluate_message_is_refused_in_a_secure_run() -> None:
    set_task_identity()
    cfg = FedConfig(secure_aggregation=SEGMENT)
    grid = InProcessGrid(_app(cfg), {1: {}}, cfg.to_run_config())
    strategy = AdapterBankStrategy(copy.deepcopy(BANKS), ServerOptimizer(OptimizerConfig("fedavg", 1.0)),
                                   ValidationConfig(), 2)
    msg = strategy.evaluate_messages([ClientInfo(1, 1, (EU,), {GLOBAL: 1}, 11)], 1)
    (reply,) = grid.send_and_receive(msg)
    assert reply.has_error() and "no evaluation sums are sent in the clear" in reply.error.reason
