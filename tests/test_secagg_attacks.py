"""Issue 23: each attack of a curious or cheating server on the secure-aggregation protocol, replayed in memory.

Every test plays the server's side of the attack on the terms that used to work (the drop-outs, graphs and
lists the server chooses), and shows what the server now gets: a vector it cannot unmask (the shares that would
unmask it are withheld, so `_unmask_one` fails), a client that refuses to answer with the reason, or a round
that aborts. Where the old protocol is still expressible (no identity registry), the same attack is shown to
succeed first, so the test would fail if the defence broke.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from common.protocol import FedConfig
from common.secagg import client, crypto, shamir
from common.secagg.errors import ProtocolError, SecAggAbort
from common.secagg.evaluation import PURPOSE as EVAL_PURPOSE
from common.secagg.fixedpoint import FixedPoint
from common.secagg.graph import connected, neighbour_graph, ring_order, threshold_for, vector_graph, vector_seed
from common.secagg.inmemory import run_in_memory
from common.secagg.server import RoundSpec, SecAggServer

LENGTH = 64
FIXED = FixedPoint(bits=64, clip=1.0, max_weight=1.0, max_clients=20)


def _values(nodes: tuple[int, ...], names: Mapping[str, tuple[int, ...]], seed: int = 0
            ) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {n: {name: rng.uniform(-1, 1, LENGTH) for name, members in names.items() if n in members} for n in nodes}


def _encode(values: Mapping[int, Mapping[str, np.ndarray]]) -> dict[int, dict[str, np.ndarray]]:
    return {n: {k: FIXED.encode(v) for k, v in vecs.items()} for n, vecs in values.items()}


def _secret(server: SecAggServer, owner: int, key: str, threshold: int) -> bytes:
    """The server's best reconstruction of one secret from every share it was sent."""
    order = sorted(server.keys)
    shares = {order.index(h) + 1: rev[(owner, key)] for h, rev in server.revealed.items() if (owner, key) in rev}
    return shamir.combine(shares, threshold)


def _self_unmasked(server: SecAggServer, names: list[str]) -> dict[str, np.ndarray]:
    """The curious server's sum of `names`' masked inputs less every self mask it can rebuild (the unmask step
    of the old protocol, which revealed every survivor's seed): SecAggAbort when a seed is withheld."""
    out = {}
    for name in names:
        members = sorted(set(server.cohorts[name]) & set(server.masked))
        total = np.zeros(LENGTH, dtype=np.uint64)
        for u in members:
            b = _secret(server, u, name, threshold_for(len(server.graphs[name][u]) + 1, server.spec.threshold_fraction))
            total += server.masked[u][name] - client.masks(client.self_seed(b, server.salt, name), LENGTH, 64)
        out[name] = FIXED.decode(total)
    return out


# Leak 1: segment mode, one drop-out exposes a client's bank ---------------------------------------------------


def test_leak1_a_bank_left_with_one_survivor_is_never_unmasked() -> None:
    """Bank "B" has 2 members; one drops after sharing keys (before its masked input). The old server unmasked
    B's "sum" over the 1 survivor: the victim's own vector. Now every holder withholds the victim's B seed: the
    server cannot rebuild it, releases only the global bank, and the victim's masked B stays uniform."""
    # Prepare: 6 clients all in "global"; 101 (victim) and 102 in "B"
    nodes = tuple(range(101, 107))
    names = {"global": nodes, "B": (101, 102)}
    values = _values(nodes, names)
    spec = RoundSpec(1, 1, nodes, {k: (m, LENGTH) for k, m in names.items()}, exempt=("global",))
    # Execute: 102 falls silent at masked input, as the server may claim
    result = run_in_memory(spec, _encode(values), drop={client.MASK: {102}})
    # Assert: B was uploaded by the victim, but neither the victim nor anyone reveals B's seed
    assert "B" in result.server.masked[101]
    assert result.server.released() == ["global"] and "B" not in result.totals
    assert not any(key[1] == "B" for rev in result.server.revealed.values() for key in rev)
    assert result.states[101].withheld == ("B",)
    with pytest.raises(SecAggAbort, match="cannot be reconstructed"):
        _self_unmasked(result.server, ["B"])
    survivors = [n for n in nodes if n != 102]
    expected = np.sum([values[n]["global"] for n in survivors], axis=0)
    assert np.allclose(FIXED.decode(result.totals["global"]), expected, atol=1e-6)


def test_leak1_min_segment_clients_below_2_is_refused_and_a_lone_bank_never_uploaded() -> None:
    """min-segment-clients 1 with secure aggregation is refused by the config; a round spec asking for 1 still
    gets a floor of 2, so a bank with a single member is neither shared nor uploaded."""
    with pytest.raises(ValueError, match="min-segment-clients >= 2"):
        FedConfig(secure_aggregation="segment", min_segment_clients=1)
    nodes = tuple(range(1, 5))
    names = {"global": nodes, "B": (1,)}
    spec = RoundSpec(1, 1, nodes, {k: (m, LENGTH) for k, m in names.items()}, min_members=1)
    result = run_in_memory(spec, _encode(_values(nodes, names)))
    assert set(result.server.masked[1]) == {"global"} and "B" not in result.totals
    assert "B" not in result.states[1].members


# Leak 2: sparse mask graphs -----------------------------------------------------------------------------------


def test_leak2_sparse_graph_no_longer_leaves_bank_members_masked_by_their_self_mask_alone() -> None:
    """20 clients, degree 4, bank "B" held by 3 clients that are not neighbours in the cohort's graph. The old
    protocol masked B only with graph neighbours holding B (none), then revealed every seed: all 3 vectors came
    out. Now B has its own graph over its 3 members (complete): with every seed revealed the server gets each
    member's masked input less its self mask, which is not the member's vector; only the sum is exact."""
    # Prepare: three members pairwise non-adjacent in the 4-regular cohort graph of this round
    nodes = tuple(range(1, 21))
    spec0 = RoundSpec(3, 5, nodes, {"global": (nodes, LENGTH)}, degree=4)
    cohort_graph = neighbour_graph(nodes, 4, client.round_salt(3, 5))
    members: list[int] = []
    for n in nodes:
        if all(m not in cohort_graph[n] for m in members):
            members.append(n)
        if len(members) == 3:
            break
    names = {"global": nodes, "B": tuple(members)}
    values = _values(nodes, names, seed=1)
    spec = RoundSpec(3, 5, nodes, {k: (m, LENGTH) for k, m in names.items()}, degree=4, exempt=spec0.exempt)
    # Execute
    result = run_in_memory(spec, _encode(values))
    # Assert: the per-vector graph ties the three together; each "recovered" vector is noise, the sum exact
    assert all(set(result.server.graphs["B"][m]) == set(members) - {m} for m in members)
    for m in members:
        b = _secret(result.server, m, "B", 3)
        alone = FIXED.decode(result.server.masked[m]["B"] - client.masks(client.self_seed(b, result.server.salt, "B"),
                                                                           LENGTH, 64))
        assert not np.allclose(alone, values[m]["B"], atol=1e-3)
        assert np.mean(np.abs(alone) > 1.0) > 0.5  # uniform over the ring: mostly outside the clipped range
    assert np.allclose(FIXED.decode(result.totals["B"]), np.sum([values[m]["B"] for m in members], axis=0),
                       atol=1e-6)


def test_leak2_hidden_mode_dropouts_that_isolate_a_group_make_clients_withhold() -> None:
    """Hidden mode, 20 clients, degree 4: dropping 4 clients (after key sharing) cuts the ring graph into a
    group of 3 and the rest. The old server then learned the 3's partial sum. Now every client sees the
    survivors' graph disconnected and withholds its seed shares: the server can unmask nothing."""
    # Prepare: positions on the vector's ring; drop two pairs of ring neighbours around a run of three
    nodes = tuple(range(1, 21))
    name = "*all-banks"
    salt = client.round_salt(3, 5)
    graph = vector_graph(nodes, 4, salt, name)
    ring = ring_order(nodes, vector_seed(salt, name))
    gone = {ring[0], ring[1], ring[5], ring[6]}
    group = [ring[2], ring[3], ring[4]]
    values = _values(nodes, {name: nodes}, seed=2)
    spec = RoundSpec(3, 5, nodes, {name: (nodes, LENGTH)}, degree=4, exempt=(name,))
    # Execute
    result = run_in_memory(spec, _encode(values), drop={client.MASK: gone})
    # Assert: the survivors' graph is disconnected, so no b-share of the vector left any client
    alive = sorted(set(nodes) - gone)
    assert not connected(graph, alive) and connected(graph, group)
    assert result.totals == {} and result.server.released() == []
    assert not any(key[1] == name for rev in result.server.revealed.values() for key in rev)
    with pytest.raises(SecAggAbort):
        _self_unmasked(result.server, [name])


# Leak 5: distributed DP, a bank short of noise shares --------------------------------------------------------


def test_leak5_bank_short_of_noise_shares_is_withheld_by_its_members() -> None:
    """Distributed DP: bank "B" has 3 members and t = 3 noise shares; one drops after sharing keys, before its
    masked input arrives. The old server skipped B but held both survivors' seeds and could unmask an
    under-noised sum. Now B's floor is t: its members withhold B's seeds and the server cannot unmask it."""
    nodes = tuple(range(1, 7))
    names = {"global": nodes, "B": (1, 2, 3)}
    spec = RoundSpec(1, 1, nodes, {k: (m, LENGTH) for k, m in names.items()}, exempt=("global",),
                     floors={"B": 3, "global": 5})
    result = run_in_memory(spec, _encode(_values(nodes, names, seed=3)), drop={client.MASK: {3}})
    assert result.server.released() == ["global"]
    assert all(result.states[n].withheld == ("B",) for n in (1, 2))
    with pytest.raises(SecAggAbort, match="cannot be reconstructed"):
        _self_unmasked(result.server, ["B"])


# Malicious server: key substitution and split survivor lists --------------------------------------------------


def _identities(nodes: tuple[int, ...]) -> dict[int, bytes]:
    return {n: bytes([n]) * 32 for n in nodes}


def _advertised(spec: RoundSpec, identities: Mapping[int, bytes] | None, purpose: str = ""
                ) -> tuple[SecAggServer, dict[int, client.ClientState], dict[int, dict]]:
    server = SecAggServer(spec)
    states, keys = {}, {}
    for n in spec.cohort:
        states[n], keys[n] = client.advertise(n, spec.run_id, spec.server_round, spec.names_of(n),
                                              identities[n] if identities else None, purpose)
    return server, states, server.receive_keys(keys)


def test_key_substitution_is_refused_by_every_peer_and_the_round_aborts() -> None:
    """The server hands every peer of victim 1 its own keys in place of 1's. Without a registry (the old terms)
    the peers encrypt 1's shares to the server, which decrypts them. With identities the peers check the
    signatures: each refuses naming node 1, no share leaves any client, and the round aborts."""
    nodes = tuple(range(1, 8))
    spec = RoundSpec(1, 1, nodes, {"v": (nodes, LENGTH)})
    fake_c, fake_s = crypto.new_private_key(), crypto.new_private_key()

    def substitute(roster: dict[int, client.Advert], signer: bytes | None) -> dict[int, client.Advert]:
        forged = roster[1]._replace(c_pk=crypto.public_key(fake_c), s_pk=crypto.public_key(fake_s))
        if signer is not None:  # the server re-signs with an identity of its own: not in the registry
            forged = forged._replace(id_pk=crypto.identity_public_key(signer))
            forged = forged._replace(signature=crypto.sign(signer, client.advert_message(1, 1, 1, forged)))
        return {**roster, 1: forged}

    # Old terms: no registry, the substitution works (the server opens the share 2 sends to "1")
    server, states, requests = _advertised(spec, None)
    blob = client.share_keys(states[2], 1, substitute(requests[2]["roster"], None), requests[2]["vectors"],
                             spec.rules)[1]
    key = crypto.agree(fake_c, requests[2]["roster"][2].c_pk, client.round_salt(1, 1), b"share-transport")
    assert crypto.decrypt(key, blob, client.associated_data(1, 1, client.SHARE, 2, 1))
    # Now: identities and a registry
    identities = _identities(nodes)
    registry = {crypto.identity_public_key(k) for k in identities.values()}
    for resign in (None, b"\x99" * 32):
        server, states, requests = _advertised(spec, identities)
        shares = {}
        for n in nodes[1:]:
            with pytest.raises(ProtocolError, match="node 1 .*substituted"):
                client.share_keys(states[n], 1, substitute(requests[n]["roster"], resign), requests[n]["vectors"],
                                  spec.rules, registry)
            assert not states[n].held  # nothing was shared
        shares[1] = client.share_keys(states[1], 1, requests[1]["roster"], requests[1]["vectors"], spec.rules,
                                      registry)
        with pytest.raises(SecAggAbort, match="fewer than the threshold"):
            server.receive_shares(shares)


def _through_masked_input(spec: RoundSpec, identities: Mapping[int, bytes] | None,
                          values: Mapping[int, Mapping[str, np.ndarray]], purpose: str = ""
                          ) -> tuple[SecAggServer, dict[int, client.ClientState]]:
    server, states, requests = _advertised(spec, identities, purpose)
    registry = {crypto.identity_public_key(k) for k in identities.values()} if identities else None
    shares = {n: client.share_keys(states[n], 1, r["roster"], r["vectors"], spec.rules, registry)
              for n, r in requests.items()}
    masked = {n: client.masked_input(states[n], 1, r["ciphertexts"], r["u2"], _encode(values)[n], r["cohorts"], 64)
              for n, r in server.receive_shares(shares).items()}
    server.receive_masked(masked)
    return server, states


def _victim_vector(server: SecAggServer, states: Mapping[int, client.ClientState], victim: int,
                   corrupt: tuple[int, ...]) -> np.ndarray:
    """The server's attack on one survivor: its seed and its s key from the shares it was sent plus the shares
    its corrupted clients hold, then every mask removed from its masked input."""
    for c in corrupt:  # the server reads its corrupted clients' states
        server.revealed.setdefault(c, {}).update({k: v for k, v in states[c].held.items() if k[0] == victim})
    t = threshold_for(len(server.graphs["v"][victim]) + 1, server.spec.threshold_fraction)
    b, s_sk = _secret(server, victim, "v", t), _secret(server, victim, client.S_KEY, t)
    y = server.masked[victim]["v"] - client.masks(client.self_seed(b, server.salt, "v"), LENGTH, 64)
    for v in server.graphs["v"][victim]:
        pair = client.masks(crypto.derive(crypto.exchange(s_sk, server.keys[v].s_pk), server.salt,
                                          client.pair_info("v", victim, v)), LENGTH, 64)
        y = y - pair if victim < v else y + pair
    return FIXED.decode(y)


def test_split_survivor_list_is_caught_by_the_consistency_stage() -> None:
    """10 clients, t = 6; the server controls 2 of them (9, 10) and targets client 1. It tells 1 and clients
    2-4 that everyone survived (b-shares of 1), and clients 5-8 that 1 dropped (s-key shares of 1). On the
    old terms (no identities) it rebuilds both secrets of 1 and recovers 1's vector exactly. With identities
    each client signs the list it was given; the signatures of the other group do not verify over its list,
    so every honest client refuses with the reason, and the server has 2 < 6 shares: nothing to unmask."""
    nodes = tuple(range(1, 11))
    spec = RoundSpec(1, 1, nodes, {"v": (nodes, LENGTH)})
    values = _values(nodes, {"v": nodes}, seed=4)
    everyone, without_1 = list(nodes), [n for n in nodes if n != 1]
    group_a, group_b, corrupt = (1, 2, 3, 4), (5, 6, 7, 8), (9, 10)
    # Old terms
    server, states = _through_masked_input(spec, None, values)
    for n in group_a:
        server.revealed[n] = client.unmask(states[n], 1, everyone, [])
    for n in group_b:
        server.revealed[n] = client.unmask(states[n], 1, without_1, [1])
    assert np.allclose(_victim_vector(server, states, 1, corrupt), values[1]["v"], atol=1e-6)
    # With identities: the consistency stage
    identities = _identities(nodes)
    server, states = _through_masked_input(spec, identities, values)
    signatures = {n: client.consistency(states[n], 1, everyone if n in group_a else without_1, identities[n])
                  for n in (*group_a, *group_b)}
    signatures.update({c: crypto.sign(identities[c], client.survivors_message(1, 1, everyone)) for c in corrupt})
    for n in group_a:
        with pytest.raises(ProtocolError, match="different survivor lists; round aborted"):
            client.unmask(states[n], 1, everyone, [], signatures)
    for c in corrupt:  # for group B the corrupted clients sign B's list: 1's signature still does not verify...
        signatures[c] = crypto.sign(identities[c], client.survivors_message(1, 1, without_1))
    for n in group_b:  # ... since 2-4 signed the other list
        with pytest.raises(ProtocolError, match="different survivor lists; round aborted"):
            client.unmask(states[n], 1, without_1, [1], signatures)
    with pytest.raises(SecAggAbort, match="fewer than the threshold"):
        server.receive_unmask({})
    with pytest.raises(SecAggAbort, match="cannot be reconstructed"):
        _victim_vector(server, states, 1, corrupt)


def test_unmask_without_the_consistency_stage_is_refused_with_identities() -> None:
    """A server that skips the consistency stage (to avoid the check) gets no share: the client refuses."""
    nodes = tuple(range(1, 5))
    spec = RoundSpec(1, 1, nodes, {"v": (nodes, LENGTH)})
    server, states = _through_masked_input(spec, _identities(nodes), _values(nodes, {"v": nodes}))
    with pytest.raises(ProtocolError, match="completed 'masked-input', not 'consistency'"):
        client.unmask(states[1], 1, list(nodes), [])


def test_honest_round_with_identities_gives_the_exact_sum_and_tolerates_unmask_dropouts() -> None:
    """With identities the consistency stage costs nothing to an honest round: exact sums, and clients that
    fall silent during unmask (after signing) are still counted."""
    nodes = tuple(range(1, 11))
    names = {"global": nodes, "B": (1, 2, 3, 4)}
    values = _values(nodes, names, seed=5)
    spec = RoundSpec(1, 1, nodes, {k: (m, LENGTH) for k, m in names.items()}, exempt=("global",))
    result = run_in_memory(spec, _encode(values), drop={client.UNMASK: {2, 7}}, identities=_identities(nodes))
    for name, members in names.items():
        assert np.allclose(FIXED.decode(result.totals[name]), np.sum([values[m][name] for m in members], axis=0),
                           atol=1e-6)
    with pytest.raises(SecAggAbort, match="did not sign"):
        run_in_memory(spec, _encode(values), drop={client.CONSISTENCY: {3}}, identities=_identities(nodes))


def test_signatures_of_a_training_round_do_not_open_its_evaluation_round() -> None:
    """A round's training and its secure evaluation (server/secure_eval.py) share a round number. Every
    signature names the round's purpose, so what a server collected in the training round is no use in the
    evaluation: survivor-list signatures made in training do not open the evaluation's unmask, and a key
    advertisement signed for training is refused in the evaluation's roster as a substitution."""
    nodes = tuple(range(1, 5))
    spec = RoundSpec(1, 1, nodes, {"v": (nodes, LENGTH)})
    identities = _identities(nodes)
    registry = {crypto.identity_public_key(k) for k in identities.values()}
    _, states, requests = _advertised(spec, identities, EVAL_PURPOSE)
    _, trained = client.advertise(2, 1, 1, ["v"], identities[2])  # node 2's training advertisement, same round
    replayed = {**requests[1]["roster"], 2: client.Advert(*(trained[k] for k in ("c-pk", "s-pk", "b-commit",
                                                                                  "id-pk", "signature")))}
    with pytest.raises(ProtocolError, match="node 2 .*substituted"):
        client.share_keys(states[1], 1, replayed, requests[1]["vectors"], spec.rules, registry)
    _, states = _through_masked_input(spec, identities, _values(nodes, {"v": nodes}), EVAL_PURPOSE)
    alive = list(nodes)
    client.consistency(states[1], 1, alive, identities[1])
    in_training = {n: crypto.sign(identities[n], client.survivors_message(1, 1, alive)) for n in nodes}
    with pytest.raises(ProtocolError, match="signature of node 1 does not verify"):
        client.unmask(states[1], 1, alive, [], in_training)
    in_evaluation = {n: crypto.sign(identities[n], client.survivors_message(1, 1, alive, EVAL_PURPOSE))
                     for n in nodes}
    assert client.unmask(states[1], 1, alive, [], in_evaluation)
