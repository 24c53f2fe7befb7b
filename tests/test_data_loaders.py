"""Loaders: RecBole, Amazon Reviews 2023 and flat CSV fixtures convert to valid tables; bad files fail clearly.

MovieLens' own files and the agreement of both MovieLens readers are in test_data_movielens.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.interactions import LoaderError
from common.data.schema import DataError
from common.data.sources import load_source, parse_mapping

FIX = Path(__file__).parent / "fixtures"
FLAT_MAPPING = ("user_id=customer,product_id=sku,timestamp=when,rating=stars,product_name=item_title,"
                "category=dept,review_text=comment,region=country")


def test_recbole_events_items_and_user_segments() -> None:
    """Ratings become events; MovieLens items (movie_title) and users follow the MovieLens conventions."""
    m = load_source("recbole", FIX / "recbole")
    events = m.clicks.set_index(["user_id", "product_id"])["event_type"]
    assert events[("1", "10")] == "purchase" and events[("1", "11")] == "click" and events[("2", "10")] == "view"
    toy = m.products.set_index("product_id").loc["10"]
    assert toy["product_name"] == "Toy Story" and toy["category"] == "Animation, Children, Comedy"
    assert toy["product_description"] == "Toy Story, a 1995 movie: Animation, Children, Comedy."
    assert m.products.set_index("product_id").at["14", "product_name"] == "item 14"  # no metadata: placeholder
    users = m.users.set_index("user_id")
    assert users.at["1", "region"] == "US West" and users.at["3", "region"] == "unknown"  # T8H1N: not a US ZIP
    assert users.at["2", "age_band"] == "50-55" and "zip_code" not in users.columns
    assert users.at["2", "occupation"] == "other"  # ml-100k names occupations itself: kept as they are
    assert m.reviews.empty


def test_recbole_generic_items_and_region_column(tmp_path: Path) -> None:
    """Non-MovieLens RecBole data keeps the generic rules: first category token, other columns as description,
    a country column as the region, numeric occupations that are not ml-1m codes left alone."""
    (tmp_path / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\tb1\t5\nu2\tb2\t6\n")
    (tmp_path / "shop.item").write_text("item_id:token\ttitle:token_seq\tcategories:token_seq\tbrand:token\n"
                                        "b1\tRed Kettle\tKitchen Tea\tAcme\n")
    (tmp_path / "shop.user").write_text("user_id:token\tcountry:token\toccupation:float\tzip:token\n"
                                        "u1\tGermany\t42\t10115\nu2\t\t3\t\n")
    m = load_source("recbole", tmp_path)
    kettle = m.products.set_index("product_id").loc["b1"]
    assert (kettle["product_name"], kettle["category"]) == ("Red Kettle", "Kitchen")
    assert kettle["product_description"] == "categories: Kitchen Tea; brand: Acme"
    users = m.users.set_index("user_id")
    assert users.at["u1", "region"] == "Germany" and users.at["u1", "occupation"] == "42"
    assert users.at["u2", "region"] == "unknown" and "zip" not in users.columns  # a blank country


def test_amazon2023_reviews_and_meta() -> None:
    """Every review is an interaction and a review; ms timestamps become seconds; meta gives item text."""
    m = load_source("amazon2023", FIX / "amazon2023")
    assert len(m.reviews) == 4 == len(m.clicks)
    assert m.clicks["timestamp"].max() == 1643393630
    assert sorted(m.clicks["event_type"]) == ["purchase", "purchase", "purchase", "view"]
    products = m.products.set_index("product_id")
    assert products.at["B081TJ8YS3", "category"] == "Cleansers"
    assert products.at["B00YQ6X8EO", "category"] == "All Beauty"
    assert products.at["B097R46CSY", "product_name"] == "item B097R46CSY"
    assert "Such a lovely scent. Smells great" in m.reviews["review_text"].iloc[0] or \
        any(t.startswith("Such a lovely scent.") for t in m.reviews["review_text"])


def test_flat_csv_with_mapping() -> None:
    """A flat file with its own column names maps onto the schema, including reviews and regions."""
    m = load_source("csv", FIX / "flat" / "orders.csv", parse_mapping(FLAT_MAPPING))
    assert set(m.users["region"]) == {"Germany", "Brazil"}
    assert len(m.clicks) == 4 and len(m.reviews) == 2
    assert m.products.set_index("product_id").at["A3", "category"] == "outdoor"
    assert m.clicks["timestamp"].min() == 1752138000


@pytest.mark.parametrize(
    ("fmt", "path", "mapping", "needles"),
    [
        ("recbole", "recbole_bad/bad.inter", None, ("bad.inter", "'rating'", "five")),
        ("recbole", "recbole_bad/empty.inter", None, ("empty.inter", "no rows")),
        ("recbole", "recbole_bad", None, ("exactly one .inter",)),
        ("amazon2023", "amazon2023_bad", None, ("Reviews.jsonl", "'rating'")),
        ("csv", "flat/orders_bad.csv", "user_id=customer,product_id=sku,timestamp=when", ("'timestamp'", "yesterday")),
        ("csv", "flat/orders.csv", "user_id=customer,product_id=nope", ("product_id=nope",)),
        ("csv", "flat/orders.csv", None, ("orders.csv", "'user_id'")),
        ("csv", "flat/empty.csv", None, ("empty.csv",)),
        ("csv", "flat/missing.csv", None, ("missing.csv", "not found")),
    ],
)
def test_malformed_inputs_name_file_and_column(fmt: str, path: str, mapping: str | None,
                                               needles: tuple[str, ...]) -> None:
    """Malformed sources raise one DataError (a ValueError) whose message names the problem."""
    with pytest.raises(DataError) as err:
        load_source(fmt, FIX / path, parse_mapping(mapping))
    assert isinstance(err.value, ValueError)
    for needle in needles:
        assert needle in str(err.value)


def test_mapping_syntax_errors() -> None:
    """Mapping typos are caught before any file is read."""
    with pytest.raises(LoaderError, match="not col=source"):
        parse_mapping("user_id")
    with pytest.raises(LoaderError, match="unknown target column 'uid'"):
        parse_mapping("uid=customer")
    assert parse_mapping("segment:tier=level") == {"segment:tier": "level"}


def test_loaded_data_feeds_examples() -> None:
    """Converted real data goes straight into the example builder, user columns becoming segments."""
    from common.data.examples import ExampleConfig, build_examples

    m = load_source("recbole", FIX / "recbole")
    (rec,) = build_examples(m, ExampleConfig(min_positives=2, num_negatives=2))
    assert (rec.user_id, rec.valid_item, rec.test_item) == ("1", "10", "12")
    assert rec.segments == {"gender": "M", "occupation": "technician", "region": "US West", "age_band": "18-24",
                            "season": "regular"}
    assert "bought Toy Story (Animation, Children, Comedy)" in rec.context_text and "GoldenEye" in rec.context_text
    assert sorted(rec.test_negatives) == ["13", "14"]


def test_user_column_values_are_safe_segment_names() -> None:
    """Any user column may become a segment: values with '/', '::' or other separators are rewritten so that
    a client's registration is never refused for its data (common/protocol.py check_segment_name)."""
    import pandas as pd

    from common.data.interactions import interactions_to_marketplace
    from common.protocol import check_segment_name

    inter = pd.DataFrame({"user_id": ["a", "b"], "product_id": ["p", "q"], "timestamp": [1, 2]})
    users = pd.DataFrame({"user_id": ["a", "b"], "occupation": ["doctor/health care", "x::y"]})
    m = interactions_to_marketplace(inter, "test", users=users)
    assert sorted(m.users["occupation"]) == ["doctor-health care", "x-y"]
    for value in m.users["occupation"]:
        check_segment_name(f"occupation={value}", ("occupation",))
