"""Bank states <-> the flat real vectors that are summed securely, for both secure-aggregation modes.

Each bank's vector is `[w * clip(delta) (every tensor, keys sorted, flattened), w, c]`: the client's delta
clipped per coordinate to +-clip and scaled by its weight w in that bank (its example count there, capped;
1 for every contributor with DP), then two slots: w itself and c = 1 if the client contributed (w > 0). The
sum over a cohort therefore carries sum(w * delta), sum(w) and the number of contributors, so the server
computes the weighted mean without learning any single weight.

- "segment" (segment-visible): one vector per bank the client holds; the bank name is the vector name.
- "segment-hidden": ONE vector, the concatenation of every bank of the run in sorted order (zeros where the
  client has no data), under the name HIDDEN_VECTOR. The sum yields every bank's three parts at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from common.names import bank_of

SEGMENT = "segment"
SEGMENT_HIDDEN = "segment-hidden"
OFF = "off"
SECURE_MODES = (OFF, SEGMENT, SEGMENT_HIDDEN)
HIDDEN_VECTOR = "*all-banks"  # not a bank name: bank names never start with "*"
SLOTS = 2  # weight, contributor


@dataclass(frozen=True)
class BankLayout:
    """Where one bank's tensors sit in its vector: keys in sorted order with their shapes."""

    bank: str
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    @property
    def length(self) -> int:
        return self.size + SLOTS


@dataclass
class BankSum:
    """One bank's securely summed parts: sum of w * delta per key, sum of weights, number of contributors."""

    sums: dict[str, np.ndarray]
    weight: float
    contributors: int


def bank_layouts(arrays: Mapping[str, np.ndarray]) -> dict[str, BankLayout]:
    """The layout of every bank in a flat `{bank::path: array}` state (what a train message carries)."""
    grouped: dict[str, list[str]] = {}
    for key in arrays:
        grouped.setdefault(bank_of(key), []).append(key)
    return {bank: BankLayout(bank, tuple(sorted(keys)), tuple(tuple(np.shape(arrays[k])) for k in sorted(keys)))
            for bank, keys in sorted(grouped.items())}


def bank_vector(layout: BankLayout, delta: Mapping[str, np.ndarray], weight: float, clip: float) -> np.ndarray:
    """`[w * clip(delta), w, 1]` for a contributor, all zeros for w == 0 (float64, length layout.length)."""
    out = np.zeros(layout.length, dtype=np.float64)
    if weight <= 0:
        return out
    pos = 0
    for key, shape in zip(layout.keys, layout.shapes, strict=True):
        value = np.asarray(delta[key], dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"{key}: delta shape {value.shape} differs from the layout's {shape}")
        n = value.size
        out[pos:pos + n] = np.clip(value.ravel(), -clip, clip) * weight
        pos += n
    out[pos:] = (weight, 1.0)
    return out


def client_vectors(mode: str, layouts: Mapping[str, BankLayout], delta: Mapping[str, np.ndarray],
                   weights: Mapping[str, float], clip: float) -> dict[str, np.ndarray]:
    """The real vectors a client sums into: one per bank (segment) or one for all banks (hidden).

    `layouts` are the banks the client was sent: its own in segment mode, every bank of the run in hidden
    mode; a bank it holds no weight in becomes zeros."""
    per_bank = {bank: bank_vector(lay, delta, float(weights.get(bank, 0.0)), clip) for bank, lay in layouts.items()}
    if mode == SEGMENT:
        return per_bank
    if mode == SEGMENT_HIDDEN:
        return {HIDDEN_VECTOR: np.concatenate([per_bank[b] for b in sorted(per_bank)])}
    raise ValueError(f"secure-aggregation mode {mode!r} has no vectors")


def vector_lengths(mode: str, layouts: Mapping[str, BankLayout]) -> dict[str, int]:
    """Name -> length of every vector of a round, for the banks in `layouts`."""
    if mode == SEGMENT:
        return {bank: lay.length for bank, lay in layouts.items()}
    return {HIDDEN_VECTOR: sum(lay.length for lay in layouts.values())}


def split_bank(layout: BankLayout, total: np.ndarray) -> BankSum:
    """A bank's summed vector (float64) back into per-key sums, the weight total and the contributor count."""
    if total.shape != (layout.length,):
        raise ValueError(f"bank {layout.bank}: sum has shape {total.shape}, expected ({layout.length},)")
    sums, pos = {}, 0
    for key, shape in zip(layout.keys, layout.shapes, strict=True):
        n = int(np.prod(shape))
        sums[key] = total[pos:pos + n].reshape(shape)
        pos += n
    return BankSum(sums, weight=float(round(total[pos])), contributors=int(round(total[pos + 1])))


def split_totals(mode: str, layouts: Mapping[str, BankLayout], totals: Mapping[str, np.ndarray]
                 ) -> dict[str, BankSum]:
    """Decoded vector sums -> per-bank sums (the inverse of `client_vectors`, summed)."""
    if mode == SEGMENT:
        return {bank: split_bank(layouts[bank], totals[bank]) for bank in layouts if bank in totals}
    whole, out, pos = totals[HIDDEN_VECTOR], {}, 0
    for bank in sorted(layouts):
        lay = layouts[bank]
        out[bank] = split_bank(lay, whole[pos:pos + lay.length])
        pos += lay.length
    return out


def slots_problem(bank_sum: BankSum, uploads: int, max_weight: float) -> str:
    """Why a bank's summed weight and contributor slots cannot come from honest clients, or "" if they can.

    Honest slots: each of the `uploads` clients whose vector went into the sum adds 0 or 1 contributor, and a
    weight in [1, max_weight] when it contributes (exactly 1 with DP), 0 otherwise. A modified client can
    forge its slots (no range proofs); this check catches the forgeries that leave the sum impossible, e.g. a
    negative total weight that would flip the sign of the bank's mean, but not those within the honest range."""
    c, w = bank_sum.contributors, bank_sum.weight
    if not 0 <= c <= uploads:
        return f"{c} contributors from {uploads} uploads"
    if not c <= w <= c * max_weight * (1 + 1e-9):
        return f"total weight {w:g} outside [{c}, {c * max_weight:g}] for {c} contributors"
    return ""
