"""Collaborative baselines from a well-kept library: popularity, item-kNN, BPR and ALS (`implicit` 0.7).

Why a library: the project's model must beat what a practitioner gets in a few lines from `implicit`, and a
hand-written matrix factorization would be judged by its own bugs. Every method sees the same thing: a users x
items CSR with one 1.0 per positive (rows in record order, columns in `catalog` order).

Protocol (honest tuning):
1. fit each grid point on every record's `train_items`, rank its `valid_item` against its 99 `valid_negatives`,
   keep the point with the best validation NDCG@10 (the first in grid order on ties). Test items are never read.
2. refit the chosen point on `train_items` + `valid_item` and score the test split twice: sampled (test item vs
   its 99 negatives) and full catalog (test item vs every item the user never touched, `seen_items` excluded).

Every record is a row of the fit (a factor model needs the evaluated user's row); `eval_rows` says who is
scored. Runs on CPU only: ALS on `num_threads` threads (each user's solve is independent, so it stays
reproducible), BPR on one (implicit's multi-threaded SGD is Hogwild: the same seed gives other factors on
every run), BLAS pinned to one thread inside the fits as implicit asks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight, normalize
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from common.rec.metrics import aggregate, full_ranking_metrics, sampled_metrics
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

Params = Mapping[str, Any]
Scorer = Callable[[np.ndarray], np.ndarray]  # user rows (R,) -> scores (R, items)
TUNE_METRIC = "ndcg@10"
SCORE_CHUNK = 512  # users scored per dense block: 512 x 3,883 float32 ~ 8 MB on MovieLens-1M


class LibraryRecord(RecordLike, Protocol):
    """What the baselines read on top of `RecordLike`: every earlier positive and every touched item."""

    train_items: list[str]
    seen_items: list[str]


def _grid(**axes: Sequence[Any]) -> tuple[dict[str, Any], ...]:
    """Every combination of the axes, first axis slowest: _grid(a=[1, 2], b=[3]) -> ({a:1,b:3}, {a:2,b:3})."""
    points: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        points = [{**p, name: v} for p in points for v in values]
    return tuple(points)


def _factor_scorer(user_factors: np.ndarray, item_factors: np.ndarray) -> Scorer:
    return lambda rows: user_factors[rows] @ item_factors.T  # (R, F) @ (F, I)


def fit_popularity(matrix: csr_matrix, params: Params, seed: int, threads: int) -> Scorer:
    """How many users had each item as a positive; the same row for everyone."""
    counts = np.asarray(matrix.sum(axis=0), dtype=np.float32).ravel()  # (I,)
    return lambda rows: np.broadcast_to(counts, (len(rows), counts.size))


def fit_item_knn(matrix: csr_matrix, params: Params, seed: int, threads: int) -> Scorer:
    """implicit's item-item neighbours (top `K` per item) on cosine or BM25-weighted columns; a user's score
    for item j is the sum of j's similarities to the user's items (what `ItemItemRecommender.recommend` does).
    The weighting is done here with implicit's own functions so that the model is handed CSR (its Cosine/BM25
    subclasses pass COO to their parent and warn about it on every fit)."""
    if params["similarity"] == "cosine":
        weighted = normalize(matrix.T).T.tocsr()
    elif params["similarity"] == "bm25":
        weighted = bm25_weight(matrix.T, K1=1.2, B=0.75).T.tocsr()  # implicit's BM25Recommender defaults
    else:
        raise ValueError(f"item-kNN similarity must be 'cosine' or 'bm25', got {params['similarity']!r}")
    model = ItemItemRecommender(K=int(params["K"]), num_threads=threads)
    model.fit(weighted, show_progress=False)
    similarity = model.similarity  # (I, I): row i holds i's K neighbours
    return lambda rows: np.asarray((matrix[rows] @ similarity).todense(), dtype=np.float32)


def fit_bpr(matrix: csr_matrix, params: Params, seed: int, threads: int) -> Scorer:
    """implicit's BPR-MF (its item factors carry a bias column, matched by a 1 in the user factors)."""
    with threadpool_limits(1, "blas"):
        model = BayesianPersonalizedRanking(
            factors=int(params["factors"]), learning_rate=float(params["learning_rate"]),
            regularization=float(params["regularization"]), iterations=int(params["iterations"]),
            random_state=seed, num_threads=1,  # see the module docstring: one thread or no reproducibility
        )
        model.fit(matrix, show_progress=False)
    return _factor_scorer(model.user_factors, model.item_factors)


def fit_als(matrix: csr_matrix, params: Params, seed: int, threads: int) -> Scorer:
    """implicit's ALS (Hu, Koren, Volinsky); `alpha` scales the confidence of a positive."""
    with threadpool_limits(1, "blas"):  # ALS checks the BLAS pool when it is built, not only when it fits
        model = AlternatingLeastSquares(
            factors=int(params["factors"]), regularization=float(params["regularization"]),
            alpha=float(params["alpha"]), iterations=int(params["iterations"]), random_state=seed,
            num_threads=threads,
        )
        model.fit(matrix, show_progress=False)
    return _factor_scorer(model.user_factors, model.item_factors)


@dataclass(frozen=True)
class LibraryBaseline:
    """One method: its grid (tuned on validation), and how a grid point is fitted into a scorer."""

    name: str
    grid: tuple[dict[str, Any], ...]
    fit: Callable[[csr_matrix, Params, int, int], Scorer]


# Small grids, so that MovieLens-1M tunes in about a minute on 2 cores; measured there (history "event",
# validation NDCG@10): BM25 beats cosine at every K, ALS wants 32-64 factors and alpha 10, BPR moves little.
BASELINES: dict[str, LibraryBaseline] = {
    b.name: b
    for b in (
        LibraryBaseline("popularity", ({},), fit_popularity),
        LibraryBaseline("item-knn", _grid(similarity=["cosine", "bm25"], K=[50, 100, 200]), fit_item_knn),
        LibraryBaseline("bpr", _grid(factors=[32, 64], learning_rate=[0.01, 0.05], regularization=[0.01],
                                     iterations=[100]), fit_bpr),
        LibraryBaseline("als", _grid(factors=[32, 64, 128], regularization=[0.01, 0.1], alpha=[1.0, 10.0],
                                     iterations=[15]), fit_als),
    )
}


@dataclass
class BaselineResult:
    """One tuned method: the chosen point, every point's validation figures, test metrics, seconds."""

    name: str
    params: dict[str, Any]
    validation: list[dict[str, Any]]  # per grid point: {"params", "hr@10", "ndcg@10"}
    sampled: dict[str, object]  # `aggregate` shape: {"overall", "segments", "users"} + "protocol"
    full: dict[str, object]
    seconds: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {"params": self.params, "validation": self.validation, "sampled": self.sampled,
                "full": self.full, "seconds": self.seconds}


def interaction_matrix(records: Sequence[LibraryRecord], column: Mapping[str, int], with_valid: bool) -> csr_matrix:
    """(U, I) float32 CSR with 1.0 at every training positive (and the validation item when `with_valid`)."""
    rows: list[int] = []
    cols: list[int] = []
    for u, record in enumerate(records):
        items = [*record.train_items, record.valid_item] if with_valid else record.train_items
        rows.extend([u] * len(items))
        cols.extend(_columns(items, column))
    data = np.ones(len(rows), dtype=np.float32)
    matrix = csr_matrix((data, (rows, cols)), shape=(len(records), len(column)), dtype=np.float32)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a positive counts once even if listed twice
    return matrix


def _columns(items: Sequence[str], column: Mapping[str, int]) -> list[int]:
    missing = [i for i in items if i not in column]
    if missing:
        raise ValueError(f"{len(missing)} item(s) are not in the catalog, e.g. {missing[:3]}")
    return [column[i] for i in items]


def candidate_columns(records: Sequence[LibraryRecord], column: Mapping[str, int], split: str) -> np.ndarray:
    """(U, 1 + N) catalog columns: the held-out item of `split` first, then its sampled negatives."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    rows = [[r.valid_item, *r.valid_negatives] if split == "valid" else [r.test_item, *r.test_negatives]
            for r in records]
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ValueError(f"records have different numbers of {split} candidates: {sorted(lengths)}")
    return np.array([_columns(row, column) for row in rows], dtype=np.int64)


def score_sampled(scorer: Scorer, rows: np.ndarray, columns: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user sampled metrics: `rows` (U,) are matrix rows, `columns` (U, 1 + N) their candidates."""
    blocks = [np.take_along_axis(scorer(rows[s:s + SCORE_CHUNK]), columns[s:s + SCORE_CHUNK], axis=1)
              for s in range(0, len(rows), SCORE_CHUNK)]
    return sampled_metrics(np.concatenate(blocks), ks)


def score_full(scorer: Scorer, rows: np.ndarray, records: Sequence[LibraryRecord], column: Mapping[str, int],
               ks: Sequence[int], seed: int) -> dict[str, np.ndarray]:
    """Per-user full-catalog metrics of the test item; everything the user touched is excluded (as
    `common.data.examples.candidates` and `evaluate(full_catalog=True)` do)."""
    parts: list[dict[str, np.ndarray]] = []
    for s in range(0, len(rows), SCORE_CHUNK):
        chunk = records[s:s + SCORE_CHUNK]
        relevant = [[column[r.test_item]] for r in chunk]
        seen = [_columns(r.seen_items, column) for r in chunk]
        parts.append(full_ranking_metrics(scorer(rows[s:s + SCORE_CHUNK]), relevant, seen, ks, seed))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def tune(baseline: LibraryBaseline, matrix: csr_matrix, columns: np.ndarray, seed: int,
         threads: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid point with the best validation NDCG@10 (first on ties), and every point's figures.

    Reads only what it is given: the train-only matrix and the validation candidates."""
    rows = np.arange(matrix.shape[0])
    scored = []
    for params in baseline.grid:
        per_user = score_sampled(baseline.fit(matrix, params, seed, threads), rows, columns, (10,))
        scored.append({"params": dict(params), "hr@10": float(per_user["hr@10"].mean()),
                       TUNE_METRIC: float(per_user[TUNE_METRIC].mean())})
        log.info("%s %s: validation NDCG@10 %.4f", baseline.name, params, scored[-1][TUNE_METRIC])
    best = max(range(len(scored)), key=lambda i: (scored[i][TUNE_METRIC], -i))
    return dict(baseline.grid[best]), scored


def default_threads() -> int:
    """CPU cores this process may use (what the machine gives it, not what it has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_library_baselines(
    records: Sequence[LibraryRecord],
    catalog: Sequence[str],
    eval_rows: Sequence[int],
    segments: Sequence[Mapping[str, str]] | None = None,
    names: Sequence[str] = tuple(BASELINES),
    ks: Sequence[int] = (10,),
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, BaselineResult]:
    """Tune, refit and score each baseline of `names` (see the module docstring for the protocol).

    `eval_rows` index `records` (the users scored on test); `segments[i]` labels eval user i for the
    per-segment rows (default: the records' own segments).
    """
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown library baseline(s) {unknown}; expected some of {', '.join(BASELINES)}")
    if not records or not eval_rows:
        raise ValueError("no records to fit or no users to evaluate")
    threads = threads or default_threads()
    column = {item: c for c, item in enumerate(catalog)}
    rows = np.asarray(eval_rows, dtype=np.int64)
    scored = [records[i] for i in rows]
    labels = list(segments) if segments is not None else [r.segments for r in scored]
    if len(labels) != len(scored):
        raise ValueError(f"{len(labels)} segment labels for {len(scored)} evaluation users")
    train_only = interaction_matrix(records, column, with_valid=False)
    with_valid = interaction_matrix(records, column, with_valid=True)
    valid_columns = candidate_columns(records, column, "valid")
    test_columns = candidate_columns(scored, column, "test")
    results: dict[str, BaselineResult] = {}
    for name in names:
        baseline = BASELINES[name]
        start = time.perf_counter()
        params, validation = tune(baseline, train_only, valid_columns, seed, threads)
        tuned = time.perf_counter()
        scorer = baseline.fit(with_valid, params, seed, threads)
        refit = time.perf_counter()
        sampled_per_user = score_sampled(scorer, rows, test_columns, ks)
        full_per_user = score_full(scorer, rows, scored, column, ks, seed)
        sampled = {**aggregate(sampled_per_user, labels), "protocol": "sampled"}
        full = {**aggregate(full_per_user, labels), "protocol": "full"}
        seconds = {"tune": tuned - start, "refit": refit - tuned, "score": time.perf_counter() - refit}
        seconds["total"] = time.perf_counter() - start
        results[name] = BaselineResult(name, params, validation, sampled, full, seconds)
        log.info("%s %s: test NDCG@10 sampled %.4f, full %.4f (%.1f s)", name, params,
                 sampled_per_user["ndcg@10"].mean(), full_per_user["ndcg@10"].mean(), seconds["total"])
    return results
