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

from client.secure import INPUT_RECORD, PURPOSE_RECORD, STATE_RECORD, opening, own_banks, reply_content
from common.protocol import FedConfig
from common.secagg import client as protocol
from common.secagg.errors import ProtocolError
from common.secagg.evaluation import PURPOSE, eval_fixed_point, eval_min_members, eval_vectors
from common.secagg.layout import SEGMENT_HIDDEN

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
    rnd, config, cohort, received = opening(msg, cfg, "evaluate", "no evaluation sums are sent in the clear")
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
