"""What a client does in a round, without Flower: build/cache model and data, train, evaluate, compute deltas.

The Flower handlers in client/app.py call these functions; tests call them directly. State crosses this
boundary as `{"<adapter name>::<param path>": np.ndarray}`, the same flat keys A's adapter library uses.

Routing on a client: each user (and each training pair, whose season is the season of that interaction) is
routed through global + its own segment adapters. The client's adapter set is the union of those segments
(common/federation/client_data.py), all of which the server sends, so a worker process that serves several
virtual clients never routes through another client's leftover adapter weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from common.adapters import AdapterConfig
from common.backbone import Backbone, load_backbone
from common.federation.cache import ProcessCache
from common.federation.client_data import ClientData, client_data
from common.names import GLOBAL, OVERALL
from common.protocol import (
    BATCH_SIZE,
    EVAL_USERS,
    LOCAL_EPOCHS,
    LR,
    PROXIMAL_MU,
    SERVER_ROUND,
    TRAIN_LOSS,
    FedConfig,
    metric_key,
)
from common.rec.evaluate import evaluate
from common.rec.model import RecModel, RoutingPlan
from common.rec.train import TrainConfig, train_epochs

log = logging.getLogger(__name__)

__all__ = ["ClientData", "client_data", "local_evaluate", "local_train", "model_for", "initial_state"]

Arrays = dict[str, np.ndarray]

BACKBONES: ProcessCache[Backbone] = ProcessCache("backbone", maxsize=2)
MODELS: ProcessCache[RecModel] = ProcessCache("model", maxsize=2)
EVAL_KS = (10,)


def backbone_for(path: str) -> Backbone:
    """The frozen backbone for `path` ("tiny", "" = the offline MiniLM, or a folder), loaded once per process."""
    return BACKBONES.get(path or "minilm", lambda: load_backbone(path or None))


def adapter_config(cfg: FedConfig) -> AdapterConfig:
    """The adapter config of the run; LoRA keeps A frozen and shared (FFA-LoRA) so that averaging B is exact."""
    return AdapterConfig(kind=cfg.adapter_kind, freeze_a=cfg.adapter_kind == "lora", seed=cfg.seed)


def model_for(cfg: FedConfig) -> RecModel:
    """One RecModel per process and (backbone, adapter kind, segment keys, max_len, seed).

    Injection works on a shared-weight copy of the module tree, so several adapted models can share the one
    cached backbone without their adapters stacking. Adapters for segments are added on demand.
    """
    key = (cfg.backbone, cfg.adapter_kind, cfg.adapter_segment_keys, cfg.max_len, cfg.seed)
    return MODELS.get(key, lambda: new_model(cfg, [GLOBAL]))


def new_model(cfg: FedConfig, names: Sequence[str]) -> RecModel:
    """A fresh RecModel with untrained (seeded) adapters `names` on the cached backbone."""
    plan = RoutingPlan(user_levels=(GLOBAL, *cfg.adapter_segment_keys), item_levels=(GLOBAL,))
    return RecModel(backbone_for(cfg.backbone), adapter_config(cfg), names=list(names), plan=plan, max_len=cfg.max_len)


def adapter_state(model: RecModel, names: Sequence[str]) -> Arrays:
    """Trainable adapter tensors of `names` as float32 numpy arrays (copies)."""
    assert model.adapted is not None
    state = model.adapted.adapter_state(names=list(names), trainable_only=True)
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def load_received(model: RecModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
    """Make sure `names` exist, then load exactly their trainable tensors from `received`.

    The received keys must be the complete trainable state of `names`: a partial load would leave a stale
    tensor from another virtual client in place.
    """
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
    model.item_cache.clear()


def initial_state(cfg: FedConfig, names: Sequence[str]) -> Arrays:
    """The starting adapter state for `names` (identity at init; seeded, so every run starts the same).

    Built on a fresh model, never the per-process cached one: that one holds whatever a client trained last.
    """
    return adapter_state(new_model(cfg, [GLOBAL, *[n for n in names if n != GLOBAL]]), names)


@dataclass(frozen=True)
class RoundHParams:
    """Per-round training hyper-parameters, sent by the server in the train message's config record."""

    server_round: int
    epochs: int
    batch_size: int
    lr: float
    proximal_mu: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any], cfg: FedConfig) -> RoundHParams:
        return cls(
            server_round=int(config.get(SERVER_ROUND, 0)),
            epochs=int(config.get(LOCAL_EPOCHS, cfg.local_epochs)),
            batch_size=int(config.get(BATCH_SIZE, cfg.batch_size)),
            lr=float(config.get(LR, cfg.lr)),
            proximal_mu=float(config.get(PROXIMAL_MU, cfg.proximal_mu)),
        )

    def to_config(self) -> dict[str, int | float]:
        return {SERVER_ROUND: self.server_round, LOCAL_EPOCHS: self.epochs, BATCH_SIZE: self.batch_size,
                LR: self.lr, PROXIMAL_MU: self.proximal_mu}


@dataclass
class TrainResult:
    delta: Arrays
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


def _seed(cfg: FedConfig, server_round: int, partition_id: int) -> int:
    """A training seed per (run seed, round, client): a resumed run replays exactly the same local steps."""
    return (cfg.seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31 - 1)


def local_train(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray], hp: RoundHParams) -> TrainResult:
    """Load the received adapters, train them on the client's users, return trained - received."""
    torch.set_num_threads(cfg.client_threads)
    model = model_for(cfg)
    names = data.adapter_names
    load_received(model, names, received)
    records = data.train_records(cfg.max_train_users)
    tcfg = TrainConfig(epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, max_len=cfg.max_len,
                       seed=_seed(cfg, hp.server_round, data.partition_id), prox_mu=hp.proximal_mu)
    reference = {k: torch.from_numpy(np.array(v)) for k, v in received.items()} if hp.proximal_mu > 0 else None
    stats = train_epochs(model, records, data.item_texts, tcfg, names, reference_state=reference)
    trained = adapter_state(model, names)
    delta = {k: (trained[k] - np.asarray(received[k])).astype(np.asarray(received[k]).dtype) for k in received}
    num_examples = int(stats.get("num_examples", len(records)))
    metrics = {TRAIN_LOSS: float(stats["loss"]), "train-steps": float(stats.get("steps", 0.0)),
               "train-seconds": float(stats.get("seconds", 0.0))}
    return TrainResult(delta=delta, num_examples=max(num_examples, 1), metrics=metrics)


def local_evaluate(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per-segment sums of ndcg@10 / hr@10 and user counts on the client's held-out test items.

    Sums (not means) so that the server can pool clients exactly: mean = sum over clients / users.
    """
    torch.set_num_threads(cfg.client_threads)
    model = model_for(cfg)
    load_received(model, data.adapter_names, received)
    records = data.eval_records(cfg.max_eval_users)
    result = evaluate(model, records, data.item_texts, ks=EVAL_KS)
    sums: dict[str, float] = {EVAL_USERS: float(len(records))}
    rows = {OVERALL: dict(result["overall"], users=float(len(records)))}  # type: ignore[call-overload]
    keys = cfg.segment_key_tuple
    rows.update({label: row for label, row in result["segments"].items()  # type: ignore[attr-defined]
                 if label.split("=", 1)[0] in keys})
    for segment, row in rows.items():
        users = float(row["users"])
        sums[metric_key(segment, "users")] = users
        for name in ("ndcg@10", "hr@10"):
            sums[metric_key(segment, name)] = float(row[name]) * users
    return sums
