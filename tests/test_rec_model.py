"""Two-tower RecModel on the tiny backbone: pooling, routing, the item cache, the fine-tuning copy."""

from __future__ import annotations

import pytest
import torch

from common.adapters import AdapterConfig
from common.backbone import tiny_backbone
from common.names import GLOBAL
from common.rec.model import RecModel, RoutingPlan, resolve_levels, routing_signature

TEXTS = ["bought hiking boots", "garden tools and a long description of a rake", "coffee"]


def test_no_adapter_encoding_is_mean_pooled_backbone() -> None:
    """Without adapters the embedding is the normalised mean of the backbone's real-token states."""
    # Prepare
    backbone = tiny_backbone()
    model = RecModel(backbone, None)
    ids, mask = model.tokenize(TEXTS)
    # Execute
    vecs = model.encode(TEXTS, None)
    # Assert
    hidden = backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    torch.testing.assert_close(vecs, torch.nn.functional.normalize(expected, dim=-1))
    torch.testing.assert_close(vecs.norm(dim=-1), torch.ones(3))


def test_fresh_adapter_leaves_embeddings_unchanged() -> None:
    """LoRA starts at zero, so routing through a fresh global adapter gives the backbone's embedding."""
    # Prepare
    backbone = tiny_backbone()
    plain = RecModel(backbone, None)
    adapted = RecModel(backbone, AdapterConfig(kind="lora"), [GLOBAL])
    # Execute / Assert
    torch.testing.assert_close(adapted.encode(TEXTS, [GLOBAL]), plain.encode(TEXTS, None))


def test_prompt_kind_pools_over_virtual_tokens() -> None:
    """Prompt tuning adds tokens: pooling uses output_mask, so padding never enters the mean."""
    # Prepare
    model = RecModel(tiny_backbone(), AdapterConfig(kind="prompt"), [GLOBAL])
    # Execute
    batched = model.encode(TEXTS, [GLOBAL])
    single = model.encode(TEXTS[:1], [GLOBAL])
    # Assert: the short text's vector does not depend on the padding added for longer batch mates.
    torch.testing.assert_close(batched[:1], single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(single, RecModel(tiny_backbone(), None).encode(TEXTS[:1], None))


def test_routing_resolves_segment_levels_and_falls_back() -> None:
    """Segment keys become per-example adapter names; missing adapters skip the level (global fallback)."""
    # Prepare
    segs = [{"region": "EU", "season": "holiday"}, {"region": "APAC", "season": "regular"}]
    available = {GLOBAL, "region=EU", "season=regular"}
    # Execute
    routing = resolve_levels((GLOBAL, "region", "season"), segs, available)
    none = resolve_levels(("region",), [{"region": "LATAM"}], available)
    # Assert
    assert routing == [GLOBAL, ["region=EU", None], [None, "season=regular"]]
    assert none is None
    assert routing_signature(routing, 1) == (GLOBAL, "season=regular")
    with pytest.raises(ValueError, match="region=EU"):
        RoutingPlan(("region=EU",))


def test_item_cache_reencodes_only_when_weights_change() -> None:
    """Catalog items are encoded once per global-adapter version; a weight change invalidates them."""
    # Prepare
    model = RecModel(tiny_backbone(), AdapterConfig(kind="lora"), [GLOBAL, "region=EU"])
    texts = {f"p{i}": f"item number {i}" for i in range(5)}
    calls: list[int] = []
    original = model.encode_items
    model.encode_items = lambda t, r: calls.append(len(t)) or original(t, r)  # type: ignore[method-assign]
    # Execute
    first = model.item_embeddings(list(texts), texts, (GLOBAL,))
    model.item_embeddings(["p0", "p1"], texts, (GLOBAL,))
    with torch.no_grad():
        model.adapted.adapter_state  # noqa: B018 - attribute exists
        for p in model.adapted.trainable_parameters(["region=EU"]):
            p.add_(1.0)  # a segment adapter is not on the item tower: cache stays valid
    model.item_embeddings(["p0"], texts, (GLOBAL,))
    with torch.no_grad():
        for p in model.adapted.trainable_parameters([GLOBAL]):
            p.add_(0.5)
    second = model.item_embeddings(["p0"], texts, (GLOBAL,))
    # Assert
    assert calls == [5, 1]
    assert not torch.allclose(first["p0"], second["p0"])


def test_full_finetune_trains_a_private_copy() -> None:
    """finetune_backbone unfreezes a deep copy; the shared backbone stays frozen and unchanged."""
    # Prepare
    backbone = tiny_backbone()
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    model = RecModel(backbone, None, finetune_backbone=True)
    params = model.trainable_parameters([])
    # Execute
    model.encode(TEXTS, None).sum().backward()
    torch.optim.SGD(params, lr=1.0).step()
    # Assert
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in backbone.model.parameters())
    for key, value in backbone.model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not torch.allclose(model.encode(TEXTS, None), RecModel(backbone, None).encode(TEXTS, None))
