"""Atomic per-round checkpoints of the server: adapter banks, server-optimizer moments, JSON state.

Layout of `<root>/round-0003/`:
  banks/<i>.safetensors     one file per adapter bank, the bank name in the file's metadata
  optimizer.safetensors     FedAdam moments (absent for FedAvg, which keeps none)
  state.json                round, run config, metrics history, optimizer step counts, seed, bank files

A round directory is written under a temporary name, every file and the directory are fsync'ed, and only
then is it renamed to `round-NNNN` (rename is atomic on POSIX). A crash mid-write leaves a `.tmp-` directory
that `latest_complete_round` ignores, so a resumed server always starts from a round that finished. Client
sampling is derived from (seed, round), not from a stateful RNG, so the seed is all a resume needs to draw the
same cohorts as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from server.aggregate import Arrays

log = logging.getLogger(__name__)

_ROUND_DIR = re.compile(r"^round-(\d{4,})$")
STATE_FILE = "state.json"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """Everything a resumed server needs to continue as if it had never stopped."""

    round: int
    banks: dict[str, Arrays]
    state: dict[str, Any] = field(default_factory=dict)
    optimizer_arrays: Arrays = field(default_factory=dict)


def round_dir(root: Path, server_round: int) -> Path:
    return Path(root) / f"round-{server_round:04d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_arrays(arrays: Arrays, path: Path, metadata: dict[str, str]) -> None:
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(contiguous, str(path), metadata=metadata)
    _fsync_file(path)


def save_checkpoint(root: str | Path, ckpt: Checkpoint, keep_last: int | None = None) -> Path:
    """Write `ckpt` atomically to `<root>/round-NNNN`; optionally prune older complete rounds."""
    if ckpt.round < 0:
        raise ValueError(f"checkpoint round must be >= 0, got {ckpt.round}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = round_dir(root, ckpt.round)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "banks").mkdir(parents=True)
    bank_files: dict[str, str] = {}
    for i, name in enumerate(sorted(ckpt.banks)):
        fname = f"banks/{i:03d}.safetensors"
        _save_arrays(ckpt.banks[name], tmp / fname, {"bank": name})
        bank_files[fname] = name
    if ckpt.optimizer_arrays:  # FedAvg keeps no optimizer state (and safetensors cannot read an empty file)
        _save_arrays(ckpt.optimizer_arrays, tmp / "optimizer.safetensors", {})
    state = dict(ckpt.state, round=ckpt.round, bank_files=bank_files, format_version=FORMAT_VERSION)
    with open(tmp / STATE_FILE, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    _fsync_dir(tmp / "banks")
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same round replaces the old copy
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    log.info("checkpoint round %d -> %s", ckpt.round, final)
    if keep_last is not None:
        for old in complete_rounds(root)[:-keep_last]:
            shutil.rmtree(round_dir(root, old))
    return final


def complete_rounds(root: str | Path) -> list[int]:
    """Sorted rounds whose directory was renamed into place and holds a readable state file."""
    root = Path(root)
    if not root.is_dir():
        return []
    rounds = []
    for child in root.iterdir():
        m = _ROUND_DIR.match(child.name)
        if m and (child / STATE_FILE).is_file():
            rounds.append(int(m.group(1)))
    return sorted(rounds)


def latest_complete_round(root: str | Path) -> int | None:
    """The last round that finished checkpointing, or None if there is none."""
    rounds = complete_rounds(root)
    return rounds[-1] if rounds else None


def load_checkpoint(root: str | Path, server_round: int | None = None) -> Checkpoint:
    """Load a round (default: the latest complete one); FileNotFoundError names the folder if none exists."""
    if server_round is None:
        server_round = latest_complete_round(root)
        if server_round is None:
            raise FileNotFoundError(f"no complete checkpoint under {root}")
    folder = round_dir(Path(root), server_round)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {folder} is missing or incomplete")
    with open(folder / STATE_FILE, encoding="utf-8") as fh:
        state = json.load(fh)
    banks = {name: dict(load_file(str(folder / fname))) for fname, name in state.pop("bank_files").items()}
    opt_file = folder / "optimizer.safetensors"
    optimizer_arrays = dict(load_file(str(opt_file))) if opt_file.is_file() else {}
    state.pop("format_version", None)
    server_round = int(state.pop("round"))
    return Checkpoint(round=server_round, banks=banks, state=state, optimizer_arrays=optimizer_arrays)
