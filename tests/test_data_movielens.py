"""MovieLens: ml-1m's own .dat files (latin-1) and ml-latest CSVs convert to the tables; the same data in RecBole
atomic files gives the same users and products; bad files fail naming file, line and field."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from common.data.interactions import LoaderError
from common.data.movielens import AGE_BANDS, OCCUPATIONS, ZIP_REGIONS, age_band, zip_region
from common.data.sources import load_source
from common.protocol import check_segment_name
from tests.movielens_fixtures import MOVIES, RATINGS, USERS, write_dat, write_recbole_ml1m


def test_dat_files_convert(tmp_path: Path) -> None:
    """Ratings become events, latin-1 titles read right, users get age band, occupation name and US region."""
    m = load_source("movielens", write_dat(tmp_path))
    events = m.clicks.set_index(["user_id", "product_id"])["event_type"]
    assert (events[("1", "1")], events[("1", "2")], events[("2", "1")]) == ("purchase", "click", "view")
    assert m.clicks.set_index(["user_id", "product_id"]).at[("1", "1"), "session_id"] == "1@11322"  # user's day
    movies = m.products.set_index("product_id")
    assert movies.at["2", "product_name"] == "Misérables, Les"
    assert movies.at["1", "category"] == "Animation, Children's, Comedy"
    assert movies.at["1", "product_description"] == "Toy Story, a 1995 movie: Animation, Children's, Comedy."
    assert movies.at["3", "product_name"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert list(m.users.columns) == ["user_id", "age_band", "gender", "occupation", "region"]
    assert m.users.set_index("user_id").to_dict("index") == {
        "1": {"age_band": "under 18", "gender": "F", "occupation": "K-12 student", "region": "US Midwest"},
        "2": {"age_band": "56+", "gender": "M", "occupation": "self-employed", "region": "US South Central"},
        "3": {"age_band": "25-34", "gender": "M", "occupation": "doctor-health care", "region": "unknown"},
    }


def test_dat_and_recbole_agree(tmp_path: Path) -> None:
    """The same ml-1m records read from .dat files and from RecBole files give identical tables."""
    dat = load_source("movielens", write_dat(tmp_path / "dat"))
    recbole = load_source("recbole", write_recbole_ml1m(tmp_path / "recbole"))
    for table in ("users", "products", "clicks"):
        pd.testing.assert_frame_equal(getattr(dat, table), getattr(recbole, table), obj=table)


def test_utf8_copy_reads_the_same(tmp_path: Path) -> None:
    """A copy re-saved as UTF-8 gives the same titles as GroupLens' latin-1 files."""
    folder = write_dat(tmp_path)
    (folder / "movies.dat").write_text("\n".join(MOVIES) + "\n", encoding="utf-8")
    assert load_source("movielens", folder).products.set_index("product_id").at["2", "product_name"] == \
        "Misérables, Les"


def test_segment_values_are_valid_segment_names() -> None:
    """Every value the MovieLens rules can produce is a legal segment value (no "/" in occupations)."""
    values = {"age_band": [*AGE_BANDS.values(), "unknown"], "occupation": list(OCCUPATIONS),
              "region": [*ZIP_REGIONS.values(), "unknown"], "gender": ["M", "F"]}
    for key, names in values.items():
        for name in names:
            check_segment_name(f"{key}={name}", tuple(values))


def test_age_codes_and_real_ages_share_bands() -> None:
    """ml-1m codes are band lower bounds, so codes and real ages (ml-100k) land in the same bands."""
    ages = pd.Series(["1", "17", "18", "24", "45", "49", "50", "55", "56", "73", "", "x"])
    assert age_band(ages).tolist() == ["under 18", "under 18", "18-24", "18-24", "45-49", "45-49", "50-55",
                                       "50-55", "56+", "56+", "unknown", "unknown"]


def test_zip_regions() -> None:
    """5- and 9-digit US ZIPs map by first digit; Canadian, short or long codes are unknown."""
    zips = pd.Series(["02138", "10001", "30301", "60614", "73301", "94043", "98107-2117", "193122042", "T8H1N",
                      "5849574", "4806", ""])
    assert zip_region(zips).tolist() == ["US Northeast", "US Northeast", "US Southeast", "US Midwest",
                                         "US South Central", "US West", "US West", "US Northeast", "unknown",
                                         "unknown", "unknown", "unknown"]


def test_missing_user_and_movie_files_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Without users.dat and movies.dat the tables are still built, with a warning naming each missing file."""
    folder = write_dat(tmp_path)
    (folder / "users.dat").unlink()
    (folder / "movies.dat").unlink()
    with caplog.at_level(logging.WARNING):
        m = load_source("movielens", folder)
    assert set(m.users["region"]) == {"unknown"} and m.products["product_name"].str.startswith("item ").all()
    assert "users.dat: file not found" in caplog.text and "movies.dat: file not found" in caplog.text


def test_ml_latest_csv(tmp_path: Path) -> None:
    """ml-latest(-small) CSVs: half-star ratings follow the same event rule, "(no genres listed)" is no genre."""
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.5,964982703\n1,2,3.5,964981247\n"
                                          "2,1,2.5,964982224\n")
    (tmp_path / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                         '2,"Misérables, Les (1995)",(no genres listed)\n')
    m = load_source("movielens", tmp_path)
    assert sorted(m.clicks["event_type"]) == ["click", "purchase", "view"]
    movies = m.products.set_index("product_id")
    assert movies.at["2", "product_name"] == "Misérables, Les" and movies.at["2", "category"] == "unknown"
    assert movies.at["2", "product_description"] == "Misérables, Les, a 1995 movie."


@pytest.mark.parametrize(
    ("file", "lines", "needles"),
    [
        ("ratings.dat", [RATINGS[0], "1::2::5", *RATINGS[2:]], ("ratings.dat:2:", "expected 4 fields",
                                                               "UserID::MovieID::Rating::Timestamp")),
        ("ratings.dat", [*RATINGS[:2], "1::3::five::978301968"], ("ratings.dat:3:", "field Rating (column 3)",
                                                                  "'five'")),
        ("ratings.dat", [*RATINGS[:4], "2::3::5::yesterday"], ("ratings.dat:5:", "Timestamp (column 4)")),
        ("users.dat", [USERS[0], "2::M::56::21::70072"], ("users.dat:2:", "Occupation (column 4)", "0..20")),
        ("users.dat", ["1::F::30::10::48067"], ("users.dat:1:", "Age (column 3)", "age code", "'30'")),
        ("users.dat", ["1::X::1::10::48067"], ("users.dat:1:", "Gender (column 2)", "M or F")),
        ("movies.dat", ["x::Toy Story (1995)::Comedy"], ("movies.dat:1:", "MovieID (column 1)")),
        ("movies.dat", [""], ("movies.dat", "no rows")),
    ],
)
def test_bad_dat_lines_name_file_line_and_field(tmp_path: Path, file: str, lines: list[str],
                                                needles: tuple[str, ...]) -> None:
    """A malformed line stops the load with a LoaderError naming the file, the line and the field."""
    folder = write_dat(tmp_path)
    (folder / file).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(LoaderError) as err:
        load_source("movielens", folder)
    for needle in needles:
        assert needle in str(err.value)


def test_missing_folder_or_ratings_file(tmp_path: Path) -> None:
    """A path that is not a folder, or a folder without ratings, is refused naming what is missing."""
    with pytest.raises(LoaderError, match="not a folder"):
        load_source("movielens", tmp_path / "nowhere")
    (tmp_path / "movies.dat").write_text("1::Toy Story (1995)::Comedy\n")
    with pytest.raises(LoaderError, match=r"no ratings\.dat .*or ratings\.csv"):
        load_source("movielens", tmp_path)
