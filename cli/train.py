"""`fedadapt train`: centralized baselines (no federation) written to RUN/summary.json.

This module turns the options into an `ExperimentConfig` and prints one line per finished mode; the run itself
is `common.rec.experiment.run_experiment`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.parse import fraction
from common.adapters import AdapterConfig
from common.defaults import (
    ADAPTER_KIND,
    ADAPTER_LAYERS,
    SEQ_ID_DROPOUT,
    SEQ_LR_SCHEDULE,
    SEQ_LR_SCHEDULES,
    SEQ_MASK,
    SEQ_MASK_BY,
    arch_defaults,
)
from common.device import DEVICES, resolve_device
from common.names import ARCHS, DEFAULT_HISTORY, DEFAULT_SEGMENT_KEYS, HISTORIES, OVERALL, SUMMARY_FILE, TEXT
from common.rec.baselines import ITEM_TOWERS, MODES
from common.rec.experiment import ExperimentConfig, run_experiment
from common.rec.seq_model import SeqConfig
from common.rec.seq_train import SeqTrainConfig
from common.rec.train import TrainConfig
from common.threads import PLAN


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `train` and its options."""
    p = subparsers.add_parser(
        "train",
        help="train a centralized baseline and write RUN/summary.json",
        description="Train one baseline mode centrally and evaluate it next to the popularity ranking.",
    )
    p.add_argument("--data", required=True, type=Path, help="marketplace folder (fedadapt data generate/load)")
    p.add_argument("--mode", required=True, type=parse_modes, metavar="MODE[,MODE...]|all",
                   help=f"one or more of {', '.join(MODES)}; several run in one process (RUN/<mode>/)")
    p.add_argument("--arch", choices=ARCHS, default=TEXT,
                   help="text: two-tower on backbone+adapters; seq: frozen text vectors + collaborative item rows + "
                        "a causal user tower over the history (common/rec/seq_model.py)")
    p.add_argument("--adapter", default=ADAPTER_KIND, help="adapter kind (common.adapters.ADAPTER_KINDS; arch text)")
    p.add_argument("--rank", type=int, default=None, help="adapter rank / bottleneck width (kind default if unset)")
    p.add_argument("--adapter-layers", type=int, default=ADAPTER_LAYERS,
                   help="arch text: adapters only in the last N transformer layers, the frozen layers below "
                   "computed once per text and cached (0 = every layer)")
    p.add_argument("--out", required=True, type=Path, help=f"run folder; {SUMMARY_FILE} goes there")
    p.add_argument("--backbone", default=None, help="local model folder, or 'tiny' (default: offline MiniLM)")
    p.add_argument("--segments", default=",".join(DEFAULT_SEGMENT_KEYS),
                   help="segment keys that get adapters, comma-separated")
    p.add_argument("--min-segment-users", type=int, default=20, help="fewer training users: no segment adapter")
    p.add_argument("--epochs", type=int, default=None,
                   help="passes over the training data (per stage); default 2 (text), 20 (seq)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="text: pairs per step, also the in-batch negatives (16); seq: users per step (128)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate; default 1e-2 (text adapters in the top layers, 3e-3 with --adapter-layers 0; "
                   "full-finetune uses 5e-5), 1e-3 (seq): common/defaults.py")
    p.add_argument("--seq-dim", type=int, default=SeqConfig.dim, help="seq: item and user vector width")
    p.add_argument("--seq-max-len", type=int, default=SeqConfig.max_len,
                   help="seq: most recent interactions the user tower reads (older ones are dropped)")
    p.add_argument("--seq-mask-by", choices=SEQ_MASK_BY, default=SEQ_MASK,
                   help="seq: what keeps an item in the training softmax: touched (any event), chosen (a target; "
                   "others are left out), text (a target; others stay in, ranked by their text alone)")
    p.add_argument("--seq-lr-schedule", choices=SEQ_LR_SCHEDULES, default=SEQ_LR_SCHEDULE,
                   help="seq: constant rate, or a short warm-up then cosine decay to 0")
    p.add_argument("--seq-id-dropout", type=fraction("seq-id-dropout"), default=SEQ_ID_DROPOUT,
                   help="seq: probability a training step scores an item by its text alone (0 <= p < 1)")
    p.add_argument("--segment-epochs", type=int, default=3,
                   help="seq segment-adapters: epochs of the segment banks on top of the fixed global bank")
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
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where training and evaluation run: auto takes CUDA when torch sees a GPU")
    p.add_argument("--threads", type=_threads, default=0,
                   help="torch threads (0: the CPUs this process may use that others leave free, re-checked "
                        "while it trains; FEDADAPT_THREADS sets it too)")
    p.add_argument("--history", choices=HISTORIES, default=DEFAULT_HISTORY,
                   help="what a context may hold: 'event' (every event before the target, also inside its "
                        "session; the default) or 'session' (only events before the target's session)")
    p.set_defaults(func=run)


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0 (0: follow the free CPUs)")
    return value


def parse_modes(text: str) -> list[str]:
    """"global-adapter,segment-adapters" or "all" -> the modes in the order given (validated)."""
    modes = list(MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown or text!r}; expected {', '.join(MODES)} or all")
    if len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"mode listed twice in {text!r}")
    return modes


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The run the options describe; TrainConfig and AdapterConfig refuse bad values with a ValueError."""
    modes = args.mode if isinstance(args.mode, list) else parse_modes(args.mode)
    # epochs, batch size and lr not given: the arch's (common/defaults.py); the text options of a seq run stay
    # the text model's own (its baselines train text modes)
    shared = {k: getattr(args, k) if getattr(args, k) is not None else v
              for k, v in arch_defaults(args.arch).central(args.adapter_layers).items()}
    text_shared = shared if args.arch == TEXT else arch_defaults(TEXT).central(args.adapter_layers)
    train = TrainConfig(
        epochs=int(text_shared["epochs"]), batch_size=int(text_shared["batch_size"]), lr=float(text_shared["lr"]),
        max_len=args.max_len,
        negatives=args.negatives, pairs_per_user=args.pairs_per_user, seed=args.seed,
        in_batch_negatives=args.in_batch_negatives, device=args.device,
    )
    rank: dict[str, Any] = {} if args.rank is None else {"rank": args.rank}  # unset: the kind's own default
    return ExperimentConfig(
        data=args.data, out=args.out, modes=tuple(modes),
        adapter=AdapterConfig(kind=args.adapter, seed=args.seed, top_layers=args.adapter_layers, **rank), train=train,
        segment_keys=tuple(k.strip() for k in args.segments.split(",") if k.strip()),
        min_segment_users=args.min_segment_users, backbone=args.backbone, max_users=args.max_users,
        eval_users=args.eval_users, init_global=args.init_global, item_tower=args.item_tower, seed=args.seed,
        history=args.history, arch=args.arch,
        seq=SeqConfig(dim=args.seq_dim, max_len=args.seq_max_len, seed=args.seed, id_dropout=args.seq_id_dropout),
        seq_train=SeqTrainConfig(epochs=int(shared["epochs"]), batch_size=int(shared["batch_size"]),
                                 lr=float(shared["lr"]), seed=args.seed, device=args.device,
                                 mask_by=args.seq_mask_by, lr_schedule=args.seq_lr_schedule),
        segment_epochs=args.segment_epochs,
    )


def _line(mode: str, metrics: dict[str, Any], popularity: dict[str, Any]) -> str:
    overall, pop = metrics[OVERALL], popularity[OVERALL]
    return (f"{mode}: ndcg@10 {overall['ndcg@10']:.4f}  hr@10 {overall['hr@10']:.4f}  "
            f"(popularity ndcg@10 {pop['ndcg@10']:.4f}  hr@10 {pop['hr@10']:.4f})")


def run(args: argparse.Namespace) -> int:
    """Run every mode, printing each one's headline metrics as it finishes."""
    resolve_device(args.device)  # cuda without a GPU: one line, exit 2, before any data is read
    PLAN.apply(args.threads)  # FEDADAPT_THREADS=abc: one line, exit 2, before any data is read
    for result in run_experiment(experiment_config(args)):
        print(f"{_line(result.mode, result.metrics, result.popularity)}  -> {result.summary_path}", flush=True)
    return 0
