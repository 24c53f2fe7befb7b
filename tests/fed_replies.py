"""Hand-made client replies for server tests: what an honest ClientApp sends, built without a grid."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.names import GLOBAL
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_METRICS,
    EVAL_USERS,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SEGMENTS,
    TRAIN_LOSS,
    bank_examples_key,
    metric_key,
)
from server.clients import ClientInfo


def client(node: int, pid: int, segments: tuple[str, ...] = (), examples: int = 100, eval_users: int = 10
           ) -> ClientInfo:
    """A registered client with `examples` training pairs in every bank it holds."""
    return ClientInfo(node, pid, segments, {b: examples for b in (GLOBAL, *segments)}, eval_users)


def train_reply(msg: Message, delta: Mapping[str, np.ndarray], counts: Mapping[str, int], loss: float = 1.0
                ) -> Message:
    """An honest train reply: the delta, num-examples = the global count, one count per bank."""
    metrics: dict[str, int | float] = {NUM_EXAMPLES: counts[GLOBAL], TRAIN_LOSS: loss}
    metrics.update({bank_examples_key(b): n for b, n in counts.items()})
    content = RecordDict({ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in delta.items()}),
                          METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=msg)


def eval_sums(rows: Mapping[str, tuple[float, float]], users: float) -> dict[str, float]:
    """Per-segment sums: rows[segment] = (users, mean of every metric); "overall" counts `users`."""
    sums = {EVAL_USERS: users}
    for seg, (n, mean) in rows.items():
        sums[metric_key(seg, "users")] = n
        sums.update({metric_key(seg, name): mean * n for name in EVAL_METRICS})
    return sums


def eval_reply(msg: Message, sums: Mapping[str, float]) -> Message:
    return Message(RecordDict({METRICS: MetricRecord(dict(sums))}), reply_to=msg)


def registration_reply(msg: Message, pid: int, segments: list[str], counts: Mapping[str, int], eval_users: int
                       ) -> Message:
    config = {PARTITION_ID: pid, SEGMENTS: segments, EVAL_USERS: eval_users,
              **{bank_examples_key(b): n for b, n in counts.items()}}
    return Message(RecordDict({CONFIG: ConfigRecord(config)}), reply_to=msg)


def force_set(record: object, key: str, value: object) -> None:
    """Put a value into a record without Flower's type checks: what a hostile peer that bypasses its own
    client library could deliver."""
    record.__dict__["_data"][key] = value
