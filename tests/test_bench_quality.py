"""`fedadapt bench quality`: every row, both protocols, on generated data with the tiny backbone (shape only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from common.data.examples import UserRecord
from common.rec.library_baselines import BASELINES
from simulations.bench.quality import COLD_USER_MAX, QUALITY_JSON, QUALITY_TABLE, cold_labels, labelled

METRICS = ("hr@10", "ndcg@10")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated marketplace, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("market")
    assert main(["data", "generate", "--users", "150", "--products", "300", "--seed", "0", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def quality(market: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One `fedadapt bench quality` run: the four library baselines and the bare tiny backbone."""
    out = tmp_path_factory.mktemp("quality")
    argv = ["bench", "quality", "--data", str(market), "--modes", "no-adapter", "--backbone", "tiny",
            "--eval-users", "60", "--out", str(out), "--json"]
    assert main(argv) == 0
    return out, json.loads((out / QUALITY_JSON).read_text())


@pytest.mark.slow
def test_every_row_has_both_protocols_overall_and_per_segment(quality: tuple[Path, dict]) -> None:
    """quality.json holds one row per baseline and mode, each with sampled and full-catalog metrics overall,
    per segment and for cold/warm users and items, on the same 60 evaluation users."""
    # Prepare
    _, result = quality
    # Assert
    assert list(result["rows"]) == [*BASELINES, "no-adapter"]
    assert result["users"]["eval"] == 60 and result["history"] == "event"
    for name, row in result["rows"].items():
        for protocol in ("sampled", "full"):
            block = row[protocol]
            assert block["protocol"] == protocol and block["users"] == 60, name
            assert all(0.0 <= block["overall"][m] <= 1.0 for m in METRICS), name
            assert any(label.startswith("region=") for label in block["segments"]), name
            assert {"user=cold", "item=warm"} <= set(block["segments"]), name
            assert all(m in segment for segment in block["segments"].values() for m in METRICS), name
        assert row["seconds"]["total"] >= 0.0


@pytest.mark.slow
def test_library_rows_carry_their_tuning(quality: tuple[Path, dict]) -> None:
    """Each library row names the chosen point of its grid and the validation NDCG@10 of every point."""
    # Prepare
    _, result = quality
    # Assert
    for name, baseline in BASELINES.items():
        row = result["rows"][name]
        assert row["kind"] == "library"
        assert row["params"] in baseline.grid
        assert [point["params"] for point in row["validation"]] == list(baseline.grid)
        best = max(point["ndcg@10"] for point in row["validation"])
        assert next(p for p in row["validation"] if p["params"] == row["params"])["ndcg@10"] == best


@pytest.mark.slow
def test_mode_row_matches_its_train_run_and_the_table_lists_every_row(quality: tuple[Path, dict]) -> None:
    """The mode's sampled figures are run_experiment's (its summary sits in modes/); quality.md lists every
    row, and the popularity `fedadapt train` reports is quoted under it."""
    # Prepare
    out, result = quality
    summary = json.loads((out / "modes" / "summary.json").read_text())
    table = (out / QUALITY_TABLE).read_text()
    # Assert
    for metric in METRICS:
        assert result["rows"]["no-adapter"]["sampled"]["overall"][metric] == pytest.approx(
            summary["metrics"]["overall"][metric])
        assert result["train_pairs_popularity"]["overall"][metric] == summary["popularity"]["overall"][metric]
    for name in result["rows"]:
        assert f"| {name} |" in table
    assert "full-catalog HR@10 / NDCG@10" in table and "| user=cold (" in table


@pytest.mark.slow
def test_adapter_modes_are_rebuilt_from_their_saved_adapters(market: Path, tmp_path: Path) -> None:
    """Trained modes are scored again from modes/<mode>/adapters on both protocols; the command would refuse
    if the rebuilt model did not reproduce run_experiment's sampled figures."""
    # Execute
    argv = ["bench", "quality", "--data", str(market), "--modes", "global-adapter,segment-adapters",
            "--skip-baselines", "--backbone", "tiny", "--epochs", "1", "--max-users", "40", "--eval-users", "30",
            "--segments", "region", "--min-segment-users", "5", "--out", str(tmp_path)]
    assert main(argv) == 0
    # Assert
    result = json.loads((tmp_path / QUALITY_JSON).read_text())
    assert list(result["rows"]) == ["global-adapter", "segment-adapters"]
    for mode, row in result["rows"].items():
        summary = json.loads((tmp_path / "modes" / mode / "summary.json").read_text())
        assert row["sampled"]["overall"]["ndcg@10"] == pytest.approx(summary["metrics"]["overall"]["ndcg@10"])
        assert row["full"]["protocol"] == "full" and row["full"]["users"] == 30
    assert len(result["rows"]["segment-adapters"]["params"]["adapters"]) > 1


@pytest.mark.parametrize(("extra", "named"), [(["--modes", "", "--skip-baselines"], "nothing to compare"),
                                              (["--modes", "full-finetune"], "full-finetune")])
def test_runs_that_cannot_be_compared_are_refused(market: Path, tmp_path: Path, extra: list[str], named: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """No rows at all, or a mode without weights to score on the full catalog: one line, exit 2."""
    rc = main(["bench", "quality", "--data", str(market), "--backbone", "tiny", "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1


def _record(name: str, train: list[str], test: str, segments: dict[str, str] | None = None) -> UserRecord:
    return UserRecord(user_id=name, segments=segments or {"region": "EU"}, context_text="", train_pairs=[],
                      valid_item="v", test_item=test, valid_negatives=[], test_negatives=[], train_items=train)


def test_cold_users_and_items() -> None:
    """A user with at most COLD_USER_MAX training positives is cold; a test item nobody trained or validated
    on is cold; a users table that already has such a column is refused."""
    # Prepare
    many = [f"i{k}" for k in range(COLD_USER_MAX + 1)]
    records = [_record("u1", many, "i0"), _record("u2", ["i1"], "new")]
    # Execute
    labels = cold_labels(records, records)
    # Assert
    assert labels == [{"user": "warm", "item": "warm"}, {"user": "cold", "item": "cold"}]
    assert labelled(records, labels)[1].segments == {"region": "EU", "user": "cold", "item": "cold"}
    with pytest.raises(ValueError, match="already has column"):
        labelled([_record("u3", [], "x", {"user": "vip"})], labels[:1])


def test_seq_training_flags_reach_the_trained_mode(market: Path, tmp_path: Path) -> None:
    """--lr, --batch-size, --seq-mask-by and --seq-lr-schedule are what the seq mode trained with (its
    summary.json), and a bad value is refused by the flag's name before anything runs."""
    # Execute
    argv = ["bench", "quality", "--data", str(market), "--arch", "seq", "--modes", "global-adapter",
            "--skip-baselines", "--backbone", "tiny", "--epochs", "1", "--max-users", "40", "--eval-users", "20",
            "--lr", "2e-3", "--batch-size", "16", "--seq-mask-by", "text", "--seq-lr-schedule", "cosine",
            "--seq-dim", "16", "--out", str(tmp_path)]
    assert main(argv) == 0
    # Assert
    trained = json.loads((tmp_path / "modes" / "summary.json").read_text())["train_config"]  # one mode: no subfolder
    assert (trained["lr"], trained["batch_size"], trained["mask_by"], trained["lr_schedule"]) == \
        (2e-3, 16, "text", "cosine")
    with pytest.raises(SystemExit):
        main([*argv[:-2], "--out", str(tmp_path / "bad"), "--lr", "0"])
    assert not (tmp_path / "bad").exists()
