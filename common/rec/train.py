"""Central training and evaluation of a `RecModel`: what a client runs locally and the baselines run centrally.

Training is a softmax over each pair's positive against shared, uniformly sampled catalog negatives and,
optionally, the other positives of the batch (items the user already interacted with are masked so they
never act as negatives). Only the parameters of `trainable_names` enter the optimizer.

In-batch negatives are drawn in proportion to popularity (no log-Q correction), while the sampled protocol
draws negatives uniformly; `in_batch_negatives=False` trains against uniform negatives only. What decided
the defaults (MiniLM, LoRA, measured 2026-11-26): with the *item tower frozen*, a global adapter never beat
the untrained backbone (5k-user data, 1,000 training users: test NDCG@10 0.109-0.115 vs 0.139, in-batch or
uniform negatives alike); with the item tower adapted too, it does (2k-user data, all 1,427 users, 2
epochs, lr 3e-3, batch 16: 0.169 vs 0.140). A higher rate than usual for LoRA pays here: after the same
58 steps (5k-user data, 400 users) validation NDCG@10 rose 0.015 at lr 1e-3 and 0.029 at 3e-3.

When the item tower's adapters are not being trained (e.g. segment adapters on top of a fixed global one),
item vectors come from the cache without gradients, saving the item tower's forward and backward pass.
When they are, the positives (which are also the in-batch negatives) go through the item tower with gradient,
and the sampled catalog negatives come from a pool encoded once per epoch without gradient
(`negative_pool`): before, each 16-pair step encoded its 32 negatives with gradient, 4 sequences per pair
with gradient instead of 2, and the item tower was about two thirds of a client update's compute (issue 12).

Everything stays in eval mode: the backbone is frozen, and dropout would make a fixed seed
non-reproducible, so `AdapterConfig.dropout` has no effect here.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.adapters.routing import Routing
from common.defaults import ARCH_DEFAULTS
from common.device import check_device_name, resolve_device
from common.names import TEXT, make_key
from common.rec.model import RecModel, routing_signature
from common.rec.user_record import RecordLike
from common.threads import PLAN

log = logging.getLogger(__name__)

LOG_EVERY = 20  # steps between progress lines


@dataclass(frozen=True)
class Pair:
    """One training example: whose it is, what they had done before, what they picked, how it is routed."""

    user: int
    context: str
    item: str
    segments: dict[str, str]


def training_pairs(records: Sequence[RecordLike]) -> list[Pair]:
    """Every (context, positive) pair of every record, with the pair's own segments when the record has them."""
    pairs = []
    for u, rec in enumerate(records):
        segs = rec.train_segments if len(rec.train_segments) == len(rec.train_pairs) else None
        for j, (context, item) in enumerate(rec.train_pairs):
            pairs.append(Pair(u, context, item, segs[j] if segs is not None else rec.segments))
    return pairs


@dataclass
class TrainConfig:
    """Local training hyper-parameters (the same object drives central baselines and federated clients)."""

    epochs: int = 1
    batch_size: int = 16  # pairs per step; also the in-batch negatives each positive sees
    # adapters start at identity and are small: a higher rate than full fine-tuning (every layer adapted)
    lr: float = ARCH_DEFAULTS[TEXT].lr_every_layer
    max_len: int = 64  # tokens per text; user contexts are truncated from the right
    negatives: int = 32  # shared sampled catalog negatives per step, on top of the in-batch ones
    # Sampled negatives through the adapted item tower: encoded once per epoch without gradient (True), or with
    # gradient at every step (False). The positives (and so the in-batch negatives) keep their gradient either way.
    negative_pool: bool = True
    in_batch_negatives: bool = True  # other users' positives as negatives (popularity-skewed, free)
    pairs_per_user: int | None = None  # cap on a user's pairs per epoch (seeded draw); None = all of them
    seed: int = 0
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w - w_ref||^2, used only when a reference state is given
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    device: str = "cpu"  # auto | cpu | cuda: where training runs (the model is moved there)

    def __post_init__(self) -> None:
        check_device_name(self.device)
        for name in ("epochs", "batch_size", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pairs_per_user is not None and self.pairs_per_user < 1:
            raise ValueError(f"pairs_per_user must be >= 1 or None, got {self.pairs_per_user}")
        if self.negatives < 0:
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        if not self.in_batch_negatives and self.negatives < 1:
            raise ValueError("in_batch_negatives=False needs negatives >= 1, got 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.prox_mu < 0:
            raise ValueError(f"prox_mu must be >= 0, got {self.prox_mu}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _epoch_pairs(pairs: list[Pair], cfg: TrainConfig, rng: np.random.Generator) -> list[Pair]:
    """All pairs, or at most `pairs_per_user` per user drawn without replacement."""
    if cfg.pairs_per_user is None:
        return pairs
    by_user: dict[int, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_user[pair.user].append(pair)
    chosen: list[Pair] = []
    for user in sorted(by_user):
        mine = by_user[user]
        take = rng.choice(len(mine), size=min(cfg.pairs_per_user, len(mine)), replace=False)
        chosen.extend(mine[int(j)] for j in sorted(take))
    return chosen


def _batches(
    model: RecModel, pairs: list[Pair], cfg: TrainConfig, rng: np.random.Generator
) -> list[tuple[tuple[str, ...], list[Pair]]]:
    """Shuffled batches; pairs in one batch share their item-tower routing so candidates encode once."""
    groups: dict[tuple[str, ...], list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[routing_signature(model.item_routing([pair.segments]), 0)].append(pair)
    batches = []
    for names in sorted(groups):
        members = groups[names]
        order = rng.permutation(len(members))
        for start in range(0, len(members), cfg.batch_size):
            batches.append((names, [members[int(i)] for i in order[start : start + cfg.batch_size]]))
    return [batches[int(i)] for i in rng.permutation(len(batches))]


@torch.no_grad()
def _negative_pool(model: RecModel, batches: Sequence[tuple[tuple[str, ...], list[Pair]]],
                   draws: Sequence[Sequence[str]], item_texts: Mapping[str, str], cfg: TrainConfig,
                   chunk: int = 64) -> dict[tuple[str, ...], dict[str, torch.Tensor]]:
    """Every negative an epoch draws, encoded once per item-tower routing without gradient, in length-sorted
    chunks (little padding): {routing names: {item: (H,) vector}}."""
    wanted: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for (names, _), negatives in zip(batches, draws, strict=True):
        wanted[names].update(negatives)
    pool: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}
    for names, items in wanted.items():
        ordered = sorted(items, key=lambda i: (len(item_texts[i]), i))
        routing: Routing | None = list(names) or None
        vectors: dict[str, torch.Tensor] = {}
        for start in range(0, len(ordered), chunk):
            part = ordered[start:start + chunk]
            vectors.update(zip(part, model.encode([item_texts[i] for i in part], routing, cfg.max_len), strict=True))
        pool[names] = vectors
    return pool


def _named_trainable(model: RecModel, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """State keys ("<adapter>::<path>") of the trainable adapter parameters, mapped to the live parameters."""
    if model.adapted is None:
        return {}
    return {
        make_key(name, path): tensor
        for name in names
        for path, tensor in model.adapted.adapter_tensors(name, trainable_only=True)
        if isinstance(tensor, torch.nn.Parameter)
    }


def prox_term(named: Mapping[str, torch.nn.Parameter], reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """||w - w_ref||^2 over the state keys of `named` that `reference` holds (FedProx, both architectures)."""
    total = torch.zeros(())
    for key, param in named.items():
        if key in reference:
            total = total + (param - reference[key].to(param.device, param.dtype)).pow(2).sum()
    return total


def take_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: Sequence[torch.nn.Parameter],
              max_grad_norm: float) -> float:
    """One optimizer step with the gradient norm clipped; returns the loss value. Between steps the thread count
    follows the free CPUs (common/threads.py; only where a caller chose that mode, at most every REFRESH_S)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    PLAN.refresh()
    return float(loss.item())


def log_progress(steps: int, losses: Sequence[float], started: float) -> None:
    """A progress line every LOG_EVERY steps: the mean loss of the last LOG_EVERY steps and the time so far."""
    if steps % LOG_EVERY == 0:
        log.info("step %d: loss %.4f (%.1f s)", steps, float(np.mean(losses[-LOG_EVERY:])),
                 time.perf_counter() - started)


def train_epochs(
    model: RecModel,
    records: Sequence[RecordLike],
    item_texts: Mapping[str, str],
    cfg: TrainConfig,
    trainable_names: Sequence[str],
    reference_state: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train the adapters `trainable_names` on the records' training pairs; returns loss statistics.

    `reference_state` (adapter-state keys -> tensors, usually the round's global weights) turns on the
    FedProx term with `cfg.prox_mu`. Returns {"loss", "loss_first_epoch", "prox", "steps", "num_examples",
    "seconds"}; "num_examples" is the number of (user, positive) pairs per epoch, the federated weight.
    """
    model.to_device(resolve_device(cfg.device))
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
    positives = [set(r.train_positives) for r in records]
    trainable = set(trainable_names)
    started = time.perf_counter()
    epoch_losses: list[float] = []
    steps, n_pairs, prox_value = 0, 0, 0.0
    all_pairs = training_pairs(records)
    if not all_pairs:
        raise ValueError(f"no training pairs in {len(records)} record(s)")
    for epoch in range(cfg.epochs):
        pairs = _epoch_pairs(all_pairs, cfg, rng)
        n_pairs = len(pairs)
        losses = []
        batches = _batches(model, pairs, cfg, rng)
        draws = [[str(i) for i in rng.choice(catalog, size=min(cfg.negatives, len(catalog)), replace=False)]
                 for _ in batches]
        adapted = [model.finetune_backbone or bool(trainable.intersection(names)) for names, _ in batches]
        pooled = [(b, d) for b, d, a in zip(batches, draws, adapted, strict=True) if a and cfg.negative_pool]
        pool = _negative_pool(model, [b for b, _ in pooled], [d for _, d in pooled], item_texts, cfg)
        for (names, batch), negatives, item_grad in zip(batches, draws, adapted, strict=True):
            candidates = [p.item for p in batch] + negatives
            routing = model.user_routing([p.segments for p in batch])
            user_vecs = model.encode([p.context for p in batch], routing, cfg.max_len)  # (B, H)
            if item_grad:
                item_routing: Routing | None = list(names) or None
                if cfg.negative_pool:  # positives with gradient, negatives from this epoch's pool
                    positives_vecs = model.encode([item_texts[p.item] for p in batch], item_routing, cfg.max_len)
                    item_vecs = torch.cat([positives_vecs, torch.stack([pool[names][i] for i in negatives])])
                else:
                    item_vecs = model.encode([item_texts[i] for i in candidates], item_routing, cfg.max_len)
            else:
                cached = model.item_embeddings(candidates, item_texts, names)
                item_vecs = torch.stack([cached[i] for i in candidates])
            logits = model.score(user_vecs, item_vecs)  # (B, B + N)
            seen = torch.tensor([[c in positives[p.user] for c in candidates] for p in batch], dtype=torch.bool,
                                device=logits.device)
            if not cfg.in_batch_negatives:
                seen[:, : len(batch)] = True  # only the uniformly sampled catalog items compete
            seen.fill_diagonal_(False)  # (B, B+N): the labelled positive stays
            logits = logits.masked_fill(seen, float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(len(batch), device=logits.device))
            if reference_state is not None and cfg.prox_mu > 0:
                prox = prox_term(named, reference_state)
                prox_value = prox.item()
                loss = loss + cfg.prox_mu / 2 * prox
            losses.append(take_step(optimizer, loss, params, cfg.max_grad_norm))
            steps += 1
            log_progress(steps, losses, started)
        epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        log.info("epoch %d/%d: loss %.4f over %d pairs", epoch + 1, cfg.epochs, epoch_losses[-1], n_pairs)
    return {
        "loss": epoch_losses[-1],
        "loss_first_epoch": epoch_losses[0],
        "prox": prox_value,
        "steps": float(steps),
        "num_examples": float(n_pairs),
        "seconds": time.perf_counter() - started,
    }
