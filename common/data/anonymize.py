"""Client-side anonymization, applied to a client's tables before any example is built or any training runs.

- user ids (and session ids, which often embed them) become HMAC-SHA256 pseudonyms under a key that stays on
  the client: stable across rounds, so a client's own records line up, but not linkable without the key;
- review text loses emails, URLs, @handles, card-like and phone-like numbers;
- timestamps are floored to a granularity (an hour, a day, ...), which hides exact activity times but keeps
  order between days and the calendar season;
- rare values of user metadata columns (shared by fewer than k users) become "other", so no segment value
  singles out a handful of people.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common.data.schema import Marketplace

log = logging.getLogger(__name__)

GRANULARITY_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400, "week": 7 * 86_400}
OTHER = "other"
# Order matters: emails before URLs (an email holds a domain) and handles (an email holds an @), cards before phones.
PII_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("[EMAIL]", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("[URL]", re.compile(r"\b(?:https?://|www\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|io|co)(?:/\S*)?\b",
                         re.IGNORECASE)),
    ("[HANDLE]", re.compile(r"(?<![\w@])@\w{2,}")),
    ("[CARD]", re.compile(r"\b(?:\d[ -]?){13,19}\b")),
    ("[PHONE]", re.compile(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}[ .-]\d{2,4}[ .-]?\d{2,5}\b")),
)


@dataclass(frozen=True)
class AnonymizationConfig:
    """What to anonymize and how strongly; the key is never printed (repr=False) and never leaves the client."""

    key: bytes = field(repr=False, default_factory=lambda: secrets.token_bytes(32))
    time_granularity: str = "day"
    k: int = 5  # every kept metadata value is shared by at least k users
    metadata_columns: tuple[str, ...] | None = None  # users columns to generalise; None: all but user_id
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


def pseudonym(value: str, key: bytes, prefix: str = "anon-") -> str:
    """Keyed, deterministic pseudonym: HMAC-SHA256(key, value), 16 bytes hex."""
    return prefix + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def scrub_pii(text: str) -> str:
    """Replace emails, URLs, @handles, card-like and phone-like numbers by placeholders."""
    for placeholder, pattern in PII_PATTERNS:
        text = pattern.sub(placeholder, text)
    return text


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


def _pseudonymize(series: pd.Series, cfg: AnonymizationConfig) -> pd.Series:
    uniques = series.unique()
    mapping = {u: pseudonym(str(u), cfg.key, cfg.pseudonym_prefix) for u in uniques}
    return series.map(mapping)


def anonymize_marketplace(m: Marketplace, cfg: AnonymizationConfig) -> Marketplace:
    """A new Marketplace with pseudonymous users and sessions, scrubbed reviews, coarse times, k-anonymous
    metadata. Products are public catalog data and stay as they are."""
    users = m.users.copy()
    columns = cfg.metadata_columns if cfg.metadata_columns is not None else tuple(
        c for c in users.columns if c != "user_id")
    missing = [c for c in columns if c not in users.columns]
    if missing:
        raise ValueError(f"metadata column(s) {missing} not in the users table (has {list(users.columns)})")
    for column in columns:
        users[column] = generalize_rare(users[column].astype(str), cfg.k)
    users["user_id"] = _pseudonymize(users["user_id"], cfg)
    clicks = m.clicks.copy()
    clicks["user_id"] = _pseudonymize(clicks["user_id"], cfg)
    clicks["session_id"] = _pseudonymize(clicks["session_id"], cfg)
    clicks["timestamp"] = coarsen_timestamps(clicks["timestamp"], cfg.time_granularity)
    reviews = m.reviews.copy()
    reviews["user_id"] = _pseudonymize(reviews["user_id"], cfg)
    reviews["review_id"] = _pseudonymize(reviews["review_id"], cfg)
    reviews["timestamp"] = coarsen_timestamps(reviews["timestamp"], cfg.time_granularity)
    if cfg.scrub_text:
        reviews["review_text"] = reviews["review_text"].map(scrub_pii)
    log.info("anonymized %d users (k=%d, timestamps to the %s)", len(users), cfg.k, cfg.time_granularity)
    return Marketplace(reviews=reviews, products=m.products, clicks=clicks, users=users)
