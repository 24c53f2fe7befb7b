"""Server strategy without a grid: routing of banks, validation in the loop, per-segment means, evaluation pooling."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict

from common.federation.records import message_bytes
from common.protocol import ARRAYS
from server.clients import ClientInfo, sample_nodes
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig
from tests.fed_fakes import set_task_identity
from tests.fed_replies import client, eval_reply, eval_sums, train_reply


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _banks() -> dict[str, dict[str, np.ndarray]]:
    return {name: {f"{name}::w": np.zeros((2, 3), np.float32)} for name in ("global", "region=EU", "region=NA")}


def _reply(msg: Message, delta: dict[str, np.ndarray], n: int) -> Message:
    """A reply whose every bank counts the same n pairs."""
    return train_reply(msg, delta, {k.split("::")[0]: n for k in delta if "::" in k})


VALIDATION = ValidationConfig(50.0, ("region",), ("region",))


def test_sampling_is_deterministic_and_sized() -> None:
    """Same seed, round and node ids give the same cohort in any order; the size is ceil(fraction * N), at
    least one; another round or salt draws another cohort."""
    nodes = [1000 + 7 * i for i in range(10)]
    a = sample_nodes(nodes, 0.3, seed=5, server_round=2)
    b = sample_nodes(list(reversed(nodes)), 0.3, seed=5, server_round=2)
    assert a == b and len(a) == 3 and set(a) <= set(nodes) and a == sorted(a)
    assert len(sample_nodes(nodes, 0.01, 5, 1)) == 1
    assert sample_nodes(nodes, 1.0, 5, 1) == nodes
    assert sample_nodes(nodes, 0.3, 5, 3) != a or sample_nodes(nodes, 0.3, 5, 2, salt=1) != a
    assert sample_nodes([], 0.5, 5, 1) == []


def test_round_aggregates_per_segment_and_drops_bad_replies() -> None:
    """Each client gets global + its segment; valid deltas are averaged per bank; bad replies are counted."""
    # Prepare: 4 clients, EU x2, NA x1, one EU client that sneaks a backbone tensor, one that errors
    strategy = AdapterBankStrategy(_banks(), ServerOptimizer(OptimizerConfig()), VALIDATION, 1)
    clients = [client(11, 0, ("region=EU",)), client(12, 1, ("region=EU",)),
               client(13, 2, ("region=NA",)), client(14, 3, ("region=EU",)),
               client(15, 4, ("region=NA",))]
    messages, sent = strategy.train_messages(clients, {"lr": 0.1}, 1)
    assert set(sent[11]) == {"global::w", "region=EU::w"} and set(sent[13]) == {"global::w", "region=NA::w"}
    rng = np.random.default_rng(0)
    deltas = {node: {k: rng.normal(size=(2, 3)).astype(np.float32) for k in arrays} for node, arrays in sent.items()}
    weights = {11: 10, 12: 30, 13: 20, 14: 5}
    replies = [_reply(m, deltas[m.metadata.dst_node_id], weights[m.metadata.dst_node_id]) for m in messages[:4]]
    bad = dict(deltas[14], **{"encoder.layer.0.output.dense.weight": np.zeros((2, 2), np.float32)})
    replies[3] = _reply(messages[3], bad, 5)
    replies.append(Message(Error(code=0, reason="boom"), reply_to=messages[4]))
    stats = RoundStats(sampled=5)
    # Execute
    strategy.aggregate_train(replies, sent, {c.node_id: c for c in clients}, stats)
    # Assert
    good = [11, 12, 13]
    expect_global = sum(weights[n] * deltas[n]["global::w"] for n in good) / sum(weights[n] for n in good)
    np.testing.assert_allclose(strategy.banks["global"]["global::w"], expect_global, rtol=1e-5)
    expect_eu = (10 * deltas[11]["region=EU::w"] + 30 * deltas[12]["region=EU::w"]) / 40
    np.testing.assert_allclose(strategy.banks["region=EU"]["region=EU::w"], expect_eu, rtol=1e-5)
    np.testing.assert_allclose(strategy.banks["region=NA"]["region=NA::w"], deltas[13]["region=NA::w"], rtol=1e-6)
    assert stats.rejected == 1 and stats.rejected_reasons == {"backbone-key": 1}
    assert stats.dropped == 1 and stats.replied == 4
    assert stats.num_examples == 60


def test_held_back_segment_is_not_served_until_released() -> None:
    """With min 2 clients per segment, a lone NA client updates global but not the NA bank, and NA users are
    evaluated on the global adapter alone (NA is not sent) until a round releases NA."""
    strategy = AdapterBankStrategy(_banks(), ServerOptimizer(OptimizerConfig()), VALIDATION, 2)
    clients = [client(11, 0, ("region=EU",)), client(12, 1, ("region=EU",)), client(13, 2, ("region=NA",))]
    by_node = {c.node_id: c for c in clients}

    def round_with(cohort: list[ClientInfo]) -> RoundStats:
        messages, sent = strategy.train_messages(cohort, {}, 1)
        assert all(set(sent[c.node_id]) == {"global::w", f"{c.segments[0]}::w"} for c in cohort)  # trains all
        replies = [_reply(m, {k: np.ones((2, 3), np.float32) for k in sent[m.metadata.dst_node_id]}, 1)
                   for m in messages]
        stats = RoundStats()
        strategy.aggregate_train(replies, sent, by_node, stats)
        return stats

    stats = round_with(clients)
    assert stats.fallback == ["region=NA"] and stats.served == ["region=EU"]
    assert np.all(strategy.banks["region=NA"]["region=NA::w"] == 0)
    assert np.all(strategy.banks["region=EU"]["region=EU::w"] == 1)
    sent_eval = {m.metadata.dst_node_id: set(m.content["arrays"]) for m in strategy.evaluate_messages(clients, 1)}
    assert sent_eval == {11: {"global::w", "region=EU::w"}, 12: {"global::w", "region=EU::w"}, 13: {"global::w"}}
    round_with(clients[:2])  # NA not sampled: its status stays as it was
    assert strategy.served == {"region=EU"}
    strategy.min_segment_clients = 1
    assert round_with(clients).served == ["region=EU", "region=NA"]
    strategy.min_segment_clients = 2
    assert round_with(clients).served == ["region=EU"]  # held back again: a stale NA bank is not served


def test_pool_evaluation_weights_by_users_and_drops_forged_replies() -> None:
    """Per-segment means pool clients' sums exactly (not a mean of means); a forged reply is left out."""
    strategy = AdapterBankStrategy(_banks(), ServerOptimizer(OptimizerConfig()), VALIDATION, 1)
    clients = {1: client(1, 0, ("region=EU",), eval_users=2), 2: client(2, 1, eval_users=8),
               3: client(3, 2, eval_users=5)}
    messages = strategy.evaluate_messages(clients.values(), 1)
    sums = [eval_sums({"overall": (2, 0.5), "region=EU": (2, 0.5)}, 2), eval_sums({"overall": (8, 0.25)}, 8),
            dict(eval_sums({"overall": (5, 0.1)}, 5), **{"seg/overall/ndcg@10": 1e6})]
    pooled = strategy.pool_evaluation([eval_reply(m, s) for m, s in zip(messages, sums, strict=True)], clients)
    assert pooled["ndcg@10"] == pytest.approx(0.3) and pooled["users"] == 10
    assert pooled["segments"]["region=EU"]["ndcg@10"] == pytest.approx(0.5)
    assert pooled["eval_rejected_reasons"] == {"eval-metrics": 1} and pooled["eval_clients"] == 2


def test_message_bytes_tracks_payload() -> None:
    """The serialized size grows with the arrays carried (about 4 bytes per float32)."""
    small = Message(RecordDict({ARRAYS: ArrayRecord({"global::w": Array(np.zeros(10, np.float32))})}), 1, "train")
    big = Message(RecordDict({ARRAYS: ArrayRecord({"global::w": Array(np.zeros(10_010, np.float32))})}), 1, "train")
    assert message_bytes(big) - message_bytes(small) == pytest.approx(40_000, rel=0.01)
