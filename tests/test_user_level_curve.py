"""`fedadapt privacy curve --unit user` (simulations/privacy/user_curve/): sigma calibrated against the
accountant, the command on a tiny synthetic set (one row per epsilon, what each run recorded), held-out users in
no silo's records, the user-level membership score on exactly members vs held-out users (a memorising model
found, an untrained one at chance), and bad options refused by name before anything is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from common.data.anonymize import pseudonym
from common.data.schema import read_marketplace, write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.client_data import client_data, client_key
from common.names import METRICS_FILE
from common.privacy.accountant import epsilon_user_level
from common.privacy.user_level import default_delta
from common.protocol import FedConfig
from common.rec.seq_train import train_items_of
from simulations.bench.compare import federated_model
from simulations.privacy.attacks import scored
from simulations.privacy.setup import usable
from simulations.privacy.user_curve.calibrate import sigma_for_epsilon
from simulations.privacy.user_curve.options import UserCurveOptions
from simulations.privacy.user_curve.plan import Plan, deal_users, make_plan
from simulations.privacy.user_curve.scoring import FixedUsers, membership, membership_scores, raw_records

CLIENTS, ROUNDS = 3, 2
TINY = ["--backbone", "tiny", "--arch", "seq", "--rounds", str(ROUNDS), "--clients", str(CLIENTS),
        "--eval-users", "200", "--holdout-users", "0.3", "--segments", "region", "--set", "seq-dim=16",
        "--set", "seq-max-len=20"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user-curve") / "data"
    write_marketplace(generate_marketplace(300, 1000, seed=3), folder)
    return folder


@pytest.fixture(scope="module")
def curve(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The command, run once: a private point (target epsilon 8) and the no-DP point."""
    out = tmp_path_factory.mktemp("user-curve-out") / "curve"
    rc = main(["privacy", "curve", "--unit", "user", "--data", str(data_dir), "--out", str(out),
               "--epsilons", "8,inf", *TINY])
    assert rc == 0
    return out, json.loads((out / "curve.json").read_text())


def _plan(data_dir: Path, out: Path) -> Plan:
    return make_plan(UserCurveOptions(out=out, data=data_dir, backbone="tiny", epsilons=(8.0, math.inf),
                                      rounds=ROUNDS, clients=CLIENTS, eval_users=200, holdout=0.3, segments="region",
                                      config={"seq-dim": "16", "seq-max-len": "20"}))


# -- sigma calibration ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("epsilon", "rounds", "rate"), [(1.0, 100, 0.1), (8.0, 100, 0.1), (2.0, 30, 0.05),
                                                          (4.0, 3, 1.0)])
def test_sigma_reaches_the_target_epsilon_and_no_less_noise_would(epsilon: float, rounds: int, rate: float) -> None:
    delta = default_delta(6040)
    sigma = sigma_for_epsilon(epsilon, rounds, rate, delta)
    assert epsilon_user_level(sigma, delta, rate, rounds) <= epsilon
    assert epsilon_user_level(sigma * 0.998, delta, rate, rounds) > epsilon  # the smallest, to 0.1%
    assert epsilon_user_level(sigma, delta, rate, rounds) == pytest.approx(epsilon, rel=0.01)


def test_an_unreachable_epsilon_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="target epsilon 1e-05 is out of reach"):
        sigma_for_epsilon(1e-5, 1000, 1.0, 1e-5)


def test_users_are_dealt_seeded_into_disjoint_members_holdouts_and_public_users_with_the_cap() -> None:
    ids = [f"u{i:03d}" for i in range(200)]
    members, holdouts, public = deal_users(ids, 0.2, 0, seed=1)
    assert len(holdouts) == 40 and len(members) == 160 and not set(members) & set(holdouts) and public == []
    assert (members, holdouts, public) == deal_users(list(reversed(ids)), 0.2, 0, seed=1)  # the order given
    assert deal_users(ids, 0.2, 0, seed=2) != (members, holdouts, public)
    capped = deal_users(ids, 0.25, 100, seed=1)
    assert (len(capped[0]), len(capped[1])) == (75, 25)
    with_public = deal_users(ids, 0.2, 0, seed=1, public=0.1)
    assert with_public[1] == holdouts  # public users come out of the members, the held-out side is unchanged
    assert len(with_public[2]) == 20 and set(with_public[2]) | set(with_public[0]) == set(members)
    assert not set(with_public[2]) & set(with_public[0])


# -- the command --------------------------------------------------------------------------------------------------

def test_curve_writes_one_row_per_epsilon_with_both_protocols_and_the_membership_auc(curve: tuple[Path, dict]
                                                                                    ) -> None:
    out, result = curve
    assert {p.name for p in out.iterdir()} >= {"curve.json", "curve.md", "curve.png"}
    assert [r["epsilon_target"] for r in result["rows"]] == [None, 8.0]
    markdown = (out / "curve.md").read_text()
    assert markdown.count("\n| ") == 1 + 2  # the header, then one row per epsilon
    for row in result["rows"]:
        for key in ("ndcg@10_sampled", "hr@10_sampled", "ndcg@10_full", "hr@10_full"):
            assert 0 <= row[key] <= 1
        auc = row["membership"]
        assert auc["ci_low"] <= auc["auc"] <= auc["ci_high"]
        assert [auc["members"], auc["non_members"]] == result["membership_sides"]
    assert result["membership_untrained"]["members"] == result["membership_sides"][0]
    private = result["rows"][1]
    assert private["noise_multiplier"] == pytest.approx(sigma_for_epsilon(8.0, ROUNDS, 0.1, result["delta"]))
    assert private["dp_user_rate"] == 0.1 and private["rounds"] == ROUNDS
    assert (out / "curve.png").stat().st_size > 10_000


def test_every_dp_run_recorded_secure_aggregation_and_user_level_dp_each_round(curve: tuple[Path, dict]) -> None:
    """Read from each run's own metrics.jsonl: every round of the DP run ran secure aggregation without an abort,
    under dp_unit user at the row's rate, and its last epsilon is the accountant's for the rounds, <= the
    target; the no-DP run recorded no epsilon."""
    _, result = curve
    for row in result["rows"]:
        lines = [json.loads(x) for x in (Path(row["run"]) / METRICS_FILE).read_text().splitlines()][1:]
        assert len(lines) == ROUNDS
        assert all(x["secure_aggregation"] == "segment" and x["secagg_aborted"] == "" for x in lines)
        if row["epsilon_target"] is None:
            assert not any("epsilon" in x for x in lines) and row["epsilon"] is None
            continue
        assert all(x["dp_unit"] == "user" and x["dp_user_rate"] == 0.1 for x in lines)
        expected = epsilon_user_level(row["noise_multiplier"], result["delta"], 0.1, ROUNDS)
        assert lines[-1]["epsilon"] == pytest.approx(expected) == pytest.approx(row["epsilon"])
        assert row["epsilon"] <= row["epsilon_target"]
        assert row["secure_aggregation_every_round"] and row["dp_units"] == ["user"]


def test_held_out_users_are_in_no_silos_records(curve: tuple[Path, dict], data_dir: Path) -> None:
    """Each silo's own (pseudonymous) records, rebuilt from the run's config: no held-out user's pseudonym
    under that silo's key is among them, while the members are found; the members' folder has no held-out id."""
    out, result = curve
    plan = _plan(data_dir, out)
    cfg = FedConfig.from_run_config(_run_config(Path(result["rows"][1]["run"])))
    assert not set(read_marketplace(cfg.data_dir).users["user_id"].astype(str)) & set(plan.holdouts)
    found_members = 0
    for pid in range(CLIENTS):
        held = {r.user_id for r in client_data(cfg, pid, CLIENTS).records}
        key = client_key(cfg, pid)
        assert not {pseudonym(u, key) for u in plan.holdouts} & held
        found_members += len({pseudonym(u, key) for u in plan.members} & held)
    assert found_members == result["members_in_silos"] > 0
    assert result["holdouts"] == len(plan.holdouts) == round(0.3 * 300)


def _run_config(folder: Path) -> dict:
    from server.checkpoint import load_checkpoint

    return dict(load_checkpoint(folder / "checkpoints").state["run_config"])


# -- membership inference -----------------------------------------------------------------------------------------

def _split_users(data_dir: Path, out: Path) -> tuple[FixedUsers, object]:
    """Two sides dealt at random from the same usable users (exchangeable by construction) and the run's
    untrained (round 0) model."""
    plan = _plan(data_dir, out)
    records = [r for r in raw_records(plan.market, 0, "session").values() if usable(r)]
    order = np.random.default_rng(5).permutation(len(records))
    half = len(records) // 2
    members, outside = [records[i] for i in order[:half]], [records[i] for i in order[half:2 * half]]
    model, _ = federated_model(out / "runs" / "no-dp", plan.members_dir, server_round=0)
    return FixedUsers(members, members, outside), model


def test_membership_auc_is_on_exactly_members_vs_holdouts(curve: tuple[Path, dict], data_dir: Path) -> None:
    out, _ = curve
    users, model = _split_users(data_dir, out)
    result = membership(model, users, seed=0)
    expected = scored(membership_scores(model, users.members), membership_scores(model, users.holdouts), 0)
    assert result["auc"] == expected.auc and result["ci_low"] == expected.ci_low
    assert (result["members"], result["non_members"]) == (len(users.members), len(users.holdouts))


def test_membership_finds_a_memorising_model_and_not_an_untrained_one(curve: tuple[Path, dict],
                                                                      data_dir: Path) -> None:
    """Untrained: at chance (its interval holds 0.5). Memorising: the same model told every item of its members'
    training sequences (+10 on their prior): members' own targets are then far likelier, AUC near 1."""
    out, _ = curve
    users, model = _split_users(data_dir, out)
    untrained = membership(model, users, seed=0)
    rows = sorted({i for r in users.members for i in model.indices(train_items_of(r))})  # type: ignore[attr-defined]
    with torch.no_grad():
        model.global_bank.item_bias[rows] += 10.0  # type: ignore[attr-defined]
    memorised = membership(model, users, seed=0)
    assert untrained["ci_low"] < 0.5 < untrained["ci_high"] and abs(untrained["auc"] - 0.5) < 0.1
    assert memorised["auc"] > 0.85 and memorised["ci_low"] > 0.75


# -- bad options ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "message"), [
    (["--epsilons", "0,inf"], "--epsilons: every value must be a positive number or inf"),
    (["--epsilons", "8,8"], "--epsilons lists a value twice"),
    (["--epsilons", "eight"], "--epsilons expects a number"),
    (["--epsilons", "0.01", "--dp-user-rate", "1", "--rounds", "1000"], "target epsilon 0.01 is out of reach"),
    (["--dp-user-rate", "0"], "--dp-user-rate must be in (0, 1]"),
    (["--dp-user-rate", "1.5"], "--dp-user-rate must be in (0, 1]"),
    (["--holdout-users", "1"], "--holdout-users must be a fraction"),
    (["--public-users", "0.7"], "--public-users must be a fraction in [0, 1) that leaves members"),
    (["--public-users", "-0.1"], "--public-users must be a fraction"),
    (["--public-epochs", "0"], "--public-epochs must be >= 1"),
    (["--set", "init-banks=/tmp"], "--set init-banks: the curve sets this key itself"),
    (["--arch", "text"], "--unit user needs --arch seq"),
    (["--clients", "1"], "--clients must be >= 2"),
    (["--strategy", "fedsgd"], "--strategy 'fedsgd' is not one of"),
    (["--set", "dp-clip=3"], "--set dp-clip: the curve sets this key itself"),
    (["--set", "lr=fast"], "run-config lr='fast' is not a number"),
    (["--unit", "users"], "--unit 'users' is not one of client, user"),
])
def test_bad_options_are_refused_by_name_before_anything_is_written(data_dir: Path, tmp_path: Path, change: list[str],
                                                                    message: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curve"
    argv = ["privacy", "curve", "--unit", "user", "--data", str(data_dir), "--out", str(out), *TINY]
    flags = {argv[i]: i for i in range(len(argv)) if argv[i].startswith("--") and argv[i] != "--set"}
    for flag, value in zip(change[::2], change[1::2], strict=True):
        if flag in flags:
            argv[flags[flag] + 1] = value
        else:
            argv += [flag, value]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_missing_data_and_wrong_unit_flags_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [(["privacy", "curve", "--unit", "user", "--arch", "seq", "--out", str(tmp_path / "a")], "needs --data"),
             (["privacy", "curve", "--unit", "user", "--arch", "seq", "--data", str(tmp_path / "none"), "--out",
               str(tmp_path / "a")], "no such folder"),
             (["privacy", "membership", "--unit", "user", "--arch", "seq", "--data", str(tmp_path), "--out",
               str(tmp_path / "a")], "--unit user runs the curve only"),
             (["privacy", "curve", "--dp-user-rate", "0.1", "--out", str(tmp_path / "a")],
              "--dp-user-rate is used only with --unit user"),
             (["privacy", "curve", "--unit", "user", "--arch", "seq", "--data", str(tmp_path), "--out",
               str(tmp_path / "a"), "--central-epochs", "3"], "--central-epochs is used only with --unit client"),
             (["privacy", "curve", "--unit", "user", "--arch", "seq", "--data", str(tmp_path), "--out",
               str(tmp_path / "a"), "--users", "50"], "--users is used only with --unit client")]
    for argv, message in cases:
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "a").exists()
