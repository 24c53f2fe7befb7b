"""Hyper-adapters (HyperFormer, Mahabadi et al., 2021): a shared hypernetwork writes bottleneck weights.

Each adapter name owns a learned segment embedding; the hypernetwork (owned by the adapter named
`config.hypernet_owner`, "global" by default) maps (segment embedding, site embedding) to the down and up
weights of a bottleneck adapter at every wrapped site. State keys follow ownership: "global::hyper.hypernet.*"
plus "<name>::hyper.segment_embedding" for every name, so averaging "global::*" over all clients and each
segment's keys over that segment's clients trains the shared generator and the per-segment codes correctly.

Identity at init: the generator of the up-projection starts at zero, so every generated up-projection is zero.
The weights are generated once per forward pass for the adapter names in use (`prepare`), not per layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from common.adapters.base import AdapterCall, Site, init_linear_, make_activation, seeded_generator, zero_linear_
from common.adapters.bottleneck import sequential_sites
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind

# Generated weights for all sites: down (S, r, H), down bias (S, r), up (S, H, r), up bias (S, H).
Generated = tuple[Tensor, Tensor, Tensor, Tensor]


class HyperNetwork(nn.Module):
    """(segment embedding (E,)) -> bottleneck weights for every site, from one shared MLP."""

    def __init__(self, config: AdapterConfig, num_sites: int, dim: int) -> None:
        super().__init__()
        gen = seeded_generator(config.seed, "hypernet")
        emb, hidden, rank = config.hyper_embedding_dim, config.hyper_hidden_dim, config.rank
        self.dim, self.rank = dim, rank
        self.site_embedding = nn.Parameter(torch.randn(num_sites, emb, generator=gen))  # (S, E)
        self.trunk = init_linear_(nn.Linear(2 * emb, hidden), gen)
        self.down_generator = init_linear_(nn.Linear(hidden, rank * dim + rank), gen)
        self.up_generator = zero_linear_(nn.Linear(hidden, dim * rank + dim))
        # Generated matrices are scaled like a fan-in initialisation, so the bottleneck's activations stay O(1).
        self.down_scale, self.up_scale = 1.0 / math.sqrt(dim), 1.0 / math.sqrt(rank)

    def forward(self, segment_embedding: Tensor) -> Generated:
        sites = self.site_embedding.shape[0]
        code = torch.cat([segment_embedding.expand(sites, -1), self.site_embedding], dim=-1)  # (S, 2E)
        h = F.relu(self.trunk(code))  # (S, hidden)
        down, up = self.down_generator(h), self.up_generator(h)
        r, d = self.rank, self.dim
        return (
            down[:, : r * d].reshape(sites, r, d) * self.down_scale,
            down[:, r * d :],
            up[:, : d * r].reshape(sites, d, r) * self.up_scale,
            up[:, d * r :],
        )


class HyperShared(nn.Module):
    """The model-level part of one hyper adapter: its segment embedding, and the hypernetwork if it owns it."""

    def __init__(self, config: AdapterConfig, name: str, sites: Sequence[Site], owner: bool) -> None:
        super().__init__()
        gen = seeded_generator(config.seed, "segment", name)
        self.segment_embedding = nn.Parameter(torch.randn(config.hyper_embedding_dim, generator=gen))
        self.hypernet = HyperNetwork(config, len(sites), sites[0].dim_out) if owner else None


class HyperLayer(nn.Module):
    """Applies the bottleneck generated for this site; it has no parameters of its own."""

    def __init__(self, config: AdapterConfig, site: Site) -> None:
        super().__init__()
        self.site_index = site.index
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.scaling = config.scaling

    def forward(self, x: Tensor, call: AdapterCall) -> Tensor:
        if not isinstance(call.prepared, tuple) or len(call.prepared) != 4:
            raise ValueError("hyper adapter called without generated weights (route through AdaptedModel.forward)")
        down, down_bias, up, up_bias = call.prepared
        i = self.site_index
        z = self.dropout(self.act(F.linear(x, down[i], down_bias[i])))  # (B, T, r)
        return F.linear(z, up[i], up_bias[i]) * self.scaling


def _make_shared(config: AdapterConfig, name: str, sites: Sequence[Site], existing: Sequence[str]) -> nn.Module:
    owner = config.hypernet_owner
    if name != owner and owner not in existing:
        raise ValueError(
            f"hyper adapter {name!r} needs the hypernetwork owner {owner!r} to be added first "
            f"(AdaptedModel(..., names=[{owner!r}, ...]))"
        )
    widths = {site.dim_out for site in sites} | {site.dim_in for site in sites}
    if len(widths) != 1:
        raise ValueError(f"hyper adapters need one width at every site, got {sorted(widths)}")
    return HyperShared(config, name, sites, owner=name == owner)


def _prepare(config: AdapterConfig, shared: Mapping[str, nn.Module], name: str) -> Generated:
    owner = shared[config.hypernet_owner]
    adapter = shared[name]
    assert isinstance(owner, HyperShared) and owner.hypernet is not None and isinstance(adapter, HyperShared)
    return owner.hypernet(adapter.segment_embedding)


register_adapter_kind(
    AdapterKind(
        name="hyper",
        summary="a shared hypernetwork generates bottleneck weights from a per-segment embedding",
        style="output",
        default_sites=sequential_sites,
        make_layer=lambda config, site, name: HyperLayer(config, site),
        make_shared=_make_shared,
        prepare=_prepare,
    )
)
