"""Atomic per-round checkpoints of the server: adapter banks, server-optimizer moments, JSON state.

Layout of `<root>/round-0003/`:
  banks/<i>.safetensors     one file per adapter bank, the bank name in the file's metadata
  optimizer.safetensors     FedAdam moments (absent for FedAvg, which keeps none)
  state.json                round, run config, metrics history, optimizer step counts, seed, each round's
                            training cohort (partition ids), bank files and the SHA-256 of every tensor file

A round directory is written under a temporary name, every file and the directory are fsync'ed, and only
then is it renamed to `round-NNNN` (rename is atomic on POSIX). A crash mid-write leaves a `.tmp-` directory
that `latest_complete_round` ignores, so a resumed server always starts from a round that finished. Client
sampling without DP is derived from (seed, round), not from a stateful RNG, so the seed is all a resume needs to
draw the same cohorts as an uninterrupted run; with DP cohorts come from OS entropy (server/clients.py) and the
finished rounds' cohorts are kept in state.json ("cohorts"), carried over by every later checkpoint.

Loading checks what it reads: a round whose state.json does not parse, or whose tensor files are missing,
truncated or altered (their SHA-256 no longer matches state.json), raises CheckpointError naming the round,
the folder and the file, so a resume never starts from, or dies with a bare traceback on, a damaged copy.
Resuming also needs the same experiment: `resume_conflicts` lists the run-config keys that differ from the
checkpoint's, except RESUMABLE_KEYS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from common.protocol import FedConfig
from server.aggregate import Arrays

log = logging.getLogger(__name__)

_ROUND_DIR = re.compile(r"^round-(\d{4,})$")
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT_VERSION = 1
# Run-config keys a resumed run may change: how long it runs and how patiently it waits, and the privacy budget
# (raising target-epsilon continues a run that stopped at it: epsilon goes on from the checkpoint). Every other key
# (data, model, adapters, segments, optimisation, sampling, evaluation) defines the experiment whose rounds
# metrics.jsonl and the checkpoints continue (where and with how much memory a client computes, client-threads,
# client-cpus, device and lower-cache-mb, does not); out-dir may change so that a copied or moved run folder resumes.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "resume", "stop-after-round", "round-timeout", "client-threads",
                            "client-cpus", "device", "lower-cache-mb", "out-dir", "target-epsilon",
                            "target-epsilon-action"})


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the round, the folder and the file."""


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


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _save_arrays(arrays: Arrays, path: Path, metadata: dict[str, str]) -> str:
    """Write and fsync one safetensors file; returns its SHA-256 (recorded in state.json)."""
    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    save_file(contiguous, str(path), metadata=metadata)
    _fsync_file(path)
    return _sha256(path)


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
    digests: dict[str, str] = {}
    for i, name in enumerate(sorted(ckpt.banks)):
        fname = f"banks/{i:03d}.safetensors"
        digests[fname] = _save_arrays(ckpt.banks[name], tmp / fname, {"bank": name})
        bank_files[fname] = name
    if ckpt.optimizer_arrays:  # FedAvg keeps no optimizer state (and safetensors cannot read an empty file)
        digests[OPTIMIZER_FILE] = _save_arrays(ckpt.optimizer_arrays, tmp / OPTIMIZER_FILE, {})
    state = dict(ckpt.state, round=ckpt.round, bank_files=bank_files, sha256=digests,
                 format_version=FORMAT_VERSION)
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
    """Load a round (default: the latest complete one).

    FileNotFoundError names the folder if there is no such round; CheckpointError names the file of a round
    that is there but damaged.
    """
    if server_round is None:
        server_round = latest_complete_round(root)
        if server_round is None:
            raise FileNotFoundError(f"no complete checkpoint under {root}")
    folder = round_dir(Path(root), server_round)
    if not (folder / STATE_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {folder} is missing or incomplete")

    def corrupt(fname: str, why: object) -> CheckpointError:
        return CheckpointError(f"checkpoint round {server_round} under {root} is corrupt: {folder / fname}: {why} "
                               f"(delete {folder} to fall back to the round before it)")

    try:
        with open(folder / STATE_FILE, encoding="utf-8") as fh:
            state = json.load(fh)
        bank_files = dict(state.pop("bank_files"))
        digests = dict(state.pop("sha256", {}))  # absent in checkpoints written before digests were recorded
        server_round = int(state.pop("round"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise corrupt(STATE_FILE, f"{type(exc).__name__}: {exc}") from exc

    def read(fname: str) -> Arrays:
        path = folder / fname
        expected = digests.get(fname)
        try:
            if expected is not None and _sha256(path) != expected:
                raise corrupt(fname, "SHA-256 differs from the one recorded in state.json")
            return dict(load_file(str(path)))
        except (OSError, SafetensorError) as exc:
            raise corrupt(fname, f"{type(exc).__name__}: {exc}") from exc

    banks = {name: read(fname) for fname, name in bank_files.items()}
    optimizer_arrays = read(OPTIMIZER_FILE) if (folder / OPTIMIZER_FILE).is_file() else {}
    if OPTIMIZER_FILE in digests and not optimizer_arrays:
        raise corrupt(OPTIMIZER_FILE, "listed in state.json but missing")
    state.pop("format_version", None)
    return Checkpoint(round=server_round, banks=banks, state=state, optimizer_arrays=optimizer_arrays)


def resume_conflicts(saved: Mapping[str, Any], current: FedConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint's value, current value)} for every run-config key outside RESUMABLE_KEYS that differs.

    A key the checkpoint lacks (written before the key existed) counts as its default. A data-dir inside the
    out-dir (data generated into the run folder) is compared relative to the out-dir, so that a moved run
    folder still resumes.
    """
    defaults = FedConfig().to_run_config()
    now = current.to_run_config()
    before = {**defaults, **saved}
    for values in (before, now):
        values["data-dir"] = _relative_data_dir(values)
    return {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
            if key not in RESUMABLE_KEYS and before.get(key) != now.get(key)}


def _relative_data_dir(run_config: Mapping[str, Any]) -> str:
    data, out = str(run_config.get("data-dir", "")), str(run_config.get("out-dir", ""))
    if data and out and Path(data).is_relative_to(out):
        return f"<out-dir>/{Path(data).relative_to(out).as_posix()}"
    return data


def check_resumable(ckpt: Checkpoint, current: FedConfig, root: str | Path) -> None:
    """Raise CheckpointError naming every key whose value differs from the checkpoint's (see resume_conflicts)."""
    conflicts = resume_conflicts(ckpt.state.get("run_config", {}), current)
    if conflicts:
        changes = "; ".join(f"{k}: {before!r} in the checkpoint, {now!r} now" for k, (before, now) in conflicts.items())
        raise CheckpointError(
            f"cannot resume from checkpoint round {ckpt.round} under {root}: the run config differs ({changes}). "
            f"Only {', '.join(sorted(RESUMABLE_KEYS))} may change on resume; repeat the original run's options "
            "or start a new run folder")
