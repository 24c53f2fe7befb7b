"""Reply validation: one test per rejection reason, plus the accepted case."""

from __future__ import annotations

import numpy as np
import pytest

from server.validate import REASONS, ValidationConfig, looks_like_backbone, validate_reply

SENT = {
    "global::layer.0.down.weight": np.zeros((4, 8), dtype=np.float32),
    "region=EU::layer.0.down.weight": np.zeros((4, 8), dtype=np.float32),
}
CFG = ValidationConfig(max_norm=10.0)


def _good() -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, 0.01, dtype=np.float32) for k, v in SENT.items()}


def test_valid_reply_is_accepted() -> None:
    """A delta with exactly the sent keys, shapes and dtype, finite and small, passes."""
    assert validate_reply(_good(), SENT, 12, CFG) is None


def test_backbone_key_is_rejected() -> None:
    """A reply that sneaks a backbone tensor in is refused even if everything else is fine."""
    delta = _good()
    delta["encoder.layer.0.attention.self.query.weight"] = np.zeros((4, 4), dtype=np.float32)
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "backbone-key"
    assert looks_like_backbone("embeddings.word_embeddings.weight")
    assert not looks_like_backbone("global::encoder.layer.0.attention.output.adapter.down.weight")


def test_unexpected_adapter_key_is_rejected() -> None:
    """An adapter the server did not send (another segment's) is refused."""
    delta = _good()
    delta["region=NA::layer.0.down.weight"] = np.zeros((4, 8), dtype=np.float32)
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "unexpected-key"
    assert "region=NA" in rej.detail


def test_missing_key_is_rejected() -> None:
    """A partial delta would bias the bank mean, so it is refused."""
    delta = _good()
    delta.pop("region=EU::layer.0.down.weight")
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "missing-key"


def test_shape_and_dtype_are_checked() -> None:
    """Wrong shape and wrong dtype each give their own reason."""
    delta = _good()
    delta["global::layer.0.down.weight"] = np.zeros((8, 4), dtype=np.float32)
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "shape"
    delta = _good()
    delta["global::layer.0.down.weight"] = np.zeros((4, 8), dtype=np.float64)
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "dtype"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected(bad: float) -> None:
    """NaN or inf anywhere in the delta is refused."""
    delta = _good()
    delta["region=EU::layer.0.down.weight"][1, 2] = bad
    rej = validate_reply(delta, SENT, 12, CFG)
    assert rej is not None and rej.reason == "non-finite"


def test_norm_bound_is_enforced() -> None:
    """A delta whose L2 norm exceeds the bound is refused; one just below is accepted."""
    delta = {k: np.full(v.shape, 1.0, dtype=np.float32) for k, v in SENT.items()}  # norm = sqrt(64) = 8
    assert validate_reply(delta, SENT, 12, ValidationConfig(max_norm=8.5)) is None
    rej = validate_reply(delta, SENT, 12, ValidationConfig(max_norm=7.5))
    assert rej is not None and rej.reason == "norm"


@pytest.mark.parametrize("n", [0, -3, float("nan"), "12"])
def test_bad_num_examples_is_rejected(n: object) -> None:
    """The aggregation weight must be a positive finite number."""
    rej = validate_reply(_good(), SENT, n, CFG)  # type: ignore[arg-type]
    assert rej is not None and rej.reason == "num-examples"


def test_reasons_are_listed_and_config_validates() -> None:
    """Every reason is in REASONS (used as metric names); a non-positive bound is refused."""
    assert len(set(REASONS)) == len(REASONS) == 8
    with pytest.raises(ValueError, match="max_norm"):
        ValidationConfig(max_norm=0)
