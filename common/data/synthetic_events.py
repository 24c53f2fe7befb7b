"""Turn generated sessions into clickstream rows (the view -> click -> add_to_cart -> purchase funnel) and reviews.

Split from `synthetic.py` so each file has one job: that one decides *what* a user wants in a session, this one
writes *how it shows* in the logs and in review text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from common.data import vocab as V
from common.data.schema import EVENT_TYPES
from common.data.synthetic_config import GeneratorConfig

EVENT_NAMES: tuple[str, ...] = EVENT_TYPES
P_CLICK_VIEWED = 0.3
P_PURCHASE_AFTER_CART = 0.85
MEAN_EXTRA_VIEWS = 1.5
DAYS_MIN, DAYS_MAX = 1, 15  # a review comes DAYS_MIN to DAYS_MAX - 1 days after its purchase

OPENERS = {
    5: ("Absolutely love this {noun}.", "Five stars, the {noun} is perfect.", "Best {category} buy this year."),
    4: ("Really nice {noun}.", "Solid {noun}, happy with it.", "Good {category} pick overall."),
    3: ("The {noun} is okay.", "Decent {noun}, nothing special.", "Average {category} item."),
    2: ("Not impressed by this {noun}.", "The {noun} feels cheap.", "Disappointing {category} purchase."),
    1: ("Returned this {noun}.", "Terrible {noun}, avoid.", "Worst {category} purchase ever."),
}
MIDDLES = ("The {feature} really stands out.", "I bought it for the {feature}.",
           "It is {style_adj}, exactly as described: {phrase}.", "Love that it is {phrase}.",
           "The {style_adj} look fits my place.", "Expected better {feature}.")
CLOSERS = ("Would buy from {brand} again.", "Shipping was quick.", "Great for everyday use.",
           "My partner uses it too.", "Fair for the price.", "")
PII_SNIPPETS = ("Questions? email me at {handle}@example.com", "Call me on 555-013-{n:04d} if you want it",
                "Full review on https://blog.example.net/{handle}", "Follow me @{handle} for more",
                "Paid with card 4111 1111 1111 {n:04d}")


def numbered_ids(prefix: str, n: int, width: int) -> np.ndarray:
    """["<prefix>0..01", ..., "<prefix><n>"], zero-padded to `width` digits: the ids of every generated table."""
    return np.char.add(prefix, np.char.zfill(np.arange(1, n + 1).astype(str), width))


def _take(values: np.ndarray, index: np.ndarray) -> pd.Series:
    """values[index] as an Arrow-backed string column: ~10x faster than numpy strings for millions of rows."""
    return pd.Series(pd.arrays.ArrowStringArray(pa.array(values).take(pa.array(index))))


class _Pools:
    """Popularity-weighted item pools sampled in one vectorized `searchsorted` (pool p's CDF lies in (p, p+1])."""

    def __init__(self, keys: np.ndarray, weights: np.ndarray, n_pools: int) -> None:
        order = np.lexsort((np.arange(len(keys)), keys))
        self.items = order
        k, w = keys[order], weights[order]
        totals = np.bincount(k, weights=w, minlength=n_pools)
        counts = np.bincount(k, minlength=n_pools)
        self.empty = counts == 0
        cum = np.cumsum(w) - np.repeat(np.r_[0.0, np.cumsum(totals)[:-1]] if n_pools else [], counts)
        self.cdf = k + cum / np.repeat(np.where(counts > 0, totals, 1.0), counts)

    def sample(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        u = pool + rng.random(len(pool)) * (1 - 1e-12)
        pos = np.searchsorted(self.cdf, u, side="left")
        return self.items[np.minimum(pos, len(self.items) - 1)]


def build_events(cfg: GeneratorConfig, rng: np.random.Generator, p: dict[str, np.ndarray], u: dict[str, np.ndarray],
                 s: dict[str, np.ndarray], products: pd.DataFrame, users: pd.DataFrame
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (clicks, reviews) tables for the sessions `s` (sorted by user then time)."""
    n_cat, n_sty, n_pro = len(V.CATEGORY_NAMES), len(V.STYLE_NAMES), len(V.PROMOS)
    by_cat = _Pools(p["cat"], p["pop"], n_cat)
    by_style = _Pools(p["cat"] * n_sty + p["style"], p["pop"], n_cat * n_sty)
    by_promo = _Pools(p["cat"] * n_pro + p["promo"], p["pop"], n_cat * n_pro)
    n_s = len(s["user"])
    # the item the session is about (only kept for buying sessions)
    style_pool = s["cat"] * n_sty + s["style"]
    promo_pool = s["cat"] * n_pro + s["promo"]
    use_style = (rng.random(n_s) < cfg.p_style) & ~by_style.empty[style_pool]
    use_promo = s["seasonal"] & ~by_promo.empty[promo_pool]
    target = np.where(use_promo, by_promo.sample(promo_pool, rng),
                      np.where(use_style, by_style.sample(style_pool, rng), by_cat.sample(s["cat"], rng)))
    # browsing: extra views of items in the session's category, some clicked
    n_views = 1 + rng.poisson(MEAN_EXTRA_VIEWS, size=n_s)
    v_sess = np.repeat(np.arange(n_s), n_views)
    v_item = by_cat.sample(s["cat"][v_sess], rng)
    v_rank = np.arange(len(v_sess)) - np.repeat(np.r_[0, np.cumsum(n_views)[:-1]], n_views)
    clicked = rng.random(len(v_sess)) < P_CLICK_VIEWED
    buy = np.flatnonzero(s["buy"])
    purchased = rng.random(len(buy)) < P_PURCHASE_AFTER_CART
    parts = [
        (v_sess, v_item, "view", 2 * v_rank),
        (v_sess[clicked], v_item[clicked], "click", 2 * v_rank[clicked] + 1),
        (buy, target[buy], "view", 2 * n_views[buy]),
        (buy, target[buy], "click", 2 * n_views[buy] + 1),
        (buy, target[buy], "add_to_cart", 2 * n_views[buy] + 2),
        (buy[purchased], target[buy][purchased], "purchase", 2 * n_views[buy][purchased] + 3),
    ]
    sess = np.concatenate([x[0] for x in parts])
    item = np.concatenate([x[1] for x in parts])
    etype = np.concatenate([np.full(len(x[0]), EVENT_NAMES.index(x[2])) for x in parts])
    step = np.concatenate([x[3] for x in parts])
    ts = s["ts"][sess] + step * 40 + rng.integers(0, 30, size=len(sess))
    order = np.lexsort((step, ts, s["user"][sess]))
    session_ids = numbered_ids("s", n_s, 8)
    clicks = pd.DataFrame({
        "user_id": _take(users["user_id"].to_numpy(dtype=str), s["user"][sess[order]]),
        "session_id": _take(session_ids, sess[order]),
        "timestamp": ts[order].astype(np.int64),
        "event_type": _take(np.asarray(EVENT_NAMES), etype[order]),
        "product_id": _take(products["product_id"].to_numpy(dtype=str), item[order]),
    })
    bought = buy[purchased]
    reviews = _reviews(cfg, rng, p, u, s["user"][bought], target[bought], s["ts"][bought], products, users)
    return clicks, reviews


def _reviews(cfg: GeneratorConfig, rng: np.random.Generator, p: dict[str, np.ndarray], u: dict[str, np.ndarray],
             user: np.ndarray, item: np.ndarray, ts: np.ndarray, products: pd.DataFrame, users: pd.DataFrame
             ) -> pd.DataFrame:
    """Reviews for a random share of purchases; ratings are higher when the item has the user's style."""
    keep = rng.random(len(user)) < cfg.p_review
    user, item, ts = user[keep], item[keep], ts[keep]
    n = len(user)
    match = p["style"][item] == u["style"][user]
    rating = np.where(match, rng.choice([5, 5, 4, 4, 3], size=n), rng.choice([5, 4, 3, 2, 1], size=n))
    picks = rng.integers(0, 1000, size=(n, 5))
    pii = rng.random(n) < cfg.p_pii
    brands, cats, styles = products["brand"].tolist(), p["cat"].tolist(), p["style"].tolist()
    nouns_of = p["noun"].tolist()
    texts = []
    for i in range(n):
        j = int(item[i])
        cname = V.CATEGORY_NAMES[cats[j]]
        nouns, features = V.CATEGORIES[cname]
        adjs, phrase = V.STYLES[V.STYLE_NAMES[styles[j]]]
        fill = {"noun": nouns[nouns_of[j]], "category": cname, "feature": features[picks[i, 1] % 4],
                "style_adj": adjs[picks[i, 2] % 3], "phrase": phrase, "brand": brands[j]}
        opener = OPENERS[int(rating[i])]
        text = " ".join(t for t in (opener[picks[i, 0] % 3].format(**fill), MIDDLES[picks[i, 3] % 6].format(**fill),
                                    CLOSERS[picks[i, 4] % 6].format(**fill)) if t)
        if pii[i]:
            handle = f"shopper{picks[i, 1]}"
            text += " " + PII_SNIPPETS[picks[i, 2] % 5].format(handle=handle, n=int(picks[i, 3]))
        texts.append(text)
    order = np.lexsort((ts, user))
    return pd.DataFrame({
        "review_id": numbered_ids("r", n, 8),
        "product_id": products["product_id"].to_numpy()[item[order]],
        "user_id": users["user_id"].to_numpy()[user[order]],
        "review_text": np.asarray(texts, dtype=object)[order] if n else np.array([], dtype=object),
        "star_rating": rating[order].astype(np.int64),
        "timestamp": (ts[order] + rng.integers(DAYS_MIN, DAYS_MAX, size=n) * 86_400).astype(np.int64),
    })

