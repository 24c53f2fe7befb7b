"""Metadata + history -> routed banks -> ranked items, one request or a mixed batch at a time.

The arithmetic is the seq model's own (`SeqRecModel.encode_sequences`, `SegmentBank`, user . item + biases), so
an fp32 exact reply ranks exactly as the federation's evaluation ranks (tests/test_serving.py compares the scores
with `score_catalog`); int8 and the HNSW index (serving/retrieval.py) approximate it. A batch may mix segments:
the user tower runs once over all rows, each segment bank only on its own rows, and each row gets its own banks'
item-bias deltas, so a batch answers exactly what its requests answer one by one (tested).

A request's segment values that have no served bank in the current round fall back to the global bank, and the
reply lists each one with the reason, so a caller can tell "personalised" from "global". A segment key the run has
no banks for is the caller's mistake and is refused (`RequestError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from common.names import GLOBAL, segment_name
from common.rec.seq_model import left_pad, window
from serving.banks import BankSet, BankStore


class RequestError(ValueError):
    """A request the service cannot answer as asked (unknown item, unknown segment key, wrong vector width)."""


@dataclass(frozen=True)
class Query:
    """One request: segment values, history (item ids, oldest first), how many items, and options. `types`: each
    history event's type token (view, click, add_to_cart, purchase, rating1..rating5: what the seq model's user
    tower was trained on); None reads every event as a purchase."""

    segments: Mapping[str, str]
    history: Sequence[str]
    k: int = 10
    exclude_history: bool = True
    include_vector: bool = False
    types: Sequence[str] | None = None


@dataclass(frozen=True)
class Ranked:
    """One recommended item."""

    id: str
    title: str
    score: float


@dataclass
class Recommendation:
    """A ranked reply and how it was made: the round, the banks used and the segments that fell back."""

    round: int
    items: list[Ranked]
    banks: list[str]
    fallbacks: dict[str, str] = field(default_factory=dict)  # segment bank -> why the global bank answered
    user_vector: list[float] | None = None


class Recommender:
    """Answers requests from a `BankStore`'s current bank set (one set per call, see serving/banks.py)."""

    def __init__(self, store: BankStore) -> None:
        self.store = store
        self.titles = store.run.titles
        self.segment_keys = tuple(store.run.cfg.adapter_segment_keys)

    def route(self, bank_set: BankSet, segments: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        """(served segment banks the request passes through, {segment bank: reason} for those that fell back)."""
        unknown = sorted(set(segments) - set(self.segment_keys))
        if unknown:
            raise RequestError(f"unknown segment key(s) {unknown}; this run's segment keys: "
                               f"{', '.join(self.segment_keys) or 'none'}")
        routes, fallbacks = [], {}
        for key in self.segment_keys:
            if key not in segments:
                continue
            name = segment_name(key, segments[key])
            if name in bank_set.served:
                routes.append(name)
            elif name in bank_set.files:
                fallbacks[name] = f"held back in round {bank_set.round} (too few clients); the global bank answers"
            else:
                fallbacks[name] = f"no bank for this segment in round {bank_set.round}; the global bank answers"
        return routes, fallbacks

    def _personalise(self, bank_set: BankSet, users: torch.Tensor,
                     routes: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each row plus its segment banks' residuals (all computed from the tower's output), and the (B, N+1)
        item-bias deltas of each row's banks (None when no row is routed)."""
        out, bias = users.clone(), None
        for name in sorted({n for r in routes for n in r}):
            rows = torch.tensor([i for i, r in enumerate(routes) if name in r])
            bank = self.store.segment(bank_set, name)
            out[rows] += bank(users[rows])
            if bias is None:
                bias = torch.zeros(users.shape[0], bank_set.table.shape[0])
            bias[rows] += bank.item_bias
        return out, bias

    def _ranked(self, bank_set: BankSet, columns: list[int], values: list[float]) -> list[Ranked]:
        catalog = bank_set.model.catalog
        return [Ranked(catalog[c - 1], self.titles.get(catalog[c - 1], ""), float(v))
                for v, c in zip(values, columns, strict=True)]

    @torch.no_grad()
    def user_vectors(self, bank_set: BankSet, queries: Sequence[Query]) -> tuple[
            torch.Tensor, torch.Tensor | None, list[tuple[list[str], dict[str, str]]], list[list[int]]]:
        """The user tower's half for `queries`: (B, d) personalised user vectors, the (B, N+1) segment-bias deltas
        (None when no row is routed), each row's (routes, fallbacks) and its history as catalog indices."""
        tower, retrieval = bank_set.tower, bank_set.retrieval
        routed = [self.route(bank_set, q.segments) for q in queries]
        for q in queries:
            if q.types is not None and len(q.types) != len(q.history):
                raise RequestError(f"history_types has {len(q.types)} entries for a history of {len(q.history)}")
        try:
            indices = [tower.indices(q.history) for q in queries]
            kinds = [tower.type_indices(["purchase"] * len(q.history) if q.types is None else q.types)
                     for q in queries]
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        max_len = tower.cfg.max_len
        seqs, table = retrieval.items.lookup(left_pad([window(ix, max_len) for ix in indices]))
        types = left_pad([window(t, max_len) for t in kinds])
        users = tower.encode_sequences(seqs, table, types)[:, -1]
        users, bias = self._personalise(bank_set, users, [r for r, _ in routed])
        return users, bias, routed, indices

    @torch.no_grad()
    def recommend_batch(self, queries: Sequence[Query]) -> list[Recommendation]:
        """The replies to `queries` (any mix of segments and history lengths), scored together."""
        if not queries:
            return []
        bank_set = self.store.current()
        users, bias, routed, indices = self.user_vectors(bank_set, queries)
        exclude = [sorted(set(ix)) if q.exclude_history else [] for q, ix in zip(queries, indices, strict=True)]
        tops = bank_set.retrieval.top(users, bias, max(q.k for q in queries), exclude)
        return [Recommendation(round=bank_set.round, items=self._ranked(bank_set, cols[:q.k], vals[:q.k]),
                               banks=[GLOBAL, *routes], fallbacks=fallbacks,
                               user_vector=users[i].tolist() if q.include_vector else None)
                for i, (q, (routes, fallbacks), (cols, vals)) in enumerate(zip(queries, routed, tops, strict=True))]

    def recommend(self, segments: Mapping[str, str], history: Sequence[str], k: int,
                  exclude_history: bool = True, include_vector: bool = False,
                  types: Sequence[str] | None = None) -> Recommendation:
        """The top `k` items for a user with these segment values and this history (oldest first)."""
        return self.recommend_batch([Query(segments, history, k, exclude_history, include_vector, types)])[0]

    @torch.no_grad()
    def recommend_vector(self, vector: Sequence[float], segments: Mapping[str, str], k: int) -> Recommendation:
        """The top `k` items for a user vector computed elsewhere (the personalised output of the user tower);
        `segments` add their banks' item-bias deltas, the item side of a segment bank."""
        bank_set = self.store.current()
        dim = bank_set.table.shape[1]
        if len(vector) != dim:
            raise RequestError(f"vector has {len(vector)} values; this run's user vectors have {dim}")
        routes, fallbacks = self.route(bank_set, segments)
        user = torch.tensor([list(vector)], dtype=torch.float32)
        bias = None
        for name in routes:
            delta = self.store.segment(bank_set, name).item_bias.unsqueeze(0)
            bias = delta if bias is None else bias + delta
        cols, vals = bank_set.retrieval.top(user, bias, k, [[]])[0]
        return Recommendation(round=bank_set.round, items=self._ranked(bank_set, cols, vals),
                              banks=[GLOBAL, *routes], fallbacks=fallbacks)
