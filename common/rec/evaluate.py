"""Sampled-protocol evaluation of a `RecModel` (and of the popularity baseline) over user records.

Each user's held-out item is ranked against its 99 sampled negatives. Candidate items are encoded once per
evaluation (through `RecModel.item_embeddings`, one pass per distinct item-tower routing), never per user,
which is also how serving works; the reported latency is therefore the user-tower forward plus scoring.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from common.rec.metrics import (
    PopularityScorer,
    aggregate,
    full_ranking_metrics,
    sampled_metrics,
    served_by_segment_adapter,
)
from common.rec.model import RecModel, routing_signature
from common.rec.user_record import RecordLike

log = logging.getLogger(__name__)

SPLITS = ("test", "valid")
LATENCY_PROBES = 16  # single-user requests timed for the per-request latency


def candidates_of(record: RecordLike, split: str) -> list[str]:
    """Held-out item first, then its sampled negatives (the column order `sampled_metrics` expects)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "test":
        return [record.test_item, *record.test_negatives]
    return [record.valid_item, *record.valid_negatives]


def query_of(record: RecordLike, split: str) -> tuple[str, dict[str, str]]:
    """The context text and segments a split is ranked from (the validation item has its own context)."""
    if split == "test":
        return record.context_text, record.segments
    return record.valid_context_text or record.context_text, record.valid_segments or record.segments


def _check(records: Sequence[RecordLike], item_texts: Mapping[str, str], split: str) -> list[list[str]]:
    if not records:
        raise ValueError("no records to evaluate")
    cands = [candidates_of(r, split) for r in records]
    lengths = {len(c) for c in cands}
    if len(lengths) != 1:
        raise ValueError(f"records have different numbers of {split} candidates: {sorted(lengths)}")
    unknown = sorted({i for row in cands for i in row if i not in item_texts})
    if unknown:
        raise ValueError(f"{len(unknown)} candidate item(s) have no text, e.g. {unknown[:3]}")
    return cands


def _summarise(
    per_user: dict[str, np.ndarray], records: Sequence[RecordLike], split: str, extra: dict[str, object]
) -> dict[str, object]:
    result = aggregate(per_user, [query_of(r, split)[1] for r in records])
    result["split"] = split
    result.update(extra)
    return result


@torch.no_grad()
def evaluate(
    model: RecModel,
    records: Sequence[RecordLike],
    item_texts: Mapping[str, str],
    ks: Sequence[int] = (10,),
    split: str = "test",
    batch_size: int = 64,
    full_catalog: bool = False,
) -> dict[str, object]:
    """Overall and per-segment hr@k, ndcg@k, precision@k, recall@k, mrr and coverage, plus latency.

    Sampled protocol by default (held-out item vs its 99 negatives); `full_catalog` ranks it against every
    catalog item the user never interacted with instead. Returns {"overall": {...}, "segments":
    {"region=EU": {..., "users": n}}, "users": U, "split": split, "protocol", "latency_ms_per_user": median
    single-request ms (user forward + scoring + top-k), "batched_ms_per_user", "item_encode_s": seconds spent
    encoding items (once per item-tower routing)}.
    """
    cands = _check(records, item_texts, split)
    model.eval()
    item_start = time.perf_counter()
    queries = [query_of(r, split) for r in records]
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for u, (_, segs) in enumerate(queries):
        groups[routing_signature(model.item_routing([segs]), 0)].append(u)
    catalog = sorted(item_texts)
    tables: dict[tuple[str, ...], tuple[dict[str, int], torch.Tensor]] = {}
    for names, members in groups.items():
        needed = catalog if full_catalog else sorted({i for u in members for i in cands[u]})
        vecs = model.item_embeddings(needed, item_texts, names, batch_size=batch_size)
        tables[names] = ({item: row for row, item in enumerate(needed)}, torch.stack([vecs[i] for i in needed]))
    item_seconds = time.perf_counter() - item_start
    user_group = {u: names for names, members in groups.items() for u in members}

    def rows_of(u: int) -> list[int]:
        index = tables[user_group[u]][0]
        return [index[i] for i in (catalog if full_catalog else cands[u])]

    width = len(catalog) if full_catalog else len(cands[0])
    scores = np.zeros((len(records), width))
    user_start = time.perf_counter()
    for start in range(0, len(records), batch_size):
        chunk = list(range(start, min(start + batch_size, len(records))))
        chunk_segs = [queries[u][1] for u in chunk]
        users = model.encode_users([queries[u][0] for u in chunk], model.user_routing(chunk_segs))
        for row, u in enumerate(chunk):
            matrix = tables[user_group[u]][1]
            scores[u] = model.score(users[row : row + 1], matrix[rows_of(u)])[0].cpu().numpy()
    batched_ms = (time.perf_counter() - user_start) * 1000 / len(records)

    latencies = []
    for u in range(min(LATENCY_PROBES, len(records))):
        t0 = time.perf_counter()
        text, segs_u = queries[u]
        vec = model.encode_users([text], model.user_routing([segs_u]))
        model.score(vec, tables[user_group[u]][1][rows_of(u)]).topk(max(ks))
        latencies.append((time.perf_counter() - t0) * 1000)

    if full_catalog:
        column = {item: c for c, item in enumerate(catalog)}
        relevant = [[column[c[0]]] for c in cands]
        seen = [[column[i] for i in getattr(r, "seen_items", r.train_positives) if i in column] for r in records]
        per_user = full_ranking_metrics(scores, relevant, seen, ks)
    else:
        per_user = sampled_metrics(scores, ks)
    per_user["coverage"] = served_by_segment_adapter(
        [segs for _, segs in queries], model.segment_adapters(), model.plan.segment_keys
    )
    extra: dict[str, object] = {
        "protocol": "full" if full_catalog else "sampled",
        "latency_ms_per_user": statistics.median(latencies),
        "batched_ms_per_user": batched_ms,
        "item_encode_s": item_seconds,
    }
    means = {k: round(float(v.mean()), 4) for k, v in per_user.items()}
    log.info("evaluated %d users (%s, %s): %s", len(records), split, extra["protocol"], means)
    return _summarise(per_user, records, split, extra)


def evaluate_popularity(
    records: Sequence[RecordLike],
    item_texts: Mapping[str, str],
    fit_records: Sequence[RecordLike] | None = None,
    ks: Sequence[int] = (10,),
    split: str = "test",
) -> dict[str, object]:
    """The popularity ranking on the same candidates, fitted on training positives of `fit_records`."""
    cands = _check(records, item_texts, split)
    scorer = PopularityScorer.fit(r.train_positives for r in (fit_records if fit_records is not None else records))
    per_user = sampled_metrics(scorer.score(cands), ks)
    per_user["coverage"] = np.zeros(len(records))
    return _summarise(per_user, records, split, {"protocol": "sampled"})
