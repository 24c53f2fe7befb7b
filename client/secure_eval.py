"""Client side of a secure evaluation round (server/secure_eval.py drives it; common/secagg/evaluation.py says
why and what is summed).

The EVALUATE message starts the round as a train message starts a training round (client/secure.py): the client
evaluates the banks it received (segment-hidden: only its own among them), turns its sums into the round's
ROW vectors, encodes them and keeps them in its node state; the reply carries only public keys (signed with its
identity key under `secagg-identities`). The later stages are the ordinary share-keys, masked-input, consistency
(with identities) and unmask queries (client/secure.py answer_stage), held to the evaluation's own rules
(`eval_rules`: every row's surviving members at least `eval_min_members`, none exempt, checked at masked input
and again at unmask) and ring (EVAL_BITS); its signatures name the evaluation purpose, so none can be replayed
in the training round of the same number. With secure aggregation on, a plain EVALUATE message is refused:
evaluation sums never leave the node in the clear.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from client.secure import INPUT_RECORD, MAX_COHORT, PURPOSE_RECORD, STATE_RECORD, own_banks, reply_content, stage_of
from common.federation.records import from_record
from common.protocol import ARRAYS, CONFIG, FedConfig
from common.secagg import client as protocol
from common.secagg.errors import ProtocolError
from common.secagg.evaluation import PURPOSE, eval_fixed_point, eval_min_members, eval_vectors
from common.secagg.layout import SEGMENT_HIDDEN
from common.secagg.wire import COHORT_SIZE

# What evaluates: the received banks the client uses -> its per-segment sums (client/app.py: task.local_evaluate).
Evaluator = Callable[[dict[str, np.ndarray]], Mapping[str, float]]


def eval_rules(cfg: FedConfig) -> protocol.Rules:
    """What a client holds an evaluation round to, from its own configuration: the run's mask graph and
    threshold, and every row (OVERALL included) over at least `eval_min_members` surviving clients."""
    return protocol.Rules(cfg.secagg_degree, cfg.secagg_threshold_fraction, eval_min_members(cfg))


def evaluate_and_advertise(msg: Message, context: Context, cfg: FedConfig, own: Collection[str],
                           segments: Collection[str], evaluate: Evaluator, identity: bytes | None = None) -> Message:
    """Stage 1 of a secure evaluation: evaluate, keep the encoded rows in the node state, reply with keys.
    `own`: the client's adapter names (hidden mode evaluates only those); `segments`: its segment banks (the rows
    it uploads in segment mode); `identity`: its identity key, which a run with secagg-identities requires."""
    stage = stage_of(msg)
    if stage is None or stage[0] != protocol.ADVERTISE:
        raise ProtocolError(f"this run uses secure-aggregation={cfg.secure_aggregation}: an evaluate message must "
                            "start a secure round; no evaluation sums are sent in the clear")
    rnd = stage[1]
    config = dict(msg.content.config_records[CONFIG])
    cohort = config.get(COHORT_SIZE)
    if isinstance(cohort, bool) or not isinstance(cohort, int) or not 2 <= cohort <= MAX_COHORT:
        raise ProtocolError(f"{COHORT_SIZE}={cohort!r} is not an integer in [2, {MAX_COHORT}]")
    if ARRAYS not in msg.content.array_records:
        raise ProtocolError("the secure evaluate message has no arrays")
    received = from_record(msg.content.array_records[ARRAYS])
    banks = own_banks(own, received) if cfg.secure_aggregation == SEGMENT_HIDDEN else received
    vectors = eval_vectors(cfg.secure_aggregation, evaluate(banks), segments)
    fixed = eval_fixed_point(cfg, cohort)
    if cfg.secagg_identities and identity is None:
        raise ProtocolError("secagg-identities is set but this client has no identity key")
    state, keys = protocol.advertise(msg.metadata.dst_node_id, msg.metadata.run_id, rnd, sorted(vectors), identity,
                                     purpose=PURPOSE)
    state.rules = eval_rules(cfg)
    context.state[STATE_RECORD] = ConfigRecord(state.to_record())
    context.state[INPUT_RECORD] = ArrayRecord({name: Array(fixed.encode(v)) for name, v in vectors.items()})
    context.state[PURPOSE_RECORD] = ConfigRecord({"purpose": PURPOSE})
    return Message(reply_content(protocol.ADVERTISE, rnd, keys), reply_to=msg)
