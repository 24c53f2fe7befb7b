"""The server side of one SecAgg+ round over plain values (no Flower): it relays, checks and unmasks.

The server never learns a client's input: it sees public keys, ciphertexts it cannot open, masked vectors that
are uniform in Z_(2^bits), and in the last stage exactly one kind of share per client (b for survivors, the
s key for clients that dropped after sharing). Reconstruction needs t shares, so it is robust to up to
holders - t drop-outs per secret at every stage.

`SecAggServer` moves through the stages with one method each. Each takes the replies of that stage as
`{node: content}` (already decoded by the Flower shell), rejects the malformed ones with a reason (their
senders count as dropped), records the survivors U1 ⊇ U2 ⊇ U3 ⊇ U4, and returns the next stage's request per
node. Fewer than t survivors at any stage, or a secret that cannot be rebuilt, raises SecAggAbort: the caller
applies nothing from the round. `totals()` returns each named vector's sum over the clients in U3.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.secagg import crypto, shamir
from common.secagg.client import (
    CIPHERTEXT_BYTES,
    commitment,
    masks,
    pair_info,
    round_salt,
    self_seed,
)
from common.secagg.errors import ProtocolError, SecAggAbort
from common.secagg.graph import neighbour_graph, threshold_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundSpec:
    """One secure round: who is in it, what is summed, and the protocol parameters.

    vectors: name -> (the cohort members who upload it, its length); degree: 0 = complete graph;
    min_members: a vector (other than those in `exempt`) whose members still in the round after share-keys
    are fewer is not uploaded at all (its sum would be too few clients' updates; clients check it too)."""

    run_id: int
    server_round: int
    cohort: tuple[int, ...]
    vectors: Mapping[str, tuple[tuple[int, ...], int]]
    bits: int = 64
    threshold_fraction: float = 0.6
    degree: int = 0
    min_members: int = 1
    exempt: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.cohort)) != len(self.cohort) or len(self.cohort) < 2:
            raise ValueError(f"a secure round needs at least 2 distinct clients, got {len(self.cohort)}")
        for name, (members, length) in self.vectors.items():
            if not set(members) <= set(self.cohort) or length < 1:
                raise ValueError(f"vector {name!r}: members outside the cohort or empty length")


@dataclass
class Keys:
    c_pk: bytes
    s_pk: bytes
    b_commit: bytes


@dataclass
class SecAggServer:
    spec: RoundSpec
    rejected: Counter[str] = field(default_factory=Counter)
    keys: dict[int, Keys] = field(default_factory=dict)  # U1
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)
    threshold: int = 0
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # U2: sender -> receiver -> blob
    masked: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # U3
    revealed: dict[int, dict[int, bytes]] = field(default_factory=dict)  # U4: holder -> owner -> share
    cohorts: dict[str, list[int]] = field(default_factory=dict)  # vectors uploaded: name -> members in U2

    @property
    def salt(self) -> bytes:
        return round_salt(self.spec.run_id, self.spec.server_round)

    def _reject(self, node: int, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("secure aggregation round %d: node %d rejected (%s: %s)", self.spec.server_round, node,
                    reason, detail)

    def _need(self, survivors: int, stage: str) -> None:
        if survivors < max(self.threshold, 2):
            raise SecAggAbort(f"round {self.spec.server_round}: {survivors} client(s) left after {stage}, fewer "
                              f"than the threshold {max(self.threshold, 2)}; nothing is applied")

    def receive_keys(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        """Stage 1 replies {c-pk, s-pk, b-commit} -> share-keys requests {roster, neighbours, threshold}."""
        intended = neighbour_graph(self.spec.cohort, self.spec.degree, self.salt)
        self.threshold = threshold_for(min(len(v) for v in intended.values()) + 1, self.spec.threshold_fraction)
        for node, reply in replies.items():
            if node not in self.spec.cohort:
                self._reject(node, "unknown-sender", "not in the cohort")
                continue
            try:
                values = [reply[k] for k in ("c-pk", "s-pk", "b-commit")]
                if not all(isinstance(v, bytes) and len(v) == 32 for v in values):
                    raise ProtocolError("keys must be three 32-byte values")
            except (KeyError, ProtocolError) as exc:
                self._reject(node, "malformed", str(exc))
                continue
            self.keys[node] = Keys(*values)
        all_keys = [k for keys in self.keys.values() for k in (keys.c_pk, keys.s_pk)]
        duplicated = {k for k, n in Counter(all_keys).items() if n > 1}
        for node in [n for n, k in self.keys.items() if k.c_pk in duplicated or k.s_pk in duplicated]:
            self._reject(node, "duplicate-key", "a public key used twice")
            del self.keys[node]
        self._need(len(self.keys), "advertise-keys")
        self.graph = neighbour_graph(sorted(self.keys), self.spec.degree, self.salt)
        roster = {n: (k.c_pk, k.s_pk) for n, k in self.keys.items()}
        return {n: {"roster": roster, "neighbours": list(self.graph[n]), "threshold": self.threshold}
                for n in self.keys}

    def receive_shares(self, replies: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[str, Any]]:
        """Stage 2 replies {receiver: ciphertext} -> masked-input requests {ciphertexts, u2, cohorts}."""
        for node, reply in replies.items():
            if node not in self.keys:
                self._reject(node, "unknown-sender", "not in U1")
            elif set(reply) != set(self.graph[node]):
                self._reject(node, "malformed", "ciphertexts are not addressed to exactly its neighbours")
            elif not all(isinstance(c, bytes) and len(c) == CIPHERTEXT_BYTES for c in reply.values()):
                self._reject(node, "malformed", f"ciphertexts must be {CIPHERTEXT_BYTES} bytes")
            else:
                self.ciphertexts[node] = dict(reply)
        self._need(len(self.ciphertexts), "share-keys")
        u2 = sorted(self.ciphertexts)
        for name, (members, _) in sorted(self.spec.vectors.items()):
            alive = sorted(set(members) & set(u2))
            if alive and (len(alive) >= self.spec.min_members or name in self.spec.exempt):
                self.cohorts[name] = alive
        return {v: {"ciphertexts": {u: self.ciphertexts[u][v] for u in u2 if v in self.ciphertexts[u]},
                    "u2": u2, "cohorts": {n: m for n, m in self.cohorts.items() if v in m}} for v in u2}

    def expected_vectors(self, node: int) -> dict[str, int]:
        """What a node must upload in masked-input: the vectors whose cohort it is in, with their lengths."""
        return {name: self.spec.vectors[name][1] for name, members in self.cohorts.items() if node in members}

    def receive_masked(self, replies: Mapping[int, Mapping[str, np.ndarray]]) -> dict[int, dict[str, list[int]]]:
        """Stage 3 replies {name: masked vector} -> unmask requests {survivors, dropped}."""
        limit = 2**self.spec.bits - 1
        for node, reply in replies.items():
            if node not in self.ciphertexts:
                self._reject(node, "unknown-sender", "not in U2")
                continue
            expected = self.expected_vectors(node)
            problem = ""
            if set(reply) != set(expected):
                problem = f"vectors {sorted(reply)} instead of {sorted(expected)}"
            for name, vec in reply.items():
                if problem:
                    break
                if not isinstance(vec, np.ndarray) or vec.dtype.kind != "u" or vec.shape != (expected[name],):
                    problem = f"{name}: needs an unsigned integer vector of length {expected[name]}"
                elif vec.size and int(vec.max()) > limit:
                    problem = f"{name}: values above 2^{self.spec.bits} - 1"
            if problem:
                self._reject(node, "malformed", problem)
                continue
            self.masked[node] = {name: np.asarray(vec, dtype=np.uint64) for name, vec in reply.items()}
        self._need(len(self.masked), "masked-input")
        survivors = sorted(self.masked)
        dropped = sorted(set(self.ciphertexts) - set(self.masked))
        return {v: {"survivors": survivors, "dropped": dropped} for v in survivors}

    def receive_unmask(self, replies: Mapping[int, Mapping[int, bytes]]) -> None:
        """Stage 4 replies {owner: share}; a reply that reveals anything it was not asked for is rejected."""
        asked = set(self.ciphertexts)
        for node, reply in replies.items():
            if node not in self.masked:
                self._reject(node, "unknown-sender", "not in U3")
            elif not set(reply) <= (set(self.graph[node]) | {node}) & asked:
                self._reject(node, "malformed", "shares of clients it does not hold")
            elif not all(isinstance(s, bytes) and len(s) == shamir.ELEMENT_BYTES for s in reply.values()):
                self._reject(node, "malformed", f"shares must be {shamir.ELEMENT_BYTES} bytes")
            else:
                self.revealed[node] = dict(reply)
        self._need(len(self.revealed), "unmask")

    def _secret(self, owner: int, order: Sequence[int]) -> bytes:
        shares = {order.index(h) + 1: rev[owner] for h, rev in self.revealed.items() if owner in rev}
        return shamir.combine(shares, self.threshold)

    def totals(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Each uploaded vector's sum over U3 (uint64 ring elements), or only `names`; SecAggAbort when a
        secret cannot be rebuilt."""
        order = sorted(self.keys)
        bits, survivors = self.spec.bits, set(self.masked)
        dropped = set(self.ciphertexts) - survivors
        seeds = {u: self._secret(u, order) for u in sorted(survivors)}
        for u, b in seeds.items():
            if commitment(b) != self.keys[u].b_commit:
                raise SecAggAbort(f"the self-mask seed rebuilt for node {u} does not match its commitment")
        s_keys = {d: self._secret(d, order) for d in sorted(dropped)}
        for d, sk in s_keys.items():
            if crypto.public_key(sk) != self.keys[d].s_pk:
                raise SecAggAbort(f"the mask key rebuilt for dropped node {d} does not match its public key")
        shared = {(d, v): crypto.exchange(s_keys[d], self.keys[v].s_pk)
                  for d in s_keys for v in set(self.graph[d]) & survivors}
        out = {}
        for name in sorted(self.cohorts) if names is None else names:
            members, length = self.cohorts[name], self.spec.vectors[name][1]
            alive = sorted(survivors & set(members))
            total = np.zeros(length, dtype=np.uint64)
            for u in alive:
                total += self.masked[u][name] - masks(self_seed(seeds[u], self.salt, name), length, bits)
            for d in sorted(dropped & set(members)):
                for v in sorted(set(self.graph[d]) & set(alive)):
                    seed = crypto.derive(shared[(d, v)], self.salt, pair_info(name, v, d))
                    pair = masks(seed, length, bits)
                    total = total - pair if v < d else total + pair  # undo the mask v added for d
            out[name] = total & np.uint64(2**bits - 1)
        return out
