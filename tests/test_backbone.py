"""The backbone loads from local folders only, is frozen, and fails with errors that name the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.backbone import BackboneError, load_backbone, tiny_backbone


def test_tiny_backbone_is_frozen_and_deterministic() -> None:
    """Two tiny backbones with the same seed are identical (every client builds the same one) and frozen."""
    a, b = tiny_backbone(seed=3), tiny_backbone(seed=3)
    for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
        assert not pa.requires_grad, name
    assert not a.model.training
    batch = a.tokenizer(["red running shoes", "a blue kettle"], padding=True, return_tensors="pt")
    out = a.model(**batch).last_hidden_state
    assert out.shape[0] == 2 and out.shape[-1] == a.hidden_size


def test_missing_path_names_the_path(tmp_path: Path) -> None:
    """A path that does not exist is reported with the path and what was expected."""
    missing = tmp_path / "nowhere"
    with pytest.raises(BackboneError, match="nowhere.*does not exist"):
        load_backbone(missing)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    """A file is not a model folder."""
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0")
    with pytest.raises(BackboneError, match="is a file"):
        load_backbone(f)


def test_folder_without_config_is_not_a_model(tmp_path: Path) -> None:
    """A folder with no config.json is rejected before anything tries to load weights."""
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(tmp_path)


def test_unsupported_architecture(tmp_path: Path) -> None:
    """A decoder-only model type is refused with the list of supported encoders."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BackboneError, match="unsupported architecture 'gpt2'"):
        load_backbone(tmp_path)


def test_saved_tiny_backbone_loads_from_folder(tmp_path: Path) -> None:
    """Any HF encoder saved with save_pretrained loads from its folder and gives the same outputs."""
    tiny = tiny_backbone()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(tmp_path)
    batch = tiny.tokenizer(["green tea"], return_tensors="pt")
    torch.testing.assert_close(loaded.model(**batch).last_hidden_state, tiny.model(**batch).last_hidden_state)
    assert all(not p.requires_grad for p in loaded.model.parameters())


@pytest.mark.minilm
def test_default_backbone_is_offline_minilm() -> None:
    """The default backbone is the packaged MiniLM: BERT, hidden 384, 6 layers, 22.7M parameters."""
    bb = load_backbone()
    assert bb.hidden_size == 384
    assert bb.model.config.num_hidden_layers == 6
    assert bb.num_parameters() == 22_713_216
