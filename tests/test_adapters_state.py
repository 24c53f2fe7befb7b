"""Adapter state, files, config validation and the kind registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.adapters import ADAPTER_KINDS, AdaptedModel, AdapterConfig, AdapterKind, register_adapter_kind
from common.adapters.storage import CONFIG_FILE, WEIGHTS_FILE, load_adapted_model, load_adapters, save_adapters
from common.backbone import tiny_backbone
from common.names import split_key

NAMES = ["global", "region=EU", "season=black.friday"]
KIND_CONFIGS = [AdapterConfig(kind=kind, rank=4) for kind in ADAPTER_KINDS] + [
    AdapterConfig(kind="lora", rank=4, freeze_a=True),
    AdapterConfig(kind="bottleneck", rank=4, prompt_tokens=2),
]
KIND_IDS = [*ADAPTER_KINDS, "lora-ffa", "bottleneck+prompt"]


def perturbed(config: AdapterConfig, names: list[str] = NAMES, seed: int = 1) -> AdaptedModel:
    model = AdaptedModel(tiny_backbone(seed=0), config, names=names).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.mark.parametrize("config", KIND_CONFIGS, ids=KIND_IDS)
def test_state_holds_adapter_tensors_only(config: AdapterConfig) -> None:
    """Every key is '<name>::<path>' of a known adapter, and no tensor is (or aliases) a backbone tensor."""
    model = perturbed(config)
    state = model.adapter_state(trainable_only=False)
    backbone_shapes = {n: p.shape for n, p in tiny_backbone(seed=0).model.named_parameters()}
    assert {split_key(key)[0] for key in state} == set(NAMES)
    for key in state:
        assert split_key(key)[1] not in backbone_shapes and "base_layer" not in key
    n_adapter = sum(t.numel() for name in NAMES for _, t in model.adapter_tensors(name, trainable_only=False))
    assert sum(t.numel() for t in state.values()) == n_adapter
    assert sum(t.numel() for t in state.values()) < sum(p.numel() for p in model.backbone.parameters()) / 2
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(t.data_ptr() in ptrs for t in state.values())  # copies, so callers cannot alias weights
    trainable = model.adapter_state(names=["region=EU"])
    assert trainable and all(key.startswith("region=EU::") for key in trainable)


@pytest.mark.parametrize("config", KIND_CONFIGS, ids=KIND_IDS)
def test_state_round_trip_restores_outputs(config: AdapterConfig) -> None:
    """Loading one model's state into a fresh model with the same config reproduces its outputs exactly."""
    source = perturbed(config)
    target = AdaptedModel(tiny_backbone(seed=0), config, names=NAMES).eval()
    target.load_adapter_state(source.adapter_state(trainable_only=False))
    ids = torch.randint(5, 1000, (3, 7), generator=torch.Generator().manual_seed(0))
    routing: list[str | list[str | None]] = ["global", ["region=EU", None, "season=black.friday"]]
    with torch.no_grad():
        assert torch.equal(source(ids, None, routing=routing), target(ids, None, routing=routing))


def test_strict_loading_names_unknown_missing_and_mismatched_keys() -> None:
    """Unknown keys, missing keys of a mentioned adapter, and wrong shapes are ValueErrors that name them."""
    model = perturbed(AdapterConfig(kind="lora", rank=4))
    state = model.adapter_state(names=["global"])
    key = next(iter(state))
    with pytest.raises(ValueError, match=r"unknown key\(s\) region=XX::"):
        model.load_adapter_state({**state, "region=XX::encoder.foo": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unknown key\(s\) global::encoder.nothing"):
        model.load_adapter_state({**state, "global::encoder.nothing": torch.zeros(1)})
    partial = dict(state)
    del partial[key]
    with pytest.raises(ValueError, match=rf"missing key\(s\) {key}"):
        model.load_adapter_state(partial)
    with pytest.raises(ValueError, match=rf"shape mismatch for {key}: got \(1, 2\)"):
        model.load_adapter_state({**state, key: torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="not of the form"):
        model.load_adapter_state({"no-separator": torch.zeros(1)})
    before = model.adapter_state()
    model.load_adapter_state(partial, strict=False)  # partial, lenient: allowed
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_adapter_state({key: torch.zeros(1, 2)}, strict=False)
    assert all(torch.equal(before[k], v) for k, v in model.adapter_state().items())


def test_loading_one_adapter_leaves_the_others_alone() -> None:
    """A state naming only the segment adapter updates it and nothing else (what a client receives)."""
    model = perturbed(AdapterConfig(kind="bottleneck", rank=4))
    other = perturbed(AdapterConfig(kind="bottleneck", rank=4), seed=7)
    global_before = model.adapter_state(names=["global"])
    model.load_adapter_state(other.adapter_state(names=["region=EU"]))
    assert all(torch.equal(v, global_before[k]) for k, v in model.adapter_state(names=["global"]).items())
    assert all(torch.equal(v, other.adapter_state(["region=EU"])[k]) for k, v in
               model.adapter_state(["region=EU"]).items())


@pytest.mark.parametrize("config", KIND_CONFIGS, ids=KIND_IDS)
def test_safetensors_round_trip_is_bit_exact(tmp_path: Path, config: AdapterConfig) -> None:
    """save_adapters + load_adapted_model reproduce every tensor bit for bit; no backbone file is written."""
    model = perturbed(config)
    save_adapters(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_FILE, CONFIG_FILE])
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert meta["names"] == NAMES and AdapterConfig.from_dict(meta["config"]) == config
    on_disk = load_file(str(tmp_path / WEIGHTS_FILE))
    original = model.adapter_state(trainable_only=False)
    assert on_disk.keys() == original.keys()
    assert all(torch.equal(on_disk[k], v) and on_disk[k].dtype == v.dtype for k, v in original.items())
    restored = load_adapted_model(tiny_backbone(seed=0), tmp_path)
    assert restored.names == model.names
    for key, value in restored.adapter_state(trainable_only=False).items():
        assert torch.equal(value.view(torch.uint8), original[key].view(torch.uint8)), key


def test_load_adapters_adds_missing_names_and_rejects_other_config(tmp_path: Path) -> None:
    """load_adapters creates adapters the folder has; a folder saved with another config is refused."""
    model = perturbed(AdapterConfig(kind="lora", rank=4))
    save_adapters(model, tmp_path, names=["global", "region=EU"])
    fresh = AdaptedModel(tiny_backbone(seed=0), AdapterConfig(kind="lora", rank=4), names=["global"])
    assert load_adapters(fresh, tmp_path) == ["global", "region=EU"]
    assert fresh.names == ("global", "region=EU")
    other = AdaptedModel(tiny_backbone(seed=0), AdapterConfig(kind="lora", rank=8), names=["global"])
    with pytest.raises(ValueError, match="was saved with"):
        load_adapters(other, tmp_path)
    with pytest.raises(FileNotFoundError, match="has no"):
        load_adapters(fresh, tmp_path / "missing")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "nope"}, "adapter kind 'nope' is unknown"),
        ({"rank": 0}, "rank=0 must be a positive integer"),
        ({"dropout": 1.0}, "dropout=1.0 must be in"),
        ({"alpha": -1.0}, "alpha=-1.0 must be"),
        ({"activation": "swish"}, "activation 'swish' is unknown"),
        ({"placement": ("ffn", "mlp")}, "placement=.* must be a non-empty subset"),
        ({"target_modules": ()}, "matches nothing"),
        ({"target_modules": ("(",)}, "not a valid regular expression"),
        ({"kind": "bottleneck", "freeze_a": True}, "freeze_a=True applies to kind 'lora' only"),
        ({"num_experts": 2, "top_k": 3}, "top_k=3 must be between 1 and num_experts=2"),
        ({"prompt_tokens": -1}, "prompt_tokens=-1"),
        ({"hypernet_owner": "a::b"}, "must not contain"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs: dict[str, object], message: str) -> None:
    """Each invalid field raises ValueError naming the value."""
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**kwargs)  # type: ignore[arg-type]


def test_config_json_round_trip_and_prompt_default() -> None:
    """to_json/from_json round trips; kind='prompt' gets 8 virtual tokens by default; unknown fields fail."""
    config = AdapterConfig(kind="lora", rank=4, target_modules=["query"], freeze_a=True)  # type: ignore[arg-type]
    assert config.target_modules == ("query",)
    assert AdapterConfig.from_json(config.to_json()) == config
    assert AdapterConfig(kind="prompt").prompt_tokens == 8
    with pytest.raises(ValueError, match="unknown AdapterConfig field"):
        AdapterConfig.from_dict({"kind": "lora", "rnk": 3})


def test_registry_refuses_duplicate_kinds() -> None:
    """Registering an existing kind name is an error, not a silent replacement."""
    with pytest.raises(ValueError, match="'lora' is already registered"):
        register_adapter_kind(AdapterKind(name="lora", summary="again", style=None, default_sites=lambda c: ()))
    assert ADAPTER_KINDS[:3] == ("bottleneck", "parallel", "lora")


def test_ffa_lora_a_is_shared_frozen_and_averaging_b_averages_updates() -> None:
    """FFA-LoRA: A is identical across names and clients, not trainable, not in trainable state, and
    the average of the clients' B gives exactly the average of their weight updates B @ A."""
    config = AdapterConfig(kind="lora", rank=4, freeze_a=True)
    client1, client2 = perturbed(config, seed=1), perturbed(config, seed=2)
    full = client1.adapter_state(trainable_only=False)
    a_keys = [k for k in full if k.endswith("lora_A")]
    assert a_keys and not any(k.endswith("lora_A") for k in client1.adapter_state())
    assert all(torch.equal(full[k], client2.adapter_state(trainable_only=False)[k]) for k in a_keys)
    assert torch.equal(full["global::encoder.layer.0.attention.self.query.lora_A"],
                       full["region=EU::encoder.layer.0.attention.self.query.lora_A"])
    layer1 = client1.wrappers[0].adapters["a:global"]
    layer2 = client2.wrappers[0].adapters["a:global"]
    mean_update = (layer1.delta_weight() + layer2.delta_weight()) / 2
    with torch.no_grad():
        layer1.lora_B.copy_((layer1.lora_B + layer2.lora_B) / 2)
    torch.testing.assert_close(layer1.delta_weight(), mean_update, atol=1e-7, rtol=0)
