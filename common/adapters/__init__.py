"""Adapter library: one config, one registry, one module per kind, injected into a frozen HF encoder.

    from common.adapters import AdapterConfig, AdaptedModel, ADAPTER_KINDS
    m = AdaptedModel(backbone, AdapterConfig(kind="lora"), names=["global", "region=EU"])
    out = m(input_ids, attention_mask, routing=["global", ["region=EU", None, ...]])

Importing the package registers the built-in kinds; ADAPTER_KINDS lists them.
"""

# Kind modules register themselves on import.
from common.adapters import bottleneck, hyper, lora, mixture, parallel, prompt, task_attention
from common.adapters.config import AdapterConfig
from common.adapters.model import AdaptedModel
from common.adapters.registry import AdapterKind, adapter_kinds, get_adapter_kind, register_adapter_kind
from common.adapters.storage import load_adapted_model, load_adapters, save_adapters
from common.names import ADAPTER_KINDS, split_key

if not set(ADAPTER_KINDS) <= set(adapter_kinds()):  # pragma: no cover - a kind module failed to register
    raise ImportError(f"built-in adapter kinds missing from the registry: {set(ADAPTER_KINDS) - set(adapter_kinds())}")

__all__ = [
    "ADAPTER_KINDS",
    "AdaptedModel",
    "AdapterConfig",
    "AdapterKind",
    "adapter_kinds",
    "bottleneck",
    "get_adapter_kind",
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
