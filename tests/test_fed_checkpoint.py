"""Atomic checkpoints: bit-exact round trip, incomplete rounds ignored, pruning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import Checkpoint, latest_complete_round, load_checkpoint, round_dir, save_checkpoint


def _ckpt(r: int) -> Checkpoint:
    rng = np.random.default_rng(r)
    return Checkpoint(
        round=r,
        banks={
            "global": {"global::a.weight": rng.normal(size=(3, 4)).astype(np.float32)},
            "season=holiday": {"season=holiday::a.weight": rng.normal(size=(3, 4)).astype(np.float32)},
        },
        state={"seed": 7, "run_config": {"num-server-rounds": 4}, "history": [{"round": r, "ndcg@10": 0.1}]},
        optimizer_arrays={"m/global::a.weight": rng.normal(size=(3, 4))},
    )


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    """Banks, optimizer moments and JSON state come back exactly as saved."""
    # Prepare
    ckpt = _ckpt(3)
    # Execute
    save_checkpoint(tmp_path, ckpt)
    back = load_checkpoint(tmp_path)
    # Assert
    assert back.round == 3
    assert back.state == ckpt.state
    for name, arrays in ckpt.banks.items():
        for key, value in arrays.items():
            assert np.array_equal(back.banks[name][key], value) and back.banks[name][key].dtype == value.dtype
    key = "m/global::a.weight"
    assert np.array_equal(back.optimizer_arrays[key], ckpt.optimizer_arrays[key])


def test_incomplete_round_is_ignored(tmp_path: Path) -> None:
    """A leftover temp dir or a round dir without state.json never counts as complete."""
    save_checkpoint(tmp_path, _ckpt(1))
    save_checkpoint(tmp_path, _ckpt(2))
    (tmp_path / ".tmp-round-0003-123" / "banks").mkdir(parents=True)
    round_dir(tmp_path, 4).mkdir()
    assert latest_complete_round(tmp_path) == 2
    assert load_checkpoint(tmp_path).round == 2
    with pytest.raises(FileNotFoundError, match="round-0004"):
        load_checkpoint(tmp_path, 4)


def test_empty_root_and_pruning(tmp_path: Path) -> None:
    """No checkpoint: None / FileNotFoundError; keep_last prunes older complete rounds."""
    assert latest_complete_round(tmp_path / "none") is None
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path)
    for r in range(1, 5):
        save_checkpoint(tmp_path, _ckpt(r), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0003", "round-0004"]
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_empty_optimizer_state_round_trips(tmp_path: Path) -> None:
    """FedAvg has no optimizer arrays; the checkpoint still loads (with an empty optimizer state)."""
    ckpt = _ckpt(1)
    ckpt.optimizer_arrays = {}
    save_checkpoint(tmp_path, ckpt)
    assert load_checkpoint(tmp_path).optimizer_arrays == {}
