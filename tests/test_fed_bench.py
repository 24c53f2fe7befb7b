"""`fedadapt bench bytes`: the bytes a client-round moves, measured from Flower's serialization."""

from __future__ import annotations

import pytest

from cli.main import main


def test_bench_bytes_reports_adapter_bytes_far_below_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    """On the tiny backbone a LoRA client-round moves a fraction of the backbone's fp32 bytes each way."""
    rc = main(["bench", "bytes", "--backbone", "tiny", "--kinds", "lora"])
    out = capsys.readouterr().out
    assert rc == 0
    row = next(line for line in out.splitlines() if line.startswith("| lora |"))
    _, kind, params, down, up, backbone, ratio, _ = (cell.strip() for cell in row.split("|"))
    assert kind == "lora" and int(params) > 0
    assert int(params) * 4 <= int(up) < int(backbone)
    assert 0 < float(ratio) < 0.5 and int(down) > 0
