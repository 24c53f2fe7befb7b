"""Issue 23, leak 3: distributed DP noise must survive secure aggregation whole.

The attack: a curious server unmasks a bank's sum and reads how much noise it carries. Before the fix the
clients clipped every coordinate to +-secagg-clip-range (1.0) AFTER adding their noise share, so with the demo's
settings (sigma 1, C 5, t 10: shares of std 1.58) most coordinates were clipped and the sum's noise had std
~2.6 instead of sigma*C = 5, bounded and not Gaussian: the reported epsilon did not hold. Now the encoding range
is derived from C and sigma (common/privacy/dp.py encoding_range) and the noise on the securely summed bank is
N(0, (sigma C)^2): std within 2% and a Kolmogorov-Smirnov test that does not reject normality.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from client.secure import encoded_input
from common.names import GLOBAL
from common.privacy.dp import DISTRIBUTED, clip_update, encoding_range, privatize_update
from common.protocol import FedConfig, dp_shares_key
from common.secagg.errors import ProtocolError
from common.secagg.inmemory import run_in_memory
from common.secagg.layout import SEGMENT, bank_layouts, client_vectors, split_totals
from common.secagg.server import RoundSpec
from server.secure import SecureSettings

SIGMA, CLIP, COHORT, COORDS = 1.0, 5.0, 10, 40_000
KEY = f"{GLOBAL}::w"


def _cfg(**extra: object) -> FedConfig:
    return FedConfig(secure_aggregation=SEGMENT, dp_noise_multiplier=SIGMA, dp_clip=CLIP, dp_mode=DISTRIBUTED,
                     **extra)  # type: ignore[arg-type]


def _updates() -> dict[int, dict[str, np.ndarray]]:
    """Per client an update of norm 20 (clipped to 5 by DP), different directions."""
    out = {}
    for node in range(1, COHORT + 1):
        v = np.random.default_rng(1000 + node).normal(size=COORDS)
        out[node] = {KEY: (20.0 * v / np.linalg.norm(v)).astype(np.float32)}
    return out


def _secure_bank_sum(cfg: FedConfig, updates: dict[int, dict[str, np.ndarray]]) -> tuple[np.ndarray, int, float]:
    """Every client's real encoding path (client/secure.py encoded_input, noise seeded per client), the in-memory
    SecAgg+ round, and the server's decoding (server/secure.py SecureSettings): the bank's unmasked sum."""
    received = {KEY: np.zeros(COORDS, np.float32)}
    config = {dp_shares_key(GLOBAL): COHORT}
    inputs = {node: encoded_input(cfg, received, delta, {GLOBAL: 7}, config, COHORT, 1,
                                  np.random.default_rng(node)) for node, delta in updates.items()}
    layouts = bank_layouts(received)
    nodes = tuple(sorted(inputs))
    spec = RoundSpec(1, 1, nodes, {GLOBAL: (nodes, layouts[GLOBAL].length)}, bits=cfg.secagg_bits, min_members=2,
                     exempt=(GLOBAL,))
    totals = run_in_memory(spec, inputs).totals
    fixed = SecureSettings.from_config(cfg).fixed_point(COHORT)
    bank = split_totals(SEGMENT, layouts, {name: fixed.decode(t) for name, t in totals.items()})[GLOBAL]
    return bank.sums[KEY], bank.contributors, bank.weight


def test_noise_on_the_securely_summed_bank_is_the_full_gaussian() -> None:
    cfg = _cfg()
    updates = _updates()
    total, contributors, weight = _secure_bank_sum(cfg, updates)
    assert (contributors, weight) == (COHORT, float(COHORT))  # unit weights under DP
    signal = sum(clip_update(u, CLIP)[0][KEY].astype(np.float64) for u in updates.values())
    noise = total - signal
    std = float(np.std(noise))
    assert abs(std / (SIGMA * CLIP) - 1) < 0.02, std
    assert stats.kstest(noise / (SIGMA * CLIP), "norm").pvalue > 1e-3


def test_the_old_per_coordinate_clip_destroyed_the_noise() -> None:
    """The same privatized updates clipped to the old default range 1.0 (what the clients did before): the
    test above would have failed. The secure sum is exact, so summing in float shows what the server saw."""
    layout = bank_layouts({KEY: np.zeros(COORDS, np.float32)})[GLOBAL]
    updates = _updates()
    shares = {GLOBAL: COHORT}
    old = sum(client_vectors(SEGMENT, {GLOBAL: layout},
                             privatize_update(u, _cfg().dp, shares, np.random.default_rng(node)), {GLOBAL: 1.0},
                             1.0)[GLOBAL][:COORDS] for node, u in updates.items())
    noise = old - sum(clip_update(u, CLIP)[0][KEY].astype(np.float64) for u in updates.values())
    assert float(np.std(noise)) < 0.6 * SIGMA * CLIP
    assert stats.kstest(noise / (SIGMA * CLIP), "norm").pvalue < 1e-6


def test_encoding_range_holds_the_noise_and_both_sides_use_it() -> None:
    cfg = _cfg()
    assert cfg.secagg_encoding_range == encoding_range(cfg.dp) == CLIP * (1 + 12 * SIGMA)
    assert SecureSettings.from_config(cfg).clip == cfg.secagg_encoding_range
    central = FedConfig(secure_aggregation=SEGMENT, dp_noise_multiplier=SIGMA, dp_clip=CLIP)
    assert central.secagg_encoding_range == CLIP  # no share: the clipped update's coordinates are within +-C
    assert FedConfig(secure_aggregation=SEGMENT).secagg_encoding_range == 1.0  # no DP: secagg-clip-range


def test_a_noise_value_beyond_the_range_is_refused_not_clipped() -> None:
    cfg = _cfg()
    huge = {KEY: np.full(4, 1e6, np.float32)}
    received = {KEY: np.zeros(4, np.float32)}

    class Loud:  # a generator whose "noise" is far outside +-12 sigma
        def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
            return np.full(size, 1e6)

    with pytest.raises(ProtocolError, match="beyond the encoding range"):
        encoded_input(cfg, received, huge, {GLOBAL: 1}, {dp_shares_key(GLOBAL): COHORT}, COHORT, 1,
                      Loud())  # type: ignore[arg-type]


def test_configs_that_cannot_hold_the_noise_are_refused() -> None:
    with pytest.raises(ValueError, match="secagg-clip-range=2.0 is used only without DP"):
        _cfg(secagg_clip_range=2.0)
    with pytest.raises(ValueError, match="raise secagg-bits.*dp-noise-multiplier"):
        _cfg(secagg_bits=32)  # 1,000 clients x 65 per coordinate: a 2^-15 step in 32 bits
    assert _cfg(secagg_bits=48).secagg_encoding_range == 65.0  # 48 bits hold it
