"""Metadata + history -> routed banks -> ranked items, with exact retrieval over the whole catalog.

The arithmetic is the seq model's own (`SeqRecModel.encode_sequences`, `SegmentBank`, `logits`), so a reply
ranks exactly as the federation's evaluation ranks (tests/test_serving.py compares the scores with
`score_catalog`). A request's segment values that have no served bank in the current round fall back to the
global bank, and the reply lists each one with the reason, so a caller can tell "personalised" from "global".
A segment key the run has no banks for is the caller's mistake and is refused (`RequestError`).
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
    """Answers requests from a `BankStore`'s current bank set (one set per request, see serving/banks.py)."""

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

    def _item_bias(self, bank_set: BankSet, routes: Sequence[str]) -> torch.Tensor:
        bias = torch.zeros(bank_set.table.shape[0])
        for name in routes:
            bias = bias + self.store.segment(bank_set, name).item_bias
        return bias

    def _top(self, bank_set: BankSet, scores: torch.Tensor, k: int, exclude: Sequence[int] = ()) -> list[Ranked]:
        """The k best items of (N+1,) scores (column 0 is padding), skipping the columns `exclude`."""
        scores = scores.clone()
        scores[0] = float("-inf")
        if exclude:
            scores[torch.tensor(list(exclude))] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        values, columns = torch.topk(scores, k)
        catalog = bank_set.model.catalog
        return [Ranked(catalog[c - 1], self.titles.get(catalog[c - 1], ""), float(v))
                for v, c in zip(values.tolist(), columns.tolist(), strict=True)]

    @torch.no_grad()
    def recommend(self, segments: Mapping[str, str], history: Sequence[str], k: int,
                  exclude_history: bool = True, include_vector: bool = False) -> Recommendation:
        """The top `k` items for a user with these segment values and this history (oldest first)."""
        bank_set = self.store.current()
        model = bank_set.model
        routes, fallbacks = self.route(bank_set, segments)
        try:
            indices = model.indices(history)
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        seqs = left_pad([window(indices, model.cfg.max_len)])
        user = model.encode_sequences(seqs, bank_set.table)[:, -1]
        user = user + sum((self.store.segment(bank_set, n)(user) for n in routes), torch.zeros_like(user))
        scores = (user @ bank_set.table.T)[0] + model.item_prior() + self._item_bias(bank_set, routes)
        items = self._top(bank_set, scores, k, sorted(set(indices)) if exclude_history else ())
        return Recommendation(round=bank_set.round, items=items, banks=[GLOBAL, *routes], fallbacks=fallbacks,
                              user_vector=user[0].tolist() if include_vector else None)

    @torch.no_grad()
    def recommend_vector(self, vector: Sequence[float], segments: Mapping[str, str], k: int) -> Recommendation:
        """The top `k` items for a user vector computed elsewhere (the personalised output of the user tower);
        `segments` add their banks' item-bias deltas, the item side of a segment bank."""
        bank_set = self.store.current()
        dim = bank_set.table.shape[1]
        if len(vector) != dim:
            raise RequestError(f"vector has {len(vector)} values; this run's user vectors have {dim}")
        routes, fallbacks = self.route(bank_set, segments)
        user = torch.tensor(list(vector), dtype=bank_set.table.dtype)
        scores = bank_set.table @ user + bank_set.model.item_prior() + self._item_bias(bank_set, routes)
        return Recommendation(round=bank_set.round, items=self._top(bank_set, scores, k), banks=[GLOBAL, *routes],
                              fallbacks=fallbacks)
