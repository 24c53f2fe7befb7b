"""Client-side anonymization, applied to a client's tables before any example is built or any training runs.

- user ids, session ids (which often embed them) and review ids become HMAC-SHA256 pseudonyms under a key
  that stays on the client: stable across rounds and runs with the same key, so a client's own records line
  up, but not linkable without the key (common/federation/client_secret.py draws and keeps that key);
- free text (review text and any extra text column of the reviews and clicks tables, such as a title or a
  search query) loses emails, URLs, IPs, phone, card, IBAN and social security numbers, full dates,
  addresses and @handles (common/data/pii.py lists what it does and does not catch);
- timestamps are floored to a granularity (an hour, a day, ...), which hides exact activity times but keeps
  order between days and the calendar season;
- the users table becomes k-anonymous over the COMBINATION of its quasi-identifiers (by default every users
  column but the id: region, age band, gender, occupation, ...): every combination of their values that
  remains is shared by at least k users. Rule, in order:
  1. values of a generalisable quasi-identifier held by fewer than k users become "other" (column by column);
  2. a user whose combination is still shared by fewer than k users gets all its generalisable
     quasi-identifiers set to "other" (it joins its group's all-"other" class);
  3. if that all-"other" class is then smaller than k, users of the largest classes with more than k
     members join it (so no class drops below k), and if that is not enough the whole group is generalised;
  4. users whose kept columns alone are shared by fewer than k users are dropped with their events and
     reviews (suppression).
  Kept columns (`keep_columns`) are quasi-identifiers that are never generalised but still counted: the
  routing segments (region) a client trains adapters for, which "other" would erase. Groups in steps 2-4
  are the users sharing the same kept values.
  Not covered: the events themselves (which products, how many, on which days) also single people out;
  k-anonymity of the users table does not make the event history anonymous.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common.data.pii import scrub_pii
from common.data.schema import COLUMNS, Marketplace

log = logging.getLogger(__name__)

__all__ = ["AnonymizationConfig", "anonymize_marketplace", "coarsen_timestamps", "generalize_rare",
           "k_anonymize", "pseudonym", "scrub_pii"]

GRANULARITY_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}
OTHER = "other"


@dataclass(frozen=True)
class AnonymizationConfig:
    """What to anonymize and how strongly; the key is never printed (repr=False) and never leaves the client."""

    key: bytes = field(repr=False, default_factory=lambda: secrets.token_bytes(32))
    time_granularity: str = "day"
    k: int = field(default=5, metadata={"help": "every quasi-identifier combination is shared by >= k users; "
                                                "1 turns k-anonymity off"})
    quasi_identifiers: tuple[str, ...] | None = field(
        default=None, metadata={"help": "users columns that could re-identify someone; None: all but user_id"})
    keep_columns: tuple[str, ...] = field(
        default=(), metadata={"help": "quasi-identifiers never generalised but counted (routing segments)"})
    scrub_text: bool = True
    pseudonym_prefix: str = "anon-"

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError(f"key must be at least 16 bytes, got {len(self.key)}")
        if self.time_granularity not in GRANULARITY_SECONDS:
            raise ValueError(f"time_granularity must be one of {', '.join(GRANULARITY_SECONDS)}, "
                             f"got {self.time_granularity!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        for name in ("quasi_identifiers", "keep_columns"):
            columns = getattr(self, name) or ()
            if "user_id" in columns or len(set(columns)) != len(columns):
                raise ValueError(f"{name} must name distinct columns other than user_id, got {columns}")


def pseudonym(value: str, key: bytes, prefix: str = "anon-") -> str:
    """Keyed, deterministic pseudonym: HMAC-SHA256(key, value), 16 bytes hex."""
    return prefix + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def coarsen_timestamps(ts: pd.Series | np.ndarray, granularity: str) -> np.ndarray:
    """Floor Unix seconds to the granularity (weeks start on the Unix epoch's weekday, a Thursday)."""
    step = GRANULARITY_SECONDS[granularity]
    values = np.asarray(ts, dtype=np.int64)
    return (values // step) * step


def generalize_rare(values: pd.Series, k: int, other: str = OTHER) -> pd.Series:
    """Values held by fewer than k rows become `other` (one row per user in the users table)."""
    counts = values.value_counts()
    rare = counts.index[counts < k]
    return values.where(~values.isin(rare), other)


def _merge_small_classes(group: pd.DataFrame, general: list[str], k: int) -> pd.DataFrame:
    """Steps 2 and 3 of the module rule for the users of one kept-values group (all `general` are str)."""
    size = group.groupby(general, sort=False)[general[0]].transform("size")
    group.loc[size < k, general] = OTHER
    is_other = (group[general] == OTHER).all(axis=1)
    short = k - int(is_other.sum())
    if short <= 0 or short == k:  # the all-"other" class is large enough, or nobody is in it
        return group
    spare: list[int] = []
    for _, cls in sorted(group[~is_other].groupby(general, sort=False), key=lambda kv: -len(kv[1])):
        spare.extend(cls.index[k:])  # a class keeps its first k members
    if len(spare) >= short:
        group.loc[spare[:short], general] = OTHER
    else:
        group[general] = OTHER
    return group


def k_anonymize(users: pd.DataFrame, k: int, quasi_identifiers: Sequence[str],
                keep_columns: Sequence[str] = ()) -> pd.DataFrame:
    """The users table made k-anonymous over the combination of `quasi_identifiers` + `keep_columns` by the
    module's rule; dropped users are simply absent from the result (index kept)."""
    keep = list(dict.fromkeys(keep_columns))
    general = [c for c in quasi_identifiers if c not in keep]
    out = users.copy()
    for column in general:
        out[column] = generalize_rare(out[column].astype(str), k)
    if k > 1 and general:
        groups = [g for _, g in out.groupby(keep, sort=False, dropna=False)] if keep else [out]
        out = pd.concat([_merge_small_classes(g.copy(), general, k) for g in groups]).loc[out.index]
    qi = [*keep, *general]
    if k > 1 and qi:
        size = out.groupby(qi, sort=False, dropna=False)[qi[0]].transform("size")
        out = out[size >= k]
    return out


def _free_text_columns(df: pd.DataFrame, table: str) -> list[str]:
    """review_text plus every extra (non-schema) text column: a title, a search query, a note..."""
    extra = [c for c in df.columns if c not in COLUMNS[table] and not pd.api.types.is_numeric_dtype(df[c])]
    return (["review_text"] if table == "reviews" else []) + extra


def _pseudonymize(series: pd.Series, cfg: AnonymizationConfig) -> pd.Series:
    uniques = series.unique()
    mapping = {u: pseudonym(str(u), cfg.key, cfg.pseudonym_prefix) for u in uniques}
    return series.map(mapping)


def _anonymous_users(users: pd.DataFrame, cfg: AnonymizationConfig) -> pd.DataFrame:
    qi = cfg.quasi_identifiers if cfg.quasi_identifiers is not None else tuple(
        c for c in users.columns if c != "user_id" and c not in cfg.keep_columns)
    missing = [c for c in (*qi, *cfg.keep_columns) if c not in users.columns]
    if missing:
        raise ValueError(f"quasi-identifier column(s) {missing} not in the users table (has {list(users.columns)})")
    kept = k_anonymize(users, cfg.k, qi, cfg.keep_columns)
    if kept.empty:
        raise ValueError(f"k-anonymity with k={cfg.k} suppressed all {len(users)} users: no value combination of "
                         f"the kept columns {list(cfg.keep_columns)} is shared by {cfg.k} users; use fewer, larger "
                         f"shards or a smaller k")
    if len(kept) < len(users):
        log.warning("k-anonymity (k=%d) dropped %d of %d users whose kept columns %s are shared by fewer than "
                    "k users", cfg.k, len(users) - len(kept), len(users), list(cfg.keep_columns))
    return kept


def anonymize_marketplace(m: Marketplace, cfg: AnonymizationConfig) -> Marketplace:
    """A new Marketplace with pseudonymous users and sessions, scrubbed free text, coarse times and a
    k-anonymous users table (see the module docstring). Products are public catalog data and stay as they are."""
    users = _anonymous_users(m.users, cfg)
    keep = set(users["user_id"])
    clicks = m.clicks[m.clicks["user_id"].isin(keep)].copy()
    reviews = m.reviews[m.reviews["user_id"].isin(keep)].copy()
    users["user_id"] = _pseudonymize(users["user_id"], cfg)
    clicks["user_id"] = _pseudonymize(clicks["user_id"], cfg)
    clicks["session_id"] = _pseudonymize(clicks["session_id"], cfg)
    clicks["timestamp"] = coarsen_timestamps(clicks["timestamp"], cfg.time_granularity)
    reviews["user_id"] = _pseudonymize(reviews["user_id"], cfg)
    reviews["review_id"] = _pseudonymize(reviews["review_id"], cfg)
    reviews["timestamp"] = coarsen_timestamps(reviews["timestamp"], cfg.time_granularity)
    if cfg.scrub_text:
        for table, df in (("reviews", reviews), ("clicks", clicks)):
            for column in _free_text_columns(df, table):
                df[column] = df[column].astype(str).map(scrub_pii)
    log.info("anonymized %d users (k=%d, timestamps to the %s)", len(users), cfg.k, cfg.time_granularity)
    return Marketplace(reviews=reviews, products=m.products, clicks=clicks, users=users)
