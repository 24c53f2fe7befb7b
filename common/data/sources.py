"""One loader per source format (a flat CSV/Parquet/JSONL table, RecBole atomic files, Amazon Reviews 2023 JSON
lines), each converted through `interactions.interactions_to_marketplace`; `load_source` picks one by name.

Flat table: one row per interaction; `--mapping col=source,...` renames the file's columns to schema names
(`segment:<name>` makes a user column a segment).
RecBole: `<name>.inter` (required), `<name>.item`, `<name>.user`, tab-separated, headers typed `field:type`.
Item text comes from title-like, category-like (genre, class, categories) and the remaining item columns; user
columns become segment candidates. MovieLens in RecBole files (a `movie_title` item field; ml-1m's coded age and
occupation) follows the MovieLens conventions of `movielens.py`, so it matches `--format movielens`: age ->
age_band, occupation code -> name, zip code -> a US region. Those user rules hold for any RecBole data.
MovieLens: its own `.dat` files (or ml-latest CSVs), see `movielens.py`.
Amazon 2023: a reviews file (user_id, parent_asin, rating, timestamp in ms, title, text) and optionally a
`meta_*` file (parent_asin, title, description, categories, main_category). Every review is an interaction
(rating >= 4 a purchase) and a review row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.interactions import (
    UNKNOWN,
    LoaderError,
    interactions_to_marketplace,
    read_frame,
    require_columns,
    to_seconds,
)
from common.data.movielens import load_movielens, movie_products, user_segments
from common.data.schema import Marketplace

log = logging.getLogger(__name__)
FLAT_COLUMNS = ("user_id", "product_id", "timestamp", "event_type", "rating", "session_id", "product_name",
                "product_description", "category", "review_text", "region")


def parse_mapping(text: str | None) -> dict[str, str]:
    """`col=src,col2=src2` -> {col: src}; targets must be known schema names (or `segment:<name>`)."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        target, sep, source = part.partition("=")
        if not sep or not target or not source:
            raise LoaderError(f"--mapping: {part!r} is not col=source")
        if target not in FLAT_COLUMNS and not target.startswith("segment:"):
            raise LoaderError(f"--mapping: unknown target column {target!r}; known: {', '.join(FLAT_COLUMNS)} "
                              f"or segment:<name>")
        mapping[target] = source
    return mapping


def load_flat(path: Path, mapping: dict[str, str] | None = None) -> Marketplace:
    """One flat CSV/Parquet/JSONL table of interactions (one row each), columns renamed by `mapping`."""
    df = read_frame(path)
    mapping = mapping or {}
    absent = [f"{t}={s}" for t, s in mapping.items() if s not in df.columns]
    if absent:
        raise LoaderError(f"{path}: mapped column(s) not in the file: {', '.join(absent)} "
                          f"(file has {', '.join(map(str, df.columns))})")
    df = df.rename(columns={s: t for t, s in mapping.items()})
    where = str(path)
    require_columns(df, ("user_id", "product_id", "timestamp"), where)
    product_cols = [c for c in ("product_name", "product_description", "category") if c in df.columns]
    products = df[["product_id", *product_cols]].astype(str).drop_duplicates("product_id")
    user_cols = [c for c in df.columns if c == "region" or c.startswith("segment:")]
    users = df[["user_id", *user_cols]].astype(str).drop_duplicates("user_id")
    users = users.rename(columns={c: c.removeprefix("segment:") for c in user_cols})
    reviews = None
    if "review_text" in df.columns:
        has = df["review_text"].notna() & (df["review_text"].astype(str).str.strip() != "")
        if "rating" not in df.columns:
            raise LoaderError(f"{where}: column 'rating' is needed with 'review_text' (it becomes star_rating)")
        r = df[has]
        reviews = pd.DataFrame({"review_id": [f"r{i}" for i in range(len(r))], "product_id": r["product_id"],
                                "user_id": r["user_id"], "review_text": r["review_text"],
                                "star_rating": r["rating"], "timestamp": to_seconds(r["timestamp"], where,
                                                                                    "timestamp")})
    inter = df[[c for c in ("user_id", "product_id", "timestamp", "event_type", "rating", "session_id")
                if c in df.columns]]
    return interactions_to_marketplace(inter, where, products=products, users=users, reviews=reviews)


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file with its `name:type` header stripped to `name`; float fields checked."""
    if not path.exists():
        raise LoaderError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise LoaderError(f"{path}: cannot parse ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from exc
    names, types = [], []
    for raw in df.columns:
        name, sep, kind = str(raw).partition(":")
        if not sep or kind not in ("token", "token_seq", "float", "float_seq"):
            raise LoaderError(f"{path}: header field {raw!r} is not 'name:type' with type token, token_seq, "
                              f"float or float_seq")
        names.append(name)
        types.append(kind)
    df.columns = names
    for name, kind in zip(names, types, strict=True):
        if kind == "float":
            bad = pd.to_numeric(df[name], errors="coerce").isna() & df[name].notna()
            if bad.any():
                raise LoaderError(f"{path}: column '{name}' is declared float, found {df[name][bad].iloc[0]!r}")
    if df.empty:
        raise LoaderError(f"{path}: no rows")
    return df


def _pick(columns: list[str], needles: tuple[str, ...]) -> str | None:
    return next((c for c in columns if any(n in c.lower() for n in needles)), None)


def _recbole_movies(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """MovieLens items (RecBole's movie_title, genre or class, release_year) in the MovieLens conventions."""
    values = df.fillna("")
    genre, year = _pick(cols, ("genre", "class")), _pick(cols, ("year",))
    genres = values[genre].astype(str).str.split() if genre else pd.Series([[]] * len(df), index=df.index)
    years = (pd.to_numeric(values[year], errors="coerce").round().astype("Int64").astype(str).replace("<NA>", "")
             if year else pd.Series("", index=df.index))
    return movie_products(df["item_id"], values["movie_title"].astype(str), genres, years)


def _recbole_items(df: pd.DataFrame, where: str) -> pd.DataFrame:
    require_columns(df, ("item_id",), where)
    cols = [c for c in df.columns if c != "item_id"]
    if "movie_title" in cols:
        return _recbole_movies(df, cols)
    title, cat = _pick(cols, ("title", "name")), _pick(cols, ("genre", "class", "categor"))
    rest = [c for c in cols if c not in (title, cat)]
    values = df.fillna("")
    out = pd.DataFrame({"product_id": df["item_id"].astype(str)})
    out["product_name"] = values[title].astype(str) if title else "item " + out["product_id"]
    out["category"] = values[cat].astype(str).str.split().str[0].fillna(UNKNOWN) if cat else UNKNOWN
    parts = [c + ": " + values[c].astype(str) for c in ([cat] if cat else []) + rest]
    out["product_description"] = pd.concat(parts, axis=1).agg("; ".join, axis=1) if parts else ""
    return out


def _recbole_users(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """User columns as segment candidates: a country/region/state column is the region, else the zip code's
    US region; age -> age_band, ml-1m occupation codes -> names (`movielens.user_segments`)."""
    require_columns(df, ("user_id",), where)
    out = df.copy()
    out["user_id"] = out["user_id"].astype(str)
    columns = list(out.columns)
    zip_col = _pick(columns, ("zip", "postal"))
    region_col = _pick(columns, ("country", "region", "state"))
    if "region" not in columns and region_col:
        out["region"] = out[region_col].fillna(UNKNOWN).astype(str)
    out = user_segments(out.rename(columns={zip_col: "zip_code"}) if zip_col else out)
    if "region" not in out.columns:
        out["region"] = UNKNOWN
    return out.fillna(UNKNOWN)


def load_recbole(path: Path) -> Marketplace:
    """`path` is a folder holding one `<name>.inter` (+ optional .item/.user) or the .inter file itself."""
    if path.is_dir():
        inters = sorted(path.glob("*.inter"))
        if len(inters) != 1:
            raise LoaderError(f"{path}: expected exactly one .inter file, found {len(inters)}")
        path = inters[0]
    if path.suffix != ".inter":
        raise LoaderError(f"{path}: a RecBole interaction file ends in .inter")
    inter = read_atomic(path)
    require_columns(inter, ("user_id", "item_id"), str(path))
    inter = inter.rename(columns={"item_id": "product_id"})
    if "timestamp" not in inter.columns:
        log.warning("%s: no timestamp column; using row order as time", path)
        inter["timestamp"] = np.arange(len(inter))
    keep = [c for c in ("user_id", "product_id", "timestamp", "rating") if c in inter.columns]
    item_path, user_path = path.with_suffix(".item"), path.with_suffix(".user")
    items = _recbole_items(read_atomic(item_path), str(item_path)) if item_path.exists() else None
    users = _recbole_users(read_atomic(user_path), str(user_path)) if user_path.exists() else None
    return interactions_to_marketplace(inter[keep], str(path), products=items, users=users)


def _amazon_files(path: Path) -> tuple[Path, Path | None]:
    if path.is_file():
        meta = path.with_name("meta_" + path.name)
        return path, meta if meta.exists() else None
    if not path.is_dir():
        raise LoaderError(f"{path}: no such file or folder")
    files = sorted(p for p in path.iterdir() if p.name.endswith((".jsonl", ".jsonl.gz")))
    reviews = [p for p in files if not p.name.startswith("meta_")]
    metas = [p for p in files if p.name.startswith("meta_")]
    if len(reviews) != 1 or len(metas) > 1:
        raise LoaderError(f"{path}: expected one reviews .jsonl and at most one meta_*.jsonl, found "
                          f"{[p.name for p in files]}")
    return reviews[0], metas[0] if metas else None


def _text(value: object) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(str(v) for v in value)
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A text column (lists joined), or empty strings when the file has no such field."""
    if name not in df.columns:
        return pd.Series("", index=df.index, dtype=object)
    return df[name].map(_text).astype(object)


def load_amazon2023(path: Path) -> Marketplace:
    """Amazon Reviews 2023: reviews JSONL (+ meta_ JSONL next to it)."""
    review_path, meta_path = _amazon_files(path)
    where = str(review_path)
    raw = read_frame(review_path)
    item_col = "parent_asin" if "parent_asin" in raw.columns else "asin"
    require_columns(raw, ("user_id", item_col, "rating", "timestamp"), where)
    raw = raw.rename(columns={item_col: "product_id"})
    ts = to_seconds(raw["timestamp"], where, "timestamp")
    rating = pd.to_numeric(raw["rating"], errors="coerce")
    if rating.isna().any() or ((rating < 1) | (rating > 5)).any():
        raise LoaderError(f"{where}: column 'rating' must be a number 1..5, "
                          f"found {raw['rating'][rating.isna() | (rating < 1) | (rating > 5)].iloc[0]!r}")
    text = _column(raw, "title") + ". " + _column(raw, "text")
    reviews = pd.DataFrame({"review_id": [f"r{i}" for i in range(len(raw))],
                            "product_id": raw["product_id"].astype(str), "user_id": raw["user_id"].astype(str),
                            "review_text": text.str.strip(". "), "star_rating": rating.round().astype("int64"),
                            "timestamp": ts})
    inter = pd.DataFrame({"user_id": reviews["user_id"], "product_id": reviews["product_id"], "timestamp": ts,
                          "rating": rating})
    products = None
    if meta_path is not None:
        meta = read_frame(meta_path)
        require_columns(meta, ("parent_asin", "title"), str(meta_path))
        last = meta["categories"].map(lambda v: _text(v[-1]) if _text(v) else "") if "categories" in meta else None
        main = _column(meta, "main_category").replace("", UNKNOWN)
        category = main if last is None else last.where(last != "", main)
        products = pd.DataFrame({"product_id": meta["parent_asin"].astype(str),
                                 "product_name": _column(meta, "title"), "category": category,
                                 "product_description": (_column(meta, "description") + " "
                                                         + _column(meta, "features")).str.strip()})
    return interactions_to_marketplace(inter, where, products=products, reviews=reviews)


SOURCE_FORMATS: tuple[str, ...] = ("recbole", "movielens", "amazon2023", "csv")


def load_source(fmt: str, path: str | Path, mapping: dict[str, str] | None = None) -> Marketplace:
    """Convert a real data set in `fmt` (one of SOURCE_FORMATS) at `path` into a Marketplace."""
    path = Path(path)
    if fmt not in SOURCE_FORMATS:
        raise LoaderError(f"unknown source format {fmt!r}; choose one of {', '.join(SOURCE_FORMATS)}")
    if mapping and fmt != "csv":
        raise LoaderError(f"--mapping applies to the csv format only, not {fmt!r}")
    if fmt == "recbole":
        return load_recbole(path)
    if fmt == "movielens":
        return load_movielens(path)
    if fmt == "amazon2023":
        return load_amazon2023(path)
    return load_flat(path, mapping)
