"""Synthetic marketplace: valid tables, determinism, a plausible funnel, and segment signal that is really there."""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd
import pytest

from common.data import vocab as V
from common.data.examples import build_examples
from common.data.seasons import season_of
from common.data.synthetic import generate_marketplace
from common.data.synthetic_config import GeneratorConfig


@pytest.fixture(scope="module")
def market() -> object:
    return generate_marketplace(3000, 800, seed=7)


def test_deterministic_per_seed() -> None:
    """Same seed, same tables; another seed, other tables."""
    a, b, c = (generate_marketplace(200, 100, seed=s) for s in (1, 1, 2))
    pd.testing.assert_frame_equal(a.clicks, b.clicks)
    pd.testing.assert_frame_equal(a.reviews, b.reviews)
    assert not a.clicks["product_id"].equals(c.clicks["product_id"])


def test_config_validation_names_the_value() -> None:
    """A probability outside [0, 1] is rejected by name."""
    with pytest.raises(ValueError, match="p_buy"):
        GeneratorConfig(p_buy=1.5)


def test_tables_cover_regions_and_funnel(market) -> None:  # type: ignore[no-untyped-def]
    """Every region appears, the niche one is sparse, and every purchase follows an add_to_cart in its session."""
    share = market.users["region"].value_counts(normalize=True)
    assert set(share.index) == set(V.REGIONS)
    assert share["Middle East & Africa"] < 0.06
    counts = market.clicks["event_type"].value_counts()
    assert counts["view"] > counts["click"] > counts["add_to_cart"] >= counts["purchase"] > 0
    carts = set(zip(*(market.clicks.loc[market.clicks["event_type"] == "add_to_cart", c]
                      for c in ("session_id", "product_id")), strict=True))
    buys = market.clicks[market.clicks["event_type"] == "purchase"]
    assert all(k in carts for k in zip(buys["session_id"], buys["product_id"], strict=True))


def test_seasons_and_texts(market) -> None:  # type: ignore[no-untyped-def]
    """Events fall in every season window, and names/descriptions are varied, not one template."""
    seasons = collections.Counter(season_of(market.clicks["timestamp"].to_numpy()))
    assert set(seasons) == {"regular", "black_friday", "prime_day", "holiday"}
    names = market.products["product_name"]
    assert names.nunique() > 0.9 * len(names)
    assert market.products["product_description"].str.split().str[0].nunique() > 20
    assert market.reviews["review_text"].nunique() > 0.5 * len(market.reviews)


def test_region_changes_the_next_category(market) -> None:  # type: ignore[no-untyped-def]
    """The same history (dominant category h) leads to a different *new* category in each region, the one the
    world's expansion table says: the signal a region adapter can learn and a global model cannot."""
    hits, total = 0, 0
    by_region: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(collections.Counter)
    category = market.products.set_index("product_id")["category"].to_dict()
    for r in build_examples(market):
        cats = [w.strip("()") for w in r.context_text.split(") ") if "(" in w]
        hist = collections.Counter(c.split("(")[-1] for c in cats)
        target = category[r.test_item]
        if not hist or target in hist or r.segments["season"] != "regular":
            continue
        top = hist.most_common(1)[0][0]
        by_region[r.segments["region"]][(top, target)] += 1
        total += 1
        hits += V.REGION_EXPANSION[r.segments["region"]].get(top) == target
    assert total > 100
    assert hits / total > 0.3  # chance level is 1/15
    tops = {reg: c.most_common(1)[0][0] for reg, c in by_region.items() if c}
    assert len(set(tops.values())) > 1


def test_season_shifts_to_promoted_items(market) -> None:  # type: ignore[no-untyped-def]
    """Inside black friday / holiday, bought items are far more often deals / gifts than in regular weeks."""
    buys = market.clicks[market.clicks["event_type"] == "purchase"].merge(market.products, on="product_id")
    buys["season"] = season_of(buys["timestamp"].to_numpy())
    share = buys.groupby("season")["promo"].value_counts(normalize=True)
    assert share["black_friday"]["deal"] > 2 * share["regular"]["deal"]
    assert share["holiday"]["gift"] > 2 * share["regular"]["gift"]
    assert np.isclose(share["regular"].sum(), 1.0)
