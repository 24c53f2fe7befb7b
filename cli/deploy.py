"""`fedadapt deploy`: the federation on Flower's deployment runtime (SuperLink + SuperNodes), TLS and node auth on.

    fedadapt deploy local --nodes 3 --data DIR --rounds 2 --out RUN
    fedadapt deploy local --nodes 3 --rounds 2 --out RUN --insecure        (debugging only: no TLS, no node auth)
    fedadapt deploy certs --out docker/certs --nodes 3 --host superlink    (files for docker/compose.yaml)
    fedadapt deploy shards --data DIR --nodes 3 --out docker/data          (each node's own data folder)

local: starts a SuperLink and N SuperNodes on 127.0.0.1 (free ports), each node with its own data shard,
state folder and key, runs the app with `flwr run`, and writes RUN/ like `fedadapt simulate` (metrics.jsonl,
summary, plots, checkpoints; --resume continues a run); logs in RUN/deploy/logs/. Options are checked before
anything starts (one line, exit 2). Ctrl-C/SIGTERM/SIGHUP stop every process it started (exit 128 + signal).
certs: a CA, a SuperLink certificate for the given hosts and one key pair per node; shards: node i's own users
(the shard the simulation gives partition i); both for a deployment you start yourself (docker compose or
remote machines, README "Run on edge nodes").
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.simulate import run_stoppable
from common.defaults import ADAPTER_KIND
from common.names import DEFAULT_SEGMENT_KEYS


def _options(args: argparse.Namespace) -> Any:
    from deployment.local import DeployOptions

    config: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        config[key] = value
    return DeployOptions(
        out=Path(args.out), clients=args.nodes, rounds=args.rounds, data=Path(args.data) if args.data else None,
        users=args.users, products=args.products, seed=args.seed, adapter=args.adapter, segments=args.segments,
        backbone="" if args.backbone == "minilm" else args.backbone, fraction=args.fraction, resume=args.resume,
        stop_after_round=args.stop_after_round, overwrite=args.overwrite, config=config, insecure=args.insecure,
    )


def run_local(args: argparse.Namespace) -> int:
    from deployment.local import deploy_local

    opts = _options(args)  # --insecure: deploy_local logs a loud warning first
    status = run_stoppable(lambda: deploy_local(opts), opts.out, "deploy")
    if status:
        return status
    print((opts.out / "summary.md").read_text())
    print(f"summary: {opts.out / 'summary.json'}; logs: {opts.out / 'deploy' / 'logs'}/")
    return 0


def run_certs(args: argparse.Namespace) -> int:
    from deployment.node_auth import write_node_keys
    from deployment.tls import check_hosts, write_tls

    if args.nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {args.nodes}")
    hosts = check_hosts(args.host or ["127.0.0.1", "localhost"])
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} is not empty (pass --overwrite to replace its keys)")
    tls = write_tls(out, hosts)
    for i in range(args.nodes):
        write_node_keys(out, f"node-{i}")
    print(f"CA {tls.ca_cert}, SuperLink certificate {tls.server_cert} for {', '.join(hosts)}, "
          f"{args.nodes} node key pair(s) {out}/node-<i>[.pub]; private keys are 0600")
    return 0


def run_shards(args: argparse.Namespace) -> int:
    from common.names import PARTITION_MODES
    from deployment.local import write_shards
    from simulations.runner.preflight import inspect_data

    if args.nodes < 1:
        raise ValueError(f"--nodes must be >= 1, got {args.nodes}")
    if args.partition_mode not in PARTITION_MODES:
        raise ValueError(f"--partition-mode must be one of {', '.join(PARTITION_MODES)}")
    inspect_data(Path(args.data))  # a missing or malformed folder is named before anything is written
    out = Path(args.out)
    paths = write_shards(Path(args.data), args.nodes, args.partition_mode, args.seed, lambda i: out / f"node-{i}")
    print(f"{len(paths)} node data folders under {out}/ (node-<i>: that node's users only)")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `deploy local` and `deploy certs`."""
    p = subparsers.add_parser("deploy", help="run the federation on Flower's deployment runtime",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True, metavar="MODE")
    local = sub.add_parser("local", help="a SuperLink and N SuperNodes on this machine")
    local.add_argument("--nodes", type=int, required=True, help="number of SuperNodes (edge nodes)")
    local.add_argument("--rounds", type=int, required=True, help="federated rounds")
    local.add_argument("--out", required=True, help="run folder (like `fedadapt simulate`'s, plus deploy/)")
    local.add_argument("--data", help="marketplace folder (default: generate synthetic data into RUN/data)")
    local.add_argument("--users", type=int, default=160, help="users to generate when --data is not given")
    local.add_argument("--products", type=int, default=300, help="products to generate when --data is not given")
    local.add_argument("--backbone", default="tiny", help="'tiny', 'minilm' or a local model folder")
    local.add_argument("--adapter", default=ADAPTER_KIND, help="adapter kind")
    local.add_argument("--segments", default=",".join(DEFAULT_SEGMENT_KEYS), help="segment keys")
    local.add_argument("--fraction", type=float, default=1.0, help="fraction of nodes sampled per round")
    local.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key")
    local.add_argument("--seed", type=int, default=0)
    local.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints")
    local.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in RUN")
    local.add_argument("--stop-after-round", type=int, default=0, help="end the run after this round (0: never)")
    local.add_argument("--insecure", action="store_true",
                       help="DEBUGGING ONLY: no TLS and no node authentication (prints a warning)")
    local.set_defaults(func=run_local)
    certs = sub.add_parser("certs", help="CA, SuperLink certificate and node key pairs for docker/remote nodes")
    certs.add_argument("--out", required=True, help="folder for ca.pem, server.pem/.key, node-<i>/.pub")
    certs.add_argument("--nodes", type=int, default=3, help="node key pairs to write")
    certs.add_argument("--host", action="append", help="a name or address the SuperLink is reached at "
                       "(repeat; default 127.0.0.1 and localhost)")
    certs.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    certs.set_defaults(func=run_certs)
    shards = sub.add_parser("shards", help="one data folder per node (its own users), for docker/remote nodes")
    shards.add_argument("--data", required=True, help="marketplace folder to split")
    shards.add_argument("--nodes", type=int, required=True, help="number of nodes")
    shards.add_argument("--out", required=True, help="folder for node-<i>/")
    shards.add_argument("--partition-mode", default="per-segment", help="per-segment or iid (as the run config)")
    shards.add_argument("--seed", type=int, default=0, help="the run config's seed")
    shards.set_defaults(func=run_shards)
