"""All parties of one SecAgg+ round in one process, with drop-outs: what tests and benchmarks drive.

`run_in_memory` plays every client and the server through the four stages exactly as the Flower shells do,
minus the transport; `drop` names, per stage, the clients that fall silent before answering it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from common.secagg import client
from common.secagg.server import RoundSpec, SecAggServer


@dataclass
class InMemoryResult:
    totals: dict[str, np.ndarray]
    server: SecAggServer
    states: dict[int, client.ClientState] = field(default_factory=dict)


def run_in_memory(spec: RoundSpec, inputs: Mapping[int, Mapping[str, np.ndarray]],
                  drop: Mapping[str, set[int]] | None = None) -> InMemoryResult:
    """Sum `inputs[node][name]` (uint64 ring elements) securely; `drop[stage]` = nodes silent at that stage."""
    drop = drop or {}
    rnd, silent = spec.server_round, set()

    def answering(stage: str, nodes: Iterable[int]) -> list[int]:
        silent.update(drop.get(stage, set()))
        return [n for n in sorted(nodes) if n not in silent]

    server = SecAggServer(spec)
    states, keys = {}, {}
    for node in answering(client.ADVERTISE, spec.cohort):
        states[node], keys[node] = client.advertise(node, spec.run_id, rnd)
    requests = server.receive_keys(keys)
    shares = {n: client.share_keys(states[n], rnd, req["roster"], req["neighbours"], req["threshold"])
              for n, req in requests.items() if n in answering(client.SHARE, requests)}
    requests = server.receive_shares(shares)
    masked = {n: client.masked_input(states[n], rnd, req["ciphertexts"], req["u2"],
                                     inputs[n], req["cohorts"], spec.bits,
                                     spec.min_members, spec.exempt)
              for n, req in requests.items() if n in answering(client.MASK, requests)}
    unmask_requests = server.receive_masked(masked)
    revealed = {n: client.unmask(states[n], rnd, req["survivors"], req["dropped"])
                for n, req in unmask_requests.items() if n in answering(client.UNMASK, unmask_requests)}
    server.receive_unmask(revealed)
    return InMemoryResult(server.totals(), server, states)
