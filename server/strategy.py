"""The adapter-bank strategy: which client gets which adapters, and how replies update the banks.

Banks: one "global" adapter plus one adapter per segment value of the configured segment keys
("region=EU", "season=holiday", ...), each a flat `{key: ndarray}`. A sampled client receives the global
bank and the banks of its own segments (full weights), trains them, and replies with the delta. Each reply
is validated (server/validate.py); the valid ones are averaged per bank weighted by num-examples
(server/aggregate.py) and applied by the server optimizer (FedAvg / FedProx / FedAdam).

How the server learns a client's segments. Flower's server cannot read a node's `node_config`, and node
ids are assigned per run, so at the start of a run the server sends one "query" message to every node and
each replies with its partition id and its segment adapter names. Privacy trade-off: the server learns each
client's segment membership (e.g. its region and season). It needs exactly that to route segment adapters;
the alternatives are to register segments out of band (same knowledge, different channel) or to send every
client all segment banks and let it pick locally (hides membership at #segments times the downlink bytes).
Replies are still per client here; secure aggregation would hide individual deltas but not membership.

Reproducibility: cohorts are drawn from rng(seed, round) over partition ids (not node ids, which change per
run), and replies are aggregated in partition-id order, so a resumed run replays the same rounds.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from common.federation.records import from_record, message_bytes, to_record
from common.names import GLOBAL, OVERALL
from common.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PARTITION_ID, SEGMENTS, TRAIN_LOSS, parse_metric_key
from server.aggregate import Arrays, aggregate_banks, lora_factor_pairs
from server.optimizer import ServerOptimizer
from server.validate import ValidationConfig, validate_reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientInfo:
    """What the server knows about a node: from its query reply."""

    node_id: int
    partition_id: int
    segments: tuple[str, ...]
    num_examples: int = 0

    @property
    def adapter_names(self) -> list[str]:
        return [GLOBAL, *self.segments]


def sample_clients(clients: list[ClientInfo], fraction: float, seed: int, server_round: int, salt: int = 0
                   ) -> list[ClientInfo]:
    """A deterministic cohort: ceil(fraction * N) clients (at least one) drawn from rng(seed, round, salt)."""
    if not clients:
        return []
    ordered = sorted(clients, key=lambda c: c.partition_id)
    k = min(len(ordered), max(1, int(np.ceil(fraction * len(ordered) - 1e-9))))
    rng = np.random.default_rng([seed, server_round, salt])
    picked = sorted(rng.choice(len(ordered), size=k, replace=False).tolist())
    return [ordered[i] for i in picked]


@dataclass
class RoundStats:
    """Per-round bookkeeping that ends up as one line of metrics.jsonl."""

    sampled: int = 0
    replied: int = 0
    dropped: int = 0
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    train_loss: float = float("nan")
    num_examples: int = 0
    contributors: dict[str, int] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        mean = (lambda xs: float(np.mean(xs)) if xs else 0.0)  # noqa: E731
        return {
            "clients_sampled": self.sampled, "clients_replied": self.replied, "clients_dropped": self.dropped,
            "clients_rejected": self.rejected, "rejected_reasons": dict(self.rejected_reasons),
            "bytes_down_per_client": mean(self.bytes_down), "bytes_up_per_client": mean(self.bytes_up),
            "bytes_down_total": int(sum(self.bytes_down)), "bytes_up_total": int(sum(self.bytes_up)),
            "train_loss": self.train_loss, "num_examples": self.num_examples,
            "bank_contributors": dict(self.contributors), "segments_fallback": list(self.fallback),
        }


class AdapterBankStrategy:
    """Keeps the banks and turns rounds into messages and replies into bank updates (no Flower grid here)."""

    def __init__(self, banks: dict[str, Arrays], optimizer: ServerOptimizer, validation: ValidationConfig,
                 min_segment_clients: int) -> None:
        if GLOBAL not in banks:
            raise ValueError(f"banks must include {GLOBAL!r}, got {sorted(banks)}")
        self.banks = banks
        self.optimizer = optimizer
        self.validation = validation
        self.min_segment_clients = min_segment_clients

    def payload(self, client: ClientInfo) -> Arrays:
        """The arrays a client receives: global + its segment banks (segments without a bank are skipped)."""
        out: Arrays = {}
        for name in client.adapter_names:
            if name in self.banks:
                out.update(self.banks[name])
        return out

    def train_messages(self, clients: Iterable[ClientInfo], config: Mapping[str, Any], server_round: int
                       ) -> tuple[list[Message], dict[int, Arrays]]:
        """One train message per client with its own adapters; also returns what was sent, per node."""
        messages, sent = [], {}
        for c in clients:
            arrays = self.payload(c)
            sent[c.node_id] = arrays
            content = RecordDict({ARRAYS: to_record(arrays), CONFIG: ConfigRecord(dict(config))})
            messages.append(Message(content, c.node_id, MessageType.TRAIN, group_id=str(server_round)))
        return messages, sent

    def evaluate_messages(self, clients: Iterable[ClientInfo], server_round: int) -> list[Message]:
        messages = []
        for c in clients:
            config = ConfigRecord({"server-round": server_round})
            content = RecordDict({ARRAYS: to_record(self.payload(c)), CONFIG: config})
            messages.append(Message(content, c.node_id, MessageType.EVALUATE, group_id=f"eval-{server_round}"))
        return messages

    def aggregate_train(self, replies: Iterable[Message], sent: Mapping[int, Arrays],
                        partition_of: Mapping[int, int], stats: RoundStats) -> None:
        """Validate every reply, drop and count the bad ones, update the banks from the rest."""
        accepted: list[tuple[int, Arrays, float, float]] = []
        reasons: Counter[str] = Counter()
        seen: set[int] = set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if node not in sent or node in seen:
                log.warning("ignoring reply from node %d that was not asked (or answered twice)", node)
                continue
            seen.add(node)
            if msg.has_error():
                log.warning("node %d replied with an error: %s", node, msg.error.reason)
                stats.dropped += 1
                continue
            stats.replied += 1
            stats.bytes_up.append(message_bytes(msg))
            content = msg.content
            try:
                delta = from_record(content.array_records[ARRAYS])
                metrics = content.metric_records[METRICS]
                n = metrics[NUM_EXAMPLES]
                loss = float(metrics.get(TRAIN_LOSS, float("nan")))  # type: ignore[arg-type]
            except (KeyError, TypeError, ValueError) as exc:
                reasons["malformed"] += 1
                log.warning("node %d: malformed reply (%s), dropped", node, exc)
                continue
            rejection = validate_reply(delta, sent[node], n, self.validation)  # type: ignore[arg-type]
            if rejection is not None:
                reasons[rejection.reason] += 1
                log.warning("node %d: reply rejected (%s), dropped", node, rejection)
                continue
            accepted.append((partition_of.get(node, node), delta, float(n), loss))  # type: ignore[arg-type]
        stats.dropped += len(set(sent) - seen)
        stats.rejected = sum(reasons.values())
        stats.rejected_reasons = dict(reasons)
        if not accepted:
            log.warning("no valid replies this round; banks unchanged")
            return
        accepted.sort(key=lambda item: item[0])
        deltas = [a[1] for a in accepted]
        weights = [a[2] for a in accepted]
        stats.num_examples = int(sum(weights))
        losses = [(w, loss) for _, _, w, loss in accepted if np.isfinite(loss)]
        if losses:
            stats.train_loss = float(sum(w * loss for w, loss in losses) / sum(w for w, _ in losses))
        pairs = lora_factor_pairs(list(deltas[0]))
        if pairs:
            log.warning("LoRA A and B both trained (%d modules): averaging factors is not exact; use freeze_a",
                        len(pairs))
        agg = aggregate_banks(deltas, weights, self.min_segment_clients)
        stats.contributors = agg.contributors
        stats.fallback = agg.fallback
        for bank, mean_delta in agg.mean_deltas.items():
            if bank not in self.banks:
                log.warning("ignoring aggregate for unknown bank %s", bank)
                continue
            self.banks[bank] = self.optimizer.step(self.banks[bank], mean_delta)


def pool_evaluation(replies: Iterable[Message]) -> dict[str, Any]:
    """Pool clients' per-segment sums into means: {"ndcg@10", "hr@10", "users", "segments": {...}}."""
    sums: dict[str, dict[str, float]] = {}
    clients = 0
    for msg in replies:
        if msg.has_error():
            log.warning("evaluation error from node %d: %s", msg.metadata.src_node_id, msg.error.reason)
            continue
        clients += 1
        for key, value in msg.content.metric_records[METRICS].items():
            parsed = parse_metric_key(key)
            if parsed is None or not isinstance(value, int | float):
                continue
            seg, name = parsed
            row = sums.setdefault(seg, {})
            row[name] = row.get(name, 0.0) + float(value)
    out: dict[str, Any] = {"eval_clients": clients, "segments": {}}
    for seg, row in sorted(sums.items()):
        users = row.get("users", 0.0)
        means = {name: (v / users if users else float("nan")) for name, v in row.items() if name != "users"}
        means["users"] = users
        if seg == OVERALL:
            out.update(means)
        else:
            out["segments"][seg] = means
    return out


def client_info_from_reply(msg: Message) -> ClientInfo | None:
    """Parse a query reply; None (and a warning) if it is malformed."""
    if msg.has_error():
        log.warning("node %d failed the query: %s", msg.metadata.src_node_id, msg.error.reason)
        return None
    try:
        cfg = msg.content.config_records[CONFIG]
        segments = tuple(str(s) for s in cfg[SEGMENTS])  # type: ignore[union-attr]
        return ClientInfo(msg.metadata.src_node_id, int(cfg[PARTITION_ID]), segments,  # type: ignore[arg-type]
                          int(cfg.get(NUM_EXAMPLES, 0)))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("node %d: malformed query reply (%s)", msg.metadata.src_node_id, exc)
        return None
