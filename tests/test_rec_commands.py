"""`fedadapt train` at the boundary: generated data, tiny backbone, summary.json, user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated marketplace (fedadapt data generate), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("market")
    assert main(["data", "generate", "--users", "150", "--products", "300", "--seed", "1", "--out", str(out)]) == 0
    return out


def _train(market: Path, out: Path, mode: str, *extra: str) -> dict:
    argv = ["train", "--data", str(market), "--mode", mode, "--adapter", "lora", "--backbone", "tiny",
            "--out", str(out), "--max-users", "40", "--eval-users", "30", "--min-segment-users", "5",
            "--batch-size", "16", "--negatives", "8", "--max-len", "32", *extra]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def test_segment_mode_writes_summary_with_popularity_side_by_side(market: Path, tmp_path: Path) -> None:
    """segment-adapters trains global + segment adapters and reports per-segment metrics and coverage."""
    # Execute
    summary = _train(market, tmp_path / "seg", "segment-adapters")
    # Assert
    metrics, popularity = summary["metrics"], summary["popularity"]
    assert summary["adapters"][0] == "global" and len(summary["adapters"]) > 1
    assert set(summary["training"]) == {"global", "segments"}
    assert 0.0 < metrics["overall"]["coverage"] <= 1.0
    assert any(label.startswith("region=") for label in metrics["segments"])
    for result in (metrics, popularity):
        assert 0.0 <= result["overall"]["ndcg@10"] <= result["overall"]["hr@10"] <= 1.0
    assert summary["users"]["eval"] == 30 and summary["users"]["train"] == 40
    assert (tmp_path / "seg" / "adapters" / "adapters.safetensors").is_file()


def test_segment_mode_reuses_a_global_run(market: Path, tmp_path: Path) -> None:
    """--init-global loads a global-adapter run's adapter instead of training stage 1 again."""
    # Prepare
    _train(market, tmp_path / "glob", "global-adapter")
    # Execute
    summary = _train(market, tmp_path / "seg", "segment-adapters", "--init-global", str(tmp_path / "glob"))
    # Assert
    assert summary["training"]["global"] == {"loaded": 1.0}


def test_several_modes_in_one_run_share_data_and_write_a_table(market: Path, tmp_path: Path) -> None:
    """--mode a,b,c runs each mode in one process: RUN/<mode>/summary.json plus a Markdown table."""
    # Execute
    argv = ["train", "--data", str(market), "--mode", "no-adapter,full-finetune,local-only", "--backbone", "tiny",
            "--out", str(tmp_path), "--max-users", "40", "--eval-users", "30", "--min-segment-users", "5",
            "--segments", "region", "--item-tower", "frozen", "--batch-size", "16", "--negatives", "8",
            "--max-len", "32"]
    assert main(argv) == 0
    # Assert
    summaries = {m: json.loads((tmp_path / m / "summary.json").read_text())
                 for m in ("no-adapter", "full-finetune", "local-only")}
    assert summaries["no-adapter"]["training"] == {} and summaries["no-adapter"]["trainable_params"] == 0
    assert summaries["full-finetune"]["trainable_params"] > 10_000
    assert all(name.startswith("region=") for name in summaries["local-only"]["adapters"])
    assert {s["metrics"]["users"] for s in summaries.values()} == {30}
    table = (tmp_path / "table.md").read_text()
    assert "| local-only |" in table and "| popularity |" in table and "region=" in table


def test_bad_arguments_are_one_line_errors(market: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing data folder or an unknown adapter kind exits 2 with a message, not a traceback."""
    # Execute
    missing = main(["train", "--data", str(tmp_path / "nope"), "--mode", "global-adapter", "--backbone", "tiny",
                    "--out", str(tmp_path / "r")])
    bad_kind = main(["train", "--data", str(market), "--mode", "global-adapter", "--adapter", "nonsense",
                     "--backbone", "tiny", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit):
        main(["train", "--data", str(market), "--mode", "global-adapter,bogus", "--out", str(tmp_path / "r")])
    # Assert
    assert missing == 2 and bad_kind == 2
    err = capsys.readouterr().err
    assert "nope" in err and "nonsense" in err and "bogus" in err
