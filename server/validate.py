"""Validation of every client reply (registration, train, evaluate), in one place.

Every client is untrusted: a reply may be broken (a bug, a stale client) or hostile (poisoning, a forged
metric, a reply that smuggles backbone weights back). One bad reply must neither stop a round nor move a
bank, so each parser either returns the typed content or raises `Rejected(reason, detail)`; the strategy
counts the reason in the round's metrics and goes on with the rest. Nothing here trusts Flower's own
deserialization either: array bytes are decoded only after their header matches what was sent.

Rejection reasons (`REASONS`):
- any reply: unknown-sender (a node that was not asked), duplicate-sender (a node that answered twice: all
  its replies go), malformed (missing or unexpected records and keys, wrong value types);
- registration: partition-id (not a non-negative int, or claimed by two nodes), segment-name (not
  "<configured key>=<safe value>"), counts (example counts that are not ints in [0, max-client-examples]);
- train: num-examples (per-bank counts missing, not ints, or above what the node registered for that bank:
  a bank is weighted by the client's examples in that bank, never more than it registered),
  metrics (a non-finite or negative loss, an unknown metric), backbone-key, unexpected-key, missing-key,
  corrupt-array (bytes that do not decode to the declared array), dtype, shape, non-finite,
  norm (the L2 norm of the whole delta above `max_norm`: bounds one client's pull on a bank);
- evaluate: eval-metrics (unknown segment or metric, non-finite or out-of-range sums, more users than
  registered; every per-user metric lies in [0, 1], so a segment's sum lies in [0, users]).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID

from common.names import GLOBAL, OVERALL, bank_of
from common.protocol import (
    ARRAYS,
    BANK_EXAMPLES_PREFIX,
    CONFIG,
    EVAL_METRICS,
    EVAL_USERS,
    METRICS,
    NUM_EXAMPLES,
    PARTITION_ID,
    SEGMENTS,
    TRAIN_LOSS,
    bank_examples_key,
    check_segment_name,
    looks_like_backbone,
    parse_metric_key,
)
from server.clients import ClientInfo

Arrays = dict[str, np.ndarray]

REASONS = (
    "unknown-sender", "duplicate-sender", "malformed",
    "partition-id", "segment-name", "counts",
    "num-examples", "metrics", "backbone-key", "unexpected-key", "missing-key", "corrupt-array", "dtype", "shape",
    "non-finite", "norm",
    "eval-metrics",
)
TRAIN_METRICS = frozenset({NUM_EXAMPLES, TRAIN_LOSS, "train-steps", "train-seconds"})
MAX_SEGMENTS = 256  # segment adapters one client may register
_NPY_HEADER_MAX = 4096  # bytes a .npy header may take beyond the array's own bytes


@dataclass(frozen=True)
class ValidationConfig:
    """max_norm: bound on the L2 norm of one client's whole delta (finite, so one client cannot drag a bank
    arbitrarily far); adapter_keys: the segment keys with their own adapters; metric_keys: the segment keys
    metrics are reported by; max_client_examples: the most pairs or users one node may register."""

    max_norm: float = 100.0
    adapter_keys: tuple[str, ...] = ()
    metric_keys: tuple[str, ...] = ()
    max_client_examples: int = 1_000_000

    def __post_init__(self) -> None:
        if not (self.max_norm > 0 and math.isfinite(self.max_norm)):
            raise ValueError(f"max_norm must be a positive finite number, got {self.max_norm}")
        if self.max_client_examples < 1:
            raise ValueError(f"max_client_examples must be >= 1, got {self.max_client_examples}")


class Rejected(Exception):
    """A reply that may not be used; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TrainUpdate:
    """An accepted train reply: the delta and, per bank it trained, its weight (training pairs in that bank)."""

    partition_id: int
    delta: Arrays
    bank_weights: dict[str, int]
    loss: float


def screen_senders(replies: Iterable[Message], expected: Collection[int]
                   ) -> tuple[dict[int, Message], Counter[str], set[int]]:
    """(the one reply of each expected node, rejection counts, the expected nodes that answered at all).

    Replies from nodes not asked, and every reply of a node that answered more than once, are rejected. An error
    the runtime itself sends for a node that went offline (source: the SuperLink) counts as no answer."""
    by_node: dict[int, list[Message]] = {}
    reasons: Counter[str] = Counter()
    for msg in replies:
        node = msg.metadata.src_node_id
        if node == SUPERLINK_NODE_ID and msg.has_error():
            continue  # the runtime's "node unavailable / reply expired": the addressed node did not answer
        if node not in expected:
            reasons["unknown-sender"] += 1
        else:
            by_node.setdefault(node, []).append(msg)
    single = {}
    for node, msgs in by_node.items():
        if len(msgs) == 1:
            single[node] = msgs[0]
        else:
            reasons["duplicate-sender"] += len(msgs)
    return single, reasons, set(by_node)


def _record(msg: Message, name: str, kind: type, allowed: Collection[str]) -> object:
    content = msg.content
    extra = sorted(set(content.keys()) - set(allowed))
    if extra:
        raise Rejected("malformed", f"unexpected records {extra[:3]}")
    if name not in content.keys() or not isinstance(content[name], kind):
        raise Rejected("malformed", f"no {kind.__name__} {name!r}")
    return content[name]


def _count(value: object, what: str, upper: float, reason: str) -> int:
    """An int in [0, upper]; bools, floats and anything else are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= upper:
        raise Rejected(reason, f"{what}={value!r} is not an int in [0, {upper:g}]")
    return value


def parse_registration(msg: Message, cfg: ValidationConfig) -> ClientInfo:
    """A node's registration reply as ClientInfo (uniqueness of partition ids is the caller's check)."""
    record = _record(msg, CONFIG, ConfigRecord, (CONFIG,))
    assert isinstance(record, ConfigRecord)
    pid = _count(record.get(PARTITION_ID), PARTITION_ID, 2**31 - 1, "partition-id")
    segments = record.get(SEGMENTS, [])
    if not isinstance(segments, list) or len(segments) > MAX_SEGMENTS:
        raise Rejected("malformed", f"{SEGMENTS} must be a list of at most {MAX_SEGMENTS} names")
    try:
        names = tuple(check_segment_name(s, cfg.adapter_keys) for s in segments)
    except ValueError as exc:
        raise Rejected("segment-name", str(exc)) from None
    if len(set(names)) != len(names):
        raise Rejected("segment-name", "a segment is listed twice")
    expected = {PARTITION_ID, SEGMENTS, EVAL_USERS, *(bank_examples_key(b) for b in (GLOBAL, *names))}
    extra = sorted(set(record) - expected)
    missing = sorted(expected - set(record) - {SEGMENTS})
    if extra or missing:
        raise Rejected("malformed", f"registration keys: unexpected {extra[:3]}, missing {missing[:3]}")
    bank_examples = {b: _count(record[bank_examples_key(b)], bank_examples_key(b), cfg.max_client_examples, "counts")
                     for b in (GLOBAL, *names)}
    if any(n > bank_examples[GLOBAL] for n in bank_examples.values()):
        raise Rejected("counts", "a segment bank claims more pairs than the global bank (every pair passes it)")
    eval_users = _count(record[EVAL_USERS], EVAL_USERS, cfg.max_client_examples, "counts")
    return ClientInfo(msg.metadata.src_node_id, pid, names, bank_examples, eval_users)


def decode_array(array: object, key: str, ref: np.ndarray) -> np.ndarray:
    """The array's values, checked against the sent `ref` before any bytes are trusted.

    The declared dtype and shape must be the sent ones, and the .npy header is parsed (never executed, no
    pickles) and compared with them before the data is read, so a forged header cannot make the server
    allocate more than the sent array's size.
    """
    if not isinstance(array, Array):
        raise Rejected("malformed", f"{key}: not an Array")
    if array.dtype != str(ref.dtype):
        raise Rejected("dtype", f"{key}: dtype {array.dtype!r}, expected {ref.dtype}")
    if tuple(array.shape) != ref.shape:
        raise Rejected("shape", f"{key}: shape {tuple(array.shape)}, expected {ref.shape}")
    data = array.data
    if array.stype != "numpy.ndarray" or not isinstance(data, bytes) or len(data) > ref.nbytes + _NPY_HEADER_MAX:
        raise Rejected("corrupt-array", f"{key}: not a numpy array of the sent size")
    try:
        fh = io.BytesIO(data)
        version = np.lib.format.read_magic(fh)
        if version not in ((1, 0), (2, 0)):
            raise Rejected("corrupt-array", f"{key}: .npy format version {version}")
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                  np.lib.format.read_array_header_2_0)(fh)
        shape, fortran, dtype = header
        if tuple(shape) != ref.shape or np.dtype(dtype) != ref.dtype or fortran:
            raise Rejected("corrupt-array", f"{key}: array header {header} does not match the declared array")
        body = data[fh.tell():]
        if len(body) != ref.nbytes:
            raise Rejected("corrupt-array", f"{key}: {len(body)} data bytes, expected {ref.nbytes}")
        return np.frombuffer(body, dtype=ref.dtype).reshape(ref.shape).copy()
    except Rejected:
        raise
    except (ValueError, TypeError, SyntaxError, EOFError, OSError) as exc:
        raise Rejected("corrupt-array", f"{key}: {type(exc).__name__}: {exc}") from None


def check_delta(delta: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray], max_norm: float) -> None:
    """Raise Rejected unless `delta` has exactly the sent keys, finite values and a bounded norm."""
    backbone = sorted(k for k in delta if looks_like_backbone(k))
    if backbone:
        raise Rejected("backbone-key", f"{len(backbone)} backbone-looking key(s), e.g. {backbone[0][:80]!r}")
    unexpected = sorted(set(delta) - set(sent))
    if unexpected:
        raise Rejected("unexpected-key", f"{len(unexpected)} key(s) not sent, e.g. {unexpected[0][:80]!r}")
    missing = sorted(set(sent) - set(delta))
    if missing:
        raise Rejected("missing-key", f"{len(missing)} sent key(s) missing, e.g. {missing[0]!r}")
    sq = 0.0
    for key, value in delta.items():
        if value.dtype != sent[key].dtype:
            raise Rejected("dtype", f"{key}: dtype {value.dtype}, expected {sent[key].dtype}")
        if value.shape != sent[key].shape:
            raise Rejected("shape", f"{key}: shape {value.shape}, expected {sent[key].shape}")
        if not np.all(np.isfinite(value)):
            raise Rejected("non-finite", f"{key}: NaN or inf values")
        sq += float(np.sum(np.square(value, dtype=np.float64)))
    if math.sqrt(sq) > max_norm:
        raise Rejected("norm", f"delta L2 norm {math.sqrt(sq):.3g} > bound {max_norm:.3g}")


def parse_train_reply(msg: Message, sent: Mapping[str, np.ndarray], client: ClientInfo,
                      cfg: ValidationConfig) -> TrainUpdate:
    """An accepted train reply, or Rejected with the first reason it may not be aggregated."""
    metrics = _record(msg, METRICS, MetricRecord, (ARRAYS, METRICS))
    arrays = _record(msg, ARRAYS, ArrayRecord, (ARRAYS, METRICS))
    assert isinstance(metrics, MetricRecord) and isinstance(arrays, ArrayRecord)
    banks = sorted({bank_of(k) for k in sent})
    weights: dict[str, int] = {}
    for bank in banks:
        key = bank_examples_key(bank)
        if key not in metrics:
            raise Rejected("num-examples", f"{key} missing")
        weights[bank] = _count(metrics[key], key, client.bank_examples.get(bank, 0), "num-examples")
    if weights.get(GLOBAL, 0) < 1 or metrics.get(NUM_EXAMPLES) != weights[GLOBAL]:
        raise Rejected("num-examples", f"{NUM_EXAMPLES}={metrics.get(NUM_EXAMPLES)!r} must equal the global "
                                       f"bank's {weights.get(GLOBAL)} pairs and be >= 1")
    for key, value in metrics.items():
        if key.startswith(BANK_EXAMPLES_PREFIX):
            if key[len(BANK_EXAMPLES_PREFIX):] not in weights:
                raise Rejected("num-examples", f"{key[:80]!r} names a bank that was not sent")
        elif key not in TRAIN_METRICS:
            raise Rejected("metrics", f"unknown metric {key[:80]!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0):
            raise Rejected("metrics", f"{key}={value!r} is not a finite non-negative number")
    delta = {k: decode_array(a, k, sent[k]) if k in sent else np.zeros(0) for k, a in arrays.items()}
    check_delta(delta, sent, cfg.max_norm)
    loss = float(metrics.get(TRAIN_LOSS, float("nan")))  # type: ignore[arg-type]
    return TrainUpdate(client.partition_id, delta, {b: n for b, n in weights.items() if n > 0}, loss)


def parse_eval_reply(msg: Message, client: ClientInfo, cfg: ValidationConfig) -> dict[str, dict[str, float]]:
    """Per-segment sums {segment: {"users": n, "ndcg@10": sum, ...}} of an accepted evaluation reply."""
    metrics = _record(msg, METRICS, MetricRecord, (METRICS,))
    assert isinstance(metrics, MetricRecord)
    return parse_eval_metrics(metrics, client, cfg)


def parse_eval_metrics(metrics: object, client: ClientInfo, cfg: ValidationConfig) -> dict[str, dict[str, float]]:
    """The checks of `parse_eval_reply` on the metrics themselves (also a train reply's folded evaluation)."""
    if not isinstance(metrics, MetricRecord):
        raise Rejected("malformed", f"evaluation metrics are a {type(metrics).__name__}, not a MetricRecord")
    users = _number(metrics.get(EVAL_USERS), EVAL_USERS)
    if not (users.is_integer() and 0 <= users <= client.eval_users):
        raise Rejected("eval-metrics", f"{EVAL_USERS}={users:g} is not a count <= the {client.eval_users} registered")
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key == EVAL_USERS:
            continue
        parsed = parse_metric_key(key)
        if parsed is None or parsed[1] not in ("users", *EVAL_METRICS):
            raise Rejected("eval-metrics", f"unknown metric {key[:80]!r}")
        segment, name = parsed
        if segment != OVERALL:
            try:
                check_segment_name(segment, cfg.metric_keys)
            except ValueError as exc:
                raise Rejected("eval-metrics", str(exc)) from None
        rows.setdefault(segment, {})[name] = _number(value, key)
    for segment, row in rows.items():
        n = row.get("users", -1.0)
        if not (n.is_integer() and 0 <= n <= users) or set(row) != {"users", *EVAL_METRICS}:
            raise Rejected("eval-metrics", f"segment {segment}: users {n:g} (of {users:g}) or metrics {sorted(row)}")
        for name in EVAL_METRICS:
            if not 0 <= row[name] <= n * (1 + 1e-9):
                raise Rejected("eval-metrics", f"segment {segment}: {name} sum {row[name]:g} outside [0, {n:g}]")
    if OVERALL not in rows or rows[OVERALL]["users"] != users:
        raise Rejected("eval-metrics", f"the {OVERALL} row is missing or does not count {users:g} users")
    return rows


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejected("eval-metrics", f"{key}={value!r} is not a finite number")
    return float(value)
