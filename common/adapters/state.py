"""Adapter state: a flat {"<adapter name>::<path>": tensor} of adapter tensors only, and its files on disk.

This flat dict is what crosses the wire and what aggregation averages: keys of one adapter name can be selected
with `split_key`, and a backbone tensor can never appear because only adapter modules are walked.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from common.adapters.config import AdapterConfig
from common.backbone import Backbone
from common.names import make_key, split_key

if TYPE_CHECKING:
    from common.adapters.model import AdaptedModel

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapters.json"
FORMAT_VERSION = 1


def adapter_state(
    model: AdaptedModel, names: Sequence[str] | None = None, trainable_only: bool = True
) -> dict[str, Tensor]:
    """Detached copies of the adapters' tensors; trainable_only leaves out never-trained buffers (FFA-LoRA's A)."""
    selected = model.names if names is None else tuple(names)
    state: dict[str, Tensor] = {}
    for name in selected:
        for path, tensor in model.adapter_tensors(name, trainable_only=trainable_only):
            state[make_key(name, path)] = tensor.detach().clone()
    return state


def load_adapter_state(model: AdaptedModel, state: dict[str, Tensor], strict: bool = True) -> None:
    """Copy `state` into the model's adapters; adapters not named in `state` stay as they are.

    strict: every key must exist in the model, and every trainable tensor of each adapter named in `state` must
    be present. A shape mismatch is always an error. Nothing is copied unless the whole state is valid.
    """
    targets: dict[str, Tensor] = {}
    required: set[str] = set()
    unknown: list[str] = []
    mentioned = []
    for key in state:
        name, _ = split_key(key)
        if name not in model.names:
            unknown.append(key)
        elif name not in mentioned:
            mentioned.append(name)
    for name in mentioned:
        trainable = {make_key(name, p) for p, _ in model.adapter_tensors(name, trainable_only=True)}
        required |= trainable
        targets.update((make_key(name, p), t) for p, t in model.adapter_tensors(name, trainable_only=False))
    unknown += [key for key in state if key not in targets and key not in unknown]
    missing = sorted(required - set(state))
    problems = []
    if strict and unknown:
        problems.append(f"unknown key(s) {', '.join(sorted(unknown)[:10])} (adapters here: {', '.join(model.names)})")
    if strict and missing:
        problems.append(f"missing key(s) {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    for key, value in state.items():
        if key in targets and tuple(value.shape) != tuple(targets[key].shape):
            problems.append(f"shape mismatch for {key}: got {tuple(value.shape)}, expected {tuple(targets[key].shape)}")
    if problems:
        raise ValueError("cannot load adapter state: " + "; ".join(problems))
    with torch.no_grad():
        for key, value in state.items():
            if key in targets:
                targets[key].copy_(value)


def save_adapters(model: AdaptedModel, folder: str | Path, names: Sequence[str] | None = None) -> Path:
    """Write `adapters.safetensors` (all tensors, buffers included) and `adapters.json` (config + names).

    Written to temporary files and renamed, so a crash never leaves a half-written adapter folder behind.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    selected = list(model.names if names is None else names)
    state = {k: v.contiguous().cpu() for k, v in adapter_state(model, selected, trainable_only=False).items()}
    meta = {"format_version": FORMAT_VERSION, "config": model.config.to_dict(), "names": selected}
    _atomic_write(out / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    _atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))
    log.info("saved %d adapter(s) (%d tensors) to %s", len(selected), len(state), out)
    return out


def _atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def read_adapter_folder(folder: str | Path) -> tuple[AdapterConfig, list[str], dict[str, Tensor]]:
    """(config, names, state) from a folder written by save_adapters; errors name the folder."""
    src = Path(folder)
    for file in (WEIGHTS_FILE, CONFIG_FILE):
        if not (src / file).is_file():
            raise FileNotFoundError(f"adapter folder {src} has no {file}")
    meta = json.loads((src / CONFIG_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"adapter folder {src}: format_version {meta.get('format_version')!r} != {FORMAT_VERSION}")
    return AdapterConfig.from_dict(meta["config"]), list(meta["names"]), load_file(str(src / WEIGHTS_FILE))


def load_adapters(model: AdaptedModel, folder: str | Path) -> list[str]:
    """Load a saved folder into `model` (same config required); adapters it lacks are added first."""
    config, names, state = read_adapter_folder(folder)
    if config != model.config:
        raise ValueError(f"adapter folder {folder} was saved with {config}, but the model uses {model.config}")
    for name in names:
        if name not in model.names:
            model.add_adapter(name)
    load_adapter_state(model, state, strict=True)
    return names


def load_adapted_model(backbone: Backbone | nn.Module, folder: str | Path) -> AdaptedModel:
    """A new AdaptedModel on `backbone` with the config, adapters and weights saved in `folder`."""
    from common.adapters.model import AdaptedModel

    config, names, state = read_adapter_folder(folder)
    model = AdaptedModel(backbone, config, names)
    load_adapter_state(model, state, strict=True)
    return model
