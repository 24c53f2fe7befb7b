"""`fedadapt deploy local`: the same ServerApp and ClientApp on Flower's deployment runtime, on this machine.

One SuperLink and N SuperNodes run as separate processes on 127.0.0.1 (free ports, never fixed ones) and
`flwr run . <connection>` runs the app on them, exactly as on real edge nodes; only the addresses are local.
Each SuperNode stands for an edge box and keeps what is its own in its own folder RUN/deploy/nodes/node-<i>/:
its data (only its users: the shard the simulation's partitioning would give partition i, written once),
its anonymization secret (client-state-dir), its Flower home (the app it is sent) and its private key. It is
told where they are through its node config (`--node-config "partition-id=i num-partitions=N data-dir=...
client-state-dir=..."`, read by client/app.py), which the server never sees; the backbone is each node's own
installed copy (the server never sends it).

Security (default): a CA and the SuperLink's certificate for 127.0.0.1/localhost (deployment/tls.py) in
RUN/deploy/tls/, the SuperLink started with its TLS flags, every SuperNode and `flwr` verifying it against
the CA; node authentication (deployment/node_auth.py): the SuperLink runs with `--enable-supernode-auth`,
each node's public key is registered with `flwr supernode register` before the node starts, and the node
signs with its private key. `insecure=True` turns both off (plain HTTP, any node may join): for debugging only.
The certificates, the node keys and the SuperLink's state (RUN/deploy/flwr/state.db: registered keys, earlier
runs) are made by the first run and kept by the next ones in the same RUN folder; a node is registered once.

The run is what `fedadapt simulate` does otherwise: the same preflight (every option and the data checked
before anything starts), run folder lock, run config file, outcome check (`flwr run` exits 0 on failure,
so RUN/run-complete.json decides) and report (RUN/summary.json, summary.md, plots; simulations/runner/run.py). What the
SuperLink reports about the run (`flwr ls --format json`: status, network traffic, compute time) is saved to
RUN/deploy/flwr-ls.json and copied into summary.json as runtime_*.
Every process started here carries the run's token in its environment and is stopped by PID at the end, on
failure, on Ctrl-C/SIGTERM, and by the watchdog if this process dies (simulations/runner/reaper.py). Logs stay in
RUN/deploy/logs/ (superlink.log, node-<i>.log, flwr.log).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployment.certs import ensure_tls
from deployment.node_auth import NodeKeys, register_node
from deployment.node_keys import ensure_node_keys
from deployment.tls import DEFAULT_HOSTS, TlsFiles
from simulations.runner.flower import PROJECT_ROOT, _bin, flower_env, free_port, stream_command
from simulations.runner.reaper import TOKEN_VAR, Watchdog, kill_marked, new_token
from simulations.runner.run import Plan, SimOptions, SimulationFailed, enrol_clients, preflight, prepare_run, report_run
from simulations.runner.runlock import RunLock

log = logging.getLogger(__name__)

DEPLOY_DIR = "deploy"
CONNECTION = "fedadapt-deploy"
INSECURE_WARNING = ("WARNING: --insecure: no TLS and no node authentication. Traffic between the SuperLink and "
                    "the nodes is plain HTTP and any process that reaches the port can join the federation. "
                    "For debugging only.")


@dataclass
class DeployOptions(SimOptions):
    """SimOptions (`clients` is the number of SuperNodes) plus the deployment's own switches."""

    insecure: bool = False  # no TLS, no node authentication (debugging only)
    start_timeout: float = 120.0  # seconds for the SuperLink to listen and every node to connect

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.clients}")
        super().__post_init__()
        if not self.start_timeout > 0:
            raise ValueError(f"start timeout must be > 0, got {self.start_timeout}")


@dataclass
class Deployment:
    """The processes and files of one local deployment (paths under RUN/deploy/)."""

    folder: Path
    insecure: bool
    token: str = field(default_factory=new_token)
    port: int = 0
    tls: TlsFiles | None = None
    superlink: subprocess.Popen[bytes] | None = None
    nodes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    keys: dict[int, NodeKeys] = field(default_factory=dict)
    started_at: dict[int, float] = field(default_factory=dict)  # time.monotonic() when each node was started
    env: dict[str, str] = field(default_factory=dict)

    @property
    def flwr_home(self) -> Path:
        return self.folder / "flwr"

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    def node_dir(self, index: int) -> Path:
        return self.folder / "nodes" / f"node-{index}"

    def write_security(self) -> None:
        """CA + server certificate, made by the first run and kept by the next ones (none when insecure)."""
        if not self.insecure:
            self.tls = ensure_tls(self.folder / "tls", DEFAULT_HOSTS)

    def start_superlink(self, timeout: float) -> None:
        self.port = free_port()
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = flower_env(self.flwr_home, {TOKEN_VAR: self.token})
        write_connection(self.flwr_home, self.port, None if self.tls is None else self.tls.ca_cert)
        cmd = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.flwr_home / "state.db"), "--isolation", "subprocess",
               "--disable-runtime-dependency-installation"]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.server_cert),
                    "--ssl-keyfile", str(self.tls.server_key), "--enable-supernode-auth"]
        self.superlink = _spawn(cmd, self.env, self.logs / "superlink.log")
        wait_listening(self.superlink, self.port, timeout, self.logs / "superlink.log")
        log.info("SuperLink pid %d on 127.0.0.1:%d (%s)", self.superlink.pid, self.port,
                 "INSECURE" if self.tls is None else "TLS, node authentication")

    def node_keys(self, index: int, register: bool = True) -> NodeKeys:
        """The node's key pair in its own folder (made once, kept across runs); registered with the SuperLink
        unless told not to or already registered in the SuperLink's kept state (a marker beside its state.db)."""
        keys, _ = ensure_node_keys(self.node_dir(index))
        marker = self.flwr_home / "registered" / f"node-{index}"
        if register and not marker.is_file():
            node_id = register_node(_bin("flwr"), keys.public_key, CONNECTION, self.env)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{node_id}\n")
            log.info("node %d: public key registered (SuperLink node id %d)", index, node_id)
        self.keys[index] = keys
        return keys

    def start_node(self, index: int, node_config: str, keys: NodeKeys | None = None) -> subprocess.Popen[bytes]:
        """A SuperNode with its own Flower home, the CA, its private key and `node_config`."""
        home = self.node_dir(index) / "flwr"
        env = flower_env(home, {TOKEN_VAR: self.token})
        cmd = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
               "--isolation", "subprocess", "--node-config", node_config]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.tls.ca_cert)]
            if keys is not None:
                cmd += ["--auth-supernode-private-key", str(keys.private_key)]
        proc = _spawn(cmd, env, self.logs / f"node-{index}.log")
        self.nodes[index] = proc
        self.started_at[index] = time.monotonic()
        log.info("SuperNode %d pid %d", index, proc.pid)
        return proc

    def wait_nodes(self, count: int, timeout: float) -> None:
        """Return once `count` nodes are online (`flwr supernode ls`); RuntimeError naming the missing ones."""
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            dead = {i: p.returncode for i, p in self.nodes.items() if p.poll() is not None}
            if dead:
                raise RuntimeError(f"SuperNode(s) exited before the run: {dead}; see {self.logs}/node-<i>.log")
            online = self.online_nodes()
            if online >= count:
                return
            time.sleep(1.0)
        raise RuntimeError(f"only {online} of {count} SuperNodes connected within {timeout:.0f} s; see {self.logs}")

    def wait_stale_sessions(self, timeout: float) -> None:
        """Return once no node is online in the SuperLink's kept state. A node of an earlier run that was killed
        stays "online" until its heartbeat window passes (about 60 s in Flower 1.42), and the SuperLink refuses
        to activate the same key again until then."""
        deadline = time.monotonic() + timeout
        stale = self.online_nodes()
        if stale:
            log.info("waiting for %d node session(s) of an earlier run to expire", stale)
        while stale and time.monotonic() < deadline:
            time.sleep(2.0)
            stale = self.online_nodes()
        if stale:
            raise RuntimeError(f"{stale} node session(s) of an earlier run still online after {timeout:.0f} s")

    def online_nodes(self) -> int:
        proc = subprocess.run([_bin("flwr"), "supernode", "ls", CONNECTION, "--format", "json"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        try:
            listing = json.loads(proc.stdout[proc.stdout.index("{"):])
        except ValueError:
            return 0
        return sum(1 for n in listing.get("nodes", []) if str(n.get("status", "")).lower() == "online")

    def runtime_report(self) -> dict[str, Any]:
        """What the SuperLink itself reports about the run (`flwr ls --format json`, saved to
        RUN/deploy/flwr-ls.json): its status, network traffic and compute time; {} if it cannot be read."""
        proc = subprocess.run([_bin("flwr"), "ls", CONNECTION, "--format", "json"], env=self.env,
                              capture_output=True, text=True, timeout=60, check=False)
        try:
            runs = json.loads(proc.stdout[proc.stdout.index("{"):]).get("runs", [])
        except ValueError:
            return {}
        (self.folder / "flwr-ls.json").write_text(json.dumps(runs, indent=1))
        if not runs:
            return {}
        run = max(runs, key=lambda r: str(r.get("pending-at", "")))  # the SuperLink's state keeps earlier runs
        return {"runtime_status": run.get("status"),
                "runtime_inbound_bytes": run.get("network-traffic", {}).get("inbound-bytes"),
                "runtime_outbound_bytes": run.get("network-traffic", {}).get("outbound-bytes"),
                "runtime_clientapp_seconds": run.get("compute-time", {}).get("clientapp-seconds"),
                "runtime_serverapp_seconds": run.get("compute-time", {}).get("serverapp-seconds")}

    def stop(self, grace: float = 3.0) -> list[int]:
        """Stop every process of the deployment (SIGTERM, then SIGKILL) and reap the ones started here."""
        stopped = kill_marked(self.token, grace)
        for proc in [*self.nodes.values(), *([self.superlink] if self.superlink else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(grace)
        return stopped


def write_connection(flwr_home: Path, port: int, ca_cert: Path | None) -> Path:
    """`$FLWR_HOME/config.toml` with the deployment's connection as default (TLS with the CA unless None)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = 'insecure = true\n' if ca_cert is None else f'root-certificates = "{ca_cert}"\n'
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "127.0.0.1:{port}"\n{security}', encoding="utf-8")
    return path


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    out = open(log_path, "ab")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float, log_path: Path) -> None:
    """Return once 127.0.0.1:port accepts connections; RuntimeError with the log's tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}:\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def write_node_data(plan: Plan, nodes: int, folder: Path) -> list[Path]:
    """Each node's own data folder, RUN/deploy/nodes/node-<i>/data (see `write_shards`)."""
    return write_shards(plan.data_dir, nodes, plan.cfg.partition_mode, plan.cfg.seed,
                        lambda i: folder / "nodes" / f"node-{i}" / "data")


def write_shards(data_dir: Path, nodes: int, partition_mode: str, seed: int, where: Callable[[int], Path]
                 ) -> list[Path]:
    """Node i's own data at where(i): exactly the shard the simulation's partitioning gives partition i (its
    users, their events and reviews, the public catalog). Written once; an existing complete folder is kept."""
    from common.data.partition import partition_user_ids, shard_marketplace
    from common.data.schema import read_marketplace, write_marketplace

    market = read_marketplace(data_dir)
    shards = partition_user_ids(market, nodes, partition_mode, seed)
    if len(shards) != nodes:
        raise ValueError(f"the data splits into {len(shards)} non-empty shards, not {nodes}: use fewer nodes")
    paths = []
    for i, users in enumerate(shards):
        path = where(i)
        if not (path / ".complete").is_file():
            write_marketplace(shard_marketplace(market, users), path)
            (path / ".complete").write_text("ok\n")
        paths.append(path)
    return paths


def node_config(index: int, nodes: int, data: Path, state: Path) -> str:
    """The node config a SuperNode is started with (client/app.py reads it)."""
    return f'partition-id={index} num-partitions={nodes} data-dir="{data}" client-state-dir="{state}"'


def deploy_local(opts: DeployOptions, on_started: Callable[[Deployment], None] | None = None,
                 on_line: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the federation on a local SuperLink + `opts.clients` SuperNodes; returns the summary.

    `on_started(deployment)` runs once every node is online, before `flwr run` (tests start an extra node
    there); `on_line` sees every line `flwr run` prints (tests act on round progress)."""
    if opts.insecure:
        log.warning(INSECURE_WARNING)
    plan = preflight(opts)
    with RunLock(opts.out) as lock:
        assert lock.fd is not None
        prepared = prepare_run(opts, plan)
        folder = (opts.out / DEPLOY_DIR).resolve()
        dep = Deployment(folder, opts.insecure)
        watchdog = Watchdog(dep.token, hold_fds=(lock.fd,))
        started = time.monotonic()
        rc = None
        runtime: dict[str, Any] = {}
        try:
            data = write_node_data(plan, opts.clients, folder)
            dep.write_security()
            enrol_clients(plan.cfg, opts.clients, lambda i: dep.node_dir(i) / "state")  # each in its node's folder
            dep.start_superlink(opts.start_timeout)
            dep.wait_stale_sessions(opts.start_timeout)
            for i in range(opts.clients):
                keys = None if opts.insecure else dep.node_keys(i)
                dep.start_node(i, node_config(i, opts.clients, data[i], dep.node_dir(i) / "state"), keys)
            dep.wait_nodes(opts.clients, opts.start_timeout)
            if on_started is not None:
                on_started(dep)
            cmd = [_bin("flwr"), "run", str(PROJECT_ROOT), CONNECTION, "--stream", "--run-config",
                   str(prepared.run_config)]
            with open(dep.logs / "flwr.log", "a", encoding="utf-8") as flog:
                rc = stream_command(cmd, dep.env, _progress(opts, on_line), opts.timeout, PROJECT_ROOT, flog)
            runtime = dep.runtime_report()
        finally:
            dep.stop()
            watchdog.close()
        wall = time.monotonic() - started
        if not prepared.marker.is_file():
            tail = (dep.logs / "flwr.log").read_text(errors="replace").splitlines()[-12:] if rc is not None else []
            raise SimulationFailed(f"flwr run exited {rc} but the ServerApp did not finish "
                                   f"({prepared.marker.name} missing); see the logs in {dep.logs}; last lines:\n"
                                   + "\n".join(tail))
        return report_run(opts, prepared, wall, {"runtime": "deployment", "nodes": opts.clients,
                                                 "tls": not opts.insecure, "node_auth": not opts.insecure,
                                                 **runtime})


def _progress(opts: SimOptions, also: Callable[[str], None] | None) -> Callable[[str], None]:
    def on_line(line: str) -> None:
        if not opts.quiet and ("[fedadapt]" in line or "ERROR" in line):
            print(line.split("[fedadapt]")[-1].strip() if "[fedadapt]" in line else line, flush=True)
        if also is not None:
            also(line)
    return on_line
