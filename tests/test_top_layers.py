"""Adapters in the top layers only (`adapter-layers`), with the frozen lower layers' outputs cached per text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rec_fixtures import make_dataset

from common.adapters import AdaptedModel, AdapterConfig
from common.backbone import tiny_backbone
from common.names import GLOBAL
from common.protocol import FedConfig
from common.rec.model import LowerCache, RecModel
from common.rec.train import TrainConfig, train_epochs

KINDS = ("lora", "bottleneck", "parallel", "hyper", "mixture", "task_attention")


def _nudged(model: AdaptedModel) -> AdaptedModel:
    """Adapters moved off their identity start, so that a skipped adapter would show in the output."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_top_layer_adapters_sit_only_in_the_top_layers_and_the_split_forward_is_exact(kind: str) -> None:
    """top_layers=1 of the tiny 2-layer BERT: every wrapper is in layer 1, and running layer 1 on the states
    lower_states gives reproduces forward() on every real token, adapters and padding included."""
    model = _nudged(AdaptedModel(tiny_backbone(), AdapterConfig(kind=kind, top_layers=1), names=[GLOBAL]))
    assert model.wrappers and all(".layer.1." in w.site.path for w in model.wrappers)
    assert model.frozen_layers == 1
    ids = torch.randint(5, 999, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    full = model(ids, mask, routing=[GLOBAL])
    split = model.forward_from(model.lower_states(ids, mask), mask, routing=[GLOBAL])
    real = mask.bool()
    torch.testing.assert_close(split[real], full[real], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(full, model(ids, mask, routing=None))  # the adapters did act


def test_every_layer_or_prompts_mean_nothing_to_cache() -> None:
    """Adapters in every layer, or prompt tokens (they change the input of layer 0), leave no frozen layers."""
    assert AdaptedModel(tiny_backbone(), AdapterConfig(kind="lora")).frozen_layers == 0
    assert AdaptedModel(tiny_backbone(), AdapterConfig(kind="prompt", top_layers=1)).frozen_layers == 0
    assert not RecModel(tiny_backbone(), AdapterConfig(kind="prompt", top_layers=1)).caches_lower_layers


def test_bad_top_layers_are_refused_with_the_reason() -> None:
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="top_layers"):
            AdapterConfig(top_layers=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_layers=3 must be between 1 and the backbone's 2 layers"):
        AdaptedModel(tiny_backbone(), AdapterConfig(kind="lora", top_layers=3))
    with pytest.raises(ValueError, match="adapter-layers must be >= 0"):
        FedConfig(adapter_layers=-1)
    assert FedConfig.from_run_config({"adapter-layers": 1}).adapter_layers == 1
    with pytest.raises(ValueError, match="lower-cache-mb must be >= 0"):
        FedConfig(lower_cache_mb=-1)


def test_the_run_config_bounds_the_clients_lower_layer_cache() -> None:
    """lower-cache-mb reaches the client's model (0 turns the cache off) and may change on --resume."""
    from common.federation.task import new_model
    from server.checkpoint import RESUMABLE_KEYS

    assert new_model(FedConfig(adapter_layers=1, lower_cache_mb=3), [GLOBAL]).lower_cache.max_bytes == 3 << 20
    off = new_model(FedConfig(adapter_layers=1, lower_cache_mb=0), [GLOBAL])
    assert off.lower_cache.max_bytes == 0 and not off.caches_lower_layers
    assert "lower-cache-mb" in RESUMABLE_KEYS


def _trained(cache_bytes: int) -> tuple[dict[str, torch.Tensor], RecModel]:
    records, items = make_dataset()
    model = RecModel(tiny_backbone(), AdapterConfig(kind="lora", seed=1, top_layers=1), [GLOBAL], max_len=32,
                     lower_cache_bytes=cache_bytes)
    train_epochs(model, records, items, TrainConfig(epochs=2, batch_size=8, lr=1e-2, negatives=8), [GLOBAL])
    assert model.adapted is not None
    return model.adapted.adapter_state(trainable_only=True), model


def test_training_on_cached_lower_states_equals_training_without_the_cache() -> None:
    """Two epochs with the cache end where two epochs through the whole encoder end; the second epoch and the
    evaluation texts are served from the cache instead of running the frozen layers again."""
    cached, model = _trained(1 << 30)
    plain, other = _trained(0)
    assert model.caches_lower_layers and not other.caches_lower_layers
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], atol=1e-5, rtol=1e-4)
    assert any(not torch.allclose(v, torch.zeros_like(v)) for v in cached.values())  # it trained
    assert model.lower_cache.hits > model.lower_cache.misses > 0


def test_lower_cache_stays_within_its_byte_bound() -> None:
    cache = LowerCache(max_bytes=3 * 4 * 10)  # three (10,) float32 tensors
    for i in range(5):
        cache.put((f"text {i}", 8), torch.zeros(10))
    assert cache.size <= cache.max_bytes and list(cache.entries) == [("text 2", 8), ("text 3", 8), ("text 4", 8)]
    assert cache.get(("text 0", 8)) is None and cache.get(("text 4", 8)) is not None


def test_a_model_follows_the_shared_weights_with_its_own_buffers() -> None:
    """Models on one backbone share its weights but not its buffers (position / token-type ids). On a GPU, one
    model's move takes the shared weights along and leaves the other's buffers behind (the H200 run failed
    there): to_device must look at the buffers too. Emulated on CPU: weights here, buffers on 'meta'."""
    frozen = RecModel(tiny_backbone(), None)
    moves: list[torch.device] = []
    frozen.to = lambda device: moves.append(device) or frozen  # type: ignore[method-assign,assignment]
    frozen.to_device(torch.device("cpu"))
    assert moves == []  # everything already here: nothing moved, caches kept
    for module in frozen.encoder.modules():
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = buffer.to("meta")
    assert frozen.device == torch.device("cpu")
    frozen.to_device(torch.device("cpu"))
    assert moves == [torch.device("cpu")]


def test_a_federated_run_with_top_layer_adapters_trains_and_evaluates_from_the_cache(tmp_path: Path) -> None:
    """The whole app in one process (FederatedRun + ClientApp over the in-process grid, tiny backbone) with
    adapter-layers=1: every bank holds layer-1 tensors only, training moved them, and the clients' second round
    and evaluations ran the frozen layer from the process's lower-layer cache."""
    from client.app import app as client_app
    from common.data.schema import write_marketplace
    from common.data.synthetic import generate_marketplace
    from common.federation.task import MODELS, model_for
    from server.app import FederatedRun
    from server.checkpoint import load_checkpoint
    from simulations.runner.inprocess_grid import InProcessGrid
    from tests.fed_fakes import set_task_identity

    set_task_identity()
    MODELS.clear()
    write_marketplace(generate_marketplace(90, 200, seed=4), tmp_path / "data")
    cfg = FedConfig(num_server_rounds=2, data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / "run"),
                    backbone="tiny", adapter_layers=1, min_segment_clients=1, batch_size=8,
                    client_state_dir=str(tmp_path / "state"))
    nodes = {100 + pid: {"partition-id": pid, "num-partitions": 3} for pid in range(3)}
    FederatedRun(cfg, InProcessGrid(client_app, nodes, cfg.to_run_config())).run()
    start = load_checkpoint(tmp_path / "run" / "checkpoints", 0).banks
    end = load_checkpoint(tmp_path / "run" / "checkpoints", 2).banks
    keys = [k for bank in end.values() for k in bank]
    assert keys and all(".layer.1." in k for k in keys)
    assert any(not torch.allclose(torch.from_numpy(end[GLOBAL][k]), torch.from_numpy(start[GLOBAL][k]))
               for k in end[GLOBAL])
    cache = model_for(cfg).lower_cache
    assert cache.hits > cache.misses > 0
