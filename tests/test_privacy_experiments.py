"""`fedadapt privacy`: the attacks find what is there and nothing that is not, and the command writes its results.

The membership attack is checked on a model that memorised its users (members known by construction) and on
users the model never saw; segment inference on constructed deltas whose region is in the numbers, and on the
masked vectors of real SecAgg+ rounds over the same deltas; the command line on the item experiment (seconds)
and on a two-run privacy-utility curve (real federations, tiny backbone); bad options are refused with one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from common.names import GLOBAL
from common.secagg.layout import SEGMENT, SEGMENT_HIDDEN
from simulations.privacy.attacks import loss_threshold, shadow_attack
from simulations.privacy.clients import ClientUpdate
from simulations.privacy.experiments.membership import central_model
from simulations.privacy.experiments.segment import by_protocol, classify, masked_global, run_layouts, secure_rounds
from simulations.privacy.scores import user_features
from simulations.privacy.setup import PrivacyOptions, Setup, validate


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """300 synthetic users dealt into four pools of 34, seq model, tiny backbone, 30 central epochs."""
    out = tmp_path_factory.mktemp("privacy")
    return validate(PrivacyOptions(out=out, backbone="tiny", arch="seq", users=300, products=150,
                                   central_epochs=30))


def test_loss_threshold_finds_the_members_of_an_overfitted_model(setup: Setup) -> None:
    """Trained 30 epochs on target-in: its members' loss is lower (AUC above 0.5, its 95% interval clear of it;
    0.69 since the hybrid model's ID dropout, 0.8+ before); on two pools it never saw (shadow-in vs shadow-out)
    the same attack is at chance."""
    # Prepare
    from common.backbone import load_backbone

    model = central_model(setup, "target-in", load_backbone("tiny"))
    # Execute
    members = user_features(model, setup.pools["target-in"], setup.item_texts)
    outsiders = user_features(model, setup.pools["target-out"], setup.item_texts)
    unseen_a = user_features(model, setup.pools["shadow-in"], setup.item_texts)
    unseen_b = user_features(model, setup.pools["shadow-out"], setup.item_texts)
    found, chance = loss_threshold(members, outsiders), loss_threshold(unseen_a, unseen_b)
    # Assert
    assert found.auc > 0.65 and found.ci_low > 0.52
    assert found.members == found.non_members == 34
    assert abs(chance.auc - 0.5) < 0.2 and chance.ci_low < 0.5 < chance.ci_high


def test_shadow_attack_learns_in_from_out_on_shadow_features() -> None:
    """A classifier fitted on shadow features (members have lower loss) ranks the target's members first;
    with shadow features that carry no membership signal it is at chance."""
    # Prepare
    rng = np.random.default_rng(0)

    def features(loss: float, n: int) -> np.ndarray:
        return np.column_stack([rng.normal(loss, 0.5, n), rng.normal(loss - 1, 0.5, n), rng.uniform(0, 1, n)])

    # Execute
    informed = shadow_attack(features(2.0, 40), features(3.0, 40), features(2.0, 40), features(3.0, 40))
    blind = shadow_attack(features(3.0, 40), features(3.0, 40), features(2.0, 40), features(2.0, 40))
    # Assert
    assert informed.auc > 0.85
    assert abs(blind.auc - 0.5) < 0.2


def _updates(clients: int, seed: int = 0) -> list[ClientUpdate]:
    """Per-region silos whose global-bank delta is its region's direction plus noise (the region is in the
    numbers), with a region bank each: what an honest client's reply looks like, in small."""
    rng = np.random.default_rng(seed)
    regions = ["north", "south", "east"]
    direction = {r: rng.normal(0, 1, 40) for r in regions}
    out = []
    for pid in range(clients):
        region = regions[pid % 3]
        bank = f"region={region}"
        delta = {f"{GLOBAL}::a": 0.01 * (direction[region] + rng.normal(0, 0.7, 40)),
                 f"{GLOBAL}::b": 0.01 * rng.normal(0, 1, (3, 4)), f"{bank}::a": 0.01 * rng.normal(0, 1, 40)}
        out.append(ClientUpdate(pid, delta, [bank], [], {GLOBAL: 10 + pid, bank: 10 + pid}))
    return out


def test_segment_inference_on_plain_deltas_beats_chance_and_on_masked_vectors_does_not() -> None:
    """The classifier reads the region from plain global deltas; from the masked words the server receives in
    SecAgg+ rounds (segment-visible and segment-hidden) it is at chance, the words look uniform, and the
    unmasked sums are exact. The vector names give the segment away only in segment-visible mode (and only for
    banks with at least 2 members in the cohort: a lone member's bank is not uploaded)."""
    # Prepare
    updates = _updates(30)
    labels = [u.segments[0].split("=")[1] for u in updates]
    layouts = run_layouts(updates)
    plain = np.stack([np.concatenate([u.delta[k].ravel() for k in sorted(u.bank_delta(GLOBAL))]) for u in updates])
    # Execute
    from_plain = classify(plain, labels, seed=0)
    views = {mode: secure_rounds(updates, mode, seed=0) for mode in (SEGMENT, SEGMENT_HIDDEN)}
    masked = {mode: classify(np.stack([masked_global(r, mode, layouts) for r in received]), labels, seed=0)
              for mode, (received, _) in views.items()}
    # Assert
    assert from_plain["chance"] == pytest.approx(1 / 3)
    assert from_plain["accuracy"] > 0.8
    for mode, result in masked.items():
        received, error = views[mode]
        assert result["accuracy"] < 0.6, mode
        assert error < 1e-9, mode
        words = np.concatenate([masked_global(r, mode, layouts) for r in received])
        assert 0.45 < words.mean() < 0.55 and words.std() == pytest.approx(np.sqrt(1 / 12), rel=0.05)
    # segment-visible: every uploaded region vector names its bank; a client alone with its region in a cohort
    # uploads none (a bank with one member is never summed), so the share is below 1 but far above chance
    assert 0.8 <= by_protocol([list(r) for r in views[SEGMENT][0]], labels) < 1.0
    assert by_protocol([list(r) for r in views[SEGMENT_HIDDEN][0]], labels) == 0.0


def test_privacy_items_writes_summary_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedadapt privacy items` writes summary.json and summary.md: a plain delta ranks the client's own items
    far above the popularity guess, sums of more clients less so, precision and recall within [0, 1]."""
    # Prepare
    out = tmp_path / "out"
    # Execute
    rc = main(["privacy", "items", "--backbone", "tiny", "--users", "300", "--products", "150", "--epsilons", "8",
               "--out", str(out)])
    # Assert
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["view"]: row["mean"] for row in summary["items"]["rows"]}
    assert list(rows) == ["popularity guess (no update seen)", "plain delta", "secure sum of 2", "secure sum of 4",
                          "secure sum of 2 + DP (target epsilon 8)"]
    assert rows["plain delta"]["bias/precision@10"] > rows["popularity guess (no update seen)"][
        "popularity/precision@10"] + 0.3
    assert rows["plain delta"]["bias/precision@10"] >= rows["secure sum of 4"]["bias/precision@10"]
    assert all(0.0 <= v <= 1.0 for row in rows.values() for v in row.values())
    table = (out / "summary.md").read_text()
    assert "## Item inference" in table and "| plain delta |" in table
    assert (out / "data" / ".complete").is_file()


@pytest.mark.slow
def test_privacy_curve_runs_federations_and_plots(tmp_path: Path) -> None:
    """`fedadapt privacy curve` runs a no-DP and a DP federation (tiny backbone) and writes the curve: epsilon
    reported by the DP run, NDCG@10 in [0, 1] for both, the PNG and the table; called again, it reuses them."""
    # Prepare
    out = tmp_path / "curve"
    # Execute
    argv = ["privacy", "curve", "--backbone", "tiny", "--users", "200", "--products", "150", "--epsilons", "50",
            "--rounds", "1", "--clients", "2", "--out", str(out)]
    rc = main(argv)
    # Assert
    assert rc == 0
    rows = json.loads((out / "summary.json").read_text())["curve"]["rows"]
    assert [r["epsilon_target"] for r in rows] == [None, 50.0]
    assert rows[0]["epsilon"] is None and 0 < rows[1]["epsilon"] <= 50.0
    assert rows[1]["ndcg@10"] != rows[0]["ndcg@10"]  # the noise reached the banks
    assert rows[1]["noise_multiplier"] > 0 and rows[1]["clip"] > 0
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)
    assert (out / "curve.png").stat().st_size > 1000
    assert "## Privacy-utility curve" in (out / "summary.md").read_text()
    # a second call into the same OUT reuses both finished runs: same rows, nothing trained again
    metrics = out / "federated" / "target-no-dp" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["curve"]["rows"] == rows
    assert metrics.stat().st_mtime_ns == before


@pytest.mark.parametrize(("argv", "named"), [
    (["--epsilons", "-1"], "--epsilons"),
    (["--epsilons", "4,4"], "--epsilons"),
    (["--rounds", "two"], "--rounds"),
    (["--clients", "1"], "--clients"),
    (["--arch", "cnn"], "--arch"),
    (["--backbone", "/nonexistent/model"], "--backbone"),
    (["--users", "20"], "more --users"),
])
def test_bad_options_are_refused_with_one_line_and_nothing_written(
        argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every bad option: exit 2, one line naming it, the output folder not created."""
    # Prepare
    out = tmp_path / "out"
    # Execute
    rc = main(["privacy", "all", "--backbone", "tiny", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    # Assert
    assert rc == 2 and named in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--data that does not exist is named; nothing is written."""
    rc = main(["privacy", "segment", "--backbone", "tiny", "--data", str(tmp_path / "nope"), "--out",
               str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "nope" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_experiments_are_named_one_by_one_or_with_commas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`segment,items` picks both (in the registry's sorted order), `all` every one; an unknown name is refused."""
    # Prepare
    from cli.privacy import experiments_of

    # Execute
    rc = main(["privacy", "items,memb", "--backbone", "tiny", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    # Assert
    assert experiments_of("segment,items") == ("items", "segment")
    assert experiments_of("all") == ("curve", "items", "membership", "segment")
    assert rc == 2 and "'memb'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
