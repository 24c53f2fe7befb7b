"""`fedadapt bench adapters`: the JSON schema and the table, on the tiny backbone with one repeat."""

from __future__ import annotations

import argparse
import json

import pytest

from cli import bench
from common.adapters import ADAPTER_KINDS


def parse(argv: list[str]) -> argparse.Namespace:
    """A parser built the way cli/main.py builds it, without importing other commands."""
    parser = argparse.ArgumentParser(prog="fedadapt")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_bench_adapters_json_has_exact_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object {"kinds": {kind: six typed fields}} for every kind, identity as measured."""
    args = parse(["bench", "adapters", "--backbone", "tiny", "--json", "--repeats", "1", "--batch", "2",
                  "--tokens", "8"])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["kinds"] and list(result["kinds"]) == list(ADAPTER_KINDS)
    types = {"trainable_params": int, "backbone_params": int, "bytes_fp32": int, "bytes_int8": int,
             "step_time_ratio": float, "identity_at_init": bool}
    for kind, row in result["kinds"].items():
        assert {key: type(value) for key, value in row.items()} == types, kind
        assert row["bytes_fp32"] == 4 * row["trainable_params"] and row["bytes_int8"] < row["bytes_fp32"] / 2
        assert row["step_time_ratio"] > 0 and row["backbone_params"] == 53312
        assert row["identity_at_init"] is (kind != "prompt")


def test_bench_adapters_table_and_bad_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --json a table with one line per requested kind is printed; an unknown kind is a ValueError."""
    args = parse(["bench", "adapters", "--backbone", "tiny", "--repeats", "1", "--batch", "2", "--tokens", "8",
                  "--kinds", "lora,prompt"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["kind", "trainable", "%"]
    assert [line.split()[0] for line in lines[3:5]] == ["lora", "prompt"]
    with pytest.raises(ValueError, match="unknown adapter kind"):
        bad = parse(["bench", "adapters", "--backbone", "tiny", "--kinds", "nope"])
        bad.func(bad)
