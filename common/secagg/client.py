"""The client side of one SecAgg+ round as four pure functions over plain values (no Flower).

Stage 1 `advertise`: make two X25519 key pairs (c: share transport, s: pairwise masks) and a self-mask seed
b; publish the public keys and a SHA-256 commitment to b (lets the server check what it reconstructs).
Stage 2 `share_keys`: from the roster of clients that advertised, Shamir-share b and the s private key among
the client's neighbours and itself (threshold t), and encrypt each neighbour's pair of shares with AES-GCM under
the c agreement key; associated data binds run, round, stage, sender and receiver.
Stage 3 `masked_input`: decrypt the shares addressed to this client (any failure: the client drops out rather
than mask inconsistently with the server's view), then upload y = x + PRG(b, name) + sum_v +-PRG(s_uv, name)
mod 2^bits for each named vector x (a bank, or the hidden mode's one vector).
Stage 4 `unmask`: for each client it holds shares of, reveal the b-share if that client survived, the
s-key-share if it dropped, never both: a server asking again, or naming a client in both sets, is refused.

Every function checks the stage order and raises ProtocolError on anything inconsistent; the state is a
`ClientState` that round-trips through `to_record` / `from_record` (what the Flower shell keeps in
`context.state` between messages).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.secagg import crypto, shamir
from common.secagg.errors import ProtocolError

ADVERTISE = "advertise-keys"
SHARE = "share-keys"
MASK = "masked-input"
UNMASK = "unmask"
STAGES = (ADVERTISE, SHARE, MASK, UNMASK)
DONE = "done"
SHARE_PLAINTEXT = struct.Struct(f">QQ{shamir.ELEMENT_BYTES}s{shamir.ELEMENT_BYTES}s")
CIPHERTEXT_BYTES = crypto.NONCE_BYTES + SHARE_PLAINTEXT.size + 16


def round_salt(run_id: int, server_round: int) -> bytes:
    """HKDF salt of every key of a round: keys of two rounds or runs are unrelated."""
    return hashlib.sha256(f"fedadapt-secagg|run={run_id}|round={server_round}".encode()).digest()


def associated_data(run_id: int, server_round: int, stage: str, sender: int, receiver: int) -> bytes:
    return f"fedadapt-secagg|run={run_id}|round={server_round}|stage={stage}|{sender}->{receiver}".encode()


def self_seed(b: bytes, salt: bytes, name: str) -> bytes:
    return crypto.derive(b, salt, f"self-mask|{name}".encode())


def pair_info(name: str, u: int, v: int) -> bytes:
    return f"pair-mask|{name}|{min(u, v)}|{max(u, v)}".encode()


def commitment(b: bytes) -> bytes:
    return hashlib.sha256(b"fedadapt-secagg-self-seed|" + b).digest()


def masks(seed: bytes, length: int, bits: int) -> np.ndarray:
    return crypto.prg_words(seed, length) & np.uint64(2**bits - 1)


@dataclass
class ClientState:
    """What a client keeps between stages (secrets never leave it except as shares)."""

    node_id: int
    run_id: int
    server_round: int
    c_sk: bytes
    s_sk: bytes
    b: bytes
    stage: str = ADVERTISE  # the last stage completed
    threshold: int = 0
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (c public, s public)
    neighbours: tuple[int, ...] = ()
    u2: tuple[int, ...] = ()
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # owner -> (b share, s-key share)

    @property
    def salt(self) -> bytes:
        return round_salt(self.run_id, self.server_round)

    def expect(self, stage: str, server_round: int) -> None:
        if server_round != self.server_round:
            raise ProtocolError(f"message for round {server_round}, but this client is in round {self.server_round}")
        if self.stage != stage:
            raise ProtocolError(f"stage out of order: this client completed {self.stage!r}, not {stage!r}")

    def to_record(self) -> dict[str, Any]:
        ids = sorted(self.roster)
        owners = sorted(self.held)
        return {"node": self.node_id, "run": self.run_id, "round": self.server_round, "c-sk": self.c_sk,
                "s-sk": self.s_sk, "b": self.b, "stage": self.stage, "threshold": self.threshold,
                "roster-ids": ids, "roster-c": [self.roster[i][0] for i in ids],
                "roster-s": [self.roster[i][1] for i in ids], "neighbours": list(self.neighbours),
                "u2": list(self.u2), "held-ids": owners, "held-b": [self.held[i][0] for i in owners],
                "held-s": [self.held[i][1] for i in owners]}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ClientState:
        def ints(key: str) -> list[int]:
            return [int(v) for v in rec[key]]

        def blobs(key: str) -> list[bytes]:
            return [bytes(v) for v in rec[key]]

        return cls(int(rec["node"]), int(rec["run"]), int(rec["round"]), bytes(rec["c-sk"]),
                   bytes(rec["s-sk"]), bytes(rec["b"]), str(rec["stage"]), int(rec["threshold"]),
                   dict(zip(ints("roster-ids"), zip(blobs("roster-c"), blobs("roster-s"), strict=True), strict=True)),
                   tuple(ints("neighbours")), tuple(ints("u2")),
                   dict(zip(ints("held-ids"), zip(blobs("held-b"), blobs("held-s"), strict=True), strict=True)))


def advertise(node_id: int, run_id: int, server_round: int) -> tuple[ClientState, dict[str, bytes]]:
    """Stage 1: fresh keys and self-mask seed; reply {"c-pk", "s-pk", "b-commit"}."""
    state = ClientState(node_id, run_id, server_round, crypto.new_private_key(), crypto.new_private_key(),
                        os.urandom(shamir.SECRET_BYTES))
    return state, {"c-pk": crypto.public_key(state.c_sk), "s-pk": crypto.public_key(state.s_sk),
                   "b-commit": commitment(state.b)}


def share_keys(state: ClientState, server_round: int, roster: Mapping[int, tuple[bytes, bytes]],
               neighbours: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Stage 2: encrypted shares of (b, s private key) for every neighbour; this client keeps its own."""
    state.expect(ADVERTISE, server_round)
    me = state.node_id
    if roster.get(me) != (crypto.public_key(state.c_sk), crypto.public_key(state.s_sk)):
        raise ProtocolError("the roster does not carry this client's own public keys")
    keys = [k for pair in roster.values() for k in pair]
    if len(set(keys)) != len(keys):
        raise ProtocolError("two roster entries share a public key")
    nbrs = tuple(sorted(set(int(v) for v in neighbours)))
    if me in nbrs or not set(nbrs) <= set(roster) or len(nbrs) != len(neighbours):
        raise ProtocolError("neighbour list names this client, a duplicate or a client outside the roster")
    holders = len(nbrs) + 1
    if not (2 <= threshold <= holders and 2 * threshold > holders):
        raise ProtocolError(f"threshold {threshold} is unsafe for {holders} share holders (need t > holders/2)")
    order = sorted(roster)
    xs = {node: order.index(node) + 1 for node in (*nbrs, me)}
    holder_ids = sorted(xs)
    b_shares, s_shares = shamir.split([state.b, state.s_sk], threshold, [xs[h] for h in holder_ids])
    out = {}
    for holder, b_share, s_share in zip(holder_ids, b_shares, s_shares, strict=True):
        if holder == me:
            state.held[me] = (b_share, s_share)
            continue
        key = crypto.agree(state.c_sk, roster[holder][0], state.salt, b"share-transport")
        plaintext = SHARE_PLAINTEXT.pack(me, holder, b_share, s_share)
        out[holder] = crypto.encrypt(key, plaintext, associated_data(state.run_id, server_round, SHARE, me, holder))
    state.roster = dict(roster)
    state.neighbours = nbrs
    state.threshold = threshold
    state.stage = SHARE
    return out


def masked_input(state: ClientState, server_round: int, ciphertexts: Mapping[int, bytes], u2: Sequence[int],
                 vectors: Mapping[str, np.ndarray], cohorts: Mapping[str, Sequence[int]], bits: int,
                 min_members: int = 1, exempt: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Stage 3: store the shares sent to this client, then mask each vector named in `cohorts` (uint64 ring
    elements). A vector whose cohort is smaller than `min_members` (and not `exempt`) is refused: its sum
    would reveal too few clients' inputs."""
    state.expect(SHARE, server_round)
    me = state.node_id
    survivors = set(int(v) for v in u2)
    if me not in survivors or not survivors <= set(state.roster) or len(survivors) < state.threshold:
        raise ProtocolError(f"share-keys survivors are inconsistent or fewer than the threshold {state.threshold}")
    expected = survivors & set(state.neighbours)
    if set(ciphertexts) != expected:
        raise ProtocolError(f"expected shares from {sorted(expected)}, got {sorted(ciphertexts)}")
    for sender, blob in ciphertexts.items():
        key = crypto.agree(state.c_sk, state.roster[sender][0], state.salt, b"share-transport")
        plaintext = crypto.decrypt(key, blob, associated_data(state.run_id, server_round, SHARE, sender, me))
        if len(plaintext) != SHARE_PLAINTEXT.size:
            raise ProtocolError(f"share from {sender} has {len(plaintext)} bytes")
        src, dst, b_share, s_share = SHARE_PLAINTEXT.unpack(plaintext)
        if (src, dst) != (sender, me):
            raise ProtocolError(f"share from {sender} names {src}->{dst}")
        state.held[sender] = (b_share, s_share)
    unknown = sorted(set(cohorts) - set(vectors))
    if unknown:
        raise ProtocolError(f"asked for vectors this client does not have: {unknown[:5]}")
    shared = {v: crypto.exchange(state.s_sk, state.roster[v][1]) for v in set(state.neighbours) & survivors}
    out = {}
    for name in sorted(cohorts):
        x = vectors[name]
        members = set(int(v) for v in cohorts[name])
        if me not in members or not members <= survivors:
            raise ProtocolError(f"vector {name!r}: cohort without this client or beyond the round's survivors")
        if len(members) < min_members and name not in exempt:
            raise ProtocolError(f"vector {name!r}: {len(members)} member(s) < {min_members}; not uploaded")
        y = np.asarray(x, dtype=np.uint64) + masks(self_seed(state.b, state.salt, name), len(x), bits)
        for v in sorted(set(state.neighbours) & survivors & members):
            seed = crypto.derive(shared[v], state.salt, pair_info(name, me, v))
            pair = masks(seed, len(x), bits)
            y = y + pair if me < v else y - pair
        out[name] = y & np.uint64(2**bits - 1)
    state.u2 = tuple(sorted(survivors))
    state.stage = MASK
    return out


def unmask(state: ClientState, server_round: int, survivors: Sequence[int], dropped: Sequence[int]
           ) -> dict[int, bytes]:
    """Stage 4: owner -> the share it needs (b-share of a survivor, s-key share of a dropped client)."""
    state.expect(MASK, server_round)
    alive, gone = set(int(v) for v in survivors), set(int(v) for v in dropped)
    if alive & gone:
        raise ProtocolError(f"clients {sorted(alive & gone)[:5]} are named both survived and dropped")
    if state.node_id not in alive or len(alive) < state.threshold:
        raise ProtocolError(f"{len(alive)} survivors: fewer than the threshold {state.threshold} or without me")
    if not (alive | gone) <= set(state.u2):
        raise ProtocolError("unmask names clients that were not in the masked round")
    state.stage = DONE  # answered once: a second request could ask for the other share of the same client
    out = {}
    for owner, (b_share, s_share) in state.held.items():
        if owner in alive:
            out[owner] = b_share
        elif owner in gone:
            out[owner] = s_share
    return out
