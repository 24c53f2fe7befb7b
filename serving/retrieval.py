"""The item side of serving, built once per bank set (per round swap), never per request: the item vectors in
fp32 or int8, and optionally an approximate (HNSW) index over them.

Why per bank set: the item vectors are the global bank's (`SeqRecModel.item_table`); segment banks only add an
item-bias delta, so one table (and one index) per round serves every segment's requests.

- fp32: the table as the model computes it; scores are one matrix product over the whole catalog.
- int8: each item row quantised symmetrically with its own scale (a dynamically quantised linear layer whose
  weight is the table, per channel; torch's int8 kernels score it, the user vector quantised per call). The user
  tower is quantised the same way (`torch.ao.quantization.quantize_dynamic` over its Linear layers) and reads its
  input item vectors from the int8 rows.
- hnsw (`index="hnsw"`): a faiss HNSW graph over [item vector, item prior] searched with [user vector, 1]
  (inner product), so the candidates are ranked by the same score exact retrieval uses. The `k + len(exclusions)`
  times `overfetch` best candidates are then rescored exactly (with the request's segment-bias deltas and its
  exclusions), so segment deltas reorder the candidates but cannot bring in an item outside them. Catalogs below
  `ann_min_items` are searched exactly even when an index is asked for (exact is cheap there and never wrong),
  and a row whose candidates run out after exclusions falls back to exact search.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from common.errors import UserError

PRECISIONS = ("fp32", "int8")
INDEXES = ("exact", "hnsw")
M = TypeVar("M", bound=nn.Module)
ANN_LIBRARY = "faiss"  # the faiss-cpu distribution (pyproject.toml)


@dataclass(frozen=True)
class RetrievalOptions:
    """How a bank set scores items: `precision` of the item vectors and user tower, and the `index`."""

    precision: str = "fp32"
    index: str = "exact"
    ann_min_items: int = 20_000  # exact below this many items even with index="hnsw" (see the README's figures)
    hnsw_m: int = 32  # graph degree
    ef_construction: int = 200
    ef_search: int = 128
    overfetch: int = 2  # candidates per item asked for (before the exact rescoring)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.index not in INDEXES:
            raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {self.index!r}")
        for name in ("ann_min_items", "hnsw_m", "ef_construction", "ef_search", "overfetch"):
            if getattr(self, name) < (0 if name == "ann_min_items" else 1):
                raise ValueError(f"{name} must be >= {0 if name == 'ann_min_items' else 1}, got {getattr(self, name)}")
        if self.index == "hnsw":
            ann_library()  # refuse now, before a model is built, when the library is missing


class MissingLibrary(UserError):
    """An option that needs a package this environment lacks (a one-line CLI error, exit 2)."""


def ann_library() -> ModuleType:
    """faiss, or a clear refusal naming the package to install."""
    try:
        return importlib.import_module(ANN_LIBRARY)
    except ImportError:
        raise MissingLibrary("index='hnsw' needs faiss, which is not installed: pip install faiss-cpu "
                           "(pinned in pyproject.toml); exact search needs nothing") from None


def quantize_tower(model: M) -> M:
    """A copy of `model` whose Linear layers run in int8 (weights per channel, activations per call). torch marks
    its quantised-tensor constructors deprecated (in favour of torchao) but they run in the pinned torch; the
    warning is silenced here only."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*", category=UserWarning)
        out = quantize_dynamic(copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return out


def int8_lookup(q: torch.Tensor, scales: torch.Tensor, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(seqs renumbered, their rows dequantised) from int8 rows `q` and per-row `scales`: only the rows the
    sequences use are made float, and padding (0) stays 0."""
    used, inverse = torch.unique(torch.cat([torch.zeros(1, dtype=seqs.dtype), seqs.flatten()]), return_inverse=True)
    return inverse[1:].reshape(seqs.shape), q[used].to(torch.float32) * scales[used].unsqueeze(-1)


def _tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class ItemVectors:
    """The catalog's item vectors (row 0 padding) and global item bias, with full-catalog and per-row scoring."""

    def __init__(self, table: torch.Tensor, bias: torch.Tensor, precision: str) -> None:
        self.precision = precision
        self.bias = bias.detach().to(torch.float32).contiguous()
        table = table.detach().to(torch.float32)
        self.rows_n, self.dim = table.shape
        if precision == "fp32":
            self.table = table.contiguous()
            self.nbytes = _tensor_bytes(self.table)
            return
        linear = nn.Linear(self.dim, self.rows_n, bias=False)
        with torch.no_grad():
            linear.weight.copy_(table)
        self.scorer = quantize_tower(nn.Sequential(linear)).eval()
        weight = self.scorer[0].weight()  # type: ignore[operator]  # a method on quantised Linear; per-row symmetric int8: row ~= q * scale (zero point 0)
        self.q = weight.int_repr().contiguous()
        self.scales = weight.q_per_channel_scales().to(torch.float32).contiguous()
        self.nbytes = _tensor_bytes(self.q, self.scales)

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """(B, d) users -> (B, N+1) user . item + global item bias."""
        if self.precision == "fp32":
            return users @ self.table.T + self.bias
        return self.scorer(users.contiguous()) + self.bias

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The (dequantised) vectors of items `index` (any shape) -> index.shape + (d,)."""
        if self.precision == "fp32":
            return self.table[index]
        return self.q[index].to(torch.float32) * self.scales[index].unsqueeze(-1)

    def lookup(self, seqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(seqs, table) for the user tower: fp32 passes the table; int8 passes only the rows the sequences use,
        dequantised, with the sequences renumbered into them (padding stays 0)."""
        if self.precision == "fp32":
            return seqs, self.table
        return int8_lookup(self.q, self.scales, seqs)

    def augmented(self) -> np.ndarray:
        """(N+1, d+1) float32 [vector, global bias] rows, for an inner-product index searched with [user, 1]."""
        vectors = self.rows(torch.arange(self.rows_n))
        return torch.cat([vectors, self.bias.unsqueeze(1)], dim=1).numpy().astype(np.float32)


class HnswIndex:
    """A faiss HNSW graph (inner product) over the augmented item rows; int8 bank sets store int8 codes in it."""

    def __init__(self, items: ItemVectors, options: RetrievalOptions) -> None:
        faiss = ann_library()
        faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
        rows = items.augmented()[1:]  # no padding row: faiss id j is item j+1
        dim = rows.shape[1]
        index: Any
        if items.precision == "int8":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.train(rows)
        else:
            index = faiss.IndexHNSWFlat(dim, options.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        index.add(rows)
        index.hnsw.efSearch = options.ef_search
        self.index = index
        self.size = rows.shape[0]

    def search(self, users: torch.Tensor, n: int) -> torch.Tensor:
        """(B, d) users -> (B, n) item indices (1-based; -1 where the graph found fewer), best first."""
        query = torch.cat([users, torch.ones(users.shape[0], 1)], dim=1).numpy().astype(np.float32)
        _, ids = self.index.search(np.ascontiguousarray(query), min(n, self.size))
        ids = torch.from_numpy(ids.astype(np.int64))
        return torch.where(ids >= 0, ids + 1, ids)


@dataclass
class Retrieval:
    """A bank set's item side: vectors, an index when one applies, and top-k over them."""

    items: ItemVectors
    index: HnswIndex | None
    options: RetrievalOptions

    @classmethod
    def build(cls, table: torch.Tensor, bias: torch.Tensor, options: RetrievalOptions) -> Retrieval:
        items = ItemVectors(table, bias, options.precision)
        use_index = options.index == "hnsw" and items.rows_n - 1 >= options.ann_min_items
        return cls(items=items, index=HnswIndex(items, options) if use_index else None, options=options)

    @property
    def kind(self) -> str:
        return f"{'hnsw' if self.index is not None else 'exact'}-{self.items.precision}"

    def top(self, users: torch.Tensor, extra_bias: torch.Tensor | None, k: int,
            exclude: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        """Per user row: (item indices, scores) of the best k items, leaving out padding and that row's `exclude`.
        `extra_bias` is (B, N+1) segment-bias deltas or None."""
        if self.index is None:
            return self._exact(users, extra_bias, k, exclude)
        want = [k + len(set(e)) for e in exclude]
        candidates = self.index.search(users, max(want) * self.options.overfetch)
        out: list[tuple[list[int], list[float]]] = []
        for row, cand in enumerate(candidates):
            cand = cand[cand > 0]
            cand = cand[~torch.isin(cand, torch.tensor(exclude[row], dtype=torch.long))]
            if len(cand) < min(k, self.items.rows_n - 1 - len(set(exclude[row]))):  # ran out: exact for this row
                rb = None if extra_bias is None else extra_bias[row:row + 1]
                out.extend(self._exact(users[row:row + 1], rb, k, [exclude[row]]))
                continue
            scores = self.items.rows(cand) @ users[row] + self.items.bias[cand]
            if extra_bias is not None:
                scores = scores + extra_bias[row, cand]
            values, order = torch.topk(scores, min(k, len(cand)))
            out.append((cand[order].tolist(), values.tolist()))
        return out

    def _exact(self, users: torch.Tensor, extra_bias: torch.Tensor | None, k: int,
               exclude: list[list[int]]) -> list[tuple[list[int], list[float]]]:
        scores = self.items.scores(users)
        if extra_bias is not None:
            scores = scores + extra_bias
        scores[:, 0] = float("-inf")
        for row, cols in enumerate(exclude):
            if cols:
                scores[row, torch.tensor(cols, dtype=torch.long)] = float("-inf")
        out = []
        for row in scores:
            n = min(k, int(torch.isfinite(row).sum()))
            values, columns = torch.topk(row, n)
            out.append((columns.tolist(), values.tolist()))
        return out
