"""Evaluation protocols (common/data/protocols.py): the item-cold split never lets a held-out item into
training, checked on the built records and the baselines' matrix; the literature protocol's leave-one-out over
every interaction; bad values refused; quality.json records the protocol and refuses a run cut differently."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli.main import main
from common.data.examples import UserRecord, build_examples, candidates
from common.data.protocols import (
    ColdLeakError,
    ColdSplitError,
    Protocol,
    build_split,
    check_cold_free,
    cold_test_users,
    draw_cold_items,
    example_config,
)
from common.data.schema import Marketplace, write_marketplace
from common.rec.library_baselines import interaction_matrix
from simulations.bench.quality import QUALITY_JSON, QUALITY_TABLE, QualityOptions, cold_split_summary

T0 = 1_700_000_000
N_PRODUCTS = 300
POPULAR = 60  # most picks come from these, so users share items
EVENTS = ("view", "click", "add_to_cart", "purchase")


def _name(i: int) -> str:
    return f"Item {i:03d}"  # zero-padded: no name is a prefix of another, so a context search is exact


def random_market(users: int = 40, seed: int = 0) -> Marketplace:
    """Users with 6-14 sessions of views, clicks, cart adds and purchases (mostly of 60 popular products out of
    300), and a review of some of the products they bought: every table a context is cut from."""
    rng = np.random.default_rng(seed)
    products = pd.DataFrame({"product_id": [f"p{i:03d}" for i in range(N_PRODUCTS)],
                             "product_name": [_name(i) for i in range(N_PRODUCTS)],
                             "product_description": ["desc"] * N_PRODUCTS, "category": ["kitchen"] * N_PRODUCTS})
    rows, reviews = [], []
    for u in range(users):
        t = T0 + u * 7
        for s in range(int(rng.integers(6, 15))):
            for _ in range(int(rng.integers(1, 4))):
                product = f"p{int(rng.integers(POPULAR if rng.random() < 0.8 else N_PRODUCTS)):03d}"
                for event in EVENTS[: int(rng.integers(1, 5))]:
                    t += 60
                    rows.append((f"u{u:02d}", f"u{u:02d}s{s}", t, event, product))
                if rows[-1][3] == "purchase" and rng.random() < 0.3:
                    reviews.append((f"r{len(reviews)}", product, f"u{u:02d}", f"nice {_name(int(product[1:]))}",
                                    5, t + 30))
            t += 86_400
    clicks = pd.DataFrame(rows, columns=["user_id", "session_id", "timestamp", "event_type", "product_id"])
    review_frame = pd.DataFrame(reviews, columns=["review_id", "product_id", "user_id", "review_text",
                                                  "star_rating", "timestamp"])
    users_frame = pd.DataFrame({"user_id": [f"u{u:02d}" for u in range(users)],
                                "region": ["north", "south"] * (users // 2)})
    return Marketplace(reviews=review_frame, products=products, clicks=clicks, users=users_frame)


def _positives(market: Marketplace, user: str) -> list[str]:
    """The user's distinct cart/purchase products in time order (the project protocol's positives)."""
    clicks = market.clicks[(market.clicks["user_id"] == user)
                           & market.clicks["event_type"].isin(("add_to_cart", "purchase"))]
    return clicks.sort_values("timestamp", kind="stable")["product_id"].drop_duplicates().tolist()


@pytest.mark.parametrize("history", ["event", "session"])
def test_cold_split_never_lets_a_cold_item_into_training(history: str) -> None:
    """On the built records: no cold item among training positives, training pairs, validation items and
    negatives, nor named in any context; the baselines' fit matrix has empty cold columns; users whose last
    positive is cold keep it as test item, with their last warm positive as validation item."""
    # Prepare
    market = random_market()
    # Execute
    split = build_split(market, Protocol(cold_items=0.3), seed=1, history=history)
    # Assert
    cold = split.cold_items
    assert len(cold) == round(0.3 * N_PRODUCTS) and cold_test_users(split.records, cold) > 0
    cold_labels = [f"{_name(int(p[1:]))} (" for p in cold]
    for r in split.records:
        inputs = [*r.train_items, *(item for _, item in r.train_pairs), r.valid_item, *r.valid_negatives]
        assert not cold & set(inputs), r.user_id
        texts = [r.context_text, r.valid_context_text, *(context for context, _ in r.train_pairs)]
        assert not [label for label in cold_labels for text in texts if label in text], r.user_id
        warm = [p for p in _positives(market, r.user_id) if p not in cold]
        assert r.test_item == _positives(market, r.user_id)[-1]  # the last positive, warm or cold
        before = warm[:-1] if r.test_item not in cold else warm
        assert (r.train_items, r.valid_item) == (before[:-1], before[-1])
    column = {item: j for j, item in enumerate(sorted(split.item_texts))}
    matrix = interaction_matrix(split.records, column, with_valid=True).tocsc()
    assert all(matrix[:, column[item]].nnz == 0 for item in cold)


def test_cold_items_stay_in_seen_items_so_full_ranking_skips_them() -> None:
    """A cold item a user touched before the test is not a training input, but full-catalog ranking still
    skips it (the user interacted with it); the cold test item itself is the first candidate."""
    # Prepare
    market = random_market()
    # Execute
    split = build_split(market, Protocol(cold_items=0.3), seed=1)
    # Assert
    touched = [(r, p) for r in split.records for p in r.seen_items if p in split.cold_items and p != r.test_item]
    assert touched
    catalog = sorted(split.item_texts)
    for record, item in touched:
        ranked = candidates(record, catalog=catalog)
        assert item not in ranked[1:] and ranked[0] == record.test_item


def test_without_cold_items_the_records_are_the_project_ones() -> None:
    """cold-items 0 under the project protocol builds exactly what `fedadapt train` builds."""
    # Prepare
    market = random_market()
    # Execute
    split = build_split(market, Protocol(), seed=3)
    # Assert
    assert split.cold_items == frozenset()
    assert split.records == build_examples(market, example_config(Protocol(), 3, "event", frozenset()))
    assert split.records == build_examples(market, dataclasses.replace(
        example_config(Protocol(), 3, "event", frozenset()), positive_events=("add_to_cart", "purchase")))


def test_cold_draw_is_seeded_and_order_free() -> None:
    """The same catalog, fraction and seed draw the same items whatever the catalog's order; another seed
    draws others."""
    catalog = [f"p{i:03d}" for i in range(200)]
    first = draw_cold_items(catalog, 0.2, seed=0)
    assert len(first) == 40 and first == draw_cold_items(catalog[::-1], 0.2, seed=0)
    assert first != draw_cold_items(catalog, 0.2, seed=1)


@dataclass
class _TypedRecord(UserRecord):
    """A record with one more input field, as a later model might add (a typed history)."""

    typed_history: list[tuple[str, str]] = field(default_factory=list)


def test_leak_check_covers_every_input_field_even_new_ones() -> None:
    """The attack: a cold item slipped into training positives, a validation item, or a field added after the
    check was written; each is caught. The test item and its candidates may be cold."""
    # Prepare
    (record, *_) = build_split(random_market(), Protocol(), seed=0).records
    cold = frozenset({"p999"})
    fine = dataclasses.replace(record, test_item="p999", test_negatives=["p999"], seen_items=["p999"])
    leaks = [dataclasses.replace(record, train_items=[*record.train_items, "p999"]),
             dataclasses.replace(record, valid_item="p999"),
             dataclasses.replace(record, train_pairs=[("ctx", "p999")]),
             _TypedRecord(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)},
                          typed_history=[("p999", "view")])]
    # Execute / Assert
    check_cold_free([fine], cold)
    for leak in leaks:
        with pytest.raises(ColdLeakError, match="p999"):
            check_cold_free([leak], cold)


def literature_market() -> Marketplace:
    """u1 views p1, buys p2, clicks p3 (a rating of 3), views p4 last; u2 buys three products."""
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(1, 121)],
                             "product_name": [f"Movie {i}" for i in range(1, 121)],
                             "product_description": ["d"] * 120, "category": ["drama"] * 120})
    rows = [("u1", "s1", T0, "view", "p1"), ("u1", "s1", T0 + 1, "purchase", "p2"),
            ("u1", "s2", T0 + 9_000, "click", "p3"), ("u1", "s3", T0 + 99_000, "view", "p4"),
            ("u2", "s4", T0, "purchase", "p5"), ("u2", "s4", T0 + 5, "purchase", "p6"),
            ("u2", "s4", T0 + 5, "purchase", "p7")]
    clicks = pd.DataFrame(rows, columns=["user_id", "session_id", "timestamp", "event_type", "product_id"])
    reviews = pd.DataFrame(columns=["review_id", "product_id", "user_id", "review_text", "star_rating", "timestamp"])
    users = pd.DataFrame({"user_id": ["u1", "u2"], "region": ["north", "south"]})
    return Marketplace(reviews=reviews, products=products, clicks=clicks, users=users)


def test_literature_protocol_is_leave_one_out_over_every_interaction() -> None:
    """Every event is an interaction: the last is the test item, the one before validation, the rest train
    (ties in time keep the log's order); full ranking skips everything the user touched. The project protocol
    keeps only carts and purchases, so u1 (one purchase) has no record there."""
    # Execute
    literature = build_split(literature_market(), Protocol("literature"), seed=0).records
    project = build_split(literature_market(), Protocol(), seed=0).records
    # Assert
    u1, u2 = literature
    assert (u1.train_items, u1.valid_item, u1.test_item) == (["p1", "p2"], "p3", "p4")
    assert (u2.train_items, u2.valid_item, u2.test_item) == (["p5"], "p6", "p7")
    ranked = candidates(u1, catalog=[f"p{i}" for i in range(1, 121)])
    assert ranked[0] == "p4" and not {"p1", "p2", "p3", "p4"} & set(ranked[1:]) and len(ranked) == 117
    assert [r.user_id for r in project] == ["u2"]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_cold_fractions_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="cold-items must be a fraction"):
        Protocol(cold_items=bad)


def test_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol must be one of project, literature"):
        Protocol("sasrec")


def test_a_fraction_too_small_for_one_item_is_refused() -> None:
    with pytest.raises(ColdSplitError, match="rounds to no item"):
        draw_cold_items([f"p{i}" for i in range(60)], 0.001, seed=0)


def test_a_split_without_a_cold_test_user_is_refused() -> None:
    """Held-out items nobody has as test item would leave the cold row empty: refused, naming the fix."""
    records = build_split(random_market(), Protocol(), seed=0).records
    tests = {r.test_item for r in records}
    unused = frozenset(f"p{i:03d}" for i in range(N_PRODUCTS) if f"p{i:03d}" not in tests)
    with pytest.raises(ColdSplitError, match="none of the 40 evaluation users"):
        cold_split_summary(Protocol(cold_items=0.1), unused, records, records)


@pytest.mark.parametrize(("value", "named"), [("-0.2", "0 <= FRACTION < 1"), ("1", "0 <= FRACTION < 1"),
                                              ("lots", "must be a number")])
def test_cli_refuses_bad_cold_items(tmp_path: Path, value: str, named: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "quality", "--data", str(tmp_path), "--out", str(tmp_path), "--cold-items", value])
    assert exit_info.value.code == 2 and named in capsys.readouterr().err


def test_federated_run_under_another_protocol_is_refused(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A `fedadapt simulate` run is cut with the project protocol: mixing it into a literature or cold-split
    table is refused before anything runs."""
    with pytest.raises(ValueError, match="--federated"):
        QualityOptions(data=tmp_path, out=tmp_path, federated=tmp_path, protocol=Protocol(cold_items=0.2))
    rc = main(["bench", "quality", "--data", str(tmp_path), "--out", str(tmp_path), "--federated", str(tmp_path),
               "--protocol", "literature", "--modes", ""])
    err = capsys.readouterr().err
    assert rc == 2 and "--federated" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def market_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("protocol-market")
    write_marketplace(random_market(users=60), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["text", "seq"])
def test_quality_records_the_protocol_and_carries_it_to_every_row(market_folder: Path, tmp_path: Path,
                                                                  arch: str) -> None:
    """Under literature + a cold split, the baselines and a trained mode are scored on the same records (the
    command checks their popularity rows agree), the mode's summary names the protocol, and quality.json /
    quality.md state the protocol, the cold fraction and the cold row."""
    # Prepare
    mode = "no-adapter" if arch == "text" else "global-adapter"
    argv = ["bench", "quality", "--data", str(market_folder), "--modes", mode, "--arch", arch, "--backbone",
            "tiny", "--epochs", "1", "--protocol", "literature", "--cold-items", "0.25", "--seed", "2",
            "--out", str(tmp_path)]
    # Execute
    assert main(argv) == 0
    # Assert
    result = json.loads((tmp_path / QUALITY_JSON).read_text())
    summary = json.loads((tmp_path / "modes" / "summary.json").read_text())
    split = build_split(random_market(users=60), Protocol("literature", 0.25), seed=2)
    assert result["protocol"] == summary["protocol"] == {"name": "literature", "cold_items": 0.25}
    assert result["cold_split"]["items"] == 75
    assert result["cold_split"]["test_users"] == cold_test_users(split.records, split.cold_items) > 0
    assert result["users"]["total"] == len(split.records)
    for name, row in result["rows"].items():
        assert row["sampled"]["segments"]["item=cold"]["users"] >= result["cold_split"]["eval_test_users"], name
    table = (tmp_path / QUALITY_TABLE).read_text()
    assert "protocol literature, cold-items 0.25" in table and "| method | warm items (" in table
