"""`fedadapt simulate` DP options: mapped to the run-config keys and refused, by key, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import build_parser, main
from cli.simulate import options_from_args


@pytest.mark.parametrize(("args", "named"), [
    (["--dp-noise-multiplier", "1.0"], "dp-clip"),
    (["--dp-noise-multiplier", "-1", "--dp-clip", "1"], "dp-noise-multiplier"),
    (["--dp-clip", "0.5"], "dp-clip"),
    (["--target-epsilon", "3"], "target-epsilon"),
    (["--dp-noise-multiplier", "1", "--dp-clip", "1", "--dp-delta", "2"], "dp-delta"),
])
def test_bad_dp_values_are_one_line_errors_naming_the_key(args: list[str], named: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Each bad value exits 2 with one line that names the key; the run folder is never created."""
    rc = main(["simulate", "--preset", "smoke", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_unknown_dp_mode_is_refused_by_the_parser(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dp-mode offers only central and distributed."""
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--out", str(tmp_path / "run"), "--dp-mode", "local"])
    assert exc.value.code == 2 and "--dp-mode" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dp_options_map_to_run_config_keys(tmp_path: Path) -> None:
    """The flags become the kebab-case run-config keys the ServerApp and ClientApp read."""
    args = build_parser("simulate").parse_args(
        ["simulate", "--out", str(tmp_path), "--dp-noise-multiplier", "0.8", "--dp-clip", "0.25", "--dp-mode",
         "distributed", "--target-epsilon", "9", "--target-epsilon-action", "warn", "--dp-delta", "1e-6"])
    config = options_from_args(args).config
    assert config == {"dp-noise-multiplier": 0.8, "dp-clip": 0.25, "dp-mode": "distributed", "target-epsilon": 9.0,
                      "target-epsilon-action": "warn", "dp-delta": 1e-6} | {
        k: v for k, v in config.items() if not k.startswith(("dp-", "target-"))}


def test_a_target_below_one_round_is_refused_before_anything_starts(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A target-epsilon that even the first round would exceed could not train at all: one line naming it."""
    rc = main(["simulate", "--preset", "smoke", "--out", str(tmp_path / "run"), "--dp-noise-multiplier", "0.5",
               "--dp-clip", "1", "--target-epsilon", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "target-epsilon 0.5 is below the epsilon of one round" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
