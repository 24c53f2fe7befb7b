"""`fedadapt deploy server`: the server side of a deployment whose nodes run on other hosts.

Everything the server keeps lives in DIR and survives restarts:

    DIR/tls/        ca.key (never leaves DIR), ca.pem (the one file every node needs), server.pem/.key
    DIR/secret/     superexec: the shared secret between the SuperLink and its SuperExec
    DIR/flwr/       Flower's home: state.db (registered node keys, runs), config.toml (the `fedadapt-server`
                    connection for the `flwr` CLI on this machine), app bundles
    DIR/logs/       superlink.log, superexec.log, gateway.log

Three processes: `flower-superlink` on 127.0.0.1 only (its one port serves the Fleet, Control and Runtime APIs;
TLS, `--enable-supernode-auth`, `--isolation process`, SuperExec secret, its database in DIR), `flower-superexec`
(runs the ServerApp against the SuperLink's Runtime API with the secret) and the Fleet gateway
(deployment/gateway.py) on the public address, which forwards the Fleet API only. The Control API (register keys,
start runs) is reached from this machine only, through the `fedadapt-server` connection.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deployment.certs import ensure_tls, tls_files
from deployment.secrets import ensure_secret
from deployment.supervisor import Supervisor
from deployment.tls import check_hosts
from simulations.runner.flower import _bin, flower_env

log = logging.getLogger(__name__)

CONNECTION = "fedadapt-server"
DEFAULT_CONTROL_PORT = 9093
DEFAULT_FLEET_PORT = 9092
LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class ServerSpec:
    """What `fedadapt deploy server` is told."""

    folder: Path
    hosts: tuple[str, ...]  # names/addresses the nodes dial (in the server certificate)
    fleet_listen: str  # HOST:PORT the gateway binds (the public address)
    control_port: int = DEFAULT_CONTROL_PORT  # the SuperLink's own port, 127.0.0.1 only
    health_port: int = 0  # 0: none; else the SuperLink's gRPC health server on 127.0.0.1:<port>

    def __post_init__(self) -> None:
        check_hosts(self.hosts)
        host, sep, port = self.fleet_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--fleet-address must be HOST:PORT, got {self.fleet_listen!r}")
        if int(port) == self.control_port and host in ("127.0.0.1", "localhost"):
            raise ValueError("--fleet-address and --control-port must differ")
        if not 0 < self.control_port < 65536:
            raise ValueError(f"--control-port must be a TCP port, got {self.control_port}")

    @property
    def tls(self) -> Path:
        return self.folder / "tls"

    @property
    def secret(self) -> Path:
        return self.folder / "secret" / "superexec"

    @property
    def flwr_home(self) -> Path:
        return self.folder / "flwr"

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.control_port}"


def superlink_command(spec: ServerSpec) -> list[str]:
    tls = tls_files(spec.tls)
    cmd = [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(spec.control_port),
           "--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
           "--ssl-keyfile", str(tls.server_key), "--enable-supernode-auth", "--isolation", "process",
           "--superexec-auth-secret-file", str(spec.secret), "--database", str(spec.flwr_home / "state.db"),
           "--disable-runtime-dependency-installation"]
    if spec.health_port:
        cmd += ["--health-server-address", f"127.0.0.1:{spec.health_port}"]
    return cmd


def superexec_command(spec: ServerSpec) -> list[str]:
    return [_bin("flower-superexec"), "--runtime-api-address", spec.control_address,
            "--root-certificates", str(tls_files(spec.tls).ca_cert), "--superexec-auth-secret-file", str(spec.secret)]


def gateway_command(spec: ServerSpec) -> list[str]:
    tls = tls_files(spec.tls)
    return [sys.executable, "-m", "deployment.gateway", "--listen", spec.fleet_listen, "--upstream",
            spec.control_address, "--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
            "--ssl-ca-certfile", str(tls.ca_cert)]


def write_connection(spec: ServerSpec) -> Path:
    """`DIR/flwr/config.toml`: the `fedadapt-server` connection (loopback, TLS with the CA) as the default."""
    spec.flwr_home.mkdir(parents=True, exist_ok=True)
    path = spec.flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                    f'address = "{spec.control_address}"\n'
                    f'root-certificates = "{tls_files(spec.tls).ca_cert.resolve()}"\n', encoding="utf-8")
    return path


def prepare_server(spec: ServerSpec) -> None:
    """TLS files (made once, kept; the certificate must name every host), the secret, the connection."""
    spec.folder.mkdir(parents=True, exist_ok=True)
    spec.folder.chmod(0o700)
    ensure_tls(spec.tls, list(dict.fromkeys([*spec.hosts, *LOCAL_HOSTS])))
    ensure_secret(spec.secret)
    write_connection(spec)


def instructions(spec: ServerSpec) -> str:
    home = spec.flwr_home.resolve()
    return (f"Fleet API (the only public port): {spec.fleet_listen}; Control API: {spec.control_address} (this "
            f"machine only)\nCopy to every node: {tls_files(spec.tls).ca_cert.resolve()} (nothing else of "
            f"{spec.tls})\nRegister a node's public key:  FLWR_HOME={home} flwr supernode register NODE.pub "
            f"{CONNECTION}\nStart a run:  FLWR_HOME={home} flwr run . {CONNECTION} --stream --run-config FILE")


def run_server(spec: ServerSpec, extra_env: dict[str, str] | None = None, restart_delay: float = 5.0) -> int:
    """Start the SuperLink, its SuperExec and the gateway; keep them up until SIGINT/SIGTERM."""
    env = flower_env(spec.flwr_home, extra_env)
    sup = Supervisor(spec.folder / "logs", restart_delay)
    sup.add("superlink", superlink_command(spec), env)
    sup.add("superexec", superexec_command(spec), env)
    sup.add("gateway", gateway_command(spec), env)
    return sup.run(ready=1.0)


def check_hosts_arg(hosts: Sequence[str]) -> tuple[str, ...]:
    if not hosts:
        raise ValueError("--host is required: the name or address the nodes dial (repeat for several)")
    return check_hosts(hosts)
