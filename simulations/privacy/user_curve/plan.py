"""Everything the user-level curve needs before it runs, read and checked without writing anything.

The users of `--data` (a seeded sample of `--max-users` when given) are dealt once, seeded: a `--holdout-users`
fraction is held out of every silo (they never train: the non-members of membership inference), a
`--public-users` fraction is public (their data pre-trains the global bank centrally, without DP: public.py;
every point's federation starts from that bank through the run-config key init-banks), the rest (the
members) are the federation's whole population, written to OUT/members-data and partitioned into
`--clients` silos by the run config's partition mode (per-segment: region silos). N is the members' count,
delta = 1/N^1.1 (`default_delta`), and each target epsilon's sigma comes from the accountant
(calibrate.py). Every point's FedConfig is built here too, so a bad --set value is refused before the first
run starts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.schema import Marketplace
from common.protocol import FedConfig
from simulations.privacy.user_curve.options import UserCurveOptions

MEMBERS_DIR = "members-data"
PUBLIC_DIR = "public-model"
RUNS_DIR = "runs"
STATE_DIR = "client-state"


@dataclass(frozen=True)
class Point:
    """One point of the curve: its target epsilon (inf: no DP) and the sigma calibrated for it (0: no DP)."""

    epsilon_target: float
    sigma: float

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon_target)

    @property
    def name(self) -> str:
        return f"eps-{self.epsilon_target:g}" if self.private else "no-dp"


@dataclass(frozen=True)
class Plan:
    opts: UserCurveOptions
    market: Marketplace  # the chosen users' tables (members and holdouts), the whole catalog
    members: tuple[str, ...]  # raw user ids the silos hold
    holdouts: tuple[str, ...]  # raw user ids held out of every silo
    delta: float
    points: tuple[Point, ...]
    public: tuple[str, ...] = ()  # raw user ids whose data pre-trains the global bank (no DP; in no silo)

    @property
    def members_dir(self) -> Path:
        return (self.opts.out / MEMBERS_DIR).resolve()

    @property
    def public_dir(self) -> Path:
        """OUT/public-model-<digest of the public users and the pre-training epochs>: another public set or
        epoch count is another folder, so a point's run config (init-banks) names exactly its starting model."""
        digest = hashlib.sha256(("\n".join(self.public) + f"\n{self.opts.public_epochs}").encode()).hexdigest()
        return (self.opts.out / f"{PUBLIC_DIR}-{digest[:12]}").resolve()

    def run_dir(self, point: Point) -> Path:
        return (self.opts.out / RUNS_DIR / point.name).resolve()

    def config(self, point: Point) -> FedConfig:
        """The run config of one point: user-level DP and secure aggregation for a private point; the same
        federation (same silos, secure aggregation, strategy and server lr) with ordinary local training for
        the no-DP point."""
        opts = self.opts
        base = {"arch": "seq", "data-dir": str(self.members_dir), "out-dir": str(self.run_dir(point)),
                "num-server-rounds": opts.rounds, "seed": opts.seed, "backbone": opts.fed_backbone,
                "segment-keys": opts.segments, "strategy": opts.strategy, "server-lr": opts.server_lr,
                "secure-aggregation": opts.secure, "client-state-dir": str((opts.out / STATE_DIR).resolve()),
                "fraction-train": 1.0, "fraction-evaluate": 0.0, "min-segment-clients": 2, **opts.config}
        if self.public:
            base["init-banks"] = str(self.public_dir)
        if point.private:
            base.update({"dp-noise-multiplier": point.sigma, "dp-clip": opts.clip, "dp-unit": "user",
                         "dp-user-rate": opts.rate, "dp-user-lr": opts.user_lr, "dp-delta": self.delta})
        return FedConfig.from_run_config(base)


def deal_users(user_ids: list[str], holdout: float, max_users: int, seed: int, public: float = 0.0
               ) -> tuple[list[str], list[str], list[str]]:
    """(members, holdouts, public): a seeded shuffle of the sorted ids (first cut to `max_users` when > 0), the
    first round(holdout x n) held out, the next round(public x n) public. With public 0 the members and
    holdouts are those of a curve without public users."""
    ids = sorted(user_ids)
    order = np.random.default_rng([seed, 0x0518]).permutation(len(ids))
    chosen = [ids[int(i)] for i in order][: max_users or None]
    cut = int(round(holdout * len(chosen)))
    public_cut = cut + int(round(public * len(chosen)))
    return sorted(chosen[public_cut:]), sorted(chosen[:cut]), sorted(chosen[cut:public_cut])


def make_plan(opts: UserCurveOptions) -> Plan:
    """Check the backbone and data, deal the users, calibrate each sigma, build each point's FedConfig."""
    from common.data.partition import shard_marketplace
    from common.data.schema import read_marketplace
    from common.privacy.user_level import default_delta
    from simulations.privacy.user_curve.calibrate import sigma_for_epsilon
    from simulations.runner.preflight import check_backbone, inspect_data

    assert opts.data is not None  # UserCurveOptions refuses None
    check_backbone(opts.fed_backbone)
    inspect_data(opts.data)
    market = read_marketplace(opts.data)
    members, holdouts, public = deal_users([str(u) for u in market.users["user_id"]], opts.holdout,
                                           opts.max_users, opts.seed, opts.public)
    if opts.public and len(public) < 2:
        raise ValueError(f"--public-users {opts.public:g} of {len(members) + len(holdouts) + len(public)} users "
                         f"leaves {len(public)} public users: need >= 2 to pre-train on")
    if len(holdouts) < 2 or len(members) < 2 * opts.clients:
        raise ValueError(f"--holdout-users {opts.holdout:g} of {len(members) + len(holdouts)} users leaves "
                         f"{len(holdouts)} held out and {len(members)} members for {opts.clients} silos: need >= 2 "
                         "held out and >= 2 members per silo")
    delta = default_delta(len(members))
    points = tuple(Point(eps, sigma_for_epsilon(eps, opts.rounds, opts.rate, delta) if math.isfinite(eps) else 0.0)
                   for eps in sorted(opts.epsilons, reverse=True))
    plan = Plan(opts, shard_marketplace(market, [*members, *holdouts, *public]), tuple(members), tuple(holdouts),
                delta, points, tuple(public))
    for point in points:
        plan.config(point)  # refuses a bad --set or DP setting by its run-config key
    return plan


def write_members(plan: Plan) -> Path:
    """OUT/members-data: the members' tables (holdouts removed), written once and reused by every point."""
    from common.data.partition import shard_marketplace
    from common.data.schema import write_marketplace

    folder = plan.members_dir
    marker = folder / ".complete"
    expected = hashlib.sha256("\n".join(plan.members).encode()).hexdigest() + "\n"  # exactly these users
    if not (marker.is_file() and marker.read_text() == expected):
        write_marketplace(shard_marketplace(plan.market, list(plan.members)), folder,
                          meta={"source": "fedadapt privacy curve --unit user", "members": len(plan.members),
                                "holdouts": len(plan.holdouts), "seed": plan.opts.seed})
        marker.write_text(expected)
    return folder


