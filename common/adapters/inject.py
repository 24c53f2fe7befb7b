"""Injection: find target modules in a Hugging Face module tree by name and wrap them, the way PEFT does.

Each matched module is replaced by an AdapterWrapper that keeps it as `base_layer` and holds one adapter per
adapter name in an nn.ModuleDict, so many named adapters sit side by side and the batch plan picks which run.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from common.adapters.base import AdapterCall, Site, WrapStyle, module_key
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind
from common.adapters.routing import BatchPlan, Level, Router

log = logging.getLogger(__name__)

_BERT_SITES = {
    "attn_out": r"(.*\.)?attention\.output\.dense",
    "ffn_out": r"(.*\.)?layer\.\d+\.output\.dense",
    "ffn_block": r"(.*\.)?layer\.\d+\.output",
    "query": r"(.*\.)?attention\.self\.query",
    "key": r"(.*\.)?attention\.self\.key",
    "value": r"(.*\.)?attention\.self\.value",
}
# Abstract site name -> regular expression over dotted module names, per backbone model_type.
SITE_PATTERNS: dict[str, dict[str, str]] = {
    "bert": _BERT_SITES,
    "roberta": _BERT_SITES,
    "xlm-roberta": _BERT_SITES,
    "electra": _BERT_SITES,
    "mpnet": {
        **_BERT_SITES,
        "attn_out": r"(.*\.)?attention\.attn\.o",
        "query": r"(.*\.)?attention\.attn\.q",
        "key": r"(.*\.)?attention\.attn\.k",
        "value": r"(.*\.)?attention\.attn\.v",
    },
    "distilbert": {
        "attn_out": r"(.*\.)?attention\.out_lin",
        "ffn_out": r"(.*\.)?ffn\.lin2",
        "ffn_block": r"(.*\.)?layer\.\d+\.ffn",
        "query": r"(.*\.)?attention\.q_lin",
        "key": r"(.*\.)?attention\.k_lin",
        "value": r"(.*\.)?attention\.v_lin",
    },
}


class AdapterWrapper(nn.Module):
    """A backbone module plus named adapters; runs the adapters the current batch plan selects."""

    def __init__(self, base_layer: nn.Module, site: Site, style: WrapStyle, router: Router) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.site = site
        self.style = style
        self._router = router  # a plain object, not a submodule: shared by all wrappers of one model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        plan = self._router.plan
        if plan is None or len(self.adapters) == 0:
            return self.base_layer(*args, **kwargs)
        if self.style == "output":
            y = self.base_layer(*args, **kwargs)
            if not isinstance(y, Tensor):
                raise ValueError(f"{self.site.path} returns {type(y).__name__}; this adapter kind needs a module "
                                 "that returns one tensor (check AdapterConfig.target_modules)")
            for level in plan.levels:  # sequential: each level sees the previous level's output
                delta = self._delta(level, y, plan)
                y = y if delta is None else y + delta
            return y
        if self.style == "residual" and len(args) >= 2:  # BertOutput.forward(hidden_states, input_tensor)
            residual = args[1]
            return self.base_layer(args[0], residual + self._sum(plan, residual), *args[2:], **kwargs)
        if self.style == "residual" and "input_tensor" in kwargs:
            residual = kwargs["input_tensor"]
            return self.base_layer(*args, **{**kwargs, "input_tensor": residual + self._sum(plan, residual)})
        x = args[0] if args else next(iter(kwargs.values()))
        return self.base_layer(*args, **kwargs) + self._sum(plan, x)

    def _sum(self, plan: BatchPlan, x: Tensor) -> Tensor | float:
        total: Tensor | float = 0.0
        for level in plan.levels:
            delta = self._delta(level, x, plan)
            if delta is not None:
                total = total + delta
        return total

    def _delta(self, level: Level, x: Tensor, plan: BatchPlan) -> Tensor | None:
        """The level's adapter output for every row of x; rows that skip the level get zeros."""
        if level.name is not None:
            return self.adapters[module_key(level.name)](x, AdapterCall(plan.mask, plan.prepared.get(level.name)))
        out: Tensor | None = None
        for name, rows in level.groups:
            sub = AdapterCall(plan.mask, plan.prepared.get(name)).rows(rows)
            delta = self.adapters[module_key(name)](x.index_select(0, rows), sub)  # (B_name, T, dim_out)
            if out is None:
                out = delta.new_zeros((x.shape[0], *delta.shape[1:]))
            out = out.index_add(0, rows, delta)
        return out


def shared_weight_copy(model: nn.Module) -> nn.Module:
    """A new module tree whose parameters and buffers are the original tensors (no memory cost).

    Injection then changes the copy's structure only, so the caller's backbone stays unwrapped and one frozen
    backbone can serve several adapted models.
    """
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) or re.fullmatch(t, name) for t in targets)


def target_patterns(model: nn.Module, config: AdapterConfig, kind: AdapterKind[AdapterConfig]) -> tuple[str, ...]:
    if config.target_modules is not None:
        return config.target_modules
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    table = SITE_PATTERNS.get(model_type)
    if table is None:
        raise ValueError(
            f"no default adapter sites for backbone type {model_type!r} (known: {', '.join(SITE_PATTERNS)}); "
            "set AdapterConfig.target_modules"
        )
    return tuple(table[site] for site in kind.default_sites(config))


LAYER_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)(?:\.|$)")


def layer_index(path: str) -> int | None:
    """The transformer layer a dotted module path lies in ('encoder.layer.3.output.dense' -> 3), if any."""
    match = LAYER_INDEX.search(path)
    return int(match.group(1)) if match else None


def _in_top_layers(model: nn.Module, found: list[tuple[str, nn.Module]], top: int) -> list[tuple[str, nn.Module]]:
    """The targets of the last `top` layers; a clear error when a target lies outside every layer."""
    layers = int(getattr(getattr(model, "config", None), "num_hidden_layers", 0))
    if not 1 <= top <= layers:
        raise ValueError(f"top_layers={top} must be between 1 and the backbone's {layers} layers")
    outside = [name for name, _ in found if layer_index(name) is None]
    if outside:
        raise ValueError(f"top_layers={top} needs targets inside numbered layers; {', '.join(outside[:4])} is not")
    return [(name, module) for name, module in found if (layer_index(name) or 0) >= layers - top]


def find_targets(
    model: nn.Module, config: AdapterConfig, kind: AdapterKind[AdapterConfig]
) -> list[tuple[str, nn.Module]]:
    """Modules whose dotted names match the kind's targets, in model order; a clear error if none match."""
    targets = target_patterns(model, config, kind)
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        inside_found = any(name.startswith(prev + ".") for prev, _ in found)
        if name and not inside_found and not isinstance(module, AdapterWrapper) and _matches(name, targets):
            found.append((name, module))
    if not found:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"adapter kind {kind.name!r}: no module matches {list(targets)}; Linear modules are e.g. "
            f"{', '.join(linear[:8])}"
        )
    if config.top_layers:
        found = _in_top_layers(model, found, config.top_layers)
    if kind.linear_only:
        bad = [name for name, module in found if not isinstance(module, nn.Linear)]
        if bad:
            raise ValueError(f"adapter kind {kind.name!r} wraps nn.Linear modules only; {', '.join(bad)} are not")
    return found


def inject(
    model: nn.Module, config: AdapterConfig, kind: AdapterKind[AdapterConfig], router: Router
) -> list[AdapterWrapper]:
    """Wrap every target module of `model` in place; returns the wrappers in model order."""
    if kind.style is None:
        return []
    hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0))
    wrappers = []
    for index, (path, module) in enumerate(find_targets(model, config, kind)):
        if isinstance(module, nn.Linear):
            dim_in = module.out_features if kind.style == "output" else module.in_features
            dim_out = module.out_features
        else:
            dim_in = dim_out = hidden
        wrapper = AdapterWrapper(module, Site(path, index, dim_in, dim_out), kind.style, router)
        parent_path, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, child, wrapper)
        wrappers.append(wrapper)
    log.debug("injected %s wrappers into %d modules", kind.name, len(wrappers))
    return wrappers
