"""`fedadapt simulate` refuses what cannot work before anything starts or is written, in about a second.

Each bad option, backbone, data set, segment key or checkpoint gives exit status 2 and one line naming the
problem, and the run folder is not created (or, for --resume, not touched). The checks themselves are also
tested one by one on small inputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from cli.main import main
from common.data.schema import DataError, write_marketplace
from common.data.synthetic import generate_marketplace
from common.protocol import FedConfig
from server.checkpoint import Checkpoint, round_dir, save_checkpoint
from simulations.runner.preflight import check_backbone, check_segments, inspect_data
from simulations.runner.run import remove_results


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("market")
    write_marketplace(generate_marketplace(60, 300, seed=1), folder)
    return folder


def _simulate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, float]:
    capsys.readouterr()
    t0 = time.monotonic()
    rc = main(["simulate", "--preset", "smoke", *argv])
    return rc, capsys.readouterr().err.strip(), time.monotonic() - t0


@pytest.mark.parametrize(("argv", "named"), [
    (["--adapter", "nosuchkind"], "adapter-kind 'nosuchkind' is not one of"),
    (["--set", "strategy=foo"], "strategy 'foo' is not one of"),
    (["--set", "lr=abc"], "run-config lr='abc' is not a number"),
    (["--set", "no-such-key=1"], "unknown run-config key 'no-such-key'"),
    (["--backbone", "/nonexistent"], "--backbone /nonexistent: no such folder"),
    (["--segments", "region,regoin"], "segment key 'regoin' (--segments) is neither a column of the users table "
                                      "(region, age_band) nor one of season"),
    (["--clients", "500"], "--clients 500 is more than the 160 users in the data"),
    (["--secure-aggregation", "segment", "--set", "min-segment-clients=1"],
     "min-segment-clients=1 with secure-aggregation=segment: a bank summed over one client"),
])
def test_bad_options_fail_before_anything_is_written(argv: list[str], named: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Options that used to fail ~40 s into a run (or, for unknown segments, to run without them) are one
    line and exit status 2 at once; the run folder (and its generated data) is never created."""
    # Execute
    rc, err, seconds = _simulate([*argv, "--out", str(tmp_path / "run")], capsys)
    # Assert
    assert rc == 2 and err.startswith("fedadapt simulate: error: ") and named in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
    assert seconds < 10  # about a second on an idle machine; generous for a loaded one


def test_corrupt_data_is_named_before_anything_starts(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated Parquet file, a missing table and a missing column are each named by file."""
    # Prepare
    cases = {}
    for name in ("truncated", "missing-table", "missing-column"):
        folder = tmp_path / name
        write_marketplace(generate_marketplace(60, 300, seed=1), folder)
        cases[name] = folder
    clicks = cases["truncated"] / "clicks.parquet"
    clicks.write_bytes(clicks.read_bytes()[:300])
    (cases["missing-table"] / "products.parquet").unlink()
    m = generate_marketplace(60, 300, seed=1)
    write_marketplace(m, cases["missing-column"], fmt="jsonl")
    lines = (cases["missing-column"] / "users.jsonl").read_text().splitlines()
    (cases["missing-column"] / "users.jsonl").write_text(
        "\n".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "region"}) for line in lines))
    expected = {"truncated": f"{clicks}: cannot read", "missing-table": "no products.parquet or products.jsonl",
                "missing-column": "missing column(s) 'region'"}
    for name, folder in cases.items():
        # Execute
        rc, err, _ = _simulate(["--data", str(folder), "--out", str(tmp_path / f"run-{name}")], capsys)
        # Assert
        assert rc == 2 and expected[name] in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"run-{name}").exists()


def test_resume_from_a_damaged_or_different_checkpoint_is_refused(data: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--resume loads the last checkpoint before starting: a damaged file is named, another config is refused
    naming the keys, and nothing in the run folder changes."""
    # Prepare
    run = tmp_path / "run"
    cfg = FedConfig(num_server_rounds=2, data_dir=str(data), out_dir=str(run.resolve()), backbone="tiny",
                    batch_size=16, lr=5e-3, min_segment_clients=1)
    bank = {"global": {"global::a": np.zeros((2, 2), dtype=np.float32)}}
    save_checkpoint(run / "checkpoints", Checkpoint(1, bank, {"run_config": cfg.to_run_config()}))
    base = ["--data", str(data), "--out", str(run), "--resume"]
    # Execute
    rc_other, err_other, _ = _simulate([*base, "--adapter", "prompt", "--segments", "region"], capsys)
    (round_dir(run / "checkpoints", 1) / "state.json").write_text("{not json")
    rc_bad, err_bad, _ = _simulate(base, capsys)
    # Assert
    assert rc_other == 2 and len(err_other.splitlines()) == 1
    assert "adapter-kind: 'lora' in the checkpoint, 'prompt' now" in err_other
    assert "segment-keys: 'region,season' in the checkpoint, 'region' now" in err_other
    assert rc_bad == 2 and f"checkpoint round 1 under {run / 'checkpoints'} is corrupt" in err_bad
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]


def test_a_fresh_run_does_not_overwrite_an_earlier_one(data: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Without --resume or --overwrite, a folder that holds a run's checkpoints is refused and its results are
    left untouched (only the lock file is added); --overwrite removes the old results, keeping data/."""
    # Prepare
    run = tmp_path / "run"
    bank = {"global": {"global::a": np.zeros((2, 2), dtype=np.float32)}}
    save_checkpoint(run / "checkpoints", Checkpoint(3, bank, {}))
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "data").mkdir()
    # Execute
    rc, err, _ = _simulate(["--data", str(data), "--out", str(run)], capsys)
    # Assert
    assert rc == 2 and "already holds a run (checkpoints up to round 3)" in err and "--overwrite" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "data", "metrics.jsonl"]
    remove_results(run)
    assert sorted(p.name for p in run.iterdir()) == [".lock", "data"]


def test_inspect_data_checks_columns_only_for_large_data(data: Path, tmp_path: Path) -> None:
    """Above the size limit only headers and the users table are read: a missing column is still named,
    and the facts carry the users' columns and count but no marketplace."""
    # Prepare
    m = generate_marketplace(60, 300, seed=1)
    m.clicks = m.clicks.drop(columns=["session_id"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("reviews", "products", "users"):
        getattr(m, name).to_parquet(broken / f"{name}.parquet")
    m.clicks.to_parquet(broken / "clicks.parquet")
    # Execute
    facts = inspect_data(data, full_check_bytes=0)
    with pytest.raises(DataError, match=r"clicks.parquet: missing column\(s\) 'session_id'"):
        inspect_data(broken, full_check_bytes=0)
    # Assert
    assert facts.market is None and facts.users == 60 and "region" in facts.user_columns


def test_segment_keys_are_users_columns_or_season() -> None:
    """A users-table column or 'season' is accepted; user_id and unknown names are not."""
    check_segments(["region", "age_band", "season"], ["user_id", "region", "age_band"])
    for bad in ("user_id", "country"):
        with pytest.raises(ValueError, match=f"segment key '{bad}'"):
            check_segments([bad], ["user_id", "region"])


def test_backbone_folder_needs_config_tokenizer_and_weights(tmp_path: Path) -> None:
    """'tiny' and the offline MiniLM pass; a folder lacking config.json, tokenizer or weights is named."""
    # Prepare
    from common.backbone import default_backbone_path

    folder = tmp_path / "model"
    folder.mkdir()
    # Execute / Assert
    check_backbone("tiny")
    check_backbone("")
    with pytest.raises(ValueError, match="config.json missing or unreadable"):
        check_backbone(str(folder))
    (folder / "config.json").write_text((default_backbone_path() / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        check_backbone(str(folder))
    (folder / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match="no weights file"):
        check_backbone(str(folder))
    (folder / "model.safetensors").write_bytes(b"")
    check_backbone(str(folder))  # the config loads; weights are not read here
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model type 'gpt2' is not supported"):
        check_backbone(str(folder))


def test_adapter_layers_beyond_the_backbone_are_refused_before_anything_starts(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """adapter-layers is checked against the backbone's own layer count (tiny: 2, MiniLM: 6) in preflight."""
    check_backbone("tiny", 2)
    check_backbone("", 6)
    with pytest.raises(ValueError, match="adapter-layers=7: the default backbone .* has only 6 layers"):
        check_backbone("", 7)
    code, err, _ = _simulate(["--data", str(data), "--set", "adapter-layers=3", "--out", str(tmp_path / "run")],
                             capsys)
    assert code == 2 and "adapter-layers=3: the tiny backbone has only 2 layers" in err
    assert not (tmp_path / "run").exists()


def test_smoke_preset_with_secure_aggregation_releases_banks_from_two_clients(tmp_path: Path) -> None:
    """The smoke preset's min-segment-clients 1 would be refused with secure aggregation: the command raises it
    to 2 (an explicit --set wins and is then refused by the config)."""
    from cli.main import build_parser
    from cli.simulate import options_from_args

    parse = build_parser("simulate").parse_args
    base = ["simulate", "--preset", "smoke", "--out", str(tmp_path)]
    assert options_from_args(parse(base)).config["min-segment-clients"] == 1
    assert options_from_args(parse([*base, "--secure-aggregation", "segment"])).config["min-segment-clients"] == 2
    explicit = parse([*base, "--secure-aggregation", "segment", "--set", "min-segment-clients=1"])
    assert options_from_args(explicit).config["min-segment-clients"] == "1"
