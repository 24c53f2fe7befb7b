"""int8 quantization of adapter state: symmetric, one scale per output channel.

A weight (out, in) keeps one float32 scale per output row (max |w| of the row / 127), so a row of small
weights is not crushed by a large neighbour; tensors with more dimensions are treated as a stack of rows
(the last dimension is the input), 1-D tensors (biases, embeddings) get one scale. This shrinks what a client
sends or a server caches about 4x; `quantization_error` says what it costs in model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from common.adapters.model import AdaptedModel
from common.adapters.routing import Routing

QMAX = 127
SCALE_SUFFIX = "#scale"


@dataclass(frozen=True)
class Int8Tensor:
    values: Tensor  # int8, the original shape
    scale: Tensor  # float32, shape[:-1] + (1,) for ndim >= 2, () otherwise
    dtype: torch.dtype = torch.float32

    def dequantize(self) -> Tensor:
        return (self.values.to(torch.float32) * self.scale).to(self.dtype)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.scale.numel() * self.scale.element_size()


def quantize_tensor(tensor: Tensor) -> Int8Tensor:
    """Round-to-nearest symmetric int8; the error per element is at most half its row's scale."""
    x = tensor.detach().to(torch.float32)
    amax = x.abs().amax(dim=-1, keepdim=True) if x.ndim >= 2 else x.abs().amax()
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    values = torch.round(x / scale).clamp_(-QMAX, QMAX).to(torch.int8)
    return Int8Tensor(values, scale, tensor.dtype)


def quantize_int8(state: Mapping[str, Tensor]) -> dict[str, Int8Tensor]:
    return {key: quantize_tensor(value) for key, value in state.items()}


def dequantize(qstate: Mapping[str, Int8Tensor]) -> dict[str, Tensor]:
    return {key: value.dequantize() for key, value in qstate.items()}


def nbytes(state: Mapping[str, Tensor] | Mapping[str, Int8Tensor]) -> int:
    """Payload size in bytes (tensor data only, no container overhead)."""
    total = 0
    for value in state.values():
        total += value.nbytes if isinstance(value, Int8Tensor) else value.numel() * value.element_size()
    return total


def pack_int8(qstate: Mapping[str, Int8Tensor]) -> dict[str, Tensor]:
    """A flat {key: int8 values, key + '#scale': float32 scales} dict, e.g. for safetensors or a Flower ArrayRecord."""
    flat: dict[str, Tensor] = {}
    for key, value in qstate.items():
        flat[key] = value.values
        flat[key + SCALE_SUFFIX] = value.scale
    return flat


def unpack_int8(flat: Mapping[str, Tensor]) -> dict[str, Int8Tensor]:
    """Inverse of pack_int8 (dequantizes to float32); a missing scale is a ValueError naming the key."""
    out: dict[str, Int8Tensor] = {}
    for key, value in flat.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        if key + SCALE_SUFFIX not in flat:
            raise ValueError(f"int8 state has no scale for {key!r} (expected key {key + SCALE_SUFFIX!r})")
        if value.dtype != torch.int8:
            raise ValueError(f"int8 state: {key!r} has dtype {value.dtype}, expected torch.int8")
        out[key] = Int8Tensor(value, flat[key + SCALE_SUFFIX].to(torch.float32))
    return out


@dataclass(frozen=True)
class QuantizationReport:
    bytes_fp32: int
    bytes_int8: int
    max_abs_error: float  # largest |output difference| on the probe batch's original token positions
    relative_error: float  # ||out_int8 - out|| / ||out - backbone out||: error relative to what the adapters add


def quantization_error(
    model: AdaptedModel, input_ids: Tensor, attention_mask: Tensor, routing: Routing, names: list[str] | None = None
) -> QuantizationReport:
    """Run a probe batch with the adapters as they are and int8 round-tripped; the model is restored afterwards."""
    original = model.adapter_state(names, trainable_only=True)
    qstate = quantize_int8(original)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            base = model(input_ids, attention_mask, routing=None)
            exact = model(input_ids, attention_mask, routing=routing)
            model.load_adapter_state(dequantize(qstate))
            approx = model(input_ids, attention_mask, routing=routing)
    finally:
        model.load_adapter_state(original)
        model.train(was_training)
    n = base.shape[1]  # compare on the original token positions (prompt slots have no backbone counterpart)
    diff = approx[:, -n:] - exact[:, -n:]
    added = (exact[:, -n:] - base).norm().item()
    error = diff.norm().item()
    relative = error / added if added > 0 else (0.0 if error == 0 else float("inf"))
    return QuantizationReport(nbytes(original), nbytes(qstate), diff.abs().max().item(), relative)
