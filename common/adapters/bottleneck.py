"""Bottleneck adapters (Houlsby et al., 2019): down-project, nonlinearity, up-project, added to the stream.

Sequential: the adapter reads the output of the attention and/or feed-forward projection and adds its delta to
it, before the block's residual and LayerNorm (`placement`: ('attn', 'ffn') is Houlsby, ('ffn',) Pfeiffer).
Identity at init: the up-projection starts at zero. With several routing levels the adapters stack: each level
reads the previous level's output.
"""

from __future__ import annotations

from torch import Tensor, nn

from common.adapters.base import AdapterCall, Site, init_linear_, make_activation, seeded_generator, zero_linear_
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind


class Bottleneck(nn.Module):
    """x (B, T, dim_in) -> up(dropout(act(down(x)))) * scaling, (B, T, dim_out)."""

    def __init__(
        self, dim_in: int, dim_out: int, config: AdapterConfig, name: str, path: str, tag: str = "bottleneck"
    ) -> None:
        super().__init__()
        generator = seeded_generator(config.seed, tag, name, path)
        self.down = init_linear_(nn.Linear(dim_in, config.rank), generator)
        self.act = make_activation(config.activation)
        self.dropout = nn.Dropout(config.dropout)
        self.up = zero_linear_(nn.Linear(config.rank, dim_out))
        self.scaling = config.scaling

    def forward(self, x: Tensor, call: AdapterCall) -> Tensor:
        return self.up(self.dropout(self.act(self.down(x)))) * self.scaling


def sequential_sites(config: AdapterConfig) -> tuple[str, ...]:
    """'attn' -> the attention output projection, 'ffn' -> the feed-forward output projection."""
    return tuple(f"{place}_out" for place in config.placement)


def _make_layer(config: AdapterConfig, site: Site, name: str) -> nn.Module:
    return Bottleneck(site.dim_in, site.dim_out, config, name, site.path)


register_adapter_kind(
    AdapterKind(
        name="bottleneck",
        summary="sequential Houlsby/Pfeiffer adapter after attention and/or feed-forward outputs",
        style="output",
        default_sites=sequential_sites,
        make_layer=_make_layer,
    )
)
