"""Task-attention adapters: a bottleneck with a single-head self-attention over tokens inside it.

x -> z = act(down(x)) (B, T, r); a = softmax(q(z) k(z)^T / sqrt(r), padding masked) v(z);
delta = up(dropout(z + a)) * scaling. Mixing tokens inside the adapter lets a segment adapter move information
between positions (e.g. from a user's recent items to the rest of the context), which a per-token bottleneck
cannot. Sequential placement like the bottleneck kind. Identity at init: the up-projection starts at zero.
The key-padding mask comes from the batch plan (it covers prompt slots when prompts are on).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from common.adapters.base import AdapterCall, Site, init_linear_, make_activation, seeded_generator, zero_linear_
from common.adapters.bottleneck import sequential_sites
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind


class TaskAttention(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, config: AdapterConfig, name: str, path: str) -> None:
        super().__init__()
        gen = seeded_generator(config.seed, "task_attention", name, path)
        rank = config.rank
        self.down = init_linear_(nn.Linear(dim_in, rank), gen)
        self.query = init_linear_(nn.Linear(rank, rank), gen)
        self.key = init_linear_(nn.Linear(rank, rank), gen)
        self.value = init_linear_(nn.Linear(rank, rank), gen)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.up = zero_linear_(nn.Linear(rank, dim_out))
        self.scaling = config.scaling

    def forward(self, x: Tensor, call: AdapterCall) -> Tensor:
        z = self.act(self.down(x))  # (B, T, r)
        q, k, v = (proj(z).unsqueeze(1) for proj in (self.query, self.key, self.value))  # (B, 1, T, r)
        keep = None if call.mask is None else call.mask[:, None, None, :]  # (B, 1, 1, T), True = attend
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep).squeeze(1)  # (B, T, r)
        return self.up(self.dropout(z + a)) * self.scaling


def _make_layer(config: AdapterConfig, site: Site, name: str) -> nn.Module:
    return TaskAttention(site.dim_in, site.dim_out, config, name, site.path)


register_adapter_kind(
    AdapterKind(
        name="task_attention",
        summary="bottleneck with self-attention over tokens inside it",
        style="output",
        default_sites=sequential_sites,
        make_layer=_make_layer,
    )
)
