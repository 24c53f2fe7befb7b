"""Public pre-training of the user-level curve (`--public-users FRACTION`): what DP does not have to pay for.

Noise on a bank's mean grows with the trained dimension, so user-level DP freezes the collaborative item rows
(`common.privacy.user_level.FROZEN_KEYS`); trained on nobody, they stay zero and items are placed by their text
alone. Users whose data is public (a retailer's opted-in users, a public log) can give those rows and a
starting user tower without any privacy cost: the global bank is trained centrally on them, without DP
(`fedadapt train --arch seq --mode global-adapter`'s code, `build_and_train_seq`), written as a
`fedadapt train` banks folder, and every point's federation starts from it (run-config init-banks). Under
user-level DP the rows then stay at their public values; the private rounds train the rest on the members.

The guarantee is the members' (epsilon per member user); the public users have none, and they are neither
members nor held out, so membership inference is unchanged. Their model is scored as its own row (no private
training at all): what the federation adds is the difference.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from common.names import GLOBAL
from simulations.privacy.user_curve.plan import Plan

log = logging.getLogger(__name__)

MARKER = ".complete"


def public_model(plan: Plan, records: dict[str, Any], item_texts: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The pre-trained model and its training report: read back from `plan.public_dir` when a finished
    pre-training is there, else trained on the public users' records and written there (marker last)."""
    from common.federation.backbones import backbone_for
    from common.federation.seq_task import seq_config
    from common.rec.seq_modes import build_and_train_seq, load_banks, save_banks
    from common.rec.seq_train import SeqTrainConfig

    folder = plan.public_dir
    cfg = plan.config(plan.points[0])
    backbone = backbone_for(cfg.backbone)
    marker = folder / MARKER
    if marker.is_file():
        log.info("public pre-training: reusing %s", folder)
        return load_banks(folder, backbone, item_texts), json.loads(marker.read_text())
    users = [records[u] for u in plan.public if u in records]
    if len(users) < 2:
        raise ValueError(f"{len(users)} of the {len(plan.public)} public users have records to pre-train on")
    train = SeqTrainConfig(epochs=plan.opts.public_epochs, seed=plan.opts.seed)
    log.info("public pre-training: %d users, %d epochs", len(users), train.epochs)
    model, report = build_and_train_seq("global-adapter", backbone, users, item_texts, seq_config(cfg), train, (), 0)
    save_banks(model, folder, item_texts)
    trained: Any = report[GLOBAL]
    summary = {"users": len(users), "epochs": train.epochs, **{k: float(v) for k, v in trained.items()}}
    marker.write_text(json.dumps(summary))
    return model, summary


def public_row(plan: Plan, model: Any, summary: dict[str, Any], users: Any) -> dict[str, Any]:
    """The pre-trained model on the curve's evaluation and membership users, before any private round."""
    from simulations.privacy.user_curve.scoring import membership, quality

    return {"users": summary["users"], "epochs": summary["epochs"], "training_seconds": summary.get("seconds"),
            "folder": str(plan.public_dir), **quality(model, users.evaluation),
            "membership": membership(model, users, plan.opts.seed)}


def check_outside(plan: Plan, found: set[str]) -> None:
    """A public user found in a silo's records would be trained twice, once without any guarantee."""
    leaked = sorted(found & set(plan.public))
    if leaked:
        raise RuntimeError(f"public user {leaked[0]} is in a silo's records ({len(leaked)} in all)")
