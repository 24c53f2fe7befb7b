"""What the server knows about each node, and how it draws cohorts from them.

A node tells the server its partition id, segment adapter names and example counts once, in its
registration reply (server/validate.py checks it). The counts are the ceiling for every later reply: a
train reply may not weigh more in a bank than the training pairs the node registered for that bank, and an
evaluation reply may not report more users than it registered.

Cohorts are drawn from rng(seed, round, salt) over partition ids (not node ids, which change per run), so a
resumed run draws the same cohorts as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.names import GLOBAL


@dataclass(frozen=True)
class ClientInfo:
    """A registered node: its partition, the segment adapters it trains, and its registered counts."""

    node_id: int
    partition_id: int
    segments: tuple[str, ...]
    bank_examples: Mapping[str, int] = field(default_factory=dict)  # training pairs per bank
    eval_users: int = 0

    @property
    def adapter_names(self) -> list[str]:
        return [GLOBAL, *self.segments]

    @property
    def num_examples(self) -> int:
        """Training pairs in all (every pair passes through the global adapter)."""
        return int(self.bank_examples.get(GLOBAL, 0))


def sample_clients(clients: list[ClientInfo], fraction: float, seed: int, server_round: int, salt: int = 0
                   ) -> list[ClientInfo]:
    """A deterministic cohort: ceil(fraction * N) clients (at least one) drawn from rng(seed, round, salt)."""
    if not clients:
        return []
    ordered = sorted(clients, key=lambda c: c.partition_id)
    k = min(len(ordered), max(1, int(np.ceil(fraction * len(ordered) - 1e-9))))
    rng = np.random.default_rng([seed, server_round, salt])
    picked = sorted(rng.choice(len(ordered), size=k, replace=False).tolist())
    return [ordered[i] for i in picked]
