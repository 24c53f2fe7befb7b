"""Facts about an adapter kind live on its registration (its own module); every list of kinds is derived."""

from __future__ import annotations

import pytest

import common.names
from common.adapters import (
    ADAPTER_KINDS,
    GLOBAL_ONLY_KINDS,
    AdapterConfig,
    check_light_index,
    get_adapter_kind,
)
from common.federation.task import adapter_config
from common.protocol import FedConfig


def test_kind_modules_declare_the_federation_facts() -> None:
    """LoRA declares the frozen shared A (FFA-LoRA); mixture declares itself global-only; no other kind does."""
    # Execute
    freezable = [k for k in ADAPTER_KINDS if get_adapter_kind(k).supports_freeze_a]
    # Assert
    assert freezable == ["lora"]
    assert GLOBAL_ONLY_KINDS == frozenset({"mixture"})


def test_light_index_equals_the_registry() -> None:
    """The torch-free index in common/names.py is the registry's own lists, in the same order."""
    # Assert
    assert common.names.ADAPTER_KINDS == ADAPTER_KINDS
    assert common.names.GLOBAL_ONLY_KINDS == GLOBAL_ONLY_KINDS


@pytest.mark.parametrize(("kinds", "global_only"), [
    (ADAPTER_KINDS[:-1], GLOBAL_ONLY_KINDS),
    (ADAPTER_KINDS, frozenset({"lora"})),
])
def test_a_light_index_that_disagrees_is_refused(kinds: tuple[str, ...], global_only: frozenset[str]) -> None:
    """A kind added to the registry but not to the light index (or a wrong fact) stops the import."""
    # Execute / Assert
    with pytest.raises(ImportError, match="make them agree"):
        check_light_index(kinds, global_only)


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_federation_reads_the_facts_from_the_registration(kind: str) -> None:
    """The run's adapter config freezes A exactly where the kind supports it; a global-only kind gets no segment
    banks in the text arch."""
    # Prepare
    cfg = FedConfig(adapter_kind=kind)
    # Execute
    adapter = adapter_config(cfg)
    # Assert
    assert adapter.freeze_a == get_adapter_kind(kind).supports_freeze_a
    assert (cfg.adapter_segment_keys == ()) == (kind in GLOBAL_ONLY_KINDS)


def test_freeze_a_is_refused_for_a_kind_without_it() -> None:
    """The config check names the kinds that have an A to freeze, from the registry."""
    with pytest.raises(ValueError, match="freeze_a=True applies to kind 'lora' only, not 'bottleneck'"):
        AdapterConfig(kind="bottleneck", freeze_a=True)
