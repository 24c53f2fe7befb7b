"""The options of `fedadapt privacy curve --unit user`, checked whole before anything slow runs.

`UserCurveOptions.__post_init__` refuses a bad value by its flag; `plan` (plan.py) then reads the data, deals
the users, calibrates every sigma and builds every run's FedConfig, still writing nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.names import STRATEGIES

# the run-config keys the curve sets itself (a --set of one of them would silently change what a point means)
OWNED_KEYS = frozenset({"arch", "data-dir", "out-dir", "num-server-rounds", "seed", "backbone", "segment-keys",
                        "strategy", "server-lr", "secure-aggregation", "dp-noise-multiplier", "dp-clip", "dp-unit",
                        "dp-user-rate", "dp-user-lr", "dp-delta", "target-epsilon", "client-state-dir",
                        "fraction-train", "init-banks"})


@dataclass(frozen=True)
class UserCurveOptions:
    """One `fedadapt privacy curve --unit user` invocation (defaults: the issue's MovieLens-1M protocol)."""

    out: Path
    data: Path | None
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, math.inf)  # inf: the no-DP point
    rounds: int = 10
    clients: int = 10  # silos (per-segment partition: region silos)
    rate: float = 0.1  # dp-user-rate q
    clip: float = 1.0  # dp-clip C: one user's whole update
    user_lr: float = 1.0  # dp-user-lr
    holdout: float = 0.2  # fraction of the users held out of every silo (the membership non-members)
    # fraction of the users whose data is public (e.g. users who opted in): the global bank is pre-trained on them
    # centrally, without DP, and every point's federation starts from it; they are neither members nor held out
    public: float = 0.0
    public_epochs: int = 20  # epochs of that central pre-training
    eval_users: int = 500  # evaluation users (members' held-out items) and users per side of membership inference
    max_users: int = 0  # 0: every user of the data; else a seeded sample of that many (before the holdout)
    seed: int = 0
    backbone: str = "minilm"
    arch: str = "seq"
    segments: str = "region,age_band"
    strategy: str = "fedavg"
    server_lr: float = 2.0
    secure: str = "segment"  # secure aggregation of every run (segment or segment-hidden)
    config: dict[str, Any] = field(default_factory=dict)  # further run-config keys (--set), never OWNED_KEYS

    def __post_init__(self) -> None:
        if self.data is None:
            raise ValueError("--unit user needs --data (a marketplace folder, e.g. the output of fedadapt data fetch)")
        if self.arch != "seq":
            raise ValueError(f"--unit user needs --arch seq (per-user updates of the seq model), "
                             f"got --arch {self.arch}")
        if not self.epsilons:
            raise ValueError("--epsilons needs at least one value")
        for eps in self.epsilons:
            if not eps > 0 or math.isnan(eps):
                raise ValueError(f"--epsilons: every value must be a positive number or inf (no DP), got {eps}")
        if len(set(self.epsilons)) != len(self.epsilons):
            raise ValueError(f"--epsilons lists a value twice: {list(self.epsilons)}")
        if not (0 < self.rate <= 1 and math.isfinite(self.rate)):
            raise ValueError(f"--dp-user-rate must be in (0, 1], got {self.rate}")
        if not (0 < self.holdout < 1):
            raise ValueError(f"--holdout-users must be a fraction in (0, 1), got {self.holdout}")
        if not (0 <= self.public < 1) or self.holdout + self.public >= 1:
            raise ValueError(f"--public-users must be a fraction in [0, 1) that leaves members beside "
                             f"--holdout-users {self.holdout:g}, got {self.public}")
        if self.public_epochs < 1:
            raise ValueError(f"--public-epochs must be >= 1, got {self.public_epochs}")
        for name, value in (("clip", self.clip), ("user-lr", self.user_lr), ("server-lr", self.server_lr)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--{name} must be a positive number, got {value}")
        for name in ("rounds", "eval_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.clients < 2:
            raise ValueError(f"--clients must be >= 2 (a secure sum needs several silos), got {self.clients}")
        if self.max_users < 0:
            raise ValueError(f"--max-users must be >= 0 (0: every user), got {self.max_users}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.secure not in ("segment", "segment-hidden"):
            raise ValueError(f"--secure-aggregation must be segment or segment-hidden under DP, got {self.secure!r}")
        owned = sorted(set(self.config) & OWNED_KEYS)
        if owned:
            raise ValueError(f"--set {owned[0]}: the curve sets this key itself (use its own flag)")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file, not a folder")

    @property
    def fed_backbone(self) -> str:
        return "" if self.backbone == "minilm" else self.backbone
