"""Aggregation math for adapter banks: pure functions on `{key: ndarray}` deltas, no Flower, no torch.

Keys follow the adapter contract "<adapter name>::<param path>", so the bank a tensor belongs to is the part
before "::". The global bank ("global") is averaged over every client that trained it; a segment bank
("region=EU", ...) only over the clients of that segment. Because every adapter kind names its tensors by the
adapter they belong to, the kind-specific rules fall out of this one rule:

- hyper: the hypernetwork lives under "global::" (averaged across everyone), each segment owns only its
  embedding (averaged within the segment);
- mixture: federated as the global adapter only (`global_only` on its registration, common/adapters/mixture.py):
  its experts and gate are averaged across everyone, and the gate, not a segment bank, personalises;
- LoRA with A frozen and shared (FFA-LoRA): only B is trainable and sent, and because A is the same on every
  client, mean_i(B_i) @ A == mean_i(B_i @ A): averaging B is exactly averaging the weight updates. If both A
  and B of a module arrive (A trainable), averaging the factors separately is *not* the mean of the products;
  `lora_factor_pairs` lets the caller detect and log that.

Weights are example counts per bank: a client's delta enters a bank's mean weighted by its training pairs in
that bank (FedAvg), so a client with one prime_day pair weighs 1 in the prime_day bank however many pairs it
has in all; a client with no pair in a bank is not in that bank's cohort.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.names import GLOBAL, bank_of
from common.privacy.dp import CENTRAL, DISTRIBUTED, DPConfig, central_noise, clip_update, enough_shares

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def split_banks(arrays: Mapping[str, np.ndarray]) -> dict[str, Arrays]:
    """Group a flat state by adapter name: {"global": {...}, "region=EU": {...}}."""
    banks: dict[str, Arrays] = {}
    for key, value in arrays.items():
        banks.setdefault(bank_of(key), {})[key] = value
    return banks


def weighted_mean(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> Arrays:
    """Per-key weighted mean of states that share the same keys and shapes; weights need not sum to 1.

    Accumulates in float64 so that the mean of many small fp32 deltas does not lose precision, and casts back
    to the dtype of the first state.
    """
    if not states:
        raise ValueError("weighted_mean of no states")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    keys = set(states[0])
    for i, s in enumerate(states[1:], start=1):
        if set(s) != keys:
            raise ValueError(f"state {i} has keys {sorted(set(s) ^ keys)} that state 0 does not share")
    w = w / w.sum()
    out: Arrays = {}
    for key in states[0]:
        acc = np.zeros(np.shape(states[0][key]), dtype=np.float64)
        for wi, s in zip(w, states, strict=True):
            if np.shape(s[key]) != acc.shape:
                raise ValueError(f"{key}: shape {np.shape(s[key])} differs from {acc.shape}")
            acc += wi * np.asarray(s[key], dtype=np.float64)
        out[key] = acc.astype(np.asarray(states[0][key]).dtype)
    return out


@dataclass
class BankAggregate:
    """The outcome of one round's aggregation.

    mean_deltas: per bank, the weighted mean delta (only banks that had enough contributors);
    contributors: per bank, how many clients trained it (weight > 0); examples: per bank, the summed weights;
    fallback: segment banks held back this round because fewer than `min_clients` trained them (their clients
    still count towards the global bank); noise_short: banks (global included) held back with DP in distributed
    mode because their sum carries fewer than its t noise shares (common/privacy/dp.py).
    """

    mean_deltas: dict[str, Arrays] = field(default_factory=dict)
    contributors: dict[str, int] = field(default_factory=dict)
    examples: dict[str, float] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    noise_short: list[str] = field(default_factory=list)  # DP distributed: fewer contributors than noise shares


def aggregate_banks(
    deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[Mapping[str, float]], min_clients: int = 1
) -> BankAggregate:
    """Weighted mean per bank over the clients with a positive weight in it: "global" across everyone, each
    segment within its cohort. `weights[i]` maps bank -> client i's examples in that bank.

    A segment bank with fewer than `min_clients` contributors is held back this round: averaging one or two
    clients' deltas would reveal them nearly verbatim. The strategy then stops serving it (its users get the
    global adapter alone) until a round releases it again. The global bank is never held back.
    """
    if len(deltas) != len(weights):
        raise ValueError(f"{len(deltas)} deltas but {len(weights)} weights")
    if min_clients < 1:
        raise ValueError(f"min_clients must be >= 1, got {min_clients}")
    cohorts: dict[str, tuple[list[Arrays], list[float]]] = {}
    for delta, bank_weights in zip(deltas, weights, strict=True):
        for bank, arrays in split_banks(delta).items():
            weight = float(bank_weights.get(bank, 0.0))
            if weight <= 0:
                continue
            states, ws = cohorts.setdefault(bank, ([], []))
            states.append(arrays)
            ws.append(weight)
    result = BankAggregate()
    for bank in sorted(cohorts):
        states, ws = cohorts[bank]
        result.contributors[bank] = len(states)
        result.examples[bank] = float(sum(ws))
        if bank != GLOBAL and len(states) < min_clients:
            log.info("segment %s: %d client(s) < %d, falls back to global", bank, len(states), min_clients)
            result.fallback.append(bank)
            continue
        result.mean_deltas[bank] = weighted_mean(states, ws)
    return result


def dp_aggregate_banks(
    deltas: Sequence[Mapping[str, np.ndarray]], weights: Sequence[Mapping[str, float]], min_clients: int,
    dp: DPConfig, rng: np.random.Generator, shares: Mapping[str, int] | None = None,
) -> BankAggregate:
    """`aggregate_banks` under client-level DP (common/privacy/dp.py): every client that trained a bank weighs 1
    in it, and each released bank's mean is its noised sum over its number of contributors.

    central: each delta is clipped here to `dp.clip` (whole update), whatever the client did, and each bank
    sum gets N(0, (sigma*C)^2) once. distributed: deltas arrive clipped and noised by their clients, so they
    are only summed, each over every client it was sent to (one with no pair in a bank still added its share
    there); a bank with fewer contributors than its `shares[bank]` (t) is held back (`noise_short`), since its
    sum would carry less than the full noise.
    """
    if dp.mode == DISTRIBUTED and shares is None:
        raise ValueError("distributed DP needs the noise shares (t) per bank")
    if dp.mode == CENTRAL:
        deltas = [clip_update(d, dp.clip)[0] for d in deltas]
    if dp.mode == DISTRIBUTED:  # every bank a client was sent carries its noise share, trained or not
        uniform = [{bank_of(key): 1.0 for key in delta} for delta in deltas]
    else:
        uniform = [{bank: 1.0 for bank, w in bank_weights.items() if w > 0} for bank_weights in weights]
    result = aggregate_banks(deltas, uniform, min_clients)
    for bank in sorted(result.mean_deltas):
        n = result.contributors[bank]
        if shares is not None and dp.mode == DISTRIBUTED:
            if not enough_shares(n, shares.get(bank, n + 1)):
                log.warning("DP: bank %s has %d contributor(s) < %s noise shares: held back", bank, n,
                            shares.get(bank, "no"))
                result.noise_short.append(bank)
                del result.mean_deltas[bank]
            continue
        mean = result.mean_deltas[bank]
        noised = central_noise({k: np.asarray(v, dtype=np.float64) * n for k, v in mean.items()}, dp, rng)
        result.mean_deltas[bank] = {k: (v / n).astype(np.asarray(mean[k]).dtype) for k, v in noised.items()}
    return result


def lora_factor_pairs(keys: Sequence[str]) -> list[tuple[str, str]]:
    """(A key, B key) pairs where both LoRA factors of a module are present, i.e. A is trainable.

    Averaging A and B separately is then not the mean of the clients' B·A updates; callers log a warning and
    recommend freeze_a (FFA-LoRA), under which aggregation is exact.
    """
    present = set(keys)
    pairs = []
    for key in sorted(present):
        if "lora_A" in key:
            b_key = key.replace("lora_A", "lora_B")
            if b_key in present:
                pairs.append((key, b_key))
    return pairs


def apply_delta(params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], lr: float = 1.0) -> Arrays:
    """params + lr * delta for the keys in delta; other keys unchanged. Unknown delta keys are an error."""
    unknown = sorted(set(delta) - set(params))
    if unknown:
        raise ValueError(f"delta has keys the bank does not: {unknown[:5]}")
    out = {k: np.array(v, copy=True) for k, v in params.items()}
    for key, d in delta.items():
        out[key] = (np.asarray(params[key], dtype=np.float64) + lr * np.asarray(d, dtype=np.float64)).astype(
            np.asarray(params[key]).dtype
        )
    return out
