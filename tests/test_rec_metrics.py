"""Ranking metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.rec.metrics import (
    PopularityScorer,
    aggregate,
    full_ranking_metrics,
    sampled_metrics,
    served_by_segment_adapter,
)


def test_sampled_metrics_hand_computed() -> None:
    """Positive ranked 1st, 3rd and 12th among 1 + 11 candidates give the textbook HR/NDCG/MRR values."""
    # Prepare: 3 users, column 0 is the positive, 11 negatives with distinct scores.
    neg = np.arange(11, 0, -1, dtype=float)  # 11, 10, ..., 1
    scores = np.stack([np.r_[100.0, neg], np.r_[9.5, neg], np.r_[0.0, neg]])  # ranks 0, 2, 11
    # Execute
    m = sampled_metrics(scores, ks=(1, 10))
    # Assert
    np.testing.assert_allclose(m["hr@10"], [1, 1, 0])
    np.testing.assert_allclose(m["hr@1"], [1, 0, 0])
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 1 / math.log2(4), 0.0])
    np.testing.assert_allclose(m["precision@10"], [0.1, 0.1, 0.0])
    np.testing.assert_allclose(m["recall@10"], [1, 1, 0])
    np.testing.assert_allclose(m["mrr"], [1.0, 1 / 3, 1 / 12])


def test_sampled_ties_are_scored_by_expectation() -> None:
    """A constant scorer gets the random-ranking value: HR@10 = 10/100, MRR = mean of 1/r over 1..100."""
    # Prepare
    scores = np.zeros((4, 100))
    # Execute
    m = sampled_metrics(scores, ks=(10,))
    # Assert
    np.testing.assert_allclose(m["hr@10"], 0.1)
    np.testing.assert_allclose(m["mrr"], np.mean(1 / np.arange(1, 101)))
    expected_ndcg = np.sum(1 / np.log2(np.arange(10) + 2)) / 100
    np.testing.assert_allclose(m["ndcg@10"], expected_ndcg)


def test_sampled_partial_tie() -> None:
    """Beaten by 1 and tied with 1: ranks 2 or 3 equally likely, so HR@2 = 0.5, MRR = (1/2+1/3)/2."""
    # Prepare
    scores = np.array([[1.0, 2.0, 1.0, 0.0]])
    # Execute
    m = sampled_metrics(scores, ks=(2,))
    # Assert
    assert m["hr@2"][0] == pytest.approx(0.5)
    assert m["mrr"][0] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ndcg@2"][0] == pytest.approx(0.5 / math.log2(3))


def test_sampled_rejects_bad_input() -> None:
    """NaN scores and a missing negative column are user mistakes with a clear message."""
    with pytest.raises(ValueError, match="NaN"):
        sampled_metrics(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        sampled_metrics(np.array([1.0, 2.0]))


def test_full_ranking_multiple_relevant_and_exclusion() -> None:
    """Two relevant items at ranks 1 and 3 after excluding a training item: NDCG = DCG / IDCG by hand."""
    # Prepare: items 0..5; user history item 5 has the top score but is excluded.
    scores = np.array([[0.9, 0.1, 0.8, 0.2, 0.7, 5.0]])
    # Execute
    m = full_ranking_metrics(scores, relevant=[[0, 4]], exclude=[[5]], ks=(3,))
    # Assert: ranking 0, 2, 4, 3, 1 -> relevant at positions 0 and 2.
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@3"][0] == pytest.approx(dcg / idcg)
    assert m["hr@3"][0] == 1.0
    assert m["precision@3"][0] == pytest.approx(2 / 3)
    assert m["recall@3"][0] == pytest.approx(1.0)
    assert m["mrr"][0] == pytest.approx(1.0)


def test_full_ranking_agrees_with_sampled_for_one_positive() -> None:
    """With distinct scores and one relevant item, the two protocols give identical per-user values."""
    # Prepare
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(20, 30))
    # Execute
    full = full_ranking_metrics(scores, relevant=[[0]] * 20, ks=(5,))
    sampled = sampled_metrics(scores, ks=(5,))
    # Assert
    for name in ("hr@5", "ndcg@5", "precision@5", "recall@5", "mrr"):
        np.testing.assert_allclose(full[name], sampled[name])


def test_aggregate_overall_and_per_segment() -> None:
    """Segment means are over that segment's users; a user counts in each of its segment labels."""
    # Prepare
    per_user = {"hr@10": np.array([1.0, 0.0, 1.0, 1.0])}
    segs = [
        {"region": "EU", "season": "holiday"},
        {"region": "EU", "season": "regular"},
        {"region": "NA", "season": "holiday"},
        {"region": "NA", "season": "holiday"},
    ]
    # Execute
    agg = aggregate(per_user, segs)
    # Assert
    assert agg["overall"] == {"hr@10": 0.75}
    seg = agg["segments"]
    assert isinstance(seg, dict)
    assert seg["region=EU"] == {"hr@10": 0.5, "users": 2.0}
    assert seg["season=holiday"] == {"hr@10": 1.0, "users": 3.0}
    assert seg["season=regular"]["hr@10"] == 0.0


def test_coverage_counts_users_with_a_trained_segment_adapter() -> None:
    """Only users whose region/season adapter was trained are covered; the rest fall back to global."""
    # Prepare
    segs = [{"region": "EU", "season": "holiday"}, {"region": "LATAM", "season": "regular"}]
    # Execute
    served = served_by_segment_adapter(segs, trained=["global", "region=EU"])
    served_season = served_by_segment_adapter(segs, trained=["region=EU"], keys=["season"])
    # Assert
    np.testing.assert_array_equal(served, [1.0, 0.0])
    np.testing.assert_array_equal(served_season, [0.0, 0.0])


def test_popularity_scorer_counts_training_positives() -> None:
    """Items score by their training-positive count; unseen items score 0 and length mismatches raise."""
    # Prepare
    pop = PopularityScorer.fit([["a", "b"], ["a"], ["c", "a"]])
    # Execute
    scores = pop.score([["a", "b", "z"], ["z", "c", "a"]])
    # Assert
    np.testing.assert_array_equal(scores, [[3, 1, 0], [0, 1, 3]])
    with pytest.raises(ValueError, match="differ in length"):
        pop.score([["a"], ["a", "b"]])
