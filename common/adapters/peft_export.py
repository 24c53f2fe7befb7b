"""Export LoRA adapters in PEFT's format: `adapter_config.json` + `adapter_model.safetensors`.

Anyone with the same backbone can then serve our adapter with `peft.PeftModel.from_pretrained(backbone, folder)`.
Several adapter names (e.g. global + a segment) export as one PEFT adapter: LoRA updates add up, and
concatenating A along rank and B along columns gives exactly their sum, B_g A_g + B_s A_s = [B_g B_s] [A_g; A_s],
with lora_alpha scaled by the number of names so that PEFT's alpha / rank stays ours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from common.adapters.base import module_key
from common.adapters.lora import LoraLayer
from common.adapters.model import AdaptedModel

log = logging.getLogger(__name__)

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


def peft_state(model: AdaptedModel, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """PEFT's saved keys ('base_model.model.<module>.lora_A.weight') for the sum of the named LoRA adapters."""
    state: dict[str, torch.Tensor] = {}
    for wrapper in model.wrappers:
        layers: list[LoraLayer] = []
        for name in names:
            layer = wrapper.adapters[module_key(name)]
            if not isinstance(layer, LoraLayer):
                raise ValueError(f"adapter {name!r} at {wrapper.site.path} is not a LoRA layer")
            layers.append(layer)
        a = torch.cat([layer.lora_A.detach() for layer in layers], dim=0)  # (n*r, in)
        b = torch.cat([layer.lora_B.detach() for layer in layers], dim=1)  # (out, n*r)
        prefix = f"base_model.model.{wrapper.site.path}"
        state[f"{prefix}.lora_A.weight"] = a.contiguous().cpu()
        state[f"{prefix}.lora_B.weight"] = b.contiguous().cpu()
    return state


def export_peft(model: AdaptedModel, name: str | Sequence[str], folder: str | Path) -> Path:
    """Write the named LoRA adapter (or the sum of several) as a PEFT adapter folder."""
    from peft import LoraConfig

    names = [name] if isinstance(name, str) else list(name)
    config = model.config
    if config.kind != "lora":
        raise ValueError(f"PEFT export supports kind 'lora' only, this model has kind {config.kind!r}")
    if config.prompt_tokens:
        raise ValueError(f"PEFT export cannot carry prompts; this model has prompt_tokens={config.prompt_tokens}")
    unknown = [n for n in names if n not in model.names]
    if not names or unknown:
        raise ValueError(f"cannot export adapter(s) {unknown or names}; known adapters: {', '.join(model.names)}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    source = getattr(getattr(model.backbone, "config", None), "_name_or_path", None) or None
    alpha: Any = config.alpha * len(names)  # PEFT annotates int but computes alpha / r in floats
    peft_config = LoraConfig(
        r=config.rank * len(names),
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=config.dropout,
        target_modules=[w.site.path for w in model.wrappers],
        bias="none",
        base_model_name_or_path=source,
    )
    peft_config.save_pretrained(str(out))
    save_file(peft_state(model, names), str(out / PEFT_WEIGHTS_FILE), metadata={"format": "pt"})
    log.info("exported LoRA adapter(s) %s in PEFT format to %s", ", ".join(names), out)
    return out
