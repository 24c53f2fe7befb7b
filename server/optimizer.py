"""Server-side update rules: how a bank moves given the round's weighted-mean client delta.

FedAvg and FedProx move the bank by the mean delta (server learning rate 1 reproduces plain averaging of the
client models); FedProx differs only on the client, where a proximal term mu/2·||w - w_global||² is added to
the loss (`mu` travels in the round config). FedAdam (Reddi et al., 2020) treats the mean delta as a
pseudo-gradient and keeps Adam moments per tensor. FedAvgM (Hsu et al., 2019) keeps a heavy-ball velocity per
tensor, m <- momentum·m + mean_delta, and moves the bank by server_lr·m: in a steady direction a round's step
approaches server_lr/(1 - momentum) times the mean delta, so each round of local training counts for more without
any more client compute (why: on the cross-silo seq run, federated accuracy was short of rounds, README). The
state of both is plain arrays so it checkpoints as safetensors and a resumed run continues with exactly the same
moments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.names import FEDAVG, FEDAVGM, FEDPROX, STRATEGIES
from server.aggregate import Arrays, apply_delta


@dataclass(frozen=True)
class OptimizerConfig:
    """strategy: one of STRATEGIES; server_lr: step on the mean delta (FedAdam's eta);
    beta1/beta2/tau: FedAdam moments and its adaptivity floor (Flower's defaults);
    momentum: FedAvgM's velocity decay (> 0 with fedavgm, 0 with every other strategy)."""

    strategy: str = FEDAVG
    server_lr: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1/beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if self.strategy == FEDAVGM and not 0 < self.momentum < 1:
            raise ValueError(f"momentum must be in (0, 1) for fedavgm (0 would be fedavg), got {self.momentum}")
        if self.strategy != FEDAVGM and self.momentum != 0:
            raise ValueError(f"momentum={self.momentum} is used only by fedavgm, not {self.strategy}")


@dataclass
class ServerOptimizer:
    """Applies a mean delta to a bank; `state()` / `load_state()` carry FedAdam's moments and FedAvgM's velocity
    (kept in `m`)."""

    config: OptimizerConfig
    m: Arrays = field(default_factory=dict)
    v: Arrays = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)

    def step(self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]) -> Arrays:
        """New parameters for one bank (keys of `mean_delta` must be in `params`)."""
        if self.config.strategy in (FEDAVG, FEDPROX):
            return apply_delta(params, mean_delta, self.config.server_lr)
        if self.config.strategy == FEDAVGM:
            return self._momentum(params, mean_delta)
        return self._adam(params, mean_delta)

    def _momentum(self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]) -> Arrays:
        """Heavy ball: a tensor's velocity only moves in rounds that update its bank (a held-back segment bank
        keeps its velocity unchanged until it is released again)."""
        update: Arrays = {}
        for key, d in mean_delta.items():
            g = np.asarray(d, dtype=np.float64)
            m = self.config.momentum * self.m.get(key, np.zeros_like(g)) + g
            self.m[key], self.steps[key] = m, self.steps.get(key, 0) + 1
            update[key] = m
        return apply_delta(params, update, self.config.server_lr)

    def _adam(self, params: Mapping[str, np.ndarray], mean_delta: Mapping[str, np.ndarray]) -> Arrays:
        c = self.config
        update: Arrays = {}
        for key, d in mean_delta.items():
            g = np.asarray(d, dtype=np.float64)
            m = c.beta1 * self.m.get(key, np.zeros_like(g)) + (1 - c.beta1) * g
            v = c.beta2 * self.v.get(key, np.zeros_like(g)) + (1 - c.beta2) * g * g
            t = self.steps.get(key, 0) + 1
            self.m[key], self.v[key], self.steps[key] = m, v, t
            m_hat = m / (1 - c.beta1**t)
            v_hat = v / (1 - c.beta2**t)
            update[key] = m_hat / (np.sqrt(v_hat) + c.tau)
        return apply_delta(params, update, c.server_lr)

    def state(self) -> tuple[Arrays, dict[str, int]]:
        """(arrays "m/<key>", "v/<key>"; step counts) for a checkpoint."""
        arrays = {f"m/{k}": v.astype(np.float64) for k, v in self.m.items()}
        arrays.update({f"v/{k}": v.astype(np.float64) for k, v in self.v.items()})
        return arrays, dict(self.steps)

    def load_state(self, arrays: Mapping[str, np.ndarray], steps: Mapping[str, int]) -> None:
        self.m = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in arrays.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v, dtype=np.float64) for k, v in arrays.items() if k.startswith("v/")}
        self.steps = {k: int(v) for k, v in steps.items()}
