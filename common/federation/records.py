"""Adapter state <-> Flower records: the one module of `common/` that imports Flower.

Client and server both turn `{key: ndarray}` into an `ArrayRecord` and back, and both measure what a message
costs on the wire; defining that here keeps `client/` and `server/` from importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

Arrays = dict[str, np.ndarray]


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> Arrays:
    """The arrays of a record; raises whatever Flower's deserialization raises on corrupt bytes."""
    return {k: a.numpy() for k, a in record.items()}


def message_bytes(msg: Message) -> int:
    """Serialized size of a message: the sum of its deflated objects (what Flower puts on the wire)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
