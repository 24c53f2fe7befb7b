"""The throughput benchmark (`fedadapt bench throughput`): training pairs per second of one training loop.

Issue 12 measures a naive PEFT two-tower on a GPU ("a naive PEFT LoRA two-tower on a MiniLM-shaped encoder
trains 6,400 pairs/s at batch 256 in fp32 and 21,700 pairs/s at batch 1,024 in bf16 on one H200"); this puts
the project's own loops next to it, per (row, batch, precision), on the same device and in the same process:

- naive-peft: PEFT LoRA r=8 (alpha 16) on query/value, both towers on the one encoder, users padded/cut to
  64 tokens and items to 32, mean-pooled unit vectors, in-batch softmax (B x B logits / 0.05), AdamW 1e-3.
- ours-text (the run config's adapter-layers=2: top 2 layers adapted, lower layers cached) and ours-text-all
  (adapter-layers=0, every layer adapted):
  `common.rec.train.train_epochs` on a `RecModel` built like the federation builds it
  (`common.federation.task.new_model`: FFA-LoRA on the run's adapter config), one epoch over whole users
  until batch x steps pairs; one untimed warm-up call (batch x warmup pairs) first.
- ours-seq: `common.rec.seq_train.train_seq` on the sequential model; batch counts users per step and the
  figure is next-item targets per second (a seq "pair" is a target).

Warm-up steps are not timed; CUDA is synchronized before every clock read. bf16 wraps the loop of every row in
`torch.autocast(device_type, dtype=torch.bfloat16)`. Nothing here imports flwr, datasets, cryptography or
dp_accounting (tests/test_bench_throughput.py checks), so the module runs on a bare GPU machine.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import Backbone, load_backbone
from common.device import cpu_model, device_label, resolve_device
from common.names import GLOBAL
from common.protocol import FedConfig
from common.rec.train import Pair, TrainConfig, train_epochs, training_pairs
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

ROWS = ("naive-peft", "ours-text-all", "ours-text", "ours-seq")
PRECISIONS = ("fp32", "bf16")
USER_TOKENS, ITEM_TOKENS = 64, 32  # the shapes of the naive row
TEMPERATURE = 0.05
NAIVE_LR = 1e-3
LORA_RANK = 8


@dataclass(frozen=True)
class ThroughputOptions:
    device: str = "auto"
    batch_sizes: tuple[int, ...] = (256, 1024)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    rows: tuple[str, ...] = ROWS
    steps: int = 20  # timed steps per (row, batch, precision)
    warmup: int = 3  # untimed steps before them
    backbone: str = "minilm"  # minilm (the offline package), tiny (the test BERT) or a model folder
    data: Path | None = None  # a marketplace folder; None: synthetic data generated in memory
    users: int = 2000  # synthetic data only
    products: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "users", "products"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch sizes {self.batch_sizes} must be positive integers")
        for label, given, known in (("row", self.rows, ROWS), ("precision", self.precisions, PRECISIONS)):
            unknown = [x for x in given if x not in known]
            if unknown or not given:
                raise ValueError(f"unknown {label}(s) {unknown or list(given)}; expected some of {', '.join(known)}")

    @property
    def backbone_arg(self) -> str:
        """The federation's spelling: "" is the offline MiniLM."""
        return "" if self.backbone == "minilm" else self.backbone


@dataclass(frozen=True)
class Cell:
    """One measurement: `pairs` trained in `seconds` (warm-up excluded)."""

    row: str
    batch: int
    precision: str
    pairs: int
    steps: int
    seconds: float

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _timed(device: torch.device) -> Iterator[list[float]]:
    """Synchronized wall-clock seconds of the block, appended to the yielded list."""
    out: list[float] = []
    _sync(device)
    started = time.perf_counter()
    yield out
    _sync(device)
    out.append(time.perf_counter() - started)


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16: autocast on the device's type; fp32: nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def bf16_supported(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


# -- data -------------------------------------------------------------------------------------------------------
def load_records(opts: ThroughputOptions) -> tuple[list[RecordLike], dict[str, str]]:
    """User records and item texts of the marketplace folder, or of synthetic data built in memory."""
    from common.data.examples import ExampleConfig, build_examples, build_item_texts
    from common.data.schema import read_marketplace
    from common.data.synthetic import generate_marketplace

    market = (read_marketplace(opts.data) if opts.data is not None
              else generate_marketplace(opts.users, opts.products, seed=opts.seed))
    return list(build_examples(market, ExampleConfig(seed=opts.seed))), build_item_texts(market.products)


def take_until(records: Sequence[RecordLike], count: Callable[[RecordLike], int], total: int) -> list[RecordLike]:
    """Whole records in order (cycling when the data is smaller) until their counts reach `total`."""
    usable = [r for r in records if count(r) > 0]
    if not usable:
        raise ValueError("no record has anything to train on")
    chosen: list[RecordLike] = []
    reached = 0
    while reached < total:
        record = usable[len(chosen) % len(usable)]
        chosen.append(record)
        reached += count(record)
    return chosen


def _pair_count(record: RecordLike) -> int:
    return len(record.train_pairs)


# -- rows -------------------------------------------------------------------------------------------------------
def _mean_pooled(model: torch.nn.Module, backbone: Backbone, texts: Sequence[str], tokens: int,
                 device: torch.device) -> torch.Tensor:
    batch = backbone.tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokens,
                               return_tensors="pt").to(device)
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state  # (B,T,H)
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)  # (B, H)


def naive_peft(opts: ThroughputOptions, pairs: Sequence[Pair], item_texts: Mapping[str, str], batch: int,
               precision: str, device: torch.device) -> Cell:
    """The issue's reference loop on a fresh backbone copy: PEFT LoRA, in-batch softmax, AdamW."""
    from peft import LoraConfig, get_peft_model

    backbone = load_backbone(opts.backbone_arg or None)  # a fresh copy: PEFT injects into it in place
    lora = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=["query", "value"])
    model = get_peft_model(backbone.model, lora).to(device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=NAIVE_LR)
    order = np.random.default_rng(opts.seed).permutation(len(pairs))
    started = time.perf_counter()
    for step in range(opts.warmup + opts.steps):
        if step == opts.warmup:
            _sync(device)
            started = time.perf_counter()
        chosen = [pairs[int(order[(step * batch + j) % len(pairs)])] for j in range(batch)]
        with precision_context(precision, device):
            users = _mean_pooled(model, backbone, [p.context for p in chosen], USER_TOKENS, device)  # (B, H)
            items = _mean_pooled(model, backbone, [item_texts[p.item] for p in chosen], ITEM_TOKENS, device)
            logits = (users @ items.T).float() / TEMPERATURE  # (B, B)
            loss = F.cross_entropy(logits, torch.arange(batch, device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return Cell("naive-peft", batch, precision, batch * opts.steps, opts.steps, time.perf_counter() - started)


def ours_text(opts: ThroughputOptions, records: Sequence[RecordLike], item_texts: Mapping[str, str], batch: int,
              precision: str, device: torch.device, adapter_layers: int) -> Cell:
    """`train_epochs` as a client runs it, one epoch over batch x steps pairs after a warm-up call (which also
    fills the lower-layer cache when `adapter_layers` leaves frozen layers below the adapters)."""
    from common.federation import task

    cfg = FedConfig(backbone=opts.backbone_arg, seed=opts.seed, device=device.type, adapter_layers=adapter_layers)
    model = task.new_model(cfg, [GLOBAL])
    tcfg = TrainConfig(epochs=1, batch_size=batch, max_len=USER_TOKENS, seed=opts.seed, device=device.type)
    with precision_context(precision, device):
        warm = take_until(records, _pair_count, batch * max(opts.warmup, 1))
        timed = take_until(records, _pair_count, batch * opts.steps)
        train_epochs(model, warm, item_texts, tcfg, [GLOBAL])
        with _timed(device) as seconds:
            stats = train_epochs(model, timed, item_texts, tcfg, [GLOBAL])
    name = "ours-text-all" if adapter_layers == 0 else "ours-text"
    return Cell(name, batch, precision, int(stats["num_examples"]), int(stats["steps"]), seconds[0])


def ours_seq(opts: ThroughputOptions, records: Sequence[RecordLike], item_texts: Mapping[str, str], batch: int,
             precision: str, device: torch.device) -> Cell:
    """`train_seq` on the sequential model, batch users per step; its "pairs" are next-item targets."""
    from common.federation import task
    from common.rec.seq_model import SeqConfig, SeqRecModel, frozen_item_vectors
    from common.rec.seq_train import SeqTrainConfig, train_items_of, train_seq

    catalog = sorted(item_texts)
    vectors = frozen_item_vectors(task.backbone_for(opts.backbone_arg), catalog, item_texts)  # cached per process
    model = SeqRecModel(SeqConfig(seed=opts.seed), catalog, vectors)
    tcfg = SeqTrainConfig(epochs=1, batch_size=batch, seed=opts.seed, device=device.type)
    def seq_user(record: RecordLike) -> int:
        return int(len(train_items_of(record)) >= 2)  # train_seq skips the others

    with precision_context(precision, device):
        train_seq(model, take_until(records, seq_user, batch * max(opts.warmup, 1)), tcfg, [GLOBAL])
        with _timed(device) as seconds:
            stats = train_seq(model, take_until(records, seq_user, batch * opts.steps), tcfg, [GLOBAL])
    return Cell("ours-seq", batch, precision, int(stats["num_examples"]), int(stats["steps"]), seconds[0])


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass
class ThroughputResult:
    options: ThroughputOptions
    device: str
    cells: list[Cell]
    skipped: list[str]

    def as_json(self) -> dict[str, object]:
        naive = {(c.batch, c.precision): c.pairs_per_second for c in self.cells if c.row == "naive-peft"}
        rows = [{**asdict(c), "pairs_per_second": c.pairs_per_second, "device": self.device,
                 "vs_naive_peft": (c.pairs_per_second / naive[(c.batch, c.precision)]
                                   if (c.batch, c.precision) in naive else None)} for c in self.cells]
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        return {"options": options, "device": self.device, "torch": torch.__version__, "rows": rows,
                "skipped": self.skipped}


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU model."""
    return device_label(device) if device.type == "cuda" else cpu_model()


def bench_throughput(opts: ThroughputOptions) -> ThroughputResult:
    """Every (batch, precision, row) cell in one process on one device."""
    device = resolve_device(opts.device)
    records, item_texts = load_records(opts)
    pairs = training_pairs(records)
    if not pairs:
        raise ValueError("the data has no training pairs")
    measure = {"naive-peft": lambda b, p: naive_peft(opts, pairs, item_texts, b, p, device),
               "ours-text-all": lambda b, p: ours_text(opts, records, item_texts, b, p, device, 0),
               "ours-text": lambda b, p: ours_text(opts, records, item_texts, b, p, device,
                                                   FedConfig.adapter_layers),
               "ours-seq": lambda b, p: ours_seq(opts, records, item_texts, b, p, device)}
    cells: list[Cell] = []
    skipped: list[str] = []
    for precision in opts.precisions:
        if precision == "bf16" and not bf16_supported(device):
            skipped.append(f"bf16 skipped: {device_name(device)} does not support bfloat16")
            log.warning(skipped[-1])
            continue
        for batch in opts.batch_sizes:
            for row in opts.rows:
                cell = measure[row](batch, precision)
                log.info("%s batch %d %s: %.1f pairs/s (%d pairs, %d steps, %.2f s)", row, batch, precision,
                         cell.pairs_per_second, cell.pairs, cell.steps, cell.seconds)
                cells.append(cell)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return ThroughputResult(opts, device_name(device), cells, skipped)


def format_throughput(data: Mapping[str, object]) -> str:
    """Markdown table from `ThroughputResult.as_json()`."""
    rows = data["rows"]
    assert isinstance(rows, list)
    lines = ["| row | batch | precision | pairs/s | x naive-peft | device |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["vs_naive_peft"] is None else f"{r['vs_naive_peft']:.2f}"
        lines.append(f"| {r['row']} | {r['batch']} | {r['precision']} | {r['pairs_per_second']:,.1f} | {ratio} | "
                     f"{r['device']} |")
    skipped = data["skipped"]
    assert isinstance(skipped, list)
    lines.extend(str(s) for s in skipped)
    lines.append("ours-seq counts next-item targets (batch = users per step); warm-up steps are not timed")
    return "\n".join(lines)

