"""Test-wide settings: one torch thread, here and in every process the tests start.

The tests run tiny models, where a second thread only adds contention (a tiny training run measured 6x faster
with one thread on a loaded 2-core machine), and one thread everywhere (FEDADAPT_THREADS=1 reaches the
simulations' ClientApps and the CLI runs through the environment, common/threads.py) means a test that
recomputes a client's training in-process gets the same floating-point results as the simulation. The tests of
the thread choice itself (test_threads.py) take the variable away.
"""

from __future__ import annotations

import os

import pytest
import torch

from common.threads import ENV_THREADS

os.environ.setdefault(ENV_THREADS, "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that uses the real MiniLM is slow too: `make check` (-m "not slow") leaves it out."""
    for item in items:
        if item.get_closest_marker("minilm") is not None:
            item.add_marker(pytest.mark.slow)
