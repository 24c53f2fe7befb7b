"""Comparing adapter banks that were trained in different processes (a simulation's Ray workers, this process)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Banks = Mapping[str, Mapping[str, np.ndarray]]


def assert_trained_close(got: Banks, expected: Banks, start: Banks, rel: float = 1e-2, floor: float = 1e-6,
                         label: str = "") -> None:
    """Every array of `got` equals `expected` up to `floor` + `rel` x how far training moved it from `start`
    (L2 norms), and both hold the same banks and keys.

    Not bit-exact on purpose: CPU BLAS results are not bit-reproducible across processes and allocations, and
    Adam turns a 1e-7 difference in a near-zero gradient into a step of either sign (CI once saw 1.4e-5 on a bias
    that moved 2.1e-2). A real aggregation fault (a lost client, wrong weights, a leftover mask) is off by a large
    fraction of the move.
    """
    assert set(got) == set(expected), f"{label}: banks {sorted(got)} vs {sorted(expected)}"
    for bank, arrays in expected.items():
        assert set(got[bank]) == set(arrays), f"{label}: keys of {bank} differ"
        for key, value in arrays.items():
            moved = float(np.linalg.norm(np.asarray(value, np.float64) - start[bank][key]))
            error = float(np.linalg.norm(np.asarray(got[bank][key], np.float64) - value))
            assert error <= floor + rel * moved, f"{label} {key}: off by {error:.3g}, training moved it {moved:.3g}"
