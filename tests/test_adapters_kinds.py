"""What individual kinds promise beyond the shared table: ownership of hyper state, gating, masking, prompts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel

from common.adapters import AdaptedModel, AdapterConfig
from common.adapters.base import AdapterCall
from common.adapters.bottleneck import Bottleneck
from common.adapters.mixture import MixtureOfAdapters
from common.adapters.task_attention import TaskAttention
from common.backbone import freeze, tiny_backbone


def test_hyper_state_keys_follow_ownership() -> None:
    """The hypernetwork's tensors belong to 'global'; every other name owns only its segment embedding."""
    config = AdapterConfig(kind="hyper", rank=4, hyper_embedding_dim=8, hyper_hidden_dim=16)
    model = AdaptedModel(tiny_backbone(), config, names=["global", "region=EU"])
    segment = model.adapter_state(names=["region=EU"])
    assert list(segment) == ["region=EU::hyper.segment_embedding"]
    shared = model.adapter_state(names=["global"])
    assert "global::hyper.segment_embedding" in shared
    assert any(key.startswith("global::hyper.hypernet.up_generator") for key in shared)
    with pytest.raises(ValueError, match="needs the hypernetwork owner 'global'"):
        AdaptedModel(tiny_backbone(), config, names=["region=EU"])


def test_hyper_segment_embedding_gets_gradient_through_shared_generator() -> None:
    """Training a segment adapter moves its embedding, via the generator owned by 'global'."""
    config = AdapterConfig(kind="hyper", rank=4, hyper_embedding_dim=8, hyper_hidden_dim=16)
    model = AdaptedModel(tiny_backbone(), config, names=["global", "region=EU"])
    with torch.no_grad():
        for p in model.trainable_parameters(["global"]):
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    ids = torch.randint(5, 1000, (2, 6), generator=torch.Generator().manual_seed(0))
    out = model(ids, None, routing=["region=EU"])
    out.sum().backward()
    (embedding,) = model.trainable_parameters(["region=EU"])
    assert embedding.grad is not None and embedding.grad.abs().sum() > 0


def test_mixture_top_k_gate_keeps_k_experts() -> None:
    """With top_k=2 of 4 experts each token mixes exactly two experts, weights summing to one."""
    layer = MixtureOfAdapters(16, 16, AdapterConfig(kind="mixture", rank=4, num_experts=4, top_k=2), "g", "p")
    weights = layer.gate_weights(torch.randn(3, 5, 16))
    assert ((weights > 0).sum(-1) == 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    dense = MixtureOfAdapters(16, 16, AdapterConfig(kind="mixture", rank=4, num_experts=4), "g", "p")
    assert (dense.gate_weights(torch.randn(3, 5, 16)) > 0).all()


def test_mixture_equals_gate_weighted_sum_of_experts() -> None:
    """The stacked-einsum implementation equals an explicit loop over experts."""
    layer = MixtureOfAdapters(8, 8, AdapterConfig(kind="mixture", rank=3, num_experts=3), "g", "p")
    with torch.no_grad():
        layer.up_weight.normal_(generator=torch.Generator().manual_seed(1))
        layer.up_bias.normal_(generator=torch.Generator().manual_seed(2))
    x = torch.randn(2, 4, 8)
    gates = layer.gate_weights(x)
    expected = sum(
        gates[..., k : k + 1]
        * (torch.relu(x @ layer.down_weight[k].T + layer.down_bias[k]) @ layer.up_weight[k].T + layer.up_bias[k])
        for k in range(3)
    )
    torch.testing.assert_close(layer(x, AdapterCall(None)), expected, atol=1e-5, rtol=1e-5)


def test_task_attention_ignores_padding_tokens() -> None:
    """Changing a padded token's hidden state does not change the adapter's output at real tokens."""
    layer = TaskAttention(8, 8, AdapterConfig(kind="task_attention", rank=4), "g", "p")
    nn.init.normal_(layer.up.weight, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    changed = x.clone()
    changed[0, 4] += 10.0
    out, out_changed = layer(x, AdapterCall(mask)), layer(changed, AdapterCall(mask))
    torch.testing.assert_close(out[:, :3], out_changed[:, :3])
    unmasked = layer(changed, AdapterCall(None))
    assert not torch.allclose(out[:, :3], unmasked[:, :3], atol=1e-4)


def test_parallel_adapter_is_a_scaled_bottleneck() -> None:
    """The parallel kind's delta is the bottleneck's output times `scaling`."""
    config = AdapterConfig(kind="parallel", rank=4, scaling=4.0)
    layer = Bottleneck(8, 8, config, "g", "p", tag="parallel")
    nn.init.normal_(layer.up.weight, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(layer(x, AdapterCall(None)), 4.0 * layer.up(torch.relu(layer.down(x))))


def test_prompt_slots_per_level_and_output_mask() -> None:
    """Each routing level adds P slots before the tokens; output_mask turns a level's slots on per example."""
    model = AdaptedModel(tiny_backbone(), AdapterConfig(kind="prompt", prompt_tokens=3), names=["global", "EU"])
    ids = torch.randint(5, 1000, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    routing: list[str | list[str | None]] = ["global", [None, "EU"]]
    out = model(ids, mask, routing=routing)
    assert out.shape == (2, 2 * 3 + 6, 32)
    expected = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    assert torch.equal(model.output_mask(mask, routing), expected)
    assert torch.equal(model.output_mask(mask, None), mask)


def test_prompts_keep_original_positions_on_roberta() -> None:
    """On a RoBERTa backbone (positions counted from padding_idx + 1), switched-off prompts change nothing."""
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, pad_token_id=1)
    roberta = freeze(RobertaModel(config, add_pooling_layer=False))
    ids = torch.tensor([[0, 5, 6, 7, 2, 1, 1], [0, 8, 9, 10, 11, 12, 2]])
    mask = (ids != 1).long()
    model = AdaptedModel(roberta, AdapterConfig(kind="lora", rank=2, prompt_tokens=2), names=["global"]).eval()
    with torch.no_grad():
        expected = roberta(input_ids=ids, attention_mask=mask)[0]
        out = model(ids, mask, routing=[[None, None]])
        torch.testing.assert_close(out[:, 2:], expected, atol=1e-6, rtol=0)
        routed = model(ids, mask, routing=["global"])
    assert not torch.allclose(routed[:, 2:], expected, atol=1e-4)


def test_parallel_wrapper_accepts_residual_as_keyword() -> None:
    """BERT passes the FFN input positionally; a keyword `input_tensor` gets the same parallel delta."""
    model = AdaptedModel(tiny_backbone(), AdapterConfig(kind="parallel", rank=4), names=["global"]).eval()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(generator=torch.Generator().manual_seed(0))
    wrapper = model.wrappers[0]
    hidden, residual = torch.randn(2, 3, 64), torch.randn(2, 3, 32)
    model._router.plan = model.plan(["global"], 2)
    try:
        with torch.no_grad():
            positional, keyword = wrapper(hidden, residual), wrapper(hidden, input_tensor=residual)
    finally:
        model._router.plan = None
    torch.testing.assert_close(keyword, positional)
    assert not torch.allclose(positional, wrapper(hidden, residual), atol=1e-4)  # plan gone: backbone only


def test_mixed_routing_runs_each_adapter_once_per_module() -> None:
    """Rows are grouped by adapter name: one call per (adapter, wrapped module), not one per example."""
    model = AdaptedModel(tiny_backbone(), AdapterConfig(kind="bottleneck", rank=4), names=["global", "EU", "US"])
    calls: dict[str, list[int]] = {"a:EU": [], "a:US": [], "a:global": []}
    for wrapper in model.wrappers:
        for key, module in wrapper.adapters.items():
            module.register_forward_hook(lambda mod, inputs, out, key=key: calls[key].append(inputs[0].shape[0]))
    ids = torch.randint(5, 1000, (6, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, None, routing=["global", ["EU", "US", "EU", None, "US", "EU"]])
    n = len(model.wrappers)
    assert calls == {"a:EU": [3] * n, "a:US": [2] * n, "a:global": [6] * n}
