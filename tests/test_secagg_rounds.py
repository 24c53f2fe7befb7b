"""A secure round through Flower messages: server/secure.py against client/secure.py over an in-process Grid
(every message serialized), with synthetic deltas instead of training so that each case runs in a second."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from client import secure as client_secure
from common.names import GLOBAL, bank_of
from common.privacy.dp import CENTRAL, DISTRIBUTED, DPConfig
from common.protocol import CONFIG, FedConfig, RoundHParams
from common.secagg.client import ADVERTISE, CONSISTENCY, MASK, SHARE, STAGES, UNMASK
from common.secagg.identity import enrol, load_identity, write_registry
from common.secagg.layout import SEGMENT, SEGMENT_HIDDEN
from server.aggregate import aggregate_banks, apply_delta, dp_aggregate_banks
from server.clients import ClientInfo
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.secure import SecureRound, SecureSettings
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig
from simulations.runner.inprocess_grid import InProcessGrid, Intercept
from tests.fed_fakes import set_task_identity

EU, NA = "region=EU", "region=NA"
SEGMENTS = {1: EU, 2: EU, 3: EU, 4: NA, 5: NA, 6: NA, 7: EU, 8: NA, 9: EU, 10: NA}
BANKS = {GLOBAL: {"global::w": np.zeros((4, 3), np.float32)}, EU: {f"{EU}::w": np.zeros(5, np.float32)},
         NA: {f"{NA}::w": np.zeros(5, np.float32)}}


def _delta(node: int, keys: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    rng = np.random.default_rng(node)
    delta = {k: rng.uniform(-0.5, 0.5, BANKS[bank_of(k)][k].shape).astype(np.float32) for k in sorted(keys)}
    counts = {b: int(rng.integers(1, 50)) for b in sorted({bank_of(k) for k in keys})}
    return delta, counts


def _app(cfg: FedConfig, identities: dict[int, bytes] | None = None) -> ClientApp:
    app = ClientApp()
    keys = identities or {}

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        node = msg.metadata.dst_node_id
        return client_secure.train_and_advertise(msg, context, cfg, {GLOBAL, SEGMENTS[node]},
                                                 lambda sent, hp: _delta(node, list(sent)), keys.get(node))

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return client_secure.answer_stage(msg, context, cfg, keys.get(msg.metadata.dst_node_id))

    return app


def _round(mode: str, nodes: list[int], intercept: Intercept | None = None, min_segment_clients: int = 2,
           registry: Path | None = None, **dp: object
           ) -> tuple[AdapterBankStrategy, dict[str, object], RoundStats, InProcessGrid]:
    set_task_identity()
    cfg = FedConfig(secure_aggregation=mode, min_segment_clients=min_segment_clients,  # type: ignore[arg-type]
                    secagg_identities=str(registry or ""), **dp)
    identities = {n: load_identity(registry.parent / "state", n) for n in nodes} if registry else None
    grid = InProcessGrid(_app(cfg, identities), {n: {} for n in nodes}, cfg.to_run_config(), intercept=intercept)
    strategy = AdapterBankStrategy(copy.deepcopy(BANKS), ServerOptimizer(OptimizerConfig("fedavg", 1.0)),
                                   ValidationConfig(), min_segment_clients)  # the secure path brings its own DP
    known = (EU, NA) if mode == SEGMENT else ()  # hidden: the server knows no client's segment
    cohort = [ClientInfo(n, n, tuple(s for s in known if s == SEGMENTS[n]), {GLOBAL: 1}) for n in nodes]
    stats = RoundStats()
    rnd = SecureRound(grid, SecureSettings.from_config(cfg), 60.0, np.random.default_rng(0))
    info = rnd.run(strategy, cohort, RoundHParams.from_run(cfg, 1).to_config(), 1, 1, stats)
    return strategy, info, stats, grid


def _plain(nodes: list[int], min_clients: int = 2, dp: DPConfig | None = None) -> dict[str, dict[str, np.ndarray]]:
    """The plain path on the same deltas: weighted means per bank (DP: clipped, uniform, noised), applied
    with FedAvg (server lr 1)."""
    deltas, weights = [], []
    for n in nodes:
        delta, counts = _delta(n, [*BANKS[GLOBAL], *BANKS[SEGMENTS[n]]])
        deltas.append(delta)
        weights.append(counts)
    if dp is None:
        agg = aggregate_banks(deltas, weights, min_clients)
    else:
        agg = dp_aggregate_banks(deltas, weights, min_clients, replace(dp, mode=CENTRAL), np.random.default_rng(0))
    return {b: apply_delta(BANKS[b], agg.mean_deltas[b]) if b in agg.mean_deltas else BANKS[b] for b in BANKS}


def _assert_banks(strategy: AdapterBankStrategy, expected: dict[str, dict[str, np.ndarray]]) -> None:
    for bank, arrays in expected.items():
        for key, value in arrays.items():
            np.testing.assert_allclose(strategy.banks[bank][key], value, atol=1e-6)


@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_secure_round_matches_the_plain_weighted_means(mode: str) -> None:
    """Both modes update every bank exactly as the plain round would (within the quantization step)."""
    nodes = list(range(1, 7))
    strategy, info, stats, grid = _round(mode, nodes)
    assert info["secagg_aborted"] == "" and stats.replied == 6 and stats.rejected == 0
    assert stats.contributors == {GLOBAL: 6, EU: 3, NA: 3}
    _assert_banks(strategy, _plain(nodes))
    assert sorted(strategy.served) == [EU, NA]


def test_hidden_mode_sends_every_bank_and_no_reply_names_a_segment() -> None:
    """segment-hidden: each train message carries all banks, and nothing a client sends names a segment."""
    seen: list[Message] = []

    def keep(msg: Message, reply: Message) -> list[Message]:
        seen.append(reply)
        return [reply]

    _, _, _, grid = _round(SEGMENT_HIDDEN, list(range(1, 7)), keep)
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert all({bank_of(k) for k in m.content.array_records["arrays"]} == set(BANKS) for m in trains)
    for reply in seen:
        words = _strings(reply.content)
        assert words and not any("region" in w or EU in w or NA in w for w in words)


def _strings(content: RecordDict) -> list[str]:
    """Every record name, key and text value of a message (bytes are ciphertexts and keys)."""
    out = list(content.keys())
    for record in content.values():
        out += list(record.keys())
        for value in record.values():
            if isinstance(value, str):
                out.append(value)
            elif isinstance(value, list):
                out += [v for v in value if isinstance(v, str)]
    return out


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_thirty_percent_drop_out_at_any_stage(stage: str, mode: str) -> None:
    """3 of 10 nodes fall silent at one stage: the banks are the plain means over the nodes whose masked
    input arrived (all 10 when they vanish during unmask)."""
    nodes = list(range(1, 11))
    gone = {2, 5, 9}
    strategy, info, stats, _ = _round(mode, nodes, _drop(stage, gone))
    counted = nodes if stage == UNMASK else [n for n in nodes if n not in gone]
    assert info["secagg_aborted"] == ""
    assert info["secagg_dropped_by_stage"][stage] == 3
    _assert_banks(strategy, _plain(counted))


def _drop(stage: str, gone: set[int]) -> Intercept:
    def intercept(msg: Message, reply: Message) -> list[Message]:
        return [] if msg.metadata.dst_node_id in gone and msg.metadata.group_id.endswith(stage) else [reply]

    return intercept


def test_below_threshold_aborts_and_leaves_the_banks_untouched() -> None:
    """6 of 10 silent after sharing keys: 4 < t = 6, the round aborts and not one bank moves."""
    strategy, info, stats, _ = _round(SEGMENT, list(range(1, 11)), _drop(MASK, {1, 2, 3, 4, 5, 6}))
    assert "fewer than the threshold" in str(info["secagg_aborted"])
    _assert_banks(strategy, BANKS)
    assert strategy.served == set() and stats.contributors == {}


def _forge(stage: str, make: Callable[[Message, Message], Message]) -> Intercept:
    def intercept(msg: Message, reply: Message) -> list[Message]:
        if msg.metadata.dst_node_id == 3 and msg.metadata.group_id.endswith(stage):
            return [make(msg, reply)]
        return [reply]

    return intercept


def _with_config(msg: Message, reply: Message, **changes: object) -> Message:
    config = dict(reply.content.config_records[CONFIG])
    config.update(changes)
    content = RecordDict({**reply.content, CONFIG: ConfigRecord(config)})  # type: ignore[dict-item]
    return Message(content, reply_to=msg)


@pytest.mark.parametrize("case", ["replayed-round", "wrong-stage", "wrong-type", "foreign-group"])
def test_bad_messages_are_rejected_and_the_round_goes_on(case: str) -> None:
    """A reply claiming the previous round, another stage, with a field of the wrong type, or carrying another
    round's group id is rejected; its sender counts as dropped and the others' means are exact."""
    makers: dict[str, tuple[str, Callable[[Message, Message], Message]]] = {
        "replayed-round": (ADVERTISE, lambda m, r: _with_config(m, r, **{"secagg-round": 0})),
        "wrong-stage": (SHARE, lambda m, r: _with_config(m, r, **{"secagg-stage": UNMASK})),
        "wrong-type": (UNMASK, lambda m, r: _with_config(m, r, owners="1,2")),
        "foreign-group": (ADVERTISE, _regroup),
    }
    stage, make = makers[case]
    nodes = list(range(1, 7))
    strategy, info, stats, _ = _round(SEGMENT, nodes, _forge(stage, make))
    assert info["secagg_aborted"] == "" and stats.rejected == 1
    reason = "malformed" if case == "wrong-type" else "foreign-round"
    assert stats.rejected_reasons == {reason: 1}
    _assert_banks(strategy, _plain(nodes if stage == UNMASK else [n for n in nodes if n != 3]))


def _regroup(msg: Message, reply: Message) -> Message:
    stale = Message(RecordDict(), msg.metadata.dst_node_id, "train", group_id="secagg-r0-advertise-keys")
    out = Message(reply.content, reply_to=stale)
    out.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    return out


def test_forged_sender_is_rejected() -> None:
    """A reply that claims to come from a node outside the cohort is counted and ignored."""
    def forge(msg: Message, reply: Message) -> list[Message]:
        if msg.metadata.dst_node_id != 2 or not msg.metadata.group_id.endswith(ADVERTISE):
            return [reply]
        stranger = Message(reply.content, reply_to=msg)
        stranger.metadata.__dict__["_src_node_id"] = 99
        return [reply, stranger]

    strategy, info, stats, _ = _round(SEGMENT, list(range(1, 7)), forge)
    assert stats.rejected_reasons.get("unknown-sender") == 1 and info["secagg_aborted"] == ""
    _assert_banks(strategy, _plain(list(range(1, 7))))


@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_bank_below_min_segment_clients_is_not_applied(mode: str) -> None:
    """EU has one member among nodes 1, 4, 5, 6: its bank is neither uploaded (segment) nor applied (hidden)."""
    nodes = [1, 4, 5, 6]
    strategy, info, stats, _ = _round(mode, nodes)
    assert EU in stats.fallback and EU not in strategy.served
    _assert_banks(strategy, {EU: BANKS[EU], **{b: v for b, v in _plain(nodes).items() if b != EU}})


@pytest.mark.parametrize("dp_mode", [CENTRAL, DISTRIBUTED])
@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_dp_secure_round_equals_the_plain_dp_means(mode: str, dp_mode: str) -> None:
    """With DP each client clips its whole update to dp-clip and weighs 1; with a vanishing noise multiplier
    the secure banks equal the plain DP path's uniform means of clipped updates (central and distributed)."""
    nodes = list(range(1, 7))
    dp = {"dp_noise_multiplier": 1e-9, "dp_clip": 0.4, "dp_mode": dp_mode}
    strategy, info, stats, _ = _round(mode, nodes, **dp)
    assert info["secagg_aborted"] == "" and stats.contributors == {GLOBAL: 6, EU: 3, NA: 3}
    _assert_banks(strategy, _plain(nodes, dp=DPConfig(1e-9, 0.4)))


def test_distributed_dp_adds_each_clients_share_before_masking() -> None:
    """With a real noise multiplier the global bank moves by the clipped mean plus noise of std sigma * C / n
    per coordinate (all 6 shares summed, divided by 6 contributors), not by the noiseless mean."""
    nodes = list(range(1, 7))
    strategy, _, _, _ = _round(SEGMENT, nodes, dp_noise_multiplier=2.0, dp_clip=0.4, dp_mode=DISTRIBUTED,
                               dp_dropout_tolerance=0.0)
    noiseless = _plain(nodes, dp=DPConfig(1e-9, 0.4))[GLOBAL]["global::w"]
    noise = strategy.banks[GLOBAL]["global::w"] - noiseless
    assert 0.3 * 2.0 * 0.4 / 6 < float(np.std(noise)) < 3 * 2.0 * 0.4 / 6


@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_distributed_dp_holds_back_a_bank_short_of_its_noise_shares(mode: str) -> None:
    """t = 6 for the global bank of 6 sampled clients (no drop-out tolerated): one client silent after
    sharing keys leaves 5 noise shares, so the global bank is not applied (segment mode: not even unmasked)."""
    strategy, info, stats, _ = _round(mode, list(range(1, 7)), _drop(MASK, {2}), dp_noise_multiplier=1e-9,
                                      dp_clip=0.4, dp_mode=DISTRIBUTED)
    assert info["secagg_aborted"] == "" and GLOBAL in stats.noise_short
    _assert_banks(strategy, {GLOBAL: BANKS[GLOBAL]})


def test_a_single_sampled_client_never_runs_a_secure_round() -> None:
    """A cohort of one: its sum would be its update; the round is reported aborted and nothing moves."""
    strategy, info, _, grid = _round(SEGMENT, [1])
    assert "fewer than 2" in str(info["secagg_aborted"]) and not grid.sent
    _assert_banks(strategy, BANKS)


def _registry(tmp_path: Path, nodes: list[int]) -> Path:
    """Enrol every node (node id = partition id here) in tmp_path/state and write their registry."""
    return write_registry(tmp_path / "secagg-identities.json", {n: enrol(tmp_path / "state", n) for n in nodes})


@pytest.mark.parametrize("mode", [SEGMENT, SEGMENT_HIDDEN])
def test_identities_round_signs_checks_and_matches_the_plain_means(tmp_path: Path, mode: str) -> None:
    """With secagg-identities the round runs the consistency stage and ends with the plain means."""
    nodes = list(range(1, 7))
    strategy, info, stats, grid = _round(mode, nodes, registry=_registry(tmp_path, nodes))
    assert info["secagg_aborted"] == "" and stats.rejected == 0
    assert sum(m.metadata.group_id.endswith(CONSISTENCY) for m in grid.sent) == 6
    _assert_banks(strategy, _plain(nodes))


def test_identities_a_substituted_key_aborts_the_round(tmp_path: Path) -> None:
    """The keys node 3 advertised are replaced on their way (as a server substituting them would): every peer
    refuses to share secrets with an error naming node 3, the round aborts and no bank moves."""
    nodes = list(range(1, 7))

    def substitute(msg: Message, reply: Message) -> list[Message]:
        if msg.metadata.dst_node_id == 3 and msg.metadata.group_id.endswith(ADVERTISE):
            return [_with_config(msg, reply, **{"c-pk": bytes(32 * [7])})]
        return [reply]

    strategy, info, stats, _ = _round(SEGMENT, nodes, substitute, registry=_registry(tmp_path, nodes))
    assert "fewer than the threshold" in str(info["secagg_aborted"])
    _assert_banks(strategy, BANKS)
    assert strategy.served == set()


def test_node_without_an_identity_key_refuses_a_run_with_identities(tmp_path: Path) -> None:
    """A node that was not enrolled cannot take part (its error names the missing key file)."""
    registry = _registry(tmp_path, [1, 2])
    cfg = FedConfig(secure_aggregation=SEGMENT, secagg_identities=str(registry),
                    client_state_dir=str(tmp_path / "state"))
    assert client_secure.node_identity(cfg, 1) == load_identity(tmp_path / "state", 1)
    with pytest.raises(ValueError, match="partition-3.*not enrolled"):
        client_secure.node_identity(cfg, 3)


def test_simulation_enrols_every_partition_and_names_the_registry(tmp_path: Path) -> None:
    """`fedadapt simulate` with secure aggregation: the run config names RUN/secagg-identities.json, and
    enrolment draws one key per partition in the clients' state folder (kept across runs) and registers
    exactly their public halves; without secure aggregation nothing is enrolled."""
    from common.secagg.identity import load_registry, public_half
    from simulations.runner.run import SimOptions, enrol_clients, run_config

    opts = SimOptions(out=tmp_path / "run", clients=3, config={"secure-aggregation": SEGMENT,
                                                               "client-state-dir": str(tmp_path / "state")})
    cfg = run_config(opts, tmp_path / "data")
    assert cfg.secagg_identities == str((tmp_path / "run" / "secagg-identities.json").resolve())
    (tmp_path / "run").mkdir()
    enrol_clients(cfg, 3)
    keys = {pid: load_identity(tmp_path / "state", pid) for pid in range(3)}
    assert load_registry(cfg.secagg_identities) == {public_half(k) for k in keys.values()}
    enrol_clients(cfg, 3)  # a second run keeps each client's key
    assert {pid: load_identity(tmp_path / "state", pid) for pid in range(3)} == keys
    assert not run_config(SimOptions(out=tmp_path / "plain"), tmp_path / "data").secagg_identities


def test_a_bank_left_with_one_survivor_is_withheld_through_flower_messages() -> None:
    """Segment mode over the real handlers (issue 23, leak 1): among nodes 1, 2, 4, 5, 6 only 1 and 2 hold EU,
    and 2 falls silent after sharing keys. No unmask reply carries a share of EU's seeds (1 withholds them), EU is
    held back, and the other banks are the plain means of the survivors."""
    nodes = [1, 2, 4, 5, 6]
    unmask_replies: list[Message] = []

    def drop_2_keep_unmask(msg: Message, reply: Message) -> list[Message]:
        if msg.metadata.dst_node_id == 2 and msg.metadata.group_id.endswith(MASK):
            return []
        if msg.metadata.group_id.endswith(UNMASK):
            unmask_replies.append(reply)
        return [reply]

    strategy, info, stats, _ = _round(SEGMENT, nodes, drop_2_keep_unmask)
    assert info["secagg_aborted"] == "" and unmask_replies
    assert all(EU not in r.content.config_records[CONFIG]["names"] for r in unmask_replies)
    assert EU in stats.fallback and EU not in strategy.served
    survivors = [1, 4, 5, 6]
    _assert_banks(strategy, {b: v for b, v in _plain(survivors).items() if b != EU} | {EU: BANKS[EU]})
