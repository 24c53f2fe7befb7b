"""One table of defaults: pyproject's run config is FedConfig's, and every entry point takes the same values."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.defaults import ADAPTER_KIND, ADAPTER_LAYERS, ARCH_DEFAULTS, BACKBONE, ROUNDS, TINY_LAYERS
from common.names import SEQ, TEXT
from common.protocol import FedConfig

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_equals_fedconfig_defaults() -> None:
    """Every [tool.flwr.app.config] key is a FedConfig field with the same default, and none is missing."""
    # Prepare
    flower = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    # Execute
    parsed = FedConfig.from_run_config(flower).to_run_config()
    # Assert
    assert parsed == FedConfig().to_run_config()
    assert set(flower) == set(FedConfig().to_run_config())


@pytest.mark.parametrize("arch", [TEXT, SEQ])
def test_zero_means_the_arch_default_and_an_explicit_value_wins(arch: str) -> None:
    """lr, batch-size and local-epochs of 0 (pyproject's values) resolve per arch; a set value is kept."""
    # Execute
    default = FedConfig(arch=arch)
    explicit = FedConfig(arch=arch, lr=0.5, batch_size=7, local_epochs=3)
    # Assert
    table = ARCH_DEFAULTS[arch]
    assert (default.lr, default.batch_size, default.local_epochs) == (table.lr, table.batch_size, table.local_epochs)
    assert (explicit.lr, explicit.batch_size, explicit.local_epochs) == (0.5, 7, 3)


def test_seq_trains_at_the_rate_its_figures_were_measured_at() -> None:
    """`--set arch=seq` alone gives Adam at 1e-3 with 32-user steps, not the text model's 1e-2."""
    assert (FedConfig(arch=SEQ).lr, FedConfig(arch=SEQ).batch_size) == (1e-3, 32)
    assert FedConfig(arch=TEXT).lr == 1e-2 and FedConfig(arch=TEXT, adapter_layers=0).lr == 3e-3


def test_every_entry_point_starts_from_the_one_table() -> None:
    """simulate, train, bench and the library configs read their defaults from common/defaults.py."""
    # Prepare
    from cli.main import build_parser
    from common.backbone import tiny_bert_config
    from common.rec.seq_train import SeqTrainConfig
    from common.rec.train import TrainConfig
    from simulations.runner.run import SimOptions

    # Execute
    sim = SimOptions(out=Path("x"))
    train = build_parser("train").parse_args(["train", "--data", "d", "--mode", "no-adapter", "--out", "o"])
    simulate = build_parser("simulate").parse_args(["simulate", "--out", "o"])
    # Assert
    assert (sim.rounds, sim.backbone, sim.adapter) == (ROUNDS, BACKBONE, ADAPTER_KIND)
    assert FedConfig().num_server_rounds == ROUNDS and FedConfig().backbone == BACKBONE
    assert train.adapter == simulate.adapter == ADAPTER_KIND and train.adapter_layers == ADAPTER_LAYERS
    assert TrainConfig().lr == ARCH_DEFAULTS[TEXT].lr_every_layer
    seq = SeqTrainConfig()
    assert (seq.lr, seq.epochs, seq.batch_size) == (ARCH_DEFAULTS[SEQ].lr, ARCH_DEFAULTS[SEQ].central_epochs,
                                                    ARCH_DEFAULTS[SEQ].central_batch_size)
    assert tiny_bert_config().num_hidden_layers == TINY_LAYERS
