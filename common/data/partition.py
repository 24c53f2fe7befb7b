"""Split user records into federated clients: per user (cross-device), per segment (cross-silo), Dirichlet.

Every shard carries `segments`, the segment values the client declares (the keys its adapters are routed by):
- per-user: the user's own segments (region, season of the test interaction, ...);
- per-segment: the silo's values for `segment_keys` (e.g. one hospital-like silo per region);
- dirichlet: each segment group's users are spread over clients with Dir(alpha) proportions (small alpha:
  clients dominated by one segment; large alpha: near IID); a client declares its majority values.
Records keep their own `segments`, so per-example routing stays exact inside mixed clients.
flwr-datasets is not a dependency: its partitioners work on HF Datasets and label columns, while ours split
user records by a tuple of segment values; the Dirichlet split is a dozen numpy lines.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from common.data.examples import UserRecord

log = logging.getLogger(__name__)
MODES: tuple[str, ...] = ("per-user", "per-segment", "dirichlet")


@dataclass
class ClientShard:
    client_id: str
    segments: dict[str, str]
    users: list[UserRecord] = field(default_factory=list)

    @property
    def num_examples(self) -> int:
        return sum(len(u.train_pairs) for u in self.users)


@dataclass(frozen=True)
class PartitionConfig:
    mode: str = "per-user"
    segment_keys: tuple[str, ...] = ("region",)
    num_clients: int = 10  # dirichlet only
    alpha: float = 0.5  # dirichlet only
    min_users: int = 1  # dirichlet: resample until every client has this many users
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.num_clients < 1 or self.alpha <= 0 or self.min_users < 0:
            raise ValueError(f"need num_clients >= 1, alpha > 0, min_users >= 0; got {self.num_clients}, "
                             f"{self.alpha}, {self.min_users}")
        if not self.segment_keys:
            raise ValueError("segment_keys must name at least one segment key")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _key(record: UserRecord, keys: tuple[str, ...]) -> tuple[str, ...]:
    missing = [k for k in keys if k not in record.segments]
    if missing:
        raise ValueError(f"user {record.user_id} has no segment {missing[0]!r} (has {sorted(record.segments)})")
    return tuple(record.segments[k] for k in keys)


def _dirichlet(records: list[UserRecord], cfg: PartitionConfig) -> list[ClientShard]:
    if len(records) < cfg.num_clients * cfg.min_users:
        raise ValueError(f"{len(records)} users cannot give {cfg.num_clients} clients {cfg.min_users} users each")
    rng = np.random.default_rng(cfg.seed)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(_key(r, cfg.segment_keys), []).append(i)
    for _attempt in range(100):
        assignment = [[] for _ in range(cfg.num_clients)]  # type: list[list[int]]
        for key in sorted(groups):
            members = rng.permutation(groups[key])
            shares = rng.dirichlet(np.full(cfg.num_clients, cfg.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, part in enumerate(np.split(members, cuts)):
                assignment[client].extend(int(i) for i in part)
        if min(len(a) for a in assignment) >= cfg.min_users:
            break
    else:
        raise ValueError(f"no Dirichlet split with >= {cfg.min_users} users per client after 100 draws "
                         f"(alpha={cfg.alpha}); lower min_users or raise alpha")
    shards = []
    for c, idx in enumerate(assignment):
        users = [records[i] for i in sorted(idx)]
        top = Counter(_key(u, cfg.segment_keys) for u in users).most_common(1)
        segments = dict(zip(cfg.segment_keys, top[0][0], strict=True)) if top else {}
        shards.append(ClientShard(f"client-{c:04d}", segments, users))
    return shards


def partition(records: list[UserRecord], cfg: PartitionConfig | None = None) -> list[ClientShard]:
    """Clients for the records (in a deterministic order); each shard knows its segment values."""
    cfg = cfg or PartitionConfig()
    if not records:
        raise ValueError("no user records to partition")
    if cfg.mode == "per-user":
        shards = [ClientShard(f"user-{i:06d}", dict(r.segments), [r]) for i, r in enumerate(records)]
    elif cfg.mode == "per-segment":
        silos: dict[tuple[str, ...], list[UserRecord]] = {}
        for r in records:
            silos.setdefault(_key(r, cfg.segment_keys), []).append(r)
        shards = [ClientShard("silo-" + _slug("-".join(k)), dict(zip(cfg.segment_keys, k, strict=True)), users)
                  for k, users in sorted(silos.items())]
    else:
        shards = _dirichlet(records, cfg)
    log.info("partitioned %d users into %d clients (%s)", len(records), len(shards), cfg.mode)
    return shards
