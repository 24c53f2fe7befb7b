"""Atomic checkpoints: bit-exact round trip, incomplete rounds ignored, pruning, damage named, resume conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.protocol import FedConfig
from server.checkpoint import (
    RESUMABLE_KEYS,
    Checkpoint,
    CheckpointError,
    check_resumable,
    latest_complete_round,
    load_checkpoint,
    resume_conflicts,
    round_dir,
    save_checkpoint,
)


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


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data: the header still parses, only the digest can tell
    path.write_bytes(bytes(data))


def _garble_header(path: Path) -> None:
    path.write_bytes(b"\x07garbage" + path.read_bytes()[9:])


@pytest.mark.parametrize(("fname", "damage", "why"), [
    ("banks/000.safetensors", _truncate, "SHA-256 differs"),
    ("banks/001.safetensors", _flip_last_byte, "SHA-256 differs"),
    ("optimizer.safetensors", _garble_header, "SHA-256 differs"),
    ("state.json", lambda p: p.write_text('{"round": 2, "bank_'), "JSONDecodeError"),
    ("state.json", lambda p: p.write_text('{"round": 2}'), "KeyError"),
    ("banks/000.safetensors", Path.unlink, "FileNotFoundError"),
])
def test_damaged_checkpoint_names_round_and_file(tmp_path: Path, fname: str, damage: object, why: str) -> None:
    """A truncated, altered or missing tensor file and an unparsable state.json each raise CheckpointError
    naming the round, the folder and the file, never a bare SafetensorError or JSONDecodeError."""
    # Prepare
    save_checkpoint(tmp_path, _ckpt(1))
    save_checkpoint(tmp_path, _ckpt(2))
    damage(round_dir(tmp_path, 2) / fname)  # type: ignore[operator]
    # Execute
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path)
    # Assert
    message = str(exc.value)
    assert f"checkpoint round 2 under {tmp_path} is corrupt" in message
    assert str(round_dir(tmp_path, 2) / fname) in message and why in message
    assert load_checkpoint(tmp_path, 1).round == 1  # the round before is untouched


def test_checkpoint_without_digests_still_loads(tmp_path: Path) -> None:
    """A checkpoint written before digests were recorded loads, and a truncated file in one is still named
    (safetensors checks that its header covers the file)."""
    # Prepare
    for r in (1, 2):
        save_checkpoint(tmp_path, _ckpt(r))
        state_file = round_dir(tmp_path, r) / "state.json"
        state = json.loads(state_file.read_text())
        del state["sha256"]
        state_file.write_text(json.dumps(state))
    _truncate(round_dir(tmp_path, 2) / "banks/000.safetensors")
    # Execute
    back = load_checkpoint(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"round-0002/banks/000.safetensors: SafetensorError"):
        load_checkpoint(tmp_path, 2)
    # Assert
    assert back.round == 1 and set(back.banks) == {"global", "season=holiday"}


def test_resume_conflicts_name_every_changed_experiment_key() -> None:
    """Changing the adapter or the segments is another experiment; rounds, timeouts and the folder may change."""
    # Prepare
    saved = FedConfig(adapter_kind="lora", segment_keys="region,season", out_dir="/runs/a",
                      data_dir="/runs/a/data").to_run_config()
    moved_and_longer = FedConfig(out_dir="/runs/b", data_dir="/runs/b/data", num_server_rounds=9, resume=True,
                                 stop_after_round=4, round_timeout=60.0, client_threads=2, client_cpus=1)
    other = FedConfig(adapter_kind="bottleneck", segment_keys="region", out_dir="/runs/a", data_dir="/runs/a/data")
    # Execute
    allowed, refused = resume_conflicts(saved, moved_and_longer), resume_conflicts(saved, other)
    # Assert
    assert allowed == {}
    assert refused == {"adapter-kind": ("lora", "bottleneck"), "segment-keys": ("region,season", "region")}
    assert {"num-server-rounds", "stop-after-round", "round-timeout"} <= RESUMABLE_KEYS


def test_resume_conflicts_count_missing_keys_as_defaults() -> None:
    """A checkpoint from before a key existed resumes when the key is at its default, not when it is not."""
    # Prepare
    saved = FedConfig().to_run_config()
    del saved["max-eval-users"]
    # Execute / Assert
    assert resume_conflicts(saved, FedConfig()) == {}
    assert resume_conflicts(saved, FedConfig(max_eval_users=5)) == {"max-eval-users": (0, 5)}


def test_check_resumable_lists_the_keys(tmp_path: Path) -> None:
    """The ServerApp's check raises one error naming each differing key with both values."""
    # Prepare
    ckpt = Checkpoint(round=2, banks={}, state={"run_config": FedConfig(lr=0.003).to_run_config()})
    # Execute
    with pytest.raises(CheckpointError) as exc:
        check_resumable(ckpt, FedConfig(lr=0.01, adapter_kind="prompt"), tmp_path)
    # Assert
    message = str(exc.value)
    assert f"checkpoint round 2 under {tmp_path}" in message
    assert "adapter-kind: 'lora' in the checkpoint, 'prompt' now" in message and "lr: 0.003" in message
    check_resumable(ckpt, FedConfig(lr=0.003, num_server_rounds=10), tmp_path)
