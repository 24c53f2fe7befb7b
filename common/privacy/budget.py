"""The run's privacy budget: the accountant plus what the server does at `target-epsilon`, and the metrics it logs.

The server asks `stop_reason` BEFORE a round (with the cohort it is about to draw): with action "stop" a round
that would take epsilon above the target does not run, and the reason ends the run; with "warn" it runs and a
warning is logged. After the round, `record` composes it and returns the fields of that round's metrics line.
`state` goes into the checkpoint and `PrivacyBudget(dp, saved)` continues from it on resume.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from common.privacy.accountant import PrivacyAccountant
from common.privacy.dp import STOP, DPConfig

log = logging.getLogger(__name__)


class PrivacyBudget:
    """Epsilon so far, the target check and the per-round metrics of one run with DP on."""

    def __init__(self, dp: DPConfig, rounds: Sequence[Sequence[int]] = ()) -> None:
        if not dp.enabled:
            raise ValueError("a privacy budget needs dp-noise-multiplier > 0")
        self.dp = dp
        self.accountant = PrivacyAccountant(dp.noise_multiplier, dp.delta, rounds, dp.user_rate)

    def stop_reason(self, population: int, cohort: int) -> str | None:
        """Why the next round (cohort of population) must not run, or None. With target-epsilon-action warn
        this logs the overrun and returns None."""
        target = self.dp.target_epsilon
        if not target:
            return None
        ahead = self.accountant.epsilon_after(population, cohort)
        if ahead <= target:
            return None
        reason = (f"target-epsilon {target:g} reached: epsilon {self.accountant.epsilon():.3f} after "
                  f"{len(self.accountant.rounds)} round(s), {ahead:.3f} after the next one (delta {self.dp.delta:g})")
        if self.dp.target_action == STOP:
            return reason
        log.warning("privacy budget exceeded (target-epsilon-action warn, the run goes on): %s", reason)
        return None

    def record(self, population: int, cohort: int) -> dict[str, Any]:
        """Compose one round; the metrics line's privacy fields."""
        epsilon = self.accountant.step(population, cohort)
        return {"epsilon": epsilon, "epsilon_poisson": self.accountant.epsilon_poisson(), "dp_delta": self.dp.delta,
                "dp_noise_multiplier": self.dp.noise_multiplier, "dp_clip": self.dp.clip, "dp_mode": self.dp.mode,
                "dp_population": population, "dp_cohort": cohort,
                **({"dp_unit": "user", "dp_user_rate": self.dp.user_rate} if self.dp.user_level else {})}

    def state(self) -> list[list[int]]:
        return self.accountant.state()


def check_first_round(dp: DPConfig, population: int, cohort: int) -> None:
    """ValueError naming target-epsilon when a single round would already exceed it (checked before a run
    starts: such a run could not train at all)."""
    if not (dp.enabled and dp.target_epsilon):
        return
    first = PrivacyAccountant(dp.noise_multiplier, dp.delta, user_rate=dp.user_rate).epsilon_after(population, cohort)
    if first > dp.target_epsilon:
        raise ValueError(f"target-epsilon {dp.target_epsilon:g} is below the epsilon of one round ({first:.3f} for "
                         f"{cohort} of {population} clients at dp-noise-multiplier {dp.noise_multiplier:g}); raise "
                         "it or the noise multiplier")
