"""Who masks with whom: the complete graph, or a k-regular ring graph for large cohorts (SecAgg+), per vector.

With the complete graph every pair of clients shares a pairwise mask and every client holds a share of
every other's secrets: cost per client grows with the cohort (n - 1 masks to expand). SecAgg+ (Bell et al.
2020) replaces it by a sparse graph of degree k ~ O(log n). Here: the cohort is shuffled by a permutation
seeded from the round (so the server cannot hand-pick neighbourhoods more than any public shuffle allows)
and each client is joined to the k/2 clients before and after it on the ring (k rounded up to even).

One graph per summed VECTOR, over that vector's members only (`vector_graph`). A sum protects a member only if
its input is masked together with the other members' inputs: with one cohort-wide graph, a member of a bank
whose graph neighbours do not hold that bank was masked by its self mask alone, and revealing that self mask
(as unmask does for every survivor) exposed its vector (issue 23, leak 2). Over the members of the vector, the
complete graph (the default) ties every member to every other; a sparse graph is used only when asked for, and
is safe only while it stays connected over the members that survive: the server learns the sum of every
connected component of the survivors' graph, not only the total. `connected` is that check, which every client
runs before it reveals anything that unmasks the vector (common/secagg/client.py `unmask`). The graph is a
deterministic function of the members, the degree and the round's salt, so each client recomputes it and
never takes its neighbours from the server.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def neighbour_graph(ids: Sequence[int], degree: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """id -> its neighbours (sorted, never itself). degree <= 0 or >= n - 1: the complete graph."""
    nodes = sorted(int(i) for i in ids)
    n = len(nodes)
    if degree <= 0 or degree >= n - 1:
        return {u: tuple(v for v in nodes if v != u) for u in nodes}
    half = math.ceil(degree / 2)
    ring = ring_order(nodes, seed)
    out: dict[int, set[int]] = {u: set() for u in nodes}
    for pos, u in enumerate(ring):
        for step in range(1, half + 1):
            v = ring[(pos + step) % n]
            out[u].add(v)
            out[v].add(u)
    return {u: tuple(sorted(vs)) for u, vs in out.items()}


def ring_order(ids: Sequence[int], seed: bytes) -> list[int]:
    """The public shuffle of the sparse graph: the ids in ring order for `seed`."""
    nodes = sorted(int(i) for i in ids)
    rng = np.random.default_rng(np.frombuffer(hashlib.sha256(seed).digest(), dtype=np.uint32))
    return [nodes[i] for i in rng.permutation(len(nodes))]


def vector_seed(salt: bytes, name: str) -> bytes:
    return salt + b"|vector|" + name.encode()


def vector_graph(members: Sequence[int], degree: int, salt: bytes, name: str) -> dict[int, tuple[int, ...]]:
    """The mask graph of one vector over its members (seeded by the round's salt and the vector's name)."""
    return neighbour_graph(members, degree, vector_seed(salt, name))


def connected(graph: dict[int, tuple[int, ...]], nodes: Sequence[int]) -> bool:
    """Whether `graph` restricted to `nodes` is connected (an empty or one-node set counts as connected)."""
    alive = set(nodes)
    if not alive:
        return True
    start = min(alive)
    seen, stack = {start}, [start]
    while stack:
        for v in graph.get(stack.pop(), ()):
            if v in alive and v not in seen:
                seen.add(v)
                stack.append(v)
    return seen == alive


def threshold_for(holders: int, fraction: float) -> int:
    """Shamir threshold t for a secret shared among `holders` (neighbours + the client itself):
    ceil(fraction * holders), at least 2 (one share must never suffice) and at most holders."""
    if not 0.5 < fraction <= 1:
        raise ValueError(f"secagg-threshold-fraction must be in (0.5, 1], got {fraction}")
    return min(holders, max(2, math.ceil(fraction * holders - 1e-9)))
