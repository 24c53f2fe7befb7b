"""The simulation runner behind `fedadapt simulate` (cli/simulate.py): a federated run of the Flower app on a
local simulation federation, with results.

Before anything starts or is written it checks the options, the backbone, the data (generated in memory when
--data is not given), the segment keys and, with --resume, the checkpoint (simulations/runner/preflight.py). Then it
locks RUN (one run per folder), writes the data and the run config as a TOML file, starts a private SuperLink
(simulations/runner/flower.py), runs `flwr run . --stream`, prints one progress line per round, checks that the
ServerApp really finished (`flwr run` exits 0 on failure), stops every process of the run and writes
RUN/summary.json, RUN/summary.md and RUN/plots/*.png next to the ServerApp's metrics.jsonl and checkpoints/.

A fresh run refuses a folder that already holds a run's checkpoints or metrics unless `overwrite` is set (then
the old results are removed once the folder is locked; RUN/data is kept): nothing saved is lost by accident.
An `Interrupted` exception (the CLI raises it from its signal handler) unwinds through `simulate`, whose
clean-up stops every process of the run; the last checkpoint stays intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from common.data.schema import Marketplace, read_marketplace
from common.defaults import ADAPTER_KIND, BACKBONE, ROUNDS
from common.names import CHECKPOINTS_DIR, COMPLETE_FILE, METRICS_FILE, STOPPED_FILE, SUMMARY_FILE
from common.privacy.budget import check_first_round
from common.privacy.user_level import default_delta
from common.protocol import FedConfig
from common.secagg.identity import REGISTRY_FILE, enrol, write_registry
from common.secagg.layout import SEGMENT_HIDDEN
from server.clients import sample_nodes
from simulations.runner.flower import PROJECT_ROOT, SuperLink, flwr_run
from simulations.runner.preflight import (
    DataFacts,
    check_backbone,
    check_clients,
    check_fresh,
    check_resume,
    check_segments,
    inspect_data,
)
from simulations.runner.public_banks import public_banks
from simulations.runner.report import read_metrics, write_report
from simulations.runner.runlock import RunLock

log = logging.getLogger(__name__)

SUPERLINK_LOG = "superlink.log"  # a failed or interrupted run keeps the SuperLink's output here
# What a run writes into its folder besides data/: what `overwrite` removes.
RESULTS = (CHECKPOINTS_DIR, METRICS_FILE, SUMMARY_FILE, "summary.md", "plots", COMPLETE_FILE, STOPPED_FILE,
           "run_config.toml", "flwr.log", SUPERLINK_LOG)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Preset: run-config overrides + simulation size. smoke is CI-sized; demo is what `make demo` runs.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"clients": 4, "rounds": 2, "users": 160, "products": 300, "backbone": "tiny",
              "config": {"batch-size": 16, "lr": 5e-3, "min-segment-clients": 1}},
    "demo": {"clients": 20, "rounds": 3, "users": 1000, "products": 400, "backbone": "", "fraction": 0.5,
             "config": {"batch-size": 16, "lr": 1e-2, "min-segment-clients": 2, "max-train-users": 32,
                        "max-eval-users": 20, "fraction-evaluate": 0.5}},
}


@dataclass
class SimOptions:
    """Everything a simulation needs; `config` holds run-config overrides (kebab-case keys)."""

    out: Path
    clients: int = 4
    rounds: int = ROUNDS
    data: Path | None = None
    users: int = 160
    products: int = 120
    seed: int = 0
    adapter: str = ADAPTER_KIND
    segments: str = "region,season"
    backbone: str = BACKBONE  # "" = the offline MiniLM
    fraction: float = 1.0
    resume: bool = False
    stop_after_round: int = 0
    overwrite: bool = False  # replace an earlier run's results in `out` (without it such a folder is refused)
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


@dataclass
class Plan:
    """What the preflight established; nothing of it is on disk yet."""

    cfg: FedConfig
    data_dir: Path
    generated: Marketplace | None  # synthetic data to write into data_dir once the run folder is locked
    resume_after: int | None  # the checkpoint round a --resume continues after


def data_folder(opts: SimOptions) -> Path:
    """--data, or RUN/data where synthetic data is generated."""
    return Path(opts.data).resolve() if opts.data is not None else (opts.out / "data").resolve()


def _data(opts: SimOptions, folder: Path) -> tuple[Marketplace | None, DataFacts]:
    """(data to generate, facts): the folder's data if --data was given or an earlier run generated it into
    RUN/data; else synthetic data, generated in memory and written only once the run folder is locked."""
    if opts.data is not None or (folder / ".complete").is_file():
        return None, inspect_data(folder)
    from common.data import synthetic

    quiet = logging.getLogger(synthetic.__name__)
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # a preflight error stays one line; writing the data logs what was written
    try:
        market = synthetic.generate_marketplace(opts.users, opts.products, seed=opts.seed)
    finally:
        quiet.setLevel(level)
    return market, DataFacts(tuple(market.users.columns), len(market.users), market)


def preflight(opts: SimOptions) -> Plan:
    """Check options, data, segments, clients, (with --resume) the checkpoint and the backbone; reads only."""
    if opts.out.exists() and not opts.out.is_dir():
        raise ValueError(f"--out {opts.out} is a file, not a folder")
    data_dir = data_folder(opts)
    cfg = run_config(opts, data_dir)
    generated, facts = _data(opts, data_dir)
    check_segments(cfg.segment_key_tuple, facts.user_columns)
    if cfg.secure_aggregation == SEGMENT_HIDDEN and not cfg.secagg_banks:  # the run's public bank list
        market = facts.market if facts.market is not None else read_marketplace(data_dir)
        cfg = replace(cfg, secagg_banks=",".join(public_banks(market, cfg.adapter_segment_keys)))
    check_clients(facts, cfg, opts.clients)
    if cfg.init_banks:  # the starting banks fit this catalog and model shape (reads seq.json only)
        from common.data.examples import build_item_texts
        from common.federation.seq_task import check_init_banks

        market = facts.market if facts.market is not None else read_marketplace(data_dir)
        check_init_banks(cfg, build_item_texts(market.products))
    if cfg.dp.user_level and "dp-delta" not in opts.config:  # user-level DP: delta = 1/N^1.1 for the data's N users
        cfg = replace(cfg, dp_delta=default_delta(facts.users))
    if not opts.resume:  # a target below one round's epsilon could not train at all
        check_first_round(cfg.dp, opts.clients, len(sample_nodes(range(opts.clients), cfg.fraction_train, 0, 1)))
    resume_after = check_resume(opts.out / CHECKPOINTS_DIR, cfg) if opts.resume else None
    gpus_per_client(cfg)  # cuda without a GPU: one line, exit 2, nothing started
    check_backbone(cfg.backbone, cfg.backbone_adapter_layers)  # last: a custom folder imports
    return Plan(cfg, data_dir, generated, resume_after)


def remove_results(out: Path) -> None:
    """Delete what an earlier run wrote into `out` (checkpoints, metrics, summaries, plots, logs, markers); its
    data folder stays. Only called with `overwrite`, once `out` is locked."""
    for name in RESULTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _write_data(plan: Plan) -> None:
    if plan.generated is None:
        return
    from common.data.schema import write_marketplace

    write_marketplace(plan.generated, plan.data_dir)
    (plan.data_dir / ".complete").write_text("ok\n")


def run_config(opts: SimOptions, data_dir: Path) -> FedConfig:
    """The typed run config this simulation sends (validated here, before any process starts)."""
    values: dict[str, Any] = {
        "num-server-rounds": opts.rounds, "seed": opts.seed, "data-dir": str(data_dir),
        "out-dir": str(opts.out.resolve()), "backbone": opts.backbone, "adapter-kind": opts.adapter,
        "segment-keys": opts.segments, "fraction-train": opts.fraction, "resume": opts.resume,
        "stop-after-round": opts.stop_after_round, "client-cpus": client_cpus(opts.cpus_per_client),
    }
    values.update(opts.config)
    if values.get("init-banks"):  # the server process may run elsewhere than this working directory
        values["init-banks"] = str(Path(str(values["init-banks"])).resolve())
    if values.get("secure-aggregation", "off") != "off" and "secagg-identities" not in values:
        values["secagg-identities"] = str(opts.out.resolve() / REGISTRY_FILE)  # enrol_clients writes it
    return FedConfig.from_run_config(values)


def enrol_clients(cfg: FedConfig, partitions: int, state_dir: Callable[[int], Path] | None = None) -> None:
    """Secure aggregation: draw every partition's identity key in its state folder (once; kept across runs)
    and write the registry the run config names (common/secagg/identity.py), before any client starts."""
    if cfg.secure_aggregation == "off" or not cfg.secagg_identities:
        return
    from common.federation.client_secret import resolve_state_dir

    shared = resolve_state_dir(cfg.client_state_dir, cfg.data_dir)
    keys = {pid: enrol((state_dir or (lambda _: shared))(pid), pid) for pid in range(partitions)}
    write_registry(Path(cfg.secagg_identities), keys)


def client_cpus(cpus_per_client: float) -> int:
    """The most torch threads a client update takes: the CPUs Ray reserves for it (at least one), fewer while
    other processes keep some busy (common/threads.py). Without it a client given 2 CPUs trained on 1 thread
    (measured 1.79x slower on 2 cores); `--set client-threads=N` fixes the count instead."""
    return max(1, int(cpus_per_client))


def gpus_per_client(cfg: FedConfig) -> float:
    """Flower's `client-resources-num-gpus`: one GPU per client when the run computes on CUDA, else none.
    Resolving the device here refuses `cuda` on a machine without a GPU before any process starts."""
    from common.device import resolve_device

    return 1.0 if resolve_device(cfg.device).type == "cuda" else 0.0


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
    plan = preflight(opts)
    with RunLock(opts.out) as lock:
        assert lock.fd is not None
        return _simulate_locked(opts, plan, lock.fd, on_superlink)


@dataclass(frozen=True)
class Prepared:
    """What a locked run folder holds before any process starts: the run config file and the marker the
    ServerApp must write (RUN/run-complete.json, or RUN/run-stopped.json when it stops early on purpose)."""

    run_config: Path
    marker: Path
    expected_rounds: int


def prepare_run(opts: SimOptions, plan: Plan) -> Prepared:
    """Under the run folder's lock: refuse or clear an earlier run, write the data and the run config, remove
    stale markers. Shared by the simulation and the deployment (deployment/local.py)."""
    if not opts.resume and not opts.overwrite:
        check_fresh(opts.out)  # under the lock: a folder in use is reported as such, not as an earlier run
    if opts.overwrite and not opts.resume:
        remove_results(opts.out)
    _write_data(plan)
    if plan.resume_after is not None:
        log.info("resuming after checkpoint round %d", plan.resume_after)
    toml = write_run_config(plan.cfg, opts.out / "run_config.toml")
    expected = opts.stop_after_round if 0 < opts.stop_after_round < opts.rounds else opts.rounds
    marker = opts.out / (STOPPED_FILE if expected < opts.rounds else COMPLETE_FILE)
    for stale in (COMPLETE_FILE, STOPPED_FILE, SUPERLINK_LOG):  # only this run may write them
        (opts.out / stale).unlink(missing_ok=True)
    return Prepared(toml, marker, expected)


def report_run(opts: SimOptions, prepared: Prepared, wall: float, extra: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """Check the ServerApp's marker (rounds as expected) and write RUN/summary.json, summary.md and plots."""
    marker = prepared.marker if prepared.marker.is_file() else opts.out / COMPLETE_FILE
    done = json.loads(marker.read_text())
    reason = str(done.get("stop_reason", ""))  # the ServerApp ended early on purpose (the privacy budget)
    if int(done["rounds"]) != prepared.expected_rounds and not reason:
        raise SimulationFailed(f"run ended after round {done['rounds']}, expected {prepared.expected_rounds}")
    info = {"clients": opts.clients, "backbone": opts.backbone or "minilm", "adapter": opts.adapter,
            "segments": opts.segments, "wall_s_total": wall, "server_wall_s": done.get("server_wall_s"),
            "stopped_early": prepared.expected_rounds < opts.rounds or bool(reason), "stop_reason": reason,
            **(extra or {})}
    summary = write_report(opts.out, info)
    trained = sum(1 for r in read_metrics(opts.out) if int(r.get("clients_sampled", 0)) > 0)
    if trained and summary["rounds_all_dropped"] == trained:
        raise SimulationFailed(f"every sampled client dropped in all {trained} training rounds: nothing was trained "
                               f"(a killed worker, e.g. Ray's memory monitor, shows in {opts.out / 'flwr.log'}); "
                               f"the report was written to {opts.out}")
    return summary


def _simulate_locked(opts: SimOptions, plan: Plan, lock_fd: int,
                     on_superlink: Callable[[SuperLink], None] | None) -> dict[str, Any]:
    prepared = prepare_run(opts, plan)
    enrol_clients(plan.cfg, opts.clients)
    toml, marker = prepared.run_config, prepared.marker
    flwr_home = (opts.flwr_home or PROJECT_ROOT / ".work" / "flwr" / f"sim-{int(time.time() * 1000)}-{os.getpid()}")
    started = time.monotonic()

    def on_line(line: str) -> None:
        if "[fedadapt]" in line or "ERROR" in line or "Traceback" in line:
            if not opts.quiet:
                print(line.split("[fedadapt]")[-1].strip() if "[fedadapt]" in line else line, flush=True)

    link = SuperLink(flwr_home.resolve(), hold_fds=(lock_fd,))
    finished = False
    try:
        with open(opts.out / "flwr.log", "a", encoding="utf-8") as flog:
            link.start()
            if on_superlink is not None:
                on_superlink(link)
            rc = flwr_run(link, toml, opts.clients, opts.cpus_per_client, on_line=on_line, timeout=opts.timeout,
                          log_file=flog, gpus_per_client=gpus_per_client(plan.cfg))
        finished = marker.is_file() or (opts.out / COMPLETE_FILE).is_file()  # the privacy budget may end it early
    finally:
        link.stop(keep_log=None if finished else opts.out / SUPERLINK_LOG)
    wall = time.monotonic() - started
    if not finished:
        tail = (opts.out / "flwr.log").read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SimulationFailed(f"flwr run exited {rc} but the ServerApp did not finish ({marker.name} missing); "
                               f"see {opts.out / 'flwr.log'} and {opts.out / SUPERLINK_LOG}; last log lines:\n"
                               + "\n".join(tail))
    return report_run(opts, prepared, wall)


class Interrupted(KeyboardInterrupt):
    """One of STOP_SIGNALS arrived; unwinds like Ctrl-C, so every `finally` on the way stops what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
