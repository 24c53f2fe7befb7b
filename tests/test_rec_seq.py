"""The sequential hybrid model: causal user tower, order, cold items through text, segment banks, banks on disk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from common.data.examples import UserRecord
from common.names import GLOBAL
from common.rec.seq_model import SeqConfig, SeqRecModel, left_pad
from common.rec.seq_train import SeqTrainConfig, bank_counts, evaluate_seq, score_catalog, train_seq
from simulations.bench.quality import QUALITY_JSON

SMALL = SeqConfig(dim=16, layers=1, heads=2, max_len=12, dropout=0.0, segment_rank=4)


def _record(user: str, items: list[str], region: str = "EU", negatives: list[str] | None = None) -> UserRecord:
    """A user whose positives are `items` in time order: the last is test, the one before validation."""
    *train, valid, test = items
    segs = {"region": region}
    return UserRecord(
        user_id=user, segments=segs, context_text="", train_pairs=[("ctx", i) for i in train[1:]],
        valid_item=valid, test_item=test, valid_negatives=list(negatives or []), test_negatives=list(negatives or []),
        train_segments=[segs for _ in train[1:]], valid_segments=segs, seen_items=list(items), train_items=train)


def _catalog(n: int) -> list[str]:
    return [f"i{j:02d}" for j in range(n)]


def test_user_state_at_a_position_never_sees_later_items() -> None:
    """Changing the items after position t leaves the states up to t unchanged (no target leaks into its
    own context), while changing an earlier item does change them."""
    # Prepare
    torch.manual_seed(0)
    model = SeqRecModel(SMALL, _catalog(20), torch.randn(20, 8))
    table = model.item_table()
    base = torch.tensor([[0, 0, 3, 5, 7, 9, 11]])
    later = torch.tensor([[0, 0, 3, 5, 7, 2, 4]])
    earlier = torch.tensor([[0, 0, 6, 5, 7, 9, 11]])
    # Execute
    with torch.no_grad():
        a, b, c = (model.encode_sequences(s, table) for s in (base, later, earlier))
    # Assert
    assert torch.allclose(a[0, :5], b[0, :5])
    assert not torch.allclose(a[0, 4], c[0, 4])


def test_the_user_tower_learns_the_order_of_the_history() -> None:
    """On logs where the next item is always the one after the last (i -> i+1 in a ring), the trained model
    puts that item first for most users; a model that ignored order could not know which item came last."""
    # Prepare
    n = 24
    catalog = _catalog(n)
    rng = np.random.default_rng(0)
    records = []
    for u in range(120):
        start = int(rng.integers(n))
        records.append(_record(f"u{u}", [catalog[(start + k) % n] for k in range(8)]))
    model = SeqRecModel(SMALL, catalog, torch.zeros(n, 8))
    # Execute
    train_seq(model, records, SeqTrainConfig(epochs=30, batch_size=32, lr=1e-2), [GLOBAL])
    scores = score_catalog(model, [[*r.train_items, r.valid_item] for r in records], [r.segments for r in records])
    # Assert
    top = [catalog[int(j)] for j in scores.argmax(axis=1)]
    assert np.mean([t == r.test_item for t, r in zip(top, records, strict=True)]) > 0.9


def test_an_item_nobody_interacted_with_is_ranked_through_its_text() -> None:
    """Items come in 4 text clusters; users stay inside one cluster; one item per cluster is never seen.
    After training, a user's own cluster's unseen item outranks the other clusters' unseen items."""
    # Prepare
    n, clusters = 40, 4
    catalog = _catalog(n)
    cluster = [j % clusters for j in range(n)]
    text = torch.eye(clusters)[cluster] + 0.05 * torch.randn(n, clusters, generator=torch.Generator().manual_seed(0))
    cold = {c: catalog[c] for c in range(clusters)}  # i00..i03: one per cluster, never in any history
    rng = np.random.default_rng(1)
    records = []
    for u in range(160):
        c = u % clusters
        warm = [catalog[j] for j in range(clusters, n) if cluster[j] == c]
        records.append(_record(f"u{u}", [str(x) for x in rng.permutation(warm)[:6]], region=str(c)))
    model = SeqRecModel(SMALL, catalog, text)
    # Execute
    train_seq(model, records, SeqTrainConfig(epochs=20, batch_size=32, lr=1e-2), [GLOBAL])
    scores = score_catalog(model, [r.train_items for r in records], [r.segments for r in records])
    # Assert
    column = {item: j for j, item in enumerate(catalog)}
    wins = [scores[u, column[cold[u % clusters]]] > max(scores[u, column[cold[c]]] for c in cold if c != u % clusters)
            for u in range(len(records))]
    assert np.mean(wins) > 0.9


def test_a_segment_bank_starts_as_identity_and_learns_what_its_segment_prefers() -> None:
    """A fresh segment bank changes no score; trained on top of a frozen global bank, region=B's bank lifts
    the items only region B's users like and sinks those only region A's like, and global weights stay untouched.
    Compared as log-probabilities: a logit's absolute level is arbitrary under the softmax, and Adam does not keep
    the mean of a bias vector (the raw-logit version of this test broke when a dead parameter was removed)."""
    # Prepare
    n = 20
    catalog = _catalog(n)
    rng = np.random.default_rng(2)
    records = []
    for u in range(200):
        region = "A" if u % 2 else "B"
        pool = catalog[:10] if region == "A" else catalog[5:]
        records.append(_record(f"u{u}", [str(x) for x in rng.permutation(pool)[:6]], region=region))
    model = SeqRecModel(SMALL, catalog, torch.zeros(n, 8), user_levels=(GLOBAL, "region"))
    train_seq(model, records, SeqTrainConfig(epochs=5, batch_size=32, lr=1e-2), [GLOBAL])
    histories, segments = [r.train_items for r in records], [r.segments for r in records]
    before = score_catalog(model, histories, segments)
    global_before = model.adapter_state([GLOBAL])
    # Execute
    model.add_adapter("region=B")
    fresh = score_catalog(model, histories, segments)
    train_seq(model, records, SeqTrainConfig(epochs=20, batch_size=32, lr=1e-2), ["region=B"])
    after = score_catalog(model, histories, segments)
    # Assert
    np.testing.assert_allclose(fresh, before, atol=1e-5)
    b_users = [u for u, r in enumerate(records) if r.segments["region"] == "B"]
    only_b = [j for j in range(10, n)]
    lift = (torch.log_softmax(torch.from_numpy(after), 1) - torch.log_softmax(torch.from_numpy(before), 1)).numpy()
    only_a = list(range(5))  # region A's pool is catalog[:10], region B's catalog[5:]
    assert lift[np.ix_(b_users, only_b)].mean() > 0.05  # measured 0.12: B's items hold 64% of the mass before
    assert lift[np.ix_(b_users, only_a)].mean() < -1.0  # measured -1.79
    for key, value in model.adapter_state([GLOBAL]).items():
        assert torch.equal(value, global_before[key]), key


def test_bank_counts_weigh_each_bank_by_its_own_targets() -> None:
    """Every target after the first counts for global and for its segments' banks (the federated weights)."""
    # Prepare
    records = [_record("a", _catalog(6), region="EU"), _record("b", _catalog(5), region="US")]
    # Execute
    counts = bank_counts(records, ("region",), max_len=200)
    # Assert
    assert counts == {GLOBAL: 3 + 2, "region=EU": 3, "region=US": 2}


def test_a_state_of_the_wrong_shape_or_bank_is_refused_whole() -> None:
    """load_adapter_state copies nothing when one tensor has the wrong shape or names an unknown bank."""
    # Prepare
    model = SeqRecModel(SMALL, _catalog(10), torch.zeros(10, 8))
    state = model.adapter_state()
    bad = {**state, "global::item_rows": torch.ones(5, SMALL.dim)}
    before = model.adapter_state()
    # Execute / Assert
    with pytest.raises(ValueError, match="item_rows"):
        model.load_adapter_state(bad)
    with pytest.raises(ValueError, match="unknown bank"):
        model.load_adapter_state({"region=X::up.weight": torch.zeros(1)})
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state().items())


def test_evaluation_scores_both_protocols_on_the_catalog() -> None:
    """Sampled: the held-out item against its negatives; full: against every item the user never touched."""
    # Prepare
    catalog = _catalog(30)
    records = [_record(f"u{u}", catalog[u:u + 5], negatives=catalog[20:29]) for u in range(10)]
    model = SeqRecModel(SMALL, catalog, torch.randn(30, 8))
    # Execute
    sampled = evaluate_seq(model, records)
    full = evaluate_seq(model, records, full_catalog=True)
    # Assert
    assert sampled["protocol"] == "sampled" and full["protocol"] == "full"
    for result in (sampled, full):
        assert result["users"] == 10 and 0.0 <= result["overall"]["ndcg@10"] <= 1.0  # type: ignore[index]
    with pytest.raises(ValueError, match="not in the model's catalog"):
        evaluate_seq(model, [replace(records[0], test_item="nope")])


def test_bench_quality_scores_the_seq_modes_from_their_saved_banks(tmp_path: Path) -> None:
    """`fedadapt bench quality --arch seq` trains global and segment banks, saves them, rebuilds both models
    from disk (reproducing the training run's sampled figures) and scores the full catalog too."""
    # Prepare
    market = tmp_path / "market"
    assert main(["data", "generate", "--users", "150", "--products", "300", "--seed", "0", "--out", str(market)]) == 0
    out = tmp_path / "q"
    argv = ["bench", "quality", "--data", str(market), "--arch", "seq", "--modes", "global-adapter,segment-adapters",
            "--skip-baselines", "--backbone", "tiny", "--epochs", "2", "--seq-dim", "16", "--seq-max-len", "20",
            "--history", "event", "--segments", "region", "--min-segment-users", "5", "--out", str(out)]
    # Execute
    assert main(argv) == 0
    # Assert
    result = json.loads((out / QUALITY_JSON).read_text())
    assert list(result["rows"]) == ["global-adapter", "global-adapter (no history)", "segment-adapters",
                                    "segment-adapters (no history)"]
    for mode in ("global-adapter", "segment-adapters"):
        row = result["rows"][mode]
        summary = json.loads((out / "modes" / mode / "summary.json").read_text())
        assert summary["arch"] == "seq" and summary["seq"]["dim"] == 16
        assert row["sampled"]["overall"]["ndcg@10"] == pytest.approx(summary["metrics"]["overall"]["ndcg@10"])
        assert row["full"]["protocol"] == "full"
    cold = result["rows"]["segment-adapters (no history)"]
    assert cold["kind"] == "no-history" and 0.0 <= cold["sampled"]["overall"]["ndcg@10"] <= 1.0
    banks = result["rows"]["segment-adapters"]["params"]["adapters"]
    assert banks[0] == GLOBAL and any(b.startswith("region=") for b in banks[1:])


def test_seq_refuses_modes_it_does_not_have(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """full-finetune (the backbone is not in the seq training loop) is refused before anything loads."""
    rc = main(["train", "--data", str(tmp_path), "--arch", "seq", "--mode", "full-finetune", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "full-finetune" in err and "arch seq" in err


def test_padding_is_never_recommended() -> None:
    """The padding column scores -inf and left padding does not change the last state."""
    model = SeqRecModel(SMALL, _catalog(10), torch.randn(10, 8))
    table = model.item_table()
    with torch.no_grad():
        short = model.encode_sequences(left_pad([[1, 2, 3]]), table)[:, -1]
        padded = model.encode_sequences(torch.tensor([[0, 0, 1, 2, 3]]), table)[:, -1]
        users, bias = model.personalise(short, [[]])
        logits = model.logits(users, table, bias)
    assert torch.allclose(short, padded, atol=1e-5)
    assert logits[0, 0] == float("-inf")


def test_personalise_adds_exactly_each_rows_own_bank_residuals_and_biases() -> None:
    """The batched routing equals, row by row, the user vector plus the residual and item bias of each bank the
    row is routed through (and nothing from the banks it is not)."""
    # Prepare
    model = SeqRecModel(SMALL, _catalog(12), torch.randn(12, 8), user_levels=(GLOBAL, "region", "age"))
    for name in ("region=A", "region=B", "age=young"):
        model.add_adapter(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # move the zero-initialised parts so every term counts
    users = torch.randn(4, SMALL.dim)
    routes = [["region=A"], ["region=B", "age=young"], [], ["age=young"]]
    # Execute
    with torch.no_grad():
        out, bias = model.personalise(users, routes)
    # Assert
    for row, route in enumerate(routes):
        want = users[row] + sum((model.bank(n)(users[row : row + 1])[0] for n in route), torch.zeros(SMALL.dim))
        want_bias = sum((model.bank(n).item_bias for n in route), torch.zeros(13))
        assert torch.allclose(out[row], want, atol=1e-5)
        assert torch.allclose(bias[row], want_bias, atol=1e-6)


def test_a_bank_added_after_the_model_moved_lives_where_the_model_is() -> None:
    """A federated client adds segment banks on demand, after the model went to its device (the H200 run
    failed there with a CPU bank in a CUDA model). 'meta' stands in for the GPU."""
    model = SeqRecModel(SMALL, _catalog(10), torch.zeros(10, 8), user_levels=(GLOBAL, "region"))
    model.to("meta")
    model.add_adapter("region=EU")
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_length_batches_cover_every_user_once_and_pad_less_than_a_shuffle() -> None:
    """An epoch's batches hold every user exactly once; sorting pools by length cuts the padded width a batch
    costs (each batch pads to its longest history) well below plain shuffled batches."""
    from common.rec.seq_train import length_batches

    lengths = np.random.default_rng(1).integers(2, 200, size=1000).tolist()
    for pool in (1, 16):
        batches = length_batches(lengths, 32, pool, np.random.default_rng(0))
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(len(b) <= 32 for b in batches)
    padded = {pool: sum(len(b) * max(lengths[i] for i in b) for b in length_batches(lengths, 32, pool,
                                                                                     np.random.default_rng(0)))
              for pool in (1, 16)}
    assert padded[16] < 0.7 * padded[1]


def test_the_id_dropout_flag_reaches_the_model_and_a_bad_one_is_refused(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "quality", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--seq-id-dropout", "1"])
    assert "seq-id-dropout must be a fraction" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "t"), "--arch", "seq", "--seq-id-dropout",
              "1.5"])
    assert "seq-id-dropout must be a fraction" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    from simulations.bench.quality import QualityOptions, _experiment_config

    cfg = _experiment_config(QualityOptions(data=tmp_path, out=tmp_path / "o", arch="seq", seq_id_dropout=0.25))
    assert cfg.seq.id_dropout == 0.25
