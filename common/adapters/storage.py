"""Adapter folders on disk: `adapters.safetensors` (the flat adapter state) next to `adapters.json` (config, names).

The state itself (`AdaptedModel.adapter_state` / `load_adapter_state`) belongs to the model; this module only
writes it and reads it back, so a folder holds adapter tensors and never a backbone tensor.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from common.adapters.config import AdapterConfig
from common.adapters.model import AdaptedModel
from common.backbone import Backbone

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapters.json"
FORMAT_VERSION = 1


def save_adapters(model: AdaptedModel, folder: str | Path, names: Sequence[str] | None = None) -> Path:
    """Write `adapters.safetensors` (all tensors, buffers included) and `adapters.json` (config + names).

    Written to temporary files and renamed, so a crash never leaves a half-written adapter folder behind.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    selected = list(model.names if names is None else names)
    state = {k: v.contiguous().cpu() for k, v in model.adapter_state(selected, trainable_only=False).items()}
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
    model.load_adapter_state(state, strict=True)
    return names


def load_adapted_model(backbone: Backbone | nn.Module, folder: str | Path) -> AdaptedModel:
    """A new AdaptedModel on `backbone` with the config, adapters and weights saved in `folder`."""
    config, names, state = read_adapter_folder(folder)
    model = AdaptedModel(backbone, config, names)
    model.load_adapter_state(state, strict=True)
    return model
