"""Honest clients' round-1 updates, computed by the client's own code, for the server-side inference attacks.

Segment and item inference ask what the server learns from what a client sends. So each client here is the
real thing: `common.federation.client_data` builds its shard (partitioned and anonymized on the client exactly
as in a federation) and `common.federation.task.local_train` trains the banks it receives from the run's
seeded starting state and returns the delta a train reply carries. Nothing goes through Flower: the message
content is the same, and the attacks need many clients' replies more than they need the transport.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.names import GLOBAL
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass
class ClientUpdate:
    """One client's train reply content and the ground truth an attacker would like to learn."""

    partition_id: int
    delta: Arrays  # "<bank>::<path>" -> trained - received, every bank the client trained
    segments: list[str]  # the client's segment banks, e.g. ["region=Europe", "season=holiday"]
    records: list[RecordLike]  # the users it trained on (anonymized records)
    bank_examples: dict[str, int]

    def bank_delta(self, bank: str = GLOBAL) -> Arrays:
        prefix = f"{bank}::"
        return {k: v for k, v in self.delta.items() if k.startswith(prefix)}


def client_updates(data_dir: Path, clients: int, seed: int, backbone: str, arch: str, partition_mode: str,
                   epochs: int = 1, batch_size: int | None = None, lr: float | None = None) -> list[ClientUpdate]:
    """Round-1 updates of every client of a `clients`-node federation over `data_dir` (one training each)."""
    from common.federation.client_data import client_data
    from common.federation.task import initial_state, local_train, train_records
    from common.protocol import FedConfig, RoundHParams

    values: dict[str, object] = {"data-dir": str(data_dir), "seed": seed, "backbone": backbone, "arch": arch,
                                 "partition-mode": partition_mode, "local-epochs": epochs,
                                 "client-state-dir": str(Path(data_dir) / ".fedadapt-clients")}
    if batch_size is not None:
        values["batch-size"] = batch_size
    if lr is not None:
        values["lr"] = lr
    cfg = FedConfig.from_run_config(values)
    hp = RoundHParams.from_run(cfg, 1)
    updates = []
    for pid in range(clients):
        try:
            data = client_data(cfg, pid, clients)
        except ValueError as exc:  # e.g. a shard too small for k-anonymity: such a node could not take part either
            log.info("client %d left out: %s", pid, exc)
            continue
        records = train_records(cfg, data)
        if not records:
            log.info("client %d has no user to train on; left out", pid)
            continue
        received = initial_state(cfg, data.adapter_names)
        result = local_train(cfg, data, received, hp)
        updates.append(ClientUpdate(pid, result.delta, list(data.segment_names), list(records),
                                    result.bank_examples))
    log.info("computed %d client updates (%s, %s partition)", len(updates), arch, partition_mode)
    return updates
