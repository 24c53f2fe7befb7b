"""Parallel adapters (He et al., 2022): a bottleneck that runs alongside the feed-forward block.

The adapter reads the feed-forward block's input x and its delta joins the block's output before the residual
LayerNorm: LN(FFN(x) + x + s * adapter(x)). On BERT-style encoders the wrapped module is the FFN output block
`layer.N.output`, whose second argument is x (the residual), so adding the delta to that argument is exactly
this formula. Levels add up (order does not matter). Identity at init: the up-projection starts at zero.
"""

from __future__ import annotations

from torch import nn

from common.adapters.base import Site
from common.adapters.bottleneck import Bottleneck
from common.adapters.config import AdapterConfig
from common.adapters.registry import AdapterKind, register_adapter_kind


def _make_layer(config: AdapterConfig, site: Site, name: str) -> nn.Module:
    return Bottleneck(site.dim_in, site.dim_out, config, name, site.path, tag="parallel")


register_adapter_kind(
    AdapterKind(
        name="parallel",
        summary="bottleneck alongside the feed-forward block (scaled by `scaling`)",
        style="residual",
        default_sites=lambda config: ("ffn_block",),
        make_layer=_make_layer,
    )
)
