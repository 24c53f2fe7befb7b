"""The privacy accountant (common/privacy/accountant.py) against dp-accounting's own computations."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from common.privacy.accountant import PrivacyAccountant
from common.privacy.budget import PrivacyBudget
from common.privacy.dp import DPConfig


@pytest.mark.parametrize(("sigma", "population", "cohort", "rounds"), [
    (1.0, 20, 10, 3), (4.0, 20, 10, 10), pytest.param(1.5, 100, 10, 50, marks=pytest.mark.slow),
    pytest.param(0.8, 1000, 100, 20, marks=pytest.mark.slow)])
def test_epsilon_matches_dp_accounting_computed_directly(sigma: float, population: int, cohort: int,
                                                         rounds: int) -> None:
    """After each round, epsilon equals the library's RDP accountant (its default orders) composing the same
    fixed-size event, up to the orders we drop; the Poisson figure matches its Poisson event likewise."""
    # Prepare
    acc = PrivacyAccountant(sigma, 1e-5)
    # Execute
    for _ in range(rounds):
        acc.step(population, cohort)
    # Assert
    direct = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    direct.compose(dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(sigma / 2)),
                   rounds)
    poisson = RdpAccountant()
    poisson.compose(dpa.PoissonSampledDpEvent(cohort / population, dpa.GaussianDpEvent(sigma)), rounds)
    assert acc.epsilon() == pytest.approx(direct.get_epsilon(1e-5), rel=0.01)
    assert acc.epsilon() >= direct.get_epsilon(1e-5) - 1e-9  # fewer orders: never optimistic
    assert acc.epsilon_poisson() == pytest.approx(poisson.get_epsilon(1e-5), rel=0.02)


def test_full_participation_is_bounded_by_the_exact_gaussian_mechanism() -> None:
    """With every client in every round, T rounds are one Gaussian mechanism with multiplier sigma/sqrt(T)
    (sensitivity 2C under replace-one): RDP's epsilon is an upper bound within 25% of the exact PLD value."""
    sigma, rounds, delta = 8.0, 4, 1e-5
    acc = PrivacyAccountant(sigma, delta, [(10, 10)] * rounds)
    exact = PLDAccountant(neighboring_relation=dpa.NeighboringRelation.ADD_OR_REMOVE_ONE)
    exact.compose(dpa.GaussianDpEvent(sigma / 2), rounds)
    assert exact.get_epsilon(delta) <= acc.epsilon() <= 1.25 * exact.get_epsilon(delta)


def test_epsilon_grows_with_rounds_and_epsilon_after_does_not_record() -> None:
    """epsilon_after is a look-ahead (the target check), step records; a restored state continues exactly."""
    # Prepare
    acc = PrivacyAccountant(2.0, 1e-5)
    # Execute
    first = acc.step(20, 10)
    ahead = acc.epsilon_after(20, 10)
    second = acc.step(20, 10)
    resumed = PrivacyAccountant(2.0, 1e-5, acc.state())
    # Assert
    assert 0 < first < second
    assert ahead == pytest.approx(second)
    assert resumed.epsilon() == pytest.approx(second)
    assert resumed.epsilon_after(20, 10) == pytest.approx(acc.epsilon_after(20, 10))
    assert PrivacyAccountant(2.0, 1e-5).epsilon() == 0.0


def test_bad_rounds_and_settings_are_refused() -> None:
    """A cohort larger than the population, a malformed saved state or a zero noise multiplier are errors."""
    with pytest.raises(ValueError, match="cohort"):
        PrivacyAccountant(1.0, 1e-5).step(5, 6)
    with pytest.raises(ValueError, match="population, cohort"):
        PrivacyAccountant(1.0, 1e-5, [[5]])
    with pytest.raises(ValueError, match="noise multiplier"):
        PrivacyAccountant(0.0, 1e-5)


def test_budget_stops_before_the_round_that_would_exceed_the_target(caplog: pytest.LogCaptureFixture) -> None:
    """stop: no reason while the next round fits, the reason (naming target-epsilon) once it would not; warn:
    the round may run and the overrun is logged. Every recorded line carries epsilon and the settings."""
    # Prepare: a target between epsilon after 2 and after 3 rounds of 10 out of 20
    eps = [PrivacyAccountant(2.0, 1e-5, [(20, 10)] * k).epsilon() for k in (2, 3)]
    target = (eps[0] + eps[1]) / 2
    budget = PrivacyBudget(DPConfig(2.0, 0.5, target_epsilon=target))
    warn = PrivacyBudget(DPConfig(2.0, 0.5, target_epsilon=target, target_action="warn"), [[20, 10]] * 2)
    # Execute
    reasons, lines = [], []
    for _ in range(3):
        reasons.append(budget.stop_reason(20, 10))
        if reasons[-1] is None:
            lines.append(budget.record(20, 10))
    # Assert
    assert reasons[:2] == [None, None] and reasons[2] is not None and "target-epsilon" in reasons[2]
    assert lines[-1]["epsilon"] == pytest.approx(eps[0]) and lines[-1]["dp_delta"] == 1e-5
    assert lines[-1]["dp_noise_multiplier"] == 2.0 and lines[-1]["dp_clip"] == 0.5
    assert lines[-1]["dp_mode"] == "central"
    with caplog.at_level("WARNING"):
        assert warn.stop_reason(20, 10) is None
    assert "target-epsilon" in caplog.text
    assert PrivacyBudget(DPConfig(2.0, 0.5)).stop_reason(20, 20) is None  # no target, no stop
