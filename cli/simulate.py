"""`fedadapt simulate`: a federated run of the Flower app on a local simulation federation, with results.

    fedadapt simulate --preset smoke --out results/smoke
    fedadapt simulate --data DIR --clients 20 --rounds 3 --adapter lora --segments region,season --out RUN
    fedadapt simulate --preset demo --dp-noise-multiplier 1.0 --dp-clip 0.5 --target-epsilon 8 --out RUN
    fedadapt simulate --preset smoke --secure-aggregation segment-hidden --out RUN
    fedadapt simulate --data DIR --clients 10 --rounds 24 --set arch=seq --set batch-size=32 --set lr=0.001
        --set local-epochs=2 --out RUN

arch=seq trains the sequential model (common/rec/seq_model.py) instead of adapters (--adapter is ignored):
batch-size counts users per step and lr is the Adam rate; 32 and 0.001 are the recommended values (on
MovieLens-1M 32-user steps reached in 12 rounds what 128-user steps did not: README, Results).

Options, backbone, data, segment keys and (with --resume) the checkpoint are checked before anything starts or
is written (one line, exit 2). Ctrl-C, SIGTERM or SIGHUP stop every process of the run and exit 128 + the signal
number (130, 143, 129) with one line naming the last checkpoint, which --resume continues from. The run itself
is `simulations.runner.run.simulate`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.defaults import ADAPTER_KIND
from common.device import DEVICES
from common.names import CHECKPOINTS_DIR, DEFAULT_SEGMENT_KEYS, STRATEGIES
from common.privacy.dp import DP_MODES, TARGET_ACTIONS
from common.privacy.user_level import DP_UNITS
from common.secagg.layout import SECURE_MODES
from simulations.runner.run import PRESETS, STOP_SIGNALS, Interrupted, SimOptions, SimulationFailed, simulate

# DP options -> run-config keys (common/privacy/dp.py); FedConfig checks the values before anything starts.
DP_OPTIONS = {"dp_noise_multiplier": "dp-noise-multiplier", "dp_clip": "dp-clip", "dp_mode": "dp-mode",
              "dp_delta": "dp-delta", "target_epsilon": "target-epsilon",
              "target_epsilon_action": "target-epsilon-action", "dp_unit": "dp-unit", "dp_user_rate": "dp-user-rate"}


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """Command-line values win over the preset's, which win over SimOptions' defaults."""
    preset = PRESETS[args.preset] if args.preset else {}
    defaults = SimOptions(out=Path(args.out))

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return value if value is not None else preset.get(name, getattr(defaults, name))

    config = dict(preset.get("config", {}))
    if args.strategy:
        config["strategy"] = args.strategy
    if args.proximal_mu is not None:
        config["proximal-mu"] = args.proximal_mu
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        config[key] = value
    if args.device is not None:
        config["device"] = args.device
    for name, key in DP_OPTIONS.items():
        if getattr(args, name) is not None:
            config[key] = getattr(args, name)
    if args.secure_aggregation is not None:
        config["secure-aggregation"] = args.secure_aggregation
    user_set = {item.partition("=")[0] for item in args.set or []}
    if config.get("secure-aggregation", "off") != "off" and "min-segment-clients" not in user_set:
        # a preset's min-segment-clients 1 is refused with secure aggregation (a bank summed over one client)
        config["min-segment-clients"] = max(2, int(config.get("min-segment-clients", 2)))
    backbone = pick("backbone")
    return SimOptions(
        out=Path(args.out), clients=pick("clients"), rounds=pick("rounds"),
        data=Path(args.data) if args.data else None, users=pick("users"), products=pick("products"),
        seed=args.seed, adapter=args.adapter, segments=args.segments,
        backbone="" if backbone == "minilm" else backbone, fraction=pick("fraction"), resume=args.resume,
        stop_after_round=args.stop_after_round, overwrite=args.overwrite, cpus_per_client=args.cpus_per_client,
        config=config,
    )


def _interrupt(signum: int, frame: object) -> None:
    for other in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
        signal.signal(other, lambda *_: None)
    raise Interrupted(signum)


def interrupted_message(signum: int, out: Path, command: str = "simulate") -> str:
    """The one line an interrupted run (`fedadapt <command>`) prints: what happened and where it can continue
    from."""
    from server.checkpoint import latest_complete_round

    last = latest_complete_round(out / CHECKPOINTS_DIR)
    where = (f"last checkpoint: round {last} under {out / CHECKPOINTS_DIR} (continue with --resume)"
             if last is not None else "no checkpoint was written")
    return (f"fedadapt {command}: interrupted by {signal.Signals(signum).name}; the run's processes are stopped; "
            f"{where}")


def run_stoppable(job: Callable[[], Any], out: Path, command: str) -> int:
    """Run `job` (a whole run of `fedadapt <command>`) with Ctrl-C, SIGTERM and SIGHUP turned into a clean stop:
    0 when it finished, 128 + the signal number when interrupted (one line naming the last checkpoint), 1 when
    the run failed (one line saying why)."""
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        job()
    except Interrupted as exc:
        print(interrupted_message(exc.signum, out, command), file=sys.stderr)
        return 128 + exc.signum
    except SimulationFailed as exc:
        print(f"fedadapt {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    summaries: list[dict[str, Any]] = []
    status = run_stoppable(lambda: summaries.append(simulate(options_from_args(args))), out, "simulate")
    if status:
        return status
    print((out / "summary.md").read_text())
    print(f"summary: {out / 'summary.json'}")
    print(f"plots:   {out / 'plots'}/ ({', '.join(Path(p).name for p in summaries[0]['plots'])})")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register `simulate` and its options."""
    p = subparsers.add_parser("simulate", help="run a federated simulation with Flower and write results",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (metrics.jsonl, summary, plots, checkpoints)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="smoke: tiny CI run; demo: MiniLM, 20 clients")
    p.add_argument("--data", help="marketplace folder (default: generate synthetic data into RUN/data)")
    p.add_argument("--clients", type=int, help="number of simulated SuperNodes (virtual clients)")
    p.add_argument("--rounds", type=int, help="federated rounds")
    p.add_argument("--users", type=int, help="users to generate when --data is not given")
    p.add_argument("--products", type=int, help="products to generate when --data is not given")
    p.add_argument("--adapter", default=ADAPTER_KIND, help="adapter kind (common.adapters.ADAPTER_KINDS)")
    p.add_argument("--segments", default=",".join(DEFAULT_SEGMENT_KEYS), help="segment keys with their own adapters")
    p.add_argument("--backbone", help="'tiny', 'minilm' or a local model folder")
    p.add_argument("--fraction", type=float, help="fraction of clients sampled per round (default 1)")
    p.add_argument("--strategy", choices=list(STRATEGIES), help="server update rule")
    p.add_argument("--proximal-mu", type=float, help="FedProx proximal weight (with --strategy fedprox)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key, e.g. lr=0.002")
    p.add_argument("--cpus-per-client", type=float, default=1.0,
                   help="CPUs Ray reserves per virtual client: with C cores, about C / this clients train at once")
    p.add_argument("--device", choices=DEVICES, default=None,
                   help="where clients compute (run-config device; default cpu): cuda also asks Flower for one "
                        "GPU per client (client-resources-num-gpus=1); auto takes CUDA when torch sees a GPU")
    dp = p.add_argument_group("differential privacy (client-level DP-FedAvg; README, Privacy)")
    dp.add_argument("--dp-noise-multiplier", type=float, metavar="SIGMA",
                    help="noise std on each bank sum / clip (0: DP off, the default)")
    dp.add_argument("--dp-clip", type=float, metavar="C", help="bound on one client's whole-update L2 norm")
    dp.add_argument("--dp-mode", choices=DP_MODES, help="central (server adds noise, default) or distributed (clients)")
    dp.add_argument("--dp-delta", type=float, help="delta of the reported (epsilon, delta) (default 1e-5)")
    dp.add_argument("--target-epsilon", type=float, metavar="E",
                    help="stop (or warn) before a round that would take epsilon above E")
    dp.add_argument("--target-epsilon-action", choices=TARGET_ACTIONS, help="stop (default) or warn")
    dp.add_argument("--dp-unit", choices=DP_UNITS,
                    help="what is protected: client (default) or user (user-level DP across silos, arch=seq, secure "
                         "aggregation; dp-clip bounds one user's update; delta defaults to 1/N^1.1 for N users)")
    dp.add_argument("--dp-user-rate", type=float, metavar="Q", help="with --dp-unit user: Poisson rate of a silo's "
                    "users per round (also --set dp-user-steps=, dp-user-lr=, dp-user-max=)")
    p.add_argument("--secure-aggregation", choices=SECURE_MODES,
                   help="off (default): the server sees each delta; segment: it sees only per-bank sums (and who "
                        "holds which segment); segment-hidden: only sums, never a client's segments (README, Privacy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier run in RUN (without it such a folder is refused)")
    p.add_argument("--stop-after-round", type=int, default=0, help="end the run after this round (0: never)")
    p.set_defaults(func=run)
