"""PEFT interop for LoRA and int8 quantization of adapter state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from common.adapters import AdaptedModel, AdapterConfig
from common.adapters.peft_export import PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, export_peft
from common.adapters.quant import (
    Int8Tensor,
    dequantize,
    nbytes,
    pack_int8,
    quantization_error,
    quantize_int8,
    quantize_tensor,
    unpack_int8,
)
from common.backbone import tiny_backbone


def trained_lora(config: AdapterConfig, names: list[str]) -> AdaptedModel:
    model = AdaptedModel(tiny_backbone(seed=0), config, names=names).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, 1000, (3, 8), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return ids, mask


@pytest.mark.parametrize("freeze_a", [False, True])
def test_peft_loads_exported_lora_with_same_outputs(tmp_path: Path, freeze_a: bool) -> None:
    """PeftModel.from_pretrained on the same backbone reproduces the adapted model's outputs (atol 1e-5)."""
    model = trained_lora(AdapterConfig(kind="lora", rank=4, alpha=8.0, freeze_a=freeze_a), ["global", "region=EU"])
    export_peft(model, "region=EU", tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE}
    assert json.loads((tmp_path / PEFT_CONFIG_FILE).read_text())["peft_type"] == "LORA"
    peft_model = PeftModel.from_pretrained(tiny_backbone(seed=0).model, str(tmp_path)).eval()
    ids, mask = batch()
    with torch.no_grad():
        expected = model(ids, mask, routing=["region=EU"])
        got = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, model(ids, mask, routing=None), atol=1e-3)


def test_peft_export_of_global_plus_segment_equals_both_levels(tmp_path: Path) -> None:
    """Exporting [global, segment] as one PEFT adapter equals routing through both levels."""
    model = trained_lora(AdapterConfig(kind="lora", rank=2, alpha=4.0), ["global", "season=black_friday"])
    export_peft(model, ["global", "season=black_friday"], tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_backbone(seed=0).model, str(tmp_path)).eval()
    ids, mask = batch()
    with torch.no_grad():
        expected = model(ids, mask, routing=["global", "season=black_friday"])
        got = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_peft_export_refuses_other_kinds_and_prompts(tmp_path: Path) -> None:
    """Only plain LoRA has a PEFT equivalent; anything else is a clear ValueError."""
    with pytest.raises(ValueError, match="kind 'lora' only"):
        export_peft(AdaptedModel(tiny_backbone(), AdapterConfig(kind="bottleneck")), "global", tmp_path)
    with pytest.raises(ValueError, match="prompt_tokens=2"):
        export_peft(AdaptedModel(tiny_backbone(), AdapterConfig(kind="lora", prompt_tokens=2)), "global", tmp_path)
    with pytest.raises(ValueError, match="cannot export adapter"):
        export_peft(AdaptedModel(tiny_backbone(), AdapterConfig(kind="lora")), "nope", tmp_path)


def test_int8_is_per_output_channel_and_bounded() -> None:
    """One scale per row; every element is within half a scale step; a zero row stays zero."""
    weight = torch.randn(6, 10) * torch.tensor([0.001, 0.01, 0.1, 1.0, 10.0, 0.0])[:, None]
    q = quantize_tensor(weight)
    assert q.values.dtype == torch.int8 and q.scale.shape == (6, 1)
    assert (q.dequantize() - weight).abs().le(q.scale / 2 + 1e-12).all()
    assert torch.equal(q.dequantize()[5], torch.zeros(10))
    assert q.values[:5].abs().amax(dim=1).eq(127).all()  # each row uses its full range
    assert quantize_tensor(torch.tensor([0.5, -1.0])).scale.shape == ()


def test_int8_state_size_and_output_error() -> None:
    """int8 state is about 4x smaller, round-trips through pack/unpack, and changes outputs only slightly."""
    model = trained_lora(AdapterConfig(kind="bottleneck", rank=8), ["global"])
    state = model.adapter_state()
    qstate = quantize_int8(state)
    assert nbytes(state) == sum(t.numel() * 4 for t in state.values())
    assert nbytes(qstate) < nbytes(state) / 3
    unpacked = unpack_int8(pack_int8(qstate))
    assert all(torch.equal(unpacked[k].dequantize(), v) for k, v in dequantize(qstate).items())
    ids, mask = batch()
    before = model.adapter_state()
    report = quantization_error(model, ids, mask, routing=["global"])
    assert report.bytes_fp32 == nbytes(state) and report.bytes_int8 == nbytes(qstate)
    assert 0 < report.max_abs_error < 0.05 and 0 < report.relative_error < 0.05
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state().items())  # model restored
    with pytest.raises(ValueError, match="no scale for 'a'"):
        unpack_int8({"a": torch.zeros(2, dtype=torch.int8)})
    assert isinstance(next(iter(qstate.values())), Int8Tensor)
