"""The seq model's typed history (every interaction with its type, targets positives only) and cold items that
are not buried under warm ones (softmax over trained items, ID dropout, text prior)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.data.examples import ExampleConfig, UserRecord, build_examples
from common.data.interactions import interactions_to_marketplace
from common.data.typed_events import history_events, next_positive_targets, training_events
from common.names import GLOBAL
from common.rec.seq_model import PAD, SeqConfig, SeqRecModel
from common.rec.seq_train import SeqTrainConfig, score_catalog, train_seq, training_sequence

SMALL = SeqConfig(dim=16, layers=1, heads=2, max_len=12, dropout=0.0, segment_rank=4)


def _ratings_log() -> pd.DataFrame:
    """User u1 rates the test item t low early, rates around it, rates v (validation) and t (test) highly, then
    keeps rating after t; u2 and u3 give the catalog more users."""
    rows = [("u1", "t", 1, 1), ("u1", "a", 2, 5), ("u1", "x", 3, 2), ("u1", "b", 4, 4), ("u1", "y", 5, 3),
            ("u1", "c", 6, 5), ("u1", "v", 7, 5), ("u1", "z", 8, 1), ("u1", "t", 9, 4), ("u1", "after", 10, 2),
            ("u2", "a", 1, 5), ("u2", "b", 2, 5), ("u2", "c", 3, 4), ("u2", "v", 4, 4),
            ("u3", "b", 1, 4), ("u3", "a", 2, 5), ("u3", "t", 3, 5), ("u3", "c", 4, 5)]
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "timestamp", "rating"])
    frame["timestamp"] = frame["timestamp"] * 86_400 * 3  # a session per event
    return frame


def _u1() -> UserRecord:
    m = interactions_to_marketplace(_ratings_log(), "ratings.csv")
    records = {r.user_id: r for r in build_examples(m, ExampleConfig(history="event", num_negatives=0))}
    return records["u1"]


def test_rating_values_survive_conversion_as_event_types() -> None:
    """A rating log keeps each rating value: the typed history reads rating1..rating5, not only the coarse
    purchase / click / view the schema's event types hold."""
    # Execute
    record = _u1()
    # Assert
    assert (record.valid_item, record.test_item) == ("v", "t")
    assert record.typed_events == [("a", "rating5"), ("x", "rating2"), ("b", "rating4"), ("y", "rating3"),
                                   ("c", "rating5"), ("v", "rating5")]


def test_typed_history_never_holds_the_held_out_items_or_anything_after_them() -> None:
    """Record level: training and validation read no event on the validation or test item and nothing after the
    validation item; the test split reads the validation item last and never the test item (a view of it long
    before is left out too)."""
    # Prepare
    log = _ratings_log()
    log.loc[len(log)] = ("u1", "v", 2 * 86_400 * 3, 2)  # an early low rating of the future validation item
    m = interactions_to_marketplace(log, "ratings.csv")
    record = {r.user_id: r for r in build_examples(m, ExampleConfig(history="event", num_negatives=0))}["u1"]
    # Execute
    train, valid, test = training_events(record), history_events(record, "valid"), history_events(record, "test")
    # Assert
    for events in (train, valid):
        assert not {i for i, _ in events} & {record.valid_item, record.test_item}
        assert [i for i, _ in events] == ["a", "x", "b", "y", "c"]  # nothing from time 7 on
    assert test == [*valid, ("v", "rating5")]
    assert record.test_item not in {i for i, _ in test}


def test_model_inputs_never_hold_the_target_or_a_later_event() -> None:
    """Tensor level: what the user tower receives in training holds neither held-out item, each training
    target comes strictly after every input the state at its position has seen, and scoring the validation
    split never feeds the validation item (nor the test split the test item)."""
    # Prepare
    record = _u1()
    catalog = sorted({"t", "a", "x", "b", "y", "c", "v", "z", "after"})
    model = SeqRecModel(SMALL, catalog, torch.randn(len(catalog), 8))
    seen: list[torch.Tensor] = []
    encode = model.encode_sequences

    def spy(seqs: torch.Tensor, table: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        seen.append(seqs.clone())
        return encode(seqs, table, types)

    model.encode_sequences = spy  # type: ignore[method-assign]
    events, targets, _ = training_sequence(record, SMALL.max_len)
    # Execute
    train_seq(model, [record], SeqTrainConfig(epochs=1, batch_size=4), [GLOBAL])
    fed_in_training = set(torch.cat(seen).flatten().tolist()) - {PAD}
    seen.clear()
    score_catalog(model, [history_events(record, "valid")], [record.segments])
    fed_for_valid = set(torch.cat(seen).flatten().tolist()) - {PAD}
    seen.clear()
    score_catalog(model, [history_events(record, "test")], [record.segments])
    fed_for_test = set(torch.cat(seen).flatten().tolist()) - {PAD}
    # Assert
    held_out = {model.index[record.valid_item], model.index[record.test_item]}
    assert fed_in_training and not fed_in_training & held_out
    assert fed_for_valid == fed_in_training | {model.index["c"]}  # c: the last training positive
    assert model.index[record.test_item] not in fed_for_test and model.index[record.valid_item] in fed_for_test
    assert targets == ["b", "b", "c", "c"] and [i for i, _ in events] == ["a", "x", "b", "y"]
    for j, target in enumerate(targets):
        assert target not in {i for i, _ in events[: j + 1]}


def test_next_positive_targets_skip_views_and_the_positive_itself() -> None:
    """A view of an item before buying it points at that purchase; the purchase event points at the next one."""
    events = [("p", "view"), ("q", "view"), ("p", "purchase"), ("r", "click"), ("q", "add_to_cart"), ("s", "view")]
    assert next_positive_targets(events, ["p", "q"]) == ["p", "p", "q", "q", None, None]


def test_the_user_tower_reads_the_event_type() -> None:
    """The same item history leads to different next positives by its type alone (a low rating of h is followed
    by item 'lo', a high one by 'hi'): the trained model tells them apart, which it could not if it read items
    only."""
    # Prepare
    catalog = ["h", "hi", "lo", "v1", "v2", "t1", "t2"]
    records = []
    for u in range(64):
        liked = u % 2 == 0
        events = [("h", "rating5" if liked else "rating1"), ("hi" if liked else "lo", "rating5"),
                  ("v1" if liked else "v2", "rating4")]
        records.append(UserRecord(
            user_id=f"u{u}", segments={}, context_text="", train_pairs=[], valid_item=events[-1][0],
            test_item="t1", valid_negatives=[], test_negatives=[], train_items=[events[1][0]], typed_events=events))
    model = SeqRecModel(SMALL, catalog, torch.zeros(len(catalog), 8))
    # Execute
    train_seq(model, records, SeqTrainConfig(epochs=40, batch_size=16, lr=1e-2), [GLOBAL])
    scores = score_catalog(model, [[("h", "rating5")], [("h", "rating1")]], [{}, {}])
    # Assert
    column = {item: j for j, item in enumerate(catalog)}
    assert scores[0, column["hi"]] > scores[0, column["lo"]] + 1.0
    assert scores[1, column["lo"]] > scores[1, column["hi"]] + 1.0


def _cold_world(train: SeqTrainConfig, cfg: SeqConfig) -> tuple[float, float]:
    """6 text clusters of 10 items; cluster 0 is a popular set every user buys from, each user also buys from
    their own taste cluster; item 0 of every taste cluster is never anybody's training event. Returns the share of
    users whose own cluster's cold item reaches their top 10 of the items they did not touch, and the share
    for a different cluster's cold item."""
    n, clusters, per = 60, 6, 10
    catalog = [f"i{j:02d}" for j in range(n)]
    cluster = [j // per for j in range(n)]
    gen = torch.Generator().manual_seed(0)
    text = torch.eye(clusters)[cluster] + 0.1 * torch.randn(n, clusters, generator=gen)
    cold = {c: catalog[c * per] for c in range(1, clusters)}
    rng = np.random.default_rng(0)
    records = []
    for u in range(300):
        taste = 1 + u % (clusters - 1)
        popular = [str(x) for x in rng.choice(catalog[:per], 4, replace=False)]
        own = [str(x) for x in rng.choice(catalog[taste * per + 1:(taste + 1) * per], 4, replace=False)]
        items = [x for pair in zip(popular, own, strict=True) for x in pair]
        records.append(UserRecord(
            user_id=f"u{u}", segments={}, context_text="", train_pairs=[], valid_item=items[-2],
            test_item=items[-1], valid_negatives=[], test_negatives=[], train_items=items[:-2],
            typed_events=[(i, "purchase") for i in items[:-1]]))
    model = SeqRecModel(cfg, catalog, text)
    train_seq(model, records, train, [GLOBAL])
    histories = [history_events(r, "test") for r in records]
    scores = score_catalog(model, histories, [{} for _ in records])
    column = {item: j for j, item in enumerate(catalog)}
    own_hits, other_hits = [], []
    for u, history in enumerate(histories):
        touched = {column[i] for i, _ in history} | {column[records[u].test_item]}
        ranked = [j for j in np.argsort(-scores[u]) if j not in touched][:10]
        taste = 1 + u % (clusters - 1)
        own_hits.append(column[cold[taste]] in ranked)
        other_hits.append(column[cold[1 + taste % (clusters - 1)]] in ranked)
    return float(np.mean(own_hits)), float(np.mean(other_hits))


def test_an_unseen_item_close_to_a_users_history_reaches_their_top_10_against_warm_items() -> None:
    """With the default training (softmax over trained items, ID dropout) a user's own cluster's never-seen item
    is in their top 10 against the popular warm items and their cluster's warm items, far more often than another
    cluster's never-seen item; with the old full softmax and no ID dropout the same item is buried."""
    # Execute
    own, other = _cold_world(SeqTrainConfig(epochs=30, batch_size=32, lr=1e-2), SMALL)
    buried, _ = _cold_world(SeqTrainConfig(epochs=30, batch_size=32, lr=1e-2, mask_unseen=False),
                            SeqConfig(**{**SMALL.to_dict(), "id_dropout": 0.0}))  # type: ignore[arg-type]
    # Assert
    assert own > 0.8 and own - other > 0.5
    assert own - buried > 0.5  # buried: 0.08 to 0.32 of users over seeds 0-3 (the batch order's draws)


def test_an_unknown_event_type_is_refused_by_name() -> None:
    model = SeqRecModel(SMALL, ["a", "b"], torch.zeros(2, 8))
    with pytest.raises(ValueError, match="event type 'like' is unknown"):
        score_catalog(model, [[("a", "like")]], [{}])


def _seen_world(mask_by: str) -> SeqRecModel:
    """96 users each view 'seen' and buy 5 of 8 warm items; 'new' has no event; both share one text."""
    catalog = ["new", "seen", *[f"w{j}" for j in range(8)]]
    text = torch.cat([torch.ones(2, 8), torch.eye(8)])
    rng = np.random.default_rng(0)
    records = []
    for u in range(96):
        bought = [str(x) for x in rng.choice(catalog[2:], 5, replace=False)]
        records.append(UserRecord(
            user_id=f"u{u}", segments={}, context_text="", train_pairs=[], valid_item=bought[-2],
            test_item=bought[-1], valid_negatives=[], test_negatives=[], train_items=bought[:-2],
            typed_events=[("seen", "view"), *[(b, "purchase") for b in bought[:-1]]]))
    model = SeqRecModel(SMALL, catalog, text)
    train_seq(model, records, SeqTrainConfig(epochs=20, batch_size=32, lr=1e-2, mask_by=mask_by), [GLOBAL])
    return model


def test_an_item_people_saw_but_never_chose_learns_it_is_not_chosen_while_a_new_one_keeps_its_text_prior() -> None:
    """mask_by touched keeps out of the softmax only items with no training event: 'seen' (viewed by every user, never
    bought) is pushed down as a negative, 'new' (no event, the same text) keeps a zero free bias and outranks it
    in the item prior. Masking 'seen' too would leave its bias at zero, as if nobody had passed it over."""
    # Execute
    model = _seen_world("touched")
    # Assert
    bias = model.global_bank.item_bias.detach()
    prior = model.item_prior().detach()
    assert bias[model.index["new"]] == 0.0 and bias[model.index["seen"]] < -0.05  # -0.089 at ID dropout 0.25
    assert prior[model.index["new"]] > prior[model.index["seen"]] + 0.05


@pytest.mark.parametrize("mask_by", ["chosen", "text"])
def test_an_item_people_saw_but_never_chose_keeps_a_new_items_free_bias(mask_by: str) -> None:
    """mask_by chosen (out of the softmax) and text (in it, by its text alone) never push the viewed-never-bought
    item's free bias down, and text also keeps its row at zero (input and output), so it scores exactly like the
    new item with the same text (touched pushes its bias down: the test above). Text is the default."""
    # Execute
    model = _seen_world(mask_by)
    # Assert
    g, new, seen = model.global_bank, model.index["new"], model.index["seen"]
    assert g.item_bias[seen].item() == 0.0 and g.item_bias[new].item() == 0.0
    scores = score_catalog(model, [[("w0", "purchase")]], [{}])[0]
    if mask_by == "text":
        assert torch.count_nonzero(g.item_rows[seen]) == 0 and torch.count_nonzero(g.item_rows[new]) == 0
        assert scores[seen - 1] == pytest.approx(scores[new - 1])


def test_a_text_mask_trains_the_text_prior_on_items_nobody_chose() -> None:
    """Under mask_by text the never-chosen item is a negative of every step through its text: the prior of that
    text goes down against chosen mode, where the item is not in the softmax at all."""
    text_mode, chosen_mode = _seen_world("text"), _seen_world("chosen")
    assert text_mode.item_prior()[text_mode.index["seen"]] < chosen_mode.item_prior()[chosen_mode.index["seen"]] - 0.05


def test_seq_training_options_are_checked_by_name() -> None:
    with pytest.raises(ValueError, match="mask_by must be one of touched, chosen, text"):
        SeqTrainConfig(mask_by="viewed")
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        SeqTrainConfig(lr_schedule="step")


def test_the_cosine_schedule_warms_up_peaks_and_ends_near_zero() -> None:
    from common.rec.seq_train import lr_factor

    factors = [lr_factor("cosine", s, 1000) for s in range(1000)]
    assert factors[0] < 0.1 and max(factors) == 1.0 and factors[-1] < 1e-4
    assert all(b <= a for a, b in zip(factors[20:], factors[21:], strict=False))  # decays after the warm-up
    assert {lr_factor("constant", s, 1000) for s in (0, 500, 999)} == {1.0}


def test_the_default_mask_ranks_a_never_chosen_item_by_its_text() -> None:
    assert SeqTrainConfig().mask_by == "text"
