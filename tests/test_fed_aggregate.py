"""Aggregation math: per-bank weighted means, fallback, exact LoRA averaging, server optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from common.names import bank_of
from server.aggregate import aggregate_banks, apply_delta, lora_factor_pairs, weighted_mean
from server.optimizer import OptimizerConfig, ServerOptimizer


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_weighted_mean_matches_manual() -> None:
    """The weighted mean uses example counts as weights and keeps the dtype."""
    # Prepare
    a = {"global::w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"global::w": np.array([3.0, 6.0], dtype=np.float32)}
    # Execute
    out = weighted_mean([a, b], [1, 3])
    # Assert
    np.testing.assert_allclose(out["global::w"], [2.5, 5.0])
    assert out["global::w"].dtype == np.float32


def test_weighted_mean_rejects_mismatched_keys_and_bad_weights() -> None:
    """States with different keys, or all-zero weights, are an error rather than a silent average."""
    a = {"global::w": np.ones(2)}
    b = {"global::v": np.ones(2)}
    with pytest.raises(ValueError, match="keys"):
        weighted_mean([a, b], [1, 1])
    with pytest.raises(ValueError, match="weights"):
        weighted_mean([a, a], [0, 0])


def test_bank_of_parses_keys() -> None:
    """The bank is the adapter name before '::'; malformed keys are refused."""
    assert bank_of("region=EU::layer.0.down.weight") == "region=EU"
    with pytest.raises(ValueError, match="adapter name"):
        bank_of("encoder.layer.0.attention.self.query.weight")


def _per_bank(deltas: list[dict[str, np.ndarray]], weights: list[float]) -> list[dict[str, float]]:
    """The same weight for every bank a client sent."""
    return [{bank_of(k): w for k in d} for d, w in zip(deltas, weights, strict=True)]


def test_each_bank_is_weighted_by_the_clients_examples_in_that_bank() -> None:
    """A client with 263 pairs of which 1 is prime_day weighs 263 in global but 1 in prime_day; a client
    with no pair in a bank is not in that bank's cohort at all."""
    a = {"global::w": np.full(2, 1.0), "season=prime_day::w": np.full(2, 1.0)}
    b = {"global::w": np.full(2, 3.0), "season=prime_day::w": np.full(2, 3.0)}
    c = {"global::w": np.full(2, 9.0), "season=prime_day::w": np.full(2, 100.0)}  # trained no prime_day pair
    weights = [{"global": 263, "season=prime_day": 1}, {"global": 1, "season=prime_day": 3},
               {"global": 1, "season=prime_day": 0}]
    agg = aggregate_banks([a, b, c], weights)
    np.testing.assert_allclose(agg.mean_deltas["season=prime_day"]["season=prime_day::w"], (1 + 9) / 4)
    np.testing.assert_allclose(agg.mean_deltas["global"]["global::w"], (263 + 3 + 9) / 265)
    assert agg.contributors == {"global": 3, "season=prime_day": 2}
    assert agg.examples == {"global": 265, "season=prime_day": 4}


def test_aggregate_banks_global_across_all_segments_per_cohort() -> None:
    """Global is averaged over everyone; each segment bank only over its own clients."""
    # Prepare: three clients, two in EU, one in NA
    rng = _rng()
    deltas, weights = [], [10.0, 30.0, 20.0]
    segs = ["region=EU", "region=EU", "region=NA"]
    for seg in segs:
        deltas.append({"global::w": rng.normal(size=(3, 2)), f"{seg}::w": rng.normal(size=(3, 2))})
    # Execute
    agg = aggregate_banks(deltas, _per_bank(deltas, weights), min_clients=1)
    # Assert
    expect_global = sum(w * d["global::w"] for w, d in zip(weights, deltas, strict=True)) / sum(weights)
    np.testing.assert_allclose(agg.mean_deltas["global"]["global::w"], expect_global)
    expect_eu = (10 * deltas[0]["region=EU::w"] + 30 * deltas[1]["region=EU::w"]) / 40
    np.testing.assert_allclose(agg.mean_deltas["region=EU"]["region=EU::w"], expect_eu)
    np.testing.assert_allclose(agg.mean_deltas["region=NA"]["region=NA::w"], deltas[2]["region=NA::w"])
    assert agg.contributors == {"global": 3, "region=EU": 2, "region=NA": 1}


def test_aggregate_banks_small_segment_falls_back() -> None:
    """A segment with fewer than min_clients contributors is not updated; global still is."""
    rng = _rng(1)
    deltas = [
        {"global::w": rng.normal(size=2), "region=EU::w": rng.normal(size=2)},
        {"global::w": rng.normal(size=2), "region=EU::w": rng.normal(size=2)},
        {"global::w": rng.normal(size=2), "region=NA::w": rng.normal(size=2)},
    ]
    agg = aggregate_banks(deltas, _per_bank(deltas, [1, 1, 1]), min_clients=2)
    assert agg.fallback == ["region=NA"]
    assert set(agg.mean_deltas) == {"global", "region=EU"}


def test_lora_ffa_averaging_b_is_exact() -> None:
    """With A frozen and shared, applying mean(B_i) gives exactly the weighted mean of the updates B_i·A."""
    # Prepare: rank-4 LoRA on a 16x8 weight; each client returns only its B delta (B starts at zero)
    rng = _rng(2)
    a_shared = rng.normal(size=(4, 8))
    weights = [5.0, 1.0, 7.0, 3.0]
    b_deltas = [{"global::q.lora_B": rng.normal(size=(16, 4))} for _ in weights]
    bank = {"global::q.lora_B": np.zeros((16, 4))}
    # Execute
    agg = aggregate_banks(b_deltas, _per_bank(b_deltas, weights))
    new_b = apply_delta(bank, agg.mean_deltas["global"])["global::q.lora_B"]
    # Assert
    mean_update = sum(w * d["global::q.lora_B"] @ a_shared for w, d in zip(weights, b_deltas, strict=True))
    mean_update /= sum(weights)
    np.testing.assert_allclose(new_b @ a_shared, mean_update, rtol=1e-10, atol=1e-12)


def test_lora_trainable_a_is_detected_as_inexact() -> None:
    """When both factors are trainable and sent, the pair is reported (averaging them is not exact)."""
    rng = _rng(3)
    a = [rng.normal(size=(2, 4)) for _ in range(2)]
    b = [rng.normal(size=(4, 2)) for _ in range(2)]
    mean_of_products = (b[0] @ a[0] + b[1] @ a[1]) / 2
    product_of_means = ((b[0] + b[1]) / 2) @ ((a[0] + a[1]) / 2)
    assert not np.allclose(mean_of_products, product_of_means)
    keys = ["global::q.lora_A.weight", "global::q.lora_B.weight", "global::v.lora_B.weight"]
    pairs = lora_factor_pairs(keys)
    assert pairs == [("global::q.lora_A.weight", "global::q.lora_B.weight")]


def test_fedavg_optimizer_is_plain_averaging() -> None:
    """FedAvg with server lr 1 lands exactly on the weighted mean of the client models."""
    params = {"global::w": np.array([1.0, 1.0])}
    clients = [np.array([2.0, 0.0]), np.array([4.0, 4.0])]
    deltas = [{"global::w": c - params["global::w"]} for c in clients]
    mean = aggregate_banks(deltas, _per_bank(deltas, [1, 3])).mean_deltas["global"]
    new = ServerOptimizer(OptimizerConfig("fedavg")).step(params, mean)
    np.testing.assert_allclose(new["global::w"], (clients[0] + 3 * clients[1]) / 4)


def test_fedadam_step_and_state_round_trip() -> None:
    """FedAdam's first step moves each coordinate by ~lr·sign(delta); its moments round-trip."""
    # Prepare
    cfg = OptimizerConfig("fedadam", server_lr=0.1, tau=1e-9)
    opt = ServerOptimizer(cfg)
    params = {"global::w": np.zeros(3)}
    delta = {"global::w": np.array([0.5, -2.0, 1e-3])}
    # Execute
    p1 = opt.step(params, delta)
    arrays, steps = opt.state()
    twin = ServerOptimizer(cfg)
    twin.load_state(arrays, steps)
    # Assert
    np.testing.assert_allclose(p1["global::w"], 0.1 * np.sign(delta["global::w"]), rtol=1e-4)
    np.testing.assert_allclose(opt.step(p1, delta)["global::w"], twin.step(p1, delta)["global::w"])


def test_optimizer_config_validates() -> None:
    """Unknown strategies and non-positive rates name the bad value."""
    with pytest.raises(ValueError, match="fedsgd"):
        OptimizerConfig("fedsgd")
    with pytest.raises(ValueError, match="server_lr"):
        OptimizerConfig(server_lr=0)


def test_hyper_kind_hypernet_global_embeddings_per_segment() -> None:
    """With the hyper kind, the hypernetwork (under "global::") averages over all clients while each segment
    embedding averages only over its segment's clients."""
    from common.federation.task import initial_state
    from common.protocol import FedConfig

    state = initial_state(FedConfig(adapter_kind="hyper", data_dir="/x"), ["global", "region=EU", "region=NA"])
    assert {k.split("::")[1] for k in state if not k.startswith("global::")} == {"hyper.segment_embedding"}
    rng = _rng(4)
    segs = ["region=EU", "region=EU", "region=NA"]
    deltas = [{k: rng.normal(size=v.shape) for k, v in state.items() if k.split("::")[0] in ("global", s)}
              for s in segs]
    agg = aggregate_banks(deltas, _per_bank(deltas, [1, 2, 3]))
    hyper_key = next(k for k in state if "hypernet" in k)
    np.testing.assert_allclose(agg.mean_deltas["global"][hyper_key],
                               (deltas[0][hyper_key] + 2 * deltas[1][hyper_key] + 3 * deltas[2][hyper_key]) / 6)
    emb = "region=EU::hyper.segment_embedding"
    np.testing.assert_allclose(agg.mean_deltas["region=EU"][emb], (deltas[0][emb] + 2 * deltas[1][emb]) / 3)
