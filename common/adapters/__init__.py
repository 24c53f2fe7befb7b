"""Adapter library: one config, one registry, one module per kind, injected into a frozen HF encoder.

    from common.adapters import AdapterConfig, AdaptedModel, ADAPTER_KINDS
    m = AdaptedModel(backbone, AdapterConfig(kind="lora"), names=["global", "region=EU"])
    out = m(input_ids, attention_mask, routing=["global", ["region=EU", None, ...]])

Importing the package registers the built-in kinds; ADAPTER_KINDS lists them and GLOBAL_ONLY_KINDS those
federated as the global adapter alone, both derived from what each kind's module registers.
"""

# Kind modules register themselves on import.
from common.adapters import bottleneck, hyper, lora, mixture, parallel, prompt, task_attention
from common.adapters.config import AdapterConfig
from common.adapters.model import AdaptedModel
from common.adapters.registry import (
    AdapterKind,
    adapter_kinds,
    get_adapter_kind,
    global_only_kinds,
    register_adapter_kind,
)
from common.adapters.storage import load_adapted_model, load_adapters, save_adapters
from common.names import ADAPTER_KINDS as _LIGHT_KINDS
from common.names import GLOBAL_ONLY_KINDS as _LIGHT_GLOBAL_ONLY
from common.names import split_key


def check_light_index(kinds: tuple[str, ...], global_only: frozenset[str]) -> None:
    """Refuse a light index (common/names.py, read by the torch-free run config) that disagrees with the registry."""
    registered = adapter_kinds()
    if sorted(kinds) != sorted(registered) or global_only != global_only_kinds():
        raise ImportError(f"common/names.py lists adapter kinds {sorted(kinds)} (global only: {sorted(global_only)}), "
                          f"the registry {sorted(registered)} (global only: {sorted(global_only_kinds())}): "
                          "make them agree")


check_light_index(_LIGHT_KINDS, _LIGHT_GLOBAL_ONLY)
# The built-in kinds (the registry's, in the order tables list them) and those federated as the global adapter
# alone (each kind's module declares it on its registration).
ADAPTER_KINDS = _LIGHT_KINDS
GLOBAL_ONLY_KINDS = global_only_kinds()

__all__ = [
    "ADAPTER_KINDS",
    "GLOBAL_ONLY_KINDS",
    "AdaptedModel",
    "AdapterConfig",
    "AdapterKind",
    "adapter_kinds",
    "bottleneck",
    "check_light_index",
    "get_adapter_kind",
    "global_only_kinds",
    "hyper",
    "load_adapted_model",
    "load_adapters",
    "lora",
    "mixture",
    "parallel",
    "prompt",
    "register_adapter_kind",
    "save_adapters",
    "split_key",
    "task_attention",
]
