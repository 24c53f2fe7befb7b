"""Run-config parsing, metric keys, FedProx plumbing and the partitioner every node must agree on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.partition import partition_user_ids
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import task
from common.federation.client_data import client_data
from common.protocol import FedConfig, RoundHParams, metric_key, parse_metric_key, segment_adapter_names
from tests.fed_fakes import fake_client_data


def test_run_config_round_trip_and_validation() -> None:
    """Flower's flat kebab-case run config parses into the typed config and back; bad values name the key."""
    cfg = FedConfig(num_server_rounds=4, segment_keys="region", fraction_train=0.5, resume=True)
    assert FedConfig.from_run_config(cfg.to_run_config()) == cfg
    assert FedConfig.from_run_config({"resume": "true", "lr": "0.01"}).lr == 0.01
    with pytest.raises(ValueError, match="unknown run-config key 'num-rounds'"):
        FedConfig.from_run_config({"num-rounds": 3})
    with pytest.raises(ValueError, match="fraction-train"):
        FedConfig(fraction_train=1.5)
    with pytest.raises(ValueError, match="segment key"):
        FedConfig(segment_keys="region,bad key")
    assert FedConfig(adapter_kind="mixture").adapter_segment_keys == ()
    assert FedConfig(adapter_kind="lora").adapter_segment_keys == ("region", "season")


def test_config_refuses_what_would_silently_run_something_else() -> None:
    """Unknown kinds and strategies, FedProx without mu (which is FedAvg) and mu without FedProx are refused;
    FedAdam's server learning rate defaults to Flower's 0.1, not 1.0 (its first step is ~lr * sign(delta))."""
    for kwargs, match in (({"adapter_kind": "nosuchkind"}, "adapter-kind"), ({"strategy": "foo"}, "strategy"),
                          ({"partition_mode": "x"}, "partition-mode"), ({"strategy": "fedprox"}, "proximal-mu"),
                          ({"proximal_mu": 0.1}, "proximal-mu")):
        with pytest.raises(ValueError, match=match):
            FedConfig(**kwargs)  # type: ignore[arg-type]
    assert FedConfig(strategy="fedadam").effective_server_lr == 0.1
    assert FedConfig(strategy="fedavg").effective_server_lr == 1.0
    assert FedConfig(strategy="fedadam", server_lr=0.02).effective_server_lr == 0.02
    assert FedConfig(strategy="fedprox", proximal_mu=0.01).proximal_mu == 0.01


def test_metric_keys_and_segment_names() -> None:
    """Per-segment metric keys parse back; a client's segment adapters follow the configured keys only."""
    assert parse_metric_key(metric_key("region=Middle East & Africa", "ndcg@10")) == (
        "region=Middle East & Africa", "ndcg@10")
    assert parse_metric_key("train-loss") is None
    segs = {"region": "Europe", "season": "holiday", "age_band": "18-24"}
    assert segment_adapter_names(segs, ("region", "season")) == ["region=Europe", "season=holiday"]


def test_round_config_carries_fedprox_mu() -> None:
    """The proximal weight travels in the round config and pulls local training towards the received state."""
    cfg = FedConfig(data_dir="/fake/prox", backbone="tiny", batch_size=4, lr=0.05)
    hp = RoundHParams.from_config({"server-round": 2, "proximal-mu": 0.5}, cfg)
    assert hp.proximal_mu == 0.5 and hp.server_round == 2 and hp.lr == 0.05
    data = fake_client_data(7, {"region": "EU", "season": "regular"}, users=8)
    received = task.initial_state(cfg, data.adapter_names)
    free = task.local_train(cfg, data, received, RoundHParams(1, 3, 4, 0.05, 0.0))
    prox = task.local_train(cfg, data, received, RoundHParams(1, 3, 4, 0.05, 1000.0))
    norm = lambda d: float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in d.values())))  # noqa: E731
    assert 0 < norm(prox.delta) < norm(free.delta)


def test_partition_is_deterministic_disjoint_and_per_segment() -> None:
    """Every node computes the same shards; shards are disjoint, cover the users, one region each."""
    market = generate_marketplace(200, 300, seed=1)
    a = partition_user_ids(market, 7, "per-segment", seed=3)
    b = partition_user_ids(market, 7, "per-segment", seed=3)
    assert a == b and len(a) == 7
    flat = [u for shard in a for u in shard]
    assert len(flat) == len(set(flat)) == len(market.users)
    region = dict(zip(market.users["user_id"], market.users["region"], strict=True))
    assert all(len({region[u] for u in shard}) == 1 for shard in a)
    iid = partition_user_ids(market, 7, "iid", seed=3)
    assert sorted(len(s) for s in iid)[-1] - sorted(len(s) for s in iid)[0] <= 1
    with pytest.raises(ValueError, match="partition-mode"):
        partition_user_ids(market, 7, "dirichlet-ish", seed=3)


def test_client_data_is_anonymized_on_the_client(tmp_path: Path) -> None:
    """A client's records carry keyed pseudonyms, never the raw user ids of its shard."""
    market = generate_marketplace(120, 300, seed=2)
    write_marketplace(market, tmp_path / "data")
    cfg = FedConfig(data_dir=str(tmp_path / "data"), partition_mode="iid")
    data = client_data(cfg, 1, 4)
    raw = set(market.users["user_id"].astype(str))
    assert data.records and all(r.user_id.startswith("anon-") and r.user_id not in raw for r in data.records)
    assert client_data(cfg, 1, 4) is data


def test_clients_cut_contexts_by_the_run_configs_history(tmp_path: Path) -> None:
    """history=event (the default) reaches the clients: the same shard yields more training pairs (targets inside
    a session get the events before them), and the two configs never share a cached shard."""
    write_marketplace(generate_marketplace(120, 300, seed=2), tmp_path / "data")
    by_session = client_data(FedConfig(data_dir=str(tmp_path / "data"), history="session"), 0, 2)
    by_event = client_data(FedConfig(data_dir=str(tmp_path / "data")), 0, 2)
    assert by_event is not by_session
    assert [r.user_id for r in by_event.records] == [r.user_id for r in by_session.records]
    assert sum(len(r.train_pairs) for r in by_event.records) > sum(len(r.train_pairs) for r in by_session.records)
    with pytest.raises(ValueError, match="history"):
        FedConfig(history="all")


def test_run_config_booleans_are_strict() -> None:
    """true/false, 1/0, yes/no are booleans; anything else names the key instead of quietly meaning false."""
    assert FedConfig.from_run_config({"resume": "yes"}).resume is True
    assert FedConfig.from_run_config({"resume": "0"}).resume is False
    with pytest.raises(ValueError, match="run-config resume='abc' is not a boolean"):
        FedConfig.from_run_config({"resume": "abc"})
