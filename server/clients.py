"""What the server knows about each node, and how it draws cohorts from them.

A node tells the server its partition id, segment adapter names and example counts once, in its
registration reply, the first time the server samples it (server/registration.py; server/validate.py checks
it). The counts are the ceiling for every later reply: a train reply may not weigh more in a bank than the
training pairs the node registered for that bank, and an evaluation reply may not report more users than it
registered.

Cohorts are drawn over the sorted node ids the grid reports (`grid.get_node_ids()`): the server samples before
it knows who a node is, which is what lets it register only the sampled nodes.

Without DP they come from rng(seed, round, salt). Reproducibility: the same node ids give the same cohorts, so a
resumed run replays the same rounds as long as the nodes keep their ids (SuperNodes that stay connected to the
same SuperLink). Otherwise node ids are assigned per run (every simulation draws new ones) and a resumed run
draws other cohorts of the same size; with fraction 1 every node is sampled and a resume replays the run
exactly. (Before, cohorts were drawn over partition ids, which needed every node's registration first.)
Replies are still aggregated in partition-id order (server/strategy.py).

With DP the training cohorts come from OS entropy instead (`sample_nodes(..., private=True)`, Python's
`secrets.SystemRandom`). The accountant's subsampling amplification holds only if who is sampled is secret: a
cohort drawn from the run seed, which the server and every client know, is public, and each sampled client's
epsilon is then that of the un-amplified Gaussian mechanism composed over the rounds it was in (issue 23,
leak 4: 10 of 100 clients, sigma 1.5, 50 rounds, delta 1e-5 reported epsilon 15.7, while a client sampled in
the expected 5 rounds had 18.1 and one sampled in every round 99.0, common/privacy/accountant.py). A DP run is
therefore not replayable cohort-for-cohort; the server records each round's cohort (partition ids) in its
checkpoint instead (server/app.py), so a resumed run keeps the full record and never redraws a finished round.
"""

from __future__ import annotations

import secrets
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


def cohort_size(nodes: int, fraction: float) -> int:
    """ceil(fraction * nodes), at least one and at most all of them (0 for no nodes)."""
    if nodes <= 0:
        return 0
    return min(nodes, max(1, int(np.ceil(fraction * nodes - 1e-9))))


def sample_nodes(nodes: Iterable[int], fraction: float, seed: int, server_round: int, salt: int = 0,
                 private: bool = False) -> list[int]:
    """A cohort of node ids, sorted: `cohort_size` of them drawn over the sorted ids, from rng(seed, round,
    salt) (deterministic), or with `private` from OS entropy (secret even to whoever knows the seed: DP)."""
    ordered = sorted(set(nodes))
    k = cohort_size(len(ordered), fraction)
    if not k:
        return []
    if private:
        return sorted(secrets.SystemRandom().sample(ordered, k))
    rng = np.random.default_rng([seed, server_round, salt])
    return [ordered[i] for i in sorted(rng.choice(len(ordered), size=k, replace=False).tolist())]
