"""Schema: validated tables, round trips through Parquet/JSONL, merge by product_id/user_id."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from common.data.schema import (
    DataError,
    Marketplace,
    SchemaError,
    merge_tables,
    read_marketplace,
    validate_table,
    write_marketplace,
)


def tiny_marketplace() -> Marketplace:
    products = pd.DataFrame({"product_id": ["p1", "p2"], "product_name": ["Red mug", "Blue pan"],
                             "product_description": ["A mug.", "A pan."], "category": ["kitchen", "kitchen"]})
    users = pd.DataFrame({"user_id": ["u1", "u2"], "region": ["Europe", "Asia-Pacific"]})
    clicks = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "session_id": ["s1", "s1", "s2"],
                           "timestamp": [30, 10, 20], "event_type": ["purchase", "view", "click"],
                           "product_id": ["p1", "p1", "p2"]})
    reviews = pd.DataFrame({"review_id": ["r1"], "product_id": ["p2"], "user_id": ["u2"],
                            "review_text": ["Great pan"], "star_rating": [5.0], "timestamp": [25]})
    return Marketplace(reviews=reviews, products=products, clicks=clicks, users=users)


def test_validate_coerces_dtypes() -> None:
    """Float ratings become ints and numeric ids become strings, so every consumer sees one schema."""
    m = tiny_marketplace()
    assert m.reviews["star_rating"].dtype == "int64"
    df = validate_table("users", pd.DataFrame({"user_id": [1, 2], "region": ["a", "b"]}))
    assert df["user_id"].tolist() == ["1", "2"]


@pytest.mark.parametrize(
    ("table", "frame", "needle"),
    [
        ("users", pd.DataFrame({"user_id": ["u1"]}), "'region'"),
        ("clicks", pd.DataFrame({"user_id": ["u"], "session_id": ["s"], "timestamp": [1], "event_type": ["buy"],
                                 "product_id": ["p"]}), "'event_type'"),
        ("reviews", pd.DataFrame({"review_id": ["r"], "product_id": ["p"], "user_id": ["u"], "review_text": ["x"],
                                  "star_rating": ["five"], "timestamp": [1]}), "'star_rating'"),
        ("products", pd.DataFrame(columns=["product_id", "product_name", "product_description", "category"]),
         "empty"),
        ("users", pd.DataFrame({"user_id": ["u1", "u1"], "region": ["a", "b"]}), "unique"),
    ],
)
def test_validate_errors_name_the_column(table: str, frame: pd.DataFrame, needle: str) -> None:
    """Each schema violation is one SchemaError that names where and which column."""
    with pytest.raises(SchemaError) as err:
        validate_table(table, frame, where="file.jsonl")
    assert "file.jsonl" in str(err.value) and needle in str(err.value)


def test_dangling_reference_is_rejected() -> None:
    """A click on a product that does not exist is caught when the Marketplace is built."""
    m = tiny_marketplace()
    clicks = m.clicks.copy()
    clicks.loc[0, "product_id"] = "p404"
    with pytest.raises(SchemaError, match="'product_id'.*p404"):
        Marketplace(reviews=m.reviews, products=m.products, clicks=clicks, users=m.users)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    """Writing and reading back gives identical tables in both formats."""
    m = tiny_marketplace()
    write_marketplace(m, tmp_path, fmt=fmt)
    back = read_marketplace(tmp_path)
    for name in ("reviews", "products", "clicks", "users"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(m, name), check_dtype=False)
    assert (tmp_path / "manifest.json").exists()


def test_read_missing_table_names_file(tmp_path: Path) -> None:
    """A folder without one of the tables fails naming the missing table."""
    write_marketplace(tiny_marketplace(), tmp_path, fmt="jsonl")
    (tmp_path / "users.jsonl").unlink()
    with pytest.raises(DataError, match="users.parquet or users.jsonl"):
        read_marketplace(tmp_path)


def test_read_wrong_type_names_file_and_column(tmp_path: Path) -> None:
    """A bad value inside a file is reported with the file path and the column."""
    write_marketplace(tiny_marketplace(), tmp_path, fmt="jsonl")
    (tmp_path / "clicks.jsonl").write_text('{"user_id":"u1","session_id":"s","timestamp":"noon",'
                                           '"event_type":"view","product_id":"p1"}\n')
    with pytest.raises(SchemaError, match=r"clicks\.jsonl.*'timestamp'"):
        read_marketplace(tmp_path)


def test_merge_tables_joins_products_and_users() -> None:
    """Merged clicks carry product and user columns, one row per click, sorted by user and time."""
    merged = merge_tables(tiny_marketplace())
    assert len(merged) == 3
    assert {"product_name", "category", "region"} <= set(merged.columns)
    u1 = merged[merged["user_id"] == "u1"]
    assert u1["timestamp"].tolist() == [10, 30]
    assert merged.loc[merged["user_id"] == "u2", "product_name"].item() == "Blue pan"
    reviews = merge_tables(tiny_marketplace(), events="reviews")
    assert reviews["region"].tolist() == ["Asia-Pacific"]


def test_datetime_timestamps_become_unix_seconds() -> None:
    """Datetime columns (naive = UTC, or tz-aware) are stored as Unix seconds."""
    base = {"user_id": ["u"], "session_id": ["s"], "event_type": ["view"], "product_id": ["p"]}
    for stamp in (pd.to_datetime(["2025-01-01T00:00:10Z"]), pd.to_datetime(["2025-01-01T00:00:10"])):
        df = validate_table("clicks", pd.DataFrame({**base, "timestamp": stamp}))
        assert df["timestamp"].tolist() == [1735689610]
