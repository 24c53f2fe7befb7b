"""Real Flower simulations (tiny backbone, 3 clients, region and season segments), run through `flwr run`.

One module-scoped set of runs serves all tests, because each run pays Flower's start-up (SuperLink, app
install, Ray): an uninterrupted 4-round run, and a run stopped after round 2 then resumed. Every run starts
its own SuperLink on a free 127.0.0.1 port with its own FLWR_HOME under the test's tmp folder and stops it by
PID (simulations/runner/flower.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.task import backbone_for, client_data, local_train
from common.protocol import FedConfig, RoundHParams, looks_like_backbone
from server.aggregate import aggregate_banks, split_banks
from server.app import initial_banks
from server.checkpoint import Checkpoint, latest_complete_round, load_checkpoint
from server.validate import REASONS
from simulations.runner.run import SimOptions, simulate
from tests.bank_checks import assert_trained_close

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

CLIENTS = 3
ROUNDS = 4
OVERRIDES = {"min-segment-clients": 1, "lr": 0.005, "batch-size": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fedsim")
    data = root / "data"
    write_marketplace(generate_marketplace(120, 300, seed=3), data)

    def opts(name: str, **kw: object) -> SimOptions:
        return SimOptions(out=root / name, data=data, clients=CLIENTS, rounds=ROUNDS, backbone="tiny",
                          flwr_home=root / f"flwr-{name}", quiet=True, timeout=900, config=dict(OVERRIDES),
                          **kw)  # type: ignore[arg-type]

    simulate(opts("full"))
    simulate(opts("resumed", stop_after_round=2))
    (root / "resumed" / "stopped-ckpt-round").write_text(str(latest_complete_round(root / "resumed" / "checkpoints")))
    simulate(opts("resumed", resume=True))
    return {"full": root / "full", "resumed": root / "resumed"}


def _ckpt(run: Path, rnd: int) -> Checkpoint:
    return load_checkpoint(run / "checkpoints", rnd)


def _metrics(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_aggregated_adapters_equal_weighted_per_segment_mean(runs: dict[str, Path]) -> None:
    """Rounds 1 and 2 of the real run equal a direct recomputation: every client's local delta, averaged per
    bank weighted by the clients' examples in that bank (global over all clients, each segment over its own)."""
    full = runs["full"]
    cfg = FedConfig.from_run_config(_ckpt(full, 1).state["run_config"])
    banks = initial_banks(cfg, sorted(n for n in _ckpt(full, 1).banks if n != "global"))
    for rnd in (1, 2):
        deltas, weights = [], []
        for pid in range(CLIENTS):
            data = client_data(cfg, pid, CLIENTS)
            received = {k: v for name in data.adapter_names for k, v in banks[name].items()}
            hp = RoundHParams(rnd, cfg.local_epochs, cfg.batch_size, cfg.lr, 0.0)
            result = local_train(cfg, data, received, hp)
            deltas.append(result.delta)
            weights.append(result.bank_examples)
        agg = aggregate_banks(deltas, weights, cfg.min_segment_clients)
        expected = {name: dict(arrays) for name, arrays in banks.items()}
        for name, mean in agg.mean_deltas.items():
            expected[name] = {k: banks[name][k] + mean[k] for k in banks[name]}
        got = _ckpt(full, rnd).banks
        assert set(got) == set(expected)
        assert len({n for n in got if n.startswith("region=")}) >= 2 and any(n.startswith("season=") for n in got)
        assert_trained_close(got, expected, banks, label=f"round {rnd}")
        assert any(np.abs(v).max() > 0 for v in got["global"].values())
        banks = got


def test_backbone_never_leaves_a_client(runs: dict[str, Path]) -> None:
    """Replies carry only the adapters they were sent: nothing was rejected (the server checks every key),
    checkpoints hold adapter keys only, and bytes up per client match the adapter tensors, far below the
    backbone's size."""
    full = runs["full"]
    rows = [r for r in _metrics(full) if r["round"] >= 1]
    assert all(r["clients_rejected"] == 0 and r["clients_dropped"] == 0 for r in rows)
    banks = _ckpt(full, ROUNDS).banks
    keys = [k for arrays in banks.values() for k in arrays]
    assert keys and not any(looks_like_backbone(k) for k in keys)
    cfg = FedConfig.from_run_config(_ckpt(full, 1).state["run_config"])
    per_client_adapter_bytes = []
    for pid in range(CLIENTS):
        names = client_data(cfg, pid, CLIENTS).adapter_names
        per_client_adapter_bytes.append(sum(v.nbytes for n in names for v in banks[n].values()))
    backbone_bytes = sum(p.numel() * p.element_size() for p in backbone_for("tiny").model.parameters())
    for r in rows:
        up = float(r["bytes_up_per_client"])  # type: ignore[arg-type]
        assert np.mean(per_client_adapter_bytes) <= up <= np.mean(per_client_adapter_bytes) * 1.1 + 8192
        assert up < backbone_bytes / 2
    assert set(REASONS) >= set().union(*(r["rejected_reasons"] for r in rows))  # type: ignore[arg-type]


def test_resume_matches_uninterrupted_run(runs: dict[str, Path]) -> None:
    """Stopped after round 2 of 4 and resumed, the run ends with the same adapters and per-round metrics."""
    resumed, full = runs["resumed"], runs["full"]
    assert (resumed / "stopped-ckpt-round").read_text() == "2"
    assert (resumed / "run-complete.json").is_file()
    a, b = _ckpt(full, ROUNDS).banks, _ckpt(resumed, ROUNDS).banks
    assert_trained_close(b, a, _ckpt(full, 0).banks, label="resumed")
    rows_a, rows_b = _metrics(full), _metrics(resumed)
    assert [r["round"] for r in rows_b] == list(range(0, ROUNDS + 1))  # round 0: before training
    assert [r["ndcg@10"] for r in rows_b] == pytest.approx([r["ndcg@10"] for r in rows_a], abs=1e-6)


def test_run_writes_results(runs: dict[str, Path]) -> None:
    """A run leaves metrics.jsonl, summary.json/md, both plots and checkpoints for every round."""
    full = runs["full"]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["rounds"] == ROUNDS and summary["client_updates"] == CLIENTS * ROUNDS
    assert "| round |" in (full / "summary.md").read_text()
    assert (full / "plots" / "ndcg_by_segment.png").stat().st_size > 1000
    assert (full / "plots" / "bytes_per_round.png").stat().st_size > 1000
    assert latest_complete_round(full / "checkpoints") == ROUNDS
    assert split_banks({k: v for arrays in _ckpt(full, 1).banks.values() for k, v in arrays.items()})


def test_fed_vs_central_scores_the_same_users(runs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """bench fed-vs-central scores the checkpoint on fedadapt train's users; the round-0 adapters (identity)
    rank exactly as the bare backbone does, and a mismatched evaluation sample is refused."""
    from cli.main import main

    data, central = runs["full"].parent / "data", tmp_path / "central"
    assert main(["train", "--data", str(data), "--mode", "no-adapter", "--backbone", "tiny", "--eval-users", "40",
                 "--max-len", "64", "--out", str(central)]) == 0
    base = json.loads((central / "summary.json").read_text())["metrics"]["overall"]
    argv = ["bench", "fed-vs-central", "--data", str(data), "--central", str(central), "--federated",
            str(runs["full"]), "--eval-users", "40"]
    assert main([*argv, "--round", "0", "--out", str(tmp_path / "r0")]) == 0
    r0 = json.loads((tmp_path / "r0" / "comparison.json").read_text())
    assert r0["eval_users"] == 40 and r0["federated"]["round"] == 0
    assert r0["federated"]["metrics"]["overall"]["ndcg@10"] == pytest.approx(base["ndcg@10"], abs=1e-9)
    assert main([*argv[:-2], "--out", str(tmp_path / "last")]) == 0  # --eval-users defaults to the central run's
    last = json.loads((tmp_path / "last" / "comparison.json").read_text())
    assert last["eval_users"] == 40 and last["federated"]["round"] == ROUNDS
    assert "region=" in " ".join(last["federated"]["adapters"])
    assert f"| federated (round {ROUNDS}) |" in (tmp_path / "last" / "table.md").read_text()
    capsys.readouterr()
    assert main([*argv[:-1], "30"]) == 2
    assert "must match" in capsys.readouterr().err
    other = argv.copy()
    other[other.index("--data") + 1] = str(tmp_path)
    assert main(other) == 2
    assert "was trained on" in capsys.readouterr().err
