"""Scoring a point's final global model centrally: quality (sampled and full catalog) and user-level membership.

Users: records are built from the raw tables with the clients' own example config (`ExampleConfig(seed,
history)`), so a member's training items are exactly those its silo trained on. `fixed_users` draws, once per
curve and seeded, the evaluation users (up to `--eval-users` members whose data trained: found in a silo's own
records and usable by the seq model) and the membership sides (up to `--eval-users` of those members and of
the usable held-out users). Every point is scored on these same people.

- Quality: `common.rec.seq_train.evaluate_seq` on the evaluation users' held-out test items, sampled (test item
  vs its 99 negatives) and full catalog (every item ranked, the user's training items excluded), as `fedadapt
  bench quality` scores the seq model.
- Membership (user-level): the attack score of a user is the model's mean log-softmax of the user's own training
  targets (next-item, over the whole catalog, routed as in training: `user_updates.user_loss`, negated); a
  member should score higher. AUC over members vs held-out users with a bootstrap 95% interval
  (`simulations.privacy.attacks.scored`, the text-model membership experiment's scorer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.rec.seq_model import SeqRecModel
from common.rec.user_record import RecordLike


@dataclass(frozen=True)
class FixedUsers:
    """The people every point is scored on (raw user ids; disjoint member and holdout sides)."""

    evaluation: list[RecordLike]
    members: list[RecordLike]
    holdouts: list[RecordLike]


def raw_records(market: Any, seed: int, history: str) -> dict[str, RecordLike]:
    """raw user id -> record, cut as the clients cut theirs."""
    from common.data.examples import ExampleConfig, build_examples

    return {str(r.user_id): r for r in build_examples(market, ExampleConfig(seed=seed, history=history))}


def _sample(records: Sequence[RecordLike], n: int, seed: int, salt: int) -> list[RecordLike]:
    order = np.random.default_rng([seed, salt]).permutation(len(records))
    return [records[int(i)] for i in sorted(order[:n])]


def fixed_users(records: Mapping[str, RecordLike], trained: set[str], holdouts: Sequence[str], n: int,
                seed: int) -> FixedUsers:
    """Seeded samples of at most `n` trained members (evaluation; membership) and `n` held-out users, each
    usable (a text pair and two training positives, `simulations.privacy.setup.usable`)."""
    from simulations.privacy.setup import usable

    members = [records[u] for u in sorted(trained) if u in records and usable(records[u])]
    outs = [records[u] for u in sorted(holdouts) if u in records and usable(records[u])]
    if len(members) < 2 or len(outs) < 2:
        raise ValueError(f"membership inference needs two usable users per side, got {len(members)} members and "
                         f"{len(outs)} held out")
    return FixedUsers(_sample(members, n, seed, 1), _sample(members, n, seed, 2), _sample(outs, n, seed, 3))


def membership_scores(model: SeqRecModel, records: Sequence[RecordLike]) -> np.ndarray:
    """Per user: the model's mean log-softmax of the user's training targets (higher: more member-like)."""
    from common.privacy.user_updates import user_example, user_loss

    model.eval()
    out = []
    with torch.no_grad():
        for record in records:
            ex = user_example(model, record)
            if ex is None:
                raise ValueError(f"user {record.user_id} has fewer than two training items to score")
            out.append(-float(user_loss(model, ex)))
    return np.asarray(out, dtype=np.float64)


def membership(model: SeqRecModel, users: FixedUsers, seed: int) -> dict[str, Any]:
    """AUC (members vs held-out users) of the loss score, its bootstrap 95% interval and the mean scores."""
    from simulations.privacy.attacks import scored

    member, outside = membership_scores(model, users.members), membership_scores(model, users.holdouts)
    return {**scored(member, outside, seed).to_dict(), "mean_score_members": float(member.mean()),
            "mean_score_holdouts": float(outside.mean())}


def quality(model: SeqRecModel, records: Sequence[RecordLike]) -> dict[str, float]:
    """NDCG@10 and HR@10, sampled and full catalog, on `records`' held-out test items."""
    from common.rec.seq_train import evaluate_seq

    out: dict[str, float] = {}
    for protocol, full in (("sampled", False), ("full", True)):
        overall: Any = evaluate_seq(model, records, (10,), full_catalog=full)["overall"]
        out[f"ndcg@10_{protocol}"] = float(overall["ndcg@10"])
        out[f"hr@10_{protocol}"] = float(overall["hr@10"])
    return out
