"""The centralized baselines the federated system is compared against, one function per mode.

Modes (all two-tower, same data, same evaluation):
- no-adapter: the frozen backbone, zero training (what pre-trained sentence embeddings give for free).
- global-adapter: one adapter for every user, on both towers.
- segment-adapters: stage 1 trains the global adapter (as global-adapter does, or loads it); stage 2 freezes
  it and trains one adapter per segment value (region=EU, season=holiday, ...) on that segment's users,
  routed [global, region, season] on the user tower. The item tower keeps [global] only, so item vectors stay
  cached across stage 2 and serving. Segments with fewer than `min_segment_users` training users get no
  adapter: their users fall back to global (that is what coverage counts).
- full-finetune: every backbone weight trained, on a private copy (the shared frozen backbone is untouched).
- local-only: cross-silo without federation: each silo (the value of the first segment key, e.g. region)
  trains its own adapter from scratch on its own users only, used on both towers; no global adapter, no
  sharing. Users of silos too small for an adapter get the bare backbone. Per-user local adapters are not
  run: one user's handful of positives cannot train an adapter, and 5,000 adapters would not fit the budget.

Measured on MiniLM (README "Quality"; 2,000-user synthetic data, all 1,427 users evaluated, LoRA, 2 epochs,
lr 3e-3, adapted item tower): NDCG@10 popularity 0.106, frozen backbone 0.140, global adapter 0.169 (0.166
after 4 epochs), full fine-tune 0.176, local-only 0.195, segment adapters 0.204. With the item tower *frozen*
(5,000-user data, one epoch) the global adapter lost to the bare backbone (0.109 vs 0.139): moving only the
query side away from the pretrained item space costs more than it wins, so the item tower defaults to
"adapted"; "frozen" stays available for its cost (one item index for ever, no item backward pass).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch

from common.adapters import AdapterConfig
from common.backbone import Backbone
from common.names import DEFAULT_SEGMENT_KEYS, GLOBAL, segment_name, split_segment_name
from common.rec.model import ItemCache, RecModel, RoutingPlan
from common.rec.train import TrainConfig, train_epochs, training_pairs
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

MODES = ("no-adapter", "global-adapter", "segment-adapters", "full-finetune", "local-only")
ITEM_TOWERS = ("adapted", "frozen")  # item tower through the mode's shared adapter, or the bare backbone
FULL_FINETUNE_LR = 5e-5  # the whole backbone moves: the usual BERT fine-tuning rate, not the adapter rate


def populated_segment_names(
    records: Sequence[RecordLike], keys: Sequence[str], min_users: int
) -> list[str]:
    """Adapter names "key=value" for segment values with at least `min_users` training users, sorted.

    A user counts for a segment when at least one of its training pairs falls in it (seasons vary per pair).
    """
    members: set[tuple[str, int]] = set()
    for pair in training_pairs(records):
        for key in keys:
            if key in pair.segments:
                members.add((segment_name(key, pair.segments[key]), pair.user))
    counts = Counter(name for name, _ in members)
    skipped = sorted(name for name, n in counts.items() if n < min_users)
    if skipped:
        log.info("segments below %d users fall back to global: %s", min_users, skipped)
    return sorted(name for name, n in counts.items() if n >= min_users)


def routing_plan(mode: str, segment_keys: Sequence[str], item_tower: str) -> RoutingPlan:
    """Which adapters each tower of `mode` routes through; the item tower only when it is adapted ("shared")."""
    shared = item_tower == "adapted"
    if mode == "global-adapter":
        return RoutingPlan((GLOBAL,), (GLOBAL,) if shared else ())
    if mode == "segment-adapters":
        return RoutingPlan((GLOBAL, *segment_keys), (GLOBAL,) if shared else ())
    if mode == "local-only":
        return RoutingPlan((segment_keys[0],), (segment_keys[0],) if shared else ())
    raise ValueError(f"no routing plan for mode {mode!r}")


def build_and_train(
    mode: str,
    backbone: Backbone,
    adapter_cfg: AdapterConfig,
    records: Sequence[RecordLike],
    item_texts: Mapping[str, str],
    cfg: TrainConfig,
    segment_keys: Sequence[str] = DEFAULT_SEGMENT_KEYS,
    min_segment_users: int = 20,
    global_state: Mapping[str, torch.Tensor] | None = None,
    item_tower: str = "adapted",
    item_cache: ItemCache | None = None,
) -> tuple[RecModel, dict[str, object]]:
    """Build the model for `mode`, train it on `records`, return it with a training report per stage.

    `global_state` (adapter state of a trained "global" adapter, e.g. from a global-adapter run) replaces
    stage 1 of segment-adapters, so the two modes share exactly the same global adapter. `item_tower`
    "adapted" encodes items through the shared adapter (global; the silo's for local-only), "frozen" through
    the bare backbone (one item index for ever, and a cheaper training step). `item_cache` lets several
    modes in one process share item vectors that do not depend on their adapters.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; expected one of {', '.join(MODES)}")
    if item_tower not in ITEM_TOWERS:
        raise ValueError(f"item_tower {item_tower!r} is unknown; expected one of {', '.join(ITEM_TOWERS)}")
    if mode in ("segment-adapters", "local-only") and not segment_keys:
        raise ValueError(f"mode {mode} needs at least one segment key")
    report: dict[str, object] = {}
    if mode == "no-adapter":
        return RecModel(backbone, None, max_len=cfg.max_len, item_cache=item_cache), report
    if mode == "full-finetune":
        model = RecModel(backbone, None, max_len=cfg.max_len, finetune_backbone=True, item_cache=item_cache)
        report["full"] = train_epochs(model, records, item_texts, replace(cfg, lr=FULL_FINETUNE_LR), [])
        return model, report
    if mode == "global-adapter":
        plan = routing_plan(mode, segment_keys, item_tower)
        model = RecModel(backbone, adapter_cfg, [GLOBAL], plan, max_len=cfg.max_len, item_cache=item_cache)
        report[GLOBAL] = train_epochs(model, records, item_texts, cfg, [GLOBAL])
        return model, report
    if mode == "segment-adapters":
        names = populated_segment_names(records, segment_keys, min_segment_users)
        plan = routing_plan(mode, segment_keys, item_tower)
        model = RecModel(backbone, adapter_cfg, [GLOBAL, *names], plan, max_len=cfg.max_len, item_cache=item_cache)
        if global_state is not None:
            assert model.adapted is not None
            model.adapted.load_adapter_state(dict(global_state), strict=False)
            report[GLOBAL] = {"loaded": 1.0}
        else:
            report[GLOBAL] = train_epochs(model, records, item_texts, cfg, [GLOBAL])
        if names:
            report["segments"] = train_epochs(model, records, item_texts, cfg, names)
        return model, report
    silo_key = segment_keys[0]
    names = populated_segment_names(records, [silo_key], min_segment_users)
    plan = routing_plan(mode, segment_keys, item_tower)
    model = RecModel(backbone, adapter_cfg, names, plan, max_len=cfg.max_len, item_cache=item_cache)
    for name in names:
        value = split_segment_name(name)[1]
        local = [r for r in records if r.segments.get(silo_key) == value]
        report[name] = train_epochs(model, local, item_texts, cfg, [name])
    return model, report
