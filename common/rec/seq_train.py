"""Training and evaluation of the sequential model (`common.rec.seq_model`).

The user tower reads every interaction with its type (`UserRecord.typed_events`: views, clicks, carts,
purchases, rating values; common/data/typed_events.py), while targets stay positives: training is next-positive
prediction at every event of a user's training sequence (the typed events before the validation item, in time
order, cut after the last training positive, the most recent `max_len`): the state after events 1..t scores
the first training positive strictly after event t against the catalog with a softmax. A full softmax needs
no negative sampler, so popular items are neither over-sampled as negatives (in-batch sampling) nor easy to
beat (uniform sampling); the item prior learns popularity instead. Each target is routed through the segment
banks of its own interaction (a training pair's segments, e.g. the season it happened in).

Items never seen are not buried: with `mask_unseen` (the default) the softmax runs over the items that occur
somewhere in the training data (an event of anyone's typed history, or a target), so an item with no training
event at all never gets a gradient as a negative: its row and free bias stay zero and it is scored by its text
(text projection and text prior), which ID dropout (`SeqConfig.id_dropout`: rows and free biases dropped from
the scored table) trains to predict on their own. Without the mask the softmax pushes every unseen item's row
and bias down and a new item never reaches a warm user's top 10. An item people saw but never chose (viewed,
rated low) can stay in the softmax with its own row and bias and learn that it is not chosen (`mask_by`
"touched"; masking it instead left such items at their text prior, above the catalog's tail, `mask_by`
"chosen"). But on a marketplace where new products are viewed
before anyone buys them, "touched" buries them (README: 0.017 sampled NDCG@10 for such test items), so the
default is `mask_by` "text": an item touched but never chosen stays in the softmax with its row and free bias
held at zero (in the user tower's input too), ranked by its text alone, and the text prior learns what such
items look like; on MovieLens-1M it scores as "touched" (README). "chosen" leaves such items out of the softmax
(the first version's mask).

Evaluation reads the user's typed history before the split's item (test: also the validation item; validation:
the training events) and scores the catalog once per user, then takes the sampled candidates (held-out item vs
its 99 negatives) or the full catalog (minus everything the user touched), with the same metrics code as the
two-tower model.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.data.typed_events import history_events, next_positive_targets, training_events
from common.defaults import (
    ARCH_DEFAULTS,
    MASK_CHOSEN,
    MASK_TEXT,
    SEQ_LR_SCHEDULE,
    SEQ_LR_SCHEDULES,
    SEQ_MASK,
    SEQ_MASK_BY,
)
from common.device import check_device_name, resolve_device
from common.names import GLOBAL, SEQ, make_key
from common.protocol import segment_adapter_names
from common.rec.metrics import aggregate, full_ranking_metrics, sampled_metrics, served_by_segment_adapter
from common.rec.seq_model import PAD, SeqRecModel, left_pad, window
from common.rec.train import log_progress, prox_term, take_step
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)



WARMUP_SHARE = 0.02


@dataclass(frozen=True)
class SeqTrainConfig:
    """Training of the sequential model (central modes and federated clients alike)."""

    epochs: int = ARCH_DEFAULTS[SEQ].central_epochs
    batch_size: int = ARCH_DEFAULTS[SEQ].central_batch_size  # users per step (each up to max_len targets)
    lr: float = ARCH_DEFAULTS[SEQ].lr
    weight_decay: float = 0.0
    max_grad_norm: float = 5.0
    prox_mu: float = 0.0
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda: where training runs (the model is moved there)
    mask_unseen: bool = True  # softmax over the items with a training event or target (see the docstring)
    # what keeps an item in that softmax with its own row and bias: "text" (default: a training target; an item
    # touched but never chosen stays in, ranked by its text alone), "touched" (any training event or target) or
    # "chosen" (a training target; the others are left out of the softmax)
    mask_by: str = SEQ_MASK
    # batches drawn from pools of this many batches' users sorted by history length, so a batch pads to its own
    # users' length, not to max_len (MovieLens-1M: mean history 105 of 200); 1 = plain shuffled batches
    length_pool: int = 16
    # "constant", or "cosine": a linear warm-up over the first WARMUP_SHARE of the steps, then cosine decay to 0
    # over the run (the same number of steps, ending at a low rate)
    lr_schedule: str = SEQ_LR_SCHEDULE

    def __post_init__(self) -> None:
        check_device_name(self.device)
        for name in ("epochs", "batch_size", "length_pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.prox_mu < 0 or self.weight_decay < 0:
            raise ValueError("prox_mu and weight_decay must be >= 0")
        if self.lr_schedule not in SEQ_LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SEQ_LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.mask_by not in SEQ_MASK_BY:
            raise ValueError(f"mask_by must be one of {', '.join(SEQ_MASK_BY)}, got {self.mask_by!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def train_items_of(record: RecordLike) -> list[str]:
    """A record's training positives in time order (every one, with or without a text context)."""
    items = getattr(record, "train_items", None)
    return list(items) if items else list(record.train_positives)


def target_segments(record: RecordLike) -> list[dict[str, str]]:
    """Segments of each training positive after the first (items[1:]): its own pair's, else the user's."""
    own = _own_segments(record)
    return [own.get(item, record.segments) for item in train_items_of(record)[1:]]


def _own_segments(record: RecordLike) -> dict[str, dict[str, str]]:
    return dict(zip(record.train_positives, record.train_segments, strict=False)) \
        if len(record.train_segments) == len(record.train_pairs) else {}


def training_sequence(record: RecordLike, max_len: int
                      ) -> tuple[list[tuple[str, str]], list[str | None], list[dict[str, str]]]:
    """(input events, target per event or None, segments per target) of one user: the typed events before
    the validation item cut after the event before the last training positive, the most recent `max_len`."""
    events = training_events(record)
    targets = next_positive_targets(events, train_items_of(record))
    last = max((j for j, t in enumerate(targets) if t is not None), default=-1)
    start = max(0, last + 1 - max_len)
    events, targets = events[start:last + 1], targets[start:last + 1]
    own = _own_segments(record)
    return events, targets, [own.get(t, record.segments) for t in targets if t is not None]


def indexed_sequence(model: SeqRecModel, record: RecordLike
                     ) -> tuple[list[int], list[int], list[int], list[list[str]]] | None:
    """`training_sequence` in the model's indices: (items, event types, the next positive after each event or
    PAD, the routed banks of each real target); None for a user with nothing to predict. Central training and
    the user-level DP update both read a user this way."""
    events, next_items, segs = training_sequence(record, model.cfg.max_len)
    if not segs:
        return None
    return (model.indices([i for i, _ in events]), model.type_indices([t for _, t in events]),
            [PAD if t is None else model.index[t] for t in next_items], [model.routes(s) for s in segs])


def bank_counts(records: Sequence[RecordLike], keys: Sequence[str], max_len: int) -> dict[str, int]:
    """Training targets per bank (the federated weights): every target counts for global and its segments."""
    counts: Counter[str] = Counter()
    for record in records:
        for segs in training_sequence(record, max_len)[2]:
            counts[GLOBAL] += 1
            counts.update(segment_adapter_names(segs, tuple(keys)))
    return dict(counts)


def _named(model: SeqRecModel, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
    """State keys ("<bank>::<path>") of the banks `names`, mapped to the live parameters."""
    return {make_key(name, path): p for name in names for path, p in model.bank(name).named_parameters()}


def train_seq(model: SeqRecModel, records: Sequence[RecordLike], cfg: SeqTrainConfig,
              trainable_names: Sequence[str],
              reference_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
    """Train the banks `trainable_names`; returns {"loss", "loss_first_epoch", "steps", "num_examples", "seconds"}.

    When the global bank is not trained (segment banks on top of a fixed global), the user tower runs without
    gradients and in eval mode, so only the segment banks learn.
    """
    unknown = [n for n in trainable_names if n not in model.adapter_names]
    if unknown:
        raise ValueError(f"unknown banks {unknown}; the model has {model.adapter_names}")
    model.to(resolve_device(cfg.device))
    params = model.trainable_parameters(trainable_names)
    if not params:
        raise ValueError(f"nothing to train in banks {list(trainable_names)}")
    users = [u for u in (indexed_sequence(model, r) for r in records) if u is not None]
    if not users:
        raise ValueError(f"no user of {len(records)} has a training positive after an earlier event to learn from")
    trains_global = GLOBAL in trainable_names
    trained = torch.zeros(len(model.catalog) + 1, dtype=torch.bool)
    targeted = torch.zeros(len(model.catalog) + 1, dtype=torch.bool)  # some training target chose it
    targeted[[i for u in users for i in u[2] if i != PAD]] = True
    trained[[i for u in users for i in u[0] if i != PAD]] = True
    trained |= targeted
    unseen = (~(targeted if cfg.mask_by == MASK_CHOSEN else trained)).to(model.device) if cfg.mask_unseen else None
    # mask_by "text": an item people touched but nobody chose keeps a zero row and free bias (in the user tower's
    # input too), so it is ranked by its text alone in training and scoring, like a new item
    fixed = (targeted | ~trained).to(model.device, model.global_bank.item_bias.dtype) \
        if cfg.mask_by == MASK_TEXT and trains_global else None
    named = _named(model, trainable_names) if reference_state is not None else {}
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = [len(u[0]) for u in users]
    total = cfg.epochs * len(length_batches(lengths, cfg.batch_size, cfg.length_pool, np.random.default_rng(0)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg.lr_schedule, step, total))
    started = time.perf_counter()
    epoch_losses: list[float] = []
    steps = 0
    n_targets = sum(len(u[3]) for u in users)
    for epoch in range(cfg.epochs):
        model.train(trains_global)
        losses = []
        for rows in length_batches(lengths, cfg.batch_size, cfg.length_pool, rng):
            batch = [users[i] for i in rows]
            inputs = left_pad([b[0] for b in batch]).to(model.device)
            types = left_pad([b[1] for b in batch]).to(model.device)
            targets = left_pad([b[2] for b in batch]).to(model.device)
            routes = [r for b in batch for r in b[3]]
            text = model.item_text_vectors(focus=torch.cat([inputs.flatten(), targets.flatten()]))
            table = model.item_table(fixed, text=text)
            with torch.set_grad_enabled(trains_global):
                states = model.encode_sequences(inputs, table, types)  # (B, T, d)
            real = targets != PAD
            chosen = states[real]  # (P, d), row-major: the same order as `routes`
            user_vecs, bias = model.personalise(chosen, routes)
            keep = model.id_keep() if trains_global else None
            keep = fixed if keep is None else keep if fixed is None else keep * fixed
            scored = table if keep is None or keep is fixed else model.item_table(keep, text)  # fixed: as the input
            logits = model.logits(user_vecs, scored, bias, model.item_prior(keep, text, fixed))
            if unseen is not None:
                logits = logits.masked_fill(unseen, float("-inf"))
            loss = F.cross_entropy(logits, targets[real])
            if reference_state is not None and cfg.prox_mu > 0:
                loss = loss + cfg.prox_mu / 2 * prox_term(named, reference_state)
            losses.append(take_step(optimizer, loss, params, cfg.max_grad_norm))
            schedule.step()
            steps += 1
            log_progress(steps, losses, started)
        epoch_losses.append(float(np.mean(losses)))
        log.info("epoch %d/%d: loss %.4f over %d targets", epoch + 1, cfg.epochs, epoch_losses[-1], n_targets)
    model.eval()
    return {"loss": epoch_losses[-1], "loss_first_epoch": epoch_losses[0], "steps": float(steps),
            "num_examples": float(n_targets), "seconds": time.perf_counter() - started}


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The multiple of the base rate at `step` of `total`; 1 throughout for "constant"."""
    if schedule == SEQ_LR_SCHEDULE:
        return 1.0
    warmup = max(1, int(WARMUP_SHARE * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def length_batches(lengths: Sequence[int], batch_size: int, pool: int, rng: np.random.Generator) -> list[list[int]]:
    """One epoch's batches of indices into `lengths`: a random permutation cut into pools of `pool` batches, each
    pool sorted by length and cut into batches, the batches in random order. Every index once per epoch."""
    order = rng.permutation(len(lengths))
    size = batch_size * pool
    batches: list[list[int]] = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size].tolist(), key=lambda i: lengths[i])
        batches.extend(chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size))
    return [batches[int(k)] for k in rng.permutation(len(batches))]


def history_of(record: RecordLike, split: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The typed events (item, type) a split is predicted from and the request's segments."""
    events = history_events(record, split)
    return events, record.segments if split == "test" else record.valid_segments or record.segments


def _typed(history: Sequence[str | tuple[str, str]]) -> tuple[list[str], list[str]]:
    """(items, types) of a history given as typed events or as plain items (each then a purchase)."""
    pairs = [(h, "purchase") if isinstance(h, str) else h for h in history]
    return [p[0] for p in pairs], [p[1] for p in pairs]


@torch.no_grad()
def score_catalog(model: SeqRecModel, histories: Sequence[Sequence[str | tuple[str, str]]],
                  segments: Sequence[Mapping[str, str]], batch_size: int = 256) -> np.ndarray:
    """(U, N) scores of every catalog item (in `model.catalog` order) for each request; a history is a list of
    typed events (item, type token) or of items (purchases), oldest first."""
    model.eval()
    table = model.item_table()
    out = np.zeros((len(histories), len(model.catalog)), dtype=np.float32)
    for start in range(0, len(histories), batch_size):
        typed = [_typed(h) for h in histories[start:start + batch_size]]
        rows = [window(model.indices(items), model.cfg.max_len) for items, _ in typed]
        kinds = [window(model.type_indices(types), model.cfg.max_len) for _, types in typed]
        states = model.encode_sequences(left_pad(rows).to(model.device), table,
                                        left_pad(kinds).to(model.device))[:, -1]
        users, bias = model.personalise(states, [model.routes(s) for s in segments[start:start + batch_size]])
        out[start:start + len(rows)] = model.logits(users, table, bias)[:, 1:].cpu().numpy()
    return out


def evaluate_seq(model: SeqRecModel, records: Sequence[RecordLike], ks: Sequence[int] = (10,), split: str = "test",
                 full_catalog: bool = False, with_history: bool = True) -> dict[str, object]:
    """The same result shape as `common.rec.evaluate.evaluate`, for the sequential model.

    `with_history=False` scores every request as a user with no history at all (the cold-start case): only the
    item prior and the request's segment banks can rank then.
    """
    if not records:
        raise ValueError("no records to evaluate")
    cands = [[r.test_item, *r.test_negatives] if split == "test" else [r.valid_item, *r.valid_negatives]
             for r in records]
    model.indices([i for row in cands for i in row])  # refuses an item outside the catalog, by name
    started = time.perf_counter()
    queries = [history_of(r, split) for r in records]
    if not with_history:
        queries = [([], segs) for _, segs in queries]
    scores = score_catalog(model, [q[0] for q in queries], [q[1] for q in queries])
    batched_ms = (time.perf_counter() - started) * 1000 / len(records)
    column = {item: c for c, item in enumerate(model.catalog)}
    if full_catalog:
        relevant = [[column[r.test_item if split == "test" else r.valid_item]] for r in records]
        seen = [[column[i] for i in getattr(r, "seen_items", r.train_positives) if i in column] for r in records]
        per_user = full_ranking_metrics(scores, relevant, seen, ks)
    else:
        picked = np.stack([scores[u, [column[i] for i in c]] for u, c in enumerate(cands)]).astype(float)
        per_user = sampled_metrics(picked, ks)
    per_user["coverage"] = served_by_segment_adapter([q[1] for q in queries], model.segment_adapters(),
                                                     model.segment_keys)
    latencies = []
    for u in range(min(16, len(records))):
        t0 = time.perf_counter()
        score_catalog(model, [queries[u][0]], [queries[u][1]])
        latencies.append((time.perf_counter() - t0) * 1000)
    result = aggregate(per_user, [q[1] for q in queries])
    result.update({"split": split, "protocol": "full" if full_catalog else "sampled",
                   "latency_ms_per_user": float(np.median(latencies)), "batched_ms_per_user": batched_ms,
                   "item_encode_s": 0.0})
    log.info("evaluated %d users (%s, %s): ndcg@10 %.4f hr@10 %.4f", len(records), split, result["protocol"],
             result["overall"]["ndcg@10"], result["overall"]["hr@10"])  # type: ignore[index]
    return result
