"""The adapters benchmark: per kind, trainable size, fp32/int8 bytes, step time, identity at init.

Step time is forward+backward of the adapted model on one batch divided by the frozen backbone's no-grad
forward on the same batch, in this process. Each repeat times the baseline and then the step back to back and
the reported ratio is the median of those paired ratios, so machine load that drifts during the run (other
processes on a shared machine) cancels instead of biasing whichever kind ran during a busy spell.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common.adapters import ADAPTER_KINDS, AdaptedModel, AdapterConfig
from common.adapters.quant import nbytes, quantization_error, quantize_int8
from common.backbone import Backbone, load_backbone
from common.names import GLOBAL

log = logging.getLogger(__name__)

IDENTITY_ATOL = 1e-6
PERTURB_STD = 0.02  # stands in for trained weights when measuring int8 output error


@dataclass(frozen=True)
class AdapterBenchOptions:
    backbone: str | None = None  # None = offline MiniLM, "tiny" = test BERT, else a folder
    batch: int = 32
    tokens: int = 64
    repeats: int = 5
    kinds: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch", "tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        unknown = [k for k in self.kinds or () if k not in ADAPTER_KINDS]
        if unknown:
            raise ValueError(f"unknown adapter kind(s) {', '.join(unknown)}; expected {', '.join(ADAPTER_KINDS)}")


@dataclass(frozen=True)
class KindRow:
    trainable_params: int
    backbone_params: int
    bytes_fp32: int
    bytes_int8: int
    step_time_ratio: float
    identity_at_init: bool
    int8_relative_error: float  # table only: output error of int8 vs fp32 adapters (perturbed weights)

    def as_json(self) -> dict[str, int | float | bool]:
        return {
            "trainable_params": self.trainable_params,
            "backbone_params": self.backbone_params,
            "bytes_fp32": self.bytes_fp32,
            "bytes_int8": self.bytes_int8,
            "step_time_ratio": self.step_time_ratio,
            "identity_at_init": self.identity_at_init,
        }


@dataclass(frozen=True)
class AdapterBenchResult:
    source: str
    options: AdapterBenchOptions
    backbone_forward_s: float
    rows: dict[str, KindRow]


def _paired_ratio(
    step: Callable[[], object], baseline: Callable[[], object], repeats: int
) -> tuple[float, list[float]]:
    """(median of step/baseline over back-to-back pairs, the baseline times)."""
    baseline()  # warm-up: allocator, kernels, lazy init
    step()
    ratios, baseline_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        baseline()
        middle = time.perf_counter()
        step()
        end = time.perf_counter()
        baseline_times.append(middle - start)
        ratios.append((end - middle) / (middle - start))
    return statistics.median(ratios), baseline_times


def _measure_kind(bb: Backbone, kind: str, ids: torch.Tensor, mask: torch.Tensor, opts: AdapterBenchOptions,
                  baseline: Callable[[], object], baseline_times: list[float]) -> KindRow:
    model = AdaptedModel(bb, AdapterConfig(kind=kind, seed=opts.seed), names=[GLOBAL])
    model.eval()
    with torch.no_grad():
        reference = bb.model(input_ids=ids, attention_mask=mask)[0]
        out = model(ids, mask, routing=[GLOBAL])
    identity = out.shape == reference.shape and bool((out - reference).abs().max() <= IDENTITY_ATOL)
    state = model.adapter_state([GLOBAL])
    model.train()

    def step() -> None:
        loss = model(ids, mask, routing=[GLOBAL]).pow(2).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    ratio, times = _paired_ratio(step, baseline, opts.repeats)
    baseline_times.extend(times)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(opts.seed)
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * PERTURB_STD)
    probe = slice(0, min(4, ids.shape[0]))
    error = quantization_error(model, ids[probe], mask[probe], routing=[GLOBAL], names=[GLOBAL])
    return KindRow(
        trainable_params=sum(p.numel() for p in model.trainable_parameters([GLOBAL])),
        backbone_params=bb.num_parameters(),
        bytes_fp32=nbytes(state),
        bytes_int8=nbytes(quantize_int8(state)),
        step_time_ratio=ratio,
        identity_at_init=identity,
        int8_relative_error=error.relative_error,
    )


def bench_adapters(opts: AdapterBenchOptions) -> AdapterBenchResult:
    bb = load_backbone(opts.backbone)
    vocab = int(bb.model.config.vocab_size)
    gen = torch.Generator().manual_seed(opts.seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (opts.batch, opts.tokens), generator=gen)
    mask = torch.ones_like(ids)

    def baseline() -> None:
        with torch.no_grad():
            bb.model(input_ids=ids, attention_mask=mask)

    baseline_times: list[float] = []
    rows = {}
    for kind in opts.kinds or ADAPTER_KINDS:
        log.info("bench adapters: measuring %s", kind)
        rows[kind] = _measure_kind(bb, kind, ids, mask, opts, baseline, baseline_times)
    return AdapterBenchResult(bb.source, opts, statistics.median(baseline_times), rows)


def format_table(result: AdapterBenchResult) -> str:
    opts = result.options
    header = ("kind", "trainable", "% backbone", "fp32 bytes", "int8 bytes", "int8 rel err", "step/fwd", "identity")
    lines = [
        (
            kind, f"{r.trainable_params:,}", f"{100 * r.trainable_params / r.backbone_params:.3f}%",
            f"{r.bytes_fp32:,}", f"{r.bytes_int8:,}", f"{r.int8_relative_error:.2e}", f"{r.step_time_ratio:.2f}x",
            "yes" if r.identity_at_init else "no",
        )
        for kind, r in result.rows.items()
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    backbone_params = next(iter(result.rows.values())).backbone_params if result.rows else 0
    out = [
        f"backbone {result.source} ({backbone_params:,} params), batch {opts.batch} x {opts.tokens} tokens, "
        f"median of {opts.repeats}; no-grad backbone forward {1000 * result.backbone_forward_s:.1f} ms",
        fmt.format(*header),
        fmt.format(*("-" * w for w in widths)),
        *(fmt.format(*line) for line in lines),
        "step/fwd: median over repeats of (adapter forward+backward) / (backbone no-grad forward) timed back to "
        "back. int8 rel err: output change from int8 "
        f"adapters / output change the adapters make, weights perturbed by N(0, {PERTURB_STD}^2).",
    ]
    return "\n".join(out)
