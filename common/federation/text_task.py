"""What a party does with the text two-tower model (run-config arch=text): the `FederatedArch` of
common/federation/arch.py for `RecModel` (common/rec/model.py) with adapter banks.

The model's banks are the adapters of `AdaptedModel`: state is `{"<adapter name>::<param path>": np.ndarray}`,
trainable tensors only (FFA-LoRA's frozen A is rebuilt from the seed by every party and never sent). A client
trains on (context text, positive item) pairs, each routed through global + the segment adapters of that pair's
own segments, and weights each bank by its pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from common.adapters import AdapterConfig, get_adapter_kind
from common.device import resolve_device
from common.federation import lower_states
from common.federation.backbones import backbone_for
from common.federation.cache import ProcessCache
from common.federation.client_data import ClientData
from common.federation.node_cache import node_cache
from common.names import GLOBAL, TEXT
from common.protocol import FedConfig, RoundHParams, segment_adapter_names
from common.rec.evaluate import candidates_of, evaluate, query_of
from common.rec.model import RecModel, RoutingPlan, routing_signature
from common.rec.train import TrainConfig, train_epochs, training_pairs
from common.rec.user_record import RecordLike

Arrays = dict[str, np.ndarray]

MODELS: ProcessCache[RecModel] = ProcessCache("model", maxsize=2)


def adapter_config(cfg: FedConfig) -> AdapterConfig:
    """The adapter config of the run; a kind that can keep a factor frozen and shared (LoRA's A: FFA-LoRA) does,
    so that averaging the other factor is exact."""
    return AdapterConfig(kind=cfg.adapter_kind, freeze_a=get_adapter_kind(cfg.adapter_kind).supports_freeze_a,
                         seed=cfg.seed, top_layers=cfg.adapter_layers)


def model_for(cfg: FedConfig) -> RecModel:
    """One RecModel per process and (backbone, adapter kind and layers, segment keys, max_len, seed).

    Injection works on a shared-weight copy of the module tree, so several adapted models can share the one
    cached backbone without their adapters stacking. Adapters for segments are added on demand.
    """
    key = (cfg.backbone, cfg.adapter_kind, cfg.adapter_layers, cfg.adapter_segment_keys, cfg.max_len, cfg.seed,
           cfg.lower_cache_mb)
    return MODELS.get(key, lambda: new_model(cfg, [GLOBAL]))


def new_model(cfg: FedConfig, names: Sequence[str]) -> RecModel:
    """A fresh RecModel with untrained (seeded) adapters `names` on the cached backbone."""
    plan = RoutingPlan(user_levels=(GLOBAL, *cfg.adapter_segment_keys), item_levels=(GLOBAL,))
    return RecModel(backbone_for(cfg.backbone), adapter_config(cfg), names=list(names), plan=plan, max_len=cfg.max_len,
                    lower_cache_bytes=cfg.lower_cache_mb << 20)


def adapter_arrays(model: RecModel, names: Sequence[str]) -> Arrays:
    """Trainable adapter tensors of `names` as float32 numpy arrays (copies)."""
    assert model.adapted is not None
    state = model.adapted.adapter_state(names=list(names), trainable_only=True)
    return {k: v.detach().cpu().numpy().copy() for k, v in state.items()}


def bank_example_counts(records: Sequence[RecordLike], keys: tuple[str, ...]) -> dict[str, int]:
    """Training pairs per bank: every pair passes through global and the segment adapters of its own segments
    (a pair's season is the season of that interaction), so each bank is weighted by its own examples."""
    counts: Counter[str] = Counter()
    for pair in training_pairs(records):
        counts[GLOBAL] += 1
        counts.update(segment_adapter_names(pair.segments, keys))
    return dict(counts)


def load_received(model: RecModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
    """Make sure `names` exist, load exactly their trainable tensors from `received`, route only through them."""
    assert model.adapted is not None
    for name in names:
        if name not in model.adapter_names:
            model.add_adapter(name)
    expected = set(model.adapted.adapter_state(names=list(names), trainable_only=True))
    if set(received) != expected:
        extra, missing = sorted(set(received) - expected), sorted(expected - set(received))
        raise ValueError(f"received adapter state does not match adapters {list(names)}: "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    model.adapted.load_adapter_state({k: torch.from_numpy(np.array(v)) for k, v in received.items()}, strict=True)
    model.serving = frozenset(names)
    model.item_cache.clear()


@torch.no_grad()
def user_item_scores(model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str], split: str,
                     items_of: Sequence[Sequence[str]], batch_size: int = 64) -> np.ndarray:
    """(U, I) scores of each user's own list of I items, as `common.rec.evaluate.evaluate` scores them: the user
    tower on the split's query (batches of `batch_size`), the item tower through the user's item routing, each
    item encoded once per routing (`RecModel.item_embeddings` caches them)."""
    widths = {len(items) for items in items_of}
    if len(items_of) != len(records) or len(widths) > 1:
        raise ValueError(f"need one item list per user, all of one length; got {len(items_of)} lists of lengths "
                         f"{sorted(widths)} for {len(records)} users")
    model.eval()
    queries = [query_of(r, split) for r in records]
    routes = [routing_signature(model.item_routing([segs]), 0) for _, segs in queries]
    vectors = {names: model.item_embeddings(sorted({i for u, r in enumerate(routes) if r == names
                                                    for i in items_of[u]}), item_texts, names, batch_size)
               for names in dict.fromkeys(routes)}
    out = np.zeros((len(records), widths.pop() if widths else 0), dtype=np.float32)
    for start in range(0, len(records), batch_size):
        chunk = range(start, min(start + batch_size, len(records)))
        segs = [queries[u][1] for u in chunk]
        users = model.encode_users([queries[u][0] for u in chunk], model.user_routing(segs))
        for row, u in enumerate(chunk):
            items = torch.stack([vectors[routes[u]][i] for i in items_of[u]])
            out[u] = model.score(users[row:row + 1], items)[0].cpu().numpy()
    return out


class TextArch:
    """The text two-tower model with adapter banks (`FederatedArch[RecModel]`)."""

    name = TEXT

    def owns(self, model: object) -> bool:
        return isinstance(model, RecModel)

    def build(self, cfg: FedConfig, names: Sequence[str], item_texts: Mapping[str, str] | None = None) -> RecModel:
        return new_model(cfg, [GLOBAL, *[n for n in names if n != GLOBAL]])

    def client_model(self, cfg: FedConfig, item_texts: Mapping[str, str]) -> RecModel:
        model = model_for(cfg).to_device(resolve_device(cfg.device))
        # lower-layer states kept on the node's disk across messages and runs (common/federation/lower_states.py)
        lower_states.attach(model, cfg.backbone, node_cache(cfg.client_state_dir, cfg.data_dir, cfg.node_cache_mb))
        return model

    def initial_state(self, cfg: FedConfig, names: Sequence[str]) -> Arrays:
        # a fresh model, never the per-process cached one: that one holds whatever a client trained last
        return adapter_arrays(self.build(cfg, names), names)

    def state(self, model: RecModel, names: Sequence[str]) -> Arrays:
        return adapter_arrays(model, names)

    def load_state(self, model: RecModel, names: Sequence[str], received: Mapping[str, np.ndarray]) -> None:
        load_received(model, names, received)

    def train_records(self, cfg: FedConfig, data: ClientData) -> list[RecordLike]:
        return data.train_records(cfg.max_train_users)

    def train_counts(self, cfg: FedConfig, records: Sequence[RecordLike]) -> dict[str, int]:
        return bank_example_counts(records, cfg.adapter_segment_keys)

    def train(self, cfg: FedConfig, model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
              names: Sequence[str], hp: RoundHParams, seed: int,
              reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        tcfg = TrainConfig(epochs=hp.epochs, batch_size=hp.batch_size, lr=hp.lr, max_len=cfg.max_len, seed=seed,
                           prox_mu=hp.proximal_mu, device=cfg.device, negative_pool=cfg.negative_pool)
        return train_epochs(model, records, item_texts, tcfg, names, reference_state=reference)

    def evaluate(self, model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                 ks: Sequence[int] = (10,), split: str = "test", full_catalog: bool = False) -> dict[str, object]:
        return evaluate(model, records, item_texts, ks=ks, split=split, full_catalog=full_catalog)

    def score_candidates(self, model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                         split: str = "test") -> np.ndarray:
        return user_item_scores(model, records, item_texts, split, [candidates_of(r, split) for r in records])

    def score_catalog(self, model: RecModel, records: Sequence[RecordLike], item_texts: Mapping[str, str],
                      split: str = "test") -> tuple[list[str], np.ndarray]:
        catalog = sorted(item_texts)
        return catalog, user_item_scores(model, records, item_texts, split, [catalog] * len(records))
