"""A silo's round under user-level DP (common/privacy/user_level.py): per-user updates of the seq model.

`local_train_users` replaces a silo's local training when `dp-unit=user` (the one hook is in
common/federation/task.py `local_train`): it Poisson-samples the silo's users from OS entropy, and for each
sampled user starts from the round's received banks, takes `dp-user-steps` plain SGD steps at `dp-user-lr` on
that user's next-item loss (the user's typed training events in, every next positive a target, routed through
global and the user's own segment banks: `seq_train.train_seq`'s sequence and routes, so the private model is
trained on the history evaluation reads), and takes trained - received over every bank: the user's whole
update. Each update is clipped to dp-clip and the clipped updates are summed (`user_level.clipped_sum`).
The user item rows (`user_level.FROZEN_KEYS`) are not trained.

Why SGD and not the Adam of central training: Adam's first step moves every coordinate by about lr whatever
its gradient (a sign step), so every user's update would have the same norm lr x sqrt(d) and clipping would
measure nothing; with SGD the update is -lr x gradient, and the clip bounds what one user can move.
Dropout is off (eval mode): one user's step is then a function of the banks and that user's data only.

The result is a `TrainResult` whose delta is the SUM of clipped user updates (float64) and whose
`bank_examples` are the silo's user POPULATION per bank (public weights; the sample size never leaves the silo).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.federation.arch import arch_for
from common.federation.client_data import ClientData
from common.federation.round_io import TrainResult, received_banks
from common.names import GLOBAL, make_key
from common.privacy.user_level import FROZEN_KEYS, clipped_sum, os_entropy_rng, poisson_sample
from common.privacy.user_shared import SharedItemSide, applies
from common.protocol import TRAIN_LOSS, FedConfig, RoundHParams
from common.rec.seq_model import PAD, SeqRecModel
from common.rec.seq_train import indexed_sequence
from common.rec.user_record import RecordLike
from common.threads import PLAN

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class UserExample:
    """One user's training sequence as `seq_train.train_seq` reads it: every typed event (views, carts, rating
    values) as input, the next positive after each event as its target (PAD where none), and each target's
    routed segment banks."""

    inputs: torch.Tensor  # (T,) item indices
    types: torch.Tensor  # (T,) event type indices
    targets: torch.Tensor  # (T,) item indices, PAD where an event has no next positive
    routes: list[list[str]]  # one per real target

    @property
    def banks(self) -> set[str]:
        return {GLOBAL, *(b for route in self.routes for b in route)}


def user_example(model: SeqRecModel, record: RecordLike) -> UserExample | None:
    """The user's most recent max_len typed training events and their next positives (`training_sequence`,
    as central training reads it: `seq_train.indexed_sequence`); None for a user with no positive after an earlier
    event (nothing to predict)."""
    sequence = indexed_sequence(model, record)
    if sequence is None:
        return None
    inputs, types, targets, routes = sequence
    return UserExample(torch.tensor(inputs), torch.tensor(types), torch.tensor(targets), routes)


def bank_populations(examples: Sequence[UserExample], names: Sequence[str]) -> dict[str, int]:
    """Users per bank among `names` (a user counts in every bank one of its targets routes through)."""
    counts = {name: 0 for name in names}
    for ex in examples:
        for bank in ex.banks:
            if bank in counts:
                counts[bank] += 1
    return counts


def trained_parameters(model: SeqRecModel, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """State key -> live parameter of every trained tensor of `names` (FROZEN_KEYS excluded); the rest of the
    model gets no gradient."""
    model.trainable_parameters(names)  # requires_grad on exactly the banks `names`
    out: dict[str, torch.nn.Parameter] = {}
    for name in names:
        for path, p in model.bank(name).named_parameters():
            key = make_key(name, path)
            if key in FROZEN_KEYS:
                p.requires_grad_(False)
            else:
                out[key] = p
    return out


def user_loss(model: SeqRecModel, ex: UserExample) -> torch.Tensor:
    """Mean next-item cross-entropy over the user's targets against the whole catalog."""
    table = model.item_table()
    states = model.encode_sequences(ex.inputs.unsqueeze(0).to(model.device), table,
                                    ex.types.unsqueeze(0).to(model.device))[0]  # (T, d)
    real = ex.targets != PAD
    users, bias = model.personalise(states[real.to(states.device)], ex.routes)
    return F.cross_entropy(model.logits(users, table, bias), ex.targets[real].to(model.device))


def user_update(model: SeqRecModel, params: Mapping[str, torch.nn.Parameter], ex: UserExample, steps: int,
                lr: float) -> tuple[Arrays, float]:
    """(trained - start for the parameters the user's loss reaches, the first step's loss); the parameters are
    restored to their start afterwards, so every user starts from the round's received banks."""
    start = {k: p.detach().clone() for k, p in params.items()}
    keys, tensors = list(params), list(params.values())
    first = float("nan")
    touched: set[str] = set()
    try:
        for step in range(steps):
            loss = user_loss(model, ex)
            if step == 0:
                first = float(loss.detach())
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            with torch.no_grad():
                for key, p, g in zip(keys, tensors, grads, strict=True):
                    if g is not None:
                        p.sub_(lr * g)
                        touched.add(key)
        update = {k: (params[k].detach() - start[k]).double().cpu().numpy() for k in keys if k in touched}
    finally:
        with torch.no_grad():
            for key, p in params.items():
                p.copy_(start[key])
    return update, first


def local_train_users(cfg: FedConfig, data: ClientData, received: Mapping[str, np.ndarray], hp: RoundHParams,
                      rng: np.random.Generator | None = None) -> TrainResult:
    """A silo's user-level DP round: the sum of its Poisson-sampled users' clipped updates (OS entropy unless
    `rng` is given: tests only) and its user population per bank."""
    dp = cfg.dp
    if not dp.user_level:
        raise ValueError("local_train_users needs dp-unit=user with dp-user-rate > 0")
    PLAN.apply(cfg.client_threads, cfg.client_cpus)
    started = time.perf_counter()
    arch = arch_for(cfg.arch)
    model = arch.client_model(cfg, data.item_texts)
    names = received_banks(data, received)
    arch.load_state(model, names, received)
    model.eval()
    examples = [ex for ex in (user_example(model, r) for r in arch.train_records(cfg, data)) if ex is not None]
    chosen = poisson_sample(len(examples), dp.user_rate, rng if rng is not None else os_entropy_rng())
    params = trained_parameters(model, names)
    # the catalog side once per round when the math allows it (common/privacy/user_shared.py: same updates)
    shared = SharedItemSide(model) if chosen and applies(model, params, cfg.dp_user_steps) else None
    updates, losses = [], []
    for index in chosen:
        ex = examples[index]
        update, loss = (shared.user_update(model, params, ex, cfg.dp_user_lr)
                        if shared is not None else user_update(model, params, ex, cfg.dp_user_steps, cfg.dp_user_lr))
        updates.append(update)
        losses.append(loss)
    shapes = {k: tuple(np.shape(v)) for k, v in received.items()}
    total, norms = clipped_sum(updates, shapes, dp.clip)
    log.info("user-level DP: %d of %d users sampled, loss %.4f, update norms median %.4g (clip %g), %.1f s",
             len(chosen), len(examples), float(np.mean(losses)) if losses else float("nan"),
             float(np.median(norms)) if norms else float("nan"), dp.clip, time.perf_counter() - started)
    # the loss and the sample size stay on the silo: the metrics carry nothing that depends on the sample
    metrics = {TRAIN_LOSS: float("nan"), "train-seconds": time.perf_counter() - started}
    populations = bank_populations(examples, names)
    return TrainResult(delta=total, num_examples=populations.get(GLOBAL, 0), bank_examples=populations,
                       metrics=metrics)
