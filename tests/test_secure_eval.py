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
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client import secure as client_secure
from client import secure_eval
from common.names import GLOBAL, OVERALL, bank_of
from common.protocol import EVAL_METRICS, EVAL_USERS, METRICS, FedConfig, metric_key
from common.secagg.client import ADVERTISE, CONSISTENCY, MASK, SHARE, UNMASK
from common.secagg.evaluation import eval_fixed_point
from common.secagg.identity import enrol, load_identity, write_registry
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


def _app(cfg: FedConfig, identities: Mapping[int, bytes] | None = None) -> ClientApp:
    app = ClientApp()
    keys = identities or {}

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        return secure_eval.evaluate_and_advertise(msg, context, cfg, {GLOBAL, SEGMENTS[node]}, [SEGMENTS[node]],
                                                  lambda banks: _sums(node, banks), keys.get(node))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_secure.answer_stage(msg, context, cfg, keys.get(msg.metadata.dst_node_id))

    return app


class Curious(AdapterBankStrategy):
    """A server that sends TARGET a perturbed EU bank (everyone else the true one)."""

    def payload(self, client: ClientInfo, served_only: bool = False) -> dict[str, np.ndarray]:
        out = super().payload(client, served_only)
        if client.node_id == TARGET:
            out = {k: (v + 0.5 if bank_of(k) == EU else v) for k, v in out.items()}
        return out


def _evaluate(mode: str, nodes: list[int], strategy_cls: type[AdapterBankStrategy] = AdapterBankStrategy,
              min_segment_clients: int = 2, registry: Path | None = None,
              drop: Callable[[Message], bool] = lambda msg: False) -> tuple[dict[str, object], list[Message]]:
    """One secure evaluation over the in-process grid; `replies`: every reply the server got; `drop(request)`:
    lose the reply to that request; `registry`: run with secagg-identities (keys in registry.parent/state)."""
    set_task_identity()
    cfg = FedConfig(secure_aggregation=mode, min_segment_clients=min_segment_clients,
                    secagg_identities=str(registry or ""))
    identities = {n: load_identity(registry.parent / "state", n) for n in nodes} if registry else None
    replies: list[Message] = []

    def keep(msg: Message, reply: Message) -> list[Message]:
        if drop(msg):
            return []
        replies.append(reply)
        return [reply]

    grid = InProcessGrid(_app(cfg, identities), {n: {} for n in nodes}, cfg.to_run_config(), intercept=keep)
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


def _registry(tmp_path: Path, nodes: list[int]) -> Path:
    """Enrol every node (node id = partition id here) in tmp_path/state and write their registry."""
    return write_registry(tmp_path / "secagg-identities.json", {n: enrol(tmp_path / "state", n) for n in nodes})


def _stage(msg: Message) -> str:
    """The secure stage a request or reply belongs to (its group id ends with it)."""
    return next((s for s in (ADVERTISE, SHARE, MASK, CONSISTENCY, UNMASK) if msg.metadata.group_id.endswith(s)), "")


def test_with_identities_the_evaluation_round_signs_and_checks_consistency(tmp_path: Path) -> None:
    """secagg-identities reaches evaluation too: every client signs its advertisement and the survivor list, and
    the round gives the same sums as without identities."""
    nodes = sorted(SEGMENTS)
    result, replies = _evaluate(SEGMENT, nodes, registry=_registry(tmp_path, nodes))
    plain, _ = _evaluate(SEGMENT, nodes)
    assert result["secagg_eval_aborted"] == "" and result["eval_clients"] == len(nodes)
    assert sum(_stage(r) == CONSISTENCY for r in replies) == len(nodes)
    adverts = [r for r in replies if _stage(r) == ADVERTISE]
    assert len(adverts) == len(nodes) and all(len(r.content.config_records["config"]["signature"]) == 64
                                              for r in adverts)
    assert result["users"] == plain["users"] and result["segments"] == plain["segments"]


def test_an_evaluation_key_substitution_aborts_with_no_sum(tmp_path: Path) -> None:
    """A server that replaces node 3's advertised keys in the evaluation round: the peers refuse to share secrets
    (the signature does not verify), the round aborts and no evaluation figure is learned."""
    nodes = sorted(SEGMENTS)
    registry = _registry(tmp_path, nodes)
    set_task_identity()
    cfg = FedConfig(secure_aggregation=SEGMENT, secagg_identities=str(registry))
    identities = {n: load_identity(tmp_path / "state", n) for n in nodes}
    refusals: list[str] = []

    def substitute(msg: Message, reply: Message) -> list[Message]:
        if msg.metadata.dst_node_id == 3 and _stage(msg) == ADVERTISE:
            reply.content.config_records["config"]["c-pk"] = bytes(32 * [7])
        if reply.has_error() and _stage(msg) == SHARE and msg.metadata.dst_node_id != 3:
            refusals.append(reply.error.reason)
        return [reply]

    grid = InProcessGrid(_app(cfg, identities), {n: {} for n in nodes}, cfg.to_run_config(), intercept=substitute)
    strategy = AdapterBankStrategy(copy.deepcopy(BANKS), ServerOptimizer(OptimizerConfig("fedavg", 1.0)),
                                   ValidationConfig(), 2, served=(EU, NA))
    cohort = [ClientInfo(n, n, (SEGMENTS[n],), {GLOBAL: 1}, 10 + n) for n in nodes]
    result = SecureEvaluation(grid, cfg, 60.0).evaluate(strategy, cohort, 1, 1)
    assert "fewer than the threshold" in str(result["secagg_eval_aborted"]) and result["eval_clients"] == 0
    assert "users" not in result
    assert len(refusals) == len(nodes) - 1 and all("node 3" in r and "substituted" in r for r in refusals)


def test_an_evaluation_row_left_with_one_survivor_is_withheld_by_its_member() -> None:
    """The unmask floor holds in evaluation (issue 23, leak 1 on the evaluation rows): EU's members are 1 and 3,
    and 3's masked input is lost after it uploaded. Node 1 withholds its EU self-mask share (no unmask reply
    names EU), so the server learns the OVERALL and NA rows only, never node 1's own EU row."""
    nodes = [1, 2, 3, 4]  # EU: 1, 3; NA: 2, 4
    result, replies = _evaluate(SEGMENT, nodes, drop=lambda m: m.metadata.dst_node_id == 3 and _stage(m) == MASK)
    unmasked = [r for r in replies if _stage(r) == UNMASK]
    assert unmasked and all(EU not in r.content.config_records["config"]["names"] for r in unmasked)
    assert sorted(result["segments"]) == [NA]  # type: ignore[call-overload]
    assert result["eval_clients"] == 3 and result["secagg_eval_aborted"] == ""


def test_clients_hold_evaluation_rows_to_their_own_minimum_not_the_servers() -> None:
    """A server that claims min-segment-clients 2 while the clients' own configuration says 3 asks for the EU
    and NA rows of 2 members each: no client uploads them (`eval_rules` comes from the client's config), so the
    server learns neither row."""
    nodes = [1, 2, 3, 4]  # EU: 1, 3; NA: 2, 4
    set_task_identity()
    clients_cfg = FedConfig(secure_aggregation=SEGMENT, min_segment_clients=3)
    server_cfg = FedConfig(secure_aggregation=SEGMENT, min_segment_clients=2)
    replies: list[Message] = []

    def keep(msg: Message, reply: Message) -> list[Message]:
        replies.append(reply)
        return [reply]

    grid = InProcessGrid(_app(clients_cfg), {n: {} for n in nodes}, clients_cfg.to_run_config(), intercept=keep)
    strategy = AdapterBankStrategy(copy.deepcopy(BANKS), ServerOptimizer(OptimizerConfig("fedavg", 1.0)),
                                   ValidationConfig(), 2, served=(EU, NA))
    cohort = [ClientInfo(n, n, (SEGMENTS[n],), {GLOBAL: 1}, 10 + n) for n in nodes]
    result = SecureEvaluation(grid, server_cfg, 60.0).evaluate(strategy, cohort, 1, 1)
    uploaded = {name for r in replies for name in r.content.array_records.get("arrays", {}).keys()}
    assert not uploaded & {EU, NA}
    assert not result.get("segments")
