"""`fedadapt privacy`: privacy experiments on trained adapter banks, written to OUT/summary.{md,json} and plots.

    fedadapt privacy all --out OUT                         # synthetic data generated into OUT/data, MiniLM
    fedadapt privacy membership --data DIR --arch seq --epsilons 4,16,64 --out OUT
    fedadapt privacy segment,items --out OUT                # several, comma-separated
    fedadapt privacy {membership,segment,items,curve,all} [--data DIR] --out OUT [--backbone tiny|minilm|PATH]
        [--arch text|seq] [--epsilons E1,E2,...] [--rounds N] [--clients N] [--seed S]

membership: loss-threshold and shadow-model attacks on a central (over-fitted) reference and on the checkpoints
of federated runs without DP and at each epsilon; segment: how well the server guesses a client's region in
plain, segment-visible and segment-hidden secure aggregation; items: which items a client's users liked, from
its item-side update (seq model), plain, as a secure sum and with DP; curve: NDCG@10 against epsilon.
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
    """The validated options; a bad value raises ValueError naming its flag."""
    experiments = experiments_of(args.experiment)
    epsilons = tuple(_number("--epsilons", e.strip(), float) for e in args.epsilons.split(",") if e.strip())
    ints = {name: _number(f"--{name.replace('_', '-')}", getattr(args, name), int)
            for name in ("rounds", "clients", "seed", "users", "products", "central_epochs")}
    return PrivacyOptions(out=Path(args.out), experiments=experiments, data=Path(args.data) if args.data else None,
                          backbone=args.backbone, arch=args.arch, epsilons=epsilons, **ints)


def command_line(args: argparse.Namespace) -> str:
    """The command as run, every option spelt out (recorded in the summary so that it can be repeated)."""
    parts = ["fedadapt", "privacy", args.experiment]
    for name in ("data", "out", "backbone", "arch", "epsilons", "rounds", "clients", "seed", "users", "products",
                 "central_epochs"):
        value = getattr(args, name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
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
    p.add_argument("--epsilons", default=",".join(f"{e:g}" for e in DEFAULTS.epsilons),
                   help="target epsilons of the DP runs, comma-separated (no DP is always added)")
    p.add_argument("--rounds", default=str(DEFAULTS.rounds), help="rounds of every federated run")
    p.add_argument("--clients", default=str(DEFAULTS.clients), help="clients of every federated run (all sampled)")
    p.add_argument("--seed", default=str(DEFAULTS.seed))
    p.add_argument("--users", default=str(DEFAULTS.users), help="synthetic users to generate when --data is not given")
    p.add_argument("--products", default=str(DEFAULTS.products), help="synthetic products to generate")
    p.add_argument("--central-epochs", default=str(DEFAULTS.central_epochs),
                   help="epochs of the central reference models of membership inference")
    p.set_defaults(func=run)
