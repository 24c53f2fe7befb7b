"""The centralized modes of the sequential model (`fedadapt train --arch seq`), and its banks on disk.

- global-adapter: the global bank (text projection, item rows, item prior, user tower) trained on every user.
- segment-adapters: stage 1 is global-adapter (or its saved bank); stage 2 freezes it and trains one segment
  bank per populated segment value (residual on the user vector + item-bias delta) for `segment_epochs`,
  each target routed through the banks of its own segments. Too-small segments fall back to global.
- no-adapter stays the text model's bare backbone (the same row for both archs).
- full-finetune does not exist here: the backbone only encodes item texts once, it is not in the training loop.
  local-only is not built for this arch yet (`fedadapt train --arch text` has it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from common.backbone import Backbone
from common.names import GLOBAL
from common.rec.seq_model import SeqConfig, SeqRecModel, catalog_fingerprint, item_text_inputs
from common.rec.seq_train import SeqTrainConfig, train_seq
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

SEQ_MODES = ("global-adapter", "segment-adapters")
BANKS_FILE = "banks.safetensors"
BANKS_META = "seq.json"


def build_and_train_seq(
    mode: str, backbone: Backbone, records: Sequence[RecordLike], item_texts: Mapping[str, str], cfg: SeqConfig,
    train: SeqTrainConfig, segment_keys: Sequence[str], min_segment_users: int,
    global_state: Mapping[str, torch.Tensor] | None = None, segment_epochs: int = 3,
) -> tuple[SeqRecModel, dict[str, object]]:
    """Build and train the sequential model of `mode`; returns it with a training report per stage."""
    from common.rec.baselines import populated_segment_names

    if mode not in SEQ_MODES:
        raise ValueError(f"mode {mode!r} does not exist for arch seq; expected one of {', '.join(SEQ_MODES)}")
    if mode == "segment-adapters" and not segment_keys:
        raise ValueError(f"mode {mode} needs at least one segment key")
    catalog = sorted(item_texts)
    vectors, tower = item_text_inputs(backbone, cfg, catalog, item_texts)
    report: dict[str, object] = {}
    levels = (GLOBAL, *segment_keys) if mode == "segment-adapters" else (GLOBAL,)
    model = SeqRecModel(cfg, catalog, vectors, user_levels=levels, text_tower=tower)
    if global_state is not None and mode == "segment-adapters":
        model.load_adapter_state(global_state, strict=True)
        report[GLOBAL] = {"loaded": 1.0}
    else:
        report[GLOBAL] = train_seq(model, records, train, [GLOBAL])
    if mode == "segment-adapters":
        names = populated_segment_names(records, segment_keys, min_segment_users)
        for name in names:
            model.add_adapter(name)
        if names:
            report["segments"] = train_seq(model, records, replace(train, epochs=segment_epochs), names)
    return model, report


def save_banks(model: SeqRecModel, folder: Path, item_texts: Mapping[str, str]) -> Path:
    """folder/banks.safetensors (every bank's tensors) + folder/seq.json (config, banks, routing, catalog id)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in model.adapter_state().items()}  # a CUDA-trained model too
    save_file(state, str(folder / BANKS_FILE))
    meta = {"seq": model.cfg.to_dict(), "banks": model.adapter_names, "user_levels": list(model.user_levels),
            "catalog": catalog_fingerprint(model.catalog, item_texts), "items": len(model.catalog)}
    (folder / BANKS_META).write_text(json.dumps(meta, indent=2))
    return folder


def load_banks(folder: Path, backbone: Backbone, item_texts: Mapping[str, str]) -> SeqRecModel:
    """The model `save_banks` wrote, on this party's own frozen text vectors of the same catalog."""
    from safetensors.torch import load_file

    meta = json.loads((folder / BANKS_META).read_text())
    catalog = sorted(item_texts)
    if meta["catalog"] != catalog_fingerprint(catalog, item_texts):
        raise ValueError(f"{folder} was trained on another catalog ({meta['items']} items) than this one "
                         f"({len(catalog)} items)")
    cfg = SeqConfig(**meta["seq"])
    vectors, tower = item_text_inputs(backbone, cfg, catalog, item_texts)
    model = SeqRecModel(cfg, catalog, vectors, names=meta["banks"], user_levels=meta["user_levels"],
                        text_tower=tower)
    model.load_adapter_state(load_file(str(folder / BANKS_FILE)), strict=True)
    return model
