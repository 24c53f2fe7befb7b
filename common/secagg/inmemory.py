"""All parties of one SecAgg+ round in one process, with drop-outs: what tests and benchmarks drive.

`run_in_memory` plays every client and the server through the stages exactly as the Flower shells do, minus
the transport; `drop` names, per stage, the clients that fall silent before answering it. With `identities`
(node -> Ed25519 private key) the clients sign their keys and the survivor list, and check them against the
registry of those keys' public halves (the consistency stage runs between masked input and unmask).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.secagg import client, crypto
from common.secagg.server import RoundSpec, SecAggServer


@dataclass
class InMemoryResult:
    totals: dict[str, np.ndarray]
    server: SecAggServer
    states: dict[int, client.ClientState] = field(default_factory=dict)


def run_in_memory(spec: RoundSpec, inputs: Mapping[int, Mapping[str, np.ndarray]],
                  drop: Mapping[str, set[int]] | None = None, identities: Mapping[int, bytes] | None = None
                  ) -> InMemoryResult:
    """Sum `inputs[node][name]` (uint64 ring elements) securely; `drop[stage]` = nodes silent at that stage."""
    drop = drop or {}
    rnd, silent = spec.server_round, set()
    registry = {crypto.identity_public_key(k) for k in identities.values()} if identities else None

    def answering(stage: str, nodes: Iterable[int]) -> list[int]:
        silent.update(drop.get(stage, set()))
        return [n for n in sorted(nodes) if n not in silent]

    server = SecAggServer(spec)
    states, keys = {}, {}
    for node in answering(client.ADVERTISE, spec.cohort):
        ident = identities[node] if identities else None
        states[node], keys[node] = client.advertise(node, spec.run_id, rnd, spec.names_of(node), ident)
    requests = server.receive_keys(keys)
    shares = {n: client.share_keys(states[n], rnd, req["roster"], req["vectors"], spec.rules, registry)
              for n, req in requests.items() if n in answering(client.SHARE, requests)}
    requests = server.receive_shares(shares)
    masked = {n: client.masked_input(states[n], rnd, req["ciphertexts"], req["u2"], inputs[n], req["cohorts"],
                                     spec.bits)
              for n, req in requests.items() if n in answering(client.MASK, requests)}
    unmask_requests: dict[int, dict[str, Any]] = dict(server.receive_masked(masked))
    if identities:
        signatures = {n: client.consistency(states[n], rnd, req["survivors"], identities[n])
                      for n, req in unmask_requests.items() if n in answering(client.CONSISTENCY, unmask_requests)}
        unmask_requests = server.receive_signatures(signatures)
    revealed = {n: client.unmask(states[n], rnd, req["survivors"], req["dropped"], req.get("signatures"))
                for n, req in unmask_requests.items() if n in answering(client.UNMASK, unmask_requests)}
    server.receive_unmask(revealed)
    return InMemoryResult(server.totals(), server, states)
