"""Fixed-point encoding of real vectors into the ring Z_(2^bits), where the masks live.

A client's value v (a weighted, clipped delta coordinate, or a count) becomes q = round(v * scale) mod
2^bits; the sum of n such q's, read as a signed integer in [-2^(bits-1), 2^(bits-1)), divided by scale, is
the sum of the v's with an error of at most n * step / 2 (step = 1 / scale, the quantization step). No
wrap-around can happen because every value is bounded: |v| <= bound = max_weight * max(clip, 1) (a delta
coordinate is clipped to +-clip and multiplied by a weight <= max_weight; a weight slot is <= max_weight),
and scale is chosen so that max_clients * bound * scale < 2^(bits-1).

Arithmetic is numpy uint64 (wrap-around modulo 2^64), masked down to `bits`; with bits <= 32 the words
travel as uint32 (half the bytes). Example: bits=64, clip=1, max_weight=1e6, 100 clients: step ~ 1.1e-11
per weighted coordinate, i.e. ~1e-11 / (sum of weights) on a mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_BITS = 24
MAX_BITS = 64
MAX_STEP = 2.0**-20  # coarser than ~1e-6 per weighted coordinate would swamp honest deltas (~lr = 1e-3)


@dataclass(frozen=True)
class FixedPoint:
    """bits: ring Z_(2^bits); clip: |delta coordinate| bound; max_weight: the largest weight one client may
    put on a bank; max_clients: the most summands (the cohort size)."""

    bits: int
    clip: float
    max_weight: float
    max_clients: int

    def __post_init__(self) -> None:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"secagg-bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ValueError(f"secagg-clip-range must be > 0, got {self.clip}")
        if not (self.max_weight >= 1 and math.isfinite(self.max_weight)):
            raise ValueError(f"the weight cap must be >= 1, got {self.max_weight}")
        if self.max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {self.max_clients}")
        if self.scale == 0 or self.step > MAX_STEP:
            raise ValueError(f"secagg-bits={self.bits} leaves a quantization step above {MAX_STEP:.1e} for "
                             f"{self.max_clients} clients with weights up to {self.max_weight:g} and clip "
                             f"{self.clip:g}: raise secagg-bits or lower max-client-examples")

    @property
    def bound(self) -> float:
        """The largest |value| one client may encode."""
        return self.max_weight * max(self.clip, 1.0)

    @property
    def scale(self) -> float:
        """Units per 1.0; a power of two, so that encode/decode are exact scalings in float64."""
        room = (2 ** (self.bits - 1) - 1) / (self.max_clients * self.bound)
        return float(2 ** math.floor(math.log2(room))) if room >= 1 else 0.0

    @property
    def step(self) -> float:
        """The quantization step: one unit of the ring, in the values' scale."""
        return 1.0 / self.scale

    @property
    def mask(self) -> np.uint64:
        return np.uint64(2**self.bits - 1)

    @property
    def wire_dtype(self) -> np.dtype:
        """uint32 when the ring fits in 32 bits, else uint64."""
        return np.dtype(np.uint32) if self.bits <= 32 else np.dtype(np.uint64)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """float values with |v| <= bound -> uint64 ring elements (round to nearest)."""
        v = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot encode non-finite values")
        if v.size and float(np.max(np.abs(v))) > self.bound * (1 + 1e-12):
            raise ValueError(f"value {float(np.max(np.abs(v))):g} exceeds the encodable bound {self.bound:g}")
        return np.rint(v * self.scale).astype(np.int64).view(np.uint64) & self.mask

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A sum of encoded vectors (uint64, any wrap) -> float64, reading the ring as signed."""
        shift = np.uint64(64 - self.bits)  # sign-extend in integers: exact for every width
        signed = ((np.asarray(total, dtype=np.uint64) << shift).view(np.int64) >> np.int64(shift)).astype(np.float64)
        return signed / self.scale
