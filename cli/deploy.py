"""`fedadapt deploy`: the federation on Flower's deployment runtime (SuperLink + SuperNodes), TLS and node auth on.

    fedadapt deploy local --nodes 3 --data DIR --rounds 2 --out RUN
    fedadapt deploy local --nodes 3 --rounds 2 --out RUN --insecure        (debugging only: no TLS, no node auth)
    fedadapt deploy server --dir SERVER --host server.example.org --fleet-address 192.0.2.10:9092
    fedadapt deploy node --superlink server.example.org:9092 --root-cert ca.pem --data SHARD --state STATE \
        --partition-id 0 --num-partitions 3                                 (on the edge node)
    fedadapt deploy node-key --state STATE                                  (only the node's key pair)
    fedadapt deploy renew --tls SERVER/tls                                  (re-issue the server certificate)
    fedadapt deploy certs --out docker/certs --host superlink --host fleet  (CA + certificate for docker/)
    fedadapt deploy shards --data DIR --nodes 3 --out docker/data          (each node's own data folder)

local: starts a SuperLink and N SuperNodes on 127.0.0.1 (free ports), each node with its own data shard,
state folder and key, runs the app with `flwr run`, and writes RUN/ like `fedadapt simulate` (metrics.jsonl,
summary, plots, checkpoints; --resume continues a run); logs in RUN/deploy/logs/; keys, certificates and the
SuperLink's state are kept in RUN/deploy/ for the next run. Options are checked before anything starts (one
line, exit 2). Ctrl-C/SIGTERM/SIGHUP stop every process it started (exit 128 + signal).
server / node: the two sides of a deployment across hosts (deployment/server.py, deployment/node.py; README
"Run on edge nodes"): only the Fleet API is public, node keys are made on the nodes. certs: a CA and a SuperLink
certificate for the given hosts (no node keys); renew: a new server certificate from the same CA before the
old one expires; shards: node i's own users (the shard the simulation gives partition i).
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
    from deployment.tls import check_hosts, write_tls

    hosts = check_hosts(args.host or ["127.0.0.1", "localhost"])
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} is not empty (pass --overwrite to replace its CA and certificate)")
    tls = write_tls(out, hosts)
    print(f"CA {tls.ca_cert}, SuperLink certificate {tls.server_cert} for {', '.join(hosts)}; ca.key and "
          "server.key are 0600 and stay here. Node keys are made on each node (`fedadapt deploy node` or "
          "`fedadapt deploy node-key`), never here.")
    return 0


def run_renew(args: argparse.Namespace) -> int:
    from deployment.certs import renew

    renewed, status = renew(Path(args.tls), args.days, args.within, args.force, args.host or ())
    state = "re-issued" if renewed else f"not due (expires in more than {args.within:g} days)"
    print(f"server certificate {state}: valid until {status.not_after:%Y-%m-%d %H:%M} UTC for "
          f"{', '.join(status.hosts)}; CA valid until {status.ca_not_after:%Y-%m-%d}."
          + (" Restart the server side to load it; nodes need nothing new." if renewed else ""))
    return 0


def _node_spec(args: argparse.Namespace) -> Any:
    from deployment.node import NodeSpec

    return NodeSpec(superlink=args.superlink, root_cert=Path(args.root_cert), data=Path(args.data),
                    state=Path(args.state), partition_id=args.partition_id, num_partitions=args.num_partitions,
                    runtime_port=args.runtime_port, health_port=args.health_port, cache_mb=args.cache_mb)


def run_node(args: argparse.Namespace) -> int:
    from deployment.node import prepare_node, registration_hint
    from deployment.node import run_node as start

    spec = _node_spec(args)
    public, made = prepare_node(spec)
    print(registration_hint(public, made), flush=True)
    if args.init_only:
        return 0
    return start(spec, args.restart_delay)


def run_node_key(args: argparse.Namespace) -> int:
    from deployment.node import registration_hint
    from deployment.node_keys import ensure_node_keys

    keys, made = ensure_node_keys(Path(args.state))
    print(registration_hint(keys.public_key, made))
    return 0


def run_server(args: argparse.Namespace) -> int:
    from deployment.server import ServerSpec, check_hosts_arg, instructions, prepare_server
    from deployment.server import run_server as start

    spec = ServerSpec(Path(args.dir), check_hosts_arg(args.host or []), args.fleet_address, args.control_port,
                      args.health_port)
    prepare_server(spec)
    print(instructions(spec), flush=True)
    if args.init_only:
        return 0
    return start(spec)


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
    """Register `deploy local|server|node|node-key|renew|certs|shards`."""
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
    certs = sub.add_parser("certs", help="CA and SuperLink certificate for docker/ (no node keys)")
    certs.add_argument("--out", required=True, help="folder for ca.pem, ca.key, server.pem, server.key")
    certs.add_argument("--host", action="append", help="a name or address the SuperLink is reached at "
                       "(repeat; default 127.0.0.1 and localhost)")
    certs.add_argument("--overwrite", action="store_true", help="replace existing files in --out")
    certs.set_defaults(func=run_certs)
    renew = sub.add_parser("renew", help="re-issue the server certificate from the CA before it expires")
    renew.add_argument("--tls", required=True, help="the folder with ca.key, ca.pem, server.pem (server side)")
    renew.add_argument("--days", type=int, default=90, help="validity of the new certificate (capped by the CA)")
    renew.add_argument("--within", type=float, default=30.0, help="renew once it expires within this many days")
    renew.add_argument("--force", action="store_true", help="renew now, whatever the expiry")
    renew.add_argument("--host", action="append", help="a further name or address for the new certificate")
    renew.set_defaults(func=run_renew)
    server = sub.add_parser("server", help="the server side: SuperLink (127.0.0.1), SuperExec, Fleet gateway")
    server.add_argument("--dir", required=True, help="the server's folder (TLS, secret, state; kept)")
    server.add_argument("--host", action="append", help="name or address nodes dial (repeat; in the certificate)")
    server.add_argument("--fleet-address", required=True,
                        help="HOST:PORT the Fleet gateway binds: the server's address on the nodes' network")
    server.add_argument("--control-port", type=int, default=9093, help="the SuperLink's port on 127.0.0.1")
    server.add_argument("--health-port", type=int, default=0, help="gRPC health server on 127.0.0.1 (0: none)")
    server.add_argument("--init-only", action="store_true", help="write the files and print the steps; start nothing")
    server.set_defaults(func=run_server)
    node = sub.add_parser("node", help="an edge node: key pair made here, SuperNode + SuperExec")
    node.add_argument("--superlink", required=True, help="HOST:PORT of the server's Fleet address")
    node.add_argument("--root-cert", required=True, help="the server's CA certificate (ca.pem)")
    node.add_argument("--data", required=True, help="this node's data folder (its users only)")
    node.add_argument("--state", required=True, help="this node's folder for its key, secret and state (kept)")
    node.add_argument("--partition-id", type=int, required=True, help="this node's index")
    node.add_argument("--num-partitions", type=int, required=True, help="number of nodes in the federation")
    node.add_argument("--runtime-port", type=int, default=9094, help="the SuperNode's Runtime API on 127.0.0.1")
    node.add_argument("--health-port", type=int, default=0, help="gRPC health server on 127.0.0.1 (0: none)")
    node.add_argument("--cache-mb", type=int, default=1024,
                      help="disk for the node's caches of frozen-weight results, STATE/client/cache (0: none)")
    node.add_argument("--restart-delay", type=float, default=10.0,
                      help="seconds before a SuperNode that exited (e.g. not registered yet) is started again")
    node.add_argument("--init-only", action="store_true", help="make the key pair, print it, start nothing")
    node.set_defaults(func=run_node)
    node_key = sub.add_parser("node-key", help="make (or show) a node's key pair in STATE/keys, on the node")
    node_key.add_argument("--state", required=True, help="the node's state folder")
    node_key.set_defaults(func=run_node_key)
    shards = sub.add_parser("shards", help="one data folder per node (its own users), for docker/remote nodes")
    shards.add_argument("--data", required=True, help="marketplace folder to split")
    shards.add_argument("--nodes", type=int, required=True, help="number of nodes")
    shards.add_argument("--out", required=True, help="folder for node-<i>/")
    shards.add_argument("--partition-mode", default="per-segment", help="per-segment or iid (as the run config)")
    shards.add_argument("--seed", type=int, default=0, help="the run config's seed")
    shards.set_defaults(func=run_shards)
