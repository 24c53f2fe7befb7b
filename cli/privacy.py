"""`fedadapt privacy`: privacy experiments on trained adapter banks, written to OUT/summary.{md,json} and plots.

    fedadapt privacy all --out OUT                         # synthetic data generated into OUT/data, MiniLM
    fedadapt privacy membership --data DIR --arch seq --epsilons 4,16,64 --out OUT
    fedadapt privacy segment,items --out OUT                # several, comma-separated
    fedadapt privacy {membership,segment,items,curve,all} [--data DIR] --out OUT [--backbone tiny|minilm|PATH]
        [--arch text|seq] [--epsilons E1,E2,...] [--rounds N] [--clients N] [--seed S]
    fedadapt privacy curve --unit user --arch seq --data DIR --out OUT [--epsilons 1,2,4,8,inf] [--rounds 10]
        [--clients 10] [--dp-user-rate 0.1] [--clip 1] [--holdout-users 0.2] [--eval-users 500] [--max-users N]
        [--public-users 0 --public-epochs 20] [--strategy fedavg --server-lr 2] [--set KEY=VALUE ...]

membership: loss-threshold and shadow-model attacks on a central (over-fitted) reference and on the checkpoints
of federated runs without DP and at each epsilon; segment: how well the server guesses a client's region in
plain, segment-visible and segment-hidden secure aggregation; items: which items a client's users liked, from
its item-side update (seq model), plain, as a secure sum and with DP; curve: NDCG@10 against epsilon
(client-level). `curve --unit user`: the user-level curve (simulations/privacy/user_curve/: user-level DP
across --clients region silos, secure aggregation in every DP run, sigma calibrated per epsilon; NDCG@10 and
HR@10 sampled and full catalog, membership AUC of members vs held-out users) into OUT/curve.{json,md,png}.
Every option is checked before anything is written (one line, exit 2). The experiments are
`simulations.privacy.run_privacy`.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from simulations.privacy.registry import names
from simulations.privacy.setup import PrivacyOptions

DEFAULTS = PrivacyOptions(out=Path("."))
USER_FLAGS = ("dp_user_rate", "clip", "user_lr", "holdout_users", "public_users", "public_epochs", "eval_users",
              "max_users", "strategy", "server_lr", "segments", "set")  # used only with --unit user
CLIENT_FLAGS = ("users", "products", "central_epochs")  # used only with --unit client
CLIENT_DEFAULTS = {"epsilons": ",".join(f"{e:g}" for e in DEFAULTS.epsilons), "rounds": str(DEFAULTS.rounds),
                   "clients": str(DEFAULTS.clients), "users": str(DEFAULTS.users),
                   "products": str(DEFAULTS.products), "central_epochs": str(DEFAULTS.central_epochs)}


def _number(flag: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{flag} expects {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def experiments_of(text: str) -> tuple[str, ...]:
    """"all", one experiment, or several separated by commas, in the registry's (sorted) order."""
    known = names()
    chosen = {n.strip() for n in text.split(",") if n.strip()}
    if "all" in chosen:
        return known
    unknown = sorted(chosen - set(known))
    if unknown or not chosen:
        raise ValueError(f"unknown experiment(s) {unknown or text!r}; expected {', '.join(known)}, several "
                         "of them separated by commas, or all")
    return tuple(e for e in known if e in chosen)


def options_from_args(args: argparse.Namespace) -> PrivacyOptions:
    """The validated options (client level); a bad value raises ValueError naming its flag."""
    given = [f"--{n.replace('_', '-')}" for n in USER_FLAGS if getattr(args, n, None) is not None]
    if given:
        raise ValueError(f"{given[0]} is used only with --unit user")
    for name, value in CLIENT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    experiments = experiments_of(args.experiment)
    epsilons = tuple(_number("--epsilons", e.strip(), float) for e in args.epsilons.split(",") if e.strip())
    ints = {name: _number(f"--{name.replace('_', '-')}", getattr(args, name), int)
            for name in ("rounds", "clients", "seed", "users", "products", "central_epochs")}
    return PrivacyOptions(out=Path(args.out), experiments=experiments, data=Path(args.data) if args.data else None,
                          backbone=args.backbone, arch=args.arch, epsilons=epsilons, **ints)


def command_line(args: argparse.Namespace) -> str:
    """The command as run, every option spelt out (recorded in the summary so that it can be repeated)."""
    parts = ["fedadapt", "privacy", args.experiment]
    for name in ("unit", "data", "out", "backbone", "arch", "epsilons", "rounds", "clients", "seed", *CLIENT_FLAGS,
                 *USER_FLAGS[:-1]):
        value = getattr(args, name, None)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    for item in getattr(args, "set", None) or []:
        parts += ["--set", item]
    return shlex.join(parts)


def _run_config(items: list[str] | None) -> dict[str, str]:
    config: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        config[key] = value
    return config


def user_options_from_args(args: argparse.Namespace) -> Any:
    """The validated options of `curve --unit user` (simulations/privacy/user_curve/options.py)."""
    from simulations.privacy.user_curve.options import UserCurveOptions

    if args.experiment.strip() != "curve":
        raise ValueError(f"--unit user runs the curve only, got experiment {args.experiment!r}")
    given_client = [f"--{n.replace('_', '-')}" for n in CLIENT_FLAGS if getattr(args, n, None) is not None]
    if given_client:
        raise ValueError(f"{given_client[0]} is used only with --unit client (--unit user reads --data and trains "
                         "no central reference model)")
    given: dict[str, Any] = {}
    if args.epsilons is not None:
        given["epsilons"] = tuple(_number("--epsilons", e.strip(), float) for e in args.epsilons.split(",")
                                  if e.strip())
    for name in ("rounds", "clients", "seed", "eval_users", "max_users", "public_epochs"):
        if getattr(args, name) is not None:
            given[name] = _number(f"--{name.replace('_', '-')}", getattr(args, name), int)
    for name, field in (("dp_user_rate", "rate"), ("clip", "clip"), ("user_lr", "user_lr"),
                        ("holdout_users", "holdout"), ("public_users", "public"), ("server_lr", "server_lr")):
        if getattr(args, name) is not None:
            given[field] = _number(f"--{name.replace('_', '-')}", getattr(args, name), float)
    for name in ("strategy", "segments"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    return UserCurveOptions(out=Path(args.out), data=Path(args.data) if args.data else None, backbone=args.backbone,
                            arch=args.arch, config=_run_config(args.set), **given)


def run_user(args: argparse.Namespace) -> int:
    """`curve --unit user`: every option and the data checked, every sigma calibrated, then the runs."""
    from simulations.privacy.user_curve.curve import run_user_curve
    from simulations.privacy.user_curve.plan import make_plan

    opts = user_options_from_args(args)
    plan = make_plan(opts)
    run_user_curve(opts, command_line(args), plan)
    print((opts.out / "curve.md").read_text())
    print(f"curve: {opts.out / 'curve.json'}, {opts.out / 'curve.png'}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.unit not in ("client", "user"):
        raise ValueError(f"--unit {args.unit!r} is not one of client, user")
    if args.unit == "user":
        return run_user(args)
    opts = options_from_args(args)
    from simulations.privacy.run import run_privacy

    summary = run_privacy(opts, command_line(args))
    print((opts.out / "summary.md").read_text())
    print(f"summary: {opts.out / 'summary.json'}")
    print(f"plots:   {', '.join(summary['plots']) or 'none'}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `privacy` and its options."""
    p = subparsers.add_parser("privacy", help="privacy experiments: membership, segment and item inference, "
                              "privacy-utility curve", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", metavar="{" + ",".join((*names(), "all")) + "}",
                   help="which experiment: one, several separated by commas (e.g. items,curve), or all")
    p.add_argument("--out", required=True, help="output folder (summary.md, summary.json, *.png, federated/)")
    p.add_argument("--data", help="marketplace folder (default: synthetic data generated into OUT/data)")
    p.add_argument("--backbone", default=DEFAULTS.backbone, help="'tiny', 'minilm' or a local model folder")
    p.add_argument("--arch", default=DEFAULTS.arch, help="text or seq: the attacked model (items always uses seq)")
    p.add_argument("--epsilons", help="target epsilons of the DP runs, comma-separated (client: no DP is always "
                   f"added, default {CLIENT_DEFAULTS['epsilons']}; user: inf is the no-DP point, default 1,2,4,8,inf)")
    p.add_argument("--rounds", help=f"rounds of every federated run (client {DEFAULTS.rounds}, user 10)")
    p.add_argument("--clients", help=f"clients of every federated run, all sampled (client {DEFAULTS.clients}, "
                   "user 10 silos)")
    p.add_argument("--seed", default=str(DEFAULTS.seed))
    p.add_argument("--unit", default="client", help="client (default) or user: user-level DP across silos "
                   "(curve only, --arch seq)")
    user = p.add_argument_group("--unit user (the user-level curve)")
    user.add_argument("--dp-user-rate", help="Poisson rate q of each silo's user sample per round (default 0.1)")
    user.add_argument("--clip", help="dp-clip C of one user's whole update (default 1)")
    user.add_argument("--user-lr", help="dp-user-lr: the per-user SGD step (default 1)")
    user.add_argument("--holdout-users", help="fraction of users held out of every silo, the membership "
                      "non-members (default 0.2)")
    user.add_argument("--public-users", help="fraction of users whose data is public (opted in): the global bank "
                      "is pre-trained on them centrally, without DP, and every federation starts from it; neither "
                      "members nor held out (default 0: no pre-training)")
    user.add_argument("--public-epochs", help="epochs of the public pre-training (default 20)")
    user.add_argument("--eval-users", help="evaluation users, and users per side of membership inference (500)")
    user.add_argument("--max-users", help="a seeded sample of this many users of --data (default: all)")
    user.add_argument("--strategy", help="server optimizer: fedavg (default), fedavgm, fedadam, fedprox")
    user.add_argument("--server-lr", help="server learning rate (default 2)")
    user.add_argument("--segments", help="segment keys of the banks (default region,age_band)")
    user.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other run-config key")
    p.add_argument("--users", help=f"client: synthetic users to generate when --data is not given ({DEFAULTS.users})")
    p.add_argument("--products", help=f"client: synthetic products to generate ({DEFAULTS.products})")
    p.add_argument("--central-epochs", help="client: epochs of the central reference models of membership "
                   f"inference ({DEFAULTS.central_epochs})")
    p.set_defaults(func=run)
