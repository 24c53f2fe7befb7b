"""`fedadapt bench throughput`: the JSON shape on the tiny backbone and CPU (not the figures), the import guard
that lets it run on a GPU machine without Flower, and the refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main

ROOT = Path(__file__).resolve().parent.parent
BASE = ["bench", "throughput", "--device", "cpu", "--backbone", "tiny", "--users", "60", "--products", "150"]
SMALL = [*BASE, "--batch-sizes", "4,8", "--precision", "fp32", "--steps", "2", "--warmup", "1"]
ABSENT_ON_GPU = ("flwr", "datasets", "cryptography", "dp_accounting")
ROW_KEYS = {"row", "batch", "precision", "pairs", "steps", "seconds", "pairs_per_second", "device", "vs_naive_peft"}
# Runs the benchmark through the CLI in a fresh interpreter, then prints which absent-on-GPU packages it loaded.
GUARD = f"""
import json, sys
from cli.main import main
rc = main({[*SMALL, "--json"]!r})
print(json.dumps({{"rc": rc, "loaded": [m for m in {ABSENT_ON_GPU!r} if m in sys.modules]}}))
"""


@pytest.mark.slow
def test_bench_throughput_json_shape() -> None:
    """--json prints one object whose every (row, batch) cell has a positive, finite pairs/s; naive is 1.0x itself;
    and neither the module nor its code path imports flwr, datasets, cryptography or dp_accounting."""
    # Execute: a subprocess, so sys.modules holds only what this code path imported
    done = subprocess.run([sys.executable, "-c", GUARD], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    result_line, guard_line = done.stdout.strip().splitlines()[-2:]
    guard = json.loads(guard_line)
    assert guard == {"rc": 0, "loaded": []}
    result = json.loads(result_line)
    assert list(result) == ["options", "device", "torch", "rows", "skipped"]
    cells = [(r["row"], r["batch"]) for r in result["rows"]]
    assert cells == [(row, b) for b in (4, 8) for row in ("naive-peft", "ours-text-all", "ours-text", "ours-seq")]
    for row in result["rows"]:
        assert set(row) == ROW_KEYS and row["precision"] == "fp32"
        assert isinstance(row["pairs_per_second"], float) and math.isfinite(row["pairs_per_second"])
        assert row["pairs_per_second"] > 0 and row["pairs"] > 0 and row["steps"] > 0
        assert math.isclose(row["pairs_per_second"], row["pairs"] / row["seconds"])
    assert all(r["vs_naive_peft"] == 1.0 for r in result["rows"] if r["row"] == "naive-peft")
    assert result["skipped"] == []


@pytest.mark.slow
def test_bench_throughput_table_bf16(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json: a Markdown table, one line per cell, bf16 (autocast) included, naming the device."""
    # Execute
    rc = main([*BASE, "--batch-sizes", "4", "--precision", "bf16", "--rows", "naive-peft,ours-seq", "--steps", "1",
               "--warmup", "0"])
    # Assert
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| row | batch | precision | pairs/s | x naive-peft | device |")
    assert [ln.split("|")[1].strip() for ln in lines[2:4]] == ["naive-peft", "ours-seq"]
    assert all("| bf16 |" in ln for ln in lines[2:4])


@pytest.mark.parametrize(("extra", "message"), [
    (["--rows", "ours,naive-peft"], "unknown row"),
    (["--precision", "fp16"], "unknown precision"),
    (["--warmup", "-1"], "warmup=-1"),
])
def test_bench_throughput_refuses_bad_options(extra: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A bad row, precision or warm-up count is one line on stderr and exit status 2."""
    assert main([*SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
