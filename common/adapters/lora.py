"""LoRA (Hu et al., 2021): a low-rank update B @ A added to a frozen linear layer, y = W x + (alpha/r) B A x.

Default targets are the attention query and value projections. Identity at init: B starts at zero.
Levels add up: y = W x + sum_l (alpha/r) B_l A_l x.

freeze_a (FFA-LoRA, Sun et al., 2024): A is drawn from `seed` and the module path only, so it is identical
for every adapter name and every client, is a buffer (never trained) and is left out of trainable-only state.
Averaging B over clients is then exactly averaging their weight updates B @ A, which plain LoRA is not
(mean(B) @ mean(A) != mean(B @ A)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from common.adapters.base import AdapterCall, Site, seeded_generator
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind


class LoraLayer(nn.Module):
    """x (B, T, in) -> (alpha / r) * (dropout(x) @ A^T) @ B^T, (B, T, out). A: (r, in), B: (out, r), as in PEFT."""

    def __init__(self, dim_in: int, dim_out: int, config: AdapterConfig, name: str, path: str) -> None:
        super().__init__()
        rank = config.rank
        # A's generator ignores the adapter name under freeze_a: one shared A per module for everybody.
        parts = ("lora_A", path) if config.freeze_a else ("lora_A", name, path)
        a = torch.empty(rank, dim_in)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=seeded_generator(config.seed, *parts))
        if config.freeze_a:
            self.register_buffer("lora_A", a)
        else:
            self.lora_A = nn.Parameter(a)
        self.lora_B = nn.Parameter(torch.zeros(dim_out, rank))
        self.dropout = nn.Dropout(config.dropout)
        self.scaling = config.alpha / rank

    def forward(self, x: Tensor, call: AdapterCall) -> Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> Tensor:
        """(out, in): the update this adapter adds to the frozen weight."""
        return (self.lora_B @ self.lora_A) * self.scaling


def _make_layer(config: AdapterConfig, site: Site, name: str) -> nn.Module:
    return LoraLayer(site.dim_in, site.dim_out, config, name, site.path)


register_adapter_kind(
    AdapterKind(
        name="lora",
        summary="low-rank update of linear layers (default: attention query and value); freeze_a = FFA-LoRA",
        style="input",
        default_sites=lambda config: ("query", "value"),
        make_layer=_make_layer,
        linear_only=True,
        supports_freeze_a=True,
    )
)
