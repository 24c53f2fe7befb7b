"""What one client round takes in and gives back: the banks a server message may carry, and a training reply.

Its own module so that a round's alternative trainers (common/privacy/user_updates.py under user-level DP) share
these with `common.federation.task` without importing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from common.federation.client_data import ClientData
from common.names import GLOBAL, bank_of

Arrays = dict[str, np.ndarray]


def received_banks(data: ClientData, received: Mapping[str, np.ndarray]) -> list[str]:
    """The banks a server message carries: global plus some of this client's own segments, nothing else.

    The server sends only the segment banks it serves (a held-back segment is left out, so its users are
    routed through the global adapter alone); a bank this client does not hold means a broken or hostile
    message, refused with the names.
    """
    banks = sorted({bank_of(k) for k in received})
    if GLOBAL not in banks:
        raise ValueError(f"server message lacks the {GLOBAL!r} adapter (banks: {banks[:5]})")
    foreign = sorted(set(banks) - set(data.adapter_names))
    if foreign:
        raise ValueError(f"server message carries adapters this client does not hold: {foreign[:5]}")
    return [GLOBAL, *[b for b in banks if b != GLOBAL]]


@dataclass
class TrainResult:
    """delta: trained - received per key; bank_examples: examples per bank (the aggregation weights)."""

    delta: Arrays
    num_examples: int
    bank_examples: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
