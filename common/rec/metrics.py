"""Ranking metrics in pure numpy: sampled (1 positive vs N negatives) and full-catalog protocols.

Why pure numpy: the federated evaluation, the central baselines and the tests all score the same way, and
none of them should need torch to do it. Every function returns per-user values first; `aggregate` then
averages them overall and per segment, so a segment's figure is always the mean over that segment's users.

Ties are scored by their expectation, never in the model's favour: a positive tied with `e` negatives and
beaten by `g` is equally likely to sit at any rank in g..g+e, and each metric is averaged over those ranks.
A constant scorer therefore gets exactly the random-ranking values (HR@10 = 10/100 with 99 negatives),
and a popularity scorer with many zero counts is neither flattered nor punished by the tie order.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from common.names import OVERALL, segment_name

METRIC_NAMES = ("hr", "ndcg", "precision", "recall")


def _expected_over_ranks(greater: np.ndarray, ties: np.ndarray, k: int, fn: str) -> np.ndarray:
    """Mean of a single-positive metric over the ranks g..g+e (0-based) a tied positive may take."""
    span = int(ties.max(initial=0)) + 1
    offsets = np.arange(span)[None, :]  # (1, S)
    ranks = greater[:, None] + offsets  # (U, S)
    valid = offsets <= ties[:, None]  # only ranks g..g+e are possible
    if fn == "hit":
        values = (ranks < k).astype(float)
    elif fn == "ndcg":
        values = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    elif fn == "rr":
        values = 1.0 / (ranks + 1.0)
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown metric function {fn!r}")
    return (values * valid).sum(axis=1) / valid.sum(axis=1)


def sampled_metrics(scores: np.ndarray, ks: Sequence[int] = (10,)) -> dict[str, np.ndarray]:
    """Per-user metrics for the sampled protocol; column 0 of `scores` (U, 1+N) is the held-out positive.

    Returns arrays of shape (U,) keyed "hr@k", "ndcg@k", "precision@k", "recall@k" for each k, and "mrr".
    With one relevant item, recall@k equals hr@k and precision@k is hr@k / k.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must have shape (users, 1 + negatives), got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values")
    pos = scores[:, :1]
    neg = scores[:, 1:]
    greater = (neg > pos).sum(axis=1)
    ties = (neg == pos).sum(axis=1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        hit = _expected_over_ranks(greater, ties, k, "hit")
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = _expected_over_ranks(greater, ties, k, "ndcg")
        out[f"precision@{k}"] = hit / k
        out[f"recall@{k}"] = hit
    out["mrr"] = _expected_over_ranks(greater, ties, scores.shape[1], "rr")
    return out


def full_ranking_metrics(
    scores: np.ndarray,
    relevant: Sequence[Iterable[int]],
    exclude: Sequence[Iterable[int]] | None = None,
    ks: Sequence[int] = (10,),
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-user metrics when every catalog item is a candidate; `scores` is (U, M).

    `relevant[u]` are column indices of user u's held-out items (one or more), `exclude[u]` columns to drop
    from the ranking (items the user already interacted with in training). Ties are broken by a seeded
    random permutation, so the order never depends on column position. Users without relevant items raise.
    """
    scores = np.array(scores, dtype=float)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (users, items), got {scores.shape}")
    n_users, n_items = scores.shape
    if len(relevant) != n_users:
        raise ValueError(f"relevant has {len(relevant)} rows for {n_users} users")
    rel = np.zeros_like(scores, dtype=bool)
    for u, cols in enumerate(relevant):
        idx = list(cols)
        if not idx:
            raise ValueError(f"user row {u} has no relevant item")
        rel[u, idx] = True
    if exclude is not None:
        for u, cols in enumerate(exclude):
            idx = [c for c in cols if not rel[u, c]]
            scores[u, idx] = -np.inf
    perm = np.random.default_rng(seed).permutation(n_items)
    order_in_perm = np.argsort(-scores[:, perm], axis=1, kind="stable")
    order = perm[order_in_perm]  # (U, M) item columns, best first
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    n_rel = rel.sum(axis=1)
    discounts = 1.0 / np.log2(np.arange(n_items) + 2.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        top = rel_sorted[:, :k]
        hits = top.sum(axis=1)
        out[f"hr@{k}"] = (hits > 0).astype(float)
        dcg = (top * discounts[: top.shape[1]]).sum(axis=1)
        ideal = np.array([discounts[: min(int(r), k)].sum() for r in n_rel])
        out[f"ndcg@{k}"] = dcg / ideal
        out[f"precision@{k}"] = hits / k
        out[f"recall@{k}"] = hits / n_rel
    first = rel_sorted.argmax(axis=1)
    out["mrr"] = 1.0 / (first + 1.0)
    return out


def segment_names(segments: Mapping[str, str]) -> list[str]:
    """Segment labels of one user in the adapter naming scheme: {"region": "EU"} -> ["region=EU"]."""
    return [segment_name(key, value) for key, value in sorted(segments.items())]


def aggregate(
    per_user: Mapping[str, np.ndarray], user_segments: Sequence[Mapping[str, str]]
) -> dict[str, object]:
    """Average per-user metrics overall and per segment label ("region=EU", ...).

    Returns {"overall": {metric: mean}, "segments": {label: {metric: mean, "users": n}}, "users": U}.
    A user with several segment keys counts in each of its segments.
    """
    n_users = len(user_segments)
    for name, values in per_user.items():
        if len(values) != n_users:
            raise ValueError(f"metric {name} has {len(values)} values for {n_users} users")
    overall = {name: float(np.mean(values)) if n_users else float("nan") for name, values in per_user.items()}
    members: dict[str, list[int]] = defaultdict(list)
    for u, segs in enumerate(user_segments):
        for label in segment_names(segs):
            members[label].append(u)
    by_segment: dict[str, dict[str, float]] = {}
    for label in sorted(members):
        idx = np.array(members[label])
        row = {name: float(np.mean(np.asarray(values)[idx])) for name, values in per_user.items()}
        row["users"] = float(len(idx))
        by_segment[label] = row
    return {OVERALL: overall, "segments": by_segment, "users": n_users}


def served_by_segment_adapter(
    user_segments: Sequence[Mapping[str, str]], trained: Iterable[str], keys: Sequence[str] | None = None
) -> np.ndarray:
    """Per-user 0/1: does at least one of the user's segment labels have a trained adapter?

    `keys` restricts the segment keys that route to adapters (e.g. only "region"). The mean of this array
    is the coverage: the fraction of users served by a segment adapter instead of the global fallback.
    """
    trained_set = set(trained)
    served = []
    for segs in user_segments:
        chosen = {k: v for k, v in segs.items() if keys is None or k in keys}
        served.append(float(any(label in trained_set for label in segment_names(chosen))))
    return np.array(served, dtype=float)


class PopularityScorer:
    """Scores an item by how often it was a training positive: the non-personalized baseline.

    Fitted on training interactions only (never validation/test items), so it sees exactly what the
    trained models see. Unknown items score 0.
    """

    def __init__(self, counts: Mapping[Hashable, int]) -> None:
        self.counts: dict[Hashable, int] = dict(counts)

    @classmethod
    def fit(cls, histories: Iterable[Iterable[Hashable]]) -> PopularityScorer:
        counts: Counter[Hashable] = Counter()
        for items in histories:
            counts.update(items)
        return cls(counts)

    def score(self, candidates: Sequence[Sequence[Hashable]]) -> np.ndarray:
        """(U, C) scores for equal-length candidate lists (positive first for the sampled protocol)."""
        lengths = {len(c) for c in candidates}
        if len(lengths) > 1:
            raise ValueError(f"candidate lists differ in length: {sorted(lengths)}")
        return np.array([[self.counts.get(item, 0) for item in row] for row in candidates], dtype=float)
