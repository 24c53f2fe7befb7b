"""SecAgg+ without Flower: exact sums, uniform masked vectors, drop-outs at every stage, aborts, bad messages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from common.secagg import client, crypto, shamir
from common.secagg.errors import ProtocolError, SecAggAbort
from common.secagg.fixedpoint import FixedPoint
from common.secagg.graph import neighbour_graph, threshold_for
from common.secagg.inmemory import run_in_memory
from common.secagg.server import RoundSpec, SecAggServer

N, LENGTH = 10, 257


def _round(n: int = N, degree: int = 0, server_round: int = 3) -> tuple[RoundSpec, FixedPoint, dict[int, np.ndarray]]:
    rng = np.random.default_rng(server_round)
    nodes = tuple(range(101, 101 + n))
    fixed = FixedPoint(bits=64, clip=1.0, max_weight=50.0, max_clients=n)
    values = {node: rng.uniform(-40, 40, LENGTH) for node in nodes}
    spec = RoundSpec(run_id=9, server_round=server_round, cohort=nodes, vectors={"v": (nodes, LENGTH)}, degree=degree)
    return spec, fixed, values


def _inputs(fixed: FixedPoint, values: dict[int, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    return {node: {"v": fixed.encode(v)} for node, v in values.items()}


def test_unmasked_sum_is_the_plain_sum() -> None:
    """The decoded secure sum equals the float sum within n * step / 2 per coordinate."""
    # Prepare
    spec, fixed, values = _round()
    # Execute
    total = fixed.decode(run_in_memory(spec, _inputs(fixed, values)).totals["v"])
    # Assert
    plain = np.sum(list(values.values()), axis=0)
    assert np.max(np.abs(total - plain)) <= N * fixed.step / 2 + 1e-9


@pytest.mark.parametrize("stage", client.STAGES)
@pytest.mark.parametrize("degree", [0, 4])
def test_thirty_percent_drop_out_at_any_stage_is_recovered(stage: str, degree: int) -> None:
    """3 of 10 clients go silent at one stage: the sum of the clients whose masked input arrived is exact."""
    # Prepare
    spec, fixed, values = _round(degree=degree)
    gone = set(spec.cohort[2:5])
    # Execute
    result = run_in_memory(spec, _inputs(fixed, values), drop={stage: gone})
    # Assert: clients gone before their masked input are left out; gone during unmask are still counted
    counted = spec.cohort if stage == client.UNMASK else [n for n in spec.cohort if n not in gone]
    plain = np.sum([values[n] for n in counted], axis=0)
    assert sorted(result.server.masked) == sorted(counted)
    assert np.max(np.abs(fixed.decode(result.totals["v"]) - plain)) <= N * fixed.step + 1e-12


@pytest.mark.parametrize("stage", client.STAGES)
def test_below_threshold_aborts(stage: str) -> None:
    """5 of 10 silent leaves 5 < t = 6: the round aborts with a clear error instead of returning a sum."""
    spec, fixed, values = _round()
    with pytest.raises(SecAggAbort, match="fewer than the threshold"):
        run_in_memory(spec, _inputs(fixed, values), drop={stage: set(spec.cohort[:5])})


def test_masked_vectors_are_uniform_whatever_the_plaintext() -> None:
    """Masked zeros and masked extreme values are both uniform over the ring and indistinguishable (chi-square
    on the top byte, two-sample KS on the words)."""
    # Prepare: 2 clients so that one masked vector is all the server holds about one input
    nodes = (1, 2)
    fixed = FixedPoint(bits=64, clip=1.0, max_weight=1.0, max_clients=2)
    length = 20_000
    spec = RoundSpec(1, 1, nodes, {"v": (nodes, length)})
    low, high = np.zeros(length), np.full(length, fixed.bound)
    # Execute
    masked_low = run_in_memory(spec, {1: {"v": fixed.encode(low)}, 2: {"v": fixed.encode(low)}}).server.masked[1]["v"]
    masked_high = run_in_memory(spec, {1: {"v": fixed.encode(high)}, 2: {"v": fixed.encode(low)}}).server.masked[1]["v"]
    # Assert
    for masked in (masked_low, masked_high):
        counts = np.bincount((masked >> np.uint64(56)).astype(np.int64), minlength=256)
        assert stats.chisquare(counts).pvalue > 1e-3
    as_unit = [m.astype(np.float64) / 2.0**64 for m in (masked_low, masked_high)]
    assert stats.ks_2samp(*as_unit).pvalue > 1e-3
    assert stats.kstest(as_unit[1], "uniform").pvalue > 1e-3


def test_malformed_replies_are_rejected_and_the_round_goes_on() -> None:
    """A wrong-length key, a vector of the wrong dtype/shape/range and a reply from outside the cohort are
    counted as rejected; the round ends with the other clients' exact sum."""
    # Prepare
    spec, fixed, values = _round()
    server = SecAggServer(spec)
    states, keys = {}, {}
    for node in spec.cohort:
        states[node], keys[node] = client.advertise(node, spec.run_id, spec.server_round, ["v"])
    keys[spec.cohort[0]] = {**keys[spec.cohort[0]], "c-pk": b"short"}
    keys[999] = dict(keys[spec.cohort[1]])  # a stranger replaying someone's keys
    # Execute
    requests = server.receive_keys(keys)
    shares = {n: client.share_keys(states[n], 3, r["roster"], r["vectors"], spec.rules)
              for n, r in requests.items()}
    requests = server.receive_shares(shares)
    masked = {n: client.masked_input(states[n], 3, r["ciphertexts"], r["u2"], {"v": fixed.encode(values[n])},
                                     r["cohorts"], 64) for n, r in requests.items()}
    bad_dtype, bad_shape = spec.cohort[1], spec.cohort[2]
    masked[bad_dtype] = {"v": masked[bad_dtype]["v"].astype(np.float64)}
    masked[bad_shape] = {"v": masked[bad_shape]["v"][:-1]}
    unmask = server.receive_masked(masked)
    server.receive_unmask({n: client.unmask(states[n], 3, r["survivors"], r["dropped"]) for n, r in unmask.items()})
    total = fixed.decode(server.totals()["v"])
    # Assert
    assert server.rejected["malformed"] == 3 and server.rejected["unknown-sender"] == 1 and 999 not in server.keys
    kept = [n for n in spec.cohort if n not in (spec.cohort[0], bad_dtype, bad_shape)]
    assert np.max(np.abs(total - np.sum([values[n] for n in kept], axis=0))) <= N * fixed.step + 1e-12


def test_replayed_or_foreign_round_share_is_refused() -> None:
    """A share ciphertext from round 3 replayed into round 4 (same keys) fails AES-GCM authentication, and a
    stage-3 request for another round is refused before anything is decrypted."""
    # Prepare: round 3 delivers a ciphertext; round 4 reuses the same state
    spec, _, _ = _round(n=3)
    adverts = {n: client.advertise(n, spec.run_id, 3, ["v"]) for n in spec.cohort}
    states = {n: state for n, (state, _) in adverts.items()}
    roster = {n: client.Advert(r["c-pk"], r["s-pk"], r["b-commit"]) for n, (_, r) in adverts.items()}
    a, b, c = spec.cohort
    blob = client.share_keys(states[a], 3, roster, {"v": [a, b, c]}, spec.rules)[b]
    key = crypto.agree(states[b].c_sk, roster[a][0], client.round_salt(spec.run_id, 3), b"share-transport")
    # Execute / Assert
    assert crypto.decrypt(key, blob, client.associated_data(spec.run_id, 3, client.SHARE, a, b))
    with pytest.raises(ProtocolError, match="failed authentication"):
        crypto.decrypt(key, blob, client.associated_data(spec.run_id, 4, client.SHARE, a, b))
    with pytest.raises(ProtocolError, match="failed authentication"):
        crypto.decrypt(key, blob, client.associated_data(spec.run_id, 3, client.SHARE, c, b))
    client.share_keys(states[b], 3, roster, {"v": [a, b, c]}, spec.rules)
    with pytest.raises(ProtocolError, match="round 4"):
        client.masked_input(states[b], 4, {a: blob}, [a, b, c], {}, {}, 64)


def test_client_never_reveals_both_shares_of_one_client() -> None:
    """A server naming a client both survived and dropped, or asking twice, gets nothing more."""
    spec, fixed, values = _round(n=4)
    result = run_in_memory(spec, _inputs(fixed, values), drop={client.UNMASK: {spec.cohort[0]}})
    state = result.states[spec.cohort[0]]
    with pytest.raises(ProtocolError, match="completed 'masked-input'|completed 'done'"):
        client.unmask(result.states[spec.cohort[1]], 3, list(spec.cohort), [])
    state.stage = client.MASK
    with pytest.raises(ProtocolError, match="both survived and dropped"):
        client.unmask(state, 3, list(spec.cohort), [spec.cohort[1]])


def test_state_round_trips_through_a_record() -> None:
    """What the Flower shell stores in context.state gives the same client back."""
    spec, _, _ = _round(n=3)
    adverts = {n: client.advertise(n, spec.run_id, 3, ["v"]) for n in spec.cohort}
    roster = {n: client.Advert(r["c-pk"], r["s-pk"], r["b-commit"]) for n, (_, r) in adverts.items()}
    first = spec.cohort[0]
    states = {n: state for n, (state, _) in adverts.items()}
    client.share_keys(states[first], 3, roster, {"v": list(spec.cohort)}, spec.rules)
    assert client.ClientState.from_record(states[first].to_record()) == states[first]


def test_shamir_any_t_shares_rebuild_and_fewer_abort() -> None:
    secret = bytes(range(32))
    xs = [1, 2, 3, 4, 5]
    (shares,) = shamir.split([secret], 3, xs)
    by_x = dict(zip(xs, shares, strict=True))
    assert shamir.combine({x: by_x[x] for x in (1, 4, 5)}, 3) == secret
    assert shamir.combine({x: by_x[x] for x in (2, 3, 5)}, 3) == secret
    with pytest.raises(SecAggAbort):
        shamir.combine({x: by_x[x] for x in (2, 3)}, 3)


def test_k_regular_graph_is_symmetric_with_the_asked_degree() -> None:
    graph = neighbour_graph(range(50), 8, b"seed")
    assert all(len(v) == 8 for v in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert threshold_for(9, 0.6) == 6
    with pytest.raises(ValueError, match="threshold-fraction"):
        threshold_for(9, 0.5)


def test_fixed_point_bounds_and_signed_decoding() -> None:
    fixed = FixedPoint(bits=40, clip=0.5, max_weight=10.0, max_clients=4)
    values = np.array([-10.0, -0.001, 0.0, 3.3, 10.0])
    encoded = fixed.encode(values)
    assert np.max(np.abs(fixed.decode(encoded * np.uint64(3)) - 3 * values)) <= 3 * fixed.step
    with pytest.raises(ValueError, match="exceeds"):
        fixed.encode(np.array([10.5]))
    with pytest.raises(ValueError, match="raise secagg-bits"):
        FixedPoint(bits=32, clip=1.0, max_weight=1e6, max_clients=100)
