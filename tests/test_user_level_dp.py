"""User-level DP across silos (issue 18; common/privacy/user_level.py, user_updates.py): the per-user clip
measured by adding/removing one user, the accountant against dp-accounting, resume, OS-entropy sampling, the
secure sum that hides one silo's un-noised sum, and the settings refused by name."""

from __future__ import annotations

import json
import secrets
from dataclasses import replace
from pathlib import Path

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.rdp import RdpAccountant
from scipy import stats

from client.app import app as client_app
from client.secure import encoded_input
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.client_data import ClientData, client_data
from common.federation.task import local_train
from common.names import GLOBAL, bank_of
from common.privacy import user_level
from common.privacy.accountant import ORDERS, PrivacyAccountant, epsilon_user_level
from common.privacy.budget import PrivacyBudget
from common.privacy.user_level import FROZEN_KEYS, clipped_sum, default_delta, poisson_sample, user_norm
from common.privacy.user_updates import local_train_users
from common.protocol import FedConfig, RoundHParams
from common.rec.seq_train import train_items_of
from common.secagg.fixedpoint import FixedPoint
from common.secagg.inmemory import run_in_memory
from common.secagg.layout import bank_layouts
from common.secagg.server import RoundSpec
from server.app import FederatedRun
from server.checkpoint import latest_complete_round, load_checkpoint
from simulations.runner.inprocess_grid import InProcessGrid
from tests.fed_fakes import set_task_identity

CLIENTS = 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user-dp")
    write_marketplace(generate_marketplace(120, 300, seed=3), root / "data")
    return root


def _cfg(root: Path, **kw: object) -> FedConfig:
    base: dict[str, object] = dict(data_dir=str(root / "data"), backbone="tiny", arch="seq", seq_dim=16,
                                   seq_max_len=20, secure_aggregation="segment", client_state_dir=str(root / "state"),
                                   dp_noise_multiplier=1.0, dp_clip=0.5, dp_unit="user", dp_user_rate=1.0)
    base.update(kw)
    return FedConfig(**base)  # type: ignore[arg-type]


def _silo(cfg: FedConfig) -> tuple[ClientData, dict[str, np.ndarray]]:
    from common.federation.task import initial_state

    data = client_data(cfg, 0, CLIENTS)
    return data, initial_state(cfg, data.adapter_names)


def _hp(cfg: FedConfig) -> RoundHParams:
    return RoundHParams.from_run(cfg, 1)


def _without_one_user(data: ClientData) -> ClientData:
    """The same silo less its first user with an order to learn from (two or more training positives)."""
    first = next(i for i, r in enumerate(data.records) if len(train_items_of(r)) >= 2)
    return replace(data, records=[r for i, r in enumerate(data.records) if i != first])


# -- the per-user clip ------------------------------------------------------------------------------------------

def test_one_users_influence_on_the_silo_sum_is_at_most_clip(data_dir: Path) -> None:
    """Real per-user updates of the seq model (every user sampled, SGD at a huge lr so that every update is
    far beyond C): removing one user from a silo moves its sum, across every bank together, by at most C, and by
    C itself (the user was clipped, not dropped). Without the clip the same user moves it by orders more."""
    # Prepare
    cfg = _cfg(data_dir, dp_user_lr=1e3)
    data, received = _silo(cfg)
    without = _without_one_user(data)
    # Execute
    full = local_train_users(cfg, data, received, _hp(cfg), np.random.default_rng(0))
    less = local_train_users(cfg, without, received, _hp(cfg), np.random.default_rng(0))
    unclipped = replace(cfg, dp_clip=1e6, dp_user_max=100)
    raw_full = local_train_users(unclipped, data, received, _hp(unclipped), np.random.default_rng(0))
    raw_less = local_train_users(unclipped, without, received, _hp(unclipped), np.random.default_rng(0))
    # Assert
    moved = user_norm({k: full.delta[k] - less.delta[k] for k in full.delta})
    raw_moved = user_norm({k: raw_full.delta[k] - raw_less.delta[k] for k in raw_full.delta})
    assert moved == pytest.approx(cfg.dp_clip, rel=1e-6)
    assert raw_moved > 100 * cfg.dp_clip
    diff = {k: full.delta[k] - less.delta[k] for k in full.delta}
    assert any(np.any(v) for k, v in diff.items() if bank_of(k) == GLOBAL)
    assert all(not np.any(full.delta[k]) for k in FROZEN_KEYS if k in full.delta)  # item rows never trained


def test_influence_on_the_released_noised_sum_is_bounded_through_secure_encoding(data_dir: Path) -> None:
    """Through the client's secure path (silo_input, the fixed-point encoding, the server's decoding) and the
    same central noise draw: the released noised global sums of two silos that differ in one user with a huge
    update differ by C in L2 (up to the encoding's step), and the public weight by that one user."""
    # Prepare
    cfg = _cfg(data_dir, dp_user_lr=1e3)
    data, received = _silo(cfg)
    layouts = bank_layouts(received)
    fixed = FixedPoint(cfg.secagg_bits, cfg.secagg_encoding_range, cfg.secagg_max_weight, 2)
    # Execute
    released, weights = [], []
    for silo in (data, _without_one_user(data)):
        result = local_train_users(cfg, silo, received, _hp(cfg), np.random.default_rng(0))
        encoded = encoded_input(cfg, received, result.delta, result.bank_examples, {}, 2, 1)
        vectors = {bank: fixed.decode(encoded[bank]) if bank in encoded else np.zeros(lay.length)
                   for bank, lay in layouts.items()}
        noise = np.random.default_rng(7).normal(0, cfg.dp.noise_std, sum(lay.size for lay in layouts.values()))
        released.append(np.concatenate([vectors[b][:layouts[b].size] for b in sorted(layouts)]) + noise)
        weights.append(vectors[GLOBAL][layouts[GLOBAL].size])
    # Assert
    steps = sum(lay.size for lay in layouts.values()) * fixed.step
    assert np.linalg.norm(released[0] - released[1]) == pytest.approx(cfg.dp_clip, abs=steps)
    assert weights[0] == weights[1] + 1


def test_clipped_sum_bounds_each_user_and_keeps_directions() -> None:
    """Each update is scaled to norm <= C as a whole (all banks together), small ones are kept as they are."""
    shapes = {"global::a": (3,), "region=EU::b": (2,)}
    big = {"global::a": np.array([30.0, 0, 0]), "region=EU::b": np.array([0, 40.0])}
    small = {"global::a": np.array([0.1, 0, 0])}
    total, norms = clipped_sum([big, small], shapes, clip=1.0)
    assert norms == pytest.approx([50.0, 0.1])
    np.testing.assert_allclose(total["global::a"], [0.6 + 0.1, 0, 0])
    np.testing.assert_allclose(total["region=EU::b"], [0, 0.8])
    with pytest.raises(ValueError, match="outside the silo's banks"):
        clipped_sum([{"season=x::c": np.ones(1)}], shapes, clip=1.0)


# -- the accountant ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rate", "rounds", "sigma", "reference"), [
    (0.1, 100, 1.0, 7.0), (0.1, 200, 1.5, 5.0), (0.05, 100, 1.0, 3.5)])
def test_user_level_epsilon_matches_dp_accounting_and_the_issues_figures(rate: float, rounds: int, sigma: float,
                                                                         reference: float) -> None:
    """N = 6,040 users, delta = 1/N^1.1: the accountant equals dp-accounting composing the Poisson user-level
    event directly over the same orders, is within 3% of (and never below) its default orders, and matches the
    issue's planning figures to within 0.1."""
    delta = default_delta(6040)
    acc = PrivacyAccountant(sigma, delta, user_rate=rate)
    for _ in range(rounds):
        acc.step(10, 10)  # 10 silos, all in: the user-level event does not depend on them
    same = RdpAccountant(list(ORDERS))
    same.compose(dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(sigma)), rounds)
    default = RdpAccountant()
    default.compose(dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(sigma)), rounds)
    assert acc.epsilon() == pytest.approx(same.get_epsilon(delta), rel=1e-12)
    assert acc.epsilon() == pytest.approx(default.get_epsilon(delta), rel=0.03)
    assert acc.epsilon() >= default.get_epsilon(delta) - 1e-9
    assert acc.epsilon() == pytest.approx(reference, abs=0.1)
    assert acc.epsilon_after(10, 10) == pytest.approx(epsilon_user_level(sigma, delta, rate, rounds + 1))


def test_budget_restores_user_level_epsilon_from_its_state() -> None:
    """The checkpointed state (one entry per composed round) gives the same epsilon back, target check included."""
    dp = _cfg(Path("."), dp_noise_multiplier=1.0, target_epsilon=3.0).dp
    budget = PrivacyBudget(dp)
    for _ in range(3):
        line = budget.record(3, 3)
    restored = PrivacyBudget(dp, budget.state())
    assert restored.accountant.epsilon() == pytest.approx(line["epsilon"])
    assert line["dp_unit"] == "user" and line["dp_user_rate"] == 1.0
    assert restored.stop_reason(3, 3) is not None  # rate 1, sigma 1: the fourth round would pass 3


def test_resumed_run_continues_user_level_epsilon(data_dir: Path, tmp_path: Path) -> None:
    """A real in-process run (ServerApp + ClientApp, secure aggregation) stopped after round 1 and resumed to
    round 2 reports round 2's epsilon as the accountant's for two rounds, not one."""
    set_task_identity()
    cfg = _cfg(data_dir, out_dir=str(tmp_path / "run"), num_server_rounds=2, stop_after_round=1, dp_user_rate=0.5,
               fraction_evaluate=0.0, min_segment_clients=2)
    nodes: dict[int, dict[str, int | str]] = {100 + pid: {"partition-id": pid, "num-partitions": CLIENTS}
                                              for pid in range(CLIENTS)}
    FederatedRun(cfg, InProcessGrid(client_app, nodes, cfg.to_run_config())).run()
    assert latest_complete_round(tmp_path / "run" / "checkpoints") == 1
    resumed = replace(cfg, stop_after_round=0, resume=True)
    FederatedRun(resumed, InProcessGrid(client_app, nodes, resumed.to_run_config())).run()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = [epsilon_user_level(1.0, cfg.dp_delta, 0.5, r) for r in (1, 2)]
    assert [line["epsilon"] for line in lines[1:]] == pytest.approx(expected)
    assert all(line["secagg_aborted"] == "" for line in lines[1:])
    assert len(load_checkpoint(tmp_path / "run" / "checkpoints", 2).state["dp_rounds"]) == 2


# -- sampling from OS entropy -----------------------------------------------------------------------------------

def test_sampling_draws_from_os_entropy_not_the_run_seed(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two silo rounds with the same run seed, round and every library seed set alike sample different users
    (their sums differ); pinning `secrets` (the only source) makes them equal again."""
    cfg = _cfg(data_dir, dp_user_rate=0.5, seed=11)
    data, received = _silo(cfg)

    def round_sum() -> dict[str, np.ndarray]:
        np.random.seed(0)
        torch.manual_seed(0)
        return local_train(cfg, data, received, _hp(cfg)).delta  # the hook: dp-unit=user goes to user_updates

    a, b = round_sum(), round_sum()
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    monkeypatch.setattr(secrets, "randbits", lambda bits: 12345)
    c, d = round_sum(), round_sum()
    assert all(np.array_equal(c[k], d[k]) for k in c)


def test_poisson_sample_has_rate_q() -> None:
    rng = user_level.os_entropy_rng()
    sizes = [len(poisson_sample(6040, 0.1, rng)) for _ in range(50)]
    assert abs(np.mean(sizes) - 604) < 4 * np.sqrt(604 * 0.9 / 50)
    assert len(set(sizes)) > 1  # Poisson: the sample size varies, unlike a fixed-size cohort


# -- a curious server -------------------------------------------------------------------------------------------

def test_curious_server_cannot_read_one_silos_unnoised_sum(data_dir: Path) -> None:
    """Central mode leaves a silo's sum un-noised before the secure sum. In the clear, the difference of a
    silo's encodings with and without one user is that user's clipped update (norm C): the attack a server
    without secure aggregation could run. What the server holds of silo 1 is its masked vector: uniform over the
    ring and indistinguishable between the two (KS); only the 2-silo sum is unmasked."""
    cfg = _cfg(data_dir, dp_user_lr=1e3)
    data, received = _silo(cfg)
    size = bank_layouts(received)[GLOBAL].size
    fixed = FixedPoint(cfg.secagg_bits, cfg.secagg_encoding_range, cfg.secagg_max_weight, 2)
    nodes = (1, 2)
    plain, masked = [], []
    for silo in (data, _without_one_user(data)):
        result = local_train_users(cfg, silo, received, _hp(cfg), np.random.default_rng(0))
        vec = encoded_input(cfg, received, result.delta, result.bank_examples, {}, 2, 1)[GLOBAL]
        peer = fixed.encode(np.ones(vec.size))
        run = run_in_memory(RoundSpec(1, 1, nodes, {GLOBAL: (nodes, vec.size)}), {1: {GLOBAL: vec}, 2: {GLOBAL: peer}})
        np.testing.assert_allclose(fixed.decode(run.totals[GLOBAL]), fixed.decode(vec) + 1, atol=4 * fixed.step)
        plain.append(fixed.decode(vec)[:size])
        masked.append(run.server.masked[1][GLOBAL].astype(np.float64) / 2.0**64)
    seen = np.linalg.norm(plain[0] - plain[1])  # the user's clipped global update (its other banks: C in all)
    assert 0.1 * cfg.dp_clip < seen <= cfg.dp_clip + size * fixed.step
    assert stats.ks_2samp(*masked).pvalue > 1e-3
    assert all(stats.kstest(m, "uniform").pvalue > 1e-3 for m in masked)


# -- settings ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "match"), [
    ({"dp_unit": "users"}, "dp-unit 'users' is not one of"),
    ({"dp_user_rate": 0.0}, "dp-user-rate must be in"),
    ({"dp_user_rate": 1.5}, "dp-user-rate must be in"),
    ({"secure_aggregation": "off"}, "needs secure-aggregation"),
    ({"arch": "text"}, "arch=seq only"),
    ({"dp_user_steps": 0}, "dp-user-steps"),
    ({"dp_user_lr": 0.0}, "dp-user-lr"),
    ({"dp_noise_multiplier": 0.0, "dp_clip": 0.0}, "needs dp-noise-multiplier"),
])
def test_bad_user_level_settings_are_refused_by_name(change: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cfg(Path("."), **change)


def test_rate_without_user_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="only with dp-unit=user"):
        FedConfig(dp_user_rate=0.1)


def test_a_silo_above_dp_user_max_is_refused_by_name(data_dir: Path) -> None:
    cfg = _cfg(data_dir, dp_user_max=2)
    data, received = _silo(cfg)
    result = local_train_users(cfg, data, received, _hp(cfg), np.random.default_rng(0))
    with pytest.raises(ValueError, match="more than dp-user-max=2"):
        encoded_input(cfg, received, result.delta, result.bank_examples, {}, 2, 1)


# -- command line ------------------------------------------------------------------------------------------------

def test_user_level_flags_map_to_run_config_and_delta_defaults_to_n_to_the_minus_1_1(tmp_path: Path) -> None:
    """--dp-unit user --dp-user-rate q become the run-config keys; the preflight sets delta = 1/N^1.1 for the data's
    N users unless --dp-delta is given."""
    from cli.main import build_parser
    from cli.simulate import options_from_args
    from simulations.runner.run import preflight

    common = ["simulate", "--preset", "smoke", "--out", str(tmp_path / "run"), "--dp-noise-multiplier", "1",
              "--dp-clip", "0.5", "--dp-unit", "user", "--dp-user-rate", "0.2", "--secure-aggregation", "segment",
              "--set", "arch=seq"]
    opts = options_from_args(build_parser("simulate").parse_args(common))
    assert opts.config["dp-unit"] == "user" and opts.config["dp-user-rate"] == 0.2
    plan = preflight(opts)
    users = len(plan.generated.users) if plan.generated is not None else 0
    assert plan.cfg.dp.user_level and plan.cfg.dp_delta == pytest.approx(users ** -1.1)
    given = options_from_args(build_parser("simulate").parse_args([*common, "--dp-delta", "1e-6"]))
    assert preflight(given).cfg.dp_delta == 1e-6


def test_user_level_without_secure_aggregation_is_one_line_exit_2(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    rc = main(["simulate", "--preset", "smoke", "--out", str(tmp_path / "run"), "--dp-noise-multiplier", "1",
               "--dp-clip", "0.5", "--dp-unit", "user", "--dp-user-rate", "0.2", "--set", "arch=seq"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs secure-aggregation" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_distributed_share_is_added_after_the_clip_on_trained_keys_only() -> None:
    """Distributed mode: the silo's share N(0, (sigma C)^2 / t) lands on every trained coordinate, unclipped
    (its std is far above C here), and never on the frozen item rows; everything is divided by the weight."""
    from common.privacy.dp import DPConfig

    dp = DPConfig(2.0, 0.5, mode="distributed", user_rate=0.1)
    frozen = next(iter(FROZEN_KEYS))
    user_sum = {"global::item_bias": np.zeros(40_000), frozen: np.zeros(10)}
    out = user_level.silo_input(user_sum, {GLOBAL: 4.0}, dp, {GLOBAL: 4}, np.random.default_rng(1))
    assert np.std(out["global::item_bias"] * 4.0) == pytest.approx(dp.noise_std / 2, rel=0.02)
    assert not np.any(out[frozen])
    central = user_level.silo_input(user_sum, {GLOBAL: 4.0}, replace(dp, mode="central"), {}, np.random.default_rng(1))
    assert not np.any(central["global::item_bias"])  # central: the server adds the noise
