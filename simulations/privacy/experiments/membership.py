"""Membership inference against trained adapter banks (`fedadapt privacy membership`).

Two settings, each with a loss-threshold and a shadow-model attack (simulations/privacy/attacks.py):

- central reference: the banks trained centrally (`fedadapt train`'s code: `build_and_train` /
  `build_and_train_seq`, mode global-adapter) for `central_epochs` epochs on the target-in users, which
  over-fits them; the shadow model is trained the same way on shadow-in. It shows what the attacks find when
  the banks do memorise their users.
- federated: the last checkpoint of each federated run (simulations/privacy/runs.py) on target-in, without
  DP and at every target epsilon; the shadow model of each level is the federated run on shadow-in at the
  same level. This is the setting the issue asks about: what the released banks reveal.

Members are the target-in users, non-members the target-out users (same distribution, never trained on).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from simulations.privacy.attacks import loss_threshold, shadow_attack
from simulations.privacy.registry import Experiment
from simulations.privacy.report import fmt, fmt_auc, table
from simulations.privacy.runs import FedRun
from simulations.privacy.scores import user_features
from simulations.privacy.setup import Setup

log = logging.getLogger(__name__)


def central_model(setup: Setup, pool: str, backbone: Any) -> Any:
    """The global bank trained centrally on `pool` for central_epochs, as `fedadapt train` trains it."""
    from common.adapters import AdapterConfig
    from common.rec.baselines import build_and_train
    from common.rec.seq_model import SeqConfig
    from common.rec.seq_modes import build_and_train_seq
    from common.rec.seq_train import SeqTrainConfig
    from common.rec.train import TrainConfig

    opts, records = setup.opts, setup.pools[pool]
    # Arch branch kept: central training (`fedadapt train`'s mode builders) is not part of the federated arch
    # interface; each arch trains its global bank with its own central trainer and defaults.
    if opts.arch == "seq":
        seq_model, _ = build_and_train_seq("global-adapter", backbone, records, setup.item_texts,
                                       SeqConfig(seed=opts.seed),
                                       SeqTrainConfig(epochs=opts.central_epochs, batch_size=32, seed=opts.seed),
                                       (), 1)
        return seq_model
    model, _ = build_and_train("global-adapter", backbone, AdapterConfig(kind="lora", seed=opts.seed), records,
                               setup.item_texts, TrainConfig(epochs=opts.central_epochs, seed=opts.seed))
    return model


def attack_row(setup: Setup, target: Any, shadow: Any, setting: str, label: str,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both attacks on one (target, shadow) pair of trained models."""
    texts, pools, seed = setup.item_texts, setup.pools, setup.opts.seed
    member, non_member = user_features(target, pools["target-in"], texts), user_features(target,
                                                                                        pools["target-out"], texts)
    shadow_in, shadow_out = user_features(shadow, pools["shadow-in"], texts), user_features(shadow,
                                                                                           pools["shadow-out"],
                                                                                           texts)
    row: dict[str, Any] = {"setting": setting, "model": label,
           "loss_threshold": loss_threshold(member, non_member, seed).to_dict(),
           "shadow": shadow_attack(shadow_in, shadow_out, member, non_member, seed).to_dict(),
           "mean_loss_members": float(member[:, 0].mean()), "mean_loss_non_members": float(non_member[:, 0].mean())}
    row.update(extra or {})
    log.info("membership %s: loss-threshold AUC %.3f, shadow AUC %.3f", label, row["loss_threshold"]["auc"],
             row["shadow"]["auc"])
    return row


def central_rows(setup: Setup) -> list[dict[str, Any]]:
    """The over-fitted central reference: target and shadow trained centrally without DP."""
    from common.backbone import load_backbone

    backbone = load_backbone(setup.opts.load_backbone_arg)
    target, shadow = central_model(setup, "target-in", backbone), central_model(setup, "shadow-in", backbone)
    return [attack_row(setup, target, shadow, "central", f"central global bank, {setup.opts.central_epochs} "
                       "epochs, no DP", {"epsilon": None, "noise_multiplier": 0.0})]


def federated_rows(setup: Setup, runs: Sequence[FedRun]) -> list[dict[str, Any]]:
    """One row per DP level: the target run's last checkpoint attacked with the shadow run of the same level."""
    from simulations.bench.compare import federated_model

    shadows = {r.epsilon_target: r for r in runs if r.pool == "shadow"}
    rows = []
    for run in (r for r in runs if r.pool == "target"):
        shadow = shadows[run.epsilon_target]
        target_model, info = federated_model(run.folder, run.data, item_texts=setup.item_texts)
        shadow_model, _ = federated_model(shadow.folder, shadow.data, item_texts=setup.item_texts)
        level = "no DP" if run.epsilon_target is None else f"target epsilon {run.epsilon_target:g}"
        label = f"federated, {level}"
        rows.append(attack_row(setup, target_model, shadow_model, "federated", label, {
            "epsilon": run.epsilon, "epsilon_target": run.epsilon_target, "noise_multiplier": run.noise_multiplier,
            "round": info["round"], "ndcg@10": run.ndcg}))
    return rows


def run_membership(setup: Setup, runs: Sequence[FedRun]) -> dict[str, Any]:
    """Every membership row: the central reference, then the federated runs from no DP to the smallest epsilon."""
    return {"pools": {name: len(records) for name, records in setup.pools.items()},
            "rows": central_rows(setup) + federated_rows(setup, runs)}


def section(result: dict[str, Any]) -> list[str]:
    pools = result["pools"]
    intro = (f"Members: the {pools['target-in']} target-in users (their data trained the model); non-members: the "
             f"{pools['target-out']} target-out users (same distribution, never trained on). Shadow models: trained "
             f"the same way on {pools['shadow-in']} shadow-in users, {pools['shadow-out']} shadow-out held out. "
             "AUC 0.5 = guessing; [bootstrap 95% interval].")
    header = ["setting", "model", "epsilon", "noise multiplier", "NDCG@10", "loss-threshold AUC", "shadow AUC",
              "mean loss members / non-members"]
    rows = [[row["setting"], row["model"], fmt(row.get("epsilon"), 2), fmt(row.get("noise_multiplier"), 3),
             fmt(row.get("ndcg@10"), 4), fmt_auc(row["loss_threshold"]), fmt_auc(row["shadow"]),
             f"{fmt(row['mean_loss_members'])} / {fmt(row['mean_loss_non_members'])}"] for row in result["rows"]]
    return ["## Membership inference", "", intro, "", *table(header, rows)]


def plot_membership(rows: list[dict[str, Any]], path: Path) -> Path:
    """Attack AUC against epsilon for the federated DP runs; no DP and the central reference as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp = sorted((r for r in rows if r.get("epsilon") is not None), key=lambda r: r["epsilon"])
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for attack, style in (("loss_threshold", "o-"), ("shadow", "s-")):
        ax.plot([r["epsilon"] for r in dp], [r[attack]["auc"] for r in dp], style, label=f"{attack}, with DP")
    for r, style in ((r, "--" if r["setting"] == "federated" else ":") for r in rows if r.get("epsilon") is None):
        ax.axhline(r["loss_threshold"]["auc"], linestyle=style, color="k", label=f"loss threshold, {r['model']}")
    ax.axhline(0.5, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (client-level, delta 1e-5)")
    ax.set_ylabel("membership AUC")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot(result: dict[str, Any], out: Path, header: dict[str, Any]) -> Path:
    return plot_membership(result["rows"], out / "membership.png")


EXPERIMENT = Experiment(
    name="membership", setting="central reference (over-fitted, no DP) and federated checkpoints",
    run=lambda setup, runs: run_membership(setup, runs or []), section=section, plot=_plot, federated=True,
    needs_shadow=True)
