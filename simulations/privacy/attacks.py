"""Membership-inference attacks on per-user features (simulations/privacy/scores.py) and how they are scored.

- Loss threshold (Yeom et al., CSF 2018): a user is called a member when the model's mean loss on the user's
  training examples is below a threshold. Its AUC over every threshold is the AUC of -mean loss.
- Shadow models (Shokri et al., S&P 2017): the attacker trains shadow models the same way as the target on
  data of his own (shadow-in), keeps a disjoint set out (shadow-out), and fits a classifier that tells in from
  out on the shadow models' features; it is then applied to the target's features.

AUC 0.5 is guessing. Every AUC comes with a bootstrap 95% interval (users resampled with replacement within
the member and the non-member set) and the number of users on each side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

BOOTSTRAP = 1000


@dataclass(frozen=True)
class AttackResult:
    """AUC of telling members from non-members, its bootstrap 95% interval and the users on each side."""

    auc: float
    ci_low: float
    ci_high: float
    members: int
    non_members: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def auc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> float:
    """Probability that a random member scores above a random non-member (ties count half)."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, non_member_scores]))


def scored(member_scores: np.ndarray, non_member_scores: np.ndarray, seed: int = 0,
           rounds: int = BOOTSTRAP) -> AttackResult:
    """AUC with a percentile bootstrap 95% interval over `rounds` resamples of both sets."""
    if len(member_scores) < 2 or len(non_member_scores) < 2:
        raise ValueError(f"an AUC needs two users on each side, got {len(member_scores)} and "
                         f"{len(non_member_scores)}")
    rng = np.random.default_rng(seed)
    draws = [auc(member_scores[rng.integers(len(member_scores), size=len(member_scores))],
                 non_member_scores[rng.integers(len(non_member_scores), size=len(non_member_scores))])
             for _ in range(rounds)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return AttackResult(auc(member_scores, non_member_scores), float(low), float(high), len(member_scores),
                        len(non_member_scores))


def loss_threshold(member_features: np.ndarray, non_member_features: np.ndarray, seed: int = 0) -> AttackResult:
    """Yeom et al.: lower mean loss (feature column 0) means member."""
    return scored(-member_features[:, 0], -non_member_features[:, 0], seed)


def shadow_attack(shadow_in: np.ndarray, shadow_out: np.ndarray, member_features: np.ndarray,
                  non_member_features: np.ndarray, seed: int = 0) -> AttackResult:
    """Shokri et al.: a logistic regression fitted on shadow features (in = 1, out = 0), scored on the target."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    features = np.vstack([shadow_in, shadow_out])
    classifier.fit(features, np.r_[np.ones(len(shadow_in)), np.zeros(len(shadow_out))])
    member = classifier.predict_proba(member_features)[:, 1]
    non_member = classifier.predict_proba(non_member_features)[:, 1]
    return scored(member, non_member, seed)
