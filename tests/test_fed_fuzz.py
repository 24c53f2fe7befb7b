"""Fuzz: over a thousand generated malformed or hostile replies driven through the server, in one round each.

Every hostile reply must be rejected with its reason counted, the round must go on, and the banks (and the
pooled evaluation, and the registered clients) must equal those of the same round without them, bit for bit.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from common.names import GLOBAL
from common.protocol import ARRAYS, CONFIG, EVAL_USERS, METRICS, NUM_EXAMPLES, PARTITION_ID, SEGMENTS, metric_key
from server.clients import ClientInfo
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.registration import Registry
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import REASONS, ValidationConfig
from tests.fed_fakes import set_task_identity
from tests.fed_replies import client, eval_reply, eval_sums, force_set, registration_reply, train_reply

SEGMENTS_OF = ("region=EU", "region=NA", "season=holiday")
VALIDATION = ValidationConfig(max_norm=20.0, adapter_keys=("region", "season"), metric_keys=("region", "season"))
REGISTERED = 50  # pairs per bank every fuzzed node registered
HONEST = 4


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _banks() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return {name: {f"{name}::layer.0.up": rng.normal(size=(3, 4)).astype(np.float32),
                   f"{name}::layer.0.bias": rng.normal(size=(5,)).astype(np.float32)}
            for name in (GLOBAL, *SEGMENTS_OF)}


def _strategy() -> AdapterBankStrategy:
    return AdapterBankStrategy(_banks(), ServerOptimizer(OptimizerConfig("fedadam", server_lr=0.1)), VALIDATION, 1)


def _honest_delta(sent: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {k: (0.01 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in sent.items()}


def _npy(header: dict[str, object], body: bytes) -> bytes:
    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, header)
    return fh.getvalue() + body


def _replace_array(reply: Message, key: str, array: Array) -> Message:
    reply.content[ARRAYS][key] = array
    return reply


Mutation = Callable[[Message, dict[str, np.ndarray], dict[str, np.ndarray], np.random.Generator], Message]


def _counts(sent: dict[str, np.ndarray]) -> dict[str, int]:
    return {bank: 20 for bank in sorted({k.split("::")[0] for k in sent})}


def _with_delta(change: Callable[[dict[str, np.ndarray], np.random.Generator], None]) -> Mutation:
    def mutate(msg: Message, sent: dict[str, np.ndarray], delta: dict[str, np.ndarray], rng: np.random.Generator
               ) -> Message:
        change(delta, rng)
        return train_reply(msg, delta, _counts(sent))
    return mutate


def _with_array(make: Callable[[Array, np.random.Generator], Array]) -> Mutation:
    def mutate(msg: Message, sent: dict[str, np.ndarray], delta: dict[str, np.ndarray], rng: np.random.Generator
               ) -> Message:
        reply = train_reply(msg, delta, _counts(sent))
        key = sorted(sent)[int(rng.integers(len(sent)))]
        return _replace_array(reply, key, make(reply.content[ARRAYS][key], rng))
    return mutate


def _with_metric(key: str, value: object, remove: bool = False) -> Mutation:
    def mutate(msg: Message, sent: dict[str, np.ndarray], delta: dict[str, np.ndarray], rng: np.random.Generator
               ) -> Message:
        reply = train_reply(msg, delta, _counts(sent))
        if remove:
            del reply.content[METRICS][key]
        else:
            force_set(reply.content[METRICS], key, value)
        return reply
    return mutate


def _first(delta: dict[str, np.ndarray]) -> str:
    return sorted(delta)[0]


def _set(delta: dict[str, np.ndarray], key: str, value: np.ndarray) -> None:
    delta[key] = value


# Each mutation and the reason the server must give for it.
MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "random-bytes": (_with_array(lambda a, r: Array(a.dtype, a.shape, a.stype, r.bytes(len(a.data)))),
                     "corrupt-array"),
    "truncated-bytes": (_with_array(lambda a, r: Array(a.dtype, a.shape, a.stype, a.data[: len(a.data) // 2])),
                        "corrupt-array"),
    "padded-bytes": (_with_array(lambda a, r: Array(a.dtype, a.shape, a.stype, a.data + r.bytes(64))),
                     "corrupt-array"),
    "huge-header": (_with_array(lambda a, r: Array(a.dtype, a.shape, a.stype, _npy(
        {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}, a.data[-16:]))), "corrupt-array"),
    "object-header": (_with_array(lambda a, r: Array(a.dtype, a.shape, a.stype, _npy(
        {"descr": "|O", "fortran_order": False, "shape": tuple(a.shape)}, b"\x80\x04N."))), "corrupt-array"),
    "not-numpy-stype": (_with_array(lambda a, r: Array(a.dtype, a.shape, "torch.Tensor", a.data)), "corrupt-array"),
    "declared-dtype": (_with_array(lambda a, r: Array("float64", a.shape, a.stype, a.data)), "dtype"),
    "declared-shape": (_with_array(lambda a, r: Array(a.dtype, (1, *a.shape), a.stype, a.data)), "shape"),
    "wrong-shape": (_with_delta(lambda d, r: _set(d, _first(d), np.zeros((2, 2), np.float32))), "shape"),
    "wrong-dtype": (_with_delta(lambda d, r: _set(d, _first(d), d[_first(d)].astype(np.float64))), "dtype"),
    "int-dtype": (_with_delta(lambda d, r: _set(d, _first(d), d[_first(d)].astype(np.int32))), "dtype"),
    "nan": (_with_delta(lambda d, r: d[_first(d)].__setitem__((0,) * d[_first(d)].ndim, np.nan)), "non-finite"),
    "inf": (_with_delta(lambda d, r: d[_first(d)].__setitem__((0,) * d[_first(d)].ndim, -np.inf)), "non-finite"),
    "huge-norm": (_with_delta(lambda d, r: _set(d, _first(d), d[_first(d)] * 1e6 + 1.0)), "norm"),
    "missing-key": (_with_delta(lambda d, r: d.pop(_first(d))), "missing-key"),
    "foreign-adapter": (_with_delta(lambda d, r: _set(d, "region=XX::layer.0.up", np.zeros((3, 4), np.float32))),
                        "unexpected-key"),
    "backbone-key": (_with_delta(lambda d, r: _set(d, "encoder.layer.0.attention.self.query.weight",
                                                   np.zeros((4, 4), np.float32))), "backbone-key"),
    "hostile-key": (_with_delta(lambda d, r: _set(d, "global::../../etc/passwd::x", np.zeros(1, np.float32))),
                    "unexpected-key"),
    "huge-count": (_with_metric("examples/global", 10**12), "num-examples"),
    "huge-num-examples": (_with_metric(NUM_EXAMPLES, 10**12), "num-examples"),
    "bool-count": (_with_metric("examples/global", True), "num-examples"),
    "float-count": (_with_metric("examples/global", 20.5), "num-examples"),
    "list-count": (_with_metric("examples/global", [20, 20]), "num-examples"),
    "negative-count": (_with_metric("examples/global", -5), "num-examples"),
    "over-registered": (_with_metric("examples/global", REGISTERED + 1), "num-examples"),
    "missing-count": (_with_metric("examples/global", None, remove=True), "num-examples"),
    "hostile-bank-count": (_with_metric("examples/region=EU::x", 3), "num-examples"),
    "num-examples-mismatch": (_with_metric(NUM_EXAMPLES, 19), "num-examples"),
    "nan-loss": (_with_metric("train-loss", float("nan")), "metrics"),
    "negative-loss": (_with_metric("train-loss", -1.0), "metrics"),
    "forged-metric": (_with_metric("ndcg@10", 1e6), "metrics"),
    "no-metrics": (lambda m, s, d, r: Message(RecordDict({ARRAYS: ArrayRecord({})}), reply_to=m), "malformed"),
    "no-arrays": (lambda m, s, d, r: Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 1})}), reply_to=m),
                  "malformed"),
    "extra-record": (lambda m, s, d, r: _extra_record(train_reply(m, d, _counts(s))), "malformed"),
    "metrics-as-config": (lambda m, s, d, r: Message(RecordDict({METRICS: ConfigRecord({NUM_EXAMPLES: 1}),
                                                                 ARRAYS: ArrayRecord({})}), reply_to=m), "malformed"),
}


def _extra_record(reply: Message) -> Message:
    reply.content["backbone"] = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    return reply


def _round(strategy: AdapterBankStrategy, clients: Sequence[ClientInfo],
           hostile: Callable[[list[Message], dict[int, dict[str, np.ndarray]]], Iterable[Message]]) -> RoundStats:
    """One train round: honest replies from the first HONEST clients, plus whatever `hostile` returns."""
    messages, sent = strategy.train_messages(clients, {}, 1)
    rng = np.random.default_rng(0)
    honest = [train_reply(m, _honest_delta(sent[m.metadata.dst_node_id], rng), _counts(sent[m.metadata.dst_node_id]))
              for m in messages[:HONEST]]
    stats = RoundStats(sampled=len(clients))
    strategy.aggregate_train([*honest, *hostile(messages[HONEST:], sent)], sent,
                             {c.node_id: c for c in clients}, stats)
    return stats


def _clients(n_hostile: int) -> list[ClientInfo]:
    segments = [("region=EU", "season=holiday"), ("region=EU",), ("region=NA",), ("region=NA", "season=holiday")]
    return [client(10 + i, i, segments[i % 4], examples=REGISTERED) for i in range(HONEST + n_hostile)]


# Serializing a forged bool count (to measure its bytes) makes protobuf warn that it expected an int: expected here.
@pytest.mark.filterwarnings("ignore:Field flwr.proto.MetricRecordValue.sint64:DeprecationWarning")
def test_thousand_hostile_train_replies_change_nothing() -> None:
    """>= 1,000 malformed train replies of every kind: each rejected with its reason, the honest ones
    aggregated exactly as in the same round without them (bit for bit)."""
    # Prepare: the reference round with honest replies only
    kinds = sorted(MUTATIONS)
    per_kind = -(-1000 // len(kinds))
    n_hostile = per_kind * len(kinds)
    clients = _clients(n_hostile + 10)  # the last 10 sampled nodes send two replies each
    reference = _strategy()
    ref_stats = _round(reference, clients, lambda messages, sent: [])
    expected: Counter[str] = Counter()

    def hostile(messages: list[Message], sent: dict[int, dict[str, np.ndarray]]) -> list[Message]:
        rng = np.random.default_rng(1)
        out = []
        for i, msg in enumerate(messages[:n_hostile]):
            mutate, reason = MUTATIONS[kinds[i % len(kinds)]]
            node_sent = sent[msg.metadata.dst_node_id]
            out.append(mutate(msg, node_sent, _honest_delta(node_sent, rng), rng))
            expected[reason] += 1
        for msg in messages[n_hostile:]:  # duplicate senders: both replies go, even the well-formed one
            node_sent = sent[msg.metadata.dst_node_id]
            out += [train_reply(msg, _honest_delta(node_sent, rng), _counts(node_sent)) for _ in range(2)]
            expected["duplicate-sender"] += 2
        for node in range(5000, 5050):  # nodes that were never asked
            stray = Message(RecordDict({CONFIG: ConfigRecord({})}), node, MessageType.TRAIN, group_id="1")
            out.append(train_reply(stray, _honest_delta(sent[10], rng), {GLOBAL: 1, "region=EU": 1,
                                                                         "season=holiday": 1}))
            expected["unknown-sender"] += 1
        return out

    # Execute
    fuzzed = _strategy()
    stats = _round(fuzzed, clients, hostile)
    # Assert
    print(f"fuzz: {sum(expected.values())} hostile train replies, rejected by reason: {dict(sorted(expected.items()))}")
    assert sum(expected.values()) >= 1000 and set(expected) <= set(REASONS)
    assert stats.rejected_reasons == dict(expected), Counter(stats.rejected_reasons) - expected
    assert stats.rejected == sum(expected.values())
    assert stats.num_examples == ref_stats.num_examples > 0 and stats.contributors == ref_stats.contributors
    assert stats.train_loss == ref_stats.train_loss
    for bank in reference.banks:
        for key, value in reference.banks[bank].items():
            got = fuzzed.banks[bank][key]
            assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), key
    assert any(not np.array_equal(reference.banks[GLOBAL][k], _banks()[GLOBAL][k]) for k in reference.banks[GLOBAL])
    assert fuzzed.optimizer.state()[1] == reference.optimizer.state()[1]


def _forged_eval(rng: np.random.Generator, kind: int, users: int) -> dict[str, object]:
    good = eval_sums({"overall": (users, 0.4), "region=EU": (users, 0.4)}, users)
    forged: list[dict[str, object]] = [
        {**good, metric_key("overall", "ndcg@10"): 1e6},
        {**good, metric_key("overall", "hr@10"): float(rng.uniform(-5, -0.01))},
        {**good, metric_key("region=EU", "coverage"): float("inf")},
        {**good, metric_key("zone=x", "users"): 1.0},
        {**good, metric_key("region=EU::x", "users"): 1.0},
        {**good, metric_key("overall", "mrr"): 0.5},
        {**good, EVAL_USERS: float(users + 1)},
        eval_sums({"overall": (users + 5, 0.4)}, users + 5),
        {k: v for k, v in good.items() if "hr@10" not in k},
        {**good, "seg/overall/users/extra": 1.0},
        {**good, metric_key("region=EU", "users"): users + 0.5},
    ]
    return forged[kind % len(forged)]


def test_hostile_evaluation_replies_do_not_move_the_metrics() -> None:
    """Forged evaluation replies are rejected and the pooled metrics equal the honest-only pool exactly."""
    strategy = _strategy()
    clients = [client(10 + i, i, ("region=EU",), eval_users=8) for i in range(HONEST + 300)]
    by_node = {c.node_id: c for c in clients}
    messages = strategy.evaluate_messages(clients, 1)
    honest = [eval_reply(m, eval_sums({"overall": (8, 0.1 * (i + 1)), "region=EU": (8, 0.05 * (i + 1))}, 8))
              for i, m in enumerate(messages[:HONEST])]
    rng = np.random.default_rng(3)
    forged = []
    for i, m in enumerate(messages[HONEST:]):
        reply = eval_reply(m, {})
        for key, value in _forged_eval(rng, i, 8).items():
            force_set(reply.content[METRICS], key, value)
        forged.append(reply)
    reference = strategy.pool_evaluation(honest, by_node)
    pooled = strategy.pool_evaluation([*forged, *honest], by_node)
    assert pooled["eval_rejected_reasons"] == {"eval-metrics": 300}
    assert {k: v for k, v in pooled.items() if not k.startswith("eval_rejected")} == \
           {k: v for k, v in reference.items() if not k.startswith("eval_rejected")}


class FakeGrid:
    """Just enough of Flower's Grid for registration: fixed nodes, replies made by a callback."""

    def __init__(self, nodes: list[int], answer: Callable[[Message], list[Message]]) -> None:
        self.nodes = nodes
        self.answer = answer

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        return [reply for msg in messages for reply in self.answer(msg)]


def test_hostile_registrations_are_rejected_and_the_run_goes_on() -> None:
    """Hostile segment names ('::', '/', unknown keys), bad counts and duplicate partition ids are refused;
    the honest nodes register as if the others were absent."""
    def reg(msg: Message, pid: object, segments: list[object], counts: dict[str, object], users: object = 5
            ) -> Message:
        reply = registration_reply(msg, 0, [], {GLOBAL: 1}, 1)
        record = reply.content[CONFIG]
        for key in list(record):
            del record[key]
        for key, value in {PARTITION_ID: pid, SEGMENTS: segments, EVAL_USERS: users,
                           **{f"examples/{b}": n for b, n in counts.items()}}.items():
            force_set(record, key, value)
        return reply

    hostile_cases: list[tuple[Callable[[Message], Message], str]] = [
        (lambda m: reg(m, 900, ["region=EU::global"], {GLOBAL: 3, "region=EU::global": 3}), "segment-name"),
        (lambda m: reg(m, 901, ["region=a/b"], {GLOBAL: 3, "region=a/b": 3}), "segment-name"),
        (lambda m: reg(m, 902, ["zone=x"], {GLOBAL: 3, "zone=x": 3}), "segment-name"),
        (lambda m: reg(m, 903, [7], {GLOBAL: 3}), "segment-name"),
        (lambda m: reg(m, 904, ["region=EU", "region=EU"], {GLOBAL: 3, "region=EU": 3}), "segment-name"),
        (lambda m: reg(m, True, [], {GLOBAL: 3}), "partition-id"),
        (lambda m: reg(m, -4, [], {GLOBAL: 3}), "partition-id"),
        (lambda m: reg(m, 905, [], {GLOBAL: 10**12}), "counts"),
        (lambda m: reg(m, 906, [], {GLOBAL: True}), "counts"),
        (lambda m: reg(m, 907, [], {GLOBAL: 3}, users=-1), "counts"),
        (lambda m: reg(m, 908, ["region=EU"], {GLOBAL: 3, "region=EU": 9}), "counts"),
        (lambda m: reg(m, 909, "region=EU", {GLOBAL: 3}), "malformed"),
        (lambda m: Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 3})}), reply_to=m), "malformed"),
        (lambda m: reg(m, 1, [], {GLOBAL: 3}), "partition-id"),  # claims an honest node's partition id
    ]
    honest_nodes = list(range(1, HONEST + 1))
    hostile_nodes = list(range(100, 100 + 10 * len(hostile_cases)))

    def answer(msg: Message) -> list[Message]:
        node = msg.metadata.dst_node_id
        if node in honest_nodes:
            return [registration_reply(msg, node, ["region=EU"], {GLOBAL: 30, "region=EU": 30}, 6)]
        return [hostile_cases[(node - 100) % len(hostile_cases)][0](msg)]

    # Execute: every node sampled at once, as with fraction 1
    clean_registry, registry = Registry(VALIDATION, 10), Registry(VALIDATION, 10)
    clean = clean_registry.resolve(FakeGrid(honest_nodes, answer), honest_nodes)
    infos = registry.resolve(FakeGrid(honest_nodes + hostile_nodes, answer), honest_nodes + hostile_nodes)
    clean_reasons, reasons = clean_registry.reasons, registry.reasons
    # Assert: node 1 lost its partition id to the impostors' claims, which are all rejected with it
    expected = Counter(reason for node in hostile_nodes for reason in [hostile_cases[(node - 100) % 14][1]])
    expected["partition-id"] += 1
    assert not clean_reasons and dict(reasons) == dict(expected)
    assert [c.partition_id for c in infos] == [c.partition_id for c in clean][1:]
