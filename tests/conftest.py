"""Test-wide settings: one torch thread.

The tests run tiny models, where a second thread only adds contention (a tiny training run measured 6x faster
with one thread on a loaded 2-core machine), and one thread matches the ClientApp's `client-threads = 1`, so
a test that recomputes a client's training in-process gets the same floating-point results as the simulation.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
