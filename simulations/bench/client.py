"""The client benchmark (`fedadapt bench client`): what one client update costs, against two simpler clients.

All clients train on the same users: one client's shard of the project's own per-segment partition (synthetic
data by default, `--data` for a marketplace folder such as MovieLens-1M), whole users in order until `pairs`
training pairs are reached. In one process, each repeat runs one update of every client back to back
(interleaved, so load that drifts on a shared machine hits every row alike), and the figures are medians over
the repeats after `warmup` untimed updates (one by default). Rows:

- naive-peft: a naive Flower+PEFT client. Every update reloads the backbone from disk, wraps it with PEFT LoRA
  (r=8 on query/value), loads the received LoRA state, re-tokenizes every batch and trains one epoch of
  in-batch softmax over CLS vectors (cosine / 0.05), 32 pairs per step.
- per-example: the same model trained one example per forward (the notebook loop this project grew from):
  per pair the user, the positive and one sampled catalog negative each get their own forward, one step each.
- ours-text-grad: the text update as it was before issue 12 (adapters in every layer, lr 3e-3, run config
  negative-pool=false: the 32 sampled negatives of every step through the adapted item tower with gradient).
- ours-text-all: the same with the negative pool (negative-pool=true, adapter-layers=0, lr 3e-3): the text
  default before adapter-layers=2.
- ours-text / ours-seq: the update the federation runs (`common.federation.task.local_train`) with the run
  config's defaults (text: adapters in the top 2 layers, the frozen lower layers' outputs computed once per text
  and cached in the process (the untimed warm-up fills the cache), batch 16, lr 1e-2; seq: 32 users per step,
  lr 1e-3). A seq "pair" is a next-item training target of the same users.

Quality is NDCG@10 (sampled protocol: the held-out validation item against its 99 negatives, the project's
`FederatedArch.evaluate`) on the shard's validation users after the same number of updates of each client.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.backbone import Backbone, load_backbone
from common.device import cpu_model, device_label, resolve_device
from common.federation import task
from common.federation.arch import arch_for
from common.federation.client_data import ClientData, client_data, record_segment_names
from common.names import GLOBAL, SEQ, TEXT
from common.neighbours import busy_neighbours
from common.protocol import FedConfig, RoundHParams
from common.rec.evaluate import evaluate
from common.rec.model import RecModel
from common.rec.train import Pair, training_pairs
from common.rec.user_record import RecordLike
from common.threads import PLAN

log = logging.getLogger(__name__)

WORK = Path(__file__).resolve().parent.parent / ".work" / "bench-client"  # the project's ignored working area

ROWS = ("naive-peft", "per-example", "ours-text-grad", "ours-text-all", "ours-text", "ours-seq")
UNIT = 256  # pairs: the unit the table reports seconds per
NAIVE_BATCH = 32
NAIVE_LR = 3e-3  # the project's measured best rate for LoRA on MiniLM, so the naive client is not handicapped
TEMPERATURE = 0.05
LORA_RANK = 8


@dataclass(frozen=True)
class ClientBenchOptions:
    backbone: str | None = None  # None = offline MiniLM, "tiny" = test BERT, else a folder
    pairs: int = 256  # training pairs of the benchmarked users (whole users, in shard order, until reached)
    repeats: int = 3
    warmup: int = 1  # untimed updates of every row before the timed ones (they count for the quality column)
    data: Path | None = None  # None: synthetic data like the demo preset's, generated into a temporary folder
    clients: int = 10  # partitions of the per-segment partition; the benchmark uses one of them
    partition: int = 0
    users: int = 1000  # synthetic data only
    products: int = 400
    device: str = "cpu"
    threads: int = 0  # 0: the CPUs this process may use that others leave free (common/threads.py)
    neighbours: int = 0  # busy processes started beside the rows and stopped after them (common/neighbours.py)
    eval_users: int = 64
    rows: tuple[str, ...] = ROWS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("pairs", "repeats", "clients", "users", "products", "eval_users"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.partition < self.clients:
            raise ValueError(f"partition {self.partition} is not in [0, {self.clients})")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if self.threads < 0:
            raise ValueError(f"threads={self.threads} must be >= 0 (0: follow the free CPUs)")
        if self.neighbours < 0:
            raise ValueError(f"neighbours={self.neighbours} must be >= 0")
        unknown = [r for r in self.rows if r not in ROWS]
        if unknown or not self.rows:
            raise ValueError(f"unknown row(s) {unknown or self.rows}; expected some of {', '.join(ROWS)}")


@dataclass
class Row:
    """One client's timings (one entry per timed repeat) and the quality it reached."""

    pairs: int = 0  # pairs (seq: targets) one update trains on
    seconds: list[float] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)  # torch threads each timed update started on
    ndcg10: float = float("nan")
    ndcg10_start: float = float("nan")

    def as_json(self, reference: Mapping[str, float]) -> dict[str, object]:
        median = statistics.median(self.seconds)
        per_unit = median * UNIT / self.pairs
        return {"pairs_per_update": self.pairs, "seconds_per_update": median, "seconds_per_256_pairs": per_unit,
                "pairs_per_second": self.pairs / median, "seconds_all": self.seconds,
                "threads": self.threads,
                "ndcg10_valid": self.ndcg10, "ndcg10_valid_start": self.ndcg10_start,
                **{f"vs_{name}": per_unit / ref for name, ref in reference.items()}}


# -- the shard ------------------------------------------------------------------------------------------------
def synthetic_folder(opts: ClientBenchOptions) -> Path:
    """Synthetic data kept under .work/ and reused: the clients' secrets live next to it, so every run of the
    benchmark samples the same validation candidates and its NDCG@10 figures compare across runs."""
    from common.data.schema import write_marketplace
    from common.data.synthetic import generate_marketplace

    folder = WORK / f"synthetic-{opts.users}-{opts.products}-{opts.seed}"
    if not (folder / ".complete").is_file():
        write_marketplace(generate_marketplace(opts.users, opts.products, seed=opts.seed), folder)
        (folder / ".complete").write_text("ok\n")
    return folder


def shard_of(cfg: FedConfig, opts: ClientBenchOptions) -> ClientData:
    """The benchmarked users: whole users of one partition, in order, until `opts.pairs` training pairs."""
    data = client_data(cfg, opts.partition, opts.clients)
    chosen: list[RecordLike] = []
    total = 0
    for record in data.train_records():
        if total >= opts.pairs:
            break
        chosen.append(record)
        total += len(record.train_pairs)
    if not chosen:
        raise ValueError(f"partition {opts.partition} of {opts.clients} has no user with training pairs")
    return ClientData(data.partition_id, chosen, data.item_texts,
                      record_segment_names(chosen, cfg.adapter_segment_keys))


# -- ours --------------------------------------------------------------------------------------------------------
class OursClient:
    """The federation's own client update, its state carried from update to update like the server would."""

    def __init__(self, cfg: FedConfig, shard: ClientData, eval_records: Sequence[RecordLike]) -> None:
        self.cfg, self.shard, self.eval_records = cfg, shard, eval_records
        self.names = [GLOBAL, *shard.segment_names]
        self.start_key = cfg.arch  # rows that start from the same model score the same before training
        self.state = task.initial_state(cfg, self.names)
        self.round = 0

    def update(self) -> int:
        self.round += 1
        result = task.local_train(self.cfg, self.shard, self.state, RoundHParams.from_run(self.cfg, self.round))
        self.state = {k: v + result.delta[k] for k, v in self.state.items()}
        return result.num_examples

    def quality(self) -> float:
        arch = arch_for(self.cfg.arch)
        model = arch.client_model(self.cfg, self.shard.item_texts)
        arch.load_state(model, self.names, self.state)
        result = arch.evaluate(model, self.eval_records, self.shard.item_texts, ks=(10,), split="valid")
        return float(result["overall"]["ndcg@10"])  # type: ignore[index]


# -- the naive clients ---------------------------------------------------------------------------------------------
class CLSModel(RecModel):
    """A backbone (PEFT-wrapped) scored by the project's evaluation with CLS vectors, as the naive client trains."""

    def encode(self, texts: Sequence[str], routing: object, max_len: int | None = None) -> torch.Tensor:
        input_ids, attention_mask = self.tokenize(texts, max_len)
        device = next(self.backbone.model.parameters()).device
        hidden = self.backbone.model(input_ids=input_ids.to(device),
                                     attention_mask=attention_mask.to(device)).last_hidden_state  # (B, T, H)
        return F.normalize(hidden[:, 0], dim=-1).cpu()


class NaiveClient:
    """Reload + PEFT-wrap per update; batch 32 in-batch softmax (`per_example=False`) or one example per forward."""

    def __init__(self, backbone: str | None, shard: ClientData, eval_records: Sequence[RecordLike],
                 device: torch.device, per_example: bool, max_len: int, seed: int) -> None:
        self.backbone, self.shard, self.eval_records = backbone, shard, eval_records
        self.device, self.per_example, self.max_len = device, per_example, max_len
        self.pairs: list[Pair] = training_pairs(shard.records)
        self.catalog = sorted(shard.item_texts)
        self.state: dict[str, np.ndarray] | None = None
        self.start_key = "naive"
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)

    def _model(self) -> tuple[torch.nn.Module, Backbone]:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

        backbone = load_backbone(self.backbone)  # from disk again: a naive client keeps nothing between messages
        lora = LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, lora_dropout=0.0, target_modules=["query", "value"])
        model = get_peft_model(backbone.model, lora)
        if self.state is not None:
            set_peft_model_state_dict(model, {k: torch.from_numpy(v) for k, v in self.state.items()})
        return model.to(self.device), backbone

    def _encode(self, model: torch.nn.Module, backbone: Backbone, texts: Sequence[str]) -> torch.Tensor:
        batch = backbone.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                                   return_tensors="pt").to(self.device)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return F.normalize(out[:, 0], dim=-1)  # (B, H) CLS vectors

    def _steps(self) -> list[tuple[list[str], list[str]]]:
        """(user texts, item texts) per optimizer step; per example: [user], [positive, negative]."""
        texts = self.shard.item_texts
        order = [self.pairs[int(i)] for i in self.rng.permutation(len(self.pairs))]
        if not self.per_example:
            return [([p.context for p in order[s:s + NAIVE_BATCH]], [texts[p.item] for p in order[s:s + NAIVE_BATCH]])
                    for s in range(0, len(order), NAIVE_BATCH)]
        steps = []
        for pair in order:
            negative = pair.item
            while negative == pair.item:
                negative = self.catalog[int(self.rng.integers(len(self.catalog)))]
            steps.append(([pair.context], [texts[pair.item], texts[negative]]))
        return steps

    def update(self) -> int:
        from peft import get_peft_model_state_dict

        model, backbone = self._model()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=NAIVE_LR)
        for users, items in self._steps():
            if self.per_example:
                user = self._encode(model, backbone, users)  # (1, H): one forward per sequence
                item_vecs = torch.cat([self._encode(model, backbone, [t]) for t in items])  # (2, H)
            else:
                user = self._encode(model, backbone, users)
                item_vecs = self._encode(model, backbone, items)
            logits = user @ item_vecs.T / TEMPERATURE  # (B, B) in-batch, or (1, 2) positive vs negative
            target = torch.arange(len(users), device=self.device)
            loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.state = {k: v.detach().cpu().numpy().copy() for k, v in get_peft_model_state_dict(model).items()}
        return len(self.pairs)

    def quality(self) -> float:
        model, backbone = self._model()
        wrapped = Backbone(model, backbone.tokenizer, backbone.source)  # type: ignore[arg-type]  # a PeftModel
        scorer = CLSModel(wrapped, None, max_len=self.max_len)
        result = evaluate(scorer, self.eval_records, self.shard.item_texts, ks=(10,), split="valid")
        return float(result["overall"]["ndcg@10"])  # type: ignore[index]


# -- the run ----------------------------------------------------------------------------------------------------
@dataclass
class ClientBenchResult:
    options: ClientBenchOptions
    machine: dict[str, object]
    shard: dict[str, object]
    rows: dict[str, Row]

    def as_json(self) -> dict[str, object]:
        reference: dict[str, float] = {name: statistics.median(self.rows[name].seconds) * UNIT / self.rows[name].pairs
                     for name in ("ours-text", "ours-seq") if name in self.rows}
        options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.options).items()}
        return {"options": options, "machine": self.machine, "shard": self.shard,
                "rows": {name: row.as_json(reference) for name, row in self.rows.items()}}


def machine_facts(device: torch.device, opts: ClientBenchOptions) -> dict[str, object]:
    """What the figures were measured on (the load average says whether the machine was busy)."""
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": opts.threads or "free CPUs",
            "neighbours": opts.neighbours, "device": device_label(device),
            "torch": torch.__version__, "load_average_1m": round(os.getloadavg()[0], 2)}


def _clients(opts: ClientBenchOptions, folder: Path, device: torch.device
             ) -> tuple[dict[str, OursClient | NaiveClient], dict[str, object]]:
    backbone = "" if opts.backbone in (None, "minilm") else str(opts.backbone)
    text_cfg = FedConfig(data_dir=str(folder), backbone=backbone, arch=TEXT, seed=opts.seed,
                         client_threads=opts.threads, device=opts.device, batch_size=16)
    every_layer = replace(text_cfg, adapter_layers=0, lr=3e-3)  # the text defaults before adapter-layers=2
    seq_cfg = replace(text_cfg, arch=SEQ, batch_size=32, lr=1e-3)
    shard = shard_of(text_cfg, opts)
    evals = shard.records[: opts.eval_users]
    makers: dict[str, Callable[[], OursClient | NaiveClient]] = {
        "naive-peft": lambda: NaiveClient(opts.backbone if backbone else None, shard, evals, device, False,
                                          text_cfg.max_len, opts.seed),
        "per-example": lambda: NaiveClient(opts.backbone if backbone else None, shard, evals, device, True,
                                           text_cfg.max_len, opts.seed),
        "ours-text-grad": lambda: OursClient(replace(every_layer, negative_pool=False), shard, evals),
        "ours-text-all": lambda: OursClient(every_layer, shard, evals),
        "ours-text": lambda: OursClient(text_cfg, shard, evals),
        "ours-seq": lambda: OursClient(seq_cfg, shard, evals),
    }
    facts: dict[str, object] = {"partition": opts.partition, "partitions": opts.clients, "users": len(shard.records),
             "pairs": len(training_pairs(shard.records)), "eval_users": len(evals), "items": len(shard.item_texts)}
    return {name: makers[name]() for name in opts.rows}, facts


def bench_client(opts: ClientBenchOptions) -> ClientBenchResult:
    """Interleaved timed updates of every row on one shard, then each row's NDCG@10 on the validation users."""
    device = resolve_device(opts.device)
    with busy_neighbours(opts.neighbours):
        return _bench_client(opts, device)


def _bench_client(opts: ClientBenchOptions, device: torch.device) -> ClientBenchResult:
    PLAN.apply(opts.threads)
    folder = Path(opts.data).resolve() if opts.data is not None else synthetic_folder(opts)
    clients, shard = _clients(opts, folder, device)
    rows = {name: Row() for name in clients}
    starts: dict[str, float] = {}
    for name, client in clients.items():
        if client.start_key not in starts:
            starts[client.start_key] = client.quality()
        rows[name].ndcg10_start = starts[client.start_key]
    for repeat in range(opts.warmup + opts.repeats):  # the first `warmup` fill caches and are not timed
        for name, client in clients.items():
            threads = PLAN.apply(opts.threads)
            started = time.perf_counter()
            rows[name].pairs = client.update()
            elapsed = time.perf_counter() - started
            if repeat >= opts.warmup:
                rows[name].seconds.append(elapsed)
                rows[name].threads.append(threads)
            log.info("repeat %d %s: %.2f s for %d pairs", repeat, name, elapsed, rows[name].pairs)
    for name, client in clients.items():
        rows[name].ndcg10 = client.quality()
    return ClientBenchResult(opts, machine_facts(device, opts), shard, rows)


def format_client_table(data: Mapping[str, object]) -> str:
    """The Markdown table of the README's "Fast clients" subsection, from `ClientBenchResult.as_json()`."""
    rows = data["rows"]
    assert isinstance(rows, dict)
    refs = [n for n in ("ours-text", "ours-seq") if n in rows]
    head = ("| client | pairs/update | s per update | s per 256 pairs | pairs/s | threads | "
            + " | ".join(f"x {r}" for r in refs) + " | NDCG@10 valid (start -> after) |")
    lines = [head, "|" + "---|" * (7 + len(refs))]
    for name, row in rows.items():
        ratios = " | ".join(f"{row[f'vs_{r}']:.2f}" for r in refs)
        threads = ",".join(str(t) for t in row["threads"])
        lines.append(f"| {name} | {row['pairs_per_update']} | {row['seconds_per_update']:.2f} | "
                     f"{row['seconds_per_256_pairs']:.2f} | {row['pairs_per_second']:.1f} | {threads} | {ratios} | "
                     f"{row['ndcg10_valid_start']:.4f} -> {row['ndcg10_valid']:.4f} |")
    machine, shard = data["machine"], data["shard"]
    lines.append(f"\nmachine: {machine}\nshard: {shard}\n"
                 f"x ours: a row's seconds per 256 pairs over ours' (above 1: ours is that many times faster)")
    return "\n".join(lines)
