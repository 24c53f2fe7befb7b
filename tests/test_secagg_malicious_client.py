"""Issue 23, honest bounds: how far ONE modified client can move a securely summed bank.

Secure aggregation hides every single upload, so nothing checks one: a client that runs modified code uploads
any ring element it likes, for every coordinate and for its weight and contributor slots (there are no range
proofs). These tests measure what that buys it, with the server's own decoding and aggregation
(server/secure.py), so that the README states the real bound rather than the honest clients' one
(secagg-clip-range x max-client-examples = 1e6 per coordinate with the defaults).
"""

from __future__ import annotations

import copy

import numpy as np

from client.secure import encoded_input, secure_weights
from common.names import GLOBAL
from common.protocol import FedConfig, dp_shares_key
from common.secagg.inmemory import run_in_memory
from common.secagg.layout import SEGMENT, bank_layouts, split_totals
from common.secagg.server import RoundSpec
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.secure import SecureRound, SecureSettings
from server.strategy import AdapterBankStrategy
from server.validate import ValidationConfig

COHORT, COORDS, EVIL = 10, 50, 10
KEY = f"{GLOBAL}::w"
RECEIVED = {KEY: np.zeros(COORDS, np.float32)}


def _honest(cfg: FedConfig) -> dict[int, dict[str, np.ndarray]]:
    """Clients 1..9 through the real client encoding (deltas within +-0.1, 1,000 examples each)."""
    config = {dp_shares_key(GLOBAL): COHORT}
    return {n: encoded_input(cfg, RECEIVED, {KEY: np.random.default_rng(n).uniform(-0.1, 0.1, COORDS)},
                             {GLOBAL: 1000}, config, COHORT, 1, np.random.default_rng(n))
            for n in range(1, COHORT)}


def _sum(cfg: FedConfig, inputs: dict[int, dict[str, np.ndarray]]) -> np.ndarray:
    nodes = tuple(sorted(inputs))
    length = bank_layouts(RECEIVED)[GLOBAL].length
    spec = RoundSpec(1, 1, nodes, {GLOBAL: (nodes, length)}, bits=cfg.secagg_bits, min_members=2, exempt=(GLOBAL,))
    return SecureSettings.from_config(cfg).fixed_point(COHORT).decode(run_in_memory(spec, inputs).totals[GLOBAL])


def _largest_shift(cfg: FedConfig) -> float:
    """The evil client uploads, in every coordinate, the largest value that cannot wrap whatever the honest
    clients sent: 2^(bits-1) - 1 minus room for nine honest maxima. Returns the measured shift of the sum."""
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    honest = _honest(cfg)
    evil_value = 2 ** (cfg.secagg_bits - 1) - 1 - int(np.ceil((COHORT - 1) * fixed.bound * fixed.scale))
    length = bank_layouts(RECEIVED)[GLOBAL].length
    evil = np.full(length, evil_value, dtype=np.uint64)
    weight = secure_weights(cfg, {GLOBAL: 1000})[GLOBAL]
    evil[COORDS:] = fixed.encode(np.array([weight, 1.0]))  # honest-looking weight and contributor slots
    shifted = _sum(cfg, {**honest, EVIL: {GLOBAL: evil}})
    silent = _sum(cfg, {**honest, EVIL: {GLOBAL: fixed.encode(np.zeros(length))}})
    shift = shifted[:COORDS] - silent[:COORDS]
    assert np.allclose(shift, shift[0]) and shifted[COORDS] == silent[COORDS] + weight
    return float(shift[0])


def test_one_client_moves_a_coordinate_far_beyond_the_honest_bound() -> None:
    cfg = FedConfig(secure_aggregation=SEGMENT)  # 64 bits, max-client-examples 1e6, secagg-clip-range 1
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    honest_bound = cfg.secagg_clip_range * cfg.max_client_examples
    shift = _largest_shift(cfg)
    ceiling = 2.0**63 / fixed.scale  # the signed ring's half width, in value units
    assert 0.4 * ceiling < shift < ceiling and ceiling == 2.0**24  # 1.68e7, the ring's half width
    assert shift > 7 * honest_bound  # measured 7.8e6 with certainty; up to 1.68e7 when the others' sum is small


def test_under_dp_the_weights_are_one_and_the_shift_is_bounded_by_the_ring() -> None:
    cfg = FedConfig(secure_aggregation=SEGMENT, dp_noise_multiplier=1.0, dp_clip=5.0, dp_mode="distributed")
    assert secure_weights(cfg, {GLOBAL: 1000, "region=EU": 0}) == {GLOBAL: 1.0, "region=EU": 1.0}
    total = _sum(cfg, _honest(cfg))
    assert total[COORDS:].tolist() == [COHORT - 1.0, COHORT - 1.0]  # weight == contributors: unit weights
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    shift = _largest_shift(cfg)
    assert fixed.bound == 65.0 and 2.0**63 / fixed.scale == 1024.0
    assert 0.4 * 1024 < shift < 1024  # against an honest client's 65 (C + 12 sigma C) per coordinate


def _forged_round(cfg: FedConfig, slots: tuple[float, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Nine honest clients and the evil one, whose delta is zero and whose weight and contributor slots are
    `slots`: (the honest clients' weighted sum, the raw totals the server unmasks)."""
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    honest = _honest(cfg)
    length = bank_layouts(RECEIVED)[GLOBAL].length
    forged = np.zeros(length)
    forged[COORDS:] = slots
    nodes = tuple(range(1, COHORT + 1))
    spec = RoundSpec(1, 1, nodes, {GLOBAL: (nodes, length)}, bits=64, min_members=2, exempt=(GLOBAL,))
    raw = np.rint(forged * fixed.scale).astype(np.int64).view(np.uint64)  # no bound check: any ring element
    totals = run_in_memory(spec, {**honest, EVIL: {GLOBAL: raw}}).totals
    honest_sum = _sum(cfg, honest)[:COORDS]
    return honest_sum, totals


def _server_mean(cfg: FedConfig, totals: dict[str, np.ndarray], shares: dict[str, int] | None = None
                 ) -> tuple[dict[str, np.ndarray] | None, SecureRound]:
    """The mean the server's own aggregation (server/secure.py) would apply; its central noise from rng(0)."""
    strategy = AdapterBankStrategy({GLOBAL: copy.deepcopy(RECEIVED)}, ServerOptimizer(OptimizerConfig("fedavg", 1.0)),
                                   ValidationConfig(), 2)
    secure = SecureRound(None, SecureSettings.from_config(cfg), 1.0, np.random.default_rng(0))  # type: ignore[arg-type]
    agg = secure._aggregate(strategy, bank_layouts(RECEIVED), totals, COHORT, shares or {}, {GLOBAL: COHORT})
    return agg.mean_deltas.get(GLOBAL), secure


def test_a_forged_negative_weight_would_flip_the_mean_and_is_now_refused() -> None:
    """The evil client reports weight -2 x (the others' total): the summed weight is negative, so dividing by it
    (what the server did) applies the honest mean with its sign flipped. No honest cohort sums to a negative
    weight: the server now leaves the bank as it was and counts the sum as implausible."""
    cfg = FedConfig(secure_aggregation=SEGMENT)
    honest_sum, totals = _forged_round(cfg, (-2 * (COHORT - 1) * 1000.0, 1.0))
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    decoded = split_totals(SEGMENT, bank_layouts(RECEIVED), {GLOBAL: fixed.decode(totals[GLOBAL])})[GLOBAL]
    assert decoded.weight == -(COHORT - 1) * 1000.0 and decoded.contributors == COHORT
    old_mean = decoded.sums[KEY] / decoded.weight  # the division the server made before the check
    np.testing.assert_allclose(old_mean, -honest_sum / ((COHORT - 1) * 1000.0), rtol=1e-6, atol=1e-12)
    mean, secure = _server_mean(cfg, totals)
    assert mean is None and secure.traffic.rejected["implausible-sum"] == 1


def test_a_forged_weight_within_the_honest_range_still_scales_the_mean() -> None:
    """What the check cannot catch: a total weight the cohort could have had. The evil client brings the total
    down to the number of contributors (10 instead of 9,001), and the server applies the honest clients'
    weighted sum divided by 10: a mean 900 times too large. Under DP (weights exactly 1) a forged weight alone is
    caught, since the weight must equal the contributor count; forging both slots alike is not: the evil client
    claims -8 contributors of weight -8, the total is 1 of 10 uploads, and in central mode the global mean is the
    noised sum over 1 instead of 10. In distributed mode the same bank falls below its t = 10 noise shares and
    is held back."""
    cfg = FedConfig(secure_aggregation=SEGMENT)
    honest_sum, totals = _forged_round(cfg, (-(COHORT - 1) * 1000.0 + COHORT, 1.0))
    mean, _ = _server_mean(cfg, totals)
    assert mean is not None
    true_mean = honest_sum / ((COHORT - 1) * 1000.0 + 1)  # the evil client's honest weight would have been >= 1
    ratio = float(np.median(np.asarray(mean[KEY], dtype=np.float64) / true_mean))
    assert 890 < ratio < 910
    central = FedConfig(secure_aggregation=SEGMENT, dp_noise_multiplier=1.0, dp_clip=5.0)
    _, totals = _forged_round(central, (-5.0, 1.0))  # weight 9 - 5 = 4 against 10 contributors
    mean, secure = _server_mean(central, totals)
    assert mean is None and secure.traffic.rejected["implausible-sum"] == 1
    _, totals = _forged_round(central, (-8.0, -8.0))
    mean, _ = _server_mean(central, totals)
    fixed = SecureSettings.from_config(central).fixed_point(COHORT)
    decoded = split_totals(SEGMENT, bank_layouts(RECEIVED), {GLOBAL: fixed.decode(totals[GLOBAL])})[GLOBAL]
    noise = np.random.default_rng(0).normal(0.0, 5.0, size=COORDS)  # what the server's rng(0) adds
    assert mean is not None and (decoded.contributors, decoded.weight) == (1, 1.0)
    np.testing.assert_allclose(mean[KEY], (decoded.sums[KEY] + noise) / 1.0, rtol=1e-5)  # over 1, not 10
    distributed = FedConfig(secure_aggregation=SEGMENT, dp_noise_multiplier=1.0, dp_clip=5.0, dp_mode="distributed")
    _, totals = _forged_round(distributed, (-8.0, -8.0))
    mean, _ = _server_mean(distributed, totals, {GLOBAL: COHORT})
    assert mean is None
