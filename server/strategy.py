"""The adapter-bank strategy: which client gets which adapters, and how replies update the banks.

Banks: one "global" adapter plus one adapter per segment value of the configured segment keys
("region=EU", "season=holiday", ...), each a flat `{key: ndarray}`. A sampled client receives the global
bank and the banks of its own segments (full weights), trains them, and replies with the delta and its
training pairs per bank. Every reply is validated (server/validate.py); the valid ones are averaged per bank,
each weighted by the client's examples in that bank (server/aggregate.py), and applied by the server
optimizer (FedAvg / FedProx / FedAdam / FedAvgM).

Serving and held-back segments. A segment bank is *served* (sent for evaluation, routed through for its
users, counted in coverage) once a round released it, i.e. updated it from at least `min_segment_clients`
clients. In a round where it has contributors but fewer than that, it is held back: its bank is not updated,
and it is no longer served, so its users get exactly the global adapter until a later round releases it.
A round in which no client of the segment was sampled leaves its status as it was. Training messages still
carry every segment bank a client holds, since training it is how a segment reaches the threshold.

How the server learns a client's segments. Flower's server cannot read a node's `node_config`, and node
ids are assigned per run, so the first time the server samples a node it sends it one "query" message and the
node replies with its partition id, segment adapter names and example counts (server/registration.py; never a
round trip to every node before round 1). Privacy trade-off: the server learns the segment membership (e.g.
region and season) and data size of every client it samples. It needs the first to route segment adapters and
the second to bound each client's aggregation weight.

Differential privacy (common/privacy/dp.py states the guarantee). With dp-noise-multiplier > 0 every client
weighs 1 in each bank it trained (example counts would break the sensitivity bound) and a bank's mean is its
noised sum over its contributors. central: the server clips each accepted delta to dp-clip (whole update) and
adds the noise to each bank sum. distributed: each train message names t per bank ("dp-shares/<bank>"), the
clients clip and add their shares, replies are checked against the clip plus the noise's norm, and a bank with
fewer than t contributors is held back that round (its sum would carry too little noise).

Reproducibility: without DP, cohorts are drawn from rng(seed, round) over node ids (server/clients.py; with DP
from OS entropy) and replies are
aggregated in partition-id order, so a resumed run replays the same rounds while the nodes keep their ids
(with fraction 1 always).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from common.federation.records import message_bytes, to_record
from common.names import GLOBAL, OVERALL, bank_of
from common.privacy.dp import DISTRIBUTED, DPConfig, noise_shares, share_norm_bound, update_norm
from common.protocol import ARRAYS, CONFIG, EVAL_IN_TRAIN, EVAL_RECORD, EVAL_SKIP, SERVER_ROUND, dp_shares_key
from server.aggregate import Arrays, BankAggregate, aggregate_banks, dp_aggregate_banks, lora_factor_pairs
from server.clients import ClientInfo
from server.optimizer import ServerOptimizer
from server.validate import (
    Rejected,
    TrainUpdate,
    ValidationConfig,
    parse_eval_metrics,
    parse_eval_reply,
    parse_train_reply,
    screen_senders,
)

log = logging.getLogger(__name__)


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
    served: list[str] = field(default_factory=list)
    delta_norms: list[float] = field(default_factory=list)  # accepted replies' L2 norms, before any DP clipping
    noise_short: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        mean = (lambda xs: float(np.mean(xs)) if xs else 0.0)  # noqa: E731
        return {
            "clients_sampled": self.sampled, "clients_replied": self.replied, "clients_dropped": self.dropped,
            "clients_rejected": self.rejected, "rejected_reasons": dict(self.rejected_reasons),
            "bytes_down_per_client": mean(self.bytes_down), "bytes_up_per_client": mean(self.bytes_up),
            "bytes_down_total": int(sum(self.bytes_down)), "bytes_up_total": int(sum(self.bytes_up)),
            "train_loss": self.train_loss, "num_examples": self.num_examples,
            "bank_contributors": dict(self.contributors), "segments_fallback": list(self.fallback),
            "segments_served": list(self.served),
            "delta_norm_median": float(np.median(self.delta_norms)) if self.delta_norms else float("nan"),
            "delta_norm_max": max(self.delta_norms, default=float("nan")),
            **({"dp_banks_short_of_noise": list(self.noise_short)} if self.noise_short else {}),
        }


class AdapterBankStrategy:
    """Keeps the banks and the served segments; turns rounds into messages and replies into bank updates
    (no Flower grid here, so every path is testable with hand-made replies)."""

    def __init__(self, banks: dict[str, Arrays], optimizer: ServerOptimizer, validation: ValidationConfig,
                 min_segment_clients: int, served: Iterable[str] = (), dp: DPConfig | None = None,
                 noise_rng: np.random.Generator | None = None) -> None:
        if GLOBAL not in banks:
            raise ValueError(f"banks must include {GLOBAL!r}, got {sorted(banks)}")
        self.banks = banks
        self.optimizer = optimizer
        self.validation = validation
        self.min_segment_clients = min_segment_clients
        self.served = {s for s in served if s in banks and s != GLOBAL}
        self.dp = dp if dp is not None and dp.enabled else None
        # OS entropy by default: a noise seed known to anyone (e.g. from the run config) would let them subtract it
        self.noise_rng = noise_rng if noise_rng is not None else np.random.default_rng()
        self.shares: dict[str, int] = {}  # distributed DP: this round's t per bank

    def payload(self, client: ClientInfo, served_only: bool = False) -> Arrays:
        """Global + the client's segment banks (only the served ones with `served_only`)."""
        out: Arrays = dict(self.banks[GLOBAL])
        for name in client.segments:
            if name in self.banks and (not served_only or name in self.served):
                out.update(self.banks[name])
        return out

    def train_messages(self, clients: Iterable[ClientInfo], config: Mapping[str, Any], server_round: int,
                       evaluate: Collection[int] = ()) -> tuple[list[Message], dict[int, Arrays]]:
        """One train message per client with its own adapters; also returns what was sent, per node. With
        distributed DP each message also names t for each of its banks (its sampled holders less the tolerated
        drop-outs), which the client divides its noise by. The nodes in `evaluate` are asked to evaluate the
        state they receive before training (eval-in-train), routing only through the served banks, exactly as
        an evaluate message would (`evaluate_messages`)."""
        payloads = {c.node_id: self.payload(c) for c in clients}
        self.shares = {}
        if self.dp is not None and self.dp.mode == DISTRIBUTED:
            holders = Counter(b for arrays in payloads.values() for b in {bank_of(k) for k in arrays})
            self.shares = {b: noise_shares(n, self.dp.dropout_tolerance) for b, n in holders.items()}
        messages, sent = [], {}
        for c in clients:
            arrays = payloads[c.node_id]
            sent[c.node_id] = arrays
            banks = sorted({bank_of(k) for k in arrays})
            extra: dict[str, Any] = {dp_shares_key(b): self.shares[b] for b in banks} if self.shares else {}
            if c.node_id in evaluate:
                extra[EVAL_IN_TRAIN] = True
                held_back = [b for b in banks if b != GLOBAL and b not in self.served]
                if held_back:
                    extra[EVAL_SKIP] = held_back
            content = RecordDict({ARRAYS: to_record(arrays), CONFIG: ConfigRecord({**config, **extra})})
            messages.append(Message(content, c.node_id, MessageType.TRAIN, group_id=str(server_round)))
        return messages, sent

    def evaluate_messages(self, clients: Iterable[ClientInfo], server_round: int) -> list[Message]:
        """Global + served segment banks: a held-back segment's users are evaluated on the global adapter."""
        messages = []
        for c in clients:
            content = RecordDict({ARRAYS: to_record(self.payload(c, served_only=True)),
                                  CONFIG: ConfigRecord({SERVER_ROUND: server_round})})
            messages.append(Message(content, c.node_id, MessageType.EVALUATE, group_id=f"eval-{server_round}"))
        return messages

    def aggregate_train(self, replies: Iterable[Message], sent: Mapping[int, Arrays],
                        clients: Mapping[int, ClientInfo], stats: RoundStats) -> None:
        """Validate every reply, count the bad ones by reason, update the banks from the rest."""
        single, reasons, answered = screen_senders(replies, sent)
        accepted: list[TrainUpdate] = []
        for node, msg in sorted(single.items()):
            if msg.has_error():
                log.warning("node %d replied with an error: %s", node, msg.error.reason)
                stats.dropped += 1
                continue
            stats.replied += 1
            try:
                stats.bytes_up.append(message_bytes(msg))
                accepted.append(parse_train_reply(msg, sent[node], clients[node], self._validation(sent[node])))
            except Rejected as exc:
                reasons[exc.reason] += 1
                log.warning("node %d: train reply rejected (%s)", node, exc)
        stats.dropped += len(set(sent) - answered)
        stats.rejected = sum(reasons.values())
        stats.rejected_reasons = dict(sorted(reasons.items()))
        stats.served = sorted(self.served)
        if not accepted:
            log.warning("no valid replies this round; banks unchanged")
            return
        accepted.sort(key=lambda u: u.partition_id)
        stats.num_examples = int(sum(u.bank_weights.get(GLOBAL, 0) for u in accepted))
        losses = [(u.bank_weights.get(GLOBAL, 0), u.loss) for u in accepted if np.isfinite(u.loss)]
        if losses and sum(w for w, _ in losses) > 0:
            stats.train_loss = float(sum(w * loss for w, loss in losses) / sum(w for w, _ in losses))
        pairs = lora_factor_pairs(list(accepted[0].delta))
        if pairs:
            log.warning("LoRA A and B both trained (%d modules): averaging factors is not exact; use freeze_a",
                        len(pairs))
        deltas, weights = [u.delta for u in accepted], [u.bank_weights for u in accepted]
        stats.delta_norms = [update_norm(d) for d in deltas]
        if self.dp is not None:
            agg = dp_aggregate_banks(deltas, weights, self.min_segment_clients, self.dp, self.noise_rng, self.shares)
        else:
            agg = aggregate_banks(deltas, weights, self.min_segment_clients)
        self.apply(agg, stats)

    def apply(self, agg: BankAggregate, stats: RoundStats) -> None:
        """Step every bank that has a mean delta, update the served segments (the plain and the secure round,
        server/secure.py, both end here) and record the outcome in `stats`."""
        stats.contributors = agg.contributors
        stats.fallback = agg.fallback
        stats.noise_short = agg.noise_short
        for bank, mean_delta in agg.mean_deltas.items():
            self.banks[bank] = self.optimizer.step(self.banks[bank], mean_delta)
        self.served = (self.served - set(agg.fallback)) | (set(agg.mean_deltas) - {GLOBAL})
        stats.served = sorted(self.served)

    def _validation(self, sent: Arrays) -> ValidationConfig:
        """The reply checks for one client: with distributed DP the norm bound is the clip plus the noise
        its shares may add (common/privacy/dp.py share_norm_bound) instead of max-delta-norm."""
        if self.dp is None or self.dp.mode != DISTRIBUTED:
            return self.validation
        sizes = Counter[str]()
        for key, value in sent.items():
            sizes[bank_of(key)] += int(np.size(value))
        return replace(self.validation, max_norm=share_norm_bound(sizes, self.dp, self.shares))

    @staticmethod
    def take_folded(replies: Iterable[Message], asked: Collection[int]) -> dict[int, object]:
        """Remove the folded evaluation record from the train replies of the nodes asked for one; what is left is
        an ordinary train reply (a train reply carrying one unasked stays as it is, and is refused as malformed)."""
        folded: dict[int, object] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            if node in asked and not msg.has_error() and EVAL_RECORD in msg.content.keys():
                if node in folded:  # a duplicate sender: both its train replies are refused anyway
                    folded[node] = None
                    continue
                folded[node] = msg.content.pop(EVAL_RECORD)
        return folded

    def pool_evaluation(self, replies: Iterable[Message], clients: Mapping[int, ClientInfo],
                        folded: Mapping[int, object] | None = None) -> dict[str, Any]:
        """Validate evaluation replies (and evaluations folded into train replies, `take_folded`) and pool the
        accepted per-segment sums into means."""
        single, reasons, _ = screen_senders(replies, clients)
        pooled: list[dict[str, dict[str, float]]] = []
        for node, record in sorted((folded or {}).items()):
            try:
                if node not in clients or node in single:
                    raise Rejected("unknown-sender", f"node {node} was not asked to evaluate in train")
                pooled.append(parse_eval_metrics(record, clients[node], self.validation))
            except Rejected as exc:
                reasons[exc.reason] += 1
                log.warning("node %d: folded evaluation rejected (%s)", node, exc)
        for node, msg in sorted(single.items()):
            if msg.has_error():
                log.warning("evaluation error from node %d: %s", node, msg.error.reason)
                continue
            try:
                pooled.append(parse_eval_reply(msg, clients[node], self.validation))
            except Rejected as exc:
                reasons[exc.reason] += 1
                log.warning("node %d: evaluation reply rejected (%s)", node, exc)
        out = pool_evaluation(pooled)
        out["eval_rejected"] = sum(reasons.values())
        out["eval_rejected_reasons"] = dict(sorted(reasons.items()))
        return out


def pool_evaluation(rows: Iterable[Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Pool clients' validated per-segment sums into means: {"ndcg@10", "hr@10", "coverage", "users",
    "eval_clients", "segments": {segment: {...}}}."""
    sums: dict[str, dict[str, float]] = {}
    clients = 0
    for client_rows in rows:
        clients += 1
        for seg, row in client_rows.items():
            acc = sums.setdefault(seg, {})
            for name, value in row.items():
                acc[name] = acc.get(name, 0.0) + float(value)
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
