"""`fedadapt simulate`: a federated run of the Flower app on a local simulation federation, with results.

    fedadapt simulate --preset smoke --out results/smoke
    fedadapt simulate --data DIR --clients 20 --rounds 3 --adapter lora --segments region,season --out RUN

It generates default data when --data is not given, writes the run config as a TOML file, starts a private
SuperLink (simulations/flower.py), runs `flwr run . --stream`, prints one progress line per round, checks
that the ServerApp really finished (`flwr run` exits 0 on failure), stops the SuperLink by PID and writes
RUN/summary.json, RUN/summary.md and RUN/plots/*.png next to the ServerApp's metrics.jsonl and checkpoints/.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.names import STRATEGIES
from common.protocol import FedConfig
from simulations.flower import PROJECT_ROOT, SuperLink, flwr_run
from simulations.report import write_report

log = logging.getLogger(__name__)

# Preset: run-config overrides + simulation size. smoke is CI-sized; demo is what `make demo` runs.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"clients": 4, "rounds": 2, "users": 160, "products": 300, "backbone": "tiny",
              "config": {"batch-size": 16, "lr": 5e-3, "min-segment-clients": 1}},
    "demo": {"clients": 20, "rounds": 3, "users": 1000, "products": 400, "backbone": "", "fraction": 0.5,
             "config": {"batch-size": 16, "lr": 3e-3, "min-segment-clients": 2, "max-train-users": 32,
                        "max-eval-users": 20, "fraction-evaluate": 0.5}},
}


@dataclass
class SimOptions:
    """Everything a simulation needs; `config` holds run-config overrides (kebab-case keys)."""

    out: Path
    clients: int = 4
    rounds: int = 2
    data: Path | None = None
    users: int = 160
    products: int = 120
    seed: int = 0
    adapter: str = "lora"
    segments: str = "region,season"
    backbone: str = "tiny"
    fraction: float = 1.0
    resume: bool = False
    stop_after_round: int = 0
    flwr_home: Path | None = None
    cpus_per_client: float = 1.0
    timeout: float | None = None
    quiet: bool = False
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"--clients must be >= 1, got {self.clients}")
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not self.cpus_per_client > 0:
            raise ValueError(f"--cpus-per-client must be > 0, got {self.cpus_per_client}")


def ensure_data(opts: SimOptions) -> Path:
    """The data folder: --data as given, or synthetic data generated once into RUN/data."""
    if opts.data is not None:
        folder = Path(opts.data).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"--data {folder} is not a folder")
        return folder
    folder = (opts.out / "data").resolve()
    if not (folder / ".complete").is_file():
        from common.data.schema import write_marketplace
        from common.data.synthetic import generate_marketplace

        log.info("generating %d users x %d products (seed %d) into %s", opts.users, opts.products, opts.seed, folder)
        write_marketplace(generate_marketplace(opts.users, opts.products, seed=opts.seed), folder)
        (folder / ".complete").write_text("ok\n")
    return folder


def run_config(opts: SimOptions, data_dir: Path) -> FedConfig:
    """The typed run config this simulation sends (validated here, before any process starts)."""
    values: dict[str, Any] = {
        "num-server-rounds": opts.rounds, "seed": opts.seed, "data-dir": str(data_dir),
        "out-dir": str(opts.out.resolve()), "backbone": opts.backbone, "adapter-kind": opts.adapter,
        "segment-keys": opts.segments, "fraction-train": opts.fraction, "resume": opts.resume,
        "stop-after-round": opts.stop_after_round,
    }
    values.update(opts.config)
    return FedConfig.from_run_config(values)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_run_config(cfg: FedConfig, path: Path) -> Path:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in cfg.to_run_config().items()))
    return path


class SimulationFailed(RuntimeError):
    """The Flower run ended without the ServerApp's completion marker."""


def simulate(opts: SimOptions, on_superlink: Callable[[SuperLink], None] | None = None) -> dict[str, Any]:
    """Run the federation; returns the summary (also written to RUN/summary.json).

    `on_superlink` is called once the SuperLink runs (benchmarks use it to watch the process tree).
    """
    opts.out.mkdir(parents=True, exist_ok=True)
    data_dir = ensure_data(opts)
    cfg = run_config(opts, data_dir)
    toml = write_run_config(cfg, opts.out / "run_config.toml")
    flwr_home = (opts.flwr_home or PROJECT_ROOT / ".work" / "flwr" / f"sim-{int(time.time() * 1000)}").resolve()
    expected = opts.stop_after_round if 0 < opts.stop_after_round < opts.rounds else opts.rounds
    marker = opts.out / ("run-stopped.json" if expected < opts.rounds else "run-complete.json")
    for stale in ("run-complete.json", "run-stopped.json"):  # only this run's ServerApp may write them
        (opts.out / stale).unlink(missing_ok=True)
    started = time.monotonic()

    def on_line(line: str) -> None:
        if "[fedadapt]" in line or "ERROR" in line or "Traceback" in line:
            if not opts.quiet:
                print(line.split("[fedadapt]")[-1].strip() if "[fedadapt]" in line else line, flush=True)

    with SuperLink(flwr_home) as link, open(opts.out / "flwr.log", "a", encoding="utf-8") as flog:
        if on_superlink is not None:
            on_superlink(link)
        rc = flwr_run(link, toml, opts.clients, opts.cpus_per_client, on_line=on_line, timeout=opts.timeout,
                      log_file=flog)
    wall = time.monotonic() - started
    if not marker.is_file():
        tail = (opts.out / "flwr.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SimulationFailed(f"flwr run exited {rc} but the ServerApp did not finish ({marker.name} missing); "
                               "last log lines:\n" + "\n".join(tail))
    done = json.loads(marker.read_text())
    if int(done["rounds"]) != expected:
        raise SimulationFailed(f"run ended after round {done['rounds']}, expected {expected}")
    extra = {"clients": opts.clients, "backbone": opts.backbone or "minilm", "adapter": opts.adapter,
             "segments": opts.segments, "wall_s_total": wall, "server_wall_s": done.get("server_wall_s"),
             "stopped_early": expected < opts.rounds}
    return write_report(opts.out, extra)


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
    backbone = pick("backbone")
    return SimOptions(
        out=Path(args.out), clients=pick("clients"), rounds=pick("rounds"),
        data=Path(args.data) if args.data else None, users=pick("users"), products=pick("products"),
        seed=args.seed, adapter=args.adapter, segments=args.segments,
        backbone="" if backbone == "minilm" else backbone, fraction=pick("fraction"), resume=args.resume,
        stop_after_round=args.stop_after_round, cpus_per_client=args.cpus_per_client, config=config,
    )


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C, so the SuperLink we started is stopped by PID on the way out
    signal.signal(signal.SIGTERM, _terminate)
    summary = simulate(options_from_args(args))
    print((Path(args.out) / "summary.md").read_text())
    print(f"summary: {Path(args.out) / 'summary.json'}")
    print(f"plots:   {Path(args.out) / 'plots'}/ ({', '.join(Path(p).name for p in summary['plots'])})")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("simulate", help="run a federated simulation with Flower and write results",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (metrics.jsonl, summary, plots, checkpoints)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="smoke: tiny CI run; demo: MiniLM, 20 clients")
    p.add_argument("--data", help="marketplace folder (default: generate synthetic data into RUN/data)")
    p.add_argument("--clients", type=int, help="number of simulated SuperNodes (virtual clients)")
    p.add_argument("--rounds", type=int, help="federated rounds")
    p.add_argument("--users", type=int, help="users to generate when --data is not given")
    p.add_argument("--products", type=int, help="products to generate when --data is not given")
    p.add_argument("--adapter", default="lora", help="adapter kind (common.adapters.ADAPTER_KINDS)")
    p.add_argument("--segments", default="region,season", help="segment keys with their own adapters")
    p.add_argument("--backbone", help="'tiny', 'minilm' or a local model folder")
    p.add_argument("--fraction", type=float, help="fraction of clients sampled per round (default 1)")
    p.add_argument("--strategy", choices=list(STRATEGIES), help="server update rule")
    p.add_argument("--proximal-mu", type=float, help="FedProx proximal weight (with --strategy fedprox)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any run-config key, e.g. lr=0.002")
    p.add_argument("--cpus-per-client", type=float, default=1.0,
                   help="CPUs Ray reserves per virtual client: with C cores, about C / this clients train at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints")
    p.add_argument("--stop-after-round", type=int, default=0, help="end the run after this round (0: never)")
    p.set_defaults(func=run)
