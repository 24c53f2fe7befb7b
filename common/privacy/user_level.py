"""User-level differential privacy across silos (issue 18): numpy only, no torch, no Flower.

The unit protected is one USER, not one silo. Each silo (a client of the federation holding many users) does,
per round (common/privacy/user_updates.py computes the updates):

1. samples its users by Poisson sampling at rate q (`dp-user-rate`): each user independently with probability
   q, drawn from OS entropy (`os_entropy_rng`: `secrets`, never the run seed, which the server and every
   silo know; the amplification by subsampling the accountant counts on holds only if the sample is secret);
2. computes each sampled user's update from the round's received banks, the WHOLE update across every bank
   that user's targets route through (global and its segment banks), clips it to L2 norm C (`dp-clip`) and
   sums the clipped updates (`clipped_sum`);
3. sends that sum only inside secure aggregation (required: `check_user_level`), in a bank vector whose weight
   slot is the silo's user POPULATION in the bank (`silo_weights`: public, not the sampled count, which would
   tell how many users were sampled). In distributed mode the silo adds its noise share N(0, (sigma C)^2 / t)
   to its sum per bank (`silo_input`), AFTER the clipping: noise is never clipped.

The server unmasks the per-bank sums, adds N(0, (sigma C)^2) per coordinate in central mode, and divides by
q x (the bank's summed population), the expected number of sampled users (`fixed_denominator`: the
fixed-denominator estimator of McMahan et al. 2018, whose sensitivity does not depend on who was sampled).

Guarantee. Adding or removing one user changes exactly one silo's sum, in every bank together, by at most C
in L2: the released noised bank sums are one Gaussian mechanism with noise multiplier sigma per round, on a
Poisson sample of users at rate q. The accountant (common/privacy/accountant.py `epsilon_user_level`)
composes `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))` over the rounds (add/remove one user). What is
outside it: the silos' populations per bank (treated as public, like the registration), evaluation sums,
and in central mode the server itself (it sees un-noised sums of all silos, never one silo's).

Train only what DP can afford (`FROZEN_KEYS`): the noise on a bank's mean has std sigma C / (q N) per
coordinate whatever the dimension d, while one user's clipped update has norm at most C spread over d
coordinates: the noise's norm grows as sqrt(d). The seq model's global bank is 390k parameters of which the
collaborative item rows (3,884 x 64 on MovieLens-1M) are two thirds, and a user touches only the rows of the
items in its history and its softmax: they are frozen under user-level DP (never updated, never noised) at
their starting values: zero, or the rows of a model pre-trained on public users (run-config init-banks;
`fedadapt privacy curve --unit user --public-users`), and the item text projection, the user tower, the
item prior and the segment banks are trained.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping

import numpy as np

from common.names import GLOBAL, bank_of, make_key
from common.privacy.dp import DISTRIBUTED, DPConfig, add_noise_share

CLIENT = "client"
USER = "user"
DP_UNITS = (CLIENT, USER)
FROZEN_KEYS = frozenset({make_key(GLOBAL, "item_rows")})  # not trained (nor noised) under user-level DP
DEFAULT_MAX_USERS = 100_000  # dp-user-max: the most users one silo may hold in a bank (the secure weight cap)

Arrays = dict[str, np.ndarray]


def check_user_level(unit: str, rate: float, steps: int, lr: float, max_users: int, *, noise_multiplier: float,
                     secure_aggregation: str, arch: str) -> None:
    """ValueError naming the run-config key when the user-level settings cannot run (checked before anything
    starts: FedConfig.__post_init__)."""
    if unit not in DP_UNITS:
        raise ValueError(f"dp-unit {unit!r} is not one of {', '.join(DP_UNITS)}")
    if unit == CLIENT:
        if rate != 0.0:
            raise ValueError(f"dp-user-rate={rate} is used only with dp-unit=user")
        return
    if not noise_multiplier > 0:
        raise ValueError("dp-unit=user needs dp-noise-multiplier > 0 (and dp-clip): it is a DP setting")
    if not (0 < rate <= 1 and math.isfinite(rate)):
        raise ValueError(f"dp-user-rate must be in (0, 1] with dp-unit=user (the Poisson rate q), got {rate}")
    if steps < 1:
        raise ValueError(f"dp-user-steps must be >= 1, got {steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"dp-user-lr must be > 0, got {lr}")
    if max_users < 1:
        raise ValueError(f"dp-user-max must be >= 1, got {max_users}")
    if secure_aggregation == "off":
        raise ValueError("dp-unit=user needs secure-aggregation segment or segment-hidden: a silo's sum of its "
                         "users' updates must never reach the server un-noised and alone")
    if arch != "seq":
        raise ValueError(f"dp-unit=user runs on arch=seq only (per-user updates of the seq model), got arch={arch}")


def os_entropy_rng() -> np.random.Generator:
    """A generator seeded from the OS (`secrets`), never from the run seed: for the user sample and the noise."""
    return np.random.Generator(np.random.PCG64(secrets.randbits(128)))


def poisson_sample(population: int, rate: float, rng: np.random.Generator) -> list[int]:
    """Indices of the users sampled this round: each of `population` independently with probability `rate`."""
    if population < 0:
        raise ValueError(f"population must be >= 0, got {population}")
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    return [int(i) for i in np.flatnonzero(rng.random(population) < rate)]


def trained_keys(keys: Iterable[str]) -> list[str]:
    """The keys that are trained (and noised) under user-level DP: everything but FROZEN_KEYS."""
    return [k for k in keys if k not in FROZEN_KEYS]


def user_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of one user's whole update (every bank together), in float64."""
    return math.sqrt(sum(float(np.sum(np.square(np.asarray(v, dtype=np.float64)))) for v in update.values()))


def clipped_sum(updates: Iterable[Mapping[str, np.ndarray]], shapes: Mapping[str, tuple[int, ...]], clip: float
                ) -> tuple[Arrays, list[float]]:
    """(sum over users of each update scaled to L2 norm <= clip, the norms before clipping). `shapes` are every
    key of the silo's banks (a user's update may lack the banks it does not touch: zeros there). One scale per
    user for all its banks together, so the user's whole contribution is bounded by clip."""
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    total = {k: np.zeros(shape, dtype=np.float64) for k, shape in shapes.items()}
    norms: list[float] = []
    for update in updates:
        unknown = sorted(set(update) - set(total))
        if unknown:
            raise ValueError(f"a user's update has keys outside the silo's banks: {unknown[:3]}")
        norm = user_norm(update)
        if not math.isfinite(norm):
            raise ValueError("a user's update has non-finite values; it cannot be clipped")
        norms.append(norm)
        scale = min(1.0, clip / norm) if norm > 0 else 1.0
        for key, value in update.items():
            total[key] += np.asarray(value, dtype=np.float64) * scale
    return total, norms


def silo_weights(populations: Mapping[str, int], dp: DPConfig, max_users: int) -> dict[str, float]:
    """Each bank's weight slot: the silo's users in it (its population, not the sample). Distributed mode
    counts every bank it was sent at least 1, since each carries its noise share. A population above
    dp-user-max cannot be encoded and is refused by name."""
    out: dict[str, float] = {}
    for bank, n in populations.items():
        if n > max_users:
            raise ValueError(f"bank {bank}: this silo has {n} users, more than dp-user-max={max_users}")
        if n > 0 or dp.mode == DISTRIBUTED:
            out[bank] = float(max(n, 1))
    return out


def silo_input(user_sum: Mapping[str, np.ndarray], weights: Mapping[str, float], dp: DPConfig,
               shares: Mapping[str, int], rng: np.random.Generator) -> Arrays:
    """The silo's per-bank vectors before encoding, divided by the bank's weight (the secure layout multiplies
    by it again: common/secagg/layout.py bank_vector), so that the secure sum carries the sum of clipped user
    updates. Distributed mode first adds the noise share N(0, (sigma C)^2 / t) to every trained key of every
    bank (t = `shares[bank]`), never clipped; central mode adds nothing (the server does). |coordinate| stays
    within C plus the share's noise (each user's update is clipped to C, and the weight is at least the
    number of summed users), the range dp.encoding_range allows."""
    out: Arrays = {}
    for key, value in user_sum.items():
        bank = bank_of(key)
        weight = float(weights.get(bank, 0.0))
        arr = np.asarray(value, dtype=np.float64)
        if dp.mode == DISTRIBUTED and key not in FROZEN_KEYS:
            if bank not in shares:
                raise ValueError(f"no noise share count (t) for bank {bank!r}")
            arr = add_noise_share({key: arr}, dp, shares[bank], rng)[key]
        out[key] = arr / weight if weight > 0 else np.zeros_like(arr)
    return out


def fixed_denominator(rate: float, population: float) -> float:
    """The divisor of a bank's noised sum: q x its users, the expected number of sampled users."""
    if not (rate > 0 and population > 0):
        raise ValueError(f"a user-level mean needs rate > 0 and population > 0, got {rate}, {population}")
    return rate * population


def central_user_noise(bank_sum: Mapping[str, np.ndarray], dp: DPConfig, rng: np.random.Generator) -> Arrays:
    """N(0, (sigma C)^2) on every trained key of a bank's securely summed users (central mode, float64); the
    frozen keys are passed through (they are zero in an honest sum and are never applied)."""
    out: Arrays = {}
    for key, value in bank_sum.items():
        arr = np.asarray(value, dtype=np.float64)
        out[key] = arr if key in FROZEN_KEYS else arr + rng.normal(0.0, dp.noise_std, size=arr.shape)
    return out


def default_delta(users: int) -> float:
    """delta = 1 / N^1.1 for N users (below 1/N, the usual rule, by a margin that grows with N)."""
    if users < 2:
        raise ValueError(f"a user-level delta needs at least 2 users, got {users}")
    return float(users ** -1.1)
