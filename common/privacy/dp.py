"""Client-level differential privacy for the adapter banks (DP-FedAvg, McMahan et al. 2018): pure numpy.

Guarantee. With `noise_multiplier` sigma > 0 and clip bound C, one client's WHOLE update (every bank it
trained, all tensors together) is clipped to L2 norm C, so adding or removing one client moves the vector of
all bank SUMS by at most C in L2 (the client touches global and its segments, but its clipped update has norm
<= C across all of them); replacing one client by another moves it by at most 2C. Gaussian noise
N(0, (sigma*C)^2) is added to every coordinate of every bank's sum, which makes the round's released sums a
Gaussian mechanism with noise multiplier sigma at sensitivity C (sigma/2 at 2C). Composed over rounds with the
cohort's sampling (common/privacy/accountant.py: fixed-size cohorts, replace-one, 2C) this gives (epsilon,
delta) client-level DP: an observer of every released bank, in every round, cannot tell well which of two
clients (each with all its users) took part. It does not cover what a server sees of single replies in plain
mode (below), the registration (segments, example counts), or which clients replied.

Uniform weights. With DP on, every contributing client weighs 1 in a bank (example-count weighting would let a
client with many examples move a bank by more than C). A bank's mean is `noised sum / denominator`; the denominator
is the number of clients whose (clipped) update went into the sum. The server already knows that number in every
mode in which it sees who replied (plain, segment-visible secure); it is treated as public, like the cohort size
and the registration (strictly, a segment bank's count changes when a client is replaced by one of another segment,
and the guarantee does not hide that). (A fixed expected denominator would also hide it, at the price of shrinking
every step when clients drop out; we chose the exact count for an unbiased step on the clients that did
contribute.)

Modes.
- "central": the server clips each accepted delta (robust to a client that does not clip), sums per bank and
  adds N(0, (sigma*C)^2) once to each bank's sum (`central_noise`). Trust: the server sees un-noised updates
  (plain) or un-noised sums (secure aggregation); the guarantee protects what the server releases.
- "distributed": each client clips its own update and adds a share N(0, (sigma*C)^2 / t) to every bank it
  sends (`add_noise_share`), so any t or more contributions to a bank sum carry at least the full variance and
  the server never sees an un-noised sum. With secure aggregation the server sees only the noised sum; in plain
  mode it sees each reply with only a 1/sqrt(t) share of the noise (no protection of single replies beyond
  noise multiplier sigma/sqrt(t)). t per bank comes from `noise_shares` (the bank's sampled clients, less the
  tolerated drop-outs). FEWER THAN t SURVIVORS: the sum would carry only survivors/t of the variance, so that
  bank's sum must not be released: `enough_shares` is False, the server does not apply the bank that round, and
  a secure path must check it before unmasking. The accountant is charged with sigma every round.

API (signatures kept stable for server/secure.py and client/secure.py):
    DPConfig(noise_multiplier, clip, mode="central", delta=1e-5, target_epsilon=0.0, target_action="stop",
             dropout_tolerance=0.0)
    update_norm(update: Mapping[str, ndarray]) -> float
    clip_update(update: Mapping[str, ndarray], clip: float) -> tuple[dict[str, ndarray], float]
    noise_shares(sampled_in_bank: int, dropout_tolerance: float) -> int
    add_noise_share(update, cfg: DPConfig, shares: int, rng: np.random.Generator) -> dict[str, ndarray]
    central_noise(bank_sum, cfg: DPConfig, rng: np.random.Generator) -> dict[str, ndarray]
    enough_shares(survivors: int, shares: int) -> bool
    privatize_update(update, cfg: DPConfig, shares: Mapping[str, int], rng) -> dict[str, ndarray]
        (clip + the share of each bank, keys "<bank>::...": the plain-mode client's whole step)
    share_norm_bound(sizes: Mapping[str, int], cfg: DPConfig, shares: Mapping[str, int]) -> float
    encoding_range(cfg: DPConfig) -> float
        (the per-coordinate bound of an honest client's privatized update: the fixed-point range of a secure
        sum, so that secure aggregation never clips the noise)

Secure aggregation encodes each coordinate in a fixed-point ring with a per-coordinate range. A noise share
clipped to that range is bounded, not Gaussian, and the epsilon above would not hold (issue 23, leak 3: a range
of 1.0 against shares of std 1.58 clipped 53% of coordinates and left the bank sum's noise at std 2.62 instead of
5). So with DP the range is not a setting: `encoding_range` derives it from C and sigma, wide enough that an
honest coordinate falls outside it with probability below 1e-32 (NOISE_SIGMAS standard deviations of the
largest share), and a client whose value does fall outside refuses the round instead of clipping it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.names import bank_of

CENTRAL = "central"
DISTRIBUTED = "distributed"
DP_MODES = (CENTRAL, DISTRIBUTED)
STOP = "stop"
WARN = "warn"
TARGET_ACTIONS = (STOP, WARN)
# How many standard deviations of a noise share the secure-aggregation encoding range leaves room for:
# P(|N(0,1)| > 12) = 3.6e-33 per coordinate, so even 1e12 coordinates over a whole run are out of range with
# probability below 1e-20, far below any delta.
NOISE_SIGMAS = 12.0

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DPConfig:
    """Client-level DP settings (run-config keys in brackets; errors name them).

    noise_multiplier [dp-noise-multiplier]: sigma, noise std per bank sum / clip; 0 turns DP off.
    clip [dp-clip]: C, the bound on one client's whole-update L2 norm (all banks together).
    mode [dp-mode]: "central" (server adds the noise) or "distributed" (clients add shares).
    delta [dp-delta]: the delta of (epsilon, delta); 1e-5 by default: at most 1/N for federations of up to
        100,000 clients, a tenth of it for 10,000 (the usual rule is delta well below 1/N: a mechanism that
        published each client's data outright with probability delta would still be (0, delta)-DP).
    target_epsilon [target-epsilon]: 0 = none; otherwise the run stops (or warns) before a round that would
        take epsilon above it.
    target_action [target-epsilon-action]: "stop" or "warn".
    dropout_tolerance [dp-dropout-tolerance]: distributed mode only: the fraction of a bank's sampled clients
        that may drop out with the bank still released (each share is then larger: t shrinks).
    user_rate [dp-user-rate, with dp-unit=user]: 0 = client-level DP (this module); q > 0 = user-level DP
        (common/privacy/user_level.py): C bounds one USER's update, each silo samples its users at rate q.
    """

    noise_multiplier: float
    clip: float
    mode: str = CENTRAL
    delta: float = 1e-5
    target_epsilon: float = 0.0
    target_action: str = STOP
    dropout_tolerance: float = 0.0
    user_rate: float = 0.0

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"dp-noise-multiplier must be >= 0 (0: DP off), got {self.noise_multiplier}")
        if not math.isfinite(self.clip) or self.clip < 0:
            raise ValueError(f"dp-clip must be a finite number >= 0, got {self.clip}")
        if self.noise_multiplier > 0 and not self.clip > 0:
            raise ValueError(f"dp-clip must be > 0 when dp-noise-multiplier > 0, got {self.clip}")
        if self.mode not in DP_MODES:
            raise ValueError(f"dp-mode {self.mode!r} is not one of {', '.join(DP_MODES)}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp-delta must be in (0, 1), got {self.delta}")
        if not (self.target_epsilon >= 0 and math.isfinite(self.target_epsilon)):
            raise ValueError(f"target-epsilon must be >= 0 (0: none), got {self.target_epsilon}")
        if self.target_epsilon > 0 and self.noise_multiplier == 0:
            raise ValueError("target-epsilon needs dp-noise-multiplier > 0 (without noise epsilon is infinite)")
        if self.target_action not in TARGET_ACTIONS:
            raise ValueError(f"target-epsilon-action {self.target_action!r} is not one of {', '.join(TARGET_ACTIONS)}")
        if not 0 <= self.dropout_tolerance < 1:
            raise ValueError(f"dp-dropout-tolerance must be in [0, 1), got {self.dropout_tolerance}")
        if not (0 <= self.user_rate <= 1 and math.isfinite(self.user_rate)):
            raise ValueError(f"dp-user-rate must be in [0, 1] (0: client-level DP), got {self.user_rate}")
        if self.user_rate > 0 and self.noise_multiplier == 0:
            raise ValueError("dp-user-rate needs dp-noise-multiplier > 0")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0

    @property
    def user_level(self) -> bool:
        """True when the protected unit is one user of a silo (common/privacy/user_level.py)."""
        return self.enabled and self.user_rate > 0

    @property
    def noise_std(self) -> float:
        """Std of the noise on each coordinate of a bank SUM: sigma * C."""
        return self.noise_multiplier * self.clip


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of a whole update (every tensor of every bank), in float64."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in update.values()))


def clip_update(update: Mapping[str, np.ndarray], clip: float) -> tuple[Arrays, float]:
    """(update scaled to L2 norm <= clip, its norm before clipping); an update within the bound is unchanged.

    The scale is one factor for the whole update, so the direction across banks is kept (per-bank clipping
    would bound each bank at C and the whole update only at C * sqrt(banks)). Dtypes are kept.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    norm = update_norm(update)
    if not math.isfinite(norm):
        raise ValueError("update has non-finite values; it cannot be clipped")
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = {k: (np.asarray(v, dtype=np.float64) * scale).astype(np.asarray(v).dtype) for k, v in update.items()}
    return out, norm


def noise_shares(sampled_in_bank: int, dropout_tolerance: float) -> int:
    """t for a bank: how many contributions must survive for its noise to be complete (at least 1).

    `sampled_in_bank` clients were asked to train the bank; up to `dropout_tolerance` of them may drop out.
    """
    if sampled_in_bank < 1:
        raise ValueError(f"a bank needs at least one sampled client, got {sampled_in_bank}")
    if not 0 <= dropout_tolerance < 1:
        raise ValueError(f"dropout_tolerance must be in [0, 1), got {dropout_tolerance}")
    return max(1, math.ceil(sampled_in_bank * (1 - dropout_tolerance) - 1e-9))


def _gaussian(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(0.0, std, size=shape)


def add_noise_share(update: Mapping[str, np.ndarray], cfg: DPConfig, shares: int, rng: np.random.Generator
                    ) -> Arrays:
    """A client's (already clipped) update plus its distributed-mode share: N(0, (sigma*C)^2 / shares) per
    coordinate, so that `shares` such contributions sum to the full variance (sigma*C)^2."""
    if shares < 1:
        raise ValueError(f"shares must be >= 1, got {shares}")
    std = cfg.noise_std / math.sqrt(shares)
    return {k: (np.asarray(v, dtype=np.float64) + _gaussian(np.shape(v), std, rng)).astype(np.asarray(v).dtype)
            for k, v in update.items()}


def central_noise(bank_sum: Mapping[str, np.ndarray], cfg: DPConfig, rng: np.random.Generator) -> Arrays:
    """A bank's sum of clipped updates plus N(0, (sigma*C)^2) per coordinate (central mode, in float64)."""
    return {k: np.asarray(v, dtype=np.float64) + _gaussian(np.shape(v), cfg.noise_std, rng)
            for k, v in bank_sum.items()}


def privatize_update(update: Mapping[str, np.ndarray], cfg: DPConfig, shares: Mapping[str, int],
                     rng: np.random.Generator) -> Arrays:
    """What a client sends in distributed mode: its whole update clipped to C, then each bank's tensors plus
    that bank's share (`shares[bank]` = t; keys are "<bank>::<param path>"). A bank without t is an error."""
    clipped, _ = clip_update(update, cfg.clip)
    out: Arrays = {}
    for key, value in clipped.items():
        bank = bank_of(key)
        if bank not in shares:
            raise ValueError(f"no noise share count (t) for bank {bank!r}")
        out.update(add_noise_share({key: value}, cfg, shares[bank], rng))
    return out


def share_norm_bound(sizes: Mapping[str, int], cfg: DPConfig, shares: Mapping[str, int]) -> float:
    """The largest L2 norm an honest distributed-mode reply can have, short of a 1e-15 accident: C for the
    clipped update plus the norm of its noise (`sizes[bank]` coordinates at std sigma*C/sqrt(t) each), which
    concentrates at sqrt(sum d_b s_b^2) with std below max s_b / sqrt(2); 6 max s_b is the margin.

    The server cannot enforce the clip in this mode (the noise hides the update): this bound rejects a reply
    far outside it, not one that spends its noise's room on signal (distributed DP trusts clients to clip)."""
    stds = {bank: cfg.noise_std / math.sqrt(shares[bank]) for bank in sizes}
    noise = math.sqrt(sum(sizes[bank] * std**2 for bank, std in stds.items()))
    return cfg.clip + noise + 6 * max(stds.values(), default=0.0)


def enough_shares(survivors: int, shares: int) -> bool:
    """Whether a distributed-mode bank sum over `survivors` contributions carries the full noise variance
    (survivors >= t). When False the sum must not be released (nor unmasked, on a secure path)."""
    return survivors >= shares



def encoding_range(cfg: DPConfig) -> float:
    """The largest |coordinate| of an honest client's privatized update, the range its fixed-point encoding
    must hold (common/secagg/fixedpoint.py) so that no noise is ever clipped.

    The update is clipped to L2 norm C, so each coordinate is within +-C. central: that is all the client sends.
    distributed: plus a share of std sigma*C/sqrt(t) <= sigma*C (t >= 1; the bound does not depend on the t a
    server names, so a server cannot shrink it), hence C + NOISE_SIGMAS * sigma * C."""
    if not cfg.enabled:
        raise ValueError("encoding_range needs DP on (dp-noise-multiplier > 0)")
    if cfg.mode == DISTRIBUTED:
        return cfg.clip * (1.0 + NOISE_SIGMAS * cfg.noise_multiplier)
    return cfg.clip


def out_of_range(update: Mapping[str, np.ndarray], bound: float) -> int:
    """How many coordinates of `update` lie outside +-bound (with DP: 0 but with probability < 1e-32)."""
    return sum(int(np.sum(np.abs(np.asarray(v, dtype=np.float64)) > bound)) for v in update.values())
