"""Public pre-training of the user-level curve (`--public-users`) and the run-config key it rests on, init-banks:
a federation starts from a `fedadapt train --arch seq` banks folder, a folder that does not fit the run is
refused by name before anything starts, the public users are in no silo, and under user-level DP the frozen
item rows stay exactly the public model's while the trained keys move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from common.data.anonymize import pseudonym
from common.data.examples import build_item_texts
from common.data.schema import read_marketplace, write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.backbones import backbone_for
from common.federation.client_data import client_data, client_key
from common.federation.seq_task import check_init_banks, initial_state
from common.protocol import FedConfig
from common.rec.seq_modes import BANKS_FILE, BANKS_META, load_banks
from server.checkpoint import load_checkpoint

CLIENTS = 3
TINY = ["--backbone", "tiny", "--arch", "seq", "--rounds", "2", "--clients", str(CLIENTS), "--eval-users", "100",
        "--holdout-users", "0.3", "--segments", "region", "--set", "seq-dim=16", "--set", "seq-max-len=20"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("public") / "data"
    write_marketplace(generate_marketplace(300, 1000, seed=3), folder)
    return folder


@pytest.fixture(scope="module")
def curve(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("public-out") / "curve"
    rc = main(["privacy", "curve", "--unit", "user", "--data", str(data_dir), "--out", str(out), "--epsilons", "8",
               "--public-users", "0.2", "--public-epochs", "2", *TINY])
    assert rc == 0
    return out, json.loads((out / "curve.json").read_text())


def _cfg(run: Path) -> FedConfig:
    return FedConfig.from_run_config(dict(load_checkpoint(run / "checkpoints").state["run_config"]))


def test_the_federation_starts_from_the_public_model_and_dp_keeps_its_rows(curve: tuple[Path, dict]) -> None:
    """Round 0 of the private run is the public model's global bank, tensor for tensor; after the private rounds
    the frozen item rows are still exactly the public ones (non-zero: they were trained on the public users),
    while a trained key (the text projection) has moved."""
    out, result = curve
    row = result["rows"][0]
    cfg = _cfg(Path(row["run"]))
    public = Path(cfg.init_banks)
    assert public.parent == out.resolve() and (public / BANKS_FILE).is_file()
    from safetensors.numpy import load_file

    saved = load_file(str(public / BANKS_FILE))
    start = load_checkpoint(Path(row["run"]) / "checkpoints", 0).banks["global"]
    end = load_checkpoint(Path(row["run"]) / "checkpoints").banks["global"]
    assert set(start) == {k for k in saved if k.startswith("global::")}
    for key, value in saved.items():
        np.testing.assert_array_equal(start[key], value)
    rows = "global::item_rows"
    assert np.abs(saved[rows]).sum() > 0
    np.testing.assert_array_equal(end[rows], saved[rows])
    assert not np.array_equal(end["global::text_proj.weight"], saved["global::text_proj.weight"])


def test_public_users_are_in_no_silo_and_are_neither_members_nor_held_out(curve: tuple[Path, dict],
                                                                         data_dir: Path) -> None:
    out, result = curve
    cfg = _cfg(Path(result["rows"][0]["run"]))
    members = set(read_marketplace(cfg.data_dir).users["user_id"].astype(str))
    everyone = set(read_marketplace(data_dir).users["user_id"].astype(str))
    public = everyone - members
    assert result["public_users"] == round(0.2 * 300) == len(public) - result["holdouts"]
    assert 0 < result["public"]["users"] <= result["public_users"]  # those with a training sequence
    for pid in range(CLIENTS):
        held = {r.user_id for r in client_data(cfg, pid, CLIENTS).records}
        assert not {pseudonym(u, client_key(cfg, pid)) for u in public} & held
    assert result["members"] == len(members)


def test_the_public_model_is_scored_as_its_own_row(curve: tuple[Path, dict]) -> None:
    out, result = curve
    pub = result["public"]
    for key in ("ndcg@10_sampled", "hr@10_sampled", "ndcg@10_full", "hr@10_full"):
        assert 0 <= pub[key] <= 1
    assert [pub["membership"]["members"], pub["membership"]["non_members"]] == result["membership_sides"]
    markdown = (out / "curve.md").read_text()
    assert "| public pre-training only |" in markdown and "round-0 model (the public pre-training" in markdown
    assert result["membership_untrained"]["auc"] == pub["membership"]["auc"]  # round 0 is the public model


def test_a_second_invocation_reuses_the_public_model_and_the_run(curve: tuple[Path, dict], data_dir: Path) -> None:
    out, result = curve
    public = Path(_cfg(Path(result["rows"][0]["run"])).init_banks)
    before = (public / BANKS_FILE).stat().st_mtime_ns
    rc = main(["privacy", "curve", "--unit", "user", "--data", str(data_dir), "--out", str(out), "--epsilons", "8",
               "--public-users", "0.2", "--public-epochs", "2", *TINY])
    assert rc == 0 and (public / BANKS_FILE).stat().st_mtime_ns == before
    again = json.loads((out / "curve.json").read_text())
    assert again["public"]["ndcg@10_sampled"] == result["public"]["ndcg@10_sampled"]
    assert again["rows"][0]["ndcg@10_sampled"] == result["rows"][0]["ndcg@10_sampled"]


# -- init-banks itself ---------------------------------------------------------------------------------------------

def _run_cfg(data_dir: Path, folder: Path, **extra: str) -> FedConfig:
    return FedConfig.from_run_config({"arch": "seq", "backbone": "tiny", "data-dir": str(data_dir),
                                      "seq-dim": "16", "seq-max-len": "20", "init-banks": str(folder), **extra})


def test_initial_state_loads_the_folders_global_bank_and_seeds_the_rest(curve: tuple[Path, dict],
                                                                        data_dir: Path) -> None:
    _, result = curve
    folder = Path(_cfg(Path(result["rows"][0]["run"])).init_banks)
    cfg = _run_cfg(data_dir, folder)
    state = initial_state(cfg, ["global", "region=EU"], backbone_for("tiny"))
    model = load_banks(folder, backbone_for("tiny"), build_item_texts(read_marketplace(data_dir).products))
    for key, value in model.adapter_state(["global"]).items():
        np.testing.assert_array_equal(state[key], value.numpy())
    seeded = initial_state(FedConfig.from_run_config({**cfg.to_run_config(), "init-banks": ""}), ["region=EU"],
                           backbone_for("tiny"))
    for key, value in seeded.items():
        np.testing.assert_array_equal(state[key], value)  # a bank the folder lacks starts seeded, as without it


def test_a_folder_that_does_not_fit_the_run_is_refused_by_name(curve: tuple[Path, dict], data_dir: Path,
                                                              tmp_path: Path) -> None:
    _, result = curve
    folder = Path(_cfg(Path(result["rows"][0]["run"])).init_banks)
    texts = build_item_texts(read_marketplace(data_dir).products)
    with pytest.raises(ValueError, match=r"another model shape: dim 16 \(run: 32\)"):
        check_init_banks(_run_cfg(data_dir, folder, **{"seq-dim": "32"}), texts)
    with pytest.raises(ValueError, match="trained on another catalog"):
        check_init_banks(_run_cfg(data_dir, folder), {**texts, "new-item": "a product added later"})
    with pytest.raises(ValueError, match=f"no {BANKS_META}"):
        check_init_banks(_run_cfg(data_dir, tmp_path), texts)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / BANKS_META).write_text("{not json")
    (broken / BANKS_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="is not a seq model description"):
        check_init_banks(_run_cfg(data_dir, broken), texts)
    (broken / BANKS_META).write_text((folder / BANKS_META).read_text())
    (broken / BANKS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match=f"{BANKS_FILE} cannot be read"):
        initial_state(_run_cfg(data_dir, broken), ["global"], backbone_for("tiny"))
    with pytest.raises(ValueError, match="init-banks needs arch=seq"):
        FedConfig.from_run_config({"arch": "text", "init-banks": str(folder)})


def test_simulate_refuses_a_wrong_init_banks_folder_before_anything_starts(curve: tuple[Path, dict], data_dir: Path,
                                                                          tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, result = curve
    folder = Path(_cfg(Path(result["rows"][0]["run"])).init_banks)
    out = tmp_path / "run"
    rc = main(["simulate", "--data", str(data_dir), "--out", str(out), "--backbone", "tiny", "--clients", "2",
               "--rounds", "1", "--segments", "region", "--set", "arch=seq", "--set", "seq-dim=32",
               "--set", f"init-banks={folder}"])
    err = capsys.readouterr().err
    assert rc == 2 and "another model shape: dim 16 (run: 32)" in err, err
    assert not (out / "checkpoints").exists()


def test_a_public_model_with_a_partial_bank_is_refused(curve: tuple[Path, dict], data_dir: Path,
                                                      tmp_path: Path) -> None:
    """A folder whose global bank lacks a tensor would start the federation from two models mixed."""
    from safetensors.numpy import load_file, save_file

    _, result = curve
    folder = Path(_cfg(Path(result["rows"][0]["run"])).init_banks)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / BANKS_META).write_text((folder / BANKS_META).read_text())
    tensors = load_file(str(folder / BANKS_FILE))
    tensors.pop("global::text_proj.weight")
    save_file(tensors, str(partial / BANKS_FILE))
    with pytest.raises(ValueError, match=r"bank 'global' does not match the run's: .*missing \['global::text_proj"):
        initial_state(_run_cfg(data_dir, partial), ["global"], backbone_for("tiny"))


def _forged_run(data_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, np.ndarray]:
    """A curve whose silo 0 adds 0.5 to every public item row in its (securely summed) update: (rows at the
    start, rows after the private rounds)."""
    from safetensors.numpy import load_file

    import common.privacy.user_updates as user_updates

    honest = user_updates.local_train_users

    def forging(cfg, data, received, hp, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = honest(cfg, data, received, hp, *args, **kwargs)
        if data.partition_id == 0:
            result.delta["global::item_rows"] = np.asarray(result.delta["global::item_rows"]) + 0.5
        return result

    monkeypatch.setattr(user_updates, "local_train_users", forging)
    rc = main(["privacy", "curve", "--unit", "user", "--data", str(data_dir), "--out", str(out), "--epsilons", "8",
               "--public-users", "0.2", "--public-epochs", "2", *TINY])
    assert rc == 0
    run = Path(json.loads((out / "curve.json").read_text())["rows"][0]["run"])
    saved = load_file(str(Path(_cfg(run).init_banks) / BANKS_FILE))["global::item_rows"]
    return saved, load_checkpoint(run / "checkpoints").banks["global"]["global::item_rows"]


def test_a_silo_forging_item_row_updates_cannot_move_the_frozen_public_rows(data_dir: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The server drops the frozen keys of every unmasked user-level sum (server/secure.py): the forged rows
    never land. Without that filter the same forgery moves them, so the test would see a broken defence."""
    start, end = _forged_run(data_dir, tmp_path / "filtered", monkeypatch)
    np.testing.assert_array_equal(end, start)
    import server.secure

    monkeypatch.setattr(server.secure, "FROZEN_KEYS", frozenset())
    start, end = _forged_run(data_dir, tmp_path / "unfiltered", monkeypatch)
    assert np.abs(end - start).max() > 1e-3


def test_a_public_user_found_in_a_silo_stops_the_curve(data_dir: Path, tmp_path: Path) -> None:
    """A public user in a silo's records would train twice, once with no guarantee: the silo check refuses it."""
    from simulations.privacy.user_curve.options import UserCurveOptions
    from simulations.privacy.user_curve.plan import make_plan
    from simulations.privacy.user_curve.public import check_outside

    plan = make_plan(UserCurveOptions(out=tmp_path / "c", data=data_dir, backbone="tiny", epsilons=(8.0,), rounds=2,
                                      clients=CLIENTS, holdout=0.3, public=0.2, segments="region",
                                      config={"seq-dim": "16", "seq-max-len": "20"}))
    check_outside(plan, set(plan.members))
    with pytest.raises(RuntimeError, match=f"public user {plan.public[0]} is in a silo's records"):
        check_outside(plan, {*plan.members, plan.public[0]})
