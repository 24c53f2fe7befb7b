"""AdapterConfig: one dataclass that describes every adapter kind, validated on construction.

One config for all kinds keeps the wire format and the CLI simple: a client, the server and a saved folder all
agree on an adapter by comparing one JSON object. Fields a kind does not use are ignored by it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from common.adapters.base import ACTIVATIONS, validate_adapter_name
from common.adapters.registry import adapter_kinds, get_adapter_kind
from common.names import GLOBAL

PLACEMENTS = ("attn", "ffn")
DEFAULT_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class AdapterConfig:
    kind: str = field(default="bottleneck", metadata={"help": "adapter kind, one of common.adapters.ADAPTER_KINDS"})
    rank: int = field(
        default=16,
        metadata={"help": "bottleneck width (bottleneck, parallel, hyper, task_attention, mixture experts) "
                  "or LoRA rank"},
    )
    alpha: float = field(default=16.0, metadata={"help": "LoRA: the update is (alpha / rank) * B @ A"})
    dropout: float = field(default=0.0, metadata={"help": "dropout inside the adapter (active only in train())"})
    scaling: float = field(
        default=1.0, metadata={"help": "multiplier on bottleneck-style adapter outputs (He et al. use 4 for parallel)"}
    )
    activation: str = field(default="relu", metadata={"help": f"bottleneck nonlinearity: {', '.join(ACTIVATIONS)}"})
    placement: tuple[str, ...] = field(
        default=PLACEMENTS,
        metadata={"help": "sequential kinds: after the attention output ('attn') and/or the feed-forward output "
                  "('ffn'); ('attn', 'ffn') is Houlsby, ('ffn',) is Pfeiffer"},
    )
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "override where adapters go: each entry matches a module whose dotted name equals it, "
                  "ends with '.'+entry, or fully matches it as a regular expression; None = the kind's default"},
    )
    freeze_a: bool = field(
        default=False,
        metadata={"help": "LoRA: A is drawn from `seed`, identical everywhere and never trained (FFA-LoRA), so "
                  "averaging B averages the weight updates B @ A exactly"},
    )
    num_experts: int = field(default=4, metadata={"help": "mixture: number of expert adapters"})
    top_k: int | None = field(default=None, metadata={"help": "mixture: keep the k largest gate weights (None = all)"})
    hyper_embedding_dim: int = field(default=32, metadata={"help": "hyper: size of segment and site embeddings"})
    hyper_hidden_dim: int = field(default=64, metadata={"help": "hyper: hidden width of the hypernetwork"})
    hypernet_owner: str = field(
        default=GLOBAL, metadata={"help": "hyper: the adapter name that owns the shared hypernetwork"}
    )
    prompt_tokens: int = field(
        default=0,
        metadata={"help": f"virtual tokens per routing level prepended to the input; kind='prompt' defaults to "
                  f"{DEFAULT_PROMPT_TOKENS}, other kinds combine with prompts when > 0"},
    )
    top_layers: int = field(
        default=0,
        metadata={"help": "adapters only in the last N transformer layers (0 = every layer); the frozen layers "
                  "below then compute the same outputs for a text every time, so callers may cache them"},
    )
    seed: int = field(default=0, metadata={"help": "seed of every adapter's initial weights (same on all clients)"})

    def __post_init__(self) -> None:
        if self.kind not in adapter_kinds():
            raise ValueError(f"adapter kind {self.kind!r} is unknown; expected one of {', '.join(adapter_kinds())}")
        self._check_sizes()
        self._check_targets()
        if self.freeze_a and not get_adapter_kind(self.kind).supports_freeze_a:
            able = " or ".join(repr(k) for k in adapter_kinds() if get_adapter_kind(k).supports_freeze_a)
            raise ValueError(f"freeze_a=True applies to kind {able} only, not {self.kind!r}")
        if self.top_k is not None and not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be between 1 and num_experts={self.num_experts}")
        validate_adapter_name(self.hypernet_owner)
        if self.kind == "prompt" and self.prompt_tokens == 0:
            object.__setattr__(self, "prompt_tokens", DEFAULT_PROMPT_TOKENS)

    def _check_sizes(self) -> None:
        for name in ("rank", "num_experts", "hyper_embedding_dim", "hyper_hidden_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if isinstance(self.prompt_tokens, bool) or not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens={self.prompt_tokens!r} must be an integer >= 0")
        if isinstance(self.top_layers, bool) or not isinstance(self.top_layers, int) or self.top_layers < 0:
            raise ValueError(f"top_layers={self.top_layers!r} must be an integer >= 0 (0 = every layer)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be an integer >= 0")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha={self.alpha!r} must be a finite number > 0")
        if not (isinstance(self.scaling, int | float) and math.isfinite(self.scaling)):
            raise ValueError(f"scaling={self.scaling!r} must be a finite number")
        if not (isinstance(self.dropout, int | float) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is unknown; expected one of {', '.join(ACTIVATIONS)}")

    def _check_targets(self) -> None:
        placement = tuple(self.placement)
        object.__setattr__(self, "placement", placement)
        if not placement or len(set(placement)) != len(placement) or not set(placement) <= set(PLACEMENTS):
            raise ValueError(f"placement={placement!r} must be a non-empty subset of {PLACEMENTS} without repeats")
        if self.target_modules is None:
            return
        targets = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
        object.__setattr__(self, "target_modules", targets)
        if not targets:
            raise ValueError("target_modules=() matches nothing; use None for the kind's default modules")
        for target in targets:
            if not isinstance(target, str) or not target:
                raise ValueError(f"target_modules entry {target!r} must be a non-empty string")
            try:
                re.compile(target)
            except re.error as exc:
                raise ValueError(f"target_modules entry {target!r} is not a valid regular expression: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Inverse of to_dict; unknown keys are an error so that a newer file is not silently misread."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdapterConfig field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AdapterConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"adapter config JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)
