"""The noise multiplier of each target epsilon of the user-level curve, from the accountant the runs report with.

`sigma_for_epsilon` bisects over sigma with `common.privacy.accountant.epsilon_user_level` (Poisson user
sampling at rate q, add/remove one user, composed over the rounds), which is monotone decreasing in sigma, and
returns the smallest sigma (to 0.1%) whose epsilon is <= the target: the run then reports at most the target.
A target the accountant cannot reach below SIGMA_MAX is refused by name (more noise than that leaves nothing
of the signal to train on; in practice such a target is a typo or too many rounds).
"""

from __future__ import annotations

import math

SIGMA_MIN = 0.05
SIGMA_MAX = 1000.0
TOLERANCE = 1e-3


def sigma_for_epsilon(epsilon: float, rounds: int, rate: float, delta: float) -> float:
    """The smallest noise multiplier whose user-level epsilon after `rounds` rounds at rate `rate` and `delta`
    is <= `epsilon` (relative precision TOLERANCE); ValueError naming the target when none <= SIGMA_MAX is."""
    from common.privacy.accountant import epsilon_user_level

    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"target epsilon must be a positive finite number, got {epsilon}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")

    def eps(sigma: float) -> float:
        return epsilon_user_level(sigma, delta, rate, rounds)

    if eps(SIGMA_MAX) > epsilon:
        raise ValueError(f"target epsilon {epsilon:g} is out of reach: even noise multiplier {SIGMA_MAX:g} gives "
                         f"epsilon {eps(SIGMA_MAX):.3g} after {rounds} rounds at dp-user-rate {rate:g} (delta "
                         f"{delta:.3g}); use fewer rounds, a smaller rate or a larger epsilon")
    low, high = SIGMA_MIN, 1.0
    if eps(low) <= epsilon:
        return low
    while eps(high) > epsilon:
        low, high = high, min(high * 2, SIGMA_MAX)
    while high - low > TOLERANCE * high:
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= epsilon else (mid, high)
    return high
