"""`fedadapt train`: centralized baselines (no federation) written to RUN/summary.json.

The run trains one mode on the marketplace in --data, evaluates it on the test split (held-out item vs 99
sampled negatives) and puts the popularity ranking on the same candidates side by side, so every summary is
self-contained. The trained adapters are saved in RUN/adapters so that a segment-adapters run can start from
a global-adapter run's global adapter (--init-global RUN).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.names import DEFAULT_SEGMENT_KEYS, OVERALL, SUMMARY_FILE

if TYPE_CHECKING:
    from common.adapters import AdapterConfig
    from common.data.examples import UserRecord

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from common.rec.baselines import ITEM_TOWERS, MODES

    p = subparsers.add_parser(
        "train",
        help="train a centralized baseline and write RUN/summary.json",
        description="Train one baseline mode centrally and evaluate it next to the popularity ranking.",
    )
    p.add_argument("--data", required=True, type=Path, help="marketplace folder (fedadapt data generate/load)")
    p.add_argument("--mode", required=True, type=parse_modes, metavar="MODE[,MODE...]|all",
                   help=f"one or more of {', '.join(MODES)}; several run in one process (RUN/<mode>/)")
    p.add_argument("--adapter", default="lora", help="adapter kind (common.adapters.ADAPTER_KINDS)")
    p.add_argument("--rank", type=int, default=None, help="adapter rank / bottleneck width (kind default if unset)")
    p.add_argument("--out", required=True, type=Path, help=f"run folder; {SUMMARY_FILE} goes there")
    p.add_argument("--backbone", default=None, help="local model folder, or 'tiny' (default: offline MiniLM)")
    p.add_argument("--segments", default=",".join(DEFAULT_SEGMENT_KEYS),
                   help="segment keys that get adapters, comma-separated")
    p.add_argument("--min-segment-users", type=int, default=20, help="fewer training users: no segment adapter")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training pairs (per stage)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step (also the in-batch negatives)")
    p.add_argument("--lr", type=float, default=3e-3, help="adapter learning rate (full-finetune uses 5e-5)")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--negatives", type=int, default=32, help="uniformly sampled catalog negatives per step")
    p.add_argument("--in-batch-negatives", action=argparse.BooleanOptionalAction, default=True,
                   help="also use the other users' positives of the batch as negatives (popularity-skewed)")
    p.add_argument("--pairs-per-user", type=int, default=None, help="cap on training pairs per user per epoch")
    p.add_argument("--max-users", type=int, default=None, help="train on a seeded sample of this many users")
    p.add_argument("--eval-users", type=int, default=None, help="evaluate on a seeded sample of this many users")
    p.add_argument("--init-global", type=Path, default=None, help="segment-adapters: reuse RUN's global adapter")
    p.add_argument("--item-tower", choices=ITEM_TOWERS, default="adapted",
                   help="items through the shared adapter (adapted) or the bare backbone (frozen)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _sample(items: Sequence[object], n: int | None, seed: int) -> list[int]:
    """Indices of a seeded sample of `n` items, in their original order (all when n is None)."""
    if n is None or n >= len(items):
        return list(range(len(items)))
    if n < 1:
        raise ValueError(f"user count must be >= 1, got {n}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(len(items), size=n, replace=False))


def eval_sample(records: Sequence[UserRecord], n: int | None, seed: int) -> list[UserRecord]:
    """The evaluation users of a run with `seed` (a seeded sample of `n`, or all): shared with the
    federated comparison so that every method is scored on the same people."""
    return [records[i] for i in _sample(records, n, seed + 1)]


def load_examples(folder: Path, seed: int) -> tuple[list[UserRecord], dict[str, str]]:
    """User records (leave-one-out, 99 seeded negatives) and item texts from a marketplace folder."""
    from common.data.examples import ExampleConfig, build_examples, build_item_texts
    from common.data.schema import read_marketplace

    market = read_marketplace(folder)
    return build_examples(market, ExampleConfig(seed=seed)), build_item_texts(market.products)


def parse_modes(text: str) -> list[str]:
    """"global-adapter,segment-adapters" or "all" -> the modes in the order given (validated)."""
    from common.rec.baselines import MODES

    modes = list(MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or text!r}; expected {', '.join(MODES)} or all")
    if len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"mode listed twice in {text!r}")
    return modes


def _global_from(folder: Path, adapter_cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    from common.adapters.storage import read_adapter_folder
    from common.names import GLOBAL, split_key

    saved_cfg, _, state = read_adapter_folder(folder / "adapters")
    if saved_cfg != adapter_cfg:
        raise ValueError(f"--init-global {folder} used adapter {saved_cfg}, this run {adapter_cfg}")
    chosen = {k: v for k, v in state.items() if split_key(k)[0] == GLOBAL}
    if not chosen:
        raise ValueError(f"--init-global {folder} has no '{GLOBAL}' adapter")
    return chosen


def _line(mode: str, metrics: dict[str, object], popularity: dict[str, object]) -> str:
    overall, pop = metrics[OVERALL], popularity[OVERALL]
    assert isinstance(overall, dict) and isinstance(pop, dict)
    return (f"{mode}: ndcg@10 {overall['ndcg@10']:.4f}  hr@10 {overall['hr@10']:.4f}  "
            f"(popularity ndcg@10 {pop['ndcg@10']:.4f}  hr@10 {pop['hr@10']:.4f})")


def run(args: argparse.Namespace) -> int:
    from common.adapters import AdapterConfig
    from common.adapters.storage import save_adapters
    from common.backbone import load_backbone
    from common.names import GLOBAL
    from common.rec.baselines import build_and_train
    from common.rec.evaluate import evaluate, evaluate_popularity
    from common.rec.model import ItemCache
    from common.rec.train import TrainConfig

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    modes = args.mode if isinstance(args.mode, list) else parse_modes(args.mode)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_len=args.max_len,
        negatives=args.negatives, pairs_per_user=args.pairs_per_user, seed=args.seed,
        in_batch_negatives=args.in_batch_negatives,
    )
    keys = tuple(k.strip() for k in args.segments.split(",") if k.strip())
    adapter_kw: dict[str, object] = {"kind": args.adapter, "seed": args.seed}
    if args.rank is not None:
        adapter_kw["rank"] = args.rank
    adapter_cfg = AdapterConfig(**adapter_kw)  # type: ignore[arg-type]
    records, item_texts = load_examples(args.data, seed=args.seed)
    if not records:
        raise ValueError(f"{args.data}: no user has enough positives for a train/valid/test split")
    train_records = [records[i] for i in _sample(records, args.max_users, args.seed)]
    eval_records = eval_sample(records, args.eval_users, args.seed)
    backbone = load_backbone(args.backbone)
    global_state = _global_from(args.init_global, adapter_cfg) if args.init_global is not None else None
    popularity = evaluate_popularity(eval_records, item_texts, fit_records=records)
    cache = ItemCache()  # frozen-tower item vectors are shared by every mode of this run

    table: dict[str, dict[str, object]] = {}
    for mode in modes:
        out = args.out if len(modes) == 1 else args.out / mode
        mode_start = time.perf_counter()
        model, training = build_and_train(
            mode, backbone, adapter_cfg, train_records, item_texts, cfg, keys, args.min_segment_users,
            global_state, args.item_tower, cache,
        )
        train_s = time.perf_counter() - mode_start
        if mode == "global-adapter" and model.adapted is not None:
            global_state = model.adapted.adapter_state([GLOBAL], trainable_only=False)  # segment mode reuses it
        eval_start = time.perf_counter()
        metrics = evaluate(model, eval_records, item_texts)
        eval_s = time.perf_counter() - eval_start
        out.mkdir(parents=True, exist_ok=True)
        if model.adapted is not None and model.adapter_names:
            save_adapters(model.adapted, out / "adapters", model.adapter_names)
        summary = {
            "mode": mode,
            "data": str(args.data),
            "adapter": adapter_cfg.to_dict() if mode not in ("no-adapter", "full-finetune") else None,
            "backbone": backbone.source,
            "segments": list(keys),
            "item_tower": args.item_tower,
            "adapters": model.adapter_names,
            "train_config": cfg.to_dict(),
            "users": {"total": len(records), "train": len(train_records), "eval": len(eval_records)},
            "items": len(item_texts),
            "trainable_params": sum(p.numel() for p in model.trainable_parameters(model.adapter_names))
            if mode != "no-adapter" else 0,
            "training": training,
            "metrics": metrics,
            "popularity": popularity,
            "seconds": {"train": train_s, "eval": eval_s, "total": time.perf_counter() - mode_start},
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        table[mode] = metrics
        print(f"{_line(mode, metrics, popularity)}  -> {out / SUMMARY_FILE}", flush=True)
    if len(modes) > 1:
        (args.out / "table.md").write_text(markdown_table(table, popularity))
        log.info("all modes done in %.0f s; table in %s", time.perf_counter() - started, args.out / "table.md")
    return 0


def markdown_table(results: dict[str, dict[str, object]], popularity: dict[str, object]) -> str:
    """Mode x (overall, each segment) NDCG@10 / HR@10, popularity as the last row."""
    rows: dict[str, dict[str, Any]] = {**results, "popularity": popularity}
    segments = sorted({label for r in rows.values() for label in r["segments"]})
    header = ["mode", OVERALL, *segments]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, result in rows.items():
        cells = [mode]
        for label in [OVERALL, *segments]:
            row = result[OVERALL] if label == OVERALL else result["segments"].get(label)
            cells.append("-" if row is None else f"{row['ndcg@10']:.3f} / {row['hr@10']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    users = {label: int(row["users"]) for label, row in rows["popularity"]["segments"].items()}
    lines.append("")
    lines.append("Cells: NDCG@10 / HR@10. Users per segment: " + ", ".join(f"{k} {v}" for k, v in users.items()))
    return "\n".join(lines) + "\n"
