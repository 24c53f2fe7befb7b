"""The four marketplace tables as validated pandas DataFrames, bundled in `Marketplace`.

Every producer (generator, loaders, anonymizer) ends by building a `Marketplace`, so every consumer can rely on
the same column names and dtypes: ids and text are strings, timestamps are Unix seconds (int64, UTC), star
ratings are ints 1..5, event types come from a closed set. Errors name the file (or table) and the column,
because the person reading them is usually looking at a file they did not write.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
FORMATS: tuple[str, ...] = ("parquet", "jsonl")
STR, INT = "str", "int"
# Required columns per table; extra columns are kept (users' extra columns become segment candidates).
COLUMNS: dict[str, dict[str, str]] = {
    "reviews": {
        "review_id": STR, "product_id": STR, "user_id": STR,
        "review_text": STR, "star_rating": INT, "timestamp": INT,
    },
    "products": {"product_id": STR, "product_name": STR, "product_description": STR, "category": STR},
    "clicks": {"user_id": STR, "session_id": STR, "timestamp": INT, "event_type": STR, "product_id": STR},
    "users": {"user_id": STR, "region": STR},
}
TABLES: tuple[str, ...] = tuple(COLUMNS)
UNIQUE_KEYS = {"products": "product_id", "users": "user_id", "reviews": "review_id"}
MAY_BE_EMPTY = {"reviews"}


class DataError(ValueError):
    """Bad input data; the message names the file or table and the column."""


class SchemaError(DataError):
    """A table whose columns, dtypes or values break the schema."""


def _as_int(series: pd.Series, where: str, column: str) -> pd.Series:
    """Coerce to int64 or fail naming the first offending value (datetimes become Unix seconds)."""
    if pd.api.types.is_datetime64_any_dtype(series):
        naive = series.dt.tz_convert(None) if series.dt.tz is not None else series
        return ((naive - pd.Timestamp(0)) // pd.Timedelta(seconds=1)).astype("int64")
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() | ~np.isfinite(numeric.astype("float64"))
    if bad.any():
        first = series[bad].iloc[0]
        raise SchemaError(f"{where}: column '{column}' must be numeric, found {first!r} ({int(bad.sum())} bad rows)")
    return numeric.round().astype("int64")


def validate_table(name: str, df: pd.DataFrame, where: str | None = None) -> pd.DataFrame:
    """Return a copy of `df` with the schema's dtypes, or raise SchemaError naming `where` and the column."""
    where = where or f"table '{name}'"
    if name not in COLUMNS:
        raise SchemaError(f"{where}: unknown table {name!r}; expected one of {', '.join(TABLES)}")
    if not isinstance(df, pd.DataFrame):
        raise SchemaError(f"{where}: expected a pandas DataFrame, got {type(df).__name__}")
    spec = COLUMNS[name]
    missing = [c for c in spec if c not in df.columns]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {', '.join(map(repr, missing))}; "
                          f"table '{name}' needs {', '.join(spec)}")
    if df.empty and name not in MAY_BE_EMPTY:
        raise SchemaError(f"{where}: table '{name}' is empty")
    out = df.reset_index(drop=True).copy()
    for column, kind in spec.items():
        nulls = out[column].isna()
        if nulls.any():
            raise SchemaError(f"{where}: column '{column}' has {int(nulls.sum())} missing value(s)")
        out[column] = _as_int(out[column], where, column) if kind == INT else out[column].astype(str)
    for column in out.columns:
        if column not in spec and not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].fillna("unknown").astype(str)
    _check_values(name, out, where)
    return out


def _check_values(name: str, df: pd.DataFrame, where: str) -> None:
    if name == "clicks":
        bad = ~df["event_type"].isin(EVENT_TYPES)
        if bad.any():
            raise SchemaError(f"{where}: column 'event_type' has value {df['event_type'][bad].iloc[0]!r}; "
                              f"allowed: {', '.join(EVENT_TYPES)}")
    if name == "reviews" and len(df):
        bad = (df["star_rating"] < 1) | (df["star_rating"] > 5)
        if bad.any():
            first = int(df["star_rating"][bad].iloc[0])
            raise SchemaError(f"{where}: column 'star_rating' must be 1..5, found {first}")
    key = UNIQUE_KEYS.get(name)
    if key is not None:
        dup = df[key].duplicated()
        if dup.any():
            raise SchemaError(f"{where}: column '{key}' must be unique, {df[key][dup].iloc[0]!r} repeats")


@dataclass
class Marketplace:
    """The four tables, validated and cross-checked (every referenced product and user exists)."""

    reviews: pd.DataFrame
    products: pd.DataFrame
    clicks: pd.DataFrame
    users: pd.DataFrame

    def __post_init__(self) -> None:
        for name in TABLES:
            setattr(self, name, validate_table(name, getattr(self, name)))
        self._check_references()

    def _check_references(self) -> None:
        known = {"product_id": set(self.products["product_id"]), "user_id": set(self.users["user_id"])}
        for table in ("clicks", "reviews"):
            df: pd.DataFrame = getattr(self, table)
            for column, ids in known.items():
                unknown = ~df[column].isin(ids)
                if unknown.any():
                    raise SchemaError(f"table '{table}': column '{column}' refers to {int(unknown.sum())} row(s) "
                                      f"with no match in '{'products' if column == 'product_id' else 'users'}', "
                                      f"e.g. {df[column][unknown].iloc[0]!r}")

    def summary(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in TABLES}


def _table_path(folder: Path, name: str) -> Path:
    for fmt in FORMATS:
        path = folder / f"{name}.{fmt}"
        if path.exists():
            return path
    raise DataError(f"{folder}: no {name}.parquet or {name}.jsonl (a marketplace folder holds {', '.join(TABLES)})")


def read_table(path: Path) -> pd.DataFrame:
    """Read one Parquet or JSON-lines file; unreadable files raise DataError naming the file."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_json(path, lines=True, dtype=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from exc


def read_marketplace(folder: str | Path) -> Marketplace:
    """Load `<folder>/{reviews,products,clicks,users}.{parquet|jsonl}` and validate each table against its file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    tables = {}
    for name in TABLES:
        path = _table_path(folder, name)
        tables[name] = validate_table(name, read_table(path), where=str(path))
    return Marketplace(**tables)


def write_marketplace(m: Marketplace, folder: str | Path, fmt: str = "parquet",
                      meta: dict[str, object] | None = None) -> list[Path]:
    """Write the four tables (and `manifest.json` with row counts and `meta`); returns the written paths."""
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} not supported; choose one of {', '.join(FORMATS)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TABLES:
        df: pd.DataFrame = getattr(m, name)
        path = folder / f"{name}.{fmt}"
        for other in FORMATS:
            stale = folder / f"{name}.{other}"
            if other != fmt and stale.exists():
                stale.unlink()
        if fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_json(path, orient="records", lines=True, force_ascii=False)
        paths.append(path)
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({"format": fmt, "rows": m.summary(), **(meta or {})}, indent=2) + "\n")
    paths.append(manifest)
    log.info("wrote marketplace to %s (%s): %s", folder, fmt, m.summary())
    return paths


def merge_tables(m: Marketplace, events: str = "clicks") -> pd.DataFrame:
    """Join an event table (`clicks` or `reviews`) with products on product_id and users on user_id.

    Inner joins are exact because `Marketplace` already guarantees every reference resolves; the row count of
    the result equals that of the event table.
    """
    if events not in ("clicks", "reviews"):
        raise DataError(f"merge_tables: events must be 'clicks' or 'reviews', got {events!r}")
    left: pd.DataFrame = getattr(m, events)
    merged = left.merge(m.products, on="product_id", how="inner", validate="many_to_one")
    merged = merged.merge(m.users, on="user_id", how="inner", validate="many_to_one")
    return merged.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
