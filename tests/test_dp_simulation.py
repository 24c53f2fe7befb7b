"""DP through real Flower simulations (tiny backbone, 3 clients): epsilon per round, the target-epsilon stop,
resume continuing epsilon, and distributed mode end to end.

Module-scoped runs, because each pays Flower's start-up: a central-mode run whose target-epsilon stops it after
round 2, the same run resumed with a larger target up to round 4, and a one-round distributed-mode run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.names import COMPLETE_FILE
from common.privacy.accountant import PrivacyAccountant
from simulations.runner.run import SimOptions, simulate

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

CLIENTS = 3
SIGMA = 2.0
DP = {"min-segment-clients": 1, "lr": 0.005, "batch-size": 8, "dp-noise-multiplier": SIGMA, "dp-clip": 0.5}


def epsilon_after(rounds: int) -> float:
    """Every client in every round (fraction 1): cohort = population = 3."""
    return PrivacyAccountant(SIGMA, 1e-5, [(CLIENTS, CLIENTS)] * rounds).epsilon()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dpsim")
    data = root / "data"
    write_marketplace(generate_marketplace(90, 200, seed=3), data)

    def opts(name: str, rounds: int, config: dict[str, object], **kw: object) -> SimOptions:
        return SimOptions(out=root / name, data=data, clients=CLIENTS, rounds=rounds, backbone="tiny",
                          flwr_home=root / f"flwr-{name}", quiet=True, timeout=900, config=config,
                          **kw)  # type: ignore[arg-type]

    between = (epsilon_after(2) + epsilon_after(3)) / 2
    simulate(opts("budget", 4, {**DP, "target-epsilon": between}))
    (root / "budget-first.json").write_text((root / "budget" / "summary.json").read_text())
    simulate(opts("budget", 4, {**DP, "target-epsilon": epsilon_after(4) + 1}, resume=True))
    simulate(opts("distributed", 1, {**DP, "dp-mode": "distributed"}))
    return {"budget": root / "budget", "first": root / "budget-first.json", "distributed": root / "distributed"}


def _metrics(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_target_epsilon_stops_before_the_round_that_would_exceed_it(runs: dict[str, Path]) -> None:
    """The first run stopped after round 2 (round 3 would pass the target), wrote its summary with epsilon
    after 2 rounds, and says why."""
    first = json.loads(runs["first"].read_text())
    assert first["rounds"] == 2 and first["stopped_early"] is True
    assert "target-epsilon" in first["stop_reason"]
    assert first["epsilon"] == pytest.approx(epsilon_after(2))
    assert first["dp_delta"] == 1e-5 and first["dp"]["noise_multiplier"] == SIGMA


def test_every_round_carries_epsilon_and_resume_continues_it(runs: dict[str, Path]) -> None:
    """Each metrics line has epsilon, delta and the noise settings; the resumed rounds 3 and 4 continue the
    accountant from the checkpoint (epsilon after 3 and 4 rounds, not after 1 and 2 again)."""
    rounds = [r for r in _metrics(runs["budget"]) if int(r["round"]) >= 1]  # type: ignore[call-overload]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    for r in rounds:
        assert r["epsilon"] == pytest.approx(epsilon_after(int(r["round"])))  # type: ignore[call-overload]
        assert r["dp_delta"] == 1e-5 and r["dp_noise_multiplier"] == SIGMA and r["dp_clip"] == 0.5
        assert r["dp_mode"] == "central" and r["clients_rejected"] == 0
    summary = json.loads((runs["budget"] / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(epsilon_after(4)) and not summary.get("stop_reason")
    assert "epsilon" in (runs["budget"] / "summary.md").read_text()
    assert json.loads((runs["budget"] / COMPLETE_FILE).read_text())["rounds"] == 4


def test_distributed_mode_runs_end_to_end(runs: dict[str, Path]) -> None:
    """Clients clip and add their shares: every reply passes the server's clip-plus-noise check, no bank is
    short of noise (all 3 clients replied), and the round is accounted."""
    (line,) = [r for r in _metrics(runs["distributed"]) if r["round"] == 1]
    assert line["clients_replied"] == CLIENTS and line["clients_rejected"] == 0
    assert "dp_banks_short_of_noise" not in line
    assert line["dp_mode"] == "distributed" and line["epsilon"] == pytest.approx(epsilon_after(1))
