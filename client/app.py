"""The ClientApp: thin Flower handlers around `common.federation.task` (which holds the ML and never imports Flower).

Each handler reads the typed run config with its node's own settings (`node_settings`), gets the
per-process cached model and data, runs one job, packs the reply and passes it through `check_outgoing`
before returning it: a reply that would carry anything but this round's adapter tensors raises instead of
being sent (secure-aggregation replies are checked field by field in common/secagg/wire.py).

- query: reports the node's partition id, segment adapter names and example counts per bank; the server asks
  once per run, the first time it samples the node (it needs them to route segment adapters and to bound
  aggregation weights; see server/strategy.py for what that reveals).
- train: loads the received global + segment adapters, trains locally, replies with the DELTA and the
  training pairs per bank.
- evaluate: loads the received adapters, ranks each user's held-out item, replies with per-segment sums (with
  secure aggregation on, the sums leave the node only masked, in a secure round of their own:
  client/secure_eval.py). With run config `eval-in-train` the server folds this into the next round's train
  message instead: the train config says `eval-in-train`, and the train reply carries the same sums, computed on
  the received state before training, in its `eval-metrics` record (one message per node per round).

With `secure-aggregation` on (client/secure.py), train starts a secure round and the query handler also
answers its later stages; the update leaves the node only masked. In segment-hidden mode the node registers
without its segments, trains and evaluates only its own banks among all it receives, and uploads evaluation
sums only overall.

Node config (`flower-supernode --node-config`, set per node; the server cannot read it): `partition-id` and
`num-partitions` always; in a deployment also `data-dir` (a folder holding only this node's users, used
whole) and `client-state-dir` (where the node keeps its anonymization secret and, under cache/, its disk cache of
frozen-weight results: common/federation/node_cache.py), and `node-cache-mb` (that cache's bound). They override
the run config's values, which describe the simulation's shared folder and cannot know a remote node's disk.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from client import secure, secure_eval
from client.guard import check_outgoing
from common.federation import task
from common.federation.records import from_record, to_record
from common.names import bank_of
from common.privacy.dp import DISTRIBUTED, privatize_update
from common.protocol import (
    ARRAYS,
    CONFIG,
    EVAL_IN_TRAIN,
    EVAL_RECORD,
    EVAL_SKIP,
    METRICS,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    PARTITION_ID,
    SEGMENTS,
    FedConfig,
    RoundHParams,
    bank_examples_key,
    parse_dp_shares,
)
from common.secagg.layout import OFF, SEGMENT_HIDDEN

log = logging.getLogger(__name__)

app = ClientApp()


def node_partition(context: Context) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config Flower's simulation sets per SuperNode."""
    try:
        pid = int(context.node_config[PARTITION_ID])
        num = int(context.node_config[NUM_PARTITIONS])
    except KeyError as exc:
        raise ValueError(f"node config lacks {exc}; start SuperNodes with --node-config 'partition-id=.. "
                         "num-partitions=..'") from exc
    if not 0 <= pid < num:
        raise ValueError(f"partition-id {pid} is outside [0, {num})")
    return pid, num


# node-config keys that override the run config (secagg-identities: so that the server cannot switch the
# identity checks off or name another registry; node-cache-mb: the node's own disk, not the server's to fill)
NODE_OWN_KEYS = ("data-dir", "client-state-dir", "secagg-identities", "node-cache-mb")


def node_settings(context: Context) -> tuple[FedConfig, task.ClientData]:
    """The run config with the node's own data-dir / client-state-dir (node config), and the node's data:
    its shard of the shared folder, or its whole own folder when the node config names one."""
    pid, num = node_partition(context)
    own = {key: str(context.node_config[key]) for key in NODE_OWN_KEYS if key in context.node_config}
    cfg = FedConfig.from_run_config({**context.run_config, **own})
    return cfg, task.client_data(cfg, pid, num, own_data="data-dir" in own)


def received_arrays(msg: Message) -> dict[str, np.ndarray]:
    """The adapter arrays of a server message; a message without them is refused with the reason (the server
    is checked too: a client never trains on what it cannot read)."""
    if ARRAYS not in msg.content.array_records:
        raise ValueError(f"server {msg.metadata.message_type} message has no {ARRAYS!r} record")
    try:
        return from_record(msg.content.array_records[ARRAYS])
    except (ValueError, TypeError, EOFError, OSError) as exc:
        raise ValueError(f"server message arrays do not decode: {exc}") from exc


def _reply(msg: Message, content: RecordDict, sent: dict[str, np.ndarray]) -> Message:
    check_outgoing(content, {key: tuple(value.shape) for key, value in sent.items()})
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, data = node_settings(context)
    if secure.stage_of(msg) is not None:  # a secure round's share-keys, masked-input or unmask stage
        return secure.answer_stage(msg, context, cfg, secure.node_identity(cfg, node_partition(context)[0]))
    fields: dict[str, Any] = {PARTITION_ID: data.partition_id, SEGMENTS: data.segment_names,
                              **task.registration(cfg, data)}
    if cfg.secure_aggregation == SEGMENT_HIDDEN:
        fields = secure.hidden_registration(fields)
    return _reply(msg, RecordDict({CONFIG: ConfigRecord(fields)}), {})


def _trained(cfg: FedConfig, data: task.ClientData, mine: dict[str, np.ndarray], hp: RoundHParams
             ) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    result = task.local_train(cfg, data, mine, hp)
    return result.delta, result.bank_examples


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, data = node_settings(context)
    if cfg.secure_aggregation != OFF:  # train, then the update leaves only masked (client/secure.py)
        return secure.train_and_advertise(msg, context, cfg, data.adapter_names,
                                          lambda mine, hp: _trained(cfg, data, mine, hp),
                                          secure.node_identity(cfg, data.partition_id))
    sent = received_arrays(msg)
    config = msg.content.config_records[CONFIG] if CONFIG in msg.content.config_records else {}
    hparams = RoundHParams.from_config(dict(config), cfg)
    folded = _evaluate_received(cfg, data, sent, dict(config))  # before training: the state as received
    result = task.local_train(cfg, data, sent, hparams)
    delta = _dp_share(cfg, result.delta, dict(config), node_partition(context)[1])
    counts = {bank_examples_key(bank): n for bank, n in result.bank_examples.items()}
    metrics = MetricRecord({NUM_EXAMPLES: result.num_examples, **counts, **dict(result.metrics)})
    content = RecordDict({ARRAYS: to_record(delta), METRICS: metrics})
    if folded is not None:
        content[EVAL_RECORD] = MetricRecord(dict[str, MetricRecordValues](folded))
    return _reply(msg, content, sent)


def _evaluate_received(cfg: FedConfig, data: task.ClientData, sent: dict[str, np.ndarray], config: dict[str, Any]
                       ) -> dict[str, float] | None:
    """eval-in-train (server/app.py): when the train config asks, the evaluation an evaluate message would have
    asked for, on the received state, routed only through the banks the server serves (`eval-skip` names the
    held-back ones among those sent). None when not asked."""
    if config.get(EVAL_IN_TRAIN) is not True:
        return None
    skip = config.get(EVAL_SKIP, [])
    if not isinstance(skip, list) or not all(isinstance(name, str) for name in skip):
        raise ValueError(f"train config {EVAL_SKIP}={skip!r} is not a list of bank names")
    return task.local_evaluate(cfg, data, {k: v for k, v in sent.items() if bank_of(k) not in set(skip)})


def _dp_share(cfg: FedConfig, delta: dict[str, np.ndarray], config: dict[str, Any], nodes: int
              ) -> dict[str, np.ndarray]:
    """Distributed DP (common/privacy/dp.py): the whole update clipped, plus this client's noise share per bank
    (t from the train config, at most the federation's `nodes`), drawn from OS entropy. Otherwise as trained."""
    if not cfg.dp.enabled or cfg.dp.mode != DISTRIBUTED:
        return delta
    shares = parse_dp_shares(config, {bank_of(key) for key in delta}, nodes)
    return privatize_update(delta, cfg.dp, shares, np.random.default_rng())


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, data = node_settings(context)
    if cfg.secure_aggregation != OFF:  # the sums leave only masked, summed over the cohort (client/secure_eval.py)
        return secure_eval.evaluate_and_advertise(msg, context, cfg, data.adapter_names, data.segment_names,
                                                  lambda banks: task.local_evaluate(cfg, data, banks),
                                                  secure.node_identity(cfg, data.partition_id))
    sent = received_arrays(msg)
    sums = task.local_evaluate(cfg, data, sent)
    content = RecordDict({METRICS: MetricRecord(dict[str, MetricRecordValues](sums))})
    return _reply(msg, content, sent)
