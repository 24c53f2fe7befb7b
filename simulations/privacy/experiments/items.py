"""Item inference from item-side updates (`fedadapt privacy items`; always the seq model, the arch with them).

The seq model's global bank has a bias and a row per catalog item. A client's plain delta moves the bias of
the items its users picked up (they are training targets) and down for the rest: sorting the catalog by the
delta of the item bias (or by how far each item row moved) is a ranking of what the client's users liked. The
attack: take the top k of that ranking and count how many are the client's users' training positives
(precision@k, recall@k), against the attacker's best blind guess, the k most popular items of his own data
(the shadow pools).

What is left of it:
- plain: the server sees every client's delta (what the federation does without secure aggregation);
- secure aggregation: the server sees only the sum over a cohort of at least min-segment-clients clients; the
  same ranking on the sum is scored against each member of the cohort;
- secure aggregation + DP: each update clipped (whole update) to C = the median update norm and N(0, (sigma C)^2)
  added to the cohort sum (common/privacy/dp.py's clipping, central mode's noise std), sigma calibrated by the
  accountant for each target epsilon over the run's rounds with every client sampled.

The clients are small per-region silos of about CLIENT_USERS members of the target-in pool (cross-device
sized: what one client's delta says is sharper the fewer users it holds).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from common.names import GLOBAL, PER_SEGMENT, SEQ
from common.privacy.dp import DPConfig, central_noise, clip_update, update_norm
from common.rec.seq_train import train_items_of
from simulations.privacy.clients import ClientUpdate, client_updates
from simulations.privacy.registry import Experiment
from simulations.privacy.report import fmt, table
from simulations.privacy.runs import noise_for_epsilon, pool_data
from simulations.privacy.setup import Setup

log = logging.getLogger(__name__)

CLIENT_USERS = 8  # users per client of the item experiment
KS = (10, 20)
COHORTS = (2, 4)  # cohort sizes of the secure sums (2 = the default min-segment-clients)
BIAS_KEY = f"{GLOBAL}::item_bias"
ROWS_KEY = f"{GLOBAL}::item_rows"


def positives(update: ClientUpdate, catalog: Sequence[str]) -> set[int]:
    """Catalog positions of every training positive of the client's users."""
    index = {item: j for j, item in enumerate(catalog)}
    return {index[i] for r in update.records for i in train_items_of(r)}


def signals(delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """(N,) per-item scores of a (summed) delta, padding row dropped: the bias change, and how far each item row
    moved against the rows' common move (the full softmax pushes every non-target row the same way, so the
    rows of targets stand out by moving the other way; a plain row norm ranks them first in one client's
    delta but last in a sum of several, where the common moves add up)."""
    rows = np.asarray(delta[ROWS_KEY])[1:]
    return {"bias": np.asarray(delta[BIAS_KEY])[1:], "rows": -(rows @ rows.mean(axis=0))}


def hits(scores: np.ndarray, truth: set[int], k: int) -> tuple[float, float]:
    """(precision@k, recall@k) of the k highest `scores` against `truth`."""
    top = np.argsort(-scores, kind="stable")[:k]
    found = len(truth.intersection(top.tolist()))
    return found / k, found / max(len(truth), 1)


def popularity_scores(setup: Setup, catalog: Sequence[str]) -> np.ndarray:
    """The attacker's blind guess: how often each item is a positive in his own (shadow) pools."""
    counts = Counter(i for pool in ("shadow-in", "shadow-out") for r in setup.pools[pool] for i in train_items_of(r))
    return np.array([counts.get(item, 0) + 1e-6 * (len(catalog) - j) for j, item in enumerate(catalog)])


def summed(updates: Sequence[ClientUpdate], clip: float | None) -> dict[str, np.ndarray]:
    """The sum of the clients' whole deltas, each clipped to `clip` first (None: as sent)."""
    total: dict[str, np.ndarray] = {}
    for update in updates:
        delta = clip_update(update.delta, clip)[0] if clip is not None else update.delta
        for key in (BIAS_KEY, ROWS_KEY):
            total[key] = total.get(key, 0) + np.asarray(delta[key], dtype=np.float64)
    return total


def cohorts(n: int, size: int, seed: int) -> list[list[int]]:
    """A seeded deal of n clients into cohorts of `size` (the last one absorbs the remainder)."""
    order = np.random.default_rng([seed, size]).permutation(n).tolist()
    groups = [order[i:i + size] for i in range(0, n - n % size, size)]
    if n % size and groups:
        groups[-1].extend(order[n - n % size:])
    return groups


def score_view(updates: Sequence[ClientUpdate], truths: Sequence[set[int]], size: int, seed: int,
               dp: DPConfig | None = None) -> dict[str, dict[str, float]]:
    """Mean precision/recall@k over clients when the server sees sums over cohorts of `size` (1 = plain);
    with `dp`, each update clipped to dp.clip and the central noise of `dp` added to each sum."""
    rng = np.random.default_rng([seed, size, round(dp.noise_multiplier * 1e6) if dp is not None else 0])
    out: dict[str, list[float]] = {}
    for group in cohorts(len(updates), size, seed):
        total = summed([updates[i] for i in group], dp.clip if dp is not None else None)
        if dp is not None:
            total = central_noise(total, dp, rng)
        for name, scores in signals(total).items():
            for i in group:
                for k in KS:
                    p, r = hits(scores, truths[i], k)
                    out.setdefault(f"{name}/precision@{k}", []).append(p)
                    out.setdefault(f"{name}/recall@{k}", []).append(r)
    return {"mean": {key: float(np.mean(v)) for key, v in out.items()}}


def run_items(setup: Setup) -> dict[str, Any]:
    """Plain, secure-sum and DP views of the item-side deltas of small silos of the target-in users."""
    opts = setup.opts
    data = pool_data(setup, "target")
    n_clients = max(2, len(setup.pools["target-in"]) // CLIENT_USERS)
    updates = client_updates(data, n_clients, opts.seed, opts.fed_backbone, SEQ, PER_SEGMENT, epochs=1,
                             batch_size=32, lr=1e-3)
    if len(updates) < 2:
        raise ValueError(f"only {len(updates)} client(s) had users to train; the item experiment needs two")
    catalog = sorted(setup.item_texts)
    truths = [positives(u, catalog) for u in updates]
    guess = popularity_scores(setup, catalog)
    popularity = {f"{k}": [hits(guess, t, k) for t in truths] for k in KS}
    rows: list[dict[str, Any]] = [{"view": "popularity guess (no update seen)", "cohort": 0,
                                   "mean": {f"popularity/{m}@{k}": float(np.mean([h[j] for h in popularity[f"{k}"]]))
                                            for k in KS for j, m in enumerate(("precision", "recall"))}}]
    rows.append({"view": "plain delta", "cohort": 1, **score_view(updates, truths, 1, opts.seed)})
    for size in (s for s in COHORTS if s <= len(updates)):
        rows.append({"view": f"secure sum of {size}", "cohort": size, **score_view(updates, truths, size, opts.seed)})
    size = min(COHORTS[0], len(updates))
    clip = float(np.median([update_norm(u.delta) for u in updates]))
    for eps in sorted(opts.epsilons, reverse=True):
        sigma = noise_for_epsilon(eps, opts.rounds, len(updates), len(updates))
        rows.append({"view": f"secure sum of {size} + DP (target epsilon {eps:g})", "cohort": size, "epsilon": eps,
                     "noise_multiplier": sigma, "clip": clip,
                     **score_view(updates, truths, size, opts.seed, DPConfig(sigma, clip))})
    return {"clients": len(updates), "users_per_client": float(np.mean([len(u.records) for u in updates])),
            "positives_per_client": float(np.mean([len(t) for t in truths])), "catalog": len(catalog),
            "rows": rows}


def section(result: dict[str, Any]) -> list[str]:
    intro = (f"{result['clients']} clients of {fmt(result['users_per_client'], 1)} users on average, "
             f"{fmt(result['positives_per_client'], 1)} training positives per client, catalog of {result['catalog']}. "
             "The server ranks the catalog by the delta of the global item bias (bias) or by how far each item row "
             "moved against the rows' common move (rows) and takes the top k; precision/recall against the "
             "client's users' training positives.")
    columns = [("bias", "precision@10"), ("bias", "recall@10"), ("bias", "precision@20"), ("bias", "recall@20"),
               ("rows", "precision@10"), ("rows", "recall@20")]
    header = ["server's view", "bias P@10", "bias R@10", "bias P@20", "bias R@20", "rows P@10", "rows R@20"]
    rows = []
    for row in result["rows"]:
        mean = row["mean"]  # the popularity row has one value per metric, the same for both signals
        rows.append([row["view"], *(fmt(mean.get(f"{signal}/{metric}", mean.get(f"popularity/{metric}")))
                                    for signal, metric in columns)])
    return ["## Item inference from item-side updates (arch seq)", "", intro, "", *table(header, rows)]


EXPERIMENT = Experiment(name="items", setting="honest round-1 client updates of the seq model",
                        run=lambda setup, runs: run_items(setup), section=section)
