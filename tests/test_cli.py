"""The `fedadapt` entry point: every subcommand is listed, mistakes give one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import COMMANDS, build_parser, main


def test_help_lists_every_subcommand_without_importing_torch() -> None:
    """`fedadapt --help` is instant: it lists the subcommands without importing any of their modules."""
    code = (
        "import sys, contextlib, io\n"
        "from cli.main import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "print(buf.getvalue()); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out
    assert out.strip().endswith("NO-TORCH")


def test_full_parser_builds_every_subcommand() -> None:
    """Every module named in COMMANDS imports and registers the subcommand it is listed under."""
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([name, "--help"])
        assert exc.value.code == 0


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt subcommand is an argparse error naming the choices."""
    with pytest.raises(SystemExit) as exc:
        main(["simulte"])
    assert exc.value.code == 2
    assert "invalid choice: 'simulte'" in capsys.readouterr().err


def test_user_error_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad value inside a subcommand is reported as one line naming the problem, not a traceback."""
    missing = tmp_path / "missing"
    rc = main(["data", "load", str(missing), "--format", "csv", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "missing" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("flag", "value", "named"), [("--cpus-per-client", "0", "--cpus-per-client"),
                                                      ("--fraction", "1.5", "--fraction"),
                                                      ("--clients", "0", "--clients")])
def test_simulate_rejects_bad_numbers_before_starting_flower(
        flag: str, value: str, named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad simulation sizes are one-line errors naming the flag; nothing is started or written."""
    rc = main(["simulate", "--out", str(tmp_path / "run"), flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
