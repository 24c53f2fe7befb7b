"""Fast clients: the negative pool, `--device auto|cpu|cuda` and the client threads a simulation asks for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rec_fixtures import make_dataset

from cli.main import main
from common.adapters import AdapterConfig
from common.backbone import tiny_backbone
from common.device import resolve_device
from common.names import GLOBAL
from common.protocol import FedConfig
from common.rec.model import RecModel
from common.rec.seq_train import SeqTrainConfig
from common.rec.train import TrainConfig, train_epochs, training_pairs
from simulations.runner.run import SimOptions, run_config

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _one_step(pool: bool) -> tuple[float, dict[str, torch.Tensor]]:
    records, items = make_dataset()
    model = RecModel(tiny_backbone(), AdapterConfig(kind="lora", seed=1), [GLOBAL], max_len=32)
    cfg = TrainConfig(epochs=1, batch_size=len(training_pairs(records)), lr=1e-2, negatives=16, negative_pool=pool)
    report = train_epochs(model, records, items, cfg, [GLOBAL])
    assert model.adapted is not None and report["steps"] == 1
    return report["loss"], model.adapted.adapter_state(trainable_only=True)


def test_negative_pool_scores_what_the_item_tower_gives() -> None:
    """One step with the pool sees the same loss as encoding the negatives with gradient (the pool holds the
    item tower's own vectors at the step's weights); only the gradient differs, so the weights move otherwise."""
    # Execute
    loss_pool, state_pool = _one_step(True)
    loss_grad, state_grad = _one_step(False)
    # Assert
    assert loss_pool == pytest.approx(loss_grad, rel=1e-5)
    assert any(not torch.allclose(state_pool[k], state_grad[k]) for k in state_pool)


def test_negative_pool_is_a_run_config_switch() -> None:
    """negative-pool defaults to true and parses from the run config like every boolean key; a typo is refused."""
    assert FedConfig().negative_pool is True
    assert FedConfig.from_run_config({"negative-pool": "false"}).negative_pool is False
    with pytest.raises(ValueError, match="negative-pool"):
        FedConfig.from_run_config({"negative-pool": "maybe"})


def test_device_names_are_checked() -> None:
    """auto is the CPU on a machine without CUDA; an unknown name is refused by every config that takes one."""
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    for make in (lambda: TrainConfig(device="gpu"), lambda: SeqTrainConfig(device="gpu"),
                 lambda: FedConfig(device="gpu"), lambda: resolve_device("gpu")):
        with pytest.raises(ValueError, match="device 'gpu' is not one of auto, cpu, cuda"):
            make()


@NO_GPU
def test_cuda_without_gpu_is_refused_by_train_and_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`fedadapt train/simulate --device cuda` without a GPU: one line, exit 2, nothing written."""
    for argv in (["train", "--data", str(tmp_path / "none"), "--mode", "global-adapter", "--out",
                  str(tmp_path / "train"), "--device", "cuda"],
                 ["simulate", "--preset", "smoke", "--out", str(tmp_path / "sim"), "--device", "cuda"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "train").exists() and not (tmp_path / "sim").exists()


def test_simulate_device_and_threads_reach_the_run_config(tmp_path: Path) -> None:
    """The run config carries --device; a client's threads follow the free CPUs up to --cpus-per-client
    (client-cpus) unless client-threads is set explicitly."""
    data = tmp_path / "data"
    two = run_config(SimOptions(out=tmp_path / "r", cpus_per_client=2.0, config={"device": "auto"}), data)
    assert (two.client_threads, two.client_cpus, two.device) == (0, 2, "auto")
    assert run_config(SimOptions(out=tmp_path / "r", cpus_per_client=0.5), data).client_cpus == 1
    explicit = SimOptions(out=tmp_path / "r", cpus_per_client=2.0, config={"client-threads": 1})
    assert run_config(explicit, data).client_threads == 1
