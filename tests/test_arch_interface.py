"""Both recommender archs satisfy one interface (common/federation/arch.py): built from a run config, their banks'
flat state round-trips, a training step moves only the banks it trains, and candidate scores, full-catalog scores
and the evaluation's metrics are one and the same scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import task
from common.federation.arch import IMPLEMENTATIONS, arch_for, arch_of
from common.federation.client_data import ClientData
from common.names import ARCHS, GLOBAL, SEQ, TEXT, bank_of
from common.protocol import FedConfig, RoundHParams
from common.rec.metrics import sampled_metrics

CLIENTS = 3
OVERRIDES = {TEXT: {"adapter-kind": "lora", "batch-size": 8, "lr": 1e-2},
             SEQ: {"seq-dim": 16, "seq-max-len": 20, "batch-size": 8, "lr": 5e-3}}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("arch-data") / "data"
    write_marketplace(generate_marketplace(120, 300, seed=3), folder)
    return folder


def _setup(arch: str, data_dir: Path) -> tuple[FedConfig, ClientData, list[str]]:
    cfg = FedConfig.from_run_config({"arch": arch, "backbone": "tiny", "data-dir": str(data_dir),
                                     "max-train-users": 12, **OVERRIDES[arch]})
    data = task.client_data(cfg, 0, CLIENTS)
    names = [GLOBAL, data.segment_names[0]]
    return cfg, data, names


def _perturbed(state: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in state.items()}


def _by_bank(state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        out.setdefault(bank_of(key), {})[key] = value
    return out


def test_registry_holds_one_implementation_per_arch_name() -> None:
    """Every arch of the run config has an implementation under its own name; others are refused by name."""
    # Assert
    assert tuple(IMPLEMENTATIONS) == ARCHS
    assert all(arch_for(name).name == name for name in ARCHS)
    with pytest.raises(ValueError, match="arch 'rnn' is not one of text, seq"):
        arch_for("rnn")
    with pytest.raises(ValueError, match="object is no model of the archs text, seq"):
        arch_of(object())


@pytest.mark.parametrize("name", ARCHS)
def test_built_model_starts_from_the_initial_state_and_round_trips_its_banks(name: str, data_dir: Path) -> None:
    """A built model's banks are the run's initial state; a state loaded into a fresh model reads back equal; an
    incomplete state is refused."""
    # Prepare
    cfg, data, names = _setup(name, data_dir)
    arch = arch_for(name)
    model = arch.build(cfg, names, data.item_texts)
    sent = _perturbed(arch.initial_state(cfg, names), seed=1)
    # Execute
    fresh = arch.state(model, names)
    other = arch.build(cfg, names, data.item_texts)
    arch.load_state(other, names, sent)
    read = arch.state(other, names)
    # Assert
    assert arch_of(model) is arch
    assert set(fresh) == set(sent) == set(read)
    assert {bank_of(k) for k in fresh} == set(names)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], arch.initial_state(cfg, names)[key], err_msg=key)
        np.testing.assert_array_equal(read[key], sent[key], err_msg=key)
    with pytest.raises(ValueError, match="missing"):
        arch.load_state(other, names, {k: v for k, v in sent.items() if bank_of(k) == GLOBAL})


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("trained", [GLOBAL, "segment"])
def test_training_moves_only_the_banks_it_trains(name: str, trained: str, data_dir: Path) -> None:
    """One epoch on the client's records changes every trained bank and leaves the other bank bit for bit."""
    # Prepare
    cfg, data, names = _setup(name, data_dir)
    arch = arch_for(name)
    model = arch.build(cfg, names, data.item_texts)
    start = _perturbed(arch.state(model, names), seed=2)
    arch.load_state(model, names, start)
    bank = GLOBAL if trained == GLOBAL else names[1]
    records = arch.train_records(cfg, data)
    # Execute
    stats = arch.train(cfg, model, records, data.item_texts, [bank], RoundHParams(1, 1, 8, 1e-2, 0.0), seed=0)
    after = _by_bank(arch.state(model, names))
    before = _by_bank(start)
    # Assert
    assert stats["steps"] >= 1 and np.isfinite(stats["loss"])
    assert arch.train_counts(cfg, records)[bank] > 0
    assert any(not np.array_equal(after[bank][k], before[bank][k]) for k in before[bank])
    for other in set(names) - {bank}:
        for key in before[other]:
            np.testing.assert_array_equal(after[other][key], before[other][key], err_msg=key)


@pytest.mark.parametrize("name", ARCHS)
def test_candidate_scores_catalog_scores_and_metrics_agree(name: str, data_dir: Path) -> None:
    """A user's candidate scores are its full-catalog scores at those items, and the evaluation's sampled metrics
    are those of the candidate scores."""
    # Prepare
    cfg, data, names = _setup(name, data_dir)
    arch = arch_for(name)
    model = arch.build(cfg, names, data.item_texts)
    arch.load_state(model, names, _perturbed(arch.state(model, names), seed=3))
    records = data.eval_records(10)
    # Execute
    candidates = arch.score_candidates(model, records, data.item_texts)
    catalog, full = arch.score_catalog(model, records, data.item_texts)
    result = arch.evaluate(model, records, data.item_texts, ks=(10,))
    # Assert
    column = {item: c for c, item in enumerate(catalog)}
    assert catalog == sorted(data.item_texts) and full.shape == (len(records), len(catalog))
    assert candidates.shape == (len(records), 1 + len(records[0].test_negatives))
    for u, record in enumerate(records):
        picked = full[u, [column[i] for i in [record.test_item, *record.test_negatives]]]
        np.testing.assert_allclose(candidates[u], picked, rtol=1e-5, atol=1e-5)
    assert float(np.std(candidates)) > 0
    expected = sampled_metrics(candidates.astype(float), (10,))
    assert result["overall"]["ndcg@10"] == pytest.approx(float(expected["ndcg@10"].mean()), abs=1e-6)  # type: ignore[index]
