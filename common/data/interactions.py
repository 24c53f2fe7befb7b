"""Real data into the four tables: the rules every source format shares, and the generic table-file reader.

The per-format loaders (`sources.py`) read their files (`read_frame` for CSV, TSV, Parquet, JSON lines) and end
in `interactions_to_marketplace`, so one set of rules holds everywhere:
- an explicit rating becomes an event: rating >= 4 is a purchase (a positive), 3 a click, lower a view
  (seen but not liked); the value itself stays in an extra numeric `rating` column of the clicks table (the
  sequential model reads it as a "rating<r>" event type, common/data/typed_events.py); without ratings or
  event types every interaction is a purchase (implicit feedback);
- a session is a user's day when the source has no sessions;
- products referenced but missing from the item file get a placeholder text, users missing from the user
  file get region "unknown", so no interaction is silently dropped.
Errors are `LoaderError`s that name the file and the column; pandas errors never escape alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.schema import EVENT_TYPES, DataError, Marketplace
from common.names import safe_segment_value

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


class LoaderError(DataError):
    """A source file that cannot be converted; the message names the file and the column."""


def require_columns(df: pd.DataFrame, columns: tuple[str, ...] | list[str], where: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LoaderError(f"{where}: missing column(s) {', '.join(map(repr, missing))} "
                          f"(found {', '.join(map(str, df.columns)) or 'none'})")
    if df.empty:
        raise LoaderError(f"{where}: no rows")


def to_seconds(values: pd.Series, where: str, column: str) -> pd.Series:
    """Unix seconds from seconds, milliseconds (values > 1e11) or date strings."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        out = numeric.astype("float64")
        return pd.Series(np.where(out > 1e11, out // 1000, out).astype("int64"), index=values.index)
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    bad = parsed.isna()
    if bad.any():
        raise LoaderError(f"{where}: column '{column}' has {int(bad.sum())} value(s) that are neither numbers nor "
                          f"dates, e.g. {values[bad].iloc[0]!r}")
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return pd.Series(seconds.astype("int64"), index=values.index)


def ratings_to_events(ratings: pd.Series, where: str, column: str = "rating") -> pd.Series:
    numeric = pd.to_numeric(ratings, errors="coerce")
    if numeric.isna().any():
        raise LoaderError(f"{where}: column '{column}' must be numeric, found {ratings[numeric.isna()].iloc[0]!r}")
    return pd.Series(np.where(numeric >= 4, "purchase", np.where(numeric >= 3, "click", "view")), index=ratings.index)


def interactions_to_marketplace(inter: pd.DataFrame, where: str, products: pd.DataFrame | None = None,
                                users: pd.DataFrame | None = None, reviews: pd.DataFrame | None = None
                                ) -> Marketplace:
    """Build a Marketplace from interactions (user_id, product_id, timestamp, [rating | event_type],
    [session_id]) and optional product / user / review tables already in schema column names."""
    require_columns(inter, ("user_id", "product_id", "timestamp"), where)
    inter = inter.copy()
    for column in ("user_id", "product_id"):
        if inter[column].isna().any():
            raise LoaderError(f"{where}: column '{column}' has {int(inter[column].isna().sum())} missing value(s)")
        inter[column] = inter[column].astype(str)
    inter["timestamp"] = to_seconds(inter["timestamp"], where, "timestamp")
    if "event_type" in inter.columns:
        bad = ~inter["event_type"].isin(EVENT_TYPES)
        if bad.any():
            raise LoaderError(f"{where}: column 'event_type' has {inter['event_type'][bad].iloc[0]!r}; "
                              f"allowed: {', '.join(EVENT_TYPES)}")
    elif "rating" in inter.columns:
        inter["event_type"] = ratings_to_events(inter["rating"], where)
    else:
        inter["event_type"] = "purchase"
    if "session_id" not in inter.columns:
        inter["session_id"] = inter["user_id"] + "@" + (inter["timestamp"] // 86_400).astype(str)
    kept = []
    if "rating" in inter.columns:  # the value itself, for typed histories
        inter["rating"] = pd.to_numeric(inter["rating"], errors="coerce")
        kept = ["rating"]
    clicks = inter[["user_id", "session_id", "timestamp", "event_type", "product_id", *kept]]
    clicks = clicks.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    reviews = reviews if reviews is not None else pd.DataFrame(
        columns=["review_id", "product_id", "user_id", "review_text", "star_rating", "timestamp"])
    products = _complete_products(products, pd.concat([clicks["product_id"], reviews["product_id"].astype(str)]))
    users = _complete_users(users, pd.concat([clicks["user_id"], reviews["user_id"].astype(str)]))
    log.info("%s: %d events, %d products, %d users, %d reviews", where, len(clicks), len(products), len(users),
             len(reviews))
    return Marketplace(reviews=reviews, products=products, clicks=clicks, users=users)


def _complete_products(products: pd.DataFrame | None, referenced: pd.Series) -> pd.DataFrame:
    ids = pd.Index(referenced.unique())
    if products is None:
        products = pd.DataFrame({"product_id": pd.Series(dtype=str)})
    products = products.copy()
    products["product_id"] = products["product_id"].astype(str)
    products = products.drop_duplicates("product_id")
    missing = ids.difference(pd.Index(products["product_id"]))
    if len(missing):
        log.warning("%d referenced products have no metadata; giving them placeholder text", len(missing))
        products = pd.concat([products, pd.DataFrame({"product_id": missing})], ignore_index=True)
    defaults = {"product_name": "item " + products["product_id"], "category": UNKNOWN, "product_description": ""}
    for column, default in defaults.items():
        if column not in products.columns:
            products[column] = default
        products[column] = products[column].where(products[column].notna() & (products[column] != ""), default)
    return products.reset_index(drop=True)


def _complete_users(users: pd.DataFrame | None, referenced: pd.Series) -> pd.DataFrame:
    ids = pd.Index(referenced.unique())
    users = pd.DataFrame({"user_id": pd.Series(dtype=str)}) if users is None else users.copy()
    users["user_id"] = users["user_id"].astype(str)
    users = users.drop_duplicates("user_id")
    missing = ids.difference(pd.Index(users["user_id"]))
    if len(missing):
        users = pd.concat([users, pd.DataFrame({"user_id": missing})], ignore_index=True)
    if "region" not in users.columns:
        users["region"] = UNKNOWN
    users = users.fillna({c: UNKNOWN for c in users.columns if c != "user_id"})
    for column in users.columns.drop("user_id"):  # any column may become a segment: keep its values safe
        if not pd.api.types.is_numeric_dtype(users[column]):
            users[column] = users[column].astype(str).map(safe_segment_value)
    return users.reset_index(drop=True)


def read_frame(path: Path) -> pd.DataFrame:
    """CSV, TSV, Parquet or JSON lines, chosen by suffix; unreadable files raise LoaderError naming the file."""
    if not path.exists():
        raise LoaderError(f"{path}: file not found")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json", ".jsonl.gz", ".json.gz"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix in (".csv", ".csv.gz", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",", dtype=str,
                               keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LoaderError(f"{path}: cannot parse ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    raise LoaderError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .parquet or .jsonl)")
