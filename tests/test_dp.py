"""Client-level DP math (common/privacy/dp.py): clipping, central noise, distributed shares, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.privacy.dp import (
    DPConfig,
    add_noise_share,
    central_noise,
    clip_update,
    enough_shares,
    noise_shares,
    update_norm,
)


def _update(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"global::a": (scale * rng.normal(size=(4, 3))).astype(np.float32),
            "region=EU::b": (scale * rng.normal(size=5)).astype(np.float32)}


def test_clip_bounds_the_whole_update_and_keeps_its_direction() -> None:
    """A large update is scaled to norm C across all banks together, with one factor for every tensor."""
    # Prepare
    update = _update(10.0)
    # Execute
    clipped, norm = clip_update(update, 0.5)
    # Assert
    assert norm == pytest.approx(update_norm(update))
    assert update_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    factor = clipped["global::a"][0, 0] / update["global::a"][0, 0]
    for key in update:
        np.testing.assert_allclose(clipped[key], update[key] * factor, rtol=1e-5)
        assert clipped[key].dtype == np.float32


def test_clip_leaves_a_small_update_unchanged() -> None:
    """An update already within the bound is returned as it was."""
    update = _update(0.01)
    clipped, norm = clip_update(update, 1.0)
    assert norm < 1.0
    for key in update:
        np.testing.assert_array_equal(clipped[key], update[key])


def test_clip_refuses_non_finite_updates_and_bad_bounds() -> None:
    """NaN cannot be clipped into something harmless, and the bound must be positive."""
    with pytest.raises(ValueError, match="non-finite"):
        clip_update({"global::a": np.array([np.nan, 1.0])}, 1.0)
    with pytest.raises(ValueError, match="clip"):
        clip_update(_update(1.0), 0.0)


def test_central_noise_has_std_sigma_times_clip_on_a_bank_sum() -> None:
    """The noise added to a bank sum is centred with std sigma*C (200k draws, fixed seed)."""
    # Prepare
    cfg = DPConfig(noise_multiplier=1.3, clip=0.4)
    bank_sum = {"global::w": np.full(200_000, 2.0, dtype=np.float32)}
    # Execute
    noised = central_noise(bank_sum, cfg, np.random.default_rng(7))
    noise = noised["global::w"] - 2.0
    # Assert: std within 1% (the sampling error of the std is ~0.16%), mean within 4 standard errors
    assert noise.std() == pytest.approx(1.3 * 0.4, rel=0.01)
    assert abs(noise.mean()) < 4 * 0.52 / math.sqrt(noise.size)


def test_distributed_shares_sum_to_the_full_variance() -> None:
    """t clients each adding a share give a sum whose noise has std sigma*C; fewer give less and are refused."""
    # Prepare
    cfg = DPConfig(noise_multiplier=2.0, clip=0.5, mode="distributed")
    shares = 8
    zeros = {"global::w": np.zeros(100_000)}
    rng = np.random.default_rng(3)
    # Execute
    parts = [add_noise_share(zeros, cfg, shares, rng)["global::w"] for _ in range(shares)]
    total = np.sum(parts, axis=0)
    # Assert
    assert parts[0].std() == pytest.approx(1.0 / math.sqrt(shares), rel=0.02)
    assert total.std() == pytest.approx(2.0 * 0.5, rel=0.02)
    assert np.sum(parts[:4], axis=0).std() == pytest.approx(math.sqrt(4 / 8), rel=0.02)
    assert enough_shares(8, shares) and enough_shares(9, shares)
    assert not enough_shares(7, shares)


def test_noise_shares_leave_room_for_the_tolerated_dropouts() -> None:
    """t is the sampled count less the tolerated drop-outs (rounded so at least t really is required)."""
    assert noise_shares(10, 0.0) == 10
    assert noise_shares(10, 0.3) == 7
    assert noise_shares(3, 0.3) == 3  # ceil(2.1)
    assert noise_shares(1, 0.9) == 1
    with pytest.raises(ValueError, match="sampled"):
        noise_shares(0, 0.0)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"noise_multiplier": -1.0, "clip": 1.0}, "dp-noise-multiplier"),
    ({"noise_multiplier": 1.0, "clip": 0.0}, "dp-clip"),
    ({"noise_multiplier": 1.0, "clip": math.inf}, "dp-clip"),
    ({"noise_multiplier": 1.0, "clip": 1.0, "mode": "local"}, "dp-mode"),
    ({"noise_multiplier": 1.0, "clip": 1.0, "delta": 0.0}, "dp-delta"),
    ({"noise_multiplier": 1.0, "clip": 1.0, "target_epsilon": -2.0}, "target-epsilon"),
    ({"noise_multiplier": 0.0, "clip": 1.0, "target_epsilon": 2.0}, "target-epsilon"),
    ({"noise_multiplier": 1.0, "clip": 1.0, "target_action": "ignore"}, "target-epsilon-action"),
    ({"noise_multiplier": 1.0, "clip": 1.0, "dropout_tolerance": 1.0}, "dp-dropout-tolerance"),
])
def test_bad_dp_settings_are_refused_naming_the_key(kwargs: dict[str, object], key: str) -> None:
    """Each bad value raises ValueError whose message starts with the run-config key."""
    with pytest.raises(ValueError, match=f"^{key}"):
        DPConfig(**kwargs)  # type: ignore[arg-type]
