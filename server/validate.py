"""Reply validation: every client reply is checked before it can touch an adapter bank.

A federated server must assume some replies are broken (a bug, a stale client) or hostile (a poisoning
attempt, a client that tries to smuggle backbone weights back). One bad reply must not poison a bank or stop
a round, so `validate_reply` returns the reason instead of raising; the strategy drops the reply, counts the
reason in the round's metrics and aggregates the rest.

Checks, in order (the first failure is the reason reported):
- num-examples is a positive finite number (it is the aggregation weight);
- backbone-key: a key that looks like a backbone tensor ("encoder.layer.0...", "embeddings...") - never
  accepted, whatever else the reply holds;
- unexpected-key: a key the server did not send to this client;
- missing-key: a key the server sent but the reply lacks (a partial delta would bias the mean);
- dtype: not the floating dtype that was sent;
- shape: not the shape that was sent;
- non-finite: NaN or inf anywhere;
- norm: the L2 norm of the whole delta above `max_norm` (a crude but effective bound on one client's pull).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.protocol import looks_like_backbone

REASONS = (
    "num-examples",
    "backbone-key",
    "unexpected-key",
    "missing-key",
    "dtype",
    "shape",
    "non-finite",
    "norm",
)

@dataclass(frozen=True)
class ValidationConfig:
    """max_norm: bound on the L2 norm of one client's whole delta; generous by default, since a round's
    delta scales with lr x steps, but finite so that one client cannot drag a bank arbitrarily far."""

    max_norm: float = 100.0

    def __post_init__(self) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be a positive finite number, got {self.max_norm}")


@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def validate_reply(
    delta: Mapping[str, np.ndarray],
    sent: Mapping[str, np.ndarray],
    num_examples: float,
    config: ValidationConfig,
) -> Rejection | None:
    """None if the reply may be aggregated, else the first reason it may not."""
    if not (isinstance(num_examples, int | float) and math.isfinite(num_examples) and num_examples > 0):
        return Rejection("num-examples", f"num-examples must be a positive number, got {num_examples!r}")
    backbone = sorted(k for k in delta if looks_like_backbone(k))
    if backbone:
        return Rejection("backbone-key", f"{len(backbone)} backbone-looking key(s), e.g. {backbone[0]!r}")
    unexpected = sorted(set(delta) - set(sent))
    if unexpected:
        return Rejection("unexpected-key", f"{len(unexpected)} key(s) not sent, e.g. {unexpected[0]!r}")
    missing = sorted(set(sent) - set(delta))
    if missing:
        return Rejection("missing-key", f"{len(missing)} sent key(s) missing, e.g. {missing[0]!r}")
    sq = 0.0
    for key, value in delta.items():
        ref = sent[key]
        arr = np.asarray(value)
        if arr.dtype != np.asarray(ref).dtype:
            return Rejection("dtype", f"{key}: dtype {arr.dtype}, expected {np.asarray(ref).dtype}")
        if arr.shape != np.shape(ref):
            return Rejection("shape", f"{key}: shape {arr.shape}, expected {np.shape(ref)}")
        if not np.all(np.isfinite(arr)):
            return Rejection("non-finite", f"{key}: NaN or inf values")
        sq += float(np.sum(np.square(arr, dtype=np.float64)))
    norm = math.sqrt(sq)
    if norm > config.max_norm:
        return Rejection("norm", f"delta L2 norm {norm:.3g} > bound {config.max_norm:.3g}")
    return None
