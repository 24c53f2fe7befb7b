"""Partitioning: per-user, per-segment and Dirichlet shards that cover every user once and know their segments."""

from __future__ import annotations

import pytest

from common.data.examples import UserRecord
from common.data.partition import PartitionConfig, partition

REGIONS = ["Europe"] * 40 + ["North America"] * 40 + ["Asia-Pacific"] * 20


def records() -> list[UserRecord]:
    return [UserRecord(user_id=f"anon-{i}", segments={"region": reg, "season": "holiday" if i % 3 else "regular"},
                       context_text="ctx", train_pairs=[("ctx", "p1")] * (1 + i % 2), valid_item="p2",
                       test_item="p3", valid_negatives=[], test_negatives=[]) for i, reg in enumerate(REGIONS)]


def covered(shards: list) -> list[str]:  # type: ignore[type-arg]
    return sorted(u.user_id for s in shards for u in s.users)


def test_per_user() -> None:
    """One client per user, carrying that user's segments."""
    shards = partition(records(), PartitionConfig(mode="per-user"))
    assert len(shards) == 100 and all(len(s.users) == 1 for s in shards)
    assert shards[0].segments == {"region": "Europe", "season": "regular"}
    assert covered(shards) == sorted(r.user_id for r in records())


def test_per_segment_silos() -> None:
    """One silo per value combination; every user in a silo shares the silo's values."""
    shards = partition(records(), PartitionConfig(mode="per-segment", segment_keys=("region", "season")))
    assert len(shards) == 6
    for s in shards:
        assert all({k: u.segments[k] for k in s.segments} == s.segments for u in s.users)
    assert {s.client_id for s in shards} >= {"silo-europe-holiday", "silo-asia-pacific-regular"}
    assert sum(s.num_examples for s in shards) == sum(len(r.train_pairs) for r in records())


def test_dirichlet_is_skewed_seeded_and_complete() -> None:
    """Small alpha gives clients dominated by one region; same seed same split; nobody lost or duplicated."""
    cfg = PartitionConfig(mode="dirichlet", num_clients=5, alpha=0.1, min_users=2, seed=3)
    a, b = partition(records(), cfg), partition(records(), cfg)
    assert [[u.user_id for u in s.users] for s in a] == [[u.user_id for u in s.users] for s in b]
    assert covered(a) == sorted(r.user_id for r in records())
    assert all(len(s.users) >= 2 and set(s.segments) == {"region"} for s in a)
    purity = [max(sum(u.segments["region"] == r for u in s.users) for r in set(REGIONS)) / len(s.users) for s in a]
    assert sum(purity) / len(purity) > 0.7


def test_errors_name_the_problem() -> None:
    """Unknown modes, missing segment keys and impossible splits fail with a clear message."""
    with pytest.raises(ValueError, match="mode"):
        PartitionConfig(mode="random")
    with pytest.raises(ValueError, match="'device'"):
        partition(records(), PartitionConfig(mode="per-segment", segment_keys=("device",)))
    with pytest.raises(ValueError, match="cannot give"):
        partition(records(), PartitionConfig(mode="dirichlet", num_clients=60, min_users=2))
