"""Segment inference (`fedadapt privacy segment`): how well the server guesses a client's segment (its region).

The clients are small per-region silos (about CLIENT_USERS users each, `common.federation.client_data` with the
per-segment partition) whose honest round-1 updates come from the client's own code (privacy_clients.py). The
server's view in each mode is built with the protocol's own objects, never assumed:

- plain: the train reply's keys name the client's segment banks ("region=Europe::..."): the server knows the
  segment by protocol. The experiment still asks what the numbers alone say: a classifier on the reply's
  GLOBAL-bank delta (the bank every client shares) -> region.
- segment-visible secure (secure-aggregation=segment): each client uploads one masked vector per bank it holds,
  named by the bank, so the vector names (and the registration that routes the cohorts) give the segment by
  protocol; the masked values themselves are uniform ring elements.
- segment-hidden secure: each client uploads ONE masked vector (HIDDEN_VECTOR) with a slot for every bank of
  the run; the server sees its name, its length (the same for everyone) and uniform values. The same
  classifier on the masked words of the global bank's slots -> region.

The masked vectors are those of real SecAgg+ rounds (common/secagg: `client_vectors`, `FixedPoint`,
`run_in_memory` with every client's keys, shares and masks) over cohorts of COHORT clients; each round's
unmasked totals are compared with the plain sums (largest error reported). Accuracy is 5-fold
cross-validated (seeded) against chance = the share of the most common region.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import NearestCentroid

from common.names import GLOBAL, PER_SEGMENT, bank_of, split_segment_name
from common.secagg.layout import HIDDEN_VECTOR, SEGMENT, SEGMENT_HIDDEN, BankLayout, bank_layouts
from simulations.privacy.clients import ClientUpdate, client_updates
from simulations.privacy.registry import Experiment
from simulations.privacy.report import fmt, table
from simulations.privacy.setup import Setup

log = logging.getLogger(__name__)

CLIENT_USERS = 8  # users per client
COHORT = 8  # clients per secure round
SEGMENT_KEY = "region"  # the label: the per-segment partition gives each client one region
SECAGG_BITS = 64
CLIP = 1.0  # per-coordinate clip of the secure vectors (common/secagg/layout.py)
FOLDS = 5


def region_of(update: ClientUpdate) -> str:
    return next(split_segment_name(s)[1] for s in update.segments if split_segment_name(s)[0] == SEGMENT_KEY)


def flat(delta: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(delta[k], dtype=np.float64).ravel() for k in sorted(delta)])


def classify(features: np.ndarray, labels: Sequence[str], seed: int) -> dict[str, float]:
    """Cross-validated accuracy of a nearest-centroid classifier features -> label, and chance (majority share).

    Nearest centroid on the raw vectors: the deltas have far more coordinates than there are clients, and on
    them it beat a logistic regression (raw or after PCA) in trials on these deltas (tiny backbone, 49 clients:
    0.59 against 0.39-0.47 for text, 0.55 against 0.18-0.45 for seq)."""
    y = np.asarray(labels)
    folds = KFold(n_splits=min(FOLDS, len(y)), shuffle=True, random_state=seed)
    predicted = cross_val_predict(NearestCentroid(), features, y, cv=folds)
    return {"accuracy": float(np.mean(predicted == y)), "chance": Counter(labels).most_common(1)[0][1] / len(y),
            "clients": len(y), "classes": len(set(labels))}


def by_protocol(names_per_client: Sequence[Sequence[str]], labels: Sequence[str]) -> float:
    """Share of clients whose own messages name their region's bank (what the server reads, no learning)."""
    found = [f"{SEGMENT_KEY}={label}" in {bank_of(n) if "::" in n else n for n in names}
             for names, label in zip(names_per_client, labels, strict=True)]
    return float(np.mean(found))


def run_layouts(updates: Sequence[ClientUpdate]) -> dict[str, BankLayout]:
    """The layout of every bank any client trained (what the hidden mode's one vector has slots for)."""
    every_bank: dict[str, np.ndarray] = {}
    for update in updates:
        every_bank.update(update.delta)
    return bank_layouts(every_bank)


def secure_rounds(updates: Sequence[ClientUpdate], mode: str, seed: int) -> tuple[list[dict[str, np.ndarray]], float]:
    """What the server receives from each client in SecAgg+ rounds of `mode` over cohorts of COHORT clients,
    and the largest error of the unmasked totals against the plain (clipped, weighted) sums."""
    from common.secagg.fixedpoint import FixedPoint
    from common.secagg.inmemory import run_in_memory
    from common.secagg.layout import client_vectors, vector_lengths
    from common.secagg.server import RoundSpec

    layouts_all = run_layouts(updates)
    weight_cap = max(max(u.bank_examples.values()) for u in updates)
    received: list[dict[str, np.ndarray]] = [{} for _ in updates]
    worst = 0.0
    order = np.random.default_rng([seed, 0x5A]).permutation(len(updates)).tolist()
    for start in range(0, len(order), COHORT):
        group = order[start:start + COHORT]
        if len(group) < 2:
            group = order[start - 1:start + 1]  # a lone last client joins the previous one's round again
        codec = FixedPoint(SECAGG_BITS, CLIP, float(weight_cap), len(group))
        plain: dict[int, dict[str, np.ndarray]] = {}
        for i in group:
            layouts = {b: layouts_all[b] for b in updates[i].bank_examples} if mode == SEGMENT else layouts_all
            plain[i + 1] = client_vectors(mode, layouts, updates[i].delta,
                                          {b: float(w) for b, w in updates[i].bank_examples.items()}, CLIP)
        lengths = vector_lengths(mode, layouts_all)
        members = {name: tuple(n for n in plain if name in plain[n]) for name in lengths}
        spec = RoundSpec(run_id=seed, server_round=1, cohort=tuple(sorted(plain)),
                         vectors={name: (m, lengths[name]) for name, m in members.items() if m})
        result = run_in_memory(spec, {n: {k: codec.encode(v) for k, v in vecs.items()} for n, vecs in plain.items()})
        for node, vectors in result.server.masked.items():
            received[node - 1] = vectors
        for name, total in result.totals.items():
            expected = sum(plain[n][name] for n in members[name])
            worst = max(worst, float(np.max(np.abs(codec.decode(total) - expected))))
    return received, worst


def masked_global(received: dict[str, np.ndarray], mode: str, layouts: dict[str, BankLayout]) -> np.ndarray:
    """The masked words that carry the global bank, as floats in [0, 1): its own vector (segment mode) or the
    global bank's slots inside the hidden vector (banks laid out in sorted order)."""
    if mode == SEGMENT:
        words = received[GLOBAL]
    else:
        start = sum(lay.length for bank, lay in layouts.items() if bank < GLOBAL)
        words = received[HIDDEN_VECTOR][start:start + layouts[GLOBAL].length]
    return words.astype(np.float64) / 2.0**SECAGG_BITS


def uniformity(words: np.ndarray) -> float:
    """Kolmogorov-Smirnov p-value of masked words (scaled to [0, 1)) against the uniform distribution."""
    from scipy.stats import kstest

    return float(kstest(words.ravel(), "uniform").pvalue)


def run_segment(setup: Setup) -> dict[str, Any]:
    """Plain, segment-visible and segment-hidden views of round-1 updates of small per-region silos."""
    opts = setup.opts
    usable = len(setup.records)
    updates = client_updates(opts.data_dir, max(COHORT, usable // CLIENT_USERS), opts.seed, opts.fed_backbone,
                             opts.arch, PER_SEGMENT)
    labels = [region_of(u) for u in updates]
    plain = np.stack([flat(u.bank_delta(GLOBAL)) for u in updates])
    rows: list[dict[str, Any]] = [
        {"mode": "plain", "seen": "every delta in the clear; reply keys name the segment banks",
         "by_protocol": by_protocol([list(u.delta) for u in updates], labels),
         "classifier": classify(plain, labels, opts.seed)}]
    layouts = run_layouts(updates)
    for mode, seen in ((SEGMENT, "one masked vector per bank, named by the bank"),
                       (SEGMENT_HIDDEN, "one masked vector with every bank's slots, and bank totals")):
        received, error = secure_rounds(updates, mode, opts.seed)
        masked = np.stack([masked_global(r, mode, layouts) for r in received])
        rows.append({"mode": f"secure {mode}", "seen": seen,
                     "by_protocol": by_protocol([list(r) for r in received], labels),
                     "classifier": classify(masked, labels, opts.seed),
                     "uniformity_p": uniformity(masked), "max_sum_error": error,
                     "vector_names": sorted({n for r in received for n in r})[:3]})
    for row in rows:
        log.info("segment inference %s: by protocol %.2f, classifier %.2f (chance %.2f)", row["mode"],
                 row["by_protocol"], row["classifier"]["accuracy"], row["classifier"]["chance"])
    return {"clients": len(updates), "users_per_client": float(np.mean([len(u.records) for u in updates])),
            "regions": dict(Counter(labels)), "arch": opts.arch, "rows": rows}


def section(result: dict[str, Any]) -> list[str]:
    intro = (f"{result['clients']} clients (per-region silos of {fmt(result['users_per_client'], 1)} users on "
             f"average, arch {result['arch']}), round-1 updates from the client's own training code; classifier: "
             "nearest centroid, 5-fold cross-validated, on the global bank's delta (plain) or on the masked words the "
             "server receives for it (secure).")
    header = ["server's view", "what it receives", "segment read from the messages", "classifier accuracy",
              "chance", "masked words uniform (KS p)", "max error of the unmasked sums"]
    rows = [[row["mode"], row["seen"], fmt(row["by_protocol"], 2), fmt(row["classifier"]["accuracy"]),
             fmt(row["classifier"]["chance"]), fmt(row.get("uniformity_p")), fmt(row.get("max_sum_error"), 6)]
            for row in result["rows"]]
    return ["## Segment inference (the server guesses a client's region)", "", intro, "", *table(header, rows)]


EXPERIMENT = Experiment(name="segment", setting="honest round-1 client updates; SecAgg+ rounds in one process",
                        run=lambda setup, runs: run_segment(setup), section=section)
