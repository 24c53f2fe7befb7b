"""`simulations.runner.run.simulate` (what `fedadapt simulate --secure-aggregation` runs: real `flwr run`, Ray,
SuperLink on 127.0.0.1, tiny backbone, 3 clients, 2 rounds) in both secure modes. Each round's banks must equal a
direct recomputation of the plain round (every client's local delta, weighted per bank) within quantization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.task import client_data, local_train
from common.protocol import FedConfig, RoundHParams
from server.aggregate import aggregate_banks
from server.app import initial_banks
from server.checkpoint import load_checkpoint
from simulations.runner.run import SimOptions, simulate

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

CLIENTS = 3
ROUNDS = 2
OVERRIDES = {"min-segment-clients": 2, "lr": 0.005, "batch-size": 8}  # secure aggregation needs >= 2
MODES = ("segment", "segment-hidden")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("secagg-sim")
    data = root / "data"
    write_marketplace(generate_marketplace(120, 300, seed=3), data)
    out = {}
    for mode in MODES:
        out[mode] = root / mode
        simulate(SimOptions(out=out[mode], data=data, clients=CLIENTS, rounds=ROUNDS, backbone="tiny",
                            flwr_home=root / f"flwr-{mode}", quiet=True, timeout=900,
                            config={**OVERRIDES, "secure-aggregation": mode}))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_secure_simulation_equals_the_plain_weighted_means(runs: dict[str, Path], mode: str) -> None:
    """Rounds 1 and 2: the checkpointed banks equal plain FedAvg per bank on the clients' own local deltas."""
    run = runs[mode]
    cfg = FedConfig.from_run_config(load_checkpoint(run / "checkpoints", 1).state["run_config"])
    plain_cfg = FedConfig.from_run_config({**cfg.to_run_config(), "secure-aggregation": "off", "secagg-banks": ""})
    banks = initial_banks(plain_cfg, sorted(n for n in load_checkpoint(run / "checkpoints", 1).banks if n != "global"))
    for rnd in range(1, ROUNDS + 1):
        deltas, weights = [], []
        for pid in range(CLIENTS):
            data = client_data(plain_cfg, pid, CLIENTS)
            received = {k: v for name in data.adapter_names if name in banks for k, v in banks[name].items()}
            result = local_train(plain_cfg, data, received, RoundHParams(rnd, cfg.local_epochs, cfg.batch_size,
                                                                         cfg.lr, 0.0))
            deltas.append(result.delta)
            weights.append(result.bank_examples)
        agg = aggregate_banks(deltas, weights, cfg.min_segment_clients)
        expected = {name: {k: v + agg.mean_deltas[name][k] for k, v in arrays.items()} if name in agg.mean_deltas
                    else arrays for name, arrays in banks.items()}
        got = load_checkpoint(run / "checkpoints", rnd).banks
        assert set(got) == set(expected)
        for name, arrays in expected.items():
            for key, value in arrays.items():
                np.testing.assert_allclose(got[name][key], value, atol=1e-5, err_msg=f"{mode} round {rnd} {key}")
        banks = got


def test_secure_rounds_complete_and_hidden_runs_get_the_public_bank_list(runs: dict[str, Path]) -> None:
    """No round aborted or dropped a client; the hidden run's config carries the data's segment banks."""
    for mode, run in runs.items():
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rounds = [x for x in lines if x["round"] >= 1]
        assert len(rounds) == ROUNDS
        assert all(x["secure_aggregation"] == mode and x["secagg_aborted"] == "" for x in rounds)
        assert all(x["clients_dropped"] == 0 and x["clients_rejected"] == 0 for x in rounds)
    toml = (runs["segment-hidden"] / "run_config.toml").read_text()
    assert 'secagg-banks = "region=' in toml and "season=holiday" in toml
