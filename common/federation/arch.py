"""One model interface for every recommender the federation trains, and the registry of its implementations.

`arch` (run config, `fedadapt train/bench/privacy --arch`) names an implementation: "text" (the two-tower
`RecModel` with adapter banks, common/federation/text_task.py) or "seq" (the sequential hybrid `SeqRecModel`,
common/federation/seq_task.py). Federation (common/federation/task.py, the client and server), benchmarks,
privacy experiments and the command line call this interface, never a model class, and never branch on the
arch name; facts that only one arch has are methods here (or, where a torch-free caller needs them, properties
of `FedConfig`).

The interface follows RecBole's split (calculate_loss / predict / full_sort_predict): build a model from the
run config, read and load its banks' flat state `{"<bank>::<path>": ndarray}`, train banks on a client's
records, and score a user's candidates or the whole catalog; `evaluate` turns those scores into the metrics
every report shares (common/rec/metrics.py). Models are what each arch makes; callers hold them opaquely.

An implementation satisfies `FederatedArch` structurally (it never imports this module), so this module can
import them all without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from common.federation.client_data import ClientData
from common.federation.seq_task import SeqArch
from common.federation.text_task import TextArch
from common.names import ARCHS
from common.protocol import FedConfig, RoundHParams
from common.rec.user_record import RecordLike

Arrays = dict[str, np.ndarray]
ModelT = TypeVar("ModelT")


class FederatedArch(Protocol[ModelT]):
    """What the federation, benchmarks and privacy experiments need of a recommender architecture."""

    name: str

    def owns(self, model: object) -> bool:
        """Whether `model` is one this arch built (how a caller holding only a model finds its arch)."""

    def build(self, cfg: FedConfig, names: Sequence[str], item_texts: Mapping[str, str] | None = None) -> ModelT:
        """A fresh model with seeded (untrained) banks `names`, global first, on the run's cached backbone; the
        catalog is `item_texts` (read from `cfg.data_dir` when None, by the archs that need it)."""

    def client_model(self, cfg: FedConfig, item_texts: Mapping[str, str]) -> ModelT:
        """The per-process cached model a client reuses across messages, on the run's device; every message
        loads its own banks (`load_state`) before use."""

    def initial_state(self, cfg: FedConfig, names: Sequence[str]) -> Arrays:
        """The starting state of banks `names`: identical on every party for the same run config."""

    def state(self, model: ModelT, names: Sequence[str]) -> Arrays:
        """The trainable tensors of banks `names` as numpy copies (what goes on the wire)."""

    def load_state(self, model: ModelT, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
        """Add missing banks `names`, load exactly their complete state from `received` (anything else is
        refused), and route requests only through `names`."""

    def train_records(self, cfg: FedConfig, data: ClientData) -> list[RecordLike]:
        """The records a client trains on (under max-train-users)."""

    def train_counts(self, cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
        """Training examples per bank for exactly what `train` trains on: the aggregation weights."""

    def train(self, cfg: FedConfig, model: ModelT, records: Sequence[RecordLike], item_texts: Mapping[str, str],
              names: Sequence[str], hp: RoundHParams, seed: int,
              reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """Train banks `names` (the others stay fixed) for `hp`; FedProx towards `reference` when mu > 0.
        Returns at least {"loss", "steps", "seconds"}."""

    def evaluate(self, model: ModelT, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                 ks: Sequence[int] = (10,), split: str = "test", full_catalog: bool = False) -> dict[str, object]:
        """Overall and per-segment metrics (`common.rec.evaluate.evaluate`'s result shape): the held-out item
        against its sampled negatives, or against the full catalog."""

    def score_candidates(self, model: ModelT, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                         split: str = "test") -> np.ndarray:
        """(U, 1 + negatives) scores: each user's held-out item of `split`, then its sampled negatives."""

    def score_catalog(self, model: ModelT, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                      split: str = "test") -> tuple[list[str], np.ndarray]:
        """(catalog ids, (U, len(catalog)) scores): every item of the catalog for each user's `split` query."""


IMPLEMENTATIONS: dict[str, FederatedArch[Any]] = {arch.name: arch for arch in (TextArch(), SeqArch())}
if tuple(IMPLEMENTATIONS) != ARCHS:  # pragma: no cover - an arch named in common/names.py has no implementation
    raise ImportError(f"archs {ARCHS} (common/names.py) but implementations of {tuple(IMPLEMENTATIONS)}")


def arch_for(name: str) -> FederatedArch[Any]:
    """The implementation of arch `name` (a run config's `arch`)."""
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"arch {name!r} is not one of {', '.join(IMPLEMENTATIONS)}") from None


def arch_of(model: object) -> FederatedArch[Any]:
    """The implementation that built `model` (for callers handed a model, e.g. an attack or a benchmark)."""
    for arch in IMPLEMENTATIONS.values():
        if arch.owns(model):
            return arch
    raise ValueError(f"{type(model).__name__} is no model of the archs {', '.join(IMPLEMENTATIONS)}")
