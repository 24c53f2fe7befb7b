"""Shamir secret sharing over the prime field GF(2^521 - 1).

2^521 - 1 is a Mersenne prime (the field of NIST P-521), large enough that a 32-byte secret (an X25519
private key or a self-mask seed) is one field element, so a share is one element (66 bytes). Share i is the
random degree-(t-1) polynomial with constant term = secret, evaluated at x = i (i >= 1; the protocol uses
a client's 1-based position in the round's cohort). Any t shares give the secret back by Lagrange
interpolation at 0; fewer give no information about it.

Vectorised where it counts: one call shares many secrets at many points (Horner's rule over numpy object
arrays of Python integers), and reconstruction computes the Lagrange coefficients once per set of points and
reuses them for every secret shared at those points.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

from common.secagg.errors import SecAggAbort

PRIME = 2**521 - 1
ELEMENT_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret_values: Sequence[bytes], threshold: int, xs: Sequence[int]) -> list[list[bytes]]:
    """Shares of each secret at each point: result[j][k] is the share of secret j at xs[k] (66 bytes)."""
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (the number of share holders)")
    if len(set(xs)) != len(xs) or min(xs, default=1) < 1:
        raise ValueError("share points must be distinct integers >= 1")
    points = np.array([int(x) for x in xs], dtype=object)
    out = []
    for secret in secret_values:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"a secret must have {SECRET_BYTES} bytes, got {len(secret)}")
        coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        acc = np.zeros(len(points), dtype=object)
        for c in reversed(coefficients):  # Horner: acc = acc * x + c at every point at once
            acc = (acc * points + c) % PRIME
        out.append([int(v).to_bytes(ELEMENT_BYTES, "big") for v in acc])
    return out


def lagrange_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_k with f(0) = sum_k l_k f(xs[k]) for any polynomial of degree < len(xs)."""
    if len(set(xs)) != len(xs):
        raise ValueError("share points must be distinct")
    coefficients = []
    for k, xk in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != k:
                num = num * (-xm) % PRIME
                den = den * (xk - xm) % PRIME
        coefficients.append(num * pow(den, -1, PRIME) % PRIME)
    return coefficients


def combine(shares: dict[int, bytes], threshold: int, coefficients: list[int] | None = None) -> bytes:
    """The secret from `{x: share}`; uses the first `threshold` points (sorted). SecAggAbort when fewer than
    `threshold` shares are given; `coefficients` may pass precomputed `lagrange_at_zero` of those points."""
    if len(shares) < threshold:
        raise SecAggAbort(f"{len(shares)} shares < threshold {threshold}: the secret cannot be reconstructed")
    xs = sorted(shares)[:threshold]
    lam = coefficients if coefficients is not None else lagrange_at_zero(xs)
    value = 0
    for x, coeff in zip(xs, lam, strict=True):
        element = int.from_bytes(shares[x], "big")
        if element >= PRIME:
            raise ValueError(f"share at point {x} is not a field element")
        value = (value + coeff * element) % PRIME
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggAbort("reconstructed value is not a 32-byte secret: inconsistent shares")
    return value.to_bytes(SECRET_BYTES, "big")
