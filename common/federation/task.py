"""What a client does in a round, without Flower: build/cache model and data, train, evaluate, compute deltas.

The Flower handlers in client/app.py call these functions; tests call them directly. State crosses this
boundary as `{"<adapter name>::<param path>": np.ndarray}`, the same flat keys A's adapter library uses.

The architecture is the run config's `arch`: "text" (the two-tower RecModel with adapter banks, here) or
"seq" (the sequential model's banks, common/federation/seq_task.py); every function below that builds, loads,
trains or scores a model dispatches on it, and both speak the same flat bank state.

Routing on a client: each user (and each training pair, whose season is the season of that interaction) is
routed through global + its own segment adapters among those the server sent. The client's adapter set is the
union of those segments (common/federation/client_data.py); the server sends all of them for training and only
the ones it serves for evaluation, and routing never uses an adapter that is not in the message, so a worker
process that serves several virtual clients never routes through another client's leftover adapter weights.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from common.adapters import AdapterConfig
from common.backbone import Backbone, load_backbone
from common.device import resolve_device
from common.federation import seq_task
from common.federation.cache import ProcessCache
from common.federation.client_data import ClientData, client_data
from common.names import GLOBAL, OVERALL, SEQ, bank_of, split_segment_name
from common.protocol import (
    EVAL_METRICS,
    EVAL_USERS,
    TRAIN_LOSS,
    FedConfig,
    RoundHParams,
    bank_examples_key,
    metric_key,
    segment_adapter_names,
)
from common.rec.evaluate import evaluate
from common.rec.model import RecModel, RoutingPlan
from common.rec.seq_model import SeqRecModel
from common.rec.train import TrainConfig, train_epochs, training_pairs
from common.rec.user_record import RecordLike
from common.threads import PLAN

log = logging.getLogger(__name__)

__all__ = ["ClientData", "client_data", "local_evaluate", "local_train", "model_for", "initial_state"]

Arrays = dict[str, np.ndarray]
BankModel = RecModel | SeqRecModel

BACKBONES: ProcessCache[Backbone] = ProcessCache("backbone", maxsize=2)
MODELS: ProcessCache[RecModel] = ProcessCache("model", maxsize=2)
EVAL_KS = (10,)


def backbone_for(path: str) -> Backbone:
    """The frozen backbone for `path` ("tiny", "" = the offline MiniLM, or a folder), loaded once per process."""
    return BACKBONES.get(path or "minilm", lambda: load_backbone(path or None))


def adapter_config(cfg: FedConfig) -> AdapterConfig:
    """The adapter config of the run; LoRA keeps A frozen and shared (FFA-LoRA) so that averaging B is exact."""
    return AdapterConfig(kind=cfg.adapter_kind, freeze_a=cfg.adapter_kind == "lora", seed=cfg.seed,
                         top_layers=cfg.adapter_layers)


def model_for(cfg: FedConfig) -> RecModel:
    """One RecModel per process and (backbone, adapter kind and layers, segment keys, max_len, seed).

    Injection works on a shared-weight copy of the module tree, so several adapted models can share the one
    cached backbone without their adapters stacking. Adapters for segments are added on demand.
    """
    key = (cfg.backbone, cfg.adapter_kind, cfg.adapter_layers, cfg.adapter_segment_keys, cfg.max_len, cfg.seed,
           cfg.lower_cache_mb)
    return MODELS.get(key, lambda: new_model(cfg, [GLOBAL]))


def new_model(cfg: FedConfig, names: Sequence[str]) -> RecModel:
    """A fresh RecModel with untrained (seeded) adapters `names` on the cached backbone."""
    plan = RoutingPlan(user_levels=(GLOBAL, *cfg.adapter_segment_keys), item_levels=(GLOBAL,))
    return RecModel(backbone_for(cfg.backbone), adapter_config(cfg), names=list(names), plan=plan, max_len=cfg.max_len,
                    lower_cache_bytes=cfg.lower_cache_mb << 20)


def adapter_arrays(model: BankModel, names: Sequence[str]) -> Arrays:
    """Trainable adapter tensors of `names` as float32 numpy arrays (copies)."""
    if isinstance(model, SeqRecModel):
        return seq_task.arrays(model, names)
    assert model.adapted is not None
    state = model.adapted.adapter_state(names=list(names), trainable_only=True)
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def received_banks(data: ClientData, received: Mapping[str, np.ndarray]) -> list[str]:
    """The banks a server message carries: global plus some of this client's own segments, nothing else.

    The server sends only the segment banks it serves (a held-back segment is left out, so its users are
    routed through the global adapter alone); a bank this client does not hold means a broken or hostile
    message, refused with the names.
    """
    banks = sorted({bank_of(k) for k in received})
    if GLOBAL not in banks:
        raise ValueError(f"server message lacks the {GLOBAL!r} adapter (banks: {banks[:5]})")
    foreign = sorted(set(banks) - set(data.adapter_names))
    if foreign:
        raise ValueError(f"server message carries adapters this client does not hold: {foreign[:5]}")
    return [GLOBAL, *[b for b in banks if b != GLOBAL]]


def bank_example_counts(records: Sequence[RecordLike], keys: tuple[str, ...]) -> dict[str, int]:
    """Training pairs per bank: every pair passes through global and the segment adapters of its own segments
    (a pair's season is the season of that interaction), so each bank is weighted by its own examples."""
    counts: Counter[str] = Counter()
    for pair in training_pairs(records):
        counts[GLOBAL] += 1
        counts.update(segment_adapter_names(pair.segments, keys))
    return dict(counts)


def train_records(cfg: FedConfig, data: ClientData) -> list[RecordLike]:
    """The records a client trains on under max-train-users (seq: users with two or more training positives)."""
    if cfg.arch == SEQ:
        return seq_task.train_records(data, cfg.max_train_users)
    return data.train_records(cfg.max_train_users)


def train_counts(cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
    """Examples per bank: training pairs (text) or training targets (seq)."""
    if cfg.arch == SEQ:
        return seq_task.counts(cfg, records)
    return bank_example_counts(records, cfg.adapter_segment_keys)


def registration(cfg: FedConfig, data: ClientData) -> dict[str, int]:
    """What a client registers: its examples per bank (the most any train reply may claim) and its
    evaluation users, both for the records it really uses under max-train-users / max-eval-users."""
    counts = train_counts(cfg, train_records(cfg, data))
    out = {bank_examples_key(b): counts.get(b, 0) for b in data.adapter_names}
    out[EVAL_USERS] = len(data.eval_records(cfg.max_eval_users))
    return out


def load_received(model: BankModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
    """Make sure `names` exist, load exactly their trainable tensors from `received`, route only through them.

    The received keys must be the complete trainable state of `names`: a partial load would leave a stale
    tensor from another virtual client in place. Adapters not in `names` (another virtual client's, or a
    segment the server held back) are not routed through.
    """
    if isinstance(model, SeqRecModel):
        seq_task.load_received(model, names, received)
        return
    assert model.adapted is not None
    for name in names:
        if name not in model.adapter_names:
            model.add_adapter(name)
    expected = set(model.adapted.adapter_state(names=list(names), trainable_only=True))
    if set(received) != expected:
        extra, missing = sorted(set(received) - expected), sorted(expected - set(received))
        raise ValueError(f"received adapter state does not match adapters {list(names)}: "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    model.adapted.load_adapter_state({k: torch.from_numpy(np.array(v)) for k, v in received.items()}, strict=True)
    model.serving = frozenset(names)
    model.item_cache.clear()


def initial_state(cfg: FedConfig, names: Sequence[str]) -> Arrays:
    """The starting adapter state for `names` (identity at init; seeded, so every run starts the same).

    Built on a fresh model, never the per-process cached one: that one holds whatever a client trained last.
    For seq the catalog comes from `data-dir` (the party calling this knows it, the server included).
    """
    if cfg.arch == SEQ:
        return seq_task.initial_state(cfg, names, backbone_for(cfg.backbone).hidden_size)
    return adapter_arrays(new_model(cfg, [GLOBAL, *[n for n in names if n != GLOBAL]]), names)


@dataclass
class TrainResult:
    """delta: trained - received per key; bank_examples: examples per bank (the aggregation weights)."""

    delta: Arrays
    num_examples: int
    bank_examples: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def _seed(cfg: FedConfig, server_round: int, partition_id: int) -> int:
    """A training seed per (run seed, round, client): a resumed run replays exactly the same local steps."""
    return (cfg.seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31 - 1)


def client_model(cfg: FedConfig, data: ClientData) -> BankModel:
    """The per-process cached model of the run's arch (seq: on this client's catalog), on the run's device."""
    model: BankModel = (seq_task.model_for(cfg, backbone_for(cfg.backbone), data.item_texts) if cfg.arch == SEQ
                        else model_for(cfg))
    device = resolve_device(cfg.device)
    if isinstance(model, RecModel):
        return model.to_device(device)
    return model.to(device)


def local_train(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray], hp: RoundHParams) -> TrainResult:
    """Load the received adapters, train them on the client's users, return trained - received."""
    PLAN.apply(cfg.client_threads, cfg.client_cpus)
    model = client_model(cfg, data)
    names = received_banks(data, received)
    load_received(model, names, received)
    records = train_records(cfg, data)
    seed = _seed(cfg, hp.server_round, data.partition_id)
    reference = {k: torch.from_numpy(np.array(v)) for k, v in received.items()} if hp.proximal_mu > 0 else None
    if isinstance(model, SeqRecModel):
        stats = seq_task.train(model, records, names, hp, seed, reference, cfg.device)
    else:
        tcfg = TrainConfig(epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, max_len=cfg.max_len, seed=seed,
                           prox_mu=hp.proximal_mu, device=cfg.device, negative_pool=cfg.negative_pool)
        stats = train_epochs(model, records, data.item_texts, tcfg, names, reference_state=reference)
    trained = adapter_arrays(model, names)
    delta = {k: (trained[k] - np.asarray(received[k])).astype(np.asarray(received[k]).dtype) for k in received}
    counts = train_counts(cfg, records)
    metrics = {TRAIN_LOSS: float(stats["loss"]), "train-steps": float(stats.get("steps", 0.0)),
               "train-seconds": float(stats.get("seconds", 0.0))}
    return TrainResult(delta=delta, num_examples=counts.get(GLOBAL, 0),
                       bank_examples={b: counts.get(b, 0) for b in names}, metrics=metrics)


def local_evaluate(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-segment sums of ndcg@10 / hr@10 and user counts on the client's held-out test items.

    Sums (not means) so that the server can pool clients exactly: mean = sum over clients / users.
    """
    PLAN.apply(cfg.client_threads, cfg.client_cpus)
    model = client_model(cfg, data)
    load_received(model, received_banks(data, received), received)
    records = data.eval_records(cfg.max_eval_users)
    if isinstance(model, SeqRecModel):
        result = seq_task.evaluate(model, records, EVAL_KS)
    else:
        result = evaluate(model, records, data.item_texts, ks=EVAL_KS)
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
