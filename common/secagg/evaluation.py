"""Evaluation sums as secure-aggregation vectors: in a secure run the server learns only cohort sums of them.

A client's evaluation reply is per-segment sums (ndcg@10, hr@10, coverage and users, common/federation/task.py
local_evaluate). In the clear they tell the server one client's quality, and in segment-hidden mode, where a
client evaluates with its own banks among all it receives, which segments it holds: perturb one client's bank
and watch its metrics (issue 23, leak 6). So a secure run evaluates through its own SecAgg+ round
(server/secure_eval.py, client/secure_eval.py) over the vectors defined here:

- one vector per metric row, named by the row's segment label: OVERALL for every client; in segment mode also
  one per segment bank, uploaded by the clients registered with that segment (the server knows who they are,
  as for training); segment-hidden: OVERALL only, so nothing names a client's segments;
- each vector is ROW: [users, ndcg@10 sum, hr@10 sum, coverage sum, 1]; the last slot counts contributors.

A vector with fewer than `eval_min_members` members is not uploaded (clients check it), so a sum is always over
at least max(2, min-segment-clients) clients. Values are bounded by a client's evaluation users, at most
max-client-examples, and encoded in Z_(2^64) whatever `secagg-bits` the training uses (EVAL_BITS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from common.names import OVERALL
from common.protocol import EVAL_METRICS, FedConfig, metric_key
from common.secagg.fixedpoint import FixedPoint
from common.secagg.layout import SEGMENT

EVAL_BITS = 64
PURPOSE = "evaluate"  # how a client marks an evaluation round in its node state (client/secure.py)
ROW = ("users", *EVAL_METRICS, "clients")


def eval_fixed_point(cfg: FedConfig, cohort: int) -> FixedPoint:
    """The encoding of evaluation rows: every value is at most one client's evaluation users."""
    return FixedPoint(EVAL_BITS, 1.0, float(cfg.max_client_examples), cohort)


def eval_min_members(cfg: FedConfig) -> int:
    """The fewest clients an evaluation sum may be over: min-segment-clients, and never one."""
    return max(2, cfg.min_segment_clients)


def row_names(mode: str, segments: Iterable[str]) -> list[str]:
    """The vectors a client of `segments` holds: OVERALL, and in segment mode one per segment."""
    return [OVERALL, *(sorted(set(segments)) if mode == SEGMENT else [])]


def eval_vectors(mode: str, sums: Mapping[str, float], segments: Iterable[str]) -> dict[str, np.ndarray]:
    """A client's evaluation sums as ROW vectors (float64), zeros for a segment without evaluation users;
    rows other than `row_names` are left out (segment-hidden: every per-segment row)."""
    out = {}
    for name in row_names(mode, segments):
        users = float(sums.get(metric_key(name, "users"), 0.0))
        values = [users, *(float(sums.get(metric_key(name, m), 0.0)) for m in EVAL_METRICS), 1.0]
        out[name] = np.asarray(values, dtype=np.float64)
    return out


def plausible(row: np.ndarray) -> bool:
    """Whether a summed row can be honest: whole users and contributors, each metric sum within [0, users]."""
    users, clients = float(row[0]), float(row[-1])
    metrics = row[1:-1]
    whole = abs(users - round(users)) < 1e-3 and abs(clients - round(clients)) < 1e-3
    return whole and users >= 0 and clients >= 1 and bool(np.all(metrics >= -1e-6) and np.all(metrics <= users + 1e-6))


def pooled_metrics(rows: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Decoded summed rows -> the evaluation fields of a metrics line, as server/strategy.py pool_evaluation
    writes them (means over users), with `eval_clients` the contributors of the OVERALL sum; a row that
    cannot be honest is left out and counted in `eval_rejected_reasons`."""
    out: dict[str, Any] = {"eval_clients": 0, "segments": {}}
    rejected = 0
    for name, row in sorted(rows.items()):
        if not plausible(row):
            rejected += 1
            continue
        users = round(float(row[0]))
        means = {m: (float(v) / users if users else float("nan")) for m, v in zip(EVAL_METRICS, row[1:-1], strict=True)}
        means["users"] = float(users)
        if name == OVERALL:
            out.update(means)
            out["eval_clients"] = round(float(row[-1]))
        else:
            out["segments"][name] = means
    out["eval_rejected"] = rejected
    out["eval_rejected_reasons"] = {"eval-sum": rejected} if rejected else {}
    return out
