"""Split a marketplace's users into federated clients: the one partitioner, used by every client.

A Flower federation has a given number of nodes, so the split takes the node count and returns that many
disjoint, non-empty shards of user ids (per-segment silos or IID), computed from the users table alone so
that every node derives the same split from the same data folder and seed, before any example is built.
flwr-datasets is not a dependency: its partitioners work on HF Datasets and label columns, while ours split
a users table by a segment column; the split is a dozen numpy lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.schema import Marketplace
from common.names import IID, PARTITION_MODES


def partition_user_ids(market: Marketplace, num_partitions: int, mode: str, seed: int,
                       segment_key: str = "region") -> list[list[str]]:
    """Split the users into `num_partitions` disjoint, non-empty shards.

    per-segment (cross-silo): clients are allotted to the values of `segment_key` in proportion to their
    users (each value with users gets at least one client while clients last) and a value's users are split
    among its clients, so a client holds one region's users. iid: a seeded shuffle dealt round-robin.
    """
    if mode not in PARTITION_MODES:
        raise ValueError(f"partition-mode {mode!r} is not one of {', '.join(PARTITION_MODES)}")
    users_df = market.users.sort_values("user_id")
    if num_partitions > len(users_df):
        raise ValueError(f"{num_partitions} partitions but only {len(users_df)} users in the data")
    rng = np.random.default_rng(seed)
    if mode == IID or segment_key not in users_df.columns:
        users = [str(u) for u in users_df["user_id"]]
        order = rng.permutation(len(users))
        return [[users[i] for i in order[p::num_partitions]] for p in range(num_partitions)]
    groups = {str(k): [str(u) for u in g["user_id"]] for k, g in users_df.groupby(segment_key, sort=True)}
    sizes = {k: len(v) for k, v in groups.items()}
    by_size = sorted(groups, key=lambda g: (-sizes[g], g))
    alloc = {k: int(i < num_partitions) for i, k in enumerate(by_size)}
    for _ in range(num_partitions - sum(alloc.values())):  # then the most users per client first
        k = max(groups, key=lambda g: (sizes[g] / (alloc[g] + 1) if alloc[g] < sizes[g] else -1, g))
        alloc[k] += 1
    shards: list[list[str]] = []
    for k in sorted(g for g in groups if alloc[g]):
        members = [groups[k][i] for i in rng.permutation(len(groups[k]))]
        shards.extend(members[j::alloc[k]] for j in range(alloc[k]))
    return [s for s in shards if s]


def shard_marketplace(market: Marketplace, user_ids: Sequence[str]) -> Marketplace:
    """The client's own rows: its users, their events and reviews; the public catalog in full."""
    keep = set(user_ids)
    return Marketplace(
        reviews=market.reviews[market.reviews["user_id"].isin(keep)].reset_index(drop=True),
        products=market.products,
        clicks=market.clicks[market.clicks["user_id"].isin(keep)].reset_index(drop=True),
        users=market.users[market.users["user_id"].isin(keep)].reset_index(drop=True),
    )
