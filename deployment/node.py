"""`fedadapt deploy node`: an edge node that joins a SuperLink on another host.

Run on the node. Everything the node owns stays in its state folder (STATE) and is kept across restarts:

    STATE/keys/node, node.pub   its identity: made here on first start (the private key never leaves; refused to be
                                overwritten), node.pub is what the operator registers on the server
    STATE/secret/superexec      the SuperExec shared secret of this node (never sent anywhere)
    STATE/client/               client-state-dir: the anonymization secret; client/cache/ the node's disk cache of
                                frozen-weight results (item text vectors, lower-layer states), at most --cache-mb
                                (common/federation/node_cache.py), kept across messages and runs
    STATE/flwr/                 Flower's home on the node (the app bundles it is sent)
    STATE/logs/                 supernode.log, superexec.log

The node's data (SHARD: only its users) is read where it is. Two processes run: `flower-supernode` (dials the
server's Fleet address over TLS, verifying it with the CA; signs with the node key; its Runtime API on 127.0.0.1
only, `--isolation process`, SuperExec secret) and `flower-superexec`, which runs the ClientApp per message against
that Runtime API with the same secret. A node whose key is not registered yet is refused by the SuperLink; its
SuperNode is started again every `restart_delay` seconds until the operator has registered it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from deployment.node_keys import ensure_node_keys, node_key_paths
from deployment.secrets import ensure_secret
from deployment.supervisor import Supervisor
from simulations.runner.flower import _bin, flower_env

log = logging.getLogger(__name__)

DEFAULT_RUNTIME_PORT = 9094


@dataclass(frozen=True)
class NodeSpec:
    """What `fedadapt deploy node` is told."""

    superlink: str  # HOST:PORT of the server's public Fleet address
    root_cert: Path  # the CA certificate (ca.pem) copied from the server
    data: Path  # this node's own data folder
    state: Path  # everything the node keeps (see the module docstring)
    partition_id: int
    num_partitions: int
    runtime_port: int = DEFAULT_RUNTIME_PORT  # the SuperNode's Runtime API, 127.0.0.1 only
    health_port: int = 0  # 0: no health server; else a gRPC health server on 127.0.0.1:<port>
    cache_mb: int = 1024  # node-cache-mb: the disk cache under STATE/client/cache; 0 = none

    def __post_init__(self) -> None:
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--superlink must be HOST:PORT, got {self.superlink!r}")
        if not 0 <= self.partition_id < self.num_partitions:
            raise ValueError(f"--partition-id {self.partition_id} is outside [0, --num-partitions "
                             f"{self.num_partitions})")
        if self.cache_mb < 0:
            raise ValueError(f"--cache-mb must be >= 0 (0 = no disk cache), got {self.cache_mb}")
        for name, port_ in (("--runtime-port", self.runtime_port), ("--health-port", self.health_port)):
            if not 0 <= port_ < 65536 or (name == "--runtime-port" and port_ == 0):
                raise ValueError(f"{name} must be a TCP port, got {port_}")

    @property
    def secret(self) -> Path:
        return self.state / "secret" / "superexec"

    @property
    def client_state(self) -> Path:
        return self.state / "client"

    @property
    def flwr_home(self) -> Path:
        return self.state / "flwr"

    @property
    def runtime_address(self) -> str:
        return f"127.0.0.1:{self.runtime_port}"


def check_inputs(spec: NodeSpec) -> None:
    """The CA and the data folder named before anything is written (ValueError naming the problem)."""
    from simulations.runner.preflight import inspect_data

    try:
        x509.load_pem_x509_certificate(spec.root_cert.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--root-cert {spec.root_cert} is not a readable PEM certificate: {exc}") from exc
    inspect_data(spec.data)


def node_config(spec: NodeSpec) -> str:
    return (f'partition-id={spec.partition_id} num-partitions={spec.num_partitions} '
            f'data-dir="{spec.data.resolve()}" client-state-dir="{spec.client_state.resolve()}" '
            f'node-cache-mb={spec.cache_mb}')


def supernode_command(spec: NodeSpec) -> list[str]:
    cmd = [_bin("flower-supernode"), "--superlink", spec.superlink, "--root-certificates", str(spec.root_cert),
           "--auth-supernode-private-key", str(node_key_paths(spec.state).private_key),
           "--isolation", "process", "--host", "127.0.0.1", "--port", str(spec.runtime_port),
           "--superexec-auth-secret-file", str(spec.secret), "--node-config", node_config(spec)]
    if spec.health_port:
        cmd += ["--health-server-address", f"127.0.0.1:{spec.health_port}"]
    return cmd


def superexec_command(spec: NodeSpec) -> list[str]:
    """SuperExec for this node's ClientApps: the Runtime API is on loopback, so no TLS; the secret authenticates."""
    return [_bin("flower-superexec"), "--runtime-api-address", spec.runtime_address, "--insecure",
            "--superexec-auth-secret-file", str(spec.secret)]


def prepare_node(spec: NodeSpec) -> tuple[Path, bool]:
    """Check the inputs, then make (or keep) the key pair, the secret and the folders; (public key, made now?)."""
    check_inputs(spec)
    keys, made = ensure_node_keys(spec.state)
    ensure_secret(spec.secret)
    for folder in (spec.client_state, spec.flwr_home):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    spec.state.chmod(0o700)
    return keys.public_key, made


def registration_hint(public_key: Path, made: bool) -> str:
    line = public_key.read_text().strip()
    return (f"node public key ({'new' if made else 'kept from an earlier start'}): {public_key}\n{line}\n"
            "Copy only this public key to the server and register it there:\n"
            "  FLWR_HOME=SERVER_DIR/flwr flwr supernode register node.pub fedadapt-server\n"
            "The private key next to it never leaves this machine.")


def run_node(spec: NodeSpec, restart_delay: float = 10.0) -> int:
    """Start the SuperNode and its SuperExec and keep them up until SIGINT/SIGTERM."""
    env = flower_env(spec.flwr_home)
    sup = Supervisor(spec.state / "logs", restart_delay)
    sup.add("supernode", supernode_command(spec), env)
    sup.add("superexec", superexec_command(spec), env)
    log.info("node %d/%d -> %s (TLS, node authentication); logs in %s", spec.partition_id, spec.num_partitions,
             spec.superlink, spec.state / "logs")
    return sup.run(ready=1.0)
