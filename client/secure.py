"""Client handlers of a secure round (server/secure.py drives it; common/secagg/client.py is the protocol).

- advertise-keys arrives as the round's TRAIN message: the client trains the banks it holds, turns the delta
  into the round's vectors (`encoded_input`; common/secagg/layout.py: each bank clipped per coordinate to
  secagg-clip-range and scaled by its weight, plus weight and contributor slots; DP: whole update clipped to
  dp-clip, weight 1, in distributed mode its noise share added, and the encoding range derived from dp-clip and
  the noise so that nothing is clipped after the noise), encodes them in Z_(2^bits) and keeps them in the node's
  `context.state` with its secrets; the reply carries only public keys and a commitment.
- share-keys, masked-input, (with identities) consistency and unmask arrive as QUERY messages and answer from
  that state; the encoded vectors leave the node only masked, and the state is dropped after unmask.
- What the client checks comes from its own configuration (`client_rules`), never from the server's requests:
  the mask graph's degree, the threshold fraction, and each vector's floor (min-segment-clients, at least 2,
  the global bank and the hidden vector exempt from min-segment-clients but never below 2; with distributed
  DP each bank's t noise shares, the hidden vector the global bank's t): a vector whose surviving members
  fall below its floor is not uploaded, or if they fall after upload its self-mask shares are withheld, so an
  under-populated or under-noised sum is never unmasked (common/secagg/client.py says how).
- With `secagg-identities` (a registry file, common/secagg/identity.py) the client signs its advertisement and
  the survivor list with its enrolled identity key and refuses to share or unmask unless every peer's
  signature verifies.

segment-hidden: the TRAIN message carries every bank of the run; the client trains only its own (the others
stay zero in its vector), registers without segment names or per-segment counts (`hidden_registration`) and
uploads evaluation sums only overall and only masked (client/secure_eval.py), so which banks are its own never
leaves it.
With secure aggregation on, a plain TRAIN message is refused: a client never sends a delta in the clear.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from common.federation.client_secret import resolve_state_dir
from common.federation.records import from_record
from common.names import GLOBAL, bank_of
from common.privacy.dp import DISTRIBUTED, clip_update, out_of_range, privatize_update
from common.privacy.user_level import os_entropy_rng, silo_input, silo_weights
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_USERS,
    PARTITION_ID,
    SEGMENTS,
    FedConfig,
    RoundHParams,
    bank_examples_key,
    parse_dp_shares,
)
from common.secagg import client as protocol
from common.secagg.errors import ProtocolError
from common.secagg.evaluation import EVAL_BITS
from common.secagg.evaluation import PURPOSE as EVAL_PURPOSE
from common.secagg.fixedpoint import FixedPoint
from common.secagg.identity import load_identity, load_registry
from common.secagg.layout import HIDDEN_VECTOR, SEGMENT, SEGMENT_HIDDEN, bank_layouts, client_vectors
from common.secagg.wire import COHORT_PREFIX, COHORT_SIZE, read_config, stage_config, stage_in

log = logging.getLogger(__name__)

STATE_RECORD = "secagg-state"  # context.state: the protocol state (secrets included) between stages
INPUT_RECORD = "secagg-input"  # context.state: the encoded vectors until they are masked
PURPOSE_RECORD = "secagg-purpose"  # context.state: {"purpose": "evaluate"} in an evaluation round (secure_eval.py)
MAX_COHORT = 100_000
# What trains: (the received tensors of the client's own banks, round hyper-parameters) ->
# (delta for exactly those keys, examples per bank). client/app.py passes task.local_train on the node's data.
Trainer = Callable[[dict[str, np.ndarray], RoundHParams], tuple[dict[str, np.ndarray], Mapping[str, int]]]


def own_banks(own: Collection[str], received: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The received tensors of the banks this client holds (segment-hidden: the server sends every bank)."""
    return {k: v for k, v in received.items() if bank_of(k) in own}


def stage_of(msg: Message) -> tuple[str, int] | None:
    """(stage, round) when a server message drives a secure stage, else None."""
    return stage_in(msg.content.config_records[CONFIG]) if CONFIG in msg.content.config_records else None


def reply_content(stage: str, server_round: int, payload: Mapping[str, Any],
                  vectors: Mapping[str, np.ndarray] | None = None) -> RecordDict:
    content = RecordDict({CONFIG: ConfigRecord(stage_config(stage, server_round, payload, "reply"))})
    if vectors is not None:
        content[ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in vectors.items()})
    return content


def hidden_registration(fields: Mapping[str, Any]) -> dict[str, Any]:
    """segment-hidden: what a node registers without its segments: no names, no per-segment counts."""
    keep = {PARTITION_ID, EVAL_USERS, bank_examples_key(GLOBAL)}
    return {**{k: v for k, v in fields.items() if k in keep}, SEGMENTS: []}


def secure_weights(cfg: FedConfig, counts: Mapping[str, int]) -> dict[str, float]:
    """Each bank's weight: its examples capped at max-client-examples; with DP 1 per bank, as in the plain path
    (server/aggregate.py dp_aggregate_banks): central counts the banks it trained, distributed every bank of its
    own it was sent (each carries its noise share, trained or not). User-level DP: the silo's user population
    per bank (common/privacy/user_level.py silo_weights)."""
    if cfg.dp.user_level:
        return silo_weights(counts, cfg.dp, cfg.dp_user_max)
    if cfg.dp.enabled:
        return {b: 1.0 for b, n in counts.items() if n > 0 or cfg.dp.mode == DISTRIBUTED}
    return {b: float(min(n, cfg.max_client_examples)) for b, n in counts.items()}


def private_delta(cfg: FedConfig, delta: Mapping[str, np.ndarray], config: Mapping[str, object], cohort: int,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """With DP: the whole update clipped to dp-clip, plus (distributed) each bank's noise share drawn from OS
    entropy unless `rng` is given (common/privacy/dp.py privatize_update; t per bank from the train message, at
    most the cohort)."""
    dp = cfg.dp
    if not dp.enabled:
        return dict(delta)
    if dp.mode != DISTRIBUTED:
        return clip_update(delta, dp.clip)[0]
    shares = parse_dp_shares(config, {bank_of(k) for k in delta}, cohort)
    return privatize_update(delta, dp, shares, rng if rng is not None else np.random.default_rng())


def encoded_input(cfg: FedConfig, received: Mapping[str, np.ndarray], raw_delta: Mapping[str, np.ndarray],
                  counts: Mapping[str, int], config: Mapping[str, object], cohort: int, rnd: int,
                  rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """A trained delta -> the round's vectors, encoded in Z_(2^bits): DP applied first (clip, then the noise
    share), then the layout's per-coordinate clip to the encoding range (cfg.secagg_encoding_range, which with DP
    is wide enough for the noise: nothing is clipped), then the fixed-point encoding.

    With DP a coordinate beyond the range (probability < 1e-32) is a ProtocolError: the client sits the round
    out rather than send clipped, non-Gaussian noise."""
    if cfg.dp.user_level:  # a silo's sum of clipped user updates: its noise share (distributed) is never clipped
        shares = (parse_dp_shares(config, {bank_of(k) for k in raw_delta}, cohort) if cfg.dp.mode == DISTRIBUTED
                  else {})
        delta = silo_input(raw_delta, secure_weights(cfg, counts), cfg.dp, shares,
                           rng if rng is not None else os_entropy_rng())
    else:
        delta = private_delta(cfg, raw_delta, config, cohort, rng)
    bound = cfg.secagg_encoding_range
    outside = out_of_range(delta, bound)
    if outside and cfg.dp.enabled:
        raise ProtocolError(f"secure round {rnd}: {outside} privatized coordinate(s) beyond the encoding range "
                            f"+-{bound:g}; not clipping noise, this client sits the round out")
    if outside:
        log.warning("secure round %d: %d delta coordinate(s) clipped to +-%g", rnd, outside, bound)
    vectors = client_vectors(cfg.secure_aggregation, bank_layouts(received), delta, secure_weights(cfg, counts),
                             bound)
    fixed = FixedPoint(cfg.secagg_bits, bound, cfg.secagg_max_weight, cohort)
    return {name: fixed.encode(v) for name, v in vectors.items()}


def node_identity(cfg: FedConfig, partition_id: int) -> bytes | None:
    """This node's enrolled identity key (from its state folder) when the run uses secagg-identities."""
    if not cfg.secagg_identities:
        return None
    return load_identity(resolve_state_dir(cfg.client_state_dir, cfg.data_dir), partition_id)


def client_rules(cfg: FedConfig, config: Mapping[str, object], banks: Collection[str], cohort: int
                 ) -> protocol.Rules:
    """The rules this client holds the round to, from its own run config and (distributed DP) the t of each
    bank it was sent: a bank's vector needs t surviving members (segment mode); the hidden vector, which
    carries the global bank summed over every member, needs the global bank's t."""
    floors: dict[str, int] = {}
    if cfg.dp.enabled and cfg.dp.mode == DISTRIBUTED:
        shares = parse_dp_shares(config, banks, cohort)
        floors = dict(shares) if cfg.secure_aggregation == SEGMENT else {HIDDEN_VECTOR: shares.get(GLOBAL, 0)}
    return protocol.Rules(cfg.secagg_degree, cfg.secagg_threshold_fraction, cfg.min_segment_clients,
                          (GLOBAL, HIDDEN_VECTOR), floors)


def opening(msg: Message, cfg: FedConfig, kind: str, refusal: str
            ) -> tuple[int, dict[str, Any], int, dict[str, np.ndarray]]:
    """Stage 1 of a secure round (train or evaluate): (round, config, cohort size, received banks); a message that
    does not open a secure round, a bad cohort size or missing arrays are refused with the reason."""
    stage = stage_of(msg)
    if stage is None or stage[0] != protocol.ADVERTISE:
        raise ProtocolError(f"this run uses secure-aggregation={cfg.secure_aggregation}: a {kind} message must start "
                            f"a secure round; {refusal}")
    config = dict(msg.content.config_records[CONFIG])
    cohort = config.get(COHORT_SIZE)
    if isinstance(cohort, bool) or not isinstance(cohort, int) or not 2 <= cohort <= MAX_COHORT:
        raise ProtocolError(f"{COHORT_SIZE}={cohort!r} is not an integer in [2, {MAX_COHORT}]")
    if ARRAYS not in msg.content.array_records:
        raise ProtocolError(f"the secure {kind} message has no arrays")
    return stage[1], config, cohort, from_record(msg.content.array_records[ARRAYS])


def train_and_advertise(msg: Message, context: Context, cfg: FedConfig, own: Collection[str], train: Trainer,
                        identity: bytes | None = None) -> Message:
    """Stage 1: train the banks in `own` that were sent, keep the encoded vectors in the node state, reply
    with public keys (signed with `identity`, which a run with secagg-identities requires)."""
    rnd, config, cohort, received = opening(msg, cfg, "train", "no plain delta is sent")
    mine = own_banks(own, received) if cfg.secure_aggregation == SEGMENT_HIDDEN else received
    raw_delta, counts = train(mine, RoundHParams.from_config(config, cfg))
    encoded = encoded_input(cfg, received, raw_delta, counts, config, cohort, rnd)
    if cfg.secagg_identities and identity is None:
        raise ProtocolError("secagg-identities is set but this client has no identity key")
    state, keys = protocol.advertise(msg.metadata.dst_node_id, msg.metadata.run_id, rnd, sorted(encoded), identity)
    state.rules = client_rules(cfg, config, {bank_of(k) for k in received}, cohort)
    context.state[STATE_RECORD] = ConfigRecord(state.to_record())
    context.state[INPUT_RECORD] = ArrayRecord({name: Array(v) for name, v in encoded.items()})
    context.state[PURPOSE_RECORD] = ConfigRecord({"purpose": "train"})
    return Message(reply_content(protocol.ADVERTISE, rnd, keys), reply_to=msg)


def answer_stage(msg: Message, context: Context, cfg: FedConfig, identity: bytes | None = None) -> Message:
    """Stages 2-4 from the node state; ProtocolError (sent back as an error reply) on anything inconsistent.
    With secagg-identities, the registry is read from the node's disk at share-keys and `identity` signs the
    survivor list."""
    stage_round = stage_of(msg)
    assert stage_round is not None
    stage, rnd = stage_round
    if stage == protocol.ADVERTISE:
        raise ProtocolError("advertise-keys comes as a train message, not a query")
    payload = read_config(msg.content.config_records[CONFIG], stage, rnd, "request")
    if STATE_RECORD not in context.state.config_records:
        raise ProtocolError(f"{stage} for round {rnd}, but this node has no secure round in progress")
    state = protocol.ClientState.from_record(context.state.config_records[STATE_RECORD])
    if stage == protocol.SHARE:
        content = _share_keys(state, rnd, payload, cfg)
    elif stage == protocol.MASK:
        content = _masked_input(state, rnd, payload, context, cfg)
    elif stage == protocol.CONSISTENCY:
        if identity is None:
            raise ProtocolError("consistency stage, but this client has no identity key")
        signature = protocol.consistency(state, rnd, payload["survivors"], identity)
        content = reply_content(stage, rnd, {"signature": signature})
    else:
        signers, sigs = payload["signers"], payload["signatures"]
        if len(signers) != len(sigs):
            raise ProtocolError("signers and signatures differ in length")
        shares = protocol.unmask(state, rnd, payload["survivors"], payload["dropped"],
                                 dict(zip(signers, sigs, strict=True)))
        if state.withheld:
            log.warning("secure round %d: self-mask shares of %s withheld (too few surviving members or a "
                        "disconnected mask graph)", rnd, list(state.withheld))
        keys = sorted(shares)
        content = reply_content(stage, rnd, {"owners": [o for o, _ in keys], "names": [n for _, n in keys],
                                             "shares": [shares[k] for k in keys]})
        del context.state[STATE_RECORD]
        return Message(content, reply_to=msg)
    context.state[STATE_RECORD] = ConfigRecord(state.to_record())
    return Message(content, reply_to=msg)


def _share_keys(state: protocol.ClientState, rnd: int, payload: Mapping[str, Any], cfg: FedConfig) -> RecordDict:
    columns = [payload[k] for k in ("roster-ids", "roster-c", "roster-s", "roster-commit", "roster-id", "roster-sig")]
    if len({len(c) for c in columns}) != 1:
        raise ProtocolError("roster fields differ in length")
    roster = {node: protocol.Advert(*rest) for node, *rest in zip(*columns, strict=True)}
    vectors = {name: payload.get(COHORT_PREFIX + name, []) for name in payload["vector-names"]}
    registry = load_registry(cfg.secagg_identities) if cfg.secagg_identities else None
    out = protocol.share_keys(state, rnd, roster, vectors, state.rules, registry)
    return reply_content(protocol.SHARE, rnd, {"receivers": sorted(out), "ciphertexts": [out[r] for r in sorted(out)]})


def _masked_input(state: protocol.ClientState, rnd: int, payload: Mapping[str, Any], context: Context,
                  cfg: FedConfig) -> RecordDict:
    if len(payload["senders"]) != len(payload["ciphertexts"]):
        raise ProtocolError("senders and ciphertexts differ in length")
    ciphertexts = dict(zip(payload["senders"], payload["ciphertexts"], strict=True))
    names = list(payload["vector-names"])
    cohorts = {name: payload.get(COHORT_PREFIX + name, []) for name in names}
    if INPUT_RECORD not in context.state.array_records:
        raise ProtocolError("no encoded input waiting for masked-input")
    vectors = {k: a.numpy() for k, a in context.state.array_records[INPUT_RECORD].items()}
    purpose = context.state.config_records.get(PURPOSE_RECORD, ConfigRecord()).get("purpose")
    bits = EVAL_BITS if purpose == EVAL_PURPOSE else cfg.secagg_bits  # evaluation sums: a 64-bit ring
    masked = protocol.masked_input(state, rnd, ciphertexts, payload["u2"], vectors, cohorts, bits)
    del context.state[INPUT_RECORD]
    wire = np.uint32 if bits <= 32 else np.uint64
    return reply_content(protocol.MASK, rnd, {}, {k: v.astype(wire) for k, v in masked.items()})
