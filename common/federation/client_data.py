"""A client's data: its shard of the marketplace, anonymized on the client, as user records.

Every node derives the same partitioning from the same data folder, seed and number of partitions, then
keeps only its own shard (`partition-id` from its node config). The shard is anonymized on the client
(common/data/anonymize.py) and turned into time-ordered leave-one-out user records. The pseudonym key is a
random secret the client draws once and keeps in its state folder (common/federation/client_secret.py:
`client-state-dir`, default `<data-dir>/.fedadapt-clients`), so the server cannot recompute it; pseudonyms
stay stable across rounds and resumed runs that reuse that folder. The users table is made k-anonymous with
k = FEDERATION_K over every user column, the configured segment keys kept (never generalised, still counted):
generalising a client's region to "other" would erase the segment it trains for. A user whose segment values
are shared by fewer than k users of the shard is left out of training.

The partitioning (common/data/partition.py) splits the users table for any node count, before any example
is built, so examples are only ever built from anonymized client tables. A deployed node that holds only its
own users (`own_data`: its node config names its own data folder, see client/app.py) skips the partitioning
and uses its whole folder; `fedadapt deploy` writes each node exactly the shard the partitioning gives it.

Caching (common/federation/cache.py): the partitioning of a data folder is computed once per worker process, each
client's anonymized records once per process as well (bounded LRU), so a worker serving many virtual
clients pays the data cost once per client, not once per message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from common.data.anonymize import AnonymizationConfig, anonymize_marketplace
from common.data.examples import ExampleConfig, build_examples, build_item_texts
from common.data.partition import partition_user_ids, shard_marketplace
from common.data.schema import Marketplace, read_marketplace
from common.federation.cache import ProcessCache
from common.federation.client_secret import client_secret, resolve_state_dir
from common.names import GLOBAL
from common.protocol import FedConfig, segment_adapter_names
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

WORLDS: ProcessCache[tuple[Marketplace, list[list[str]]]] = ProcessCache("partitions", maxsize=2)
CLIENTS: ProcessCache[ClientData] = ProcessCache("client-data", maxsize=128)
# Every combination of a user's column values in a client's users table is shared by >= k users of its shard.
# 5 is a common choice that a shard of a few dozen users meets with little loss (synthetic 2,000 users:
# per-segment shards drop nobody; 30 IID shards drop 59 niche-region users and generalise half the age bands).
FEDERATION_K = 5


@dataclass
class ClientData:
    """One client's records, the catalog texts, and the segment adapters its records are routed through."""

    partition_id: int
    records: list[RecordLike]
    item_texts: dict[str, str]
    segment_names: list[str]

    @property
    def adapter_names(self) -> list[str]:
        return [GLOBAL, *self.segment_names]

    def train_records(self, limit: int = 0) -> list[RecordLike]:
        usable = [r for r in self.records if r.train_pairs]
        return usable[:limit] if limit else usable

    def eval_records(self, limit: int = 0) -> list[RecordLike]:
        return self.records[:limit] if limit else list(self.records)


def client_key(cfg: FedConfig, partition_id: int) -> bytes:
    """The client's pseudonymization key: its own random secret, never sent (see the module docstring)."""
    return client_secret(resolve_state_dir(cfg.client_state_dir, cfg.data_dir), partition_id)


def client_anonymization(cfg: FedConfig, partition_id: int, user_columns: Sequence[str]) -> AnonymizationConfig:
    """How a client anonymizes its shard: its own key, k = FEDERATION_K, the segment keys kept."""
    keep = tuple(c for c in cfg.segment_key_tuple if c in user_columns)
    return AnonymizationConfig(key=client_key(cfg, partition_id), k=FEDERATION_K, keep_columns=keep)


def record_segment_names(records: Sequence[RecordLike], keys: tuple[str, ...]) -> list[str]:
    """Every segment adapter the records route through: the user's segments and each training pair's.

    Segments such as the season belong to an interaction, not to a user, so one client may need several
    season adapters; the server sends it each of them and aggregates each with its own cohort.
    """
    names: set[str] = set()
    for rec in records:
        for segs in (rec.segments, *rec.train_segments, getattr(rec, "valid_segments", {})):
            names.update(segment_adapter_names(segs, keys))
    return sorted(names)


def _world(cfg: FedConfig, num_partitions: int) -> tuple[Marketplace, list[list[str]]]:
    """The marketplace and the user ids of every partition, identical on every node for the same inputs."""

    def build() -> tuple[Marketplace, list[list[str]]]:
        market = read_marketplace(cfg.data_dir)
        return market, partition_user_ids(market, num_partitions, cfg.partition_mode, cfg.seed)

    return WORLDS.get((cfg.data_dir, num_partitions, cfg.partition_mode, cfg.seed), build)


def _build_client(cfg: FedConfig, partition_id: int, num_partitions: int, own_data: bool) -> ClientData:
    if own_data:
        raw = read_marketplace(cfg.data_dir)
    else:
        market, shards = _world(cfg, num_partitions)
        raw = shard_marketplace(market, shards[partition_id])
    local = anonymize_marketplace(raw, client_anonymization(cfg, partition_id, list(raw.users.columns)))
    records = build_examples(local, ExampleConfig(seed=cfg.seed, history=cfg.history))
    return ClientData(partition_id, list(records), build_item_texts(local.products),
                      record_segment_names(records, cfg.adapter_segment_keys))


def client_data(cfg: FedConfig, partition_id: int, num_partitions: int, own_data: bool = False) -> ClientData:
    """This client's data, built once per process and partition; with `own_data` the data folder holds only
    this client's users (no partitioning)."""
    if not cfg.data_dir:
        raise ValueError("run config data-dir is empty; every client needs the marketplace folder")
    return CLIENTS.get(cache_key(cfg, partition_id, num_partitions, own_data),
                       lambda: _build_client(cfg, partition_id, num_partitions, own_data))


def cache_key(cfg: FedConfig, partition_id: int, num_partitions: int, own_data: bool = False) -> tuple[object, ...]:
    """What a client's data depends on; another state folder means another secret, hence other pseudonyms."""
    return (cfg.data_dir, num_partitions, cfg.partition_mode, cfg.seed, cfg.segment_keys, cfg.adapter_segment_keys,
            cfg.client_state_dir, cfg.history, partition_id, own_data)
