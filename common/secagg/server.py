"""The server side of one SecAgg+ round over plain values (no Flower): it relays, checks and unmasks.

The server never learns a client's input: it sees public keys, ciphertexts it cannot open, masked vectors that
are uniform in Z_(2^bits), and in the last stage exactly one kind of share per client (the b of each released
vector for survivors, the s key for clients that dropped after sharing). Reconstruction needs t shares, so it
is robust to up to holders - t drop-outs per secret at every stage. It mirrors the clients' release rule
(common/secagg/client.py `releasable`): a vector whose surviving members are below its floor, or whose mask
graph is not connected over them, is withheld (`withheld`), because its members would refuse its shares.

`SecAggServer` moves through the stages with one method each. Each takes the replies of that stage as
`{node: content}` (already decoded by the Flower shell), rejects the malformed ones with a reason (their
senders count as dropped), records the survivors U1 ⊇ U2 ⊇ U3 ⊇ U4, and returns the next stage's request per
node. Fewer than t survivors at any stage, or a secret that cannot be rebuilt, raises SecAggAbort: the caller
applies nothing from the round. With identities, `receive_masked` asks for the consistency stage first and
`receive_signatures` relays every survivor's signature to the unmask request. `totals()` returns each
released vector's sum over its members in U3.
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
    S_KEY,
    Advert,
    Rules,
    ciphertext_bytes,
    commit_digest,
    commitment,
    masks,
    pair_info,
    round_salt,
    self_seed,
)
from common.secagg.errors import ProtocolError, SecAggAbort
from common.secagg.graph import connected, neighbour_graph, threshold_for, vector_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundSpec:
    """One secure round: who is in it, what is summed, and the protocol parameters.

    vectors: name -> (the cohort members who upload it, its length); degree: 0 = complete graph (per vector);
    a vector is summed only while its members in the round are at least its floor (`Rules.floor`: at least 2;
    min_members unless the vector is `exempt`; `floors[name]` when given, e.g. distributed DP's t), which the
    clients check too; identities: the clients sign their keys and survivor lists (consistency stage)."""

    run_id: int
    server_round: int
    cohort: tuple[int, ...]
    vectors: Mapping[str, tuple[tuple[int, ...], int]]
    bits: int = 64
    threshold_fraction: float = 0.6
    degree: int = 0
    min_members: int = 2
    exempt: tuple[str, ...] = ()
    floors: Mapping[str, int] = field(default_factory=dict)
    identities: bool = False

    def __post_init__(self) -> None:
        if len(set(self.cohort)) != len(self.cohort) or len(self.cohort) < 2:
            raise ValueError(f"a secure round needs at least 2 distinct clients, got {len(self.cohort)}")
        for name, (members, length) in self.vectors.items():
            if not set(members) <= set(self.cohort) or length < 1:
                raise ValueError(f"vector {name!r}: members outside the cohort or empty length")

    @property
    def rules(self) -> Rules:
        """The rules a client of this round applies (from its own configuration, in a deployment)."""
        return Rules(self.degree, self.threshold_fraction, self.min_members, self.exempt, dict(self.floors))

    def names_of(self, node: int) -> list[str]:
        """The vectors `node` uploads."""
        return sorted(name for name, (members, _) in self.vectors.items() if node in members)


@dataclass
class SecAggServer:
    spec: RoundSpec
    rejected: Counter[str] = field(default_factory=Counter)
    keys: dict[int, Advert] = field(default_factory=dict)  # U1
    commits: dict[int, dict[str, bytes]] = field(default_factory=dict)  # node -> vector -> commitment to its b
    members: dict[str, tuple[int, ...]] = field(default_factory=dict)  # vectors shared: name -> members in U1
    graphs: dict[str, dict[int, tuple[int, ...]]] = field(default_factory=dict)
    threshold: int = 0
    ciphertexts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # U2: sender -> receiver -> blob
    masked: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # U3
    signatures: dict[int, bytes] = field(default_factory=dict)  # consistency: survivor -> its signature
    revealed: dict[int, dict[tuple[int, str], bytes]] = field(default_factory=dict)  # U4: holder -> share
    cohorts: dict[str, list[int]] = field(default_factory=dict)  # vectors uploaded: name -> members in U2

    @property
    def salt(self) -> bytes:
        return round_salt(self.spec.run_id, self.spec.server_round)

    def neighbours(self, node: int) -> set[int]:
        """Everyone `node` shares a mask graph edge with, over all its vectors (the holders of its s key)."""
        return {v for g in self.graphs.values() for v in g.get(node, ())}

    def _reject(self, node: int, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        log.warning("secure aggregation round %d: node %d rejected (%s: %s)", self.spec.server_round, node,
                    reason, detail)

    def _need(self, survivors: int, stage: str) -> None:
        if survivors < max(self.threshold, 2):
            raise SecAggAbort(f"round {self.spec.server_round}: {survivors} client(s) left after {stage}, fewer "
                              f"than the threshold {max(self.threshold, 2)}; nothing is applied")

    def receive_keys(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        """Stage 1 replies -> share-keys requests {roster: {id: Advert}, vectors: {name: members}}."""
        intended = neighbour_graph(self.spec.cohort, self.spec.degree, self.salt)
        self.threshold = threshold_for(min(len(v) for v in intended.values()) + 1, self.spec.threshold_fraction)
        for node, reply in replies.items():
            if node not in self.spec.cohort:
                self._reject(node, "unknown-sender", "not in the cohort")
                continue
            try:
                advert = Advert(*(reply[k] for k in ("c-pk", "s-pk", "b-commit", "id-pk", "signature")))
                names, commits = list(reply["commit-names"]), list(reply["commits"])
                if not all(isinstance(v, bytes) and len(v) == 32 for v in advert[:3]):
                    raise ProtocolError("keys must be three 32-byte values")
                if not (isinstance(advert.id_pk, bytes) and isinstance(advert.signature, bytes)):
                    raise ProtocolError("identity key and signature must be bytes")
                if names != self.spec.names_of(node) or len(commits) != len(names):
                    raise ProtocolError(f"commitments for {names[:5]}, expected {self.spec.names_of(node)[:5]}")
                by_name = dict(zip(names, commits, strict=True))
                if commit_digest(by_name) != advert.b_commit:
                    raise ProtocolError("the commitment digest does not match the commitments")
            except (KeyError, TypeError, ValueError, ProtocolError) as exc:
                self._reject(node, "malformed", str(exc))
                continue
            self.keys[node], self.commits[node] = advert, by_name
        all_keys = [k for keys in self.keys.values() for k in (keys.c_pk, keys.s_pk)]
        duplicated = {k for k, n in Counter(all_keys).items() if n > 1}
        for node in [n for n, k in self.keys.items() if k.c_pk in duplicated or k.s_pk in duplicated]:
            self._reject(node, "duplicate-key", "a public key used twice")
            del self.keys[node]
        self._need(len(self.keys), "advertise-keys")
        rules = self.spec.rules
        for name, (members, _) in sorted(self.spec.vectors.items()):
            alive = tuple(sorted(set(members) & set(self.keys)))
            if len(alive) >= rules.floor(name):
                self.members[name] = alive
                self.graphs[name] = vector_graph(alive, self.spec.degree, self.salt, name)
        roster = dict(self.keys)
        return {n: {"roster": roster, "vectors": {name: list(m) for name, m in self.members.items() if n in m}}
                for n in self.keys}

    def _pair_names(self, sender: int, receiver: int) -> list[str]:
        return [name for name, g in self.graphs.items() if receiver in g.get(sender, ())]

    def receive_shares(self, replies: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[str, Any]]:
        """Stage 2 replies {receiver: ciphertext} -> masked-input requests {ciphertexts, u2, cohorts}."""
        for node, reply in replies.items():
            if node not in self.keys:
                self._reject(node, "unknown-sender", "not in U1")
            elif set(reply) != self.neighbours(node):
                self._reject(node, "malformed", "ciphertexts are not addressed to exactly its neighbours")
            elif not all(isinstance(c, bytes) and len(c) == ciphertext_bytes(self._pair_names(node, r))
                         for r, c in reply.items()):
                self._reject(node, "malformed", "ciphertexts of the wrong size")
            else:
                self.ciphertexts[node] = dict(reply)
        self._need(len(self.ciphertexts), "share-keys")
        u2 = sorted(self.ciphertexts)
        rules = self.spec.rules
        for name, members in sorted(self.members.items()):
            alive = sorted(set(members) & set(u2))
            if len(alive) >= rules.floor(name):
                self.cohorts[name] = alive
        return {v: {"ciphertexts": {u: self.ciphertexts[u][v] for u in u2 if v in self.ciphertexts[u]},
                    "u2": u2, "cohorts": {n: m for n, m in self.cohorts.items() if v in m}} for v in u2}

    def expected_vectors(self, node: int) -> dict[str, int]:
        """What a node must upload in masked-input: the vectors whose cohort it is in, with their lengths."""
        return {name: self.spec.vectors[name][1] for name, members in self.cohorts.items() if node in members}

    def receive_masked(self, replies: Mapping[int, Mapping[str, np.ndarray]]) -> dict[int, dict[str, list[int]]]:
        """Stage 3 replies {name: masked vector} -> the next requests {survivors, dropped} (the consistency
        stage's with identities, else unmask's)."""
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

    def receive_signatures(self, replies: Mapping[int, bytes]) -> dict[int, dict[str, Any]]:
        """Consistency replies {node: signature} -> unmask requests {survivors, dropped, signatures}. Every
        survivor must sign: clients refuse to unmask without each survivor's signature (one silent here ends
        the round)."""
        for node, sig in replies.items():
            if node not in self.masked:
                self._reject(node, "unknown-sender", "not in U3")
            elif not isinstance(sig, bytes) or len(sig) != crypto.SIGNATURE_BYTES:
                self._reject(node, "malformed", f"a signature has {crypto.SIGNATURE_BYTES} bytes")
            else:
                self.signatures[node] = sig
        missing = sorted(set(self.masked) - set(self.signatures))
        if missing:
            raise SecAggAbort(f"round {self.spec.server_round}: survivors {missing[:5]} did not sign the survivor "
                              "list; clients unmask only with every survivor's signature; nothing is applied")
        survivors = sorted(self.masked)
        dropped = sorted(set(self.ciphertexts) - set(self.masked))
        return {v: {"survivors": survivors, "dropped": dropped, "signatures": dict(self.signatures)}
                for v in survivors}

    def _may_reveal(self, node: int) -> set[tuple[int, str]]:
        """The shares `node` holds: s-key shares of itself and its neighbours, b-shares of its vectors'."""
        asked = set(self.ciphertexts)
        out = {(o, S_KEY) for o in (self.neighbours(node) | {node}) & asked}
        for name, g in self.graphs.items():
            if node in g:
                out |= {(o, name) for o in ({*g[node], node} & asked)}
        return out

    def receive_unmask(self, replies: Mapping[int, Mapping[tuple[int, str], bytes]]) -> None:
        """Stage 4 replies {(owner, vector or S_KEY): share}; a reply that reveals anything it was not asked
        for is rejected."""
        for node, reply in replies.items():
            if node not in self.masked:
                self._reject(node, "unknown-sender", "not in U3")
            elif not set(reply) <= self._may_reveal(node):
                self._reject(node, "malformed", "shares of clients it does not hold")
            elif not all(isinstance(s, bytes) and len(s) == shamir.ELEMENT_BYTES for s in reply.values()):
                self._reject(node, "malformed", f"shares must be {shamir.ELEMENT_BYTES} bytes")
            else:
                self.revealed[node] = dict(reply)
        self._need(len(self.revealed), "unmask")

    def released(self) -> list[str]:
        """The uploaded vectors the clients will unmask (their rule, `client.releasable`, on the server's view)."""
        survivors, rules = set(self.masked), self.spec.rules
        return [name for name, members in sorted(self.cohorts.items())
                if len(alive := sorted(set(members) & survivors)) >= rules.floor(name)
                and connected(self.graphs[name], alive)]

    def withheld(self) -> list[str]:
        """Uploaded vectors that are not unmasked (too few surviving members, or a disconnected mask graph)."""
        return sorted(set(self.cohorts) - set(self.released()))

    def _secret(self, owner: int, key: str, holders: int, order: Sequence[int]) -> bytes:
        shares = {order.index(h) + 1: rev[(owner, key)] for h, rev in self.revealed.items() if (owner, key) in rev}
        return shamir.combine(shares, threshold_for(holders, self.spec.threshold_fraction))

    def totals(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Each released vector's sum over its members in U3 (uint64 ring elements), or only `names` (each
        must be released); SecAggAbort when a secret cannot be rebuilt."""
        order = sorted(self.keys)
        bits, survivors = self.spec.bits, set(self.masked)
        dropped = set(self.ciphertexts) - survivors
        released = self.released()
        if names is not None and not set(names) <= set(released):
            raise SecAggAbort(f"vectors {sorted(set(names) - set(released))[:5]} are withheld by their members")
        s_keys: dict[int, bytes] = {}
        out = {}
        for name in released if names is None else names:
            members, length, graph = self.cohorts[name], self.spec.vectors[name][1], self.graphs[name]
            alive = sorted(survivors & set(members))
            total = np.zeros(length, dtype=np.uint64)
            for u in alive:
                b = self._secret(u, name, len(graph[u]) + 1, order)
                if commitment(b) != self.commits[u][name]:
                    raise SecAggAbort(f"the self-mask seed rebuilt for node {u} does not match its commitment")
                total += self.masked[u][name] - masks(self_seed(b, self.salt, name), length, bits)
            for d in sorted(dropped & set(members)):
                if d not in s_keys:
                    s_keys[d] = self._secret(d, S_KEY, len(self.neighbours(d)) + 1, order)
                    if crypto.public_key(s_keys[d]) != self.keys[d].s_pk:
                        raise SecAggAbort(f"the mask key rebuilt for dropped node {d} does not match its public key")
                for v in sorted(set(graph[d]) & set(alive)):
                    shared = crypto.exchange(s_keys[d], self.keys[v].s_pk)
                    pair = masks(crypto.derive(shared, self.salt, pair_info(name, v, d)), length, bits)
                    total = total - pair if v < d else total + pair  # undo the mask v added for d
            out[name] = total & np.uint64(2**bits - 1)
        return out
