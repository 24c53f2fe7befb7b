"""Run a BERT-style encoder in two parts: the frozen layers below the first adapter, then the adapted rest.

With adapters only in the top layers (`AdapterConfig.top_layers`), the lower layers map a text to the same hidden
states every time, so a caller can compute them once per text without gradient and train by running the top
layers alone: forward and backward then cost what the adapted layers cost. Both parts are shallow copies of the
backbone's module tree that share every weight and every adapter with it, and each part is run through the
backbone's own `forward`, so the attention mask is built exactly as the installed transformers version builds it.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class _Given(nn.Module):
    """Stands in for the embeddings of the upper part: returns the hidden states given for the current call."""

    def __init__(self) -> None:
        super().__init__()
        self.value: Tensor | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.value is None:
            raise RuntimeError("the upper part of a split encoder runs only through LayerSplit.upper_states")
        return self.value


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def split_supported(model: nn.Module) -> bool:
    """Encoders laid out as `embeddings` + `encoder.layer` (a ModuleList): BERT, RoBERTa, ELECTRA, MPNet."""
    return _layer_list(model) is not None and isinstance(getattr(model, "embeddings", None), nn.Module)


def _shallow(module: nn.Module) -> nn.Module:
    """A new module object whose children table is its own; parameters, buffers and children stay shared."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def _layers(model: nn.Module) -> nn.ModuleList:
    layers = _layer_list(model)
    if layers is None:
        raise ValueError(f"{type(model).__name__} is not laid out as embeddings + encoder.layer; cannot split it")
    return layers


def _truncated(model: nn.Module, start: int, stop: int | None, embeddings: nn.Module | None) -> nn.Module:
    top, encoder = _shallow(model), _shallow(model.get_submodule("encoder"))
    encoder.layer = nn.ModuleList(list(_layers(model))[start:stop])
    top.encoder = encoder
    if embeddings is not None:
        top.embeddings = embeddings
    if getattr(top, "pooler", None) is not None:
        top.register_module("pooler", None)  # nobody reads the pooled output; it would only cost time
    return top


class LayerSplit:
    """`model` cut before layer `at`: `lower_states` runs the embeddings and layers [0, at) without gradient,
    `upper_states` runs layers [at, L) on given hidden states (adapters active as the caller's router says)."""

    def __init__(self, model: nn.Module, at: int) -> None:
        layers = len(_layers(model))
        if not 0 < at < layers:
            raise ValueError(f"cannot split a {layers}-layer encoder before layer {at}")
        self.at = at
        self._given = _Given()
        self._lower = _truncated(model, 0, at, None)
        self._upper = _truncated(model, at, None, self._given)

    @torch.no_grad()
    def lower_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H): the hidden states that enter layer `at`."""
        return self._lower(input_ids=input_ids, attention_mask=attention_mask)[0]

    def upper_states(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, T, H): the last hidden states, from the states that enter layer `at`."""
        self._given.value = hidden
        try:
            ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=hidden.device)
            return self._upper(input_ids=ids, attention_mask=attention_mask)[0]
        finally:
            self._given.value = None
