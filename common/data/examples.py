"""Per-user ranking examples: time-ordered leave-one-out, text contexts, sampled negatives.

A user's positives are the distinct products they added to cart or bought (a cart is already a strong purchase
signal and doubles the positives of sparse users; a product counts once, at its first positive event). The last
positive is the test item, the second-last the validation item, the earlier ones are training targets.

A target's context is text about what the user did before it, most recent first, whole lines while they fit a
word budget (`context_words`; older history is dropped). What counts as "before" is `ExampleConfig.history`:
- "session" (the default until the real-data issue; the README's older synthetic tables say they used it): only
  what happened before the
  target's session started (earlier sessions and reviews), one line per (session, product) at its strongest
  event. Nothing of the target's session can leak, but a user who rates everything in one sitting (most users
  of a public rating log) gets an empty context and no training pairs.
- "event" (the default): every event before the target itself, also inside its session: for each (session, product) the
  latest of its events before the target ("bought X" once, not "viewed X; carted X; bought X"); events are
  ordered by time and, for equal times, by their row order in the clicks table (reviews after clicks). The
  target's own events in its session (the views and cart adds that led to the purchase) are left out, and
  nothing at or after the target enters.
"""

from __future__ import annotations

import bisect
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from common.data.schema import EVENT_TYPES, Marketplace
from common.data.seasons import season_of
from common.data.typed_events import event_table, record_events
from common.names import DEFAULT_HISTORY, HISTORIES

log = logging.getLogger(__name__)

VERBS = {"view": "viewed", "click": "clicked", "add_to_cart": "added to cart", "purchase": "bought"}
STRENGTH = {name: rank for rank, name in enumerate(EVENT_TYPES)}


@dataclass(frozen=True)
class ExampleConfig:
    """How examples are cut from the tables."""

    context_words: int = 96  # word budget of a context (MiniLM sees ~128 tokens; words ~ 1.3 tokens)
    review_words: int = 24  # words kept from one review inside a context
    num_negatives: int = 99  # the standard sampled protocol: 1 positive vs 99 negatives
    seed: int = 0
    min_positives: int = 3  # test + validation + at least one training target
    positive_events: tuple[str, ...] = ("add_to_cart", "purchase")
    segment_columns: tuple[str, ...] | None = None  # user columns used as segments; None: all but user_id
    include_reviews: bool = True
    max_train_pairs: int | None = None  # keep only the most recent N training pairs per user
    history: str = DEFAULT_HISTORY  # what a context may hold: "event" or "session" (see the module docstring)
    # items held out of training entirely (the item-cold split, common/data/protocols.py): only ever a test item
    cold_items: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.history not in HISTORIES:
            raise ValueError(f"history must be one of {', '.join(HISTORIES)}, got {self.history!r}")
        if self.context_words < 1 or self.review_words < 1:
            raise ValueError(f"context_words and review_words must be >= 1, got {self.context_words}, "
                             f"{self.review_words}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.min_positives < 2:
            raise ValueError(f"min_positives must be >= 2 (validation + test), got {self.min_positives}")
        bad = [e for e in self.positive_events if e not in EVENT_TYPES]
        if bad or not self.positive_events:
            raise ValueError(f"positive_events must be a non-empty subset of {EVENT_TYPES}, got {bad}")


@dataclass
class UserRecord:
    """Everything a client needs for one user; `user_id` is whatever the tables hold (a pseudonym after
    anonymization). `segments` tag the test interaction (season = season of the test item's event);
    `train_segments[i]` and `valid_segments` tag their own interactions."""

    user_id: str
    segments: dict[str, str]
    context_text: str
    train_pairs: list[tuple[str, str]]
    valid_item: str
    test_item: str
    valid_negatives: list[str]
    test_negatives: list[str]
    valid_context_text: str = ""
    train_segments: list[dict[str, str]] = field(default_factory=list)
    valid_segments: dict[str, str] = field(default_factory=dict)
    seen_items: list[str] = field(default_factory=list)
    # every positive before the validation item, in time order, with or without a context: what collaborative
    # baselines (popularity, item-kNN, matrix factorization) fit on; train_pairs keep only those with a context
    train_items: list[str] = field(default_factory=list)
    # every interaction (item, type token) before the validation item, then the validation item's positive event
    # (common/data/typed_events.py): what the sequential model's user tower reads
    typed_events: list[tuple[str, str]] = field(default_factory=list)

    @property
    def train_positives(self) -> list[str]:
        return [item for _, item in self.train_pairs]


def item_text(row: pd.Series | dict[str, str]) -> str:
    """The text a candidate product is encoded from: name, category, description."""
    return f"{row['product_name']}. {row['category']}. {row['product_description']}"


def build_item_texts(products: pd.DataFrame) -> dict[str, str]:
    texts = (products["product_name"] + ". " + products["category"] + ". " + products["product_description"])
    return dict(zip(products["product_id"], texts, strict=True))


def candidates(record: UserRecord, split: str = "test", catalog: Sequence[str] | None = None) -> list[str]:
    """Items to rank, positive first: the sampled negatives, or (full ranking) every catalog item the user
    never interacted with when `catalog` is given."""
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    positive = record.test_item if split == "test" else record.valid_item
    if catalog is None:
        return [positive, *(record.test_negatives if split == "test" else record.valid_negatives)]
    seen = set(record.seen_items)
    return [positive, *(p for p in catalog if p not in seen)]


def _render_events(m: Marketplace, cfg: ExampleConfig) -> pd.DataFrame:
    """One line of context text per (session, product) (its strongest event) and per review."""
    clicks = m.clicks.assign(strength=m.clicks["event_type"].map(STRENGTH))
    keyed = clicks.sort_values(["strength", "timestamp"], ascending=[False, True], kind="stable")
    best = keyed.drop_duplicates(["user_id", "session_id", "product_id"])
    first_ts = clicks.groupby(["user_id", "session_id", "product_id"], sort=False)["timestamp"].min()
    best = best.join(first_ts.rename("t"), on=["user_id", "session_id", "product_id"])
    prod = m.products.set_index("product_id")
    label = prod["product_name"] + " (" + prod["category"] + ")"
    lines = best["event_type"].map(VERBS) + " " + best["product_id"].map(label)
    parts = [pd.DataFrame({"user_id": best["user_id"], "t": best["t"], "product_id": best["product_id"],
                           "text": lines})]
    if cfg.include_reviews and len(m.reviews):
        r = m.reviews
        short = r["review_text"].str.split().str[: cfg.review_words].str.join(" ")
        text = ("reviewed " + r["product_id"].map(label) + " " + r["star_rating"].astype(str) + " stars: " + short)
        parts.append(pd.DataFrame({"user_id": r["user_id"], "t": r["timestamp"], "product_id": r["product_id"],
                                   "text": text}))
    events = pd.concat(parts, ignore_index=True).sort_values(["user_id", "t"], kind="stable")
    return events.reset_index(drop=True)


def _render_event_lines(clicks: pd.DataFrame, m: Marketplace, cfg: ExampleConfig) -> pd.DataFrame:
    """For the "event" history: one line per (session, product, event type) at its first occurrence, and one
    per review, each keyed by (time, seq) where seq is the row's place in `clicks` (sorted by user and time,
    ties in file order) and reviews come after clicks of the same second."""
    prod = m.products.set_index("product_id")
    label = prod["product_name"] + " (" + prod["category"] + ")"
    first = clicks.assign(seq=np.arange(len(clicks))).drop_duplicates(
        ["user_id", "session_id", "product_id", "event_type"])
    parts = [pd.DataFrame({"user_id": first["user_id"], "t": first["timestamp"], "seq": first["seq"],
                           "session_id": first["session_id"], "product_id": first["product_id"],
                           "text": first["event_type"].map(VERBS) + " " + first["product_id"].map(label)})]
    if cfg.include_reviews and len(m.reviews):
        r = m.reviews
        short = r["review_text"].str.split().str[: cfg.review_words].str.join(" ")
        text = ("reviewed " + r["product_id"].map(label) + " " + r["star_rating"].astype(str) + " stars: " + short)
        parts.append(pd.DataFrame({"user_id": r["user_id"], "t": r["timestamp"],
                                   "seq": len(clicks) + np.arange(len(r)), "session_id": "",
                                   "product_id": r["product_id"], "text": text}))
    events = pd.concat(parts, ignore_index=True).sort_values(["user_id", "t", "seq"], kind="stable")
    return events.reset_index(drop=True)


def _context(keys: Sequence[Any], texts: list[str], words: list[int], before: Any, budget: int,
             owners: Sequence[tuple[str, str]] = (), skip: tuple[str, str] | None = None) -> str:
    """The lines whose key sorts before `before`, most recent first, whole lines while they fit the word budget
    (the first line is cut if it alone is too long). With `owners` (session, product) per line, only the latest
    line of each owner is kept (a product viewed, carted and bought reads "bought X" once) and the lines of
    `skip` (the target's own events) are left out."""
    end = bisect.bisect_left(keys, before)  # keys: times ("session") or (time, seq) pairs ("event")
    out: list[str] = []
    used = 0
    shown: set[tuple[str, str]] = set()
    for i in range(end - 1, -1, -1):
        if owners:
            if owners[i] == skip or owners[i] in shown:
                continue
            shown.add(owners[i])
        if used + words[i] > budget:
            if not out:
                out.append(" ".join(texts[i].split()[:budget]))
            break
        out.append(texts[i])
        used += words[i]
    return "; ".join(out)


def _negatives(rng: np.random.Generator, n_catalog: int, seen: np.ndarray, k: int) -> list[int]:
    """k distinct catalog indexes outside `seen`, uniformly at random (rejection sampling: seen is small)."""
    if k == 0:
        return []
    if n_catalog - len(seen) < k:
        raise ValueError(f"only {n_catalog - len(seen)} unseen products for a user, cannot sample {k} negatives "
                         "(lower num_negatives or use a bigger catalog)")
    blocked = np.zeros(n_catalog, dtype=bool)
    blocked[seen] = True
    picked: list[np.ndarray] = []
    count = 0
    while count < k:
        draw = rng.integers(n_catalog, size=2 * k + len(seen))
        draw = draw[~blocked[draw]]
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)][: k - count]
        blocked[draw] = True
        picked.append(draw)
        count += len(draw)
    return np.concatenate(picked).tolist()


def _spans(keys: list[str]) -> dict[str, tuple[int, int]]:
    """(start, end) of each run of equal keys in an already grouped list."""
    if not keys:
        return {}
    arr = np.asarray(keys, dtype=object)
    starts = np.r_[0, np.flatnonzero(arr[1:] != arr[:-1]) + 1]
    ends = np.r_[starts[1:], len(keys)]
    return {keys[a]: (int(a), int(b)) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)}


def build_examples(m: Marketplace, cfg: ExampleConfig | None = None) -> list[UserRecord]:
    """One `UserRecord` per user with at least `min_positives` distinct positive products, sorted by user id."""
    cfg = cfg or ExampleConfig()
    clicks = m.clicks.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    pos = clicks[clicks["event_type"].isin(cfg.positive_events)].drop_duplicates(["user_id", "product_id"])
    if cfg.cold_items:  # a cold item stays only as a user's last positive (their test item); see protocols.py
        pos = pos[~pos["product_id"].isin(cfg.cold_items) | ~pos.duplicated("user_id", keep="last")]
    starts = m.clicks.groupby("session_id")["timestamp"].min()
    pos = pos.assign(start=pos["session_id"].map(starts), season=season_of(pos["timestamp"].to_numpy()),
                     seq=pos.index.to_numpy())
    seg_cols = list(cfg.segment_columns) if cfg.segment_columns is not None else [
        c for c in m.users.columns if c != "user_id"]
    missing = [c for c in seg_cols if c not in m.users.columns]
    if missing:
        raise ValueError(f"segment column(s) {missing} not in the users table (has {list(m.users.columns)})")
    user_segments = m.users.set_index("user_id")[seg_cols].astype(str).to_dict("index")
    by_event = cfg.history == "event"
    events = _render_event_lines(clicks, m, cfg) if by_event else _render_events(m, cfg)
    if cfg.cold_items:  # no context mentions a cold item (its keys keep their place: seq numbers stay valid)
        events = events[~events["product_id"].isin(cfg.cold_items)].reset_index(drop=True)
    ev_user, ev_text = events["user_id"].tolist(), events["text"].tolist()
    ev_key: list[Any] = (list(zip(events["t"].tolist(), events["seq"].tolist(), strict=True)) if by_event
                            else events["t"].tolist())
    ev_owner = (list(zip(events["session_id"].tolist(), events["product_id"].tolist(), strict=True)) if by_event
                else [])
    ev_words = events["text"].str.split().str.len().tolist()
    ev_span = _spans(ev_user)
    seen_all = pd.concat([m.clicks[["user_id", "product_id"]], m.reviews[["user_id", "product_id"]]])
    seen_all = seen_all.sort_values("user_id", kind="stable")
    index_of = {p: i for i, p in enumerate(m.products["product_id"].tolist())}
    seen_user, seen_item = seen_all["user_id"].tolist(), seen_all["product_id"].map(index_of).to_numpy()
    seen_span = _spans(seen_user)
    typed = event_table(clicks, m.reviews, cfg.cold_items)
    catalog = m.products["product_id"].tolist()
    cold_index = np.asarray([i for i, p in enumerate(catalog) if p in cfg.cold_items], dtype=np.int64)
    p_user, p_item = pos["user_id"].tolist(), pos["product_id"].tolist()
    p_start, p_season = pos["start"].tolist(), pos["season"].tolist()
    p_key = list(zip(pos["timestamp"].tolist(), pos["seq"].tolist(), strict=True))
    p_session = pos["session_id"].tolist()
    records = []
    for user, (a, b) in sorted(_spans(p_user).items()):
        if b - a < cfg.min_positives:
            continue
        e0, e1 = ev_span.get(user, (0, 0))
        keys, texts, words = ev_key[e0:e1], ev_text[e0:e1], ev_words[e0:e1]
        items, seasons = p_item[a:b], p_season[a:b]
        base = user_segments[user]
        if by_event:
            owners = ev_owner[e0:e1]
            ctx = [_context(keys, texts, words, key, cfg.context_words, owners, (session, item))
                   for key, session, item in zip(p_key[a:b], p_session[a:b], items, strict=True)]
        else:
            ctx = [_context(keys, texts, words, t, cfg.context_words) for t in p_start[a:b]]
        train = [(c, i, s) for c, i, s in zip(ctx[:-2], items[:-2], seasons[:-2], strict=True) if c]
        if cfg.max_train_pairs is not None:
            train = train[len(train) - cfg.max_train_pairs:] if cfg.max_train_pairs else []
        rng = np.random.default_rng([cfg.seed, zlib.crc32(user.encode())])
        s0, s1 = seen_span[user]
        seen = np.unique(seen_item[s0:s1])
        records.append(UserRecord(
            user_id=user, segments={**base, "season": seasons[-1]}, context_text=ctx[-1],
            train_pairs=[(c, i) for c, i, _ in train], valid_item=items[-2], test_item=items[-1],
            valid_negatives=[catalog[j] for j in _negatives(rng, len(catalog), np.union1d(seen, cold_index),
                                                            cfg.num_negatives)],
            test_negatives=[catalog[j] for j in _negatives(rng, len(catalog), seen, cfg.num_negatives)],
            valid_context_text=ctx[-2], train_segments=[{**base, "season": s} for _, _, s in train],
            valid_segments={**base, "season": seasons[-2]}, seen_items=[catalog[j] for j in seen.tolist()],
            train_items=list(items[:-2]),
            typed_events=record_events(typed.get(user), p_key[a:b][-2], items[-2], items[-1])))
    log.info("built %d user records (%d users had fewer than %d positives)",
             len(records), m.users.shape[0] - len(records), cfg.min_positives)
    return records
