"""What the edge needs, in one safetensors file, and the user tower built back from it (`EdgeTower`).

The file holds the round's int8 item rows with their scales (the tower's input vectors), the global bank's
catalog-free tensors (the user tower itself) and the chosen segment banks' catalog-free tensors (their residual
on the user vector), plus the model shape, the catalog ids and the segment keys as metadata. It holds no text
backbone, no item texts and no catalog-sized float tensor: the item side that only the cloud scores with (the
global and segment item biases) stays there.

Which tensors are "catalog-free" is found without naming the model's internals: two empty models of the same
shape are built over catalogs of different sizes and text widths, and a tensor is kept when its shape is the same
in both. So the export follows `SeqRecModel`'s banks as they change, through its public `adapter_state` and
`load_adapter_state`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.names import GLOBAL, make_key, segment_name, split_key
from common.rec.seq_model import SeqConfig, SeqRecModel, left_pad, window
from serving.banks import BankSet, BankStore
from serving.retrieval import int8_lookup, quantize_tower

ITEMS_Q = "items.q"
ITEMS_SCALE = "items.scale"
PROBE_SEGMENT = "probe=x"


def catalog_free_paths(cfg: SeqConfig) -> dict[str, set[str]]:
    """{'global': paths, 'segment': paths} of bank tensors whose shape depends on neither catalog nor text width."""
    small = SeqRecModel(cfg, ["a"], torch.zeros(1, 1), names=(GLOBAL, PROBE_SEGMENT))
    large = SeqRecModel(cfg, ["a", "b", "c"], torch.zeros(3, 2), names=(GLOBAL, PROBE_SEGMENT))
    a, b = small.adapter_state(), large.adapter_state()
    out: dict[str, set[str]] = {GLOBAL: set(), "segment": set()}
    for key, tensor in a.items():
        if tuple(tensor.shape) == tuple(b[key].shape):
            name, path = split_key(key)
            out[GLOBAL if name == GLOBAL else "segment"].add(path)
    return out


def export_edge(store: BankStore, path: str | Path, segments: Sequence[str] | None = None) -> int:
    """Write the current round's edge file (int8 item rows, the user tower, the segment banks `segments`, default
    every served one) to `path`; returns its size in bytes."""
    bank_set: BankSet = store.current()
    model = bank_set.model
    chosen = sorted(bank_set.served if segments is None else segments)
    unknown = [s for s in chosen if s not in bank_set.served]
    if unknown:
        raise ValueError(f"no served bank {unknown} in round {bank_set.round}; served: {sorted(bank_set.served)}")
    keep = catalog_free_paths(model.cfg)
    tensors: dict[str, torch.Tensor] = {}
    items = bank_set.retrieval.items
    if items.precision == "int8":
        tensors[ITEMS_Q], tensors[ITEMS_SCALE] = items.q, items.scales
    else:
        from serving.retrieval import ItemVectors

        int8 = ItemVectors(bank_set.table, torch.zeros(bank_set.table.shape[0]), "int8")
        tensors[ITEMS_Q], tensors[ITEMS_SCALE] = int8.q, int8.scales
    for key, tensor in model.adapter_state([GLOBAL]).items():
        if split_key(key)[1] in keep[GLOBAL]:
            tensors[key] = tensor
    for name in chosen:
        bank = store.segment(bank_set, name)
        for sub, tensor in bank.state_dict().items():
            if sub in keep["segment"]:
                tensors[make_key(name, sub)] = tensor.detach().clone()
    metadata = {"config": json.dumps(model.cfg.to_dict()), "catalog": json.dumps(list(model.catalog)),
                "segment_keys": json.dumps(list(store.run.cfg.adapter_segment_keys)),
                "banks": json.dumps(chosen), "round": str(bank_set.round), "fingerprint": store.run.fingerprint}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return Path(path).stat().st_size


class EdgeTower:
    """The user tower from an edge file: history and segment values in, personalised user vector out."""

    def __init__(self, path: str | Path, precision: str = "int8") -> None:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        try:
            cfg = SeqConfig(**json.loads(meta["config"]))
            catalog = json.loads(meta["catalog"])
            self.segment_keys = tuple(json.loads(meta["segment_keys"]))
            self.banks = tuple(json.loads(meta["banks"]))
            self.round = int(meta["round"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not an edge file of `fedadapt serve --export-edge` ({exc})") from None
        self.q, self.scales = tensors.pop(ITEMS_Q), tensors.pop(ITEMS_SCALE)
        model = SeqRecModel(cfg, catalog, torch.zeros(len(catalog), 1), names=(GLOBAL, *self.banks))
        model.load_adapter_state(tensors, strict=False)
        model.eval()
        self.model = quantize_tower(model) if precision == "int8" else model

    @torch.no_grad()
    def user_vector(self, segments: Mapping[str, str], history: Sequence[str]) -> list[float]:
        routes = [n for n in (segment_name(k, segments[k]) for k in self.segment_keys if k in segments)
                  if n in self.banks]
        seqs, table = int8_lookup(self.q, self.scales,
                                  left_pad([window(self.model.indices(history), self.model.cfg.max_len)]))
        user = self.model.encode_sequences(seqs, table)[:, -1]
        out = user + sum((self.model.segment_bank(n)(user) for n in routes), torch.zeros_like(user))
        return [float(v) for v in out[0].tolist()]

