"""What a party does with the sequential model (run-config arch=seq): the `FederatedArch` of
common/federation/arch.py for `SeqRecModel`.

The seq model (common/rec/seq_model.py) exposes the same bank surface as the text model's adapters, so the
wire format, the server's validation and its per-bank aggregation are unchanged: state is
`{"<bank>::<path>": np.ndarray}`. What differs is how a party builds the model and what it trains on:

- the catalog is `sorted(item_texts)` of the public product table, the same on every party; each client
  encodes the item texts once per process with its own frozen backbone (`frozen_item_vectors`), the server
  only needs the bank shapes and uses zero text vectors of the backbone's hidden size;
- every bank is seeded from (run seed, bank name), so every party builds identical starting banks;
- a client trains on its users' typed histories (`UserRecord.typed_events`: every interaction with its type,
  targets the training positives; the same records and `seq_train.training_sequence` as central training),
  on the users with at least one training target, and weights each bank by its training targets
  (`seq_train.bank_counts`), the number the server bounds;
- a client's softmax runs over the whole catalog (`mask_unseen=False`), unlike central training: masking the
  items without a local target would leave exactly the rows of the client's own items changed in its update,
  which tells the server which items its users interacted with. Cold items keep their text through ID dropout
  and the text prior.

Nothing here imports task.py or arch.py (they import this module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from common.backbone import Backbone
from common.device import resolve_device
from common.federation.backbones import backbone_for
from common.federation.cache import ProcessCache
from common.federation.client_data import ClientData
from common.federation.seq_vectors import item_vectors
from common.names import GLOBAL, SEQ, SEQ_HEADS
from common.protocol import FedConfig, RoundHParams
from common.rec.evaluate import candidates_of
from common.rec.seq_model import SeqConfig, SeqRecModel, catalog_fingerprint, item_text_inputs
from common.rec.seq_train import (
    SeqTrainConfig,
    bank_counts,
    evaluate_seq,
    history_of,
    score_catalog,
    train_seq,
    training_sequence,
)
from common.rec.user_record import RecordLike

Arrays = dict[str, np.ndarray]

SEQ_MODELS: ProcessCache[SeqRecModel] = ProcessCache("seq-model", maxsize=2)


def seq_config(cfg: FedConfig) -> SeqConfig:
    """The seq model's shape for a run: seq-dim, seq-max-len, the run seed and the item text tower
    (seq-text-adapters top layers with adapters of adapter-kind); the rest SeqConfig's defaults."""
    return SeqConfig(dim=cfg.seq_dim, heads=SEQ_HEADS, max_len=cfg.seq_max_len, seed=cfg.seed,
                     text_adapters=cfg.seq_text_adapters, text_adapter_kind=cfg.adapter_kind)


def user_levels(cfg: FedConfig) -> tuple[str, ...]:
    """The routing levels: global, then every segment key with banks."""
    return (GLOBAL, *cfg.adapter_segment_keys)


def catalog_of(item_texts: Mapping[str, str]) -> list[str]:
    """The model's catalog: every product id, sorted (the same list on every party)."""
    return sorted(item_texts)


def text_vectors(cfg: FedConfig, backbone: Backbone | None, item_texts: Mapping[str, str]) -> torch.Tensor:
    """The frozen backbone's item-text vectors (cut at `max-len` tokens), computed once per process, and read
    from the node's disk cache when it has them (common/federation/seq_vectors.py); with `backbone` None the
    backbone is loaded only when the cache misses."""
    return item_vectors(cfg, catalog_of(item_texts), item_texts, backbone)


def new_model(cfg: FedConfig, item_texts: Mapping[str, str], vectors: torch.Tensor,
              names: Sequence[str] = (GLOBAL,), backbone: Backbone | None = None) -> SeqRecModel:
    """A fresh seq model with seeded banks `names` on `vectors` (real ones, or zeros for the bank shapes).
    With seq-text-adapters > 0 the item text vectors come from a text tower on `backbone` instead (required
    then), and `vectors` only gives their shape."""
    ordered = [GLOBAL, *[n for n in names if n != GLOBAL]]
    scfg, catalog = seq_config(cfg), catalog_of(item_texts)
    tower = None
    if scfg.text_adapters:
        if backbone is None:
            raise ValueError("seq-text-adapters > 0 needs the backbone to build the item text tower")
        _, tower = item_text_inputs(backbone, scfg, catalog, item_texts, max_len=cfg.max_len)
    return SeqRecModel(scfg, catalog, vectors, names=ordered, user_levels=user_levels(cfg), text_tower=tower)


def model_text_vectors(cfg: FedConfig, backbone: Backbone | None, item_texts: Mapping[str, str]) -> torch.Tensor:
    """`text_vectors`, or zeros of their shape when a text tower makes the item text vectors (nothing to encode)."""
    if cfg.seq_text_adapters:
        return torch.zeros(len(item_texts), (backbone or backbone_for(cfg.backbone)).hidden_size)
    return text_vectors(cfg, backbone, item_texts)


def model_for(cfg: FedConfig, backbone: Backbone | None, item_texts: Mapping[str, str]) -> SeqRecModel:
    """One seq model per process and (backbone, shape, segment keys, text max-len, catalog); segment banks are
    added on demand, and every message loads its own bank weights before use. With `backbone` None it is loaded
    only when needed: a text tower, or item vectors missing from the node's disk cache."""
    key = (cfg.backbone, seq_config(cfg), user_levels(cfg), cfg.max_len,
           catalog_fingerprint(catalog_of(item_texts), item_texts))

    def build() -> SeqRecModel:
        tower_backbone = (backbone or backbone_for(cfg.backbone)) if cfg.seq_text_adapters else backbone
        return new_model(cfg, item_texts, model_text_vectors(cfg, tower_backbone, item_texts), backbone=tower_backbone)

    return SEQ_MODELS.get(key, build)


def catalog_texts(data_dir: str) -> dict[str, str]:
    """The public catalog's item texts from a data folder, built as every client builds them."""
    from common.data.examples import build_item_texts
    from common.data.schema import read_marketplace

    if not data_dir:
        raise ValueError("run config data-dir is empty; arch=seq needs the catalog to shape the item banks")
    return build_item_texts(read_marketplace(data_dir).products)


def initial_state(cfg: FedConfig, names: Sequence[str], backbone: Backbone) -> Arrays:
    """The starting banks `names` for the data folder's catalog. Text vectors are zeros: the banks' shapes and
    seeded values depend only on the catalog size, the backbone's hidden size (and, with seq-text-adapters,
    its layout: the text tower's adapters are seeded, and never run here) and the seq config. With init-banks,
    every bank of `names` that the folder holds starts from its tensors instead (`init_banks_state`)."""
    texts = catalog_texts(cfg.data_dir)
    model = new_model(cfg, texts, torch.zeros(len(texts), backbone.hidden_size), names, backbone=backbone)
    state = arrays(model, names)
    if cfg.init_banks:
        state.update(init_banks_state(cfg, texts, state))
    return state


SHAPE_FIELDS = ("dim", "layers", "heads", "max_len", "segment_rank", "text_adapters", "text_adapter_kind")


def check_init_banks(cfg: FedConfig, item_texts: Mapping[str, str]) -> dict[str, object]:
    """init-banks' seq.json, checked against this run (ValueError naming what differs): the same catalog (ids and
    texts) and the same model shape as the run config builds. Reads no tensor, so preflight can afford it."""
    import json
    from pathlib import Path

    from common.rec.seq_modes import BANKS_FILE, BANKS_META

    folder = Path(cfg.init_banks)
    for name in (BANKS_META, BANKS_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"init-banks {folder}: no {name} (expected a folder written by fedadapt train --arch seq)")
    try:
        meta = json.loads((folder / BANKS_META).read_text())
        saved, items = dict(meta["seq"]), int(meta["items"])
        fingerprint = str(meta["catalog"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"init-banks {folder}/{BANKS_META} is not a seq model description: {exc}") from None
    catalog = catalog_of(item_texts)
    if fingerprint != catalog_fingerprint(catalog, item_texts):
        raise ValueError(f"init-banks {folder} was trained on another catalog ({items} items) than data-dir's "
                         f"({len(catalog)} items)")
    wanted = seq_config(cfg).to_dict()
    differ = [f"{k} {saved.get(k)!r} (run: {wanted[k]!r})" for k in SHAPE_FIELDS if saved.get(k) != wanted[k]]
    if differ:
        raise ValueError(f"init-banks {folder} has another model shape: {', '.join(differ)}")
    return meta


def init_banks_state(cfg: FedConfig, item_texts: Mapping[str, str], seeded: Mapping[str, np.ndarray]) -> Arrays:
    """The tensors of init-banks for the banks of `seeded` the folder holds, each bank whole: its keys and shapes
    exactly the seeded bank's (a partial bank would mix two models). Banks the folder lacks are left out."""
    from safetensors.numpy import load_file

    from common.names import bank_of
    from common.rec.seq_modes import BANKS_FILE

    check_init_banks(cfg, item_texts)
    try:
        saved = load_file(f"{cfg.init_banks}/{BANKS_FILE}")
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"init-banks {cfg.init_banks}/{BANKS_FILE} cannot be read: {exc}") from None
    out: Arrays = {}
    for bank in sorted({bank_of(k) for k in seeded}):
        mine = {k for k in seeded if bank_of(k) == bank}
        theirs = {k for k in saved if bank_of(k) == bank}
        if not theirs:
            continue
        if theirs != mine:
            raise ValueError(f"init-banks {cfg.init_banks}: bank {bank!r} does not match the run's: unexpected "
                             f"{sorted(theirs - mine)[:3]}, missing {sorted(mine - theirs)[:3]}")
        for key in sorted(mine):
            if saved[key].shape != seeded[key].shape:
                raise ValueError(f"init-banks {cfg.init_banks}: {key} has shape {saved[key].shape}, the run's "
                                 f"{seeded[key].shape}")
            out[key] = np.array(saved[key], dtype=np.float32)
    return out


def arrays(model: SeqRecModel, names: Sequence[str]) -> Arrays:
    """The banks `names` as float32 numpy arrays (copies)."""
    return {k: v.cpu().numpy().copy() for k, v in model.adapter_state(list(names)).items()}


def load_received(model: SeqRecModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
    """Make sure `names` exist, load exactly their tensors from `received`, route only through them; the
    received keys must be the complete state of `names` (a partial load would keep another client's values)."""
    for name in names:
        if name not in model.adapter_names:
            model.add_adapter(name)
    expected = set(model.adapter_state(list(names)))
    if set(received) != expected:
        extra, missing = sorted(set(received) - expected), sorted(expected - set(received))
        raise ValueError(f"received bank state does not match banks {list(names)}: "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    model.load_adapter_state({k: torch.from_numpy(np.array(v)) for k, v in received.items()}, strict=True)
    model.serving = frozenset(names)


def train_records(data: ClientData, limit: int = 0, max_len: int = 200) -> list[RecordLike]:
    """The users a client trains on: those with a training target (a training positive after an earlier
    event of theirs), the first `limit` of them when max-train-users is set."""
    usable = [r for r in data.records if training_sequence(r, max_len)[2]]
    return usable[:limit] if limit else usable


def counts(cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
    """Training targets per bank (the aggregation weights), for exactly what `train_seq` trains on."""
    return bank_counts(records, cfg.adapter_segment_keys, cfg.seq_max_len)


def train(model: SeqRecModel, records: Sequence[RecordLike], names: Sequence[str], hp: RoundHParams, seed: int,
          reference: Mapping[str, torch.Tensor] | None, device: str = "cpu") -> dict[str, float]:
    """Train the banks `names` for the round: batch-size users per step, Adam at lr, FedProx when mu > 0."""
    tcfg = SeqTrainConfig(epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, prox_mu=hp.proximal_mu, seed=seed,
                          device=device, mask_unseen=False)  # the full softmax: see the module docstring
    return train_seq(model, records, tcfg, names, reference_state=reference)


def evaluate(model: SeqRecModel, records: Sequence[RecordLike], ks: Sequence[int]) -> dict[str, object]:
    """Sampled evaluation (held-out item vs its 99 negatives), the result shape of common.rec.evaluate."""
    return evaluate_seq(model, records, ks=ks)


class SeqArch:
    """The sequential hybrid model with its named banks (`FederatedArch[SeqRecModel]`)."""

    name = SEQ

    def owns(self, model: object) -> bool:
        return isinstance(model, SeqRecModel)

    def build(self, cfg: FedConfig, names: Sequence[str], item_texts: Mapping[str, str] | None = None) -> SeqRecModel:
        texts = item_texts if item_texts is not None else catalog_texts(cfg.data_dir)
        backbone = backbone_for(cfg.backbone)
        return new_model(cfg, texts, model_text_vectors(cfg, backbone, texts), names, backbone=backbone)

    def client_model(self, cfg: FedConfig, item_texts: Mapping[str, str]) -> SeqRecModel:
        return model_for(cfg, None, item_texts).to(resolve_device(cfg.device))  # no backbone on a warm node

    def initial_state(self, cfg: FedConfig, names: Sequence[str]) -> Arrays:
        return initial_state(cfg, names, backbone_for(cfg.backbone))

    def state(self, model: SeqRecModel, names: Sequence[str]) -> Arrays:
        return arrays(model, names)

    def load_state(self, model: SeqRecModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
        load_received(model, names, received)

    def train_records(self, cfg: FedConfig, data: ClientData) -> list[RecordLike]:
        return train_records(data, cfg.max_train_users, cfg.seq_max_len)

    def train_counts(self, cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
        return counts(cfg, records)

    def train(self, cfg: FedConfig, model: SeqRecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
              names: Sequence[str], hp: RoundHParams, seed: int,
              reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        return train(model, records, names, hp, seed, reference, cfg.device)

    def evaluate(self, model: SeqRecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                 ks: Sequence[int] = (10,), split: str = "test", full_catalog: bool = False) -> dict[str, object]:
        return evaluate_seq(model, records, ks=ks, split=split, full_catalog=full_catalog)

    def score_candidates(self, model: SeqRecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                         split: str = "test") -> np.ndarray:
        catalog, scores = self.score_catalog(model, records, item_texts, split)
        column = {item: c for c, item in enumerate(catalog)}
        return np.stack([scores[u, [column[i] for i in candidates_of(r, split)]] for u, r in enumerate(records)])

    def score_catalog(self, model: SeqRecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                      split: str = "test") -> tuple[list[str], np.ndarray]:
        queries = [history_of(r, split) for r in records]
        return list(model.catalog), score_catalog(model, [q[0] for q in queries], [q[1] for q in queries])
