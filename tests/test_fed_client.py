"""Client side: process caches, the outgoing-message guard, and the train/evaluate handlers on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client import app as client_app
from client.guard import OutgoingMessageError, check_outgoing
from common.federation import task
from common.federation.cache import ProcessCache
from common.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, FedConfig, metric_key
from common.rec.evaluate import evaluate
from tests.fed_fakes import fake_client_data, install_fake, set_task_identity


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


CFG = FedConfig(data_dir="/fake/data", backbone="tiny", adapter_kind="lora", batch_size=4, lr=1e-2)


def _context(pid: int, n: int = 3) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": n},
                   state=RecordDict(), run_config=CFG.to_run_config())


def _train_message(arrays: dict[str, np.ndarray], server_round: int = 1) -> Message:
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          CONFIG: ConfigRecord({"server-round": server_round, "lr": 1e-2})})
    return Message(content, 100, "train")


def test_process_cache_builds_once_and_evicts_lru() -> None:
    """A key is built once; hits are counted; the least recently used key is evicted beyond maxsize."""
    cache: ProcessCache[int] = ProcessCache("t", maxsize=2)
    calls: list[str] = []
    for key in ["a", "a", "b", "a", "c"]:
        cache.get(key, lambda k=key: calls.append(k) or len(calls))  # type: ignore[misc]
    assert calls == ["a", "b", "c"]
    assert (cache.hits, cache.misses) == (2, 3)
    assert "a" in cache and "b" not in cache and "c" in cache


def test_backbone_loaded_once_per_process() -> None:
    """Two models for different adapter kinds share one cached backbone load."""
    task.BACKBONES.clear()
    task.MODELS.clear()
    m1 = task.model_for(CFG)
    m2 = task.model_for(FedConfig(data_dir="/fake/data", backbone="tiny", adapter_kind="bottleneck"))
    assert task.model_for(CFG) is m1 and m2 is not m1
    assert task.BACKBONES.misses == 1 and task.BACKBONES.hits >= 1
    assert m1.backbone.model is m2.backbone.model


def test_guard_refuses_backbone_and_foreign_tensors() -> None:
    """The outgoing check passes the sent adapter keys and refuses anything else."""
    sent = {"global::q.lora_B": (4, 2)}
    ok = RecordDict({ARRAYS: ArrayRecord({"global::q.lora_B": Array(np.zeros((4, 2), np.float32))}),
                     METRICS: MetricRecord({NUM_EXAMPLES: 3})})
    check_outgoing(ok, sent)
    sneaky = RecordDict({ARRAYS: ArrayRecord({
        "global::q.lora_B": Array(np.zeros((4, 2), np.float32)),
        "encoder.layer.0.attention.self.query.weight": Array(np.zeros((32, 32), np.float32))})})
    with pytest.raises(OutgoingMessageError, match="backbone"):
        check_outgoing(sneaky, sent)
    foreign = RecordDict({ARRAYS: ArrayRecord({"region=NA::q.lora_B": Array(np.zeros((4, 2), np.float32))})})
    with pytest.raises(OutgoingMessageError, match="not an adapter tensor"):
        check_outgoing(foreign, sent)
    reshaped = RecordDict({ARRAYS: ArrayRecord({"global::q.lora_B": Array(np.zeros((2, 4), np.float32))})})
    with pytest.raises(OutgoingMessageError, match="shape"):
        check_outgoing(reshaped, sent)
    extra_record = RecordDict({"model": ArrayRecord()})
    with pytest.raises(OutgoingMessageError, match="unexpected records"):
        check_outgoing(extra_record, sent)


def test_train_handler_returns_delta_of_sent_keys_only() -> None:
    """The ClientApp trains the received adapters and replies with their delta and its pairs per bank."""
    # Prepare
    data = fake_client_data(0, {"region": "EU", "season": "holiday"})
    install_fake(CFG, 0, 3, data)
    sent = task.initial_state(CFG, data.adapter_names)
    # Execute
    reply = client_app.app(_train_message(sent), _context(0))
    # Assert
    assert not reply.has_error()
    delta = {k: a.numpy() for k, a in reply.content.array_records[ARRAYS].items()}
    assert set(delta) == set(sent)
    assert any(np.abs(v).sum() > 0 for v in delta.values())
    metrics = reply.content.metric_records[METRICS]
    assert metrics[NUM_EXAMPLES] == metrics["examples/global"] == 18  # 6 users x 3 pairs, all through global
    assert metrics["examples/region=EU"] == metrics["examples/season=holiday"] == 18


def test_initial_state_ignores_what_the_cached_model_trained() -> None:
    """The starting adapters are the same before and after a client trained the per-process cached model
    (a server or test that builds banks in a process that also trained must not start from trained weights)."""
    # Prepare
    data = fake_client_data(1, {"region": "US", "season": "regular"})
    install_fake(CFG, 1, 3, data)
    before = task.initial_state(CFG, data.adapter_names)
    # Execute
    reply = client_app.app(_train_message(before), _context(1))
    after = task.initial_state(CFG, data.adapter_names)
    # Assert
    assert not reply.has_error()
    trained = task.adapter_arrays(task.model_for(CFG), data.adapter_names)
    assert any(not np.array_equal(trained[k], before[k]) for k in before)
    assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before)


def test_train_handler_refuses_to_send_a_backbone_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """If local training ever returned a backbone tensor, the handler fails instead of sending it."""
    data = fake_client_data(1, {"region": "NA", "season": "regular"})
    install_fake(CFG, 1, 3, data)
    sent = task.initial_state(CFG, data.adapter_names)
    leaked = dict({k: np.zeros_like(v) for k, v in sent.items()})
    leaked["embeddings.word_embeddings.weight"] = np.zeros((1000, 32), np.float32)
    monkeypatch.setattr(task, "local_train", lambda *a, **k: task.TrainResult(leaked, 5, {}))
    with pytest.raises(Exception, match="backbone"):
        client_app.app(_train_message(sent), _context(1))


def test_evaluate_handler_returns_per_segment_sums() -> None:
    """Evaluation replies sums and user counts per segment and overall, no arrays."""
    data = fake_client_data(2, {"region": "EU", "season": "regular"})
    install_fake(CFG, 2, 3, data)
    sent = task.initial_state(CFG, data.adapter_names)
    msg = Message(RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in sent.items()})}), 100, "evaluate")
    reply = client_app.app(msg, _context(2))
    metrics = reply.content.metric_records[METRICS]
    assert metrics[metric_key("overall", "users")] == len(data.records)
    assert metrics[metric_key("region=EU", "users")] == len(data.records)
    assert 0 <= metrics[metric_key("overall", "ndcg@10")] <= len(data.records)
    assert ARRAYS not in reply.content


def test_held_back_segment_serves_exactly_the_global_adapter() -> None:
    """Evaluated with only the global bank (the server held the segment back), a client ranks exactly like a
    model that has no segment adapter at all, whatever its cached model trained before, and covers nobody."""
    # Prepare: a segment adapter far from identity, so that using it would change every score
    cfg = CFG
    data = fake_client_data(1, {"region": "EU", "season": "regular"})
    install_fake(cfg, 1, 3, data)
    sent = task.initial_state(cfg, data.adapter_names)
    rng = np.random.default_rng(0)
    sent = {k: (v + rng.normal(size=v.shape).astype(v.dtype) if not k.startswith("global::") else v)
            for k, v in sent.items()}
    global_only = {k: v for k, v in sent.items() if k.startswith("global::")}
    # Execute
    served = task.local_evaluate(cfg, data, sent)
    held_back = task.local_evaluate(cfg, data, global_only)
    reference = task.new_model(cfg, ["global"])
    task.load_received(reference, ["global"], global_only)
    expected = evaluate(reference, data.eval_records(), data.item_texts, ks=(10,))
    # Assert
    users = len(data.records)
    assert held_back[metric_key("overall", "ndcg@10")] == pytest.approx(expected["overall"]["ndcg@10"] * users)
    assert held_back[metric_key("overall", "coverage")] == 0
    assert served[metric_key("overall", "coverage")] == users
    assert served[metric_key("overall", "ndcg@10")] != held_back[metric_key("overall", "ndcg@10")]
    with pytest.raises(ValueError, match="does not hold"):
        task.local_evaluate(cfg, data, {**sent, "region=NA::x": np.zeros(1, np.float32)})


def test_malformed_server_messages_get_an_error_reply_naming_the_problem() -> None:
    """A train message without arrays, with a foreign adapter or a non-numeric lr is refused with a reason
    (Flower turns the handler's exception into the error reply the server logs)."""
    data = fake_client_data(0, {"region": "EU", "season": "holiday"})
    install_fake(CFG, 0, 3, data)
    sent = task.initial_state(CFG, data.adapter_names)
    no_arrays = Message(RecordDict({CONFIG: ConfigRecord({"server-round": 1})}), 100, "train")
    foreign = _train_message({**sent, "region=NA::x": np.zeros(2, np.float32)})
    bad_lr = _train_message(sent)
    bad_lr.content[CONFIG]["lr"] = "fast"
    for msg, reason in ((no_arrays, "no 'arrays' record"), (foreign, "does not hold"), (bad_lr, "lr='fast'")):
        with pytest.raises(ValueError, match=reason):
            client_app.app(msg, _context(0))
