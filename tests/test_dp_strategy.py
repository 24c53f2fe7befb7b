"""DP in the plain-mode round (server/strategy.py + server/aggregate.py) and the client's distributed step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.privacy.dp import DPConfig, privatize_update, update_norm
from common.protocol import parse_dp_shares
from server.clients import ClientInfo
from server.optimizer import OptimizerConfig, ServerOptimizer
from server.strategy import AdapterBankStrategy, RoundStats
from server.validate import ValidationConfig
from tests.fed_fakes import set_task_identity
from tests.fed_replies import client, train_reply

VALIDATION = ValidationConfig(500.0, ("region",), ("region",))


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _strategy(dp: DPConfig, size: int = 6, seed: int = 0) -> AdapterBankStrategy:
    banks = {name: {f"{name}::w": np.zeros(size, np.float32)} for name in ("global", "region=EU", "region=NA")}
    return AdapterBankStrategy(banks, ServerOptimizer(OptimizerConfig()), VALIDATION, 1, dp=dp,
                               noise_rng=np.random.default_rng(seed))


def _clients() -> list[ClientInfo]:
    return [client(11, 0, ("region=EU",)), client(12, 1, ("region=EU",)), client(13, 2, ("region=NA",)),
            client(14, 3, ("region=EU",))]


def _round(strategy: AdapterBankStrategy, clients: list[ClientInfo], deltas: dict[int, dict[str, np.ndarray]],
           examples: dict[int, int]) -> RoundStats:
    messages, sent = strategy.train_messages(clients, {"lr": 0.1}, 1)
    replies = [train_reply(m, deltas[m.metadata.dst_node_id],
                           {k.split("::")[0]: examples[m.metadata.dst_node_id] for k in sent[m.metadata.dst_node_id]})
               for m in messages if m.metadata.dst_node_id in deltas]
    stats = RoundStats(sampled=len(clients))
    strategy.aggregate_train(replies, sent, {c.node_id: c for c in clients}, stats)
    return stats


def test_central_dp_clips_on_the_server_and_weighs_every_client_one() -> None:
    """A client that did not clip (norm 40) is clipped to C by the server, and a client with 90 examples
    weighs as much as one with 1: the global bank moves by the plain mean of the clipped deltas."""
    # Prepare: noise so small that the mean is exact to float32
    strategy = _strategy(DPConfig(noise_multiplier=1e-9, clip=1.0))
    clients = _clients()
    rng = np.random.default_rng(1)
    deltas = {c.node_id: {"global::w": rng.normal(size=6).astype(np.float32),
                          f"{c.segments[0]}::w": rng.normal(size=6).astype(np.float32)} for c in clients}
    deltas[11] = {k: v * 40 / update_norm(deltas[11]) for k, v in deltas[11].items()}
    examples = {11: 90, 12: 1, 13: 5, 14: 5}
    # Execute
    stats = _round(strategy, clients, deltas, examples)
    # Assert
    clipped = {n: {k: v * min(1.0, 1.0 / update_norm(d)) for k, v in d.items()} for n, d in deltas.items()}
    expect = np.mean([clipped[n]["global::w"] for n in deltas], axis=0)
    np.testing.assert_allclose(strategy.banks["global"]["global::w"], expect, rtol=1e-5, atol=1e-7)
    expect_eu = np.mean([clipped[n]["region=EU::w"] for n in (11, 12, 14)], axis=0)
    np.testing.assert_allclose(strategy.banks["region=EU"]["region=EU::w"], expect_eu, rtol=1e-5, atol=1e-7)
    assert stats.delta_norms[0] == pytest.approx(40.0, rel=1e-5)


def test_central_dp_noise_on_the_mean_is_sigma_c_over_contributors() -> None:
    """With zero deltas the global bank moves by pure noise: std sigma*C/n for n contributors."""
    # Prepare
    strategy = _strategy(DPConfig(noise_multiplier=2.0, clip=0.5), size=100_000, seed=3)
    clients = _clients()
    deltas = {c.node_id: {"global::w": np.zeros(100_000, np.float32),
                          f"{c.segments[0]}::w": np.zeros(100_000, np.float32)} for c in clients}
    # Execute
    _round(strategy, clients, deltas, {11: 3, 12: 3, 13: 3, 14: 3})
    # Assert
    assert strategy.banks["global"]["global::w"].std() == pytest.approx(2.0 * 0.5 / 4, rel=0.01)
    assert strategy.banks["region=EU"]["region=EU::w"].std() == pytest.approx(2.0 * 0.5 / 3, rel=0.01)


def test_distributed_dp_sends_t_and_holds_back_a_bank_short_of_noise() -> None:
    """Each train message names t per bank (sampled holders less the tolerated drop-outs); with one client
    gone the global bank (t=3) is applied, the EU bank (3 holders, t=3) is held back and stays as it was."""
    # Prepare
    dp = DPConfig(noise_multiplier=1.0, clip=1.0, mode="distributed", dropout_tolerance=0.25)
    strategy = _strategy(dp)
    clients = _clients()
    messages, _ = strategy.train_messages(clients, {"lr": 0.1}, 1)
    configs = {m.metadata.dst_node_id: dict(m.content.config_records["config"]) for m in messages}
    rng = np.random.default_rng(4)
    deltas = {}
    for c in clients[1:]:  # node 11 drops out
        banks = ("global", c.segments[0])
        update = {f"{b}::w": rng.normal(size=6).astype(np.float32) for b in banks}
        deltas[c.node_id] = privatize_update(update, dp, parse_dp_shares(configs[c.node_id], banks, 4), rng)
    # Execute
    stats = _round(strategy, clients, deltas, {12: 2, 13: 2, 14: 2})
    # Assert
    assert configs[11]["dp-shares/global"] == 3 and configs[11]["dp-shares/region=EU"] == math.ceil(3 * 0.75)
    assert configs[13]["dp-shares/region=NA"] == 1 and "dp-shares/region=EU" not in configs[13]
    assert stats.noise_short == ["region=EU"] and stats.rejected == 0
    expect = np.mean([deltas[n]["global::w"] for n in (12, 13, 14)], axis=0)
    np.testing.assert_allclose(strategy.banks["global"]["global::w"], expect, rtol=1e-5)
    assert not strategy.banks["region=EU"]["region=EU::w"].any()
    assert stats.as_dict()["dp_banks_short_of_noise"] == ["region=EU"]


def test_distributed_dp_counts_a_client_in_every_bank_it_was_sent() -> None:
    """A client with no pair in its segment still added its noise share there, so it counts towards t: the
    bank is released with both contributions (weight 1 each), not held back for a missing share."""
    dp = DPConfig(noise_multiplier=1.0, clip=1.0, mode="distributed")
    strategy = _strategy(dp)
    clients = _clients()[:2]  # both EU: t = 2 for global and for region=EU
    messages, sent = strategy.train_messages(clients, {"lr": 0.1}, 1)
    rng = np.random.default_rng(5)
    deltas = {n: privatize_update({k: rng.normal(size=6).astype(np.float32) for k in sent[n]}, dp,
                                  {"global": 2, "region=EU": 2}, rng) for n in (11, 12)}
    replies = [train_reply(m, deltas[m.metadata.dst_node_id],
                           {"global": 3, "region=EU": 0 if m.metadata.dst_node_id == 12 else 3}) for m in messages]
    stats = RoundStats(sampled=2)
    strategy.aggregate_train(replies, sent, {c.node_id: c for c in clients}, stats)
    assert stats.noise_short == [] and stats.contributors["region=EU"] == 2
    expect = (deltas[11]["region=EU::w"] + deltas[12]["region=EU::w"]) / 2
    np.testing.assert_allclose(strategy.banks["region=EU"]["region=EU::w"], expect, rtol=1e-5)


def test_distributed_dp_rejects_a_reply_beyond_clip_plus_noise() -> None:
    """The server cannot clip a noised reply, so one far above the clip plus its noise's norm is rejected."""
    dp = DPConfig(noise_multiplier=1.0, clip=1.0, mode="distributed")
    strategy = _strategy(dp)
    clients = _clients()
    deltas = {c.node_id: {"global::w": np.full(6, 30.0, np.float32),
                          f"{c.segments[0]}::w": np.zeros(6, np.float32)} for c in clients}
    stats = _round(strategy, clients, deltas, {11: 2, 12: 2, 13: 2, 14: 2})
    assert stats.rejected_reasons == {"norm": 4}
    assert not strategy.banks["global"]["global::w"].any()


def test_client_refuses_missing_or_oversized_noise_shares() -> None:
    """A train config without t for a bank, or with t above the federation's size, is refused by name."""
    with pytest.raises(ValueError, match="dp-shares/region=EU"):
        parse_dp_shares({"dp-shares/global": 2}, ["global", "region=EU"], 4)
    with pytest.raises(ValueError, match=r"dp-shares/global=1000 is not an integer in \[1, 4\]"):
        parse_dp_shares({"dp-shares/global": 1000}, ["global"], 4)


def test_plain_round_is_unchanged_without_dp() -> None:
    """dp-noise-multiplier 0 keeps example-count weighting (the DP path is not taken)."""
    strategy = _strategy(DPConfig(noise_multiplier=0.0, clip=0.0))
    clients = _clients()[:2]
    deltas = {11: {"global::w": np.ones(6, np.float32), "region=EU::w": np.ones(6, np.float32)},
              12: {"global::w": np.zeros(6, np.float32), "region=EU::w": np.zeros(6, np.float32)}}
    _round(strategy, clients, deltas, {11: 3, 12: 1})
    np.testing.assert_allclose(strategy.banks["global"]["global::w"], 0.75)

