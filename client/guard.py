"""The last check before a reply leaves a client: adapter tensors of the names it was sent, nothing else.

The backbone must never leave the client: it is large, and in a real deployment it may be a licensed or
locally fine-tuned model. A bug that puts a backbone tensor (or another client's adapter) into the reply
would leak it silently, because Flower serializes whatever the RecordDict holds. So every outgoing message
passes `check_outgoing`, which raises `OutgoingMessageError` (and the handler sends an error reply instead)
unless:

- the content holds only the records "arrays", "metrics", "config";
- every array key is one of the keys the server sent in this round's message (adapter tensors of the
  client's own global + segment adapters), never a backbone-looking key;
- each array has the shape it was sent with;
- metrics and config hold scalars only (the types Flower allows there), so no tensor hides in them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.protocol import REPLY_RECORDS, looks_like_backbone


class OutgoingMessageError(RuntimeError):
    """A reply that would send something other than the client's own adapter tensors."""


def check_outgoing(content: RecordDict, sent: Mapping[str, tuple[int, ...]]) -> None:
    """Raise OutgoingMessageError unless `content` only holds adapter tensors among `sent` (key -> shape)."""
    unknown_records = sorted(set(content.keys()) - REPLY_RECORDS)
    if unknown_records:
        raise OutgoingMessageError(f"reply has unexpected records {unknown_records}")
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                if looks_like_backbone(key):
                    raise OutgoingMessageError(f"refusing to send backbone tensor {key!r}")
                if key not in sent:
                    raise OutgoingMessageError(f"refusing to send {key!r}: not an adapter tensor it was sent")
                if tuple(array.shape) != tuple(sent[key]):
                    raise OutgoingMessageError(f"{key}: shape {tuple(array.shape)} differs from sent {sent[key]}")
        elif isinstance(record, MetricRecord | ConfigRecord):
            for key, value in record.items():
                if isinstance(value, bytes | np.ndarray) or (isinstance(value, list) and len(value) > 64):
                    raise OutgoingMessageError(f"record {name!r} key {key!r} holds a non-scalar payload")
        else:
            raise OutgoingMessageError(f"record {name!r} has unexpected type {type(record).__name__}")
