"""Anonymization: planted PII never survives, raw user ids never reach an example, the users table is
k-anonymous over the combination of its quasi-identifiers (routing segments kept, counted, never generalised)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from common.data.anonymize import (
    AnonymizationConfig,
    anonymize_marketplace,
    coarsen_timestamps,
    generalize_rare,
    k_anonymize,
    pseudonym,
    scrub_pii,
)
from common.data.examples import build_examples
from common.data.schema import Marketplace
from common.data.synthetic import generate_marketplace

KEY = b"k" * 32
PLANTED = [
    ("write to jane.doe+shop@mail.example.co.uk please", "jane.doe"),
    ("my email: BOB_99@Example.COM", "BOB_99"),
    ("call +1 (555) 013-2234 after six", "013-2234"),
    ("or 555.013.0042", "0042"),
    ("card 4111 1111 1111 1111 was charged", "4111"),
    ("card 4111-1111-1111-1111 again", "1111"),
    ("full review at https://blog.example.net/me?x=1", "blog.example"),
    ("see www.shop-reviews.org/p/2", "shop-reviews"),
    ("follow @shopper_12 for more", "shopper_12"),
    ("visit myshop.com today", "myshop"),
]


@pytest.mark.parametrize(("text", "secret"), PLANTED)
def test_planted_pii_is_removed(text: str, secret: str) -> None:
    """Every planted email, phone, card, URL and handle is replaced by a placeholder."""
    out = scrub_pii(text)
    assert secret.lower() not in out.lower()
    assert "[" in out


def test_ordinary_text_is_kept() -> None:
    """Prices, years, sizes and ratings are not mistaken for PII."""
    text = "Bought 2 pans for 35 dollars in 2024, size 12-14, 5 stars"
    assert scrub_pii(text) == text


def test_pseudonyms_keyed_and_stable() -> None:
    """Same key same pseudonym, other key other pseudonym, and the raw id is not in it."""
    assert pseudonym("u0000001", KEY) == pseudonym("u0000001", KEY)
    assert pseudonym("u0000001", KEY) != pseudonym("u0000001", b"x" * 32)
    assert "u0000001" not in pseudonym("u0000001", KEY)


def test_config_hides_key_and_validates() -> None:
    """The key never shows in repr; weak keys and unknown granularities are refused by name."""
    cfg = AnonymizationConfig(key=KEY)
    assert "kkkk" not in repr(cfg)
    with pytest.raises(ValueError, match="key"):
        AnonymizationConfig(key=b"short")
    with pytest.raises(ValueError, match="fortnight"):
        dataclasses.replace(cfg, time_granularity="fortnight")
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        dataclasses.replace(cfg, k=0)
    with pytest.raises(ValueError, match="user_id"):
        dataclasses.replace(cfg, keep_columns=("user_id",))


def test_coarsen_and_generalize() -> None:
    """Timestamps floor to the day; values held by fewer than k users become 'other'."""
    assert coarsen_timestamps(pd.Series([86_400 * 3 + 5000]), "day").tolist() == [86_400 * 3]
    out = generalize_rare(pd.Series(["EU"] * 5 + ["NA"] * 2), k=3)
    assert out.tolist() == ["EU"] * 5 + ["other"] * 2


def test_no_raw_id_or_pii_in_examples() -> None:
    """After anonymization no raw user id or session id and no planted PII appears anywhere in the examples."""
    m = generate_marketplace(300, 300, seed=3)
    m.reviews.loc[m.reviews.index[:5], "review_text"] = "mail me at leak@example.com or call 555-013-9999"
    anon = anonymize_marketplace(m, AnonymizationConfig(key=KEY, k=5))
    records = build_examples(anon)
    assert records
    raw_ids = set(m.users["user_id"])
    blob = repr([dataclasses.asdict(r) for r in records])
    assert not any(u in blob for u in raw_ids)
    assert "leak@example.com" not in blob and "9999" not in blob
    assert not set(anon.clicks["session_id"]) & set(m.clicks["session_id"])
    assert (anon.clicks["timestamp"] % 86_400 == 0).all()
    assert all(r.user_id.startswith("anon-") for r in records)


QI = ["age_band", "gender", "occupation"]


def _random_users(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Skewed random users: a routing region plus three quasi-identifiers with few to many values."""
    def skewed(values: int) -> np.ndarray:
        p = rng.dirichlet(np.full(values, 0.5))
        return rng.choice(values, size=n, p=p)

    return pd.DataFrame({"user_id": [f"u{i}" for i in range(n)],
                         "region": [f"r{v}" for v in skewed(int(rng.integers(1, 5)))],
                         "age_band": [f"a{v}" for v in skewed(6)], "gender": [f"g{v}" for v in skewed(3)],
                         "occupation": [f"o{v}" for v in skewed(int(rng.integers(2, 25)))]})


def test_k_anonymity_holds_over_the_combination_on_random_tables() -> None:
    """Property over 300 random tables and k in 2..7: every remaining combination of region + QIs is shared by
    >= k users; region is never generalised; QI values are the original or "other"; a user is dropped only
    when fewer than k users share its region."""
    rng = np.random.default_rng(0)
    for trial in range(300):
        users, k = _random_users(rng, int(rng.integers(1, 120))), int(rng.integers(2, 8))
        out = k_anonymize(users, k, QI, keep_columns=("region",))
        sizes = out.groupby(["region", *QI]).size()
        assert (sizes >= k).all(), (trial, k, sizes[sizes < k])
        before = users.loc[out.index]
        assert out["region"].equals(before["region"]), trial
        assert ((out[QI] == before[QI]) | (out[QI] == "other")).all().all(), trial
        region_size = users.groupby("region")["user_id"].transform("size")
        assert set(out.index) == set(users.index[region_size >= k]), trial


@pytest.mark.parametrize(("members", "kept"), [(4, 0), (5, 5)])
def test_k_anonymity_boundary_at_k_users(members: int, kept: int) -> None:
    """With k=5 a region of 4 users with distinct age bands is dropped; with 5 users it stays, age bands "other"."""
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(members)], "region": "EU",
                          "age_band": [f"a{i}" for i in range(members)], "gender": "f", "occupation": "x"})
    out = k_anonymize(users, 5, QI, keep_columns=("region",))
    assert len(out) == kept
    assert (out["age_band"] == "other").all() and (out["gender"] == "f").all()


def test_small_classes_borrow_from_large_ones_before_collapsing() -> None:
    """8 users of one age band and 2 of others (k=5): the 2 and 3 of the 8 share an all-"other" class, the
    other 5 keep their age band, nobody is dropped."""
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(10)], "region": "EU",
                          "age_band": ["25-34"] * 8 + ["18-24", "55+"], "gender": "f", "occupation": "x"})
    out = k_anonymize(users, 5, QI, keep_columns=("region",))
    assert len(out) == 10
    assert sorted(out["age_band"].value_counts().to_dict().items()) == [("25-34", 5), ("other", 5)]


def test_single_columns_are_not_enough() -> None:
    """Each value held by >= k users column by column, yet unique combinations: the combination rule still
    generalises (column-by-column generalisation alone would leave 4 singled-out users)."""
    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(8)], "region": "EU",
                          "age_band": ["a", "a", "a", "a", "b", "b", "b", "b"],
                          "gender": ["f", "m", "f", "m", "f", "m", "f", "m"], "occupation": "x"})
    assert (users.groupby(QI).size() < 4).any()
    out = k_anonymize(users, 4, QI, keep_columns=("region",))
    assert (out.groupby(QI).size() >= 4).all() and len(out) == 8


def test_marketplace_drops_suppressed_users_everywhere() -> None:
    """A region with fewer than k users loses its users, their clicks and reviews; other regions keep theirs
    and their region values, and an all-suppressing k is a clear error."""
    m = generate_marketplace(120, 300, seed=4)
    users = m.users.copy()
    users.loc[users.index[:3], "region"] = "Tiny Island"
    m = Marketplace(reviews=m.reviews, products=m.products, clicks=m.clicks, users=users)
    anon = anonymize_marketplace(m, AnonymizationConfig(key=KEY, k=5, keep_columns=("region",)))
    region_size = users.groupby("region")["user_id"].transform("size")
    assert "Tiny Island" not in set(anon.users["region"])
    assert len(anon.users) == int((region_size >= 5).sum())
    assert set(anon.clicks["user_id"]) == set(anon.users["user_id"]) >= set(anon.reviews["user_id"])
    assert len(anon.clicks) == int(m.clicks["user_id"].isin(users["user_id"][region_size >= 5]).sum())
    assert anon.users["region"].value_counts().to_dict() == users["region"][region_size >= 5].value_counts().to_dict()
    with pytest.raises(ValueError, match="suppressed all 120 users"):
        anonymize_marketplace(m, AnonymizationConfig(key=KEY, k=121))
