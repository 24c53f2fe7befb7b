"""FedAvgM (server momentum): the velocity accumulates, survives a checkpoint, and the run config refuses
settings that would silently run another rule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from common.protocol import FedConfig
from server.aggregate import BankAggregate
from server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig

KEY = "global::w"


def test_constant_delta_accumulates_geometrically() -> None:
    """With the same mean delta d every round, round k moves the bank by lr·(1 + b + ... + b^(k-1))·d: after three
    rounds p0 + lr·(3 + 2b + b²)·d, where FedAvg would be at p0 + 3·lr·d."""
    # Prepare
    lr, b = 0.5, 0.9
    opt = ServerOptimizer(OptimizerConfig("fedavgm", server_lr=lr, momentum=b))
    p0 = {KEY: np.array([1.0, -2.0], dtype=np.float32)}
    d = {KEY: np.array([0.1, 0.3])}
    # Execute
    p1 = opt.step(p0, d)
    p2 = opt.step(p1, d)
    p3 = opt.step(p2, d)
    # Assert
    np.testing.assert_allclose(p1[KEY], p0[KEY] + lr * d[KEY], rtol=1e-6)
    np.testing.assert_allclose(p2[KEY], p0[KEY] + lr * (2 + b) * d[KEY], rtol=1e-6)
    np.testing.assert_allclose(p3[KEY], p0[KEY] + lr * (3 + 2 * b + b * b) * d[KEY], rtol=1e-6)
    assert p3[KEY].dtype == np.float32


def test_velocity_keeps_moving_after_the_clients_stop() -> None:
    """A zero delta after a round of d still moves the bank by lr·b·d (heavy ball), a sign flip is damped."""
    opt = ServerOptimizer(OptimizerConfig("fedavgm", server_lr=1.0, momentum=0.5))
    p1 = opt.step({KEY: np.zeros(2)}, {KEY: np.array([1.0, 2.0])})
    p2 = opt.step(p1, {KEY: np.zeros(2)})
    p3 = opt.step(p2, {KEY: np.array([-1.0, -2.0])})
    np.testing.assert_allclose(p2[KEY] - p1[KEY], [0.5, 1.0])
    np.testing.assert_allclose(p3[KEY] - p2[KEY], [-0.75, -1.5])


def test_velocity_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    """A resumed run continues with the same velocity: the next step equals the uninterrupted run's."""
    # Prepare
    cfg = OptimizerConfig("fedavgm", momentum=0.9)
    opt = ServerOptimizer(cfg)
    params = {KEY: np.zeros(3, dtype=np.float32)}
    d1, d2 = {KEY: np.array([0.2, -0.1, 0.05])}, {KEY: np.array([-0.3, 0.4, 0.0])}
    p1 = opt.step(opt.step(params, d1), d2)
    arrays, steps = opt.state()
    save_checkpoint(tmp_path, Checkpoint(round=2, banks={"global": p1}, state={"optimizer_steps": steps},
                                         optimizer_arrays=arrays))
    # Execute
    ckpt = load_checkpoint(tmp_path, 2)
    twin = ServerOptimizer(cfg)
    twin.load_state(ckpt.optimizer_arrays, ckpt.state["optimizer_steps"])
    # Assert
    assert steps == {KEY: 2}
    np.testing.assert_allclose(twin.step(ckpt.banks["global"], d1)[KEY], opt.step(p1, d1)[KEY])


def test_a_held_back_bank_keeps_its_velocity() -> None:
    """A segment bank held back in a round (no mean delta) is not moved by its old velocity and keeps it for the
    round that releases it; the global bank moves on."""
    # Prepare
    seg = "region=EU::w"
    banks = {"global": {KEY: np.zeros(1)}, "region=EU": {seg: np.zeros(1)}}
    strategy = AdapterBankStrategy(banks, ServerOptimizer(OptimizerConfig("fedavgm", momentum=0.5)),
                                   ValidationConfig(100.0, ("region",), ("region",), 1000), min_segment_clients=2)
    both = BankAggregate(mean_deltas={"global": {KEY: np.ones(1)}, "region=EU": {seg: np.ones(1)}})
    held = BankAggregate(mean_deltas={"global": {KEY: np.ones(1)}}, fallback=["region=EU"])
    # Execute
    strategy.apply(both, RoundStats())
    strategy.apply(held, RoundStats())
    after_held = float(strategy.banks["region=EU"][seg][0])
    strategy.apply(both, RoundStats())
    # Assert
    assert float(strategy.banks["global"][KEY][0]) == pytest.approx(1 + 1.5 + 1.75)
    assert after_held == pytest.approx(1.0)
    assert float(strategy.banks["region=EU"][seg][0]) == pytest.approx(1 + 1.5)


def test_run_config_defaults_and_refusals() -> None:
    """fedavgm defaults to server-lr 1 and momentum 0.9; a momentum outside [0, 1) or on another strategy is
    refused naming server-momentum; the optimizer refuses fedavgm without momentum (that is fedavg)."""
    assert FedConfig(strategy="fedavgm").effective_server_momentum == 0.9
    assert FedConfig(strategy="fedavgm").effective_server_lr == 1.0
    assert FedConfig(strategy="fedavgm", server_momentum=0.5).effective_server_momentum == 0.5
    assert FedConfig(strategy="fedavg").effective_server_momentum == 0.0
    for kwargs in ({"strategy": "fedavgm", "server_momentum": 1.0}, {"strategy": "fedavgm", "server_momentum": -0.1},
                   {"strategy": "fedavgm", "server_momentum": math.nan}, {"server_momentum": 0.9},
                   {"strategy": "fedadam", "server_momentum": 0.9}):
        with pytest.raises(ValueError, match="server-momentum"):
            FedConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        OptimizerConfig("fedavgm")
    with pytest.raises(ValueError, match="momentum"):
        OptimizerConfig("fedavg", momentum=0.9)


def test_the_server_app_builds_fedavgm_from_the_run_config(tmp_path: Path) -> None:
    """The ServerApp's optimizer carries the run config's strategy, server-lr and momentum."""
    from server.app import FederatedRun

    run = FederatedRun(FedConfig(strategy="fedavgm", server_lr=0.7, server_momentum=0.8, out_dir=str(tmp_path)),
                       grid=None)  # type: ignore[arg-type]
    assert (run.optimizer.config.strategy, run.optimizer.config.server_lr, run.optimizer.config.momentum) == (
        "fedavgm", 0.7, 0.8)
