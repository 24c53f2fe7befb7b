"""arch=seq in the federation: run config, identical starting banks, FedProx, server validation, and a real
2-round Flower simulation (tiny backbone, 3 clients, seq-dim 16, seq-max-len 20) scored by bench fed-vs-central.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import seq_task, task
from common.names import GLOBAL, SEQ
from common.protocol import FedConfig, RoundHParams
from common.rec.seq_model import SeqRecModel
from common.rec.seq_train import bank_counts, evaluate_seq
from server.app import initial_banks
from server.checkpoint import load_checkpoint
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig
from simulations.runner.run import SimOptions, simulate
from tests.bank_checks import assert_trained_close
from tests.fed_fakes import set_task_identity
from tests.fed_replies import client, train_reply

CLIENTS = 3
ROUNDS = 2
SEQ_OVERRIDES = {"arch": SEQ, "seq-dim": 16, "seq-max-len": 20, "batch-size": 8, "lr": 5e-3,
                 "min-segment-clients": 1}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fedseq-data") / "data"
    write_marketplace(generate_marketplace(120, 300, seed=3), folder)
    return folder


@pytest.fixture(scope="module")
def seq_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fedseq")
    simulate(SimOptions(out=root / "run", data=data_dir, clients=CLIENTS, rounds=ROUNDS, backbone="tiny",
                        flwr_home=root / "flwr", quiet=True, timeout=900, config=dict(SEQ_OVERRIDES)))
    return root / "run"


def _cfg(data_dir: Path, **kw: object) -> FedConfig:
    values = {**SEQ_OVERRIDES, "data-dir": str(data_dir), **kw}
    return FedConfig.from_run_config(values)


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in arrays.values()))


def test_run_config_refuses_bad_seq_values() -> None:
    """arch, seq-dim and seq-max-len are validated with the key named; seq ignores adapter-kind (a mixture kind
    does not take its segment banks away)."""
    for values, match in (({"arch": "rnn"}, "arch 'rnn' is not one of text, seq"),
                          ({"seq-dim": 0}, "seq-dim must be >= 1"), ({"seq-dim": 15}, "seq-dim must be a multiple"),
                          ({"seq-max-len": 0}, "seq-max-len must be >= 1"),
                          ({"seq-dim": "wide"}, "run-config seq-dim='wide' is not an integer")):
        with pytest.raises(ValueError, match=match):
            FedConfig.from_run_config(values)
    cfg = FedConfig.from_run_config({"arch": "seq", "seq-dim": 32, "seq-max-len": 50})
    assert (cfg.arch, cfg.seq_dim, cfg.seq_max_len) == ("seq", 32, 50)
    assert FedConfig.from_run_config(cfg.to_run_config()) == cfg
    assert FedConfig().arch == "text"
    assert FedConfig(arch="seq", adapter_kind="mixture").adapter_segment_keys == ("region", "season")
    assert FedConfig(arch="text", adapter_kind="mixture").adapter_segment_keys == ()


def test_server_and_clients_start_from_identical_banks(data_dir: Path) -> None:
    """The server's starting banks (zero text vectors) equal a client's fresh model on real text vectors, key for
    key; the item rows cover the whole catalog plus padding."""
    cfg = _cfg(data_dir)
    data = task.client_data(cfg, 0, CLIENTS)
    server = task.initial_state(cfg, data.adapter_names)
    vectors = seq_task.text_vectors(cfg, task.backbone_for(cfg.backbone), data.item_texts)
    assert float(vectors.abs().sum()) > 0
    client_side = seq_task.arrays(seq_task.new_model(cfg, data.item_texts, vectors, data.adapter_names),
                                  data.adapter_names)
    assert set(server) == set(client_side) and len(data.adapter_names) >= 2
    for key in server:
        np.testing.assert_array_equal(server[key], client_side[key], err_msg=key)
    assert server["global::item_rows"].shape == (len(data.item_texts) + 1, 16)


def test_fedprox_pulls_seq_training_towards_the_received_banks(data_dir: Path) -> None:
    """With a large proximal weight the seq delta is smaller than without; both are non-zero."""
    cfg = _cfg(data_dir)
    data = task.client_data(cfg, 1, CLIENTS)
    received = task.initial_state(cfg, data.adapter_names)
    free = task.local_train(cfg, data, received, RoundHParams(1, 2, 8, 5e-3, 0.0))
    prox = task.local_train(cfg, data, received, RoundHParams(1, 2, 8, 5e-3, 1000.0))
    assert 0 < _norm(prox.delta) < _norm(free.delta)


def test_seq_reply_with_wrong_item_rows_shape_is_rejected_and_round_goes_on() -> None:
    """One client sends item rows one row short (a client on another catalog): that reply is refused for its
    shape, the other client's delta still updates the global and its own segment bank, the bad client's
    segment bank stays where it was."""
    set_task_identity()
    cfg = FedConfig(arch=SEQ, seq_dim=8, seq_max_len=10)
    texts = {f"p{i:03d}": f"item {i}" for i in range(40)}
    names = [GLOBAL, "region=EU", "region=NA"]
    banks_flat = seq_task.arrays(seq_task.new_model(cfg, texts, torch.zeros(40, 4), names), names)
    banks = {n: {k: v for k, v in banks_flat.items() if k.startswith(n + "::")} for n in names}
    initial = {n: {k: v.copy() for k, v in b.items()} for n, b in banks.items()}
    strategy = AdapterBankStrategy(banks, ServerOptimizer(OptimizerConfig()), ValidationConfig(100.0, ("region",)), 1)
    clients = [client(11, 0, ("region=EU",)), client(12, 1, ("region=NA",))]
    messages, sent = strategy.train_messages(clients, {}, 1)
    rng = np.random.default_rng(0)
    deltas = {node: {k: (0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in arrays.items()}
              for node, arrays in sent.items()}
    deltas[12]["global::item_rows"] = np.zeros((40, 8), np.float32)  # 40 rows, the catalog needs 41
    replies = [train_reply(m, deltas[m.metadata.dst_node_id], {b: 30 for b in (GLOBAL, "region=EU", "region=NA")
                                                              if any(k.startswith(b + "::")
                                                                     for k in sent[m.metadata.dst_node_id])})
               for m in messages]
    stats = RoundStats(sampled=2)
    strategy.aggregate_train(replies, sent, {c.node_id: c for c in clients}, stats)
    assert stats.rejected_reasons == {"shape": 1} and stats.replied == 2 and stats.num_examples == 30
    for key in initial[GLOBAL]:
        np.testing.assert_allclose(strategy.banks[GLOBAL][key], initial[GLOBAL][key] + deltas[11][key], atol=1e-7)
    for key in initial["region=EU"]:
        np.testing.assert_allclose(strategy.banks["region=EU"][key], initial["region=EU"][key] + deltas[11][key],
                                   atol=1e-7)
    for key in initial["region=NA"]:
        np.testing.assert_array_equal(strategy.banks["region=NA"][key], initial["region=NA"][key])


def _rows(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_seq_simulation_trains_weights_by_targets_and_scores_in_range(seq_run: Path) -> None:
    """A real 2-round seq federation: round 1's banks equal every client's local seq delta averaged per bank
    with weights = its training targets in that bank (seq_train.bank_counts over its users' typed histories);
    the global bank moved in every tensor; every segment a client holds has a bank, and
    those with targets moved; every evaluation metric is finite and in [0, 1]; no reply was refused."""
    ckpt1 = load_checkpoint(seq_run / "checkpoints", 1)
    cfg = FedConfig.from_run_config(ckpt1.state["run_config"])
    assert cfg.arch == SEQ and cfg.seq_dim == 16
    held = set()
    per_client = []
    banks0 = initial_banks(cfg, sorted(n for n in ckpt1.banks if n != GLOBAL))
    for pid in range(CLIENTS):
        data = task.client_data(cfg, pid, CLIENTS)
        held.update(data.segment_names)
        counts = bank_counts(data.records, cfg.segment_key_tuple, cfg.seq_max_len)  # a user with no target: 0
        received = {k: v for name in data.adapter_names for k, v in banks0[name].items()}
        result = task.local_train(cfg, data, received, RoundHParams(1, cfg.local_epochs, cfg.batch_size, cfg.lr, 0.0))
        assert result.bank_examples == {b: counts.get(b, 0) for b in data.adapter_names}
        assert result.num_examples == counts[GLOBAL] > 0
        per_client.append((result.delta, counts))
    assert set(ckpt1.banks) == {GLOBAL, *held}
    assert sum(n.startswith("region=") for n in held) >= 2 and any(n.startswith("season=") for n in held)
    expected: dict[str, dict[str, np.ndarray]] = {}
    for bank, arrays in ckpt1.banks.items():
        cohort = [(d, c[bank]) for d, c in per_client if c.get(bank, 0) > 0]
        total = sum(w for _, w in cohort)
        expected[bank] = {key: banks0[bank][key] + (sum(w * d[key] for d, w in cohort) / total if cohort else 0)
                          for key in arrays}
        if cohort:
            assert any(np.abs(value - banks0[bank][key]).max() > 0 for key, value in arrays.items()), bank
    assert_trained_close(ckpt1.banks, expected, banks0, label="seq round 1")
    final = load_checkpoint(seq_run / "checkpoints", ROUNDS).banks[GLOBAL]
    assert all(np.abs(final[k] - banks0[GLOBAL][k]).max() > 0 for k in final)
    rows = _rows(seq_run)
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert rows[1]["num_examples"] == sum(c[GLOBAL] for _, c in per_client)
    for row in rows:
        assert row.get("clients_rejected", 0) == 0 and row["eval_rejected"] == 0
        for scores in (row, *row["segments"].values()):  # type: ignore[attr-defined]
            for name in ("ndcg@10", "hr@10", "coverage"):
                assert math.isfinite(scores[name]) and 0 <= scores[name] <= 1, (row["round"], name)
        assert row["users"] > 0


@pytest.mark.slow
def test_fed_vs_central_scores_a_seq_run_on_the_central_users(seq_run: Path, data_dir: Path, tmp_path: Path) -> None:
    """bench fed-vs-central rebuilds the seq run's final banks on this machine's text vectors and scores them
    on the central run's 40 users: the same figures as the model a client builds from those banks."""
    from cli.main import main
    from common.rec.experiment import eval_sample, load_examples

    central = tmp_path / "central"
    assert main(["train", "--data", str(data_dir), "--arch", "seq", "--mode", "global-adapter", "--backbone", "tiny",
                 "--epochs", "1", "--seq-dim", "16", "--seq-max-len", "20", "--eval-users", "40",
                 "--out", str(central)]) == 0
    assert main(["bench", "fed-vs-central", "--data", str(data_dir), "--central", str(central), "--federated",
                 str(seq_run), "--out", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert result["eval_users"] == 40 and result["federated"]["arch"] == SEQ
    assert f"| federated seq (round {ROUNDS}) |" in (tmp_path / "cmp" / "table.md").read_text()
    ckpt = load_checkpoint(seq_run / "checkpoints", ROUNDS)
    cfg = FedConfig.from_run_config({**ckpt.state["run_config"], "data-dir": str(data_dir)})
    records, texts = load_examples(data_dir, seed=0, history=cfg.history)
    names = [GLOBAL, *sorted(n for n in ckpt.banks if n != GLOBAL)]
    model = seq_task.model_for(cfg, task.backbone_for(cfg.backbone), texts)
    assert isinstance(model, SeqRecModel)
    seq_task.load_received(model, names, {k: v for bank in ckpt.banks.values() for k, v in bank.items()})
    model.serving = frozenset({GLOBAL, *ckpt.state["served_segments"]})
    expected = evaluate_seq(model, eval_sample(records, 40, 0))["overall"]
    got = result["federated"]["metrics"]["overall"]
    assert got["ndcg@10"] == pytest.approx(expected["ndcg@10"], abs=1e-9)  # type: ignore[index]
    assert got["hr@10"] == pytest.approx(expected["hr@10"], abs=1e-9)  # type: ignore[index]


def test_bench_bytes_reports_a_catalog_sized_seq_row(capsys: pytest.CaptureFixture[str]) -> None:
    """bench bytes measures arch=seq's banks (global + one region + one season): 300 more catalog items add
    300 x (seq-dim item rows + 1 global prior + 2 segment bias deltas) parameters, about 4 bytes each."""
    from cli.main import main

    sizes = {}
    for items in (300, 600):
        assert main(["bench", "bytes", "--backbone", "tiny", "--kinds", "seq", "--seq-items", str(items),
                     "--seq-dim", "16"]) == 0
        row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| seq")][0]
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"seq ({items} items, dim 16)"
        sizes[items] = (int(cells[1]), int(cells[3]))
    assert sizes[600][0] - sizes[300][0] == 300 * (16 + 1 + 2)
    assert sizes[600][1] - sizes[300][1] == pytest.approx(4 * 300 * (16 + 1 + 2), rel=0.01)
    assert 4 * sizes[300][0] <= sizes[300][1] <= 4 * sizes[300][0] + 32_768


@pytest.mark.slow
def test_bench_quality_puts_the_federated_run_beside_the_baselines(seq_run: Path, data_dir: Path,
                                                                   tmp_path: Path) -> None:
    """`bench quality --federated RUN` scores the run's last checkpoint on the same users with both protocols
    (the sampled figure is the one `fed-vs-central` gives for those users), and refuses a history mismatch."""
    from cli.main import main

    out = tmp_path / "q"
    assert main(["bench", "quality", "--data", str(data_dir), "--modes", "", "--federated", str(seq_run),
                 "--backbone", "tiny", "--eval-users", "40", "--out", str(out)]) == 0
    result = json.loads((out / "quality.json").read_text())
    row = result["rows"][f"federated seq (round {ROUNDS})"]
    assert row["kind"] == "federated" and row["params"]["round"] == ROUNDS
    assert row["sampled"]["users"] == 40 and row["full"]["protocol"] == "full"
    assert {"popularity", "als"} <= set(result["rows"])
    assert main(["bench", "quality", "--data", str(data_dir), "--modes", "", "--skip-baselines", "--federated",
                 str(seq_run), "--history", "session", "--backbone", "tiny", "--out", str(tmp_path / "r")]) == 2
