"""`fedadapt bench client`: the JSON shape on the tiny backbone (not the figures) and the refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cli.main import main
from simulations.bench.client import ROWS

SMALL = ["bench", "client", "--backbone", "tiny", "--repeats", "1", "--pairs", "24", "--users", "120",
         "--products", "150", "--clients", "2", "--eval-users", "8"]
ROW_TYPES = {"pairs_per_update": int, "seconds_per_update": float, "seconds_per_256_pairs": float,
             "pairs_per_second": float, "seconds_all": list, "threads": list, "ndcg10_valid": float,
             "ndcg10_valid_start": float, "vs_ours-text": float, "vs_ours-seq": float}


@pytest.mark.slow
def test_bench_client_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object: options, machine, shard and every row with typed timings, ratios and quality."""
    # Execute
    rc = main([*SMALL, "--json"])
    # Assert
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["options", "machine", "shard", "rows"]
    assert list(result["rows"]) == list(ROWS)
    assert result["machine"]["device"] == "cpu" and result["machine"]["threads"] == "free CPUs"
    assert result["machine"]["neighbours"] == 0
    assert result["shard"]["pairs"] >= 24 and result["shard"]["eval_users"] <= 8
    for name, row in result["rows"].items():
        assert {k: type(v) for k, v in row.items()} == ROW_TYPES, name
        assert row["pairs_per_update"] > 0 and len(row["seconds_all"]) == 1 == len(row["threads"])
        assert row["threads"] == [1]  # conftest's FEDADAPT_THREADS=1
        assert 0.0 <= row["ndcg10_valid"] <= 1.0 and 0.0 <= row["ndcg10_valid_start"] <= 1.0
        assert math.isclose(row["seconds_per_256_pairs"], row["seconds_per_update"] * 256 / row["pairs_per_update"])
    assert result["rows"]["ours-text"]["vs_ours-text"] == 1.0 and result["rows"]["ours-seq"]["vs_ours-seq"] == 1.0
    text_pairs = result["rows"]["naive-peft"]["pairs_per_update"]
    assert result["rows"]["ours-text"]["pairs_per_update"] == result["rows"]["per-example"]["pairs_per_update"] \
        == text_pairs == result["shard"]["pairs"]


@pytest.mark.slow
def test_bench_client_table_for_chosen_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json a Markdown table has one line per requested row and names the machine."""
    assert main([*SMALL, "--rows", "naive-peft,ours-text"]) == 0
    out = capsys.readouterr().out
    assert "| naive-peft |" in out and "| ours-text |" in out and "per-example" not in out
    assert "machine:" in out


@pytest.mark.parametrize(("extra", "message"), [
    (["--rows", "ours,naive-peft"], "unknown row"),
    (["--partition", "5"], "partition 5"),
    (["--warmup", "-1"], "warmup=-1"),
    (["--neighbour", "-1"], "neighbours=-1"),
    (["--threads", "-2"], "threads=-2"),
])
def test_bench_client_refuses_bad_options(extra: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad row name, partition or warm-up count is one line on stderr and exit status 2."""
    assert main([*SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_bench_client_cuda_without_gpu_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--device cuda on a machine without CUDA: exit 2 with one line saying so, before any work."""
    assert main([*SMALL, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1
