"""The client side of one SecAgg+ round as pure functions over plain values (no Flower).

Stage 1 `advertise`: make two X25519 key pairs (c: share transport, s: pairwise masks) and one self-mask seed
b per vector the client will upload; publish the public keys, a commitment to each b (lets the server check
what it reconstructs) and, when the client has an identity key (common/secagg/identity.py), an Ed25519
signature over all of it.
Stage 2 `share_keys`: from the roster of clients that advertised (each entry's signature checked against the
registry of enrolled identities, when there is one) and the members of each of its vectors, the client builds
each vector's mask graph itself (common/secagg/graph.py `vector_graph`: over that vector's members only),
Shamir-shares each vector's b among that vector's graph neighbours (threshold t of the vector's holders), and
its s private key among all its neighbours; each neighbour's shares travel AES-GCM encrypted under the c
agreement key, the associated data binding run, round, stage, sender and receiver.
Stage 3 `masked_input`: decrypt the shares addressed to this client (any failure: the client drops out rather
than mask inconsistently with the server's view), check each vector's cohort against the members it saw at
key sharing, then upload y = x + PRG(b_x, name) + sum over the vector's graph neighbours of +-PRG(s_uv, name).
Stage 3b `consistency` (only with identities): sign the survivor list the server sends; the unmask request
then carries every survivor's signature and a client refuses unless all verify over the same list, so a
server that tells clients different stories (to collect both kinds of share of one client) is caught.
Every signature binds the run, the round and the round's purpose (training, or the secure evaluation that
shares its round number), so a signature from one cannot be replayed in the other.
Stage 4 `unmask`: for each client it holds shares of, reveal the s-key share if that client dropped, or, if
it survived, the b-share of each vector that may be released: a vector is released only if its surviving
members are at least the vector's floor (`Rules.floor`: min-segment-clients, at least 2, and with distributed
DP the bank's number of noise shares) and its graph stays connected over them. Never both kinds for one
client: a server asking again, or naming a client in both sets, is refused.

Why per vector: one self-mask seed per client (as before issue 23) had to be revealed for every survivor,
which unmasked each of its vectors whether or not that vector's sum still covered enough clients; a bank left
with one surviving member was then that member's own vector (leak 1). With one seed per vector, shared only
among that vector's members, the members who see too few survivors withhold exactly that seed.

Every function checks the stage order and raises ProtocolError on anything inconsistent; the state is a
`ClientState` that round-trips through `to_record` / `from_record` (what the Flower shell keeps in
`context.state` between messages).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from common.secagg import crypto, shamir
from common.secagg.errors import ProtocolError
from common.secagg.graph import connected, threshold_for, vector_graph

ADVERTISE = "advertise-keys"
SHARE = "share-keys"
MASK = "masked-input"
CONSISTENCY = "consistency"
UNMASK = "unmask"
STAGES = (ADVERTISE, SHARE, MASK, UNMASK)  # CONSISTENCY runs between MASK and UNMASK only with identities
DONE = "done"
S_KEY = "*mask-key"  # names the s-key share; never a vector name (banks never start with "*", hidden is "*all-banks")
_HEAD = struct.Struct(f">QQ{shamir.ELEMENT_BYTES}sH")
_NAME = struct.Struct(">H")


class Advert(NamedTuple):
    """One roster entry as the server relays it: public keys, the digest of the self-mask commitments and,
    with identities, the client's identity public key and its signature over the rest."""

    c_pk: bytes
    s_pk: bytes
    b_commit: bytes
    id_pk: bytes = b""
    signature: bytes = b""


@dataclass(frozen=True)
class Rules:
    """What a client checks a round against, taken from its own configuration, never from the server's
    requests: the mask graph's degree (0 = complete), the Shamir threshold fraction, and the fewest surviving
    members a vector may be summed over (`floor`)."""

    degree: int = 0
    threshold_fraction: float = 0.6
    min_members: int = 2
    exempt: tuple[str, ...] = ()
    floors: Mapping[str, int] = field(default_factory=dict)

    def floor(self, name: str) -> int:
        """At least 2 for every vector (one survivor's sum is its input); min_members unless `exempt`; and a
        vector's own floor (distributed DP: its t noise shares, so that an under-noised sum never unmasks)."""
        return max(2, int(self.floors.get(name, 0)), 0 if name in self.exempt else self.min_members)


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


def commit_digest(commits: Mapping[str, bytes]) -> bytes:
    """One 32-byte digest of a client's per-vector commitments: what its peers see and its signature binds
    (peers must not learn its vector names: in segment mode they are its segments)."""
    h = hashlib.sha256(b"fedadapt-secagg-commits")
    for name in sorted(commits):
        h.update(_NAME.pack(len(name.encode())) + name.encode() + commits[name])
    return h.digest()


def _round_label(run_id: int, server_round: int, purpose: str) -> str:
    """run, round and (when not training) the round's purpose: a round's training and its secure evaluation
    (client/secure_eval.py) share a round number, and a signature made for one must not verify in the other."""
    return f"run={run_id}|round={server_round}" + (f"|purpose={purpose}" if purpose else "")


def advert_message(run_id: int, server_round: int, node: int, advert: Advert, purpose: str = "") -> bytes:
    """What an identity key signs at advertise-keys: the round, the node and its keys (not the signature)."""
    return (f"fedadapt-secagg-advert|{_round_label(run_id, server_round, purpose)}|node={node}|".encode()
            + advert.c_pk + advert.s_pk + advert.b_commit + advert.id_pk)


def survivors_message(run_id: int, server_round: int, survivors: Collection[int], purpose: str = "") -> bytes:
    """What an identity key signs in the consistency stage: the round and the survivor list it was given."""
    ids = ",".join(str(v) for v in sorted(set(survivors)))
    return f"fedadapt-secagg-survivors|{_round_label(run_id, server_round, purpose)}|{ids}".encode()


def masks(seed: bytes, length: int, bits: int) -> np.ndarray:
    return crypto.prg_words(seed, length) & np.uint64(2**bits - 1)


def ciphertext_bytes(names: Collection[str]) -> int:
    """Size of one encrypted share message carrying the s-key share and a b-share for each of `names`."""
    body = _HEAD.size + sum(_NAME.size + len(n.encode()) + shamir.ELEMENT_BYTES for n in names)
    return crypto.NONCE_BYTES + body + 16


def _pack(sender: int, receiver: int, s_share: bytes, b_shares: Mapping[str, bytes]) -> bytes:
    out = _HEAD.pack(sender, receiver, s_share, len(b_shares))
    for name in sorted(b_shares):
        out += _NAME.pack(len(name.encode())) + name.encode() + b_shares[name]
    return out


def _unpack(plaintext: bytes) -> tuple[int, int, bytes, dict[str, bytes]]:
    if len(plaintext) < _HEAD.size:
        raise ProtocolError(f"share message of {len(plaintext)} bytes is too short")
    sender, receiver, s_share, count = _HEAD.unpack_from(plaintext)
    pos, b_shares = _HEAD.size, {}
    for _ in range(count):
        if pos + _NAME.size > len(plaintext):
            raise ProtocolError("share message is truncated")
        (n,) = _NAME.unpack_from(plaintext, pos)
        pos += _NAME.size
        name = plaintext[pos:pos + n].decode("utf-8", errors="replace")
        share = plaintext[pos + n:pos + n + shamir.ELEMENT_BYTES]
        if len(share) != shamir.ELEMENT_BYTES:
            raise ProtocolError("share message is truncated")
        b_shares[name] = share
        pos += n + shamir.ELEMENT_BYTES
    if pos != len(plaintext):
        raise ProtocolError("share message has trailing bytes")
    return sender, receiver, s_share, b_shares


@dataclass
class ClientState:
    """What a client keeps between stages (secrets never leave it except as shares)."""

    node_id: int
    run_id: int
    server_round: int
    c_sk: bytes
    s_sk: bytes
    seeds: dict[str, bytes]  # vector name -> self-mask seed b
    stage: str = ADVERTISE  # the last stage completed
    rules: Rules = field(default_factory=Rules)
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (c public, s public)
    identities: dict[int, bytes] = field(default_factory=dict)  # id -> identity public key (with a registry)
    members: dict[str, tuple[int, ...]] = field(default_factory=dict)  # vectors shared at share-keys
    u2: tuple[int, ...] = ()
    uploaded: tuple[str, ...] = ()
    signed: tuple[int, ...] = ()  # the survivor list this client signed (consistency stage)
    held: dict[tuple[int, str], bytes] = field(default_factory=dict)  # (owner, vector or S_KEY) -> share
    withheld: tuple[str, ...] = ()  # vectors whose b-shares unmask refused to reveal
    purpose: str = ""  # "" = training; bound into every signature (`advert_message`, `survivors_message`)

    @property
    def salt(self) -> bytes:
        return round_salt(self.run_id, self.server_round)

    def graph(self, name: str) -> dict[int, tuple[int, ...]]:
        return vector_graph(self.members[name], self.rules.degree, self.salt, name)

    def expect(self, stage: str, server_round: int) -> None:
        if server_round != self.server_round:
            raise ProtocolError(f"message for round {server_round}, but this client is in round {self.server_round}")
        if self.stage != stage:
            raise ProtocolError(f"stage out of order: this client completed {self.stage!r}, not {stage!r}")

    def to_record(self) -> dict[str, Any]:
        ids, names, held = sorted(self.roster), sorted(self.seeds), sorted(self.held)
        vecs, floors = sorted(self.members), sorted(self.rules.floors)
        return {"node": self.node_id, "run": self.run_id, "round": self.server_round, "c-sk": self.c_sk,
                "s-sk": self.s_sk, "seed-names": names, "seeds": [self.seeds[n] for n in names],
                "stage": self.stage, "degree": self.rules.degree, "fraction": self.rules.threshold_fraction,
                "min-members": self.rules.min_members, "exempt": list(self.rules.exempt),
                "floor-names": floors, "floors": [int(self.rules.floors[n]) for n in floors],
                "roster-ids": ids, "roster-c": [self.roster[i][0] for i in ids],
                "roster-s": [self.roster[i][1] for i in ids], "roster-id": [self.identities.get(i, b"") for i in ids],
                "vector-names": vecs, **{f"members/{n}": list(self.members[n]) for n in vecs},
                "u2": list(self.u2), "uploaded": list(self.uploaded), "signed": list(self.signed),
                "held-ids": [o for o, _ in held], "held-names": [n for _, n in held],
                "held-shares": [self.held[k] for k in held], "withheld": list(self.withheld),
                "purpose": self.purpose}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ClientState:
        def ints(key: str) -> list[int]:
            return [int(v) for v in rec[key]]

        def blobs(key: str) -> list[bytes]:
            return [bytes(v) for v in rec[key]]

        def strs(key: str) -> list[str]:
            return [str(v) for v in rec[key]]

        rules = Rules(int(rec["degree"]), float(rec["fraction"]), int(rec["min-members"]), tuple(strs("exempt")),
                      dict(zip(strs("floor-names"), ints("floors"), strict=True)))
        ids = ints("roster-ids")
        return cls(int(rec["node"]), int(rec["run"]), int(rec["round"]), bytes(rec["c-sk"]), bytes(rec["s-sk"]),
                   dict(zip(strs("seed-names"), blobs("seeds"), strict=True)), str(rec["stage"]), rules,
                   dict(zip(ids, zip(blobs("roster-c"), blobs("roster-s"), strict=True), strict=True)),
                   {i: k for i, k in zip(ids, blobs("roster-id"), strict=True) if k},
                   {n: tuple(ints(f"members/{n}")) for n in strs("vector-names")}, tuple(ints("u2")),
                   tuple(strs("uploaded")), tuple(ints("signed")),
                   dict(zip(zip(ints("held-ids"), strs("held-names"), strict=True), blobs("held-shares"),
                            strict=True)), tuple(strs("withheld")), str(rec.get("purpose", "")))


def advertise(node_id: int, run_id: int, server_round: int, names: Collection[str], identity: bytes | None = None,
              purpose: str = "") -> tuple[ClientState, dict[str, Any]]:
    """Stage 1: fresh keys and one self-mask seed per vector in `names`; reply {"c-pk", "s-pk", "b-commit",
    "commit-names", "commits", "id-pk", "signature"} (the last two empty without an identity key). `purpose`
    ("" = training) is bound into this round's signatures."""
    if not names:
        raise ProtocolError("a secure round needs at least one vector to upload")
    state = ClientState(node_id, run_id, server_round, crypto.new_private_key(), crypto.new_private_key(),
                        {str(n): os.urandom(shamir.SECRET_BYTES) for n in names}, purpose=purpose)
    commits = {n: commitment(b) for n, b in state.seeds.items()}
    advert = Advert(crypto.public_key(state.c_sk), crypto.public_key(state.s_sk), commit_digest(commits),
                    crypto.identity_public_key(identity) if identity else b"")
    signature = (crypto.sign(identity, advert_message(run_id, server_round, node_id, advert, purpose)) if identity
                 else b"")
    return state, {"c-pk": advert.c_pk, "s-pk": advert.s_pk, "b-commit": advert.b_commit,
                   "commit-names": sorted(commits), "commits": [commits[n] for n in sorted(commits)],
                   "id-pk": advert.id_pk, "signature": signature}


def check_roster(run_id: int, server_round: int, roster: Mapping[int, Advert], registry: Collection[bytes],
                 purpose: str = "") -> None:
    """Every roster entry signed by a distinct enrolled identity over exactly its keys; ProtocolError naming
    the first entry that is not (a server that substitutes a client's keys cannot sign them as that client)."""
    seen: dict[bytes, int] = {}
    for node in sorted(roster):
        advert = roster[node]
        if advert.id_pk not in registry:
            raise ProtocolError(f"key advertisement of node {node} names an identity outside the registry: the "
                                f"server may have substituted its keys; refusing to share secrets")
        if advert.id_pk in seen:
            raise ProtocolError(f"nodes {seen[advert.id_pk]} and {node} advertise the same identity")
        seen[advert.id_pk] = node
        if not crypto.verify(advert.id_pk, advert.signature,
                             advert_message(run_id, server_round, node, advert, purpose)):
            raise ProtocolError(f"key advertisement of node {node} does not carry a valid signature of its "
                                f"registered identity: the server substituted its keys; refusing to share secrets")


def share_keys(state: ClientState, server_round: int, roster: Mapping[int, Advert],
               vectors: Mapping[str, Sequence[int]], rules: Rules, registry: Collection[bytes] | None = None
               ) -> dict[int, bytes]:
    """Stage 2: encrypted shares for every neighbour (over all vectors); this client keeps its own shares.

    `vectors`: name -> the members of that vector still in the roster, as the server says; a vector below its
    floor is neither shared nor ever uploaded. With a `registry`, every roster entry must be signed."""
    state.expect(ADVERTISE, server_round)
    me = state.node_id
    own = Advert(crypto.public_key(state.c_sk), crypto.public_key(state.s_sk),
                 commit_digest({n: commitment(b) for n, b in state.seeds.items()}))
    if me not in roster or roster[me][:3] != own[:3]:
        raise ProtocolError("the roster does not carry this client's own public keys")
    keys = [k for entry in roster.values() for k in (entry.c_pk, entry.s_pk)]
    if len(set(keys)) != len(keys):
        raise ProtocolError("two roster entries share a public key")
    if registry is not None:
        check_roster(state.run_id, server_round, roster, registry, state.purpose)
    unknown = sorted(set(vectors) - set(state.seeds))
    if unknown:
        raise ProtocolError(f"asked to share secrets for vectors this client does not have: {unknown[:5]}")
    state.rules = rules
    for name in sorted(vectors):
        members = tuple(sorted(int(v) for v in vectors[name]))
        if me not in members or len(set(members)) != len(members) or not set(members) <= set(roster):
            raise ProtocolError(f"vector {name!r}: members without this client, duplicated or outside the roster")
        if len(members) >= rules.floor(name):
            state.members[name] = members
    if not state.members:
        raise ProtocolError(f"no vector of this client has enough members in the roster: {sorted(vectors)[:5]}")
    order = sorted(roster)
    xs = {node: order.index(node) + 1 for node in order}
    b_out: dict[int, dict[str, bytes]] = {}
    for name in state.members:
        holders = sorted({*state.graph(name)[me], me})
        (shares,) = shamir.split([state.seeds[name]], threshold_for(len(holders), rules.threshold_fraction),
                                 [xs[h] for h in holders])
        for holder, share in zip(holders, shares, strict=True):
            b_out.setdefault(holder, {})[name] = share
    holders = sorted({me, *b_out})
    (s_shares,) = shamir.split([state.s_sk], threshold_for(len(holders), rules.threshold_fraction),
                               [xs[h] for h in holders])
    out = {}
    for holder, s_share in zip(holders, s_shares, strict=True):
        if holder == me:
            state.held[(me, S_KEY)] = s_share
            state.held.update({(me, n): s for n, s in b_out[me].items()})
            continue
        key = crypto.agree(state.c_sk, roster[holder].c_pk, state.salt, b"share-transport")
        plaintext = _pack(me, holder, s_share, b_out[holder])
        out[holder] = crypto.encrypt(key, plaintext, associated_data(state.run_id, server_round, SHARE, me, holder))
    state.roster = {n: (a.c_pk, a.s_pk) for n, a in roster.items()}
    state.identities = {n: a.id_pk for n, a in roster.items()} if registry is not None else {}
    state.stage = SHARE
    return out


def masked_input(state: ClientState, server_round: int, ciphertexts: Mapping[int, bytes], u2: Sequence[int],
                 vectors: Mapping[str, np.ndarray], cohorts: Mapping[str, Sequence[int]], bits: int
                 ) -> dict[str, np.ndarray]:
    """Stage 3: store the shares sent to this client, then mask each vector named in `cohorts` (uint64 ring
    elements). A cohort must be exactly the vector's members seen at share-keys that are still in `u2`, and
    at least the vector's floor: otherwise the vector's sum would reveal too few clients' inputs."""
    state.expect(SHARE, server_round)
    me = state.node_id
    survivors = set(int(v) for v in u2)
    if me not in survivors or not survivors <= set(state.roster):
        raise ProtocolError("share-keys survivors are inconsistent with the roster or lack this client")
    graphs = {name: state.graph(name) for name in state.members}
    neighbours = {v for g in graphs.values() for v in g[me]}
    expected = survivors & neighbours
    if set(ciphertexts) != expected:
        raise ProtocolError(f"expected shares from {sorted(expected)}, got {sorted(ciphertexts)}")
    for sender, blob in ciphertexts.items():
        key = crypto.agree(state.c_sk, state.roster[sender][0], state.salt, b"share-transport")
        src, dst, s_share, b_shares = _unpack(
            crypto.decrypt(key, blob, associated_data(state.run_id, server_round, SHARE, sender, me)))
        if (src, dst) != (sender, me):
            raise ProtocolError(f"share from {sender} names {src}->{dst}")
        if set(b_shares) != {n for n, g in graphs.items() if sender in g[me]}:
            raise ProtocolError(f"share from {sender} carries vectors {sorted(b_shares)[:5]} other than the ones "
                                "both hold as graph neighbours")
        state.held[(sender, S_KEY)] = s_share
        state.held.update({(sender, n): s for n, s in b_shares.items()})
    unknown = sorted(set(cohorts) - set(state.members))
    if unknown or not set(cohorts) <= set(vectors):
        raise ProtocolError(f"asked for vectors this client did not share secrets for: {unknown[:5]}")
    out = {}
    for name in sorted(cohorts):
        members = set(int(v) for v in cohorts[name])
        if members != set(state.members[name]) & survivors:
            raise ProtocolError(f"vector {name!r}: the cohort differs from the members seen at share-keys that "
                                "are still in the round")
        if len(members) < state.rules.floor(name):
            raise ProtocolError(f"vector {name!r}: {len(members)} member(s) < {state.rules.floor(name)}; not "
                                "uploaded")
        x = vectors[name]
        y = np.asarray(x, dtype=np.uint64) + masks(self_seed(state.seeds[name], state.salt, name), len(x), bits)
        for v in sorted(set(graphs[name][me]) & members):
            seed = crypto.derive(crypto.exchange(state.s_sk, state.roster[v][1]), state.salt, pair_info(name, me, v))
            pair = masks(seed, len(x), bits)
            y = y + pair if me < v else y - pair
        out[name] = y & np.uint64(2**bits - 1)
    state.u2 = tuple(sorted(survivors))
    state.uploaded = tuple(sorted(out))
    state.stage = MASK
    return out


def consistency(state: ClientState, server_round: int, survivors: Sequence[int], identity: bytes) -> bytes:
    """Stage 3b: sign the survivor list the server sends (this client will unmask for no other list)."""
    state.expect(MASK, server_round)
    alive = set(int(v) for v in survivors)
    if state.node_id not in alive or not alive <= set(state.u2):
        raise ProtocolError("the survivor list lacks this client or names clients not in the masked round")
    state.signed = tuple(sorted(alive))
    state.stage = CONSISTENCY
    return crypto.sign(identity, survivors_message(state.run_id, server_round, alive, state.purpose))


def check_signatures(state: ClientState, survivors: Collection[int], signatures: Mapping[int, bytes]) -> None:
    """Every survivor signed exactly the list this client signed; ProtocolError naming who did not (the server
    told clients different stories, or a survivor's signature is missing)."""
    alive = tuple(sorted(set(survivors)))
    if alive != state.signed:
        raise ProtocolError(f"the server asks to unmask for survivors {list(alive)[:8]} but this client signed "
                            f"{list(state.signed)[:8]}: the server told it different stories; round aborted")
    message = survivors_message(state.run_id, state.server_round, alive, state.purpose)
    for node in alive:
        sig = signatures.get(node)
        if sig is None:
            raise ProtocolError(f"no consistency signature from survivor {node}; round aborted")
        if not crypto.verify(state.identities.get(node, b""), sig, message):
            raise ProtocolError(f"the consistency signature of node {node} does not verify over the survivor list "
                                "this client was given: the server told clients different survivor lists; round "
                                "aborted")


def releasable(state: ClientState, alive: Collection[int]) -> list[str]:
    """The uploaded vectors whose b-shares may be revealed: surviving members at least the floor, and the
    vector's mask graph connected over them (else the server would learn the sum of a smaller component)."""
    out = []
    for name in state.uploaded:
        survivors = sorted(set(state.members[name]) & set(alive))
        if len(survivors) >= state.rules.floor(name) and connected(state.graph(name), survivors):
            out.append(name)
    return out


def unmask(state: ClientState, server_round: int, survivors: Sequence[int], dropped: Sequence[int],
           signatures: Mapping[int, bytes] | None = None) -> dict[tuple[int, str], bytes]:
    """Stage 4: (owner, vector or S_KEY) -> share: the s-key share of each dropped client, the b-share of each
    surviving owner's vector that `releasable` allows. With identities (the client signed a survivor list in
    the consistency stage) every survivor's signature over that same list must verify first."""
    if state.identities:  # the roster was checked against a registry: no unmask without the consistency stage
        state.expect(CONSISTENCY, server_round)
        check_signatures(state, survivors, signatures or {})
    else:
        state.expect(MASK, server_round)
    alive, gone = set(int(v) for v in survivors), set(int(v) for v in dropped)
    if alive & gone:
        raise ProtocolError(f"clients {sorted(alive & gone)[:5]} are named both survived and dropped")
    if state.node_id not in alive or len(alive) < 2:
        raise ProtocolError(f"{len(alive)} survivors: fewer than 2 or without this client")
    if not (alive | gone) <= set(state.u2):
        raise ProtocolError("unmask names clients that were not in the masked round")
    state.stage = DONE  # answered once: a second request could ask for the other share of the same client
    released = set(releasable(state, alive))
    state.withheld = tuple(sorted(set(state.uploaded) - released))
    out = {}
    for (owner, name), share in state.held.items():
        if owner in gone and name == S_KEY or owner in alive and name in released:
            out[(owner, name)] = share
    return out
