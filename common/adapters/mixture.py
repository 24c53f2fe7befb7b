"""Mixture of adapters: K bottleneck experts and a learned per-token softmax gate (optionally top-k).

delta(x) = sum_k g_k(x) * expert_k(x), g = softmax(gate(x)) over the experts (with top_k, over the k largest
logits only; the others get exactly zero weight). Experts are stored stacked, (K, out, in) like K Linear
weights, and evaluated in one einsum, which for adapter-sized experts beats dispatching tokens. Sequential
placement like the bottleneck kind. Identity at init: every expert's up-projection starts at zero.
No load-balancing loss is added; with few experts and a soft gate it has not been needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from common.adapters.base import AdapterCall, Site, init_linear_, make_activation, seeded_generator
from common.adapters.bottleneck import sequential_sites
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind


class MixtureOfAdapters(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, config: AdapterConfig, name: str, path: str) -> None:
        super().__init__()
        gen = seeded_generator(config.seed, "mixture", name, path)
        experts, rank = config.num_experts, config.rank
        bound = 1.0 / math.sqrt(dim_in)
        self.gate = init_linear_(nn.Linear(dim_in, experts), gen)
        self.down_weight = nn.Parameter(torch.empty(experts, rank, dim_in).uniform_(-bound, bound, generator=gen))
        self.down_bias = nn.Parameter(torch.empty(experts, rank).uniform_(-bound, bound, generator=gen))
        self.up_weight = nn.Parameter(torch.zeros(experts, dim_out, rank))
        self.up_bias = nn.Parameter(torch.zeros(experts, dim_out))
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.top_k = config.top_k
        self.scaling = config.scaling

    def gate_weights(self, x: Tensor) -> Tensor:
        """(B, T, K) mixing weights summing to one per token."""
        logits = self.gate(x)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kept, index = logits.topk(self.top_k, dim=-1)
            logits = torch.full_like(logits, float("-inf")).scatter(-1, index, kept)
        return logits.softmax(dim=-1)

    def forward(self, x: Tensor, call: AdapterCall) -> Tensor:
        z = torch.einsum("btd,krd->btkr", x, self.down_weight) + self.down_bias  # (B, T, K, r)
        z = self.dropout(self.act(z))
        experts = torch.einsum("btkr,kor->btko", z, self.up_weight) + self.up_bias  # (B, T, K, out)
        return torch.einsum("btk,btko->bto", self.gate_weights(x), experts) * self.scaling


def _make_layer(config: AdapterConfig, site: Site, name: str) -> nn.Module:
    return MixtureOfAdapters(site.dim_in, site.dim_out, config, name, site.path)


register_adapter_kind(
    AdapterKind(
        name="mixture",
        summary="K bottleneck experts mixed by a learned softmax gate (optionally top-k)",
        style="output",
        default_sites=sequential_sites,
        make_layer=_make_layer,
        # It personalises through its learned gate: its experts and gate are one global adapter, averaged across
        # every client, rather than one mixture per segment.
        global_only=True,
    )
)
