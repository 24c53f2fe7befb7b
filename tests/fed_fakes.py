"""Small hand-made client data for federation tests that must not depend on the data pipeline."""

from __future__ import annotations

import numpy as np
from flwr.supercore.task_identity import TaskIdentity

from common.federation.client_data import CLIENTS, ClientData, cache_key, record_segment_names
from common.protocol import FedConfig
from tests.rec_fixtures import FakeRecord

WORDS = ["red", "blue", "green", "shoe", "lamp", "desk", "phone", "case", "tent", "bike", "cup", "pan"]


def fake_client_data(partition_id: int, segments: dict[str, str], users: int = 6, items: int = 24,
                     seed: int = 0, keys: tuple[str, ...] = ("region", "season")) -> ClientData:
    """A few users with text contexts, positives and 9 sampled negatives each."""
    rng = np.random.default_rng(seed + partition_id)
    item_texts = {f"p{i:03d}": " ".join(rng.choice(WORDS, size=4)) for i in range(items)}
    ids = sorted(item_texts)
    records = []
    for u in range(users):
        chosen = [str(x) for x in rng.choice(ids, size=14, replace=False)]
        context = " ".join(item_texts[i] for i in chosen[:3])
        records.append(FakeRecord(
            user_id=f"u{partition_id}-{u}", segments=dict(segments), context_text=context,
            train_pairs=[(context, i) for i in chosen[:3]], train_segments=[dict(segments)] * 3,
            valid_item=chosen[3], test_item=chosen[4], valid_negatives=chosen[5:14], test_negatives=chosen[5:14],
            valid_context_text=context, valid_segments=dict(segments)))
    return ClientData(partition_id, list(records), item_texts, record_segment_names(records, keys))


def install_fake(cfg: FedConfig, partition_id: int, num_partitions: int, data: ClientData) -> None:
    """Put `data` into the per-process client-data cache under the key `client_data` looks up."""
    CLIENTS.get(cache_key(cfg, partition_id, num_partitions), lambda: data)


def set_task_identity() -> None:
    """Messages need a run/node/task identity; Flower sets it inside a run, tests set it here."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
