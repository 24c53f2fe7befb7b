"""Synthetic marketplace whose preferences depend on segments (region, season), generated with numpy.

What a model can learn from it, and why per-segment adapters have something real to learn:
- user signal: each user has an anchor category and a preferred style; sessions keep coming back to the
  anchor (and to the categories the user has branched into) and favour the preferred style. History text
  therefore predicts the held-out item: the part one global model (and popularity, weakly) can get.
- region signal: at a buying session a user often *branches out* along a chain anchor -> E_r(anchor) ->
  E_r(E_r(anchor)) ..., where `vocab.REGION_EXPANSION` gives every region its own successor for every
  category. The next branch is a category absent from the history, so the same history implies a different
  next category per region; and in a category new to them users buy their region's favourite styles rather
  than their own. Region is never written in the text: only a region-routed adapter can use it.
- season signal: inside the black_friday / prime_day / holiday windows most sessions go to promoted items
  (deals or gifts) in the user's anchor or the season's hot categories. The history is mostly regular weeks
  and the season is not in the text, so a season adapter can shift to deals/gifts where a global one cannot.
- sparsity: the niche region has few, less active users; age_band is a control segment with no effect.
All randomness comes from one `numpy.random.Generator(seed)`: same seed, same tables.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from common.data import vocab as V
from common.data.schema import Marketplace
from common.data.seasons import SEASONS, season_of, season_window_days
from common.data.synthetic_config import GeneratorConfig
from common.data.synthetic_events import build_events, numbered_ids

log = logging.getLogger(__name__)
DAY = 86_400
YEAR = 2025
MAX_CHAIN = 32


def _expansion_powers() -> np.ndarray:
    """chain[r, k, a] = the k-th category a user anchored in `a` branches into in region r (k=0: the anchor)."""
    n_reg, n_cat = V.REGION_EXPANSION_INDEX.shape
    chain = np.zeros((n_reg, MAX_CHAIN + 1, n_cat), dtype=np.int64)
    chain[:, 0] = np.arange(n_cat)
    for k in range(1, MAX_CHAIN + 1):
        chain[:, k] = np.take_along_axis(V.REGION_EXPANSION_INDEX, chain[:, k - 1], axis=1)
    return chain


def _favourite_styles() -> np.ndarray:
    """(regions, 2) style indexes each region favours."""
    return np.array([[V.STYLE_NAMES.index(st) for st in V.REGION_FAVOURITES[r][1]] for r in V.REGIONS])


def _group_starts(group: np.ndarray) -> np.ndarray:
    """Index of the first row of each row's group, for rows sorted by group."""
    start = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    return np.repeat(start, np.diff(np.r_[start, len(group)]))


def _products(cfg: GeneratorConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    m, n_cat = cfg.products, len(V.CATEGORY_NAMES)
    cat = rng.permutation(np.arange(m) % n_cat)
    style = rng.integers(len(V.STYLE_NAMES), size=m)
    promo = rng.choice(len(V.PROMOS), size=m, p=V.PROMO_WEIGHTS)
    brand, noun, adj = rng.integers(V.BRANDS_PER_CATEGORY, size=m), rng.integers(6, size=m), rng.integers(3, size=m)
    feats, tmpl = rng.integers(4, size=(m, 2)), rng.integers(4, size=(m, 2))
    popularity = np.exp(rng.normal(0.0, 0.35, size=m))  # mild: sampled metrics already favour popularity
    names, descriptions = [], []
    for i in range(m):
        cname = V.CATEGORY_NAMES[cat[i]]
        nouns, features = V.CATEGORIES[cname]
        adjs, phrase = V.STYLES[V.STYLE_NAMES[style[i]]]
        b, n, a = V.BRANDS[cat[i]][brand[i]], nouns[noun[i]], adjs[adj[i]]
        f1, f2 = features[feats[i, 0]], features[(feats[i, 0] + 1 + feats[i, 1] % 3) % 4]
        model = f"{chr(65 + i % 26)}{i % 97 + 1}"
        promo_text = V.PROMO_PHRASES[V.PROMOS[promo[i]]][i % len(V.PROMO_PHRASES[V.PROMOS[promo[i]]])]
        names.append((f"{b} {a} {n}", f"{a.capitalize()} {n} by {b}", f"{b} {n} {model}, {a} edition",
                      f"{b} {model} {a} {n}")[tmpl[i, 0]])
        descriptions.append((f"{a.capitalize()} {n} from {b} with {f1} and {f2}. {phrase.capitalize()}. {promo_text}",
                             f"{promo_text} Made for {cname} fans: {f1}, {f2}, {phrase}.",
                             f"Our {a} {n} offers {f1}. {phrase.capitalize()}, plus {f2}. {promo_text}",
                             f"{b} brings {f1} to your {cname} routine; {phrase}. {promo_text}")[tmpl[i, 1]].strip())
    brands = [V.BRANDS[c][b] for c, b in zip(cat, brand, strict=True)]
    table = pd.DataFrame({
        "product_id": numbered_ids("p", m, 6), "product_name": names, "product_description": descriptions,
        "category": np.asarray(V.CATEGORY_NAMES)[cat], "brand": brands,
        "style": np.asarray(V.STYLE_NAMES)[style], "promo": np.asarray(V.PROMOS)[promo],
    })
    return table, {"cat": cat, "style": style, "promo": promo, "pop": popularity, "noun": noun}


def _users(cfg: GeneratorConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    n = cfg.users
    region = rng.choice(len(V.REGIONS), size=n, p=V.REGION_WEIGHTS)
    anchor, style = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for r in range(len(V.REGIONS)):
        idx = np.flatnonzero(region == r)
        anchor[idx] = rng.choice(len(V.CATEGORY_NAMES), size=len(idx), p=V.region_category_prior(r))
        style[idx] = rng.choice(len(V.STYLE_NAMES), size=len(idx), p=V.region_style_prior(r))
    activity = cfg.mean_sessions * np.exp(rng.normal(-0.125, 0.5, size=n))
    activity[region == len(V.REGIONS) - 1] *= 0.6  # the niche region is also less active
    n_sessions = 2 + rng.poisson(activity)
    table = pd.DataFrame({"user_id": numbered_ids("u", n, 7), "region": np.asarray(V.REGIONS)[region],
                          "age_band": np.asarray(V.AGE_BANDS)[rng.integers(len(V.AGE_BANDS), size=n)]})
    return table, {"region": region, "anchor": anchor, "style": style, "n_sessions": n_sessions}


def _last_session_times(cfg: GeneratorConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """When each user was last active: a calendar-year mix with spikes in the shopping seasons."""
    start = np.datetime64(f"{YEAR}-01-01").astype("datetime64[s]").astype(np.int64)
    comp = rng.choice(len(SEASONS), size=n, p=cfg.last_session_mix)
    day0 = np.zeros(n, dtype=np.int64)
    span = np.full(n, 365, dtype=np.int64)
    for k, (first, last) in enumerate(season_window_days(YEAR).values(), start=1):
        day0[comp == k] = (first - np.datetime64(f"{YEAR}-01-01")).astype(np.int64)
        span[comp == k] = (last - first).astype(np.int64) + 1
    days = day0 + (rng.random(n) * span).astype(np.int64)
    return start + days * DAY + rng.integers(8 * 3600, 23 * 3600, size=n)


def _sessions(cfg: GeneratorConfig, u: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One row per session, sorted by user then time, with its intent (category, pool) and buy flag."""
    n_cat = len(V.CATEGORY_NAMES)
    user = np.repeat(np.arange(len(u["n_sessions"])), u["n_sessions"])
    starts = _group_starts(user)
    k_from_end = u["n_sessions"][user] - 1 - (np.arange(len(user)) - starts)
    gaps = rng.exponential(9.0 * DAY, size=len(user)) + 3600
    # offset before the last session = sum of the gaps of the sessions after this one
    gaps_rev = np.where(k_from_end > 0, gaps, 0.0)
    offset = np.zeros(len(user))
    order = np.lexsort((k_from_end, user))  # per user, last session first
    csum = np.cumsum(gaps_rev[order])
    offset[order] = csum - csum[_group_starts(user[order])]  # the last session's own gap is 0
    ts = _last_session_times(cfg, len(u["n_sessions"]), rng)[user] - offset.astype(np.int64)
    season = season_of(ts)
    season_idx = pd.Categorical(season, categories=SEASONS).codes.astype(np.int64)
    is_last = k_from_end == 0
    buy = np.where(is_last, rng.random(len(user)) < 0.85, rng.random(len(user)) < cfg.p_buy)
    seasonal = (season != "regular") & (rng.random(len(user)) < cfg.p_season)
    # expansion chain: the k-th new category is the region's successor of the (k-1)-th, starting at the anchor
    expand_now = buy & ~seasonal & (rng.random(len(user)) < cfg.p_expand)
    csum_e = np.cumsum(expand_now)
    k_before = np.minimum((csum_e - expand_now) - (csum_e - expand_now)[starts], MAX_CHAIN - 1)
    anchor, region = u["anchor"][user], u["region"][user]
    chain = _expansion_powers()
    frontier, successor = chain[region, k_before, anchor], chain[region, k_before + 1, anchor]
    repeat = np.where(rng.random(len(user)) < cfg.p_repeat_anchor, anchor, frontier)
    explore = rng.integers(n_cat, size=len(user))
    explored = ~expand_now & (rng.random(len(user)) < cfg.p_explore)
    cat = np.where(expand_now, successor, np.where(explored, explore, repeat))
    # in a category new to them, users follow their region's taste rather than their own style
    regional = (expand_now | explored) & (rng.random(len(user)) < cfg.p_regional_style)
    favourite = _favourite_styles()[region, rng.integers(2, size=len(user))]
    style = np.where(regional, favourite, u["style"][user])
    hot = np.zeros((len(SEASONS), 4), dtype=np.int64)
    promo_of_season = np.zeros(len(SEASONS), dtype=np.int64)
    for name, (promo, cats) in V.SEASON_EFFECTS.items():
        hot[SEASONS.index(name)] = [V.CATEGORY_NAMES.index(c) for c in cats]
        promo_of_season[SEASONS.index(name)] = V.PROMOS.index(promo)
    seasonal_cat = np.where(rng.random(len(user)) < 0.5, anchor, hot[season_idx, rng.integers(4, size=len(user))])
    cat = np.where(seasonal, seasonal_cat, cat)
    return {"user": user, "ts": ts, "cat": cat, "buy": buy, "seasonal": seasonal, "style": style,
            "promo": promo_of_season[season_idx]}


def generate_marketplace(users: int, products: int, seed: int = 0,
                         config: GeneratorConfig | None = None) -> Marketplace:
    """Generate the four tables; `config` overrides the process knobs (its users/products/seed are replaced)."""
    base = config or GeneratorConfig()
    cfg = GeneratorConfig(**{**base.__dict__, "users": users, "products": products, "seed": seed})
    rng = np.random.default_rng(cfg.seed)
    products_df, p = _products(cfg, rng)
    users_df, u = _users(cfg, rng)
    s = _sessions(cfg, u, rng)
    clicks, reviews = build_events(cfg, rng, p, u, s, products_df, users_df)
    log.info("generated %d users, %d products, %d events, %d reviews (seed %d)",
             len(users_df), len(products_df), len(clicks), len(reviews), cfg.seed)
    return Marketplace(reviews=reviews, products=products_df, clicks=clicks, users=users_df)
