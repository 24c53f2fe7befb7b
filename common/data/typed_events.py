"""Every interaction of a user as (item, type token), for the sequential model's user tower.

The text model reads a user's views, carts and low ratings as context lines; the sequential model reads the same
log as a sequence of typed events. A type token is the event type ("view", "click", "add_to_cart", "purchase"),
or "rating1".."rating5" when the click carries a rating value (a rating log converted by
`common.data.interactions` keeps the value in an extra `rating` column next to the coarse event type), and a
review is a "rating<stars>" event. Events are ordered by time and, for equal times, by their row order in the
clicks table (reviews after clicks of the same second): the order `examples.py` cuts its contexts in.

`UserRecord.typed_events` (built by `record_events`) holds the user's interactions before the validation item's
positive event, with every event on the validation or test item left out (a view of the item to be predicted
would give it away), followed by the validation item's own positive event as the last entry. So:
- training and validation read `typed_events[:-1]` (nothing of the validation or test item);
- the test split reads all of it (the validation item, with its real type, is the latest thing the user did).
Interactions between the validation and the test item are not kept (one field, no later event can leak).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

RATING_TOKENS: tuple[str, ...] = tuple(f"rating{r}" for r in range(1, 6))
EVENT_TOKENS: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", *RATING_TOKENS)
# the tokens of a positive event under the default rules (cart or purchase; a rating >= 4 is a purchase)
POSITIVE_TOKENS: frozenset[str] = frozenset({"add_to_cart", "purchase", "rating4", "rating5"})


def rating_token(value: float) -> str:
    """"rating<r>" for a rating value, rounded and clamped to 1..5."""
    return f"rating{min(5, max(1, round(float(value))))}"


@dataclass(frozen=True)
class UserEvents:
    """One user's events in time order: sort keys (time, row), items and type tokens."""

    keys: list[tuple[int, int]]
    items: list[str]
    tokens: list[str]


def event_table(clicks: pd.DataFrame, reviews: pd.DataFrame,
                exclude: frozenset[str] = frozenset()) -> dict[str, UserEvents]:
    """Per user, every click and review as a typed event, except events on the items `exclude` (the cold split's
    held-out items: no model input may mention them). `clicks` must be sorted by user and time (its row index is
    the tie-break), as `build_examples` sorts it."""
    tokens = clicks["event_type"].astype(str).to_numpy(dtype=object)
    if "rating" in clicks.columns:
        rated = pd.to_numeric(clicks["rating"], errors="coerce").to_numpy(dtype=float)
        has = np.isfinite(rated)
        tokens[has] = [rating_token(v) for v in rated[has]]
    parts = [pd.DataFrame({"user_id": clicks["user_id"].to_numpy(), "t": clicks["timestamp"].to_numpy(),
                           "seq": np.arange(len(clicks)), "item": clicks["product_id"].to_numpy(),
                           "token": tokens})]
    if len(reviews):
        parts.append(pd.DataFrame({"user_id": reviews["user_id"].to_numpy(), "t": reviews["timestamp"].to_numpy(),
                                   "seq": len(clicks) + np.arange(len(reviews)),
                                   "item": reviews["product_id"].to_numpy(),
                                   "token": [rating_token(s) for s in reviews["star_rating"].tolist()]}))
    events = pd.concat(parts, ignore_index=True).sort_values(["user_id", "t", "seq"], kind="stable")
    if exclude:  # after the row numbers are taken, so the validation item's (time, row) key still matches
        events = events[~events["item"].isin(exclude)]
    out: dict[str, UserEvents] = {}
    users = events["user_id"].to_numpy()
    if not len(users):
        return out
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    ts, seqs = events["t"].tolist(), events["seq"].tolist()
    items, toks = events["item"].tolist(), events["token"].tolist()
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out[str(users[a])] = UserEvents(list(zip(ts[a:b], seqs[a:b], strict=True)), items[a:b], toks[a:b])
    return out


def record_events(events: UserEvents | None, valid_key: tuple[int, int], valid_item: str,
                  test_item: str) -> list[tuple[str, str]]:
    """The record's `typed_events`: events before `valid_key` (the validation item's positive event) without
    any event on the validation or test item, then that positive event itself (see the module docstring)."""
    if events is None:
        return []
    end = bisect.bisect_left(events.keys, valid_key)
    held_out = {valid_item, test_item}
    before = [(i, t) for i, t in zip(events.items[:end], events.tokens[:end], strict=True) if i not in held_out]
    own = events.tokens[end] if end < len(events.keys) and events.items[end] == valid_item else "purchase"
    return [*before, (valid_item, own)]


def training_events(record: Any) -> list[tuple[str, str]]:
    """What a record's training and validation read: its typed events before the validation item, or (a
    record without typed events) its training positives as purchases."""
    typed: Sequence[tuple[str, str]] = getattr(record, "typed_events", None) or ()
    if typed:
        return list(typed[:-1])
    items = getattr(record, "train_items", None) or record.train_positives
    return [(item, "purchase") for item in items]


def history_events(record: Any, split: str) -> list[tuple[str, str]]:
    """The typed events a split is predicted from: before the validation item (valid), or also it (test)."""
    if split == "valid":
        return training_events(record)
    if split == "test":
        typed: Sequence[tuple[str, str]] = getattr(record, "typed_events", None) or ()
        return list(typed) if typed else [*training_events(record), (record.valid_item, "purchase")]
    raise ValueError(f"split must be 'test' or 'valid', got {split!r}")


def next_positive_targets(events: Sequence[tuple[str, str]], positives: Sequence[str]) -> list[str | None]:
    """For each event, the next training positive strictly after it (None after the last one).

    A positive item's defining event is its first event with a positive token (cart, purchase, rating >= 4),
    else its first event; `positives` are the record's training positives in time order."""
    wanted = set(positives)
    defining: dict[str, int] = {}
    first: dict[str, int] = {}
    for j, (item, token) in enumerate(events):
        if item in wanted:
            first.setdefault(item, j)
            if token in POSITIVE_TOKENS:
                defining.setdefault(item, j)
    marks = sorted({defining.get(item, first.get(item, -1)) for item in wanted} - {-1})
    out: list[str | None] = [None] * len(events)
    k = 0
    for j in range(len(events)):
        while k < len(marks) and marks[k] <= j:
            k += 1
        if k < len(marks):
            out[j] = events[marks[k]][0]
    return out
