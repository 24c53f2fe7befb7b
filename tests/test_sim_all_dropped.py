"""A run in which every sampled client dropped in every round trained nothing: `fedadapt simulate` must say so and
fail, not report it complete (Ray's memory monitor killing every ClientApp worker looked like a finished run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.names import COMPLETE_FILE, METRICS_FILE
from simulations.runner.run import Prepared, SimOptions, SimulationFailed, report_run


def _run(tmp_path: Path, dropped: list[int]) -> tuple[SimOptions, Prepared]:
    rows = [{"round": 0, "ndcg@10": 0.1, "hr@10": 0.2}]
    rows += [{"round": r + 1, "ndcg@10": 0.1, "hr@10": 0.2, "clients_sampled": 2, "clients_replied": 2 - d,
              "clients_dropped": d, "clients_rejected": 0, "round_wall_s": 1.0} for r, d in enumerate(dropped)]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / COMPLETE_FILE).write_text(json.dumps({"rounds": len(dropped)}))
    opts = SimOptions(out=tmp_path, clients=2, rounds=len(dropped))
    return opts, Prepared(tmp_path / "run_config.toml", tmp_path / COMPLETE_FILE, len(dropped))


def test_every_round_dropped_fails_with_the_reason_and_keeps_the_report(tmp_path: Path) -> None:
    opts, prepared = _run(tmp_path, [2, 2, 2])
    with pytest.raises(SimulationFailed, match="every sampled client dropped in all 3 training rounds"):
        report_run(opts, prepared, wall=3.0)
    assert json.loads((tmp_path / "summary.json").read_text())["rounds_all_dropped"] == 3  # nothing lost


def test_a_round_with_a_reply_is_a_run(tmp_path: Path) -> None:
    opts, prepared = _run(tmp_path, [2, 1, 2])
    summary = report_run(opts, prepared, wall=3.0)
    assert summary["rounds_all_dropped"] == 2
