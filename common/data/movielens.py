"""MovieLens in its own files, and the MovieLens conventions every loader of MovieLens data shares.

The conventions (used here and by the RecBole loader, so ml-1m read from `.dat` files or from RecBole atomic
files gives the same user and product columns, and results on either are comparable):
- `age_band`: MovieLens-1M's age groups. ml-1m stores each group's lower bound as its code (1, 18, 25, 35, 45,
  50, 56), so cutting at those bounds maps the codes and real ages (ml-100k) to the same labels.
- `occupation`: ml-1m's codes 0..20 become the README's names with "/" written "-" ("doctor-health care"),
  because a segment value may not contain "/" (`common.protocol.check_segment_name`).
- `region`: from a US ZIP code's first digit (its national zone) to one of five US regions, see ZIP_REGIONS;
  non-US or malformed codes give "unknown". The zip code itself is dropped: too fine to be a segment and
  identifying.
- products: the title without its "(year)" as product_name, the genres joined by ", " as category, and
  "<title>, a <year> movie: <genres>." as description.

Files: ml-1m's `ratings.dat` (UserID::MovieID::Rating::Timestamp, required), `movies.dat`
(MovieID::Title::Genres, genres "|"-separated) and `users.dat` (UserID::Gender::Age::Occupation::Zip-code),
latin-1 as GroupLens ships them (UTF-8 read too); or ml-latest(-small)'s `ratings.csv` and `movies.csv`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.interactions import UNKNOWN, LoaderError, interactions_to_marketplace, read_frame, require_columns
from common.data.schema import Marketplace

log = logging.getLogger(__name__)

# Lower bound of each band (= ml-1m's age code) -> label.
AGE_BANDS: dict[int, str] = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55",
                             56: "56+"}
# ml-1m README's occupation list, index = code, "/" written "-".
OCCUPATIONS: tuple[str, ...] = (
    "other", "academic-educator", "artist", "clerical-admin", "college-grad student", "customer service",
    "doctor-health care", "executive-managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales-marketing", "scientist", "self-employed", "technician-engineer", "tradesman-craftsman",
    "unemployed", "writer",
)
# First ZIP digit (national zone) -> region. Zones 0-1: New England, NJ, NY, PA, DE; 2-3: DC, MD, VA, WV, NC, SC,
# TN, AL, GA, FL, MS; 4-6: OH, IN, MI, KY, IA, MN, WI, the Dakotas, MT, IL, MO, KS, NE; 7: TX, OK, AR, LA;
# 8-9: the Mountain and Pacific states. Zones follow state lines only roughly (KY, MT), which is good enough for
# a segment of a few hundred users.
ZIP_REGIONS: dict[str, str] = {"0": "US Northeast", "1": "US Northeast", "2": "US Southeast", "3": "US Southeast",
                               "4": "US Midwest", "5": "US Midwest", "6": "US Midwest", "7": "US South Central",
                               "8": "US West", "9": "US West"}
US_ZIP = re.compile(r"^\d{5}(-?\d{4})?$")  # ZIP or ZIP+4, with or without the hyphen
TITLE_YEAR = re.compile(r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$")
# Each .dat file's fields, named as in the ml-1m README so errors speak the file's language.
DAT_FIELDS: dict[str, tuple[str, ...]] = {
    "ratings.dat": ("UserID", "MovieID", "Rating", "Timestamp"),
    "movies.dat": ("MovieID", "Title", "Genres"),
    "users.dat": ("UserID", "Gender", "Age", "Occupation", "Zip-code"),
}


def age_band(ages: pd.Series) -> pd.Series:
    """Age (or ml-1m age code) -> AGE_BANDS label; missing or non-numeric -> "unknown"."""
    age = pd.to_numeric(ages, errors="coerce")
    bins = [-np.inf, *list(AGE_BANDS)[1:], np.inf]  # code 1 stands for everyone under 18
    band = pd.cut(age, bins=bins, labels=list(AGE_BANDS.values()), right=False)
    return band.astype(str).where(age.notna(), UNKNOWN)


def zip_region(zips: pd.Series) -> pd.Series:
    """US ZIP code -> ZIP_REGIONS region; anything that is not a 5- or 9-digit ZIP -> "unknown"."""
    text = zips.astype(str).str.strip()
    return text.str[0].map(ZIP_REGIONS).where(text.str.match(US_ZIP), UNKNOWN).fillna(UNKNOWN)


def has_occupation_codes(occupations: pd.Series) -> bool:
    """Whether every value is an ml-1m occupation code (an integer 0..20), so it can be named."""
    codes = pd.to_numeric(occupations, errors="coerce")
    in_range = codes.between(0, len(OCCUPATIONS) - 1)
    return bool(codes.notna().all() and (codes == codes.round()).all() and in_range.all())


def user_segments(users: pd.DataFrame) -> pd.DataFrame:
    """age -> age_band, ml-1m occupation codes -> names, zip_code -> region (zip dropped), in place of the
    original columns so both MovieLens loaders give the same column order; other columns kept."""
    out = users.copy()
    if "occupation" in out.columns and has_occupation_codes(out["occupation"]):
        codes = pd.to_numeric(out["occupation"]).astype(int)
        out["occupation"] = codes.map(dict(enumerate(OCCUPATIONS)))
    renamed: dict[str, str] = {}
    if "age" in out.columns:
        out["age"], renamed["age"] = age_band(out["age"]), "age_band"
    if "zip_code" in out.columns and "region" not in out.columns:
        out["zip_code"], renamed["zip_code"] = zip_region(out["zip_code"]), "region"
    elif "zip_code" in out.columns:
        out = out.drop(columns=["zip_code"])
    return out.rename(columns=renamed)


def _description(title: str, year: str, genres: list[str]) -> str:
    when = f"a {year} movie" if year else "a movie"
    return f"{title}, {when}: {', '.join(genres)}." if genres else f"{title}, {when}."


def movie_products(ids: pd.Series, titles: pd.Series, genres: pd.Series, years: pd.Series) -> pd.DataFrame:
    """Product rows from movie titles (without year), genre lists and years ("" when unknown)."""
    rows = zip(titles.astype(str), years.astype(str), genres, strict=True)
    return pd.DataFrame({"product_id": ids.astype(str).to_numpy(), "product_name": titles.astype(str).to_numpy(),
                         "category": [", ".join(g) or UNKNOWN for g in genres],
                         "product_description": [_description(t, y, g) for t, y, g in rows]})


def split_title_year(raw: pd.Series) -> tuple[pd.Series, pd.Series]:
    """"Toy Story (1995)" -> ("Toy Story", "1995"); a title without a trailing year keeps its text, year ""."""
    parts = raw.str.extract(TITLE_YEAR)
    return parts["title"].fillna(raw.str.strip()), parts["year"].fillna("")


def _decode(path: Path) -> str:
    """The file's text. GroupLens ships latin-1; UTF-8 is tried first because latin-1 never fails, while latin-1
    accents (0xE9 for "é") are invalid UTF-8, so a copy someone re-saved as UTF-8 reads right too."""
    if not path.is_file():
        raise LoaderError(f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_dat(path: Path) -> pd.DataFrame:
    """A "::"-separated ml-1m file as strings, columns from DAT_FIELDS, the 1-based line number in "line"."""
    fields = DAT_FIELDS[path.name]
    rows, numbers = [], []
    for number, line in enumerate(_decode(path).split("\n"), 1):  # splitlines() also breaks at latin-1's 0x85
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != len(fields):
            raise LoaderError(f"{path}:{number}: expected {len(fields)} fields {'::'.join(fields)}, found "
                              f"{len(parts)} in {line[:80]!r}")
        rows.append(parts)
        numbers.append(number)
    if not rows:
        raise LoaderError(f"{path}: no rows")
    frame = pd.DataFrame(rows, columns=list(fields))
    frame["line"] = numbers
    return frame


def _check(frame: pd.DataFrame, field: str, path: Path, bad: pd.Series, rule: str) -> None:
    """Raise naming the file, line and field of the first row where `bad` holds."""
    if bad.any():
        first = int(bad.to_numpy().argmax())
        column = DAT_FIELDS[path.name].index(field) + 1
        raise LoaderError(f"{path}:{frame['line'].iloc[first]}: field {field} (column {column}) must be {rule}, "
                          f"found {frame[field].iloc[first]!r}")


def _integers(frame: pd.DataFrame, field: str, path: Path, low: int, high: int | None = None) -> pd.Series:
    values = pd.to_numeric(frame[field], errors="coerce")
    bad = values.isna() | (values != values.round()) | (values < low)
    if high is not None:
        bad |= values > high
    _check(frame, field, path, bad, f"an integer {low}..{high}" if high is not None else f"an integer >= {low}")
    return values.astype("int64")


def _dat_ratings(path: Path) -> pd.DataFrame:
    frame = read_dat(path)
    for field in ("UserID", "MovieID"):
        _integers(frame, field, path, 1)
    return pd.DataFrame({"user_id": frame["UserID"], "product_id": frame["MovieID"],
                         "timestamp": _integers(frame, "Timestamp", path, 0),
                         "rating": _integers(frame, "Rating", path, 1, 5)})


def _dat_movies(path: Path) -> pd.DataFrame:
    frame = read_dat(path)
    _integers(frame, "MovieID", path, 1)
    titles, years = split_title_year(frame["Title"])
    genres = frame["Genres"].map(lambda text: [g for g in text.split("|") if g])
    return movie_products(frame["MovieID"], titles, genres, years)


def _dat_users(path: Path) -> pd.DataFrame:
    frame = read_dat(path)
    _integers(frame, "UserID", path, 1)
    _check(frame, "Gender", path, ~frame["Gender"].isin(["M", "F"]), "M or F")
    _check(frame, "Age", path, ~frame["Age"].isin([str(code) for code in AGE_BANDS]),
           f"an ml-1m age code ({', '.join(map(str, AGE_BANDS))})")
    _integers(frame, "Occupation", path, 0, len(OCCUPATIONS) - 1)
    users = pd.DataFrame({"user_id": frame["UserID"], "age": frame["Age"], "gender": frame["Gender"],
                          "occupation": frame["Occupation"], "zip_code": frame["Zip-code"]})
    return user_segments(users)  # the column order of RecBole's ml-1m.user, so both loaders match


def _optional(path: Path, read: Callable[[Path], pd.DataFrame], without: str) -> pd.DataFrame | None:
    """`read(path)`, or None with a warning saying what is lost: the tables can be built without it."""
    if path.exists():
        return read(path)
    log.warning("%s: file not found; %s", path, without)
    return None


def _csv_movies(path: Path) -> pd.DataFrame:
    movies = read_frame(path)
    require_columns(movies, ("movieId", "title", "genres"), str(path))
    titles, years = split_title_year(movies["title"].astype(str))
    genres = movies["genres"].astype(str).map(lambda t: [g for g in t.split("|") if g and g != "(no genres listed)"])
    return movie_products(movies["movieId"], titles, genres, years)


def _csv_ratings(path: Path) -> pd.DataFrame:
    ratings = read_frame(path)
    require_columns(ratings, ("userId", "movieId", "rating", "timestamp"), str(path))
    return ratings.rename(columns={"userId": "user_id", "movieId": "product_id"})[
        ["user_id", "product_id", "timestamp", "rating"]]


def load_movielens(path: Path) -> Marketplace:
    """`path` is a MovieLens folder: ml-1m's .dat files (ratings.dat required, movies.dat and users.dat used
    when present), or ml-latest(-small)'s ratings.csv (+ movies.csv; that layout has no user file)."""
    if not path.is_dir():
        raise LoaderError(f"{path}: not a folder (give the MovieLens folder holding ratings.dat or ratings.csv)")
    movie_text, no_users = "movies get placeholder text", "every user's segments are unknown"
    if (path / "ratings.dat").exists():
        products = _optional(path / "movies.dat", _dat_movies, movie_text)
        users = _optional(path / "users.dat", _dat_users, no_users)
        return interactions_to_marketplace(_dat_ratings(path / "ratings.dat"), str(path / "ratings.dat"),
                                           products=products, users=users)
    if (path / "ratings.csv").exists():
        products = _optional(path / "movies.csv", _csv_movies, movie_text)
        return interactions_to_marketplace(_csv_ratings(path / "ratings.csv"), str(path / "ratings.csv"),
                                           products=products)
    raise LoaderError(f"{path}: no ratings.dat (ml-1m layout) or ratings.csv (ml-latest layout) in this folder")
