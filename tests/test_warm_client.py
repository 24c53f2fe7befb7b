"""A warm client (issue 21, part 4): node-disk caches across processes and runs, no transformers import on the
seq client's warm path, and evaluation folded into the train message (eval-in-train), client and server.

Speed goals live in `fedadapt bench deploy` (simulations/bench/deploy.py), never here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client import app as client_app
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import lower_states, seq_vectors, task
from common.federation.node_cache import NodeCache, backbone_fingerprint, node_cache
from common.names import GLOBAL
from common.protocol import ARRAYS, CONFIG, EVAL_IN_TRAIN, EVAL_RECORD, EVAL_SKIP, METRICS, FedConfig, metric_key
from common.rec.seq_model import frozen_item_vectors
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy
from server.validate import ValidationConfig
from simulations.runner.run import SimOptions, simulate
from tests.fed_fakes import fake_client_data, install_fake, set_task_identity
from tests.fed_replies import client, eval_sums, train_reply

ROOT = Path(__file__).resolve().parents[1]
SEQ = {"arch": "seq", "seq-dim": 16, "seq-max-len": 20, "batch-size": 8, "lr": 5e-3, "backbone": "tiny",
       "min-segment-clients": 1}

# One seq client update in a fresh interpreter, as a ClientApp process runs it: prints whether transformers was
# imported, the vectors it trained on and the delta it produced.
CHILD = """
import json, sys
import numpy as np
from common.federation import task
from common.protocol import FedConfig, RoundHParams
args = json.loads(sys.argv[1])
cfg = FedConfig.from_run_config(args["config"])
data = task.client_data(cfg, 0, 2)
with np.load(args["received"], allow_pickle=False) as z:
    received = {k: z[k] for k in z.files}
result = task.local_train(cfg, data, received, RoundHParams(1, 1, 8, 5e-3, 0.0))
print(json.dumps({"transformers": "transformers" in sys.modules,
                  "delta": {k: v.tolist() for k, v in result.delta.items() if k.endswith("text_proj.weight")}}))
"""


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warm-data") / "data"
    write_marketplace(generate_marketplace(120, 300, seed=3), folder)
    return folder


def _child(config: dict[str, object], received: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"config": config, "received": str(received)})],
                         capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _vector_files(state: Path) -> list[Path]:
    return sorted((state / "cache").glob(f"{seq_vectors.KIND}-*"))


@pytest.mark.slow
def test_seq_vectors_hit_across_processes_without_transformers_and_miss_on_changed_text(
        data_dir: Path, tmp_path: Path) -> None:
    """The first ClientApp process encodes the catalog (importing transformers) and writes the node cache; the
    second reads it, never imports transformers and trains to the identical delta; a changed item text misses."""
    config = {**SEQ, "data-dir": str(data_dir), "client-state-dir": str(tmp_path / "state")}
    cfg = FedConfig.from_run_config(config)
    received = tmp_path / "received.npz"
    np.savez(received, **task.initial_state(cfg, task.client_data(cfg, 0, 2).adapter_names))
    cold = _child(config, received)
    assert cold["transformers"] is True and len(_vector_files(tmp_path / "state")) == 1
    warm = _child(config, received)
    assert warm["transformers"] is False
    assert warm["delta"] == cold["delta"]
    # a changed text: another file (the key covers every id and text), built with the backbone
    data = task.client_data(cfg, 0, 2)
    texts = dict(data.item_texts)
    first = sorted(texts)[0]
    changed = {**texts, first: texts[first] + " refurbished"}
    vectors = seq_vectors.item_vectors(cfg, sorted(changed), changed)
    assert len(_vector_files(tmp_path / "state")) == 2
    expected = frozen_item_vectors(task.backbone_for("tiny"), sorted(changed), changed, max_len=cfg.max_len)
    torch.testing.assert_close(vectors, expected)


def test_changed_backbone_misses(tmp_path: Path) -> None:
    """The key holds the backbone's content hash: changing one byte of a backbone file gives another key, even
    with the hash memoised on disk; a garbage memo is ignored."""
    folder = tmp_path / "backbone"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    memo = tmp_path / "cache"
    cfg = FedConfig(backbone=str(folder), arch="seq")
    texts = {"p1": "red lamp", "p2": "blue desk"}
    key = seq_vectors.vectors_key(cfg, sorted(texts), texts, NodeCache(memo, 1 << 20))
    first = backbone_fingerprint(str(folder), memo)
    assert backbone_fingerprint(str(folder), memo) == first and any((memo / "backbones").iterdir())
    (folder / "model.safetensors").write_bytes(b"\1" + b"\0" * 999)
    os.utime(folder / "model.safetensors", ns=(1, 1))  # a new signature even on a coarse clock
    second = backbone_fingerprint(str(folder), memo)
    assert second != first
    assert seq_vectors.vectors_key(cfg, sorted(texts), texts, NodeCache(memo, 1 << 20)) != key
    for f in (memo / "backbones").iterdir():
        f.write_text("not a digest")
    os.utime(folder / "config.json", ns=(2, 2))
    assert backbone_fingerprint(str(folder), memo) == second  # recomputed: same content, same hash
    assert backbone_fingerprint("tiny") != second


def test_corrupted_or_hostile_vector_file_is_rebuilt(data_dir: Path, tmp_path: Path) -> None:
    """A truncated file, garbage, and a well-formed file with the wrong shape are each discarded and rebuilt;
    the client gets the right vectors every time."""
    cfg = FedConfig.from_run_config({**SEQ, "data-dir": str(data_dir), "client-state-dir": str(tmp_path)})
    texts = task.client_data(cfg, 0, 2).item_texts
    catalog = sorted(texts)
    good = seq_vectors.item_vectors(cfg, catalog, texts)
    (path,) = _vector_files(tmp_path)
    whole = path.read_bytes()
    from safetensors.torch import save_file

    for damage in (lambda: path.write_bytes(whole[: len(whole) // 2]), lambda: path.write_bytes(b"\xff" * 64),
                   lambda: save_file({"vectors": torch.zeros(3, 2)}, str(path)),
                   lambda: save_file({"vectors": torch.full((len(catalog), good.shape[1]), float("nan"))}, str(path))):
        damage()
        again = seq_vectors.item_vectors(cfg, catalog, texts)
        torch.testing.assert_close(again, good)
        assert path.read_bytes() == whole  # rebuilt: the same file as before the damage


def test_node_cache_is_bounded_lru(tmp_path: Path) -> None:
    """Beyond its bound the cache deletes the least recently used files, never the one just written; a file
    bigger than the whole bound is not written; 0 MB writes nothing."""
    cache = NodeCache(tmp_path, max_bytes=3 * 4096 + 500)
    for i in range(3):
        assert cache.save("k", str(i), {"x": torch.zeros(1024)})
        os.utime(cache.path("k", str(i)), ns=(10**9 * (i + 1),) * 2)
    assert cache.load("k", "0") is not None  # now the most recently used
    assert cache.save("k", "3", {"x": torch.zeros(1024)})
    assert [p.name for p in cache.files()] == ["k-0.safetensors", "k-2.safetensors", "k-3.safetensors"]
    assert not cache.save("k", "big", {"x": torch.zeros(10_000)})
    off = node_cache(str(tmp_path / "s"), "", 0)
    assert not off.save("k", "0", {"x": torch.zeros(2)}) and off.load("k", "0") is None


def _text_cfg(tmp_path: Path) -> FedConfig:
    return FedConfig(data_dir="/fake/data", client_state_dir=str(tmp_path), backbone="tiny", batch_size=4, lr=1e-2,
                     adapter_layers=1)


def test_text_lower_states_hit_on_a_new_model_and_survive_a_corrupted_file(tmp_path: Path) -> None:
    """Lower-layer states computed in one run are read from disk by a freshly built model (a new process in a
    deployment) with an identical update; a garbage file is rebuilt without failing the update."""
    cfg = _text_cfg(tmp_path)
    data = fake_client_data(0, {"region": "EU", "season": "holiday"})
    install_fake(cfg, 0, 2, data)
    sent = task.initial_state(cfg, data.adapter_names)
    hp = task.RoundHParams(1, 1, 4, 1e-2, 0.0)
    task.MODELS.clear()
    first = task.local_train(cfg, data, sent, hp)
    files = sorted((tmp_path / "cache").glob(f"{lower_states.KIND}-*"))
    assert len(files) == 1
    task.MODELS.clear()
    second = task.local_train(cfg, data, sent, hp)
    cache = task.model_for(cfg).lower_cache
    assert isinstance(cache, lower_states.DiskLowerCache) and cache.disk_hits > 0 and not cache.new
    for key in first.delta:
        np.testing.assert_allclose(second.delta[key], first.delta[key], rtol=1e-5, atol=1e-7)
    files[0].write_bytes(b"garbage" * 50)
    task.MODELS.clear()
    third = task.local_train(cfg, data, sent, hp)
    for key in first.delta:
        np.testing.assert_allclose(third.delta[key], first.delta[key], rtol=1e-5, atol=1e-7)
    from safetensors import safe_open

    with safe_open(str(files[0]), framework="pt") as fh:  # rebuilt, readable again
        assert len(list(fh.keys())) > 0
    task.MODELS.clear()


CFG = FedConfig(data_dir="/fake/data", backbone="tiny", adapter_kind="lora", batch_size=4, lr=1e-2)


def _context(pid: int) -> Context:
    return Context(run_id=1, node_id=100 + pid, node_config={"partition-id": pid, "num-partitions": 3},
                   state=RecordDict(), run_config=CFG.to_run_config())


def test_train_handler_folds_the_evaluation_of_the_received_state() -> None:
    """Asked in the train config, the train reply carries exactly the sums an evaluate message on the same
    state returns, with held-back banks (eval-skip) not routed through; not asked, no such record."""
    data = fake_client_data(2, {"region": "EU", "season": "regular"})
    install_fake(CFG, 2, 3, data)
    sent = task.initial_state(CFG, data.adapter_names)
    sent = {k: v + 0.01 * (k.startswith("region=EU")) for k, v in sent.items()}  # the segment bank matters
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in sent.items()})
    served_only = {k: v for k, v in sent.items() if not k.startswith("region=EU")}
    expected = client_app.app(Message(RecordDict({ARRAYS: ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in served_only.items()})}), 100, "evaluate"), _context(2))
    config = {"server-round": 2, "lr": 1e-2, EVAL_IN_TRAIN: True, EVAL_SKIP: ["region=EU"]}
    reply = client_app.app(Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(config)}), 100, "train"),
                           _context(2))
    assert not reply.has_error(), reply.error
    folded = dict(reply.content.metric_records[EVAL_RECORD])
    assert folded == dict(expected.content.metric_records[METRICS])
    assert folded[metric_key("overall", "users")] == len(data.records)
    plain = client_app.app(Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({"server-round": 2})}), 100,
                                   "train"), _context(2))
    assert EVAL_RECORD not in plain.content.keys()
    with pytest.raises(ValueError, match=EVAL_SKIP):
        client_app.app(Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(
            {"server-round": 2, EVAL_IN_TRAIN: True, EVAL_SKIP: [1, 2]})}), 100, "train"), _context(2))


def test_strategy_asks_flags_held_back_banks_and_pools_folded_evaluations() -> None:
    """Train messages carry the flag only to the nodes asked, with the held-back banks; folded records are taken
    out of the train replies (which then aggregate as usual) and pooled; a bad one is rejected and counted."""
    banks = {GLOBAL: {"global::w": np.zeros(2, np.float32)}, "region=EU": {"region=EU::w": np.zeros(2, np.float32)}}
    strategy = AdapterBankStrategy(banks, ServerOptimizer(OptimizerConfig("fedavg")),
                                   ValidationConfig(100.0, ("region",), ("region",), 10**6), 1)
    clients = [client(1, 0, ("region=EU",)), client(2, 1, ("region=EU",)), client(3, 2)]
    messages, sent = strategy.train_messages(clients, {"server-round": 1}, 1, evaluate={1, 2})
    configs = {m.metadata.dst_node_id: dict(m.content.config_records[CONFIG]) for m in messages}
    assert configs[1][EVAL_IN_TRAIN] is True and configs[1][EVAL_SKIP] == ["region=EU"]
    assert EVAL_IN_TRAIN not in configs[3]
    replies = []
    for m in messages:
        r = train_reply(m, {k: np.full(2, 0.1, np.float32) for k in sent[m.metadata.dst_node_id]},
                        {b: 10 for b in {k.split("::")[0] for k in sent[m.metadata.dst_node_id]}})
        node = m.metadata.dst_node_id
        if node == 1:
            r.content[EVAL_RECORD] = MetricRecord(eval_sums({"overall": (4, 0.5)}, 4))
        elif node == 2:
            r.content[EVAL_RECORD] = MetricRecord({"stolen-gradient": 1.0})
        replies.append(r)
    folded = strategy.take_folded(replies, {1, 2})
    assert set(folded) == {1, 2} and all(EVAL_RECORD not in r.content.keys() for r in replies)
    from server.strategy import RoundStats

    stats = RoundStats()
    strategy.aggregate_train(replies, sent, {c.node_id: c for c in clients}, stats)
    assert stats.rejected == 0 and stats.replied == 3
    pooled = strategy.pool_evaluation([], {c.node_id: c for c in clients[:2]}, folded)
    assert pooled["eval_clients"] == 1 and pooled["ndcg@10"] == pytest.approx(0.5)
    assert pooled["eval_rejected_reasons"] == {"eval-metrics": 1}


@pytest.mark.slow
def test_eval_in_train_run_records_the_same_metrics_with_one_message_per_round(
        data_dir: Path, tmp_path: Path) -> None:
    """A real 2-round simulation with eval-in-train: rounds 0 and 1 are evaluated inside the next round's exchange
    (2 of the 3 nodes train and evaluate in one message, the third gets an evaluate message in the same exchange),
    the last round on its own; every node's evaluation arrives. Round 0's state is the same in every run, and its
    folded metrics equal those of a run with separate evaluate messages (the later rounds' training cohorts are
    drawn over Flower's per-run node ids, so they differ between runs)."""
    lines = {}
    for fold in (False, True):
        out = tmp_path / f"run-{fold}"
        simulate(SimOptions(out=out, data=data_dir, clients=3, rounds=2, backbone="tiny", flwr_home=tmp_path / "flwr",
                            quiet=True, timeout=900, config={**SEQ, "eval-in-train": fold, "fraction-train": 0.6}))
        lines[fold] = [json.loads(row) for row in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row.get("eval_folded", False) for row in lines[True]] == [True, True, False]
    for plain, folded in zip(lines[False], lines[True], strict=True):
        assert folded["eval_clients"] == plain["eval_clients"] == 3 and folded["users"] == plain["users"]
        assert folded.get("clients_sampled", 2) == 2 and folded["eval_rejected"] == 0
    for name in ("ndcg@10", "hr@10", "users"):
        assert lines[True][0][name] == pytest.approx(lines[False][0][name], rel=1e-9), name


def test_the_node_decides_its_cache_size_and_folder(data_dir: Path, tmp_path: Path) -> None:
    """`fedadapt deploy node --cache-mb` reaches the ClientApp through the node config (parsed by Flower's own
    parser) and wins over the run config's node-cache-mb; the cache sits under the node's state folder."""
    from flwr.common.config import parse_config_args

    from deployment.node import NodeSpec, node_config

    spec = NodeSpec(superlink="127.0.0.1:9092", root_cert=tmp_path / "ca.pem", data=data_dir, state=tmp_path / "st",
                    partition_id=0, num_partitions=2, cache_mb=7)
    parsed = parse_config_args([node_config(spec)])
    assert parsed["node-cache-mb"] == 7
    context = Context(run_id=1, node_id=1, node_config=parsed, state=RecordDict(),
                      run_config={**FedConfig(**{"node_cache_mb": 99}).to_run_config(), **SEQ})
    cfg, _ = client_app.node_settings(context)
    assert cfg.node_cache_mb == 7
    cache = node_cache(cfg.client_state_dir, cfg.data_dir, cfg.node_cache_mb)
    assert cache.root == (tmp_path / "st" / "client" / "cache").resolve() and cache.max_bytes == 7 << 20
    with pytest.raises(ValueError, match="--cache-mb"):
        NodeSpec(superlink="127.0.0.1:9092", root_cert=tmp_path / "ca.pem", data=data_dir, state=tmp_path / "st",
                 partition_id=0, num_partitions=2, cache_mb=-1)
