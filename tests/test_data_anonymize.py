"""Anonymization: planted PII never survives, raw user ids never reach an example, rare values generalise."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from common.data.anonymize import (
    AnonymizationConfig,
    anonymize_marketplace,
    coarsen_timestamps,
    generalize_rare,
    pseudonym,
    scrub_pii,
)
from common.data.examples import build_examples
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
