"""The server side of a secure round (run-config secure-aggregation = segment | segment-hidden).

Drives the four SecAgg+ stages (common/secagg/server.py) over `grid.send_and_receive`:

1. advertise-keys (TRAIN message): the banks to train plus the round's hyper-parameters; the client trains,
   keeps its encoded update in its node state and replies with public keys only;
2. share-keys, 3. masked-input, (with secagg-identities) 3b. consistency, 4. unmask (QUERY messages).

Each stage has its own group id (`secagg-r<round>-<stage>`). Every reply is untrusted: one that is an error,
from a node not asked, from a node that answered twice, for another stage or round (a replayed message), or
with fields of the wrong type or size is rejected (counted by reason) and its sender counts as dropped; the
round goes on with the rest. Fewer survivors than the Shamir threshold at any stage aborts the round: nothing
is applied, the banks and served segments stay as they were, and the metrics line says why.

What the server learns. segment: each bank's cohort (who holds which segment, as in plain mode) and each
released bank's sum of weighted deltas, sum of weights and number of contributors. segment-hidden: nothing
about segments from the protocol: every client receives every bank and uploads one vector with a slot for each;
the server learns every bank's sums, contributor count included, and so still learns a bank's total when it
has only one contributor (that client's update), even though such a bank is not applied. A bank with fewer
than min-segment-clients contributors (hidden) is not applied that round; in segment mode a bank with fewer
surviving members (at least 2) is never unmasked: its members do not upload it, or withhold the shares of its
self masks if members drop out after uploading (the clients enforce it, common/secagg/client.py). It never
sees a single delta, so it cannot check a delta's norm: an honest client moves a bank's sum by at most the
encoding range per coordinate times its weight, but a modified one uploads any ring element (up to
2^(bits-1)/scale per coordinate) and forges its weight and contributor slots (tests/test_secagg_malicious_client.py
measures it; README, Privacy).

DP (common/privacy/dp.py): every contributor weighs 1 and clips its whole update to dp-clip before encoding (in
a range derived from dp-clip and the noise, FedConfig.secagg_encoding_range, so that no noise is clipped);
central mode adds N(0, (sigma*C)^2) to each unmasked bank sum; distributed mode has clients add their shares
before masking, and a vector whose surviving members are below its t (hidden: the global bank's t) is never
unmasked: its members withhold its self-mask shares (the server's view of it stays uniform noise).
User-level DP (dp-unit=user, common/privacy/user_level.py): a silo's vector carries the sum of its sampled
users' clipped updates and its user population as weight; the server noises the trained keys (central) and
divides by dp-user-rate x the summed population.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.federation.records import message_bytes
from common.names import GLOBAL, bank_of
from common.privacy.dp import DISTRIBUTED, DPConfig, central_noise, noise_shares
from common.privacy.user_level import FROZEN_KEYS, central_user_noise, fixed_denominator
from common.protocol import ARRAYS, CONFIG, FedConfig, dp_shares_key
from common.secagg.client import ADVERTISE, CONSISTENCY, MASK, SHARE, UNMASK
from common.secagg.errors import ProtocolError, SecAggAbort, StaleMessage
from common.secagg.fixedpoint import FixedPoint
from common.secagg.layout import (
    HIDDEN_VECTOR,
    SEGMENT,
    SEGMENT_HIDDEN,
    BankLayout,
    bank_layouts,
    slots_problem,
    split_totals,
)
from common.secagg.server import RoundSpec, SecAggServer
from common.secagg.wire import (
    COHORT_PREFIX,
    COHORT_SIZE,
    group_id,
    read_config,
    read_vectors,
    stage_config,
)
from server.aggregate import Arrays, BankAggregate
from server.clients import ClientInfo
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import screen_senders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecureSettings:
    """The run config's secure-aggregation keys (validated by FedConfig)."""

    mode: str
    bits: int
    clip: float
    max_weight: float
    threshold_fraction: float
    degree: int
    min_segment_clients: int
    dp: DPConfig | None = None
    identities: bool = False

    @classmethod
    def from_config(cls, cfg: FedConfig) -> SecureSettings:
        return cls(cfg.secure_aggregation, cfg.secagg_bits, cfg.secagg_encoding_range, cfg.secagg_max_weight,
                   cfg.secagg_threshold_fraction, cfg.secagg_degree, cfg.min_segment_clients,
                   cfg.dp if cfg.dp.enabled else None, bool(cfg.secagg_identities))

    def fixed_point(self, cohort: int) -> FixedPoint:
        return FixedPoint(self.bits, self.clip, self.max_weight, cohort)


@dataclass
class StageTraffic:
    """Bytes each node sent and received over the four stages, and the rejections by reason."""

    down: Counter[int] = field(default_factory=Counter)
    up: Counter[int] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, int] = field(default_factory=dict)


class SecureRound:
    """One secure round for one cohort; `run` applies the banks' means or, on abort, nothing."""

    def __init__(self, grid: Grid, settings: SecureSettings, timeout: float, rng: np.random.Generator,
                 purpose: str = "") -> None:
        self.purpose = purpose  # "" for training; server/secure_eval.py's evaluation rounds use their own group ids
        self.grid = grid
        self.settings = settings
        self.timeout = timeout
        self.rng = rng
        self.traffic = StageTraffic()

    def _exchange(self, messages: list[Message], stage: str, rnd: int) -> dict[int, Message]:
        """Send one stage, return each asked node's single valid-looking reply (errors count as drop-outs)."""
        for msg in messages:
            self.traffic.down[msg.metadata.dst_node_id] += message_bytes(msg)
        expected = {m.metadata.dst_node_id for m in messages}
        single, reasons, _ = screen_senders(self.grid.send_and_receive(messages, timeout=self.timeout), expected)
        self.traffic.rejected.update(reasons)
        out = {}
        for node, msg in single.items():
            if msg.has_error():
                log.warning("secure round %d, %s: node %d replied with an error: %s", rnd, stage, node,
                            msg.error.reason)
                continue
            if msg.metadata.group_id != group_id(rnd, stage, self.purpose):
                self.traffic.rejected["foreign-round"] += 1
                continue
            self.traffic.up[node] += message_bytes(msg)
            out[node] = msg
        self.traffic.dropped[stage] = len(expected) - len(out)
        return out

    def _payloads(self, replies: Mapping[int, Message], stage: str, rnd: int) -> dict[int, dict[str, Any]]:
        out = {}
        for node, msg in replies.items():
            try:
                if CONFIG not in msg.content.config_records:
                    raise ProtocolError("reply has no config record")
                out[node] = read_config(msg.content.config_records[CONFIG], stage, rnd, "reply")
            except ProtocolError as exc:
                self.traffic.rejected["foreign-round" if isinstance(exc, StaleMessage) else "malformed"] += 1
                log.warning("secure round %d, %s: node %d rejected (%s)", rnd, stage, node, exc)
        return out

    def _query(self, requests: Mapping[int, Mapping[str, Any]], stage: str, rnd: int) -> list[Message]:
        gid = group_id(rnd, stage, self.purpose)
        return [Message(RecordDict({CONFIG: ConfigRecord(stage_config(stage, rnd, payload, "request"))}), node,
                        MessageType.QUERY, group_id=gid) for node, payload in requests.items()]

    def run(self, strategy: AdapterBankStrategy, cohort: list[ClientInfo], hp: Mapping[str, Any], rnd: int,
            run_id: int, stats: RoundStats) -> dict[str, Any]:
        """Train + the four stages + apply; returns the round's secure-aggregation metrics."""
        t0 = time.monotonic()
        mode = self.settings.mode
        self.settings.fixed_point(max(len(cohort), 2))  # a ring too small for this cohort: ValueError naming the key
        if len(cohort) < 2:  # one client's "sum" is its update: never run, never applied
            log.warning("secure round %d: %d client(s) sampled, a secure sum needs 2; banks unchanged", rnd,
                        len(cohort))
            stats.sampled = len(cohort)
            return {"secure_aggregation": mode, "secagg_aborted": f"{len(cohort)} client(s) sampled, fewer than 2"}
        if mode == SEGMENT_HIDDEN:  # every client gets every bank; the server never asks which are its own
            cohort = hidden_view(cohort, strategy)
        messages, sent = strategy.train_messages(cohort, hp, rnd)
        layouts = bank_layouts({k: v for arrays in sent.values() for k, v in arrays.items()})
        shares = self._noise_shares(sent)
        spec = self._spec(sent, layouts, rnd, run_id, shares)
        train = [self._advertise_message(m, len(cohort), rnd, shares) for m in messages]
        stats.sampled = len(cohort)
        info: dict[str, Any] = {"secure_aggregation": mode, "secagg_aborted": ""}
        try:
            server = self._protocol(spec, train, rnd)
            stats.replied = len(server.masked)
            released = server.released()
            uploads = {n: len(set(server.cohorts[n]) & set(server.masked)) for n in released}
            agg = self._aggregate(strategy, layouts, server.totals(released), len(cohort), shares, uploads)
            for name in sorted(set(spec.vectors) - set(released)):
                self._held_back(agg, server, spec, name, layouts, shares)
        except SecAggAbort as exc:
            log.warning("secure round %d aborted, banks unchanged: %s", rnd, exc)
            info["secagg_aborted"] = str(exc)
            agg = None
        stats.bytes_down = [self.traffic.down[c.node_id] for c in cohort]
        stats.bytes_up = [self.traffic.up[c.node_id] for c in cohort]
        stats.rejected = sum(self.traffic.rejected.values())
        stats.rejected_reasons = dict(sorted(self.traffic.rejected.items()))
        stats.dropped = len(cohort) - stats.replied
        if agg is not None:
            stats.num_examples = int(agg.examples.get(GLOBAL, 0))  # the summed weight: pairs, or clients with DP
            strategy.apply(agg, stats)
        stats.served = sorted(strategy.served)
        info.update({"secagg_dropped_by_stage": dict(self.traffic.dropped), "secagg_s": time.monotonic() - t0,
                     "secagg_vector_words": int(sum(length for _, length in spec.vectors.values()))})
        return info

    def _held_back(self, agg: BankAggregate, server: SecAggServer, spec: RoundSpec, name: str,
                   layouts: Mapping[str, BankLayout], shares: Mapping[str, int]) -> None:
        """A vector not unmasked: its banks are short of noise when its survivors are below the bank's t,
        otherwise held back as below min-segment-clients (or with a disconnected mask graph)."""
        survivors = len(set(spec.vectors[name][0]) & set(server.masked))
        banks = sorted(layouts) if name == HIDDEN_VECTOR else [name]
        for bank in banks:
            short = survivors < shares.get(GLOBAL if name == HIDDEN_VECTOR else bank, 0)
            target = agg.noise_short if short else agg.fallback
            if bank not in target:
                target.append(bank)

    def _spec(self, sent: Mapping[int, Arrays], layouts: Mapping[str, BankLayout], rnd: int, run_id: int,
              shares: Mapping[str, int]) -> RoundSpec:
        nodes = tuple(sorted(sent))
        if self.settings.mode == SEGMENT:
            members: dict[str, list[int]] = {}
            for node, arrays in sent.items():
                for bank in {bank_of(k) for k in arrays}:
                    members.setdefault(bank, []).append(node)
            vectors = {b: (tuple(sorted(m)), layouts[b].length) for b, m in members.items()}
        else:
            vectors = {HIDDEN_VECTOR: (nodes, sum(lay.length for lay in layouts.values()))}
        floors = dict(shares) if self.settings.mode == SEGMENT else {HIDDEN_VECTOR: shares.get(GLOBAL, 0)}
        return RoundSpec(run_id, rnd, nodes, vectors, self.settings.bits, self.settings.threshold_fraction,
                         self.settings.degree, min_members=self.settings.min_segment_clients,
                         exempt=(GLOBAL, HIDDEN_VECTOR), floors=floors if shares else {},
                         identities=self.settings.identities)

    def _noise_shares(self, sent: Mapping[int, Arrays]) -> dict[str, int]:
        """Distributed DP: t per bank (common/privacy/dp.py noise_shares over the bank's sampled holders). In
        hidden mode the server does not know a segment bank's holders: t = min-segment-clients, the fewest
        contributors with which the bank is applied, so an applied bank always carries the full noise."""
        dp = self.settings.dp
        if dp is None or dp.mode != DISTRIBUTED:
            return {}
        holders = Counter(b for arrays in sent.values() for b in {bank_of(k) for k in arrays})
        hidden = self.settings.mode == SEGMENT_HIDDEN
        return {b: (self.settings.min_segment_clients if hidden and b != GLOBAL
                    else noise_shares(n, dp.dropout_tolerance)) for b, n in holders.items()}

    def _advertise_message(self, msg: Message, cohort_size: int, rnd: int, shares: Mapping[str, int]) -> Message:
        """The strategy's train message with the stage fields, its own group id and (distributed DP) t for
        each of its banks."""
        config = dict(msg.content.config_records[CONFIG])
        banks = {bank_of(k) for k in msg.content.array_records[ARRAYS]}
        config.update({dp_shares_key(b): shares[b] for b in banks if b in shares})
        config.update(stage_config(ADVERTISE, rnd, {COHORT_SIZE: cohort_size}, "request"))
        content = RecordDict({ARRAYS: msg.content.array_records[ARRAYS], CONFIG: ConfigRecord(config)})
        return Message(content, msg.metadata.dst_node_id, MessageType.TRAIN, group_id=group_id(rnd, ADVERTISE))

    def _protocol(self, spec: RoundSpec, train: list[Message], rnd: int) -> SecAggServer:
        """The stages; returns the server state after unmask (SecAggAbort below the threshold)."""
        server = SecAggServer(spec)
        keys = self._payloads(self._exchange(train, ADVERTISE, rnd), ADVERTISE, rnd)
        share_requests = {}
        for node, r in server.receive_keys(keys).items():
            ids = sorted(r["roster"])
            roster = [r["roster"][i] for i in ids]
            share_requests[node] = {"roster-ids": ids, "roster-c": [a.c_pk for a in roster],
                                    "roster-s": [a.s_pk for a in roster], "roster-commit": [a.b_commit for a in roster],
                                    "roster-id": [a.id_pk for a in roster], "roster-sig": [a.signature for a in roster],
                                    "vector-names": sorted(r["vectors"]),
                                    **{COHORT_PREFIX + name: m for name, m in r["vectors"].items()}}
        replies = self._payloads(self._exchange(self._query(share_requests, SHARE, rnd), SHARE, rnd), SHARE, rnd)
        shares = {}
        for node, p in replies.items():
            if len(p["receivers"]) != len(p["ciphertexts"]):
                self.traffic.rejected["malformed"] += 1
                continue
            shares[node] = dict(zip(p["receivers"], p["ciphertexts"], strict=True))
        mask_requests = {}
        for node, r in server.receive_shares(shares).items():
            senders = sorted(r["ciphertexts"])
            mask_requests[node] = {"u2": r["u2"], "senders": senders,
                                   "ciphertexts": [r["ciphertexts"][s] for s in senders],
                                   "vector-names": sorted(r["cohorts"]),
                                   **{COHORT_PREFIX + name: m for name, m in r["cohorts"].items()}}
        masked = {}
        for node, msg in self._exchange(self._query(mask_requests, MASK, rnd), MASK, rnd).items():
            try:
                read_config(msg.content.config_records.get(CONFIG, ConfigRecord()), MASK, rnd, "reply")
                arrays: Mapping[str, Any] = msg.content.array_records.get(ARRAYS, {})
                masked[node] = read_vectors(arrays, server.expected_vectors(node))
            except ProtocolError as exc:
                self.traffic.rejected["foreign-round" if isinstance(exc, StaleMessage) else "malformed"] += 1
                log.warning("secure round %d: node %d masked input rejected (%s)", rnd, node, exc)
        next_requests = server.receive_masked(masked)
        if spec.identities:  # every survivor signs the list; the unmask request carries all the signatures
            asked = {n: {"survivors": r["survivors"]} for n, r in next_requests.items()}
            signed = self._payloads(self._exchange(self._query(asked, CONSISTENCY, rnd), CONSISTENCY, rnd),
                                    CONSISTENCY, rnd)
            unmask_requests = {}
            for node, r in server.receive_signatures({n: p["signature"] for n, p in signed.items()}).items():
                signers = sorted(r["signatures"])
                unmask_requests[node] = {"survivors": r["survivors"], "dropped": r["dropped"], "signers": signers,
                                         "signatures": [r["signatures"][s] for s in signers]}
        else:
            unmask_requests = {n: {**r, "signers": [], "signatures": []} for n, r in next_requests.items()}
        revealed = {}
        for node, p in self._payloads(self._exchange(self._query(unmask_requests, UNMASK, rnd), UNMASK, rnd),
                                      UNMASK, rnd).items():
            if len(p["owners"]) == len(p["names"]) == len(p["shares"]):
                revealed[node] = dict(zip(zip(p["owners"], p["names"], strict=True), p["shares"], strict=True))
            else:
                self.traffic.rejected["malformed"] += 1
        server.receive_unmask(revealed)
        self.traffic.rejected.update(server.rejected)
        return server

    def _aggregate(self, strategy: AdapterBankStrategy, layouts: Mapping[str, BankLayout],
                   totals: Mapping[str, np.ndarray], cohort: int, shares: Mapping[str, int],
                   uploads: Mapping[str, int]) -> BankAggregate:
        """Decoded sums -> per-bank means of the banks with enough contributors (central DP: noised sums;
        distributed DP: a bank with fewer contributors than its t carries too little noise and is held back).
        A bank whose weight or contributor total no honest cohort could produce (`slots_problem`; `uploads`: the
        clients whose vector went into each sum) is not applied and counts as rejected "implausible-sum"."""
        fixed = self.settings.fixed_point(cohort)
        decoded = {name: fixed.decode(total) for name, total in totals.items()}
        sums = split_totals(self.settings.mode, layouts, decoded) if decoded else {}  # hidden: withheld
        agg = BankAggregate()
        for bank, bank_sum in sorted(sums.items()):
            uploaded = uploads.get(HIDDEN_VECTOR, uploads.get(bank, 0))
            problem = slots_problem(bank_sum, uploaded, self.settings.max_weight)
            if problem:  # forged slots (a modified client): e.g. a negative divisor would flip the bank's mean
                log.warning("bank %s not applied: its summed slots are impossible (%s)", bank, problem)
                self.traffic.rejected["implausible-sum"] += 1
                continue
            if bank_sum.contributors <= 0:
                continue
            agg.contributors[bank] = bank_sum.contributors
            agg.examples[bank] = bank_sum.weight
            if bank != GLOBAL and bank_sum.contributors < self.settings.min_segment_clients:
                agg.fallback.append(bank)
                continue
            if bank_sum.contributors < shares.get(bank, 0):
                agg.noise_short.append(bank)
                continue
            total = bank_sum.sums
            dp = self.settings.dp
            divisor, keys = bank_sum.weight, list(layouts[bank].keys)
            if dp is not None and dp.user_level:  # common/privacy/user_level.py: noise, q x population, no frozen key
                total = central_user_noise(total, dp, self.rng) if dp.mode != DISTRIBUTED else total
                divisor = fixed_denominator(dp.user_rate, bank_sum.weight)
                keys = [k for k in keys if k not in FROZEN_KEYS]
            elif dp is not None and dp.mode != DISTRIBUTED:
                total = central_noise(total, dp, self.rng)
            bank_arrays = strategy.banks[bank]
            agg.mean_deltas[bank] = {k: (np.asarray(total[k]) / divisor).astype(bank_arrays[k].dtype) for k in keys}
        return agg


def hidden_view(cohort: list[ClientInfo], strategy: AdapterBankStrategy) -> list[ClientInfo]:
    """segment-hidden: the cohort as the strategy must address it, every client holding every segment bank
    (the server does not know which are its own; the client picks them)."""
    every = tuple(sorted(b for b in strategy.banks if b != GLOBAL))
    return [replace(c, segments=every) for c in cohort]
