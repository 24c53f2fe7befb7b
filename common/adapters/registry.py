"""The registry of adapter kinds: one table, filled by one call per kind, that refuses duplicates loudly.

A kind is a small record of functions (how to build its per-module adapter, its model-level module, and what
to precompute once per forward pass) plus how its wrapper feeds it. Everything else (injection, routing, state,
saving) is shared, so a new kind is one module that calls `register_adapter_kind`.

The record is generic in the config its functions read. `AdapterConfig` checks its `kind` against this table,
so the table must not know the config class; every built-in kind is an `AdapterKind[AdapterConfig]`, and code
that calls a kind's functions (injection, the model) says so where it looks the kind up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import nn

from common.adapters.base import WRAP_STYLES, Site, WrapStyle

log = logging.getLogger(__name__)

ConfigT = TypeVar("ConfigT")

# (config, site, adapter name) -> the module placed in that site's ModuleDict; its forward is
# `forward(x: Tensor, call: AdapterCall) -> Tensor` returning the delta of width site.dim_out.
LayerFactory = Callable[[ConfigT, Site, str], nn.Module]
# (config, adapter name, all sites, names already present) -> a model-level module for this adapter name, or None.
SharedFactory = Callable[[ConfigT, str, Sequence[Site], Sequence[str]], nn.Module | None]
# (config, model-level modules by adapter name, adapter name) -> object handed to layer adapters as call.prepared.
Prepare = Callable[[ConfigT, Mapping[str, nn.Module], str], object]


@dataclass(frozen=True)
class AdapterKind(Generic[ConfigT]):
    """Everything the shared machinery needs to know about one kind of adapter.

    style: how a wrapper feeds the adapter (see base.WrapStyle), None for kinds without per-module adapters
    (prompt tuning). default_sites: abstract site names ('attn_out', 'ffn_out', 'ffn_block', 'query', 'value',
    'key') used when the config gives no target_modules. identity_at_init: whether a freshly injected adapter
    leaves the backbone's outputs unchanged.

    Facts the federation reads (declared by each kind's own module, never listed elsewhere):
    supports_freeze_a: the kind has a factor A that `AdapterConfig.freeze_a` can draw from the seed alone and
    freeze (FFA-LoRA); the federation then always freezes it, since averaging the other factor is exact only so.
    global_only: the kind personalises by itself and is federated as the global adapter alone, no segment banks.
    """

    name: str
    summary: str
    style: WrapStyle | None
    default_sites: Callable[[ConfigT], tuple[str, ...]]
    make_layer: LayerFactory[ConfigT] | None = None
    make_shared: SharedFactory[ConfigT] | None = None
    prepare: Prepare[ConfigT] | None = None
    identity_at_init: bool = True
    linear_only: bool = False  # the wrapped modules must be nn.Linear (LoRA)
    supports_freeze_a: bool = False
    global_only: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"adapter kind name {self.name!r} must be a non-empty identifier")
        if self.style is not None and self.style not in WRAP_STYLES:
            raise ValueError(f"adapter kind {self.name!r}: style {self.style!r} is not one of {WRAP_STYLES}")
        if (self.style is None) != (self.make_layer is None):
            raise ValueError(f"adapter kind {self.name!r}: a style needs make_layer and make_layer needs a style")


_KINDS: dict[str, AdapterKind[Any]] = {}


def register_adapter_kind(kind: AdapterKind[ConfigT]) -> AdapterKind[ConfigT]:
    """Add a kind; registering a name twice is an error, never a silent replacement."""
    if kind.name in _KINDS:
        raise ValueError(f"adapter kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    log.debug("registered adapter kind %s", kind.name)
    return kind


def get_adapter_kind(name: str) -> AdapterKind[Any]:
    try:
        return _KINDS[name]
    except KeyError:
        raise ValueError(f"adapter kind {name!r} is unknown; expected one of {', '.join(_KINDS)}") from None


def adapter_kinds() -> tuple[str, ...]:
    """Names of all registered kinds, in registration order."""
    return tuple(_KINDS)


def global_only_kinds() -> frozenset[str]:
    """The registered kinds federated as the global adapter only (`AdapterKind.global_only`)."""
    return frozenset(name for name, kind in _KINDS.items() if kind.global_only)
