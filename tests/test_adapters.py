"""Behaviour every adapter kind must have, one parametrized table of configs against the tiny BERT.

Modelled on PEFT's tests/test_custom_models.py: each row is (id, config); each test runs on every row.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from common.adapters import ADAPTER_KINDS, AdaptedModel, AdapterConfig
from common.adapters.inject import AdapterWrapper
from common.backbone import Backbone, load_backbone, tiny_backbone

CASES: list[tuple[str, AdapterConfig]] = [
    ("bottleneck", AdapterConfig(kind="bottleneck", rank=8)),
    ("bottleneck-pfeiffer", AdapterConfig(kind="bottleneck", rank=8, placement=("ffn",), activation="gelu")),
    ("parallel", AdapterConfig(kind="parallel", rank=8, scaling=4.0)),
    ("lora", AdapterConfig(kind="lora", rank=4, alpha=8.0)),
    ("lora-ffa", AdapterConfig(kind="lora", rank=4, freeze_a=True)),
    ("lora-all-linear", AdapterConfig(kind="lora", rank=2, target_modules=("query", "key", "value", "dense"))),
    ("hyper", AdapterConfig(kind="hyper", rank=4, hyper_embedding_dim=8, hyper_hidden_dim=16)),
    ("task_attention", AdapterConfig(kind="task_attention", rank=8)),
    ("mixture", AdapterConfig(kind="mixture", rank=4, num_experts=3)),
    ("mixture-top1", AdapterConfig(kind="mixture", rank=4, num_experts=3, top_k=1, placement=("ffn",))),
    ("prompt", AdapterConfig(kind="prompt", prompt_tokens=3)),
    ("lora+prompt", AdapterConfig(kind="lora", rank=4, prompt_tokens=2)),
]
IDS = [case_id for case_id, _ in CASES]
CONFIGS = [config for _, config in CASES]
NAMES = ["global", "region=EU", "region=US", "season=black_friday"]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return tiny_backbone(seed=0)


def make_batch(batch: int = 4, length: int = 9, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Token ids and a mask with some padding, so masking bugs show up."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, length - 3 :] = 0
    mask[-1, length - 1 :] = 0
    return ids, mask


def perturb(model: AdaptedModel, scale: float = 0.3, seed: int = 1) -> None:
    """Move every adapter parameter away from its init so that routing mistakes change outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)


def reference(backbone: Backbone, ids: Tensor, mask: Tensor) -> Tensor:
    with torch.no_grad():
        return backbone.model(input_ids=ids, attention_mask=mask)[0]


def test_all_kinds_covered() -> None:
    """The table exercises every registered kind (so a new kind cannot skip these tests)."""
    assert set(ADAPTER_KINDS) <= {config.kind for config in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_identity_at_init(backbone: Backbone, config: AdapterConfig) -> None:
    """Fresh adapters leave outputs unchanged; prompt kinds match the backbone when their slots are off."""
    model = AdaptedModel(backbone, config, names=NAMES).eval()
    ids, mask = make_batch()
    expected = reference(backbone, ids, mask)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, routing=None), expected)
        if model.identity_at_init:
            out = model(ids, mask, routing=["global", ["region=EU", None, "region=US", "region=EU"]])
            torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        else:
            # Prompt slots of every level switched off (None) -> the original positions are the backbone's.
            out = model(ids, mask, routing=[[None] * 4, [None] * 4])
            torch.testing.assert_close(out[:, -ids.shape[1] :], expected, atol=1e-6, rtol=0)
            routed = model(ids, mask, routing=["global"])
            assert routed.shape[1] == ids.shape[1] + config.prompt_tokens
            assert not torch.allclose(routed[:, -ids.shape[1] :], expected, atol=1e-4)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_mixed_batch_routing_equals_each_example_alone(backbone: Backbone, config: AdapterConfig) -> None:
    """Per-example routing in one batch gives what each example gets on its own."""
    model = AdaptedModel(backbone, config, names=NAMES).eval()
    perturb(model)
    ids, mask = make_batch(batch=5)
    segment = ["region=EU", None, "season=black_friday", "region=EU", "region=US"]
    routing: list[str | list[str | None]] = ["global", segment]
    with torch.no_grad():
        mixed = model(ids, mask, routing=routing)
        for row in range(ids.shape[0]):
            alone_routing = ["global"] if segment[row] is None else ["global", str(segment[row])]
            alone = model(ids[row : row + 1], mask[row : row + 1], routing=alone_routing)
            alone_mask = model.output_mask(mask[row : row + 1], alone_routing).bool()[0]
            mixed_mask = model.output_mask(mask, routing).bool()[row]
            torch.testing.assert_close(mixed[row][mixed_mask], alone[0][alone_mask], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(mixed[0], mixed[2], atol=1e-3)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_named_adapters_differ_and_levels_compose(backbone: Backbone, config: AdapterConfig) -> None:
    """Different names give different outputs, and adding a segment level on top of global changes them."""
    model = AdaptedModel(backbone, config, names=NAMES).eval()
    perturb(model)
    ids, mask = make_batch()
    n = ids.shape[1]
    with torch.no_grad():
        eu = model(ids, mask, routing=["region=EU"])[:, -n:]
        us = model(ids, mask, routing=["region=US"])[:, -n:]
        both = model(ids, mask, routing=["global", "region=EU"])[:, -n:]
    assert not torch.allclose(eu, us, atol=1e-3)
    assert not torch.allclose(both, eu, atol=1e-3)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_backbone_frozen_adapters_train(backbone: Backbone, config: AdapterConfig) -> None:
    """Backward + an optimizer step changes adapter parameters only; no backbone parameter gets a gradient."""
    model = AdaptedModel(backbone, config, names=["global", "region=EU"])
    model.train()
    perturb(model, scale=0.05)
    before = {name: p.detach().clone() for name, p in backbone.model.named_parameters()}
    adapter_before = [p.detach().clone() for p in model.trainable_parameters()]
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.1)
    ids, mask = make_batch()
    out = model(ids, mask, routing=["global", ["region=EU", None, "region=EU", None]])
    # Not out.pow(2): after the final LayerNorm that is nearly constant, with vanishing gradients.
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out - target).pow(2).mean().backward()
    optimizer.step()
    for name, p in model.backbone.named_parameters():
        if not any(name.endswith(suffix) for suffix in ("lora_A", "lora_B")) and ".adapters." not in name:
            assert p.grad is None, name
    for name, p in backbone.model.named_parameters():
        assert p.grad is None and torch.equal(p, before[name]), name
    changed = [not torch.equal(a, p) for a, p in zip(adapter_before, model.trainable_parameters(), strict=True)]
    assert any(changed)


def test_train_mode_keeps_backbone_in_eval_and_adapter_dropout_follows() -> None:
    """model.train() turns on adapter dropout only; the backbone's dropout stays off."""
    bb = tiny_backbone(seed=0)
    model = AdaptedModel(bb, AdapterConfig(kind="bottleneck", rank=8, dropout=0.5), names=["global"])
    perturb(model)
    ids, mask = make_batch()
    model.train()
    backbone_modules = [m for n, m in model.backbone.named_modules() if ".adapters" not in n and "adapters" != n]
    assert all(not m.training for m in backbone_modules if not isinstance(m, AdapterWrapper))
    assert all(w.adapters.training for w in model.wrappers)
    with torch.no_grad():
        assert not torch.equal(model(ids, mask, routing="global"), model(ids, mask, routing="global"))
        model.eval()
        assert torch.equal(model(ids, mask, routing="global"), model(ids, mask, routing="global"))
        # Backbone only, even in train mode: deterministic (its dropout is off).
        model.train()
        assert torch.equal(model(ids, mask), reference(bb, ids, mask))


def test_injection_leaves_caller_backbone_unwrapped_and_shares_weights() -> None:
    """The caller's backbone keeps its modules; the adapted model reuses (not copies) its weights."""
    bb = tiny_backbone(seed=0)
    model = AdaptedModel(bb, AdapterConfig(kind="lora"), names=["global"])
    assert not any(isinstance(m, AdapterWrapper) for m in bb.model.modules())
    assert len(model.wrappers) == 4  # query and value in 2 layers
    original = {p.data_ptr() for p in bb.model.parameters()}
    assert {p.data_ptr() for n, p in model.backbone.named_parameters() if "lora" not in n} <= original
    second = AdaptedModel(bb, AdapterConfig(kind="bottleneck"), names=["global"])
    assert len(second.wrappers) == 4  # attention and feed-forward outputs in 2 layers


def test_routing_errors_name_the_problem(backbone: Backbone) -> None:
    """Unknown adapters and wrong per-example list lengths raise ValueError naming them."""
    model = AdaptedModel(backbone, AdapterConfig(kind="bottleneck"), names=["global"])
    ids, mask = make_batch()
    with pytest.raises(ValueError, match="unknown adapter 'region=XX'"):
        model(ids, mask, routing=["global", "region=XX"])
    with pytest.raises(ValueError, match="3 entries for a batch of 4"):
        model(ids, mask, routing=[["global", None, "global"]])
    with pytest.raises(ValueError, match="already exists"):
        model.add_adapter("global")


def test_no_matching_module_lists_candidates(backbone: Backbone) -> None:
    """A target that matches nothing fails at injection with the module names that exist."""
    with pytest.raises(ValueError, match=r"no module matches \['nonexistent'\].*attention\.self\.query"):
        AdaptedModel(backbone, AdapterConfig(kind="lora", target_modules=("nonexistent",)))


def test_add_adapter_later_and_set_trainable(backbone: Backbone) -> None:
    """Adapters can be added after construction; set_trainable freezes every adapter not named."""
    model = AdaptedModel(backbone, AdapterConfig(kind="lora"), names=["global"])
    model.add_adapter("region=APAC")
    assert model.names == ("global", "region=APAC")
    model.set_trainable(["region=APAC"])
    assert all(not p.requires_grad for p in model.trainable_parameters(["global"]))
    assert all(p.requires_grad for p in model.trainable_parameters(["region=APAC"]))
    with pytest.raises(ValueError, match="unknown adapter"):
        model.set_trainable(["nope"])


@pytest.mark.minilm
def test_every_kind_on_minilm() -> None:
    """All kinds inject into the real MiniLM: identity at init (or prompt off) and mixed-batch routing hold."""
    bb = load_backbone()
    enc = bb.tokenizer(["red running shoes", "a long winter coat for hiking", "usb cable"], padding=True,
                       return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    expected = reference(bb, ids, mask)
    for kind in ADAPTER_KINDS:
        model = AdaptedModel(bb, AdapterConfig(kind=kind), names=["global", "region=EU"]).eval()
        with torch.no_grad():
            if model.identity_at_init:
                torch.testing.assert_close(model(ids, mask, routing="global"), expected, atol=1e-6, rtol=0)
            perturb(model, scale=0.05)
            mixed = model(ids, mask, routing=["global", ["region=EU", None, "region=EU"]])
            alone = model(ids[1:2], mask[1:2], routing=["global"])
        torch.testing.assert_close(mixed[1, -ids.shape[1]:], alone[0, -ids.shape[1]:], atol=1e-5, rtol=1e-4)
