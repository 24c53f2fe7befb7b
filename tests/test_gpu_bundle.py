"""The device bundle builder: fp16 MiniLM that loads back within 1e-3 of the original embeddings, and a clear
error when the MovieLens-1M files are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from common.backbone import load_backbone
from common.rec.model import RecModel
from simulations.bench.gpu_bundle import write_minilm16, write_ml1m


@pytest.mark.minilm
def test_minilm16_restored_to_fp32_encodes_like_the_original(tmp_path: Path) -> None:
    folder = write_minilm16(tmp_path)
    assert (folder / "model.safetensors").stat().st_size < 50 * 2**20
    weights = load_file(folder / "model.safetensors")
    save_file({k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()},
              folder / "model.safetensors")  # what gpu_check.sh does on the device
    texts = ["hiking boots for wet trails", "a strategy board game for four players"]
    original = RecModel(load_backbone(), None).encode(texts, None)
    restored = RecModel(load_backbone(folder), None).encode(texts, None)
    assert (original - restored).abs().max().item() < 1e-3


def test_missing_movielens_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "ml-1m.inter").write_text("user_id:token\titem_id:token\n")
    with pytest.raises(FileNotFoundError, match=r"lacks ml-1m.item, ml-1m.user; run `fedadapt data fetch ml-1m"):
        write_ml1m(tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()
