"""The per-user update with the catalog side computed once per round (common/privacy/user_shared.py) gives each
user the same update as the general path (user_updates.user_update), and the silo the same clipped sum."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.arch import arch_for
from common.federation.client_data import ClientData, client_data
from common.federation.round_io import received_banks
from common.federation.task import initial_state
from common.privacy import user_updates
from common.privacy.user_shared import LINEAR_KEYS, SharedItemSide, applies
from common.privacy.user_updates import local_train_users, trained_parameters, user_example, user_update
from common.protocol import FedConfig, RoundHParams
from common.rec.seq_model import TYPE_INDEX, SeqRecModel
from common.rec.seq_train import training_sequence


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> FedConfig:
    root = tmp_path_factory.mktemp("user-shared")
    write_marketplace(generate_marketplace(120, 300, seed=3), root / "data")
    return FedConfig(data_dir=str(root / "data"), backbone="tiny", arch="seq", seq_dim=16, seq_max_len=20,
                     secure_aggregation="segment", client_state_dir=str(root / "state"), dp_noise_multiplier=1.0,
                     dp_clip=0.5, dp_unit="user", dp_user_rate=1.0, dp_user_lr=3.0)


def _trained_banks(cfg: FedConfig) -> dict[str, np.ndarray]:
    """The initial banks moved off zero (the text prior starts at zero), so every gradient term is exercised."""
    rng = np.random.default_rng(0)
    data = client_data(cfg, 0, 3)
    banks = initial_state(cfg, data.adapter_names)
    return {k: v + rng.normal(0, 0.05, v.shape).astype(v.dtype) for k, v in banks.items()}


def _silo_model(cfg: FedConfig) -> tuple[ClientData, SeqRecModel, dict[str, torch.nn.Parameter]]:
    """Silo 0's data, its model holding the moved-off-zero banks (eval mode) and the trained parameters."""
    data = client_data(cfg, 0, 3)
    received = _trained_banks(cfg)
    arch = arch_for("seq")
    model = arch.client_model(cfg, data.item_texts)
    names = received_banks(data, received)
    arch.load_state(model, names, received)
    model.eval()
    return data, model, trained_parameters(model, names)


def test_each_users_update_is_the_general_paths(cfg: FedConfig) -> None:
    data, model, params = _silo_model(cfg)
    assert applies(model, params, 1) and not applies(model, params, 2)
    shared = SharedItemSide(model)
    examples = [e for e in (user_example(model, r) for r in data.train_records()) if e is not None][:12]
    assert len(examples) >= 5
    for ex in examples:
        general, loss = user_update(model, params, ex, 1, cfg.dp_user_lr)
        fast, fast_loss = shared.user_update(model, params, ex, cfg.dp_user_lr)
        assert set(fast) == set(general) and set(LINEAR_KEYS) <= set(fast)
        assert fast_loss == pytest.approx(loss, rel=1e-6)
        for key in general:
            np.testing.assert_allclose(fast[key], general[key], rtol=1e-4, atol=1e-6 * cfg.dp_user_lr, err_msg=key)
        assert any(np.any(fast[k]) for k in LINEAR_KEYS)


def test_the_silos_clipped_sum_is_unchanged(cfg: FedConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same silo round (same users sampled) with the shared catalog side and forced onto the general path."""
    data = client_data(cfg, 0, 3)
    received = _trained_banks(cfg)
    hp = RoundHParams.from_run(cfg, 1)
    fast = local_train_users(cfg, data, received, hp, np.random.default_rng(1))
    monkeypatch.setattr(user_updates, "applies", lambda *_: False)
    general = local_train_users(cfg, data, received, hp, np.random.default_rng(1))
    assert set(fast.delta) == set(general.delta)
    for key in general.delta:
        np.testing.assert_allclose(fast.delta[key], general.delta[key], rtol=1e-4, atol=1e-7, err_msg=key)
    assert any(np.any(general.delta[k]) for k in LINEAR_KEYS)


def test_a_users_private_update_reads_every_typed_event_as_central_training_does(cfg: FedConfig) -> None:
    """The private example holds the user's views and carts with their types (the history evaluation reads),
    targets are the next positives, and the update depends on the types: retyping the events as purchases
    changes it."""
    data, model, params = _silo_model(cfg)
    record, (events, next_items, _) = next((r, seq) for r in data.train_records()
                                           if (seq := training_sequence(r, model.cfg.max_len))[2]
                                           and {t for _, t in seq[0]} - {"purchase"})
    ex = user_example(model, record)
    assert ex is not None
    assert ex.inputs.tolist() == model.indices([i for i, _ in events])
    assert ex.types.tolist() == model.type_indices([t for _, t in events])
    assert ex.targets.tolist() == [0 if t is None else model.index[t] for t in next_items]
    retyped = replace(ex, types=torch.full_like(ex.types, TYPE_INDEX["purchase"]))
    typed, _ = user_update(model, params, ex, 1, cfg.dp_user_lr)
    plain, _ = user_update(model, params, retyped, 1, cfg.dp_user_lr)
    gap = sum(float(np.linalg.norm(typed[k] - plain[k])) for k in typed)
    assert gap > 0.05 * sum(float(np.linalg.norm(v)) for v in typed.values())
