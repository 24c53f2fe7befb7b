"""Small shared pieces of the adapter library: sites, per-call inputs, names, seeded initialisation.

Every kind builds its modules from the same few facts (where it sits, how wide the stream is, which seed),
so those facts live here once instead of in seven copies.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from common.names import KEY_SEP

# How a wrapper feeds its adapters:
#   "output":   y = base(x); y = y + a(y)            (sequential adapters, applied level after level)
#   "input":    y = base(x) + sum_l a_l(x)           (LoRA; parallel adapters on a plain feed-forward module)
#   "residual": base(h, r + sum_l a_l(r))            (parallel adapters on BERT's FFN output block, whose second
#                                                     input r is the feed-forward input that the residual carries)
WrapStyle = Literal["output", "input", "residual"]
WRAP_STYLES: tuple[str, ...] = ("output", "input", "residual")

MAX_NAME_LENGTH = 200


@dataclass(frozen=True)
class Site:
    """One wrapped backbone module: its dotted path, its position among wrapped modules, and its widths."""

    path: str
    index: int
    dim_in: int  # width of the tensor the adapter reads
    dim_out: int  # width of the delta the adapter returns


@dataclass(frozen=True)
class AdapterCall:
    """What a layer adapter may need besides its input rows.

    mask: (B', T) bool, True where a token is real (task-attention must not attend to padding); rows are the
    same rows as the adapter's input. prepared: whatever the kind's `prepare` built for this adapter name once
    per forward pass (the hyper kind's generated weights), else None.
    """

    mask: Tensor | None
    prepared: object = None

    def rows(self, index: Tensor) -> AdapterCall:
        return AdapterCall(None if self.mask is None else self.mask.index_select(0, index), self.prepared)


def validate_adapter_name(name: object) -> str:
    """Adapter names become state keys `<name>::<path>`, so they must be non-empty and free of the separator."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"adapter name {name!r} must be a non-empty string without surrounding whitespace")
    if KEY_SEP in name:
        raise ValueError(f"adapter name {name!r} must not contain '{KEY_SEP}' (it separates state keys)")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"adapter name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} characters")
    return name


def module_key(name: str) -> str:
    """The nn.ModuleDict key for an adapter name: '.' is not allowed there, so percent-encode it (injective)."""
    return "a:" + name.replace("%", "%25").replace(".", "%2E")


def seeded_generator(seed: int, *parts: str) -> torch.Generator:
    """A CPU generator determined by the seed and a few strings (adapter name, module path).

    Every client building the same adapter gets the same initial weights without touching the global RNG.
    """
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def init_linear_(linear: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """PyTorch's default Linear initialisation (Kaiming uniform, a=sqrt(5)), drawn from `generator`."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        if linear.bias is not None:
            bound = 1.0 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
    return linear


def zero_linear_(linear: nn.Linear) -> nn.Linear:
    """Zero weights and bias: the adapter's output projection starts at zero, so the model starts as the backbone."""
    with torch.no_grad():
        linear.weight.zero_()
        if linear.bias is not None:
            linear.bias.zero_()
    return linear


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()
