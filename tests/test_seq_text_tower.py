"""The seq model's item text tower (common/rec/text_tower.py): adapters in the backbone's top layers make the item
text vectors, learn with the global bank, federate as global-bank keys; the backbone never changes and never
appears in the state; lower-layer states are cached per backbone and text."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common.backbone import tiny_backbone
from common.data.examples import UserRecord
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import seq_task, task
from common.federation.records import from_record, to_record
from common.names import GLOBAL, SEQ
from common.protocol import FedConfig, looks_like_backbone
from common.rec.seq_model import SeqConfig, SeqRecModel, frozen_item_vectors, item_text_inputs
from common.rec.seq_train import SeqTrainConfig, score_catalog, train_seq
from common.rec.text_tower import LOWER_STATES, TextTower, TextTowerConfig
from server.app import initial_banks

TOWER = SeqConfig(dim=16, layers=1, heads=2, max_len=12, dropout=0.0, segment_rank=4, text_adapters=1)
WORDS = ["red shoe", "blue shoe", "green hat", "warm hat", "fast bike", "slow bike", "old book", "new book"]


def _texts(n: int = 24) -> dict[str, str]:
    return {f"i{j:02d}": f"{WORDS[j % len(WORDS)]} number {j}" for j in range(n)}


def _records(catalog: list[str], users: int = 40, length: int = 7) -> list[UserRecord]:
    rng = np.random.default_rng(0)
    out = []
    for u in range(users):
        start = int(rng.integers(len(catalog)))
        *train, valid, test = [catalog[(start + 2 * k) % len(catalog)] for k in range(length)]
        segs = {"region": "EU"}
        out.append(UserRecord(
            user_id=f"u{u}", segments=segs, context_text="", train_pairs=[("ctx", i) for i in train[1:]],
            valid_item=valid, test_item=test, valid_negatives=[], test_negatives=[],
            train_segments=[segs for _ in train[1:]], valid_segments=segs, seen_items=[*train, valid, test],
            train_items=train))
    return out


def _model(texts: dict[str, str], cfg: SeqConfig = TOWER) -> SeqRecModel:
    backbone = tiny_backbone()
    catalog = sorted(texts)
    vectors, tower = item_text_inputs(backbone, cfg, catalog, texts)
    return SeqRecModel(cfg, catalog, vectors, text_tower=tower)


def _backbone_weights(model: SeqRecModel) -> dict[str, torch.Tensor]:
    assert model.text_tower is not None
    return {k: v.detach().clone() for k, v in model.text_tower.backbone.model.state_dict().items()}


def test_fresh_tower_gives_the_frozen_vectors_and_training_moves_them() -> None:
    """At init (LoRA B = 0) the tower's vectors are the frozen backbone's; after training the global bank the
    adapters have moved, the item text vectors differ, and what scoring reads is the new weights' exact table."""
    # Prepare
    texts = _texts()
    model = _model(texts)
    catalog = sorted(texts)
    frozen = frozen_item_vectors(tiny_backbone(), catalog, texts)
    with torch.no_grad():
        before = model.item_text_vectors()[1:].clone()
    # Execute
    train_seq(model, _records(catalog), SeqTrainConfig(epochs=3, batch_size=8, lr=1e-2), [GLOBAL])
    with torch.no_grad():
        after = model.item_text_vectors()[1:]
    # Assert
    assert torch.allclose(before, frozen, atol=1e-5)
    assert float((after - before).abs().max()) > 1e-3
    assert model.text_tower is not None
    exact = model.text_tower.encode(torch.arange(len(catalog)))
    assert torch.allclose(after, exact, atol=1e-6)
    lora_b = [p for k, p in model.global_bank.named_parameters() if k.startswith("text_adapters") and "lora_B" in k]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)


def test_adapters_receive_gradients_only_through_the_batch_items() -> None:
    """A loss on the item table sends gradients to every tower adapter tensor; the focus rows carry gradient,
    the rest of the table is the no-gradient table (so only the batch's items cost a backward pass)."""
    # Prepare
    model = _model(_texts())
    model.train(True)
    params = model.trainable_parameters([GLOBAL])
    assert model.text_tower is not None
    adapters = dict(model.text_tower.adapters.named_parameters())
    with torch.no_grad():  # B away from zero, so that A gets a gradient too
        for name, p in adapters.items():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    focus = torch.tensor([3, 5, 5, 7])
    # Execute
    vectors = model.item_text_vectors(focus)
    probe = torch.zeros_like(vectors)
    probe[4] = 1.0  # row 4 = item index 4 is outside the focus
    outside = torch.autograd.grad((vectors * probe).sum(), list(adapters.values()), allow_unused=True)
    model.item_table(text=model.item_text_vectors(focus)).pow(2).sum().backward()
    # Assert
    assert params and all(o is None or float(o.abs().sum()) == 0 for o in outside)
    for name, p in adapters.items():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_backbone_never_changes_and_never_enters_the_state() -> None:
    """Training the global bank leaves every backbone tensor bit-identical; the state holds the adapters under
    "global::text_adapters." and nothing that looks like (or is shaped like the whole of) a backbone weight."""
    # Prepare
    model = _model(_texts())
    backbone_before = _backbone_weights(model)
    # Execute
    train_seq(model, _records(sorted(_texts())), SeqTrainConfig(epochs=2, batch_size=8, lr=1e-2), [GLOBAL])
    state = model.adapter_state()
    # Assert
    backbone_after = _backbone_weights(model)
    assert backbone_before.keys() == backbone_after.keys()
    for key, value in backbone_before.items():
        assert torch.equal(value, backbone_after[key]), key
    tower_keys = [k for k in state if k.startswith("global::text_adapters.")]
    assert tower_keys and not any(looks_like_backbone(k) for k in state)
    assert model.text_tower is not None
    n_adapter = sum(p.numel() for p in model.text_tower.parameters())
    assert sum(state[k].numel() for k in tower_keys) == n_adapter
    backbone_ids = {id(p) for p in model.text_tower.backbone.model.parameters()}
    assert not any(id(p) in backbone_ids for p in model.parameters())
    assert all(not p.requires_grad for p in model.text_tower.backbone.model.parameters())


def test_lower_states_are_cached_per_backbone_and_text() -> None:
    """A second tower on the same backbone and texts encodes nothing; a changed text encodes that text only; a
    backbone with other weights under the same source name encodes everything again."""
    # Prepare
    texts = [f"{w} {j}" for j, w in enumerate(WORDS)]
    cfg = TextTowerConfig(layers=1)
    LOWER_STATES.clear()
    # Execute
    first = TextTower(tiny_backbone(), cfg, texts).lower_states()
    misses_first = LOWER_STATES.misses
    again = TextTower(tiny_backbone(), cfg, texts).lower_states()
    misses_again = LOWER_STATES.misses
    changed = TextTower(tiny_backbone(), cfg, [*texts[:-1], "a changed text"]).lower_states()
    misses_changed = LOWER_STATES.misses
    other = TextTower(tiny_backbone(seed=1), cfg, texts).lower_states()
    # Assert
    assert misses_first == len(texts) and misses_again == misses_first
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert misses_changed == misses_first + 1
    assert all(torch.equal(a, b) for a, b in zip(first[:-1], changed[:-1], strict=True))
    assert LOWER_STATES.misses == misses_changed + len(texts)
    assert not torch.allclose(other[0], first[0])


def test_tower_config_errors_are_named() -> None:
    """A kind that reaches below the top layers (prompt), too many layers, and a tower without its switch."""
    texts = _texts(8)
    with pytest.raises(ValueError, match="kind 'prompt'"):
        _model(texts, replace(TOWER, text_adapter_kind="prompt"))
    with pytest.raises(ValueError, match="top_layers=5"):
        _model(texts, replace(TOWER, text_adapters=5))
    with pytest.raises(ValueError, match="text_adapters must be >= 0"):
        SeqConfig(text_adapters=-1)
    with pytest.raises(ValueError, match="needs a text tower exactly when"):
        SeqRecModel(SeqConfig(dim=16, heads=2), sorted(texts), torch.zeros(8, 32),
                    text_tower=TextTower(tiny_backbone(), TextTowerConfig(layers=1), list(texts.values())))
    with pytest.raises(ValueError, match="seq-text-adapters must be >= 0"):
        FedConfig.from_run_config({"arch": SEQ, "seq-text-adapters": -1})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seq-tower-data") / "data"
    write_marketplace(generate_marketplace(60, 200, seed=5), folder)
    return folder


def test_tower_adapters_federate_as_global_bank_keys(data_dir: Path) -> None:
    """With seq-text-adapters=1 the server's initial state (built without encoding any text) has the tower's
    adapter keys in the global bank, equal to a client's fresh model; they survive the wire records; a client that
    loads changed adapter values serves changed item vectors."""
    # Prepare
    cfg = FedConfig.from_run_config({"arch": SEQ, "seq-dim": 16, "seq-max-len": 20, "backbone": "tiny",
                                     "seq-text-adapters": 1, "data-dir": str(data_dir)})
    data = task.client_data(cfg, 0, 2)
    LOWER_STATES.clear()
    # Execute
    server = task.initial_state(cfg, data.adapter_names)
    encoded_by_server = LOWER_STATES.misses
    banks = initial_banks(cfg, [n for n in data.adapter_names if n != GLOBAL])
    model = seq_task.new_model(cfg, data.item_texts, torch.zeros(len(data.item_texts), 32), data.adapter_names,
                               backbone=task.backbone_for(cfg.backbone))
    client_side = seq_task.arrays(model, data.adapter_names)
    wire = from_record(to_record(server))
    before = model.item_text_vectors().clone()
    changed = {k: (v + 0.05 if "text_adapters" in k and "lora_B" in k else v) for k, v in wire.items()}
    seq_task.load_received(model, data.adapter_names, changed)
    with torch.no_grad():
        after = model.item_text_vectors()
    # Assert
    tower_keys = sorted(k for k in server if k.startswith("global::text_adapters."))
    assert tower_keys and encoded_by_server == 0
    assert set(tower_keys) <= set(banks[GLOBAL])
    assert set(server) == set(client_side) == set(wire)
    for key in server:
        np.testing.assert_array_equal(server[key], client_side[key], err_msg=key)
        np.testing.assert_array_equal(server[key], wire[key], err_msg=key)
    assert float((after - before).abs().max()) > 1e-4
    assert cfg.backbone_adapter_layers == 1


def test_scoring_reads_tower_vectors_of_the_current_weights() -> None:
    """score_catalog after a load of new adapter values scores with the new item vectors (the no-gradient table is
    cached per adapter-weight version, never served stale)."""
    # Prepare
    texts = _texts()
    model = _model(texts)
    history = [[sorted(texts)[0], sorted(texts)[2]]]
    with torch.no_grad():
        model.global_bank.item_rows.normal_(0, 0.0)
        model.global_bank.text_proj.weight.normal_(0, 1.0)
    first = score_catalog(model, history, [{}])
    state = model.adapter_state()
    moved = {k: (v + 0.3 if "lora_B" in k else v) for k, v in state.items()}
    # Execute
    model.load_adapter_state(moved)
    second = score_catalog(model, history, [{}])
    model.load_adapter_state(state)
    third = score_catalog(model, history, [{}])
    # Assert
    assert not np.allclose(first, second)
    np.testing.assert_allclose(first, third, rtol=1e-5, atol=1e-5)


def test_the_whole_catalog_is_reencoded_once_per_epoch_and_batches_cap_their_gradient_items() -> None:
    """Training re-encodes the whole catalog without gradient once per epoch (not per step), and each step runs
    at most `grad_items` items with gradient: what keeps the tower's cost near the frozen model's."""
    # Prepare
    texts = _texts()
    model = _model(texts)
    assert model.text_tower is not None
    tower = model.text_tower
    tower.cfg = replace(tower.cfg, grad_items=3)
    sizes: list[tuple[int, bool]] = []
    encode = tower.encode

    def counted(rows: torch.Tensor) -> torch.Tensor:
        sizes.append((len(rows), torch.is_grad_enabled()))
        return encode(rows)

    tower.encode = counted  # type: ignore[method-assign]
    # Execute
    report = train_seq(model, _records(sorted(texts)), SeqTrainConfig(epochs=2, batch_size=8, lr=1e-2), [GLOBAL])
    # Assert
    full = [s for s in sizes if s == (len(texts), False)]
    with_grad = [n for n, grad in sizes if grad]
    assert len(full) == 2 and report["steps"] == 10
    assert len(with_grad) == 10 and max(with_grad) == 3
