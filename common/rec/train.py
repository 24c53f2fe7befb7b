"""Central training and evaluation of a `RecModel`: what a client runs locally and the baselines run centrally.

Training is a softmax over in-batch positives plus shared sampled negatives (each user's positive is the
label; other users' positives and the sampled items are its negatives; items the user already interacted
with are masked so they never act as negatives). Only the parameters of `trainable_names` enter the
optimizer. When the item tower's adapters are not being trained (e.g. segment adapters on top of a fixed
global one), item vectors come from the cache without gradients, which halves the cost of a step.

Everything stays in eval mode: the backbone is frozen and dropout would make a fixed seed non-reproducible;
adapters are small enough that we regularise them by the proximal term and early stopping instead.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from common.rec.metrics import PopularityScorer, aggregate, sampled_metrics, served_by_segment_adapter
from common.rec.model import RecModel, Routing, routing_signature

log = logging.getLogger(__name__)

SPLITS = ("test", "valid")


class RecordLike(Protocol):
    """The fields of `common.data.examples.UserRecord` that training and evaluation read."""

    user_id: str
    segments: dict[str, str]
    context_text: str
    train_positives: list[str]
    valid_item: str
    test_item: str
    valid_negatives: list[str]
    test_negatives: list[str]


@dataclass
class TrainConfig:
    """Local training hyper-parameters (the same object drives central baselines and federated clients)."""

    epochs: int = 1
    batch_size: int = 32  # users per step; also the in-batch negatives each positive sees
    lr: float = 1e-3  # adapters start at identity and are small: a higher rate than full fine-tuning
    max_len: int = 64  # tokens per text; user contexts are truncated from the right
    negatives: int = 32  # shared sampled catalog negatives per step, on top of the in-batch ones
    pairs_per_user: int = 2  # positives drawn per user per epoch (without replacement)
    seed: int = 0
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_ref||^2, used only when a reference state is given
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_len", "pairs_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.prox_mu < 0:
            raise ValueError(f"prox_mu must be >= 0, got {self.prox_mu}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _training_pairs(records: Sequence[RecordLike], cfg: TrainConfig, rng: np.random.Generator) -> list[tuple[int, str]]:
    pairs: list[tuple[int, str]] = []
    for u, rec in enumerate(records):
        positives = list(dict.fromkeys(rec.train_positives))
        if not positives:
            continue
        take = min(cfg.pairs_per_user, len(positives))
        for j in rng.choice(len(positives), size=take, replace=False):
            pairs.append((u, positives[int(j)]))
    return pairs


def _batches(
    model: RecModel, records: Sequence[RecordLike], pairs: list[tuple[int, str]], cfg: TrainConfig,
    rng: np.random.Generator,
) -> list[tuple[tuple[str, ...], list[tuple[int, str]]]]:
    """Shuffled batches; users in one batch share their item-tower routing so candidates encode once."""
    groups: dict[tuple[str, ...], list[tuple[int, str]]] = defaultdict(list)
    for pair in pairs:
        segs = [records[pair[0]].segments]
        groups[routing_signature(model.item_routing(segs), 0)].append(pair)
    batches = []
    for names in sorted(groups):
        members = groups[names]
        order = rng.permutation(len(members))
        for start in range(0, len(members), cfg.batch_size):
            batches.append((names, [members[int(i)] for i in order[start : start + cfg.batch_size]]))
    return [batches[int(i)] for i in rng.permutation(len(batches))]


def _named_trainable(model: RecModel, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """State keys ("<adapter>::<path>") of the trainable adapter parameters, mapped to the live parameters."""
    if model.adapted is None or not names:
        return {}
    live = {p.data_ptr(): p for p in model.adapted.trainable_parameters(list(names))}
    state = model.adapted.adapter_state(names=list(names), trainable_only=True)
    return {key: live[t.data_ptr()] for key, t in state.items() if t.data_ptr() in live}


def _prox_term(named: Mapping[str, torch.nn.Parameter], reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for key, param in named.items():
        if key in reference:
            total = total + (param - reference[key].to(param.dtype)).pow(2).sum()
    return total


def train_epochs(
    model: RecModel,
    records: Sequence[RecordLike],
    item_texts: Mapping[str, str],
    cfg: TrainConfig,
    trainable_names: Sequence[str],
    reference_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train the adapters `trainable_names` on the records' training positives; returns loss statistics.

    `reference_state` (adapter-state keys -> tensors, usually the round's global weights) turns on the
    FedProx term with `cfg.prox_mu`. Returns {"loss", "loss_first_epoch", "prox", "steps", "num_examples",
    "seconds"}; "num_examples" is the number of (user, positive) pairs per epoch, the federated weight.
    """
    params = model.trainable_parameters(trainable_names)
    if not params:
        raise ValueError(f"nothing to train: adapters {list(trainable_names)} have no trainable parameters")
    missing = [n for n in trainable_names if n not in model.adapter_names]
    if missing:
        raise ValueError(f"unknown adapters {missing}; the model has {model.adapter_names}")
    named = _named_trainable(model, trainable_names) if reference_state is not None else {}
    if reference_state is not None and cfg.prox_mu > 0 and not any(k in reference_state for k in named):
        raise ValueError("reference_state shares no keys with the trainable adapters; FedProx would be a no-op")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    catalog = sorted(item_texts)
    trainable = set(trainable_names)
    started = time.perf_counter()
    epoch_losses: list[float] = []
    steps, n_pairs, prox_value = 0, 0, 0.0
    for epoch in range(cfg.epochs):
        pairs = _training_pairs(records, cfg, rng)
        n_pairs = len(pairs)
        losses = []
        for names, batch in _batches(model, records, pairs, cfg, rng):
            users = [records[u] for u, _ in batch]
            negatives = [str(i) for i in rng.choice(catalog, size=min(cfg.negatives, len(catalog)), replace=False)]
            candidates = [item for _, item in batch] + negatives
            user_vecs = model.encode(
                [r.context_text for r in users], model.user_routing([r.segments for r in users]), cfg.max_len
            )
            if model.finetune_backbone or trainable.intersection(names):
                routing: Routing | None = list(names) or None
                item_vecs = model.encode([item_texts[i] for i in candidates], routing, cfg.max_len)
            else:
                cached = model.item_embeddings(candidates, item_texts, names)
                item_vecs = torch.stack([cached[i] for i in candidates])
            logits = model.score(user_vecs, item_vecs)  # (B, B + N)
            seen = torch.tensor(
                [[c in set(r.train_positives) for c in candidates] for r in users], dtype=torch.bool
            )
            seen.fill_diagonal_(False)  # (B, B+N): the labelled positive stays
            logits = logits.masked_fill(seen, float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(len(batch)))
            if reference_state is not None and cfg.prox_mu > 0:
                prox = _prox_term(named, reference_state)
                prox_value = float(prox)
                loss = loss + cfg.prox_mu / 2 * prox
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            losses.append(float(loss))
            steps += 1
        epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        log.info("epoch %d/%d: loss %.4f over %d pairs", epoch + 1, cfg.epochs, epoch_losses[-1], n_pairs)
    for p in params:
        p.requires_grad_(False) if not model.finetune_backbone else None
    model.item_cache.clear()
    return {
        "loss": epoch_losses[-1],
        "loss_first_epoch": epoch_losses[0],
        "prox": prox_value,
        "steps": float(steps),
        "num_examples": float(n_pairs),
        "seconds": time.perf_counter() - started,
    }
