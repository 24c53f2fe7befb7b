"""`fedadapt privacy curve --unit user`: the user-level privacy-utility curve and membership inference.

For each target epsilon (largest first; inf = no DP) one federation over `--clients` silos of the members
(plan.py: the held-out users are in no silo), each private point under user-level DP (`dp-unit user`,
Poisson rate `--dp-user-rate`, clip `--clip`, sigma calibrated to the target: calibrate.py) with secure
aggregation; then its final global model is scored centrally on the same fixed users (scoring.py): NDCG@10
and HR@10 sampled and full catalog, and the membership AUC of members vs held-out users. Writes
OUT/curve.json, OUT/curve.md and OUT/curve.png, rewritten after every point (a stopped run keeps what it has);
a finished run folder whose checkpoint holds exactly the point's run config is reused, not trained again.
"""

from __future__ import annotations

import logging
from typing import Any

from simulations.privacy.user_curve.federate import RunRecord, read_run, run_federation, silo_users
from simulations.privacy.user_curve.options import UserCurveOptions
from simulations.privacy.user_curve.plan import Plan, Point, make_plan, write_members
from simulations.privacy.user_curve.report import write_curve

log = logging.getLogger(__name__)


def finished(plan: Plan, point: Point) -> RunRecord | None:
    """The point's earlier run when it completed with exactly this run config, else None."""
    try:
        record = read_run(plan.run_dir(point))
    except (ValueError, FileNotFoundError, OSError):
        return None
    return record if record.run_config == plan.config(point).to_run_config() else None


def silo_check(plan: Plan) -> dict[str, Any]:
    """Which of the chosen users the silos hold, from the silos' own records; refuses a held-out user found."""
    from simulations.privacy.user_curve.public import check_outside

    cfg = plan.config(plan.points[0])
    found = silo_users(cfg, plan.opts.clients, [*plan.members, *plan.holdouts, *plan.public])
    held = set().union(*found.values())
    leaked = sorted(held & set(plan.holdouts))
    if leaked:
        raise RuntimeError(f"held-out user {leaked[0]} is in a silo's records ({len(leaked)} in all)")
    check_outside(plan, held)
    return {"trained": sorted(held), "per_silo": {str(k): len(v) for k, v in sorted(found.items())}}


def point_row(plan: Plan, point: Point, record: RunRecord, users: Any, item_texts: dict[str, str]) -> dict[str, Any]:
    """One row: the point's DP settings, what its run recorded, its central quality and membership AUC."""
    from simulations.bench.compare import federated_model
    from simulations.privacy.user_curve.scoring import membership, quality

    model, info = federated_model(record.folder, plan.members_dir, item_texts=item_texts)
    return {"epsilon_target": point.epsilon_target if point.private else None,
            "epsilon": record.epsilon, "noise_multiplier": point.sigma,
            "dp_user_rate": plan.opts.rate if point.private else None,
            "clip": plan.opts.clip if point.private else None,
            "rounds": record.rounds, "checkpoint_round": int(info["round"]),
            "secure_aggregation_every_round": record.secure_every_round, "dp_units": sorted(set(record.dp_units)),
            **quality(model, users.evaluation), "membership": membership(model, users, plan.opts.seed),
            "run_seconds": record.seconds, "run": str(record.folder)}


def untrained_membership(plan: Plan, record: RunRecord, users: Any, item_texts: dict[str, str]) -> dict[str, Any]:
    """The attack on the run's round-0 banks (trained on nobody): the chance level on these very users (any
    difference between the member and the held-out side that is not memorisation shows up here)."""
    from simulations.bench.compare import federated_model
    from simulations.privacy.user_curve.scoring import membership

    model, _ = federated_model(record.folder, plan.members_dir, server_round=0, item_texts=item_texts)
    return membership(model, users, plan.opts.seed)


def run_user_curve(opts: UserCurveOptions, command: str, plan: Plan | None = None) -> dict[str, Any]:
    """Every point of the curve; returns curve.json's content."""
    from simulations.privacy.user_curve.scoring import fixed_users, raw_records

    plan = plan or make_plan(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    write_members(plan)
    silos = silo_check(plan)
    cfg = plan.config(plan.points[0])
    records = raw_records(plan.market, cfg.seed, cfg.history)
    users = fixed_users(records, set(silos["trained"]), plan.holdouts, opts.eval_users, opts.seed)
    from common.data.examples import build_item_texts

    item_texts = build_item_texts(plan.market.products)
    public: dict[str, Any] | None = None
    if plan.public:  # before any federation: every point starts from it (init-banks)
        from simulations.privacy.user_curve.public import public_model, public_row

        model, summary = public_model(plan, records, item_texts)
        public = public_row(plan, model, summary, users)
    result: dict[str, Any] = {
        "command": command, "data": str(opts.data), "users": len(plan.members) + len(plan.holdouts),
        "members": len(plan.members), "holdouts": len(plan.holdouts), "members_in_silos": len(silos["trained"]),
        "users_per_silo": silos["per_silo"], "holdouts_in_silos": 0, "delta": plan.delta,
        "evaluation_users": len(users.evaluation), "membership_sides": [len(users.members), len(users.holdouts)],
        "clients": opts.clients, "rounds": opts.rounds, "dp_user_rate": opts.rate, "clip": opts.clip,
        "dp_user_lr": opts.user_lr, "strategy": opts.strategy, "server_lr": opts.server_lr,
        "backbone": opts.backbone, "segments": opts.segments, "secure_aggregation": opts.secure,
        "config": dict(opts.config), "seed": opts.seed, "public_users": len(plan.public), "public": public,
        "rows": []}
    for point in plan.points:
        record = finished(plan, point)
        if record is None:
            log.info("curve point %s: sigma %.4g, %d rounds", point.name, point.sigma, opts.rounds)
            record = run_federation(plan.config(point), opts.clients)
        else:
            log.info("curve point %s: reusing the finished run", point.name)
        if "membership_untrained" not in result:
            result["membership_untrained"] = untrained_membership(plan, record, users, item_texts)
        result["rows"].append(point_row(plan, point, record, users, item_texts))
        write_curve(opts.out, result)
    return result


