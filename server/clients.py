"""What the server knows about each node, and how it draws cohorts from them.

A node tells the server its partition id, segment adapter names and example counts once, in its
registration reply, the first time the server samples it (server/registration.py; server/validate.py checks
it). The counts are the ceiling for every later reply: a train reply may not weigh more in a bank than the
training pairs the node registered for that bank, and an evaluation reply may not report more users than it
registered.

Cohorts are drawn from rng(seed, round, salt) over the sorted node ids the grid reports (`grid.get_node_ids()`):
the server samples before it knows who a node is, which is what lets it register only the sampled nodes.
Reproducibility: the same node ids give the same cohorts, so a resumed run replays the same rounds as long as
the nodes keep their ids (SuperNodes that stay connected to the same SuperLink). Otherwise node ids are
assigned per run (every simulation draws new ones) and a resumed run draws other cohorts of the same size;
with fraction 1 every node is sampled and a resume replays the run exactly. (Before, cohorts were drawn over
partition ids, which needed every node's registration first.) Replies are still aggregated in partition-id
order (server/strategy.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


def sample_nodes(nodes: Iterable[int], fraction: float, seed: int, server_round: int, salt: int = 0) -> list[int]:
    """A deterministic cohort of node ids, sorted: ceil(fraction * N) of them (at least one) drawn from
    rng(seed, round, salt) over the sorted ids."""
    ordered = sorted(set(nodes))
    if not ordered:
        return []
    k = min(len(ordered), max(1, int(np.ceil(fraction * len(ordered) - 1e-9))))
    rng = np.random.default_rng([seed, server_round, salt])
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=k, replace=False).tolist())]
