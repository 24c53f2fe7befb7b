"""What a client does in a round, without Flower: build/cache model and data, train, evaluate, compute deltas.

The Flower handlers in client/app.py call these functions; tests call them directly. State crosses this
boundary as `{"<adapter name>::<param path>": np.ndarray}`, the same flat keys A's adapter library uses.

The architecture is the run config's `arch`; everything here goes through its `FederatedArch`
(common/federation/arch.py: the text two-tower in text_task.py, the seq hybrid in seq_task.py), which all
speak the same flat bank state, so nothing here knows which model it drives.

Routing on a client: each user (and each training pair, whose season is the season of that interaction) is
routed through global + its own segment adapters among those the server sent. The client's adapter set is the
union of those segments (common/federation/client_data.py); the server sends all of them for training and only
the ones it serves for evaluation, and routing never uses an adapter that is not in the message, so a worker
process that serves several virtual clients never routes through another client's leftover adapter weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.federation import lower_states
from common.federation.arch import arch_for, arch_of
from common.federation.backbones import BACKBONES, backbone_for
from common.federation.client_data import ClientData, client_data
from common.federation.round_io import TrainResult, received_banks
from common.federation.text_task import MODELS, adapter_config, bank_example_counts, model_for, new_model
from common.names import GLOBAL, OVERALL, split_segment_name
from common.protocol import (
    EVAL_METRICS,
    EVAL_USERS,
    TRAIN_LOSS,
    FedConfig,
    RoundHParams,
    bank_examples_key,
    metric_key,
)
from common.rec.user_record import RecordLike
from common.threads import PLAN

log = logging.getLogger(__name__)

# The text arch's model cache and builders stay importable from here for the callers that tune the text model
# itself (benchmarks, tests); everything arch-independent below goes through `arch_for`.
__all__ = ["BACKBONES", "MODELS", "ClientData", "adapter_config", "backbone_for", "bank_example_counts",
           "client_data", "local_evaluate", "local_train", "model_for", "new_model", "initial_state"]

Arrays = dict[str, np.ndarray]
EVAL_KS = (10,)


def adapter_arrays(model: Any, names: Sequence[str]) -> Arrays:
    """Trainable bank tensors of `names` as float32 numpy arrays (copies), for a model of any arch."""
    return arch_of(model).state(model, names)


def train_records(cfg: FedConfig, data: ClientData) -> list[RecordLike]:
    """The records a client trains on under max-train-users (seq: users with two or more training positives)."""
    return arch_for(cfg.arch).train_records(cfg, data)


def train_counts(cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
    """Examples per bank: training pairs (text) or training targets (seq)."""
    return arch_for(cfg.arch).train_counts(cfg, records)


def registration(cfg: FedConfig, data: ClientData) -> dict[str, int]:
    """What a client registers: its examples per bank (the most any train reply may claim) and its
    evaluation users, both for the records it really uses under max-train-users / max-eval-users."""
    counts = train_counts(cfg, train_records(cfg, data))
    out = {bank_examples_key(b): counts.get(b, 0) for b in data.adapter_names}
    out[EVAL_USERS] = len(data.eval_records(cfg.max_eval_users))
    return out


def load_received(model: Any, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
    """Make sure `names` exist, load exactly their trainable tensors from `received`, route only through them.

    The received keys must be the complete trainable state of `names`: a partial load would leave a stale
    tensor from another virtual client in place. Adapters not in `names` (another virtual client's, or a
    segment the server held back) are not routed through.
    """
    arch_of(model).load_state(model, names, received)


def initial_state(cfg: FedConfig, names: Sequence[str]) -> Arrays:
    """The starting adapter state for `names` (identity at init; seeded, so every run starts the same).

    Built on a fresh model, never the per-process cached one: that one holds whatever a client trained last.
    For seq the catalog comes from `data-dir` (the party calling this knows it, the server included).
    """
    return arch_for(cfg.arch).initial_state(cfg, names)


def _seed(cfg: FedConfig, server_round: int, partition_id: int) -> int:
    """A training seed per (run seed, round, client): a resumed run replays exactly the same local steps."""
    return (cfg.seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31 - 1)


def local_train(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray], hp: RoundHParams) -> TrainResult:
    """Load the received adapters, train them on the client's users, return trained - received. With user-level
    DP (dp-unit=user) the silo's round is common/privacy/user_updates.py instead: a sum of clipped user updates."""
    if cfg.dp.user_level:
        from common.privacy.user_updates import local_train_users  # torch-heavy, only under user-level DP

        return local_train_users(cfg, data, received, hp)
    PLAN.apply(cfg.client_threads, cfg.client_cpus)
    arch = arch_for(cfg.arch)
    model = arch.client_model(cfg, data.item_texts)
    names = received_banks(data, received)
    arch.load_state(model, names, received)
    records = arch.train_records(cfg, data)
    seed = _seed(cfg, hp.server_round, data.partition_id)
    reference = {k: torch.from_numpy(np.array(v)) for k, v in received.items()} if hp.proximal_mu > 0 else None
    stats = arch.train(cfg, model, records, data.item_texts, names, hp, seed, reference)
    trained = arch.state(model, names)
    lower_states.flush(model)  # what this message computed from frozen weights, for the node's next process
    delta = {k: (trained[k] - np.asarray(received[k])).astype(np.asarray(received[k]).dtype) for k in received}
    counts = arch.train_counts(cfg, records)
    metrics = {TRAIN_LOSS: float(stats["loss"]), "train-steps": float(stats.get("steps", 0.0)),
               "train-seconds": float(stats.get("seconds", 0.0))}
    return TrainResult(delta=delta, num_examples=counts.get(GLOBAL, 0),
                       bank_examples={b: counts.get(b, 0) for b in names}, metrics=metrics)


def local_evaluate(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-segment sums of ndcg@10 / hr@10 and user counts on the client's held-out test items.

    Sums (not means) so that the server can pool clients exactly: mean = sum over clients / users.
    """
    PLAN.apply(cfg.client_threads, cfg.client_cpus)
    arch = arch_for(cfg.arch)
    model = arch.client_model(cfg, data.item_texts)
    arch.load_state(model, received_banks(data, received), received)
    records = data.eval_records(cfg.max_eval_users)
    result = arch.evaluate(model, records, data.item_texts, ks=EVAL_KS)
    lower_states.flush(model)
    sums: dict[str, float] = {EVAL_USERS: float(len(records))}
    rows = {OVERALL: dict(result[OVERALL], users=float(len(records)))}  # type: ignore[call-overload]
    keys = cfg.segment_key_tuple
    rows.update({label: row for label, row in result["segments"].items()  # type: ignore[attr-defined]
                 if split_segment_name(label)[0] in keys})
    for segment, row in rows.items():
        users = float(row["users"])
        sums[metric_key(segment, "users")] = users
        for name in EVAL_METRICS:
            sums[metric_key(segment, name)] = float(row[name]) * users
    return sums
