"""Library baselines (implicit): they learn what a hand-made log makes obvious, and tuning never reads test."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from common.data.examples import UserRecord
from common.rec.library_baselines import interaction_matrix, run_library_baselines

A_ITEMS = [f"a{i}" for i in range(10)]
B_ITEMS = [f"b{i}" for i in range(10)]
CATALOG = [*A_ITEMS, *B_ITEMS]


def _user(name: str, cluster: list[str], other: list[str], shift: int, group: str) -> UserRecord:
    """A user who only ever takes items of `cluster`: 6 training items, then validation, then test; the
    negatives are the other cluster's items (more popular for the small cluster's users)."""
    order = [cluster[(shift + k) % len(cluster)] for k in range(8)]
    return UserRecord(
        user_id=name, segments={"cluster": group}, context_text="", train_pairs=[], valid_item=order[6],
        test_item=order[7], valid_negatives=list(other), test_negatives=list(other), seen_items=sorted(order),
        train_items=order[:6],
    )


def two_clusters() -> list[UserRecord]:
    """10 users of cluster A and 30 of cluster B: B's items are the popular ones, so popularity ranks an A
    user's held-out A item below every B negative, while co-occurrence puts it on top."""
    small = [_user(f"a-user{u}", A_ITEMS, B_ITEMS, u, "A") for u in range(10)]
    big = [_user(f"b-user{u}", B_ITEMS, A_ITEMS, u, "B") for u in range(30)]
    return small + big


def test_knn_and_als_rank_the_held_out_item_above_popularity() -> None:
    """On two disjoint clusters, item-kNN and ALS put the small cluster's test item above every negative of the
    other cluster (popularity puts it last); on the full catalog it still beats popularity by far (it only
    competes with the cluster's two other unseen items there)."""
    # Prepare
    records = two_clusters()
    # Execute
    results = run_library_baselines(records, CATALOG, list(range(len(records))),
                                    names=("popularity", "item-knn", "als"), threads=1)
    # Assert
    popularity = results["popularity"]
    for name in ("item-knn", "als"):
        for protocol in ("sampled", "full"):
            small = getattr(results[name], protocol)["segments"]["cluster=A"]
            assert small["mrr"] > getattr(popularity, protocol)["segments"]["cluster=A"]["mrr"] + 0.5
        assert results[name].sampled["segments"]["cluster=A"]["mrr"] > 0.9
    assert popularity.sampled["segments"]["cluster=A"]["mrr"] == pytest.approx(1 / 11)


def test_tuning_never_reads_test_items() -> None:
    """Moving every test item (and its negatives) leaves the validation figures and chosen parameters as
    they were, for every method, while the test figures do change."""
    # Prepare
    records = two_clusters()
    moved = [replace(r, test_item=r.test_negatives[0], test_negatives=[r.test_item, *r.test_negatives[1:]])
             for r in records]
    rows = list(range(len(records)))
    # Execute
    before = run_library_baselines(records, CATALOG, rows, threads=2)
    after = run_library_baselines(moved, CATALOG, rows, threads=2)
    # Assert
    for name, result in before.items():
        assert after[name].validation == result.validation, name
        assert after[name].params == result.params, name
    assert after["als"].sampled["overall"]["mrr"] < before["als"].sampled["overall"]["mrr"]


def test_final_fit_adds_the_validation_item_never_the_test_item() -> None:
    """The tuning matrix holds training items only; the refit one adds the validation item; neither holds test."""
    # Prepare
    records = two_clusters()[:1]
    column = {item: c for c, item in enumerate(CATALOG)}
    # Execute
    tuning = interaction_matrix(records, column, with_valid=False)
    final = interaction_matrix(records, column, with_valid=True)
    # Assert
    held = {column[records[0].valid_item]: "valid", column[records[0].test_item]: "test"}
    assert sorted(tuning.indices.tolist()) == sorted(column[i] for i in records[0].train_items)
    assert {held.get(c) for c in final.indices.tolist()} == {None, "valid"}
    assert np.all(final.data == 1.0)


def test_mistakes_are_named() -> None:
    """An unknown method or an item outside the catalog is refused with what went wrong."""
    records = two_clusters()
    with pytest.raises(ValueError, match="unknown library baseline"):
        run_library_baselines(records, CATALOG, [0], names=("svd",))
    with pytest.raises(ValueError, match="not in the catalog"):
        run_library_baselines(records, A_ITEMS, [0], names=("popularity",))
