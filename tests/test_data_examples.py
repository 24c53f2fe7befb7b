"""Examples: time-ordered leave-one-out without leakage, word-budgeted contexts, seeded negatives."""

from __future__ import annotations

import pandas as pd
import pytest

from common.data.examples import ExampleConfig, build_examples, build_item_texts, candidates, item_text
from common.data.schema import Marketplace

DAY = 86_400
T0 = 1_752_000_000  # 2025-07-08 18:40 UTC: inside the prime_day window
SESSION = ExampleConfig(history="session")  # the cut these older tests were written for (default: "event")


def market() -> Marketplace:
    """u1 buys p1, p2, p3, p4 in four sessions a day apart; u2 buys only twice (dropped)."""
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(1, 201)],
                             "product_name": [f"Item {i}" for i in range(1, 201)],
                             "product_description": ["desc"] * 200, "category": ["kitchen"] * 200})
    rows = []
    for k in range(1, 5):
        t = T0 - (4 - k) * 30 * DAY
        rows += [("u1", f"s{k}", t, "view", f"p{k + 10}"), ("u1", f"s{k}", t + 5, "view", f"p{k}"),
                 ("u1", f"s{k}", t + 9, "add_to_cart", f"p{k}"), ("u1", f"s{k}", t + 20, "purchase", f"p{k}")]
    rows += [("u2", "s9", T0, "purchase", "p5"), ("u2", "s10", T0 + DAY, "purchase", "p6")]
    clicks = pd.DataFrame(rows, columns=["user_id", "session_id", "timestamp", "event_type", "product_id"])
    reviews = pd.DataFrame({"review_id": ["r1"], "product_id": ["p1"], "user_id": ["u1"],
                            "review_text": ["lovely sturdy item " * 20], "star_rating": [5],
                            "timestamp": [T0 - 80 * DAY]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "region": ["Europe", "Europe"]})
    return Marketplace(reviews=reviews, products=products, clicks=clicks, users=users)


def test_leave_one_out_split() -> None:
    """Last positive is test, second-last validation, earlier ones train in time order; short users dropped."""
    (rec,) = build_examples(market(), SESSION)
    assert (rec.test_item, rec.valid_item) == ("p4", "p3")
    assert rec.train_positives == ["p2"]  # p1's context is empty (nothing happened before), so no pair
    assert rec.segments == {"region": "Europe", "season": "prime_day"}
    assert rec.train_segments == [{"region": "Europe", "season": "regular"}]


def test_context_never_leaks_the_target_session() -> None:
    """history=session: a target's context holds earlier sessions only: not the target, not its session,
    nothing later."""
    (rec,) = build_examples(market(), SESSION)
    assert "Item 4 " not in rec.context_text and "Item 14 " not in rec.context_text
    assert rec.context_text.startswith("bought Item 3 (kitchen)")  # most recent first
    assert "Item 3 " not in rec.valid_context_text and "Item 4 " not in rec.valid_context_text
    ctx, item = rec.train_pairs[0]
    assert item == "p2" and "Item 2 " not in ctx and "Item 3 " not in ctx and "bought Item 1" in ctx


def test_context_word_budget_and_review_cut() -> None:
    """Contexts stay within the word budget; reviews are cut to review_words."""
    (rec,) = build_examples(market(), ExampleConfig(context_words=12, review_words=4))
    assert len(rec.context_text.split()) <= 12
    (full,) = build_examples(market(), ExampleConfig(context_words=500, review_words=4))
    assert "stars: lovely sturdy item lovely;" in full.context_text or full.context_text.endswith("item lovely")


def test_negatives_are_unseen_distinct_and_seeded() -> None:
    """99 distinct negatives the user never touched; same seed same list, other seed other list."""
    (a,) = build_examples(market())
    (b,) = build_examples(market())
    (c,) = build_examples(market(), ExampleConfig(seed=1))
    assert len(a.test_negatives) == 99 == len(set(a.test_negatives))
    assert not set(a.test_negatives) & set(a.seen_items)
    assert a.test_item not in a.test_negatives and a.valid_item not in a.valid_negatives
    assert a.test_negatives == b.test_negatives and a.test_negatives != c.test_negatives


def test_full_ranking_candidates() -> None:
    """Full ranking ranks the positive against every product the user never interacted with."""
    m = market()
    (rec,) = build_examples(m)
    full = candidates(rec, "test", catalog=m.products["product_id"].tolist())
    assert full[0] == "p4" and len(full) == 1 + 200 - len(rec.seen_items)
    assert candidates(rec, "valid")[0] == "p3" and len(candidates(rec, "valid")) == 100


def test_item_texts() -> None:
    """Item text is name, category, description, for one row and for the whole catalog alike."""
    m = market()
    texts = build_item_texts(m.products)
    assert texts["p7"] == "Item 7. kitchen. desc" == item_text(m.products.iloc[6])


def test_config_validation() -> None:
    """Impossible settings are refused by name."""
    with pytest.raises(ValueError, match="min_positives"):
        ExampleConfig(min_positives=1)
    with pytest.raises(ValueError, match="positive_events"):
        ExampleConfig(positive_events=("like",))


def one_session_market(users: int = 5) -> Marketplace:
    """Users who do everything in one session, as in a rating log: view and buy A; view and buy B in the same
    second; view, cart and buy C; buy D; view E afterwards. Only the product names tell what leaked."""
    names = {"A": "Anvil", "B": "Bagel", "C": "Cactus", "D": "Dynamo", "E": "Easel"}
    products = pd.DataFrame({"product_id": [f"{k}{i}" for k in names for i in range(users)] +
                             [f"x{i}" for i in range(150)],
                             "product_name": [f"{n} {i}" for n in names.values() for i in range(users)] +
                             [f"Filler {i}" for i in range(150)],
                             "product_description": "desc", "category": "misc"})
    rows = []
    for u in range(users):
        t = T0 + u * DAY
        steps = [(0, "view", "A"), (1, "purchase", "A"), (2, "view", "B"), (2, "purchase", "B"), (3, "view", "C"),
                 (4, "add_to_cart", "C"), (5, "purchase", "C"), (6, "purchase", "D"), (7, "view", "E")]
        rows += [(f"u{u}", f"s{u}", t + dt, event, f"{k}{u}") for dt, event, k in steps]
    clicks = pd.DataFrame(rows, columns=["user_id", "session_id", "timestamp", "event_type", "product_id"])
    reviews = pd.DataFrame(columns=["review_id", "product_id", "user_id", "review_text", "star_rating", "timestamp"])
    users_df = pd.DataFrame({"user_id": [f"u{u}" for u in range(users)], "region": "Europe"})
    return Marketplace(reviews=reviews, products=products, clicks=clicks, users=users_df)


def test_event_history_gives_one_session_users_contexts_without_leaks() -> None:
    """With history="event", every user of a one-session log with 3+ positives gets non-empty contexts and a
    training pair, and no context holds its target, the target's own session events, or anything later."""
    m = one_session_market()
    later = {"A": "BCDE", "B": "CDE", "C": "DE", "D": "E"}  # what happens at or after each target
    names = {"A": "Anvil", "B": "Bagel", "C": "Cactus", "D": "Dynamo", "E": "Easel"}
    records = build_examples(m, ExampleConfig(history="event"))
    assert len(records) == 5
    for rec in records:
        u = rec.user_id[1:]
        assert (rec.test_item, rec.valid_item) == (f"D{u}", f"C{u}")
        assert rec.context_text and rec.valid_context_text and rec.train_positives == [f"B{u}"]
        targets = [(rec.context_text, "D"), (rec.valid_context_text, "C"), (rec.train_pairs[0][0], "B")]
        for ctx, target in targets:
            assert f"{names[target]} {u}" not in ctx, (target, ctx)  # neither bought nor the views that led to it
            assert not any(f"{names[k]} {u}" in ctx for k in later[target]), (target, ctx)
        assert rec.context_text.startswith(f"bought Cactus {u}")  # latest first, one line per product
        assert rec.context_text.count(f"Cactus {u}") == 1
    # The session cut (the default) leaves exactly these users without any context or training pair.
    assert all(not r.context_text and not r.train_pairs for r in build_examples(m, SESSION))


def test_history_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="history"):
        ExampleConfig(history="everything")
