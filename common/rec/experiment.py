"""A centralized experiment: train baseline modes on one marketplace and write RUN/summary.json per mode.

Each mode is trained on the marketplace, evaluated on the test split (held-out item vs 99 sampled negatives)
and put next to the popularity ranking on the same candidates, so every summary is self-contained. The trained
adapters are saved in RUN/adapters so that a segment-adapters run can start from a global-adapter run's global
adapter (`init_global`). The users a run evaluates (`eval_sample`) are shared with the federated comparison
(simulations/bench/compare.py), so every method is scored on the same people.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from common.data.protocols import Protocol
from common.names import DEFAULT_HISTORY, DEFAULT_SEGMENT_KEYS, GLOBAL, OVERALL, SUMMARY_FILE, split_key
from common.rec.seq_model import SeqConfig
from common.rec.seq_train import SeqTrainConfig

if TYPE_CHECKING:
    from common.adapters import AdapterConfig
    from common.data.examples import UserRecord
    from common.rec.train import TrainConfig

log = logging.getLogger(__name__)

TABLE_FILE = "table.md"  # mode x segment table of a run with several modes (and of a comparison)
UNADAPTED_MODES = ("no-adapter", "full-finetune")  # modes whose summary names no adapter config


@dataclass(frozen=True)
class ExperimentConfig:
    """What one `fedadapt train` run does; several modes share its data, backbone and evaluation users."""

    data: Path  # marketplace folder (fedadapt data generate/load)
    out: Path  # run folder: RUN/summary.json for one mode, RUN/<mode>/summary.json + RUN/table.md for several
    modes: tuple[str, ...]  # in the order they run (global-adapter before segment-adapters reuses its adapter)
    adapter: AdapterConfig
    train: TrainConfig
    segment_keys: tuple[str, ...] = DEFAULT_SEGMENT_KEYS
    min_segment_users: int = 20  # fewer training users: no segment adapter
    backbone: str | None = None  # local model folder, "tiny", or None for the offline MiniLM
    max_users: int | None = None  # train on a seeded sample of this many users (None: all)
    eval_users: int | None = None  # evaluate on a seeded sample of this many users (None: all)
    init_global: Path | None = None  # segment-adapters: reuse this run's global adapter
    item_tower: str = "adapted"
    seed: int = 0
    history: str = DEFAULT_HISTORY  # what a context may hold (common/data/examples.py): "event" or "session"
    arch: str = "text"  # "text": the two-tower RecModel; "seq": the sequential hybrid (common/rec/seq_model.py)
    seq: SeqConfig = SeqConfig()
    seq_train: SeqTrainConfig = SeqTrainConfig()
    segment_epochs: int = 3  # seq segment-adapters: epochs of the segment banks on top of the fixed global bank
    protocol: Protocol = Protocol()  # which events are positives, and the item-cold split (common/data/protocols.py)

    def __post_init__(self) -> None:
        from common.names import ARCHS
        from common.rec.seq_modes import SEQ_MODES

        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        # Arch branches kept in this module: central training (`fedadapt train`) has per-arch modes, trainers and
        # saved formats (common/rec/baselines.py, common/rec/seq_modes.py); the federated arch interface
        # (common/federation/arch.py) covers a federation's model, not these central baselines.
        if self.arch == "seq":
            bad = [m for m in self.modes if m not in (*SEQ_MODES, "no-adapter")]
            if bad:
                raise ValueError(f"mode(s) {bad} do not exist for arch seq; it has no-adapter (the text model's "
                                 f"bare backbone), {', '.join(SEQ_MODES)}")
        if self.segment_epochs < 1:
            raise ValueError(f"segment_epochs must be >= 1, got {self.segment_epochs}")


@dataclass(frozen=True)
class ModeResult:
    """One finished mode: its metrics, the popularity ranking on the same users, where its summary went."""

    mode: str
    metrics: dict[str, Any]
    popularity: dict[str, Any]
    summary_path: Path


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


def load_examples(folder: Path, seed: int, history: str = DEFAULT_HISTORY,
                  protocol: Protocol | None = None) -> tuple[list[UserRecord], dict[str, str]]:
    """User records (leave-one-out, 99 seeded negatives, contexts cut by `history`: common/data/examples.py;
    positives and held-out items by `protocol`: common/data/protocols.py) and item texts from a marketplace
    folder."""
    from common.data.protocols import load_split

    split = load_split(folder, protocol or Protocol(), seed, history)
    return split.records, split.item_texts


def global_adapter_from(folder: Path, adapter_cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """The global adapter a `fedadapt train` run saved in folder/adapters; it must use `adapter_cfg`."""
    from common.adapters.storage import read_adapter_folder

    saved_cfg, _, state = read_adapter_folder(folder / "adapters")
    if saved_cfg != adapter_cfg:
        raise ValueError(f"--init-global {folder} used adapter {saved_cfg}, this run {adapter_cfg}")
    chosen = {k: v for k, v in state.items() if split_key(k)[0] == GLOBAL}
    if not chosen:
        raise ValueError(f"--init-global {folder} has no '{GLOBAL}' adapter")
    return chosen


def run_experiment(cfg: ExperimentConfig) -> Iterator[ModeResult]:
    """Train and evaluate every mode of `cfg`, yielding each as soon as its summary is written.

    A generator so that the caller can report progress mode by mode: nothing runs until it is iterated.
    After the last of several modes, RUN/table.md holds them side by side.
    """
    from common.adapters.storage import save_adapters
    from common.backbone import load_backbone
    from common.rec.baselines import build_and_train
    from common.rec.evaluate import evaluate, evaluate_popularity
    from common.rec.model import ItemCache
    from common.rec.seq_modes import build_and_train_seq, save_banks
    from common.rec.seq_train import evaluate_seq

    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    records, item_texts = load_examples(cfg.data, seed=cfg.seed, history=cfg.history, protocol=cfg.protocol)
    if not records:
        raise ValueError(f"{cfg.data}: no user has enough positives for a train/valid/test split")
    train_records = [records[i] for i in _sample(records, cfg.max_users, cfg.seed)]
    eval_records = eval_sample(records, cfg.eval_users, cfg.seed)
    backbone = load_backbone(cfg.backbone)
    global_state = global_adapter_from(cfg.init_global, cfg.adapter) if cfg.init_global is not None else None
    popularity = evaluate_popularity(eval_records, item_texts, fit_records=records)
    cache = ItemCache()  # frozen-tower item vectors are shared by every mode of this run
    users = {"total": len(records), "train": len(train_records), "eval": len(eval_records)}

    table: dict[str, dict[str, object]] = {}
    seq_global: dict[str, torch.Tensor] | None = None
    for mode in cfg.modes:
        out = cfg.out if len(cfg.modes) == 1 else cfg.out / mode
        mode_start = time.perf_counter()
        seq = cfg.arch == "seq" and mode != "no-adapter"
        model: Any
        if seq:
            model, training = build_and_train_seq(
                mode, backbone, train_records, item_texts, cfg.seq, cfg.seq_train, cfg.segment_keys,
                cfg.min_segment_users, seq_global, cfg.segment_epochs)
            if mode == "global-adapter":
                seq_global = model.adapter_state([GLOBAL])
        else:
            model, training = build_and_train(
                mode, backbone, cfg.adapter, train_records, item_texts, cfg.train, cfg.segment_keys,
                cfg.min_segment_users, global_state, cfg.item_tower, cache,
            )
        train_s = time.perf_counter() - mode_start
        if not seq and mode == "global-adapter" and model.adapted is not None:
            global_state = model.adapted.adapter_state([GLOBAL], trainable_only=False)  # segment mode reuses it
        eval_start = time.perf_counter()
        metrics = evaluate_seq(model, eval_records) if seq else evaluate(model, eval_records, item_texts)
        eval_s = time.perf_counter() - eval_start
        out.mkdir(parents=True, exist_ok=True)
        if seq:
            save_banks(model, out / "adapters", item_texts)
        elif model.adapted is not None and model.adapter_names:
            save_adapters(model.adapted, out / "adapters", model.adapter_names)
        summary = {
            "mode": mode,
            "arch": "seq" if seq else "text",
            "data": str(cfg.data),
            "history": cfg.history,
            "protocol": cfg.protocol.to_dict(),
            "adapter": cfg.adapter.to_dict() if mode not in UNADAPTED_MODES and not seq else None,
            "seq": cfg.seq.to_dict() if seq else None,
            "backbone": backbone.source,
            "segments": list(cfg.segment_keys),
            "item_tower": cfg.item_tower if not seq else "text vectors + item rows",
            "adapters": model.adapter_names,
            "train_config": cfg.seq_train.to_dict() if seq else cfg.train.to_dict(),
            "users": users,
            "items": len(item_texts),
            "trainable_params": sum(p.numel() for p in model.parameters()) if seq else
            sum(p.numel() for p in model.trainable_parameters(model.adapter_names))
            if mode != "no-adapter" else 0,
            "training": training,
            "metrics": metrics,
            "popularity": popularity,
            "seconds": {"train": train_s, "eval": eval_s, "total": time.perf_counter() - mode_start},
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True))
        table[mode] = metrics
        yield ModeResult(mode, metrics, popularity, out / SUMMARY_FILE)
    if len(cfg.modes) > 1:
        (cfg.out / TABLE_FILE).write_text(markdown_table(table, popularity))
        log.info("all modes done in %.0f s; table in %s", time.perf_counter() - started, cfg.out / TABLE_FILE)


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
