"""Test-wide settings: one torch thread.

The tests run tiny models, where a second thread only adds contention (a tiny training run measured 6x faster
with one thread on a loaded 2-core machine), and one thread matches the ClientApp's `client-threads = 1`, so
a test that recomputes a client's training in-process gets the same floating-point results as the simulation.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the real MiniLM is slow too: `make check` (-m "not slow") leaves it out."""
    for item in items:
        if item.get_closest_marker("minilm") is not None:
            item.add_marker(pytest.mark.slow)
