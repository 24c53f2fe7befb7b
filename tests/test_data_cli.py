"""`fedadapt data generate|load` at the command-line boundary: files written, exit 0; bad input, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from common.data.schema import read_marketplace

FIX = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_generate_writes_tables(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """generate writes the four tables and a manifest in the chosen format."""
    out = tmp_path / "market"
    code = main(["data", "generate", "--users", "60", "--products", "80", "--seed", "4", "--out", str(out),
                 "--format", fmt])
    assert code == 0
    assert (out / f"clicks.{fmt}").exists() and (out / f"users.{fmt}").exists()
    assert json.loads((out / "manifest.json").read_text())["rows"]["users"] == 60
    assert read_marketplace(out).users.shape[0] == 60
    assert "wrote" in capsys.readouterr().out


def test_load_recbole(tmp_path: Path) -> None:
    """load converts a RecBole folder into readable tables."""
    assert main(["data", "load", "--format", "recbole", str(FIX / "recbole"), "--out", str(tmp_path)]) == 0
    assert len(read_marketplace(tmp_path).clicks) == 6


def test_load_csv_mapping(tmp_path: Path) -> None:
    """load with --mapping reads a flat CSV with its own column names."""
    code = main(["data", "load", "--format", "csv", str(FIX / "flat" / "orders.csv"), "--out", str(tmp_path),
                 "--out-format", "jsonl", "--mapping", "user_id=customer,product_id=sku,timestamp=when"])
    assert code == 0 and (tmp_path / "clicks.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["load", "--format", "csv", "FIX/flat/orders_bad.csv", "--mapping",
          "user_id=customer,product_id=sku,timestamp=when"], "'timestamp'"),
        (["load", "--format", "amazon2023", "FIX/amazon2023_bad"], "'rating'"),
        (["load", "--format", "recbole", "FIX/recbole", "--mapping", "user_id=x"], "csv format only"),
        (["load", "--format", "csv", "FIX/nowhere.csv"], "not found"),
    ],
)
def test_bad_input_exits_2_with_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                        needle: str) -> None:
    """User mistakes give exit status 2 and one line naming the problem, not a traceback."""
    argv = [a.replace("FIX", str(FIX)) for a in argv]
    assert main(["data", *argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_generate_rejects_bad_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Argument errors are argparse errors (exit 2) naming the option."""
    with pytest.raises(SystemExit) as exc:
        main(["data", "generate", "--users", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--users" in capsys.readouterr().err
