"""Training and evaluation on tiny hand-made records: what moves, what stays, determinism, FedProx."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rec_fixtures import make_dataset

from common.adapters import AdapterConfig
from common.backbone import tiny_backbone
from common.names import GLOBAL
from common.rec.evaluate import evaluate, evaluate_popularity
from common.rec.model import RecModel, RoutingPlan
from common.rec.train import TrainConfig, train_epochs

SEGMENT_PLAN = RoutingPlan((GLOBAL, "region", "season"), (GLOBAL,))


def _model(names: list[str] | None = None) -> RecModel:
    return RecModel(tiny_backbone(), AdapterConfig(kind="lora", seed=1), names or [GLOBAL], SEGMENT_PLAN, max_len=32)


def test_train_config_rejects_bad_values() -> None:
    """Each invalid field is named in the error."""
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="prox_mu"):
        TrainConfig(prox_mu=-1.0)
    with pytest.raises(ValueError, match="pairs_per_user"):
        TrainConfig(pairs_per_user=0)
    with pytest.raises(ValueError, match="negatives"):
        TrainConfig(in_batch_negatives=False, negatives=0)


def test_training_moves_only_the_named_adapters() -> None:
    """Training 'global' changes it and lowers the loss; the segment adapter and the backbone stay put."""
    # Prepare
    records, items = make_dataset()
    model = _model([GLOBAL, "region=Europe"])
    assert model.adapted is not None
    before = model.adapted.adapter_state(trainable_only=False)
    backbone_before = [p.clone() for p in model.backbone.model.parameters()]
    # Execute
    report = train_epochs(model, records, items, TrainConfig(epochs=3, lr=1e-2, batch_size=24, negatives=8),
                          [GLOBAL])
    # Assert
    after = model.adapted.adapter_state(trainable_only=False)
    changed = {k.split("::")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {GLOBAL}
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, model.backbone.model.parameters(), strict=True))
    assert report["loss"] < report["loss_first_epoch"]
    assert report["num_examples"] == 3 * len(records)


def test_training_is_deterministic_for_a_seed() -> None:
    """Same seed, same data: identical weights and loss; another seed gives other weights."""
    # Prepare
    records, items = make_dataset()
    cfg = TrainConfig(epochs=1, batch_size=24, negatives=4, seed=3)
    runs = []
    # Execute
    for seed in (3, 3, 4):
        model = _model()
        report = train_epochs(model, records, items, TrainConfig(**{**cfg.to_dict(), "seed": seed}), [GLOBAL])
        assert model.adapted is not None
        runs.append((report["loss"], model.adapted.adapter_state()))
    # Assert
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert not all(torch.equal(runs[0][1][k], runs[2][1][k]) for k in runs[0][1])


def test_fedprox_term_keeps_weights_near_the_reference() -> None:
    """With a large mu the trained adapter ends closer to the reference state than without it."""
    # Prepare
    records, items = make_dataset()
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=24, negatives=4)
    distances = []
    # Execute
    for mu in (0.0, 50.0):
        model = _model()
        assert model.adapted is not None
        reference = model.adapted.adapter_state()
        train_epochs(model, records, items, TrainConfig(**{**cfg.to_dict(), "prox_mu": mu}), [GLOBAL], reference)
        now = model.adapted.adapter_state()
        distances.append(sum(float((now[k] - reference[k]).pow(2).sum()) for k in reference))
    # Assert
    assert distances[1] < 0.5 * distances[0]


def test_segment_training_uses_cached_items_and_routes_per_pair() -> None:
    """With global frozen, only the segment adapters of the batch's users move; items come from the cache."""
    # Prepare
    records, items = make_dataset()
    model = _model([GLOBAL, "region=Europe", "region=North America", "season=holiday"])
    assert model.adapted is not None
    before = model.adapted.adapter_state()
    calls: list[int] = []
    original = model.encode_items
    model.encode_items = lambda t, r: calls.append(len(t)) or original(t, r)  # type: ignore[method-assign]
    # Execute
    train_epochs(model, records, items, TrainConfig(epochs=1, batch_size=8, negatives=4),
                 ["region=Europe", "region=North America", "season=holiday"])
    # Assert: training pairs are all season=regular, so the holiday adapter gets no gradient.
    after = model.adapted.adapter_state()
    changed = {k.split("::")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"region=Europe", "region=North America"}
    assert sum(calls) <= len(items)


def test_evaluate_reports_segments_coverage_and_latency() -> None:
    """Per-segment rows, coverage from trained segment adapters, and one candidate encoding per item."""
    # Prepare
    records, items = make_dataset()
    model = _model([GLOBAL, "region=Europe"])
    calls: list[int] = []
    original = model.encode_items
    model.encode_items = lambda t, r: calls.append(len(t)) or original(t, r)  # type: ignore[method-assign]
    # Execute
    result = evaluate(model, records, items, ks=(5, 10))
    # Assert
    overall, segments = result["overall"], result["segments"]
    assert isinstance(overall, dict) and isinstance(segments, dict)
    assert {"hr@10", "ndcg@10", "mrr", "precision@10", "recall@10", "hr@5", "coverage"} <= set(overall)
    assert overall["coverage"] == pytest.approx(0.5)
    assert segments["region=Europe"]["coverage"] == 1.0 and segments["region=North America"]["coverage"] == 0.0
    assert segments["region=Europe"]["users"] == len(records) / 2
    unique = {i for r in records for i in [r.test_item, *r.test_negatives]}
    assert sum(calls) == len(unique)
    assert float(result["latency_ms_per_user"]) > 0  # type: ignore[arg-type]


def test_trained_model_beats_untrained_on_learnable_data() -> None:
    """On data where context and item share the category, training the global adapter raises NDCG@10."""
    # Prepare
    records, items = make_dataset(n_users=32, negatives=49)
    model = _model()
    base = evaluate(model, records, items, split="valid")["overall"]
    # Execute
    train_epochs(model, records, items, TrainConfig(epochs=5, lr=1e-2, batch_size=16, negatives=16), [GLOBAL])
    trained = evaluate(model, records, items, split="valid")["overall"]
    # Assert
    assert isinstance(base, dict) and isinstance(trained, dict)
    assert trained["ndcg@10"] > base["ndcg@10"] + 0.05


def test_popularity_baseline_on_same_candidates() -> None:
    """Popularity counts training positives; with disjoint per-user items, metrics stay in [0, 1]."""
    # Prepare
    records, items = make_dataset()
    # Execute
    result = evaluate_popularity(records, items)
    # Assert
    overall = result["overall"]
    assert isinstance(overall, dict)
    assert 0.0 <= overall["ndcg@10"] <= overall["hr@10"] <= 1.0
    assert overall["coverage"] == 0.0
    assert np.isfinite(overall["mrr"])


def test_full_catalog_protocol_ranks_against_every_unseen_item() -> None:
    """Full ranking encodes the catalog once and is never easier than 19 sampled negatives."""
    # Prepare
    records, items = make_dataset()
    model = _model()
    calls: list[int] = []
    original = model.encode_items
    model.encode_items = lambda t, r: calls.append(len(t)) or original(t, r)  # type: ignore[method-assign]
    # Execute
    full = evaluate(model, records, items, full_catalog=True)
    sampled = evaluate(model, records, items)
    # Assert
    assert full["protocol"] == "full" and sampled["protocol"] == "sampled"
    assert sum(calls) == len(items)  # the sampled run reused the cached catalog
    full_overall, sampled_overall = full["overall"], sampled["overall"]
    assert isinstance(full_overall, dict) and isinstance(sampled_overall, dict)
    assert full_overall["mrr"] <= sampled_overall["mrr"] + 1e-9
