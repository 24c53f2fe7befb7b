"""A node that joins from another host: `fedadapt deploy server` in one network namespace, two
`fedadapt deploy node` in another, joined by a veth pair the test makes (10.231.<k>.1 <-> .2), TLS and node
authentication on, one federated round of the tiny backbone. Where namespaces cannot be made (not root, no `ip`),
the same test runs with both sides on 127.0.0.1 and says so (`edge-network` in the test's user properties and a
warning); the cross-host checks that need two addresses are then skipped.

Checked on the way, from the nodes' side: the SuperLink's own port (Control and Runtime APIs) cannot be reached at
all, the gateway refuses a Control API call (the attack: registering a key or starting a run from a node's network),
node keys are made on the nodes and the server never holds a node's private key; a restarted node keeps its key.
Measured on the shared 2-core machine: about 100 s with namespaces (most of it the per-message ClientApp start-up).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from simulations.runner.flower import _bin

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

FLEET_PORT = 19092
CONTROL_PORT = 19093


@dataclass
class Hosts:
    """Two places to run processes: a command prefix and the address the other side sees."""

    mode: str  # "namespaces" or "loopback"
    server_prefix: list[str]
    node_prefix: list[str]
    server_address: str
    names: tuple[str, ...] = ()


def _try_namespaces() -> Hosts | None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    tag = uuid.uuid4().hex[:6]
    server, node = f"fa-srv-{tag}", f"fa-node-{tag}"
    subnet = 231
    cmds = [["ip", "netns", "add", server], ["ip", "netns", "add", node],
            ["ip", "link", "add", f"fa{tag}a", "type", "veth", "peer", "name", f"fa{tag}b"],
            ["ip", "link", "set", f"fa{tag}a", "netns", server], ["ip", "link", "set", f"fa{tag}b", "netns", node],
            ["ip", "-n", server, "addr", "add", f"10.{subnet}.0.1/24", "dev", f"fa{tag}a"],
            ["ip", "-n", node, "addr", "add", f"10.{subnet}.0.2/24", "dev", f"fa{tag}b"],
            ["ip", "-n", server, "link", "set", f"fa{tag}a", "up"],
            ["ip", "-n", node, "link", "set", f"fa{tag}b", "up"],
            ["ip", "-n", server, "link", "set", "lo", "up"], ["ip", "-n", node, "link", "set", "lo", "up"]]
    for cmd in cmds:
        if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
            for name in (server, node):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            return None
    return Hosts("namespaces", ["ip", "netns", "exec", server], ["ip", "netns", "exec", node], f"10.{subnet}.0.1",
                 (server, node))


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> Iterator[Hosts]:
    made = _try_namespaces()
    if made is None:
        warnings.warn("network namespaces unavailable here: the edge test runs on 127.0.0.1", stacklevel=1)
        made = Hosts("loopback", [], [], "127.0.0.1")
    request.node.user_properties.append(("edge-network", made.mode))
    print(f"edge-network: {made.mode}")
    yield made
    for name in made.names:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(what: str, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _in(prefix: list[str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)


def test_nodes_on_another_host_join_over_the_fleet_gateway_only(hosts: Hosts, tmp_path: Path) -> None:
    """Server side in one namespace, two nodes in another: the nodes make their keys, the operator registers the
    public keys on the server, one round runs with both nodes; from the nodes' network the SuperLink's port is
    unreachable and the gateway refuses the Control API; a restarted node keeps its identity."""
    # Prepare: the server side and its CA
    fedadapt = [sys.executable, "-m", "cli.main", "deploy"]
    server_dir, logs = tmp_path / "server", tmp_path / "logs"
    logs.mkdir()
    market = tmp_path / "market"
    write_marketplace(generate_marketplace(80, 150, seed=3), market)
    subprocess.run([*fedadapt, "shards", "--data", str(market), "--nodes", "2", "--out", str(tmp_path / "shards")],
                   check=True, capture_output=True)
    server = _spawn([*hosts.server_prefix, *fedadapt, "server", "--dir", str(server_dir), "--host",
                     hosts.server_address, "--fleet-address", f"{hosts.server_address}:{FLEET_PORT}",
                     "--control-port", str(CONTROL_PORT)], logs / "server.out")
    procs = [server]
    try:
        _wait_for("the server's CA", lambda: (server_dir / "tls" / "ca.pem").is_file())
        nodes, node_cmds = [], []
        for i in range(2):
            state = tmp_path / f"node-{i}"
            state.mkdir()
            shutil.copy(server_dir / "tls" / "ca.pem", state / "ca.pem")  # the one file copied from the server
            cmd = [*hosts.node_prefix, *fedadapt, "node", "--superlink", f"{hosts.server_address}:{FLEET_PORT}",
                   "--root-cert", str(state / "ca.pem"), "--data", str(tmp_path / "shards" / f"node-{i}"),
                   "--state", str(state), "--partition-id", str(i), "--num-partitions", "2",
                   "--runtime-port", str(19100 + i), "--restart-delay", "2"]
            node_cmds.append(cmd)
            nodes.append(_spawn(cmd, logs / f"node-{i}.out"))
        procs += nodes
        publics = [tmp_path / f"node-{i}" / "keys" / "node.pub" for i in range(2)]
        _wait_for("the nodes' public keys", lambda: all(p.is_file() for p in publics))
        env = {**os.environ, "FLWR_HOME": str(server_dir / "flwr")}

        def flwr(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*hosts.server_prefix, _bin("flwr"), *args], env=env, capture_output=True, text=True,
                                  timeout=300, check=False, cwd=Path(__file__).resolve().parents[1])

        _wait_for("the SuperLink", lambda: flwr("supernode", "ls", "fedadapt-server").returncode == 0)
        for public in publics:  # only the public key crosses to the server
            assert flwr("supernode", "register", str(public), "fedadapt-server").returncode == 0

        def online() -> int:
            out = flwr("supernode", "ls", "fedadapt-server", "--format", "json").stdout
            return sum(n.get("status") == "online" for n in json.loads(out[out.index("{"):]).get("nodes", []))

        _wait_for("both nodes online", lambda: online() == 2, timeout=180)
        # Execute: the attacks from the nodes' network, then a round
        direct = _in(hosts.node_prefix, f"import socket; socket.create_connection(('{hosts.server_address}', "
                                        f"{CONTROL_PORT}), timeout=3)")
        control = _in(hosts.node_prefix, (
            "import ssl, urllib.request as u, urllib.error as e\n"
            f"c = ssl.create_default_context(cafile='{tmp_path / 'node-0' / 'ca.pem'}')\n"
            f"r = u.Request('https://{hosts.server_address}:{FLEET_PORT}/v1/control/list-runs', data=b'', "
            "method='POST')\n"
            "try:\n    print(u.urlopen(r, context=c, timeout=10).status)\n"
            "except e.HTTPError as x:\n    print(x.code)\n"))
        run_config = tmp_path / "run.toml"
        run_config.write_text(f'num-server-rounds = 1\nout-dir = "{tmp_path / "run"}"\nbackbone = "tiny"\n'
                              'min-segment-clients = 1\nbatch-size = 8\nmax-train-users = 8\nmax-eval-users = 8\n'
                              'fraction-evaluate = 0.0\n')
        ran = flwr("run", ".", "fedadapt-server", "--stream", "--run-config", str(run_config))
        # A node restarted keeps its key (and so its registration)
        before = publics[0].read_bytes()
        _stop([nodes[0]])
        restarted = subprocess.run([*node_cmds[0], "--init-only"], capture_output=True, text=True, check=False)
        # Assert
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert (tmp_path / "run" / "run-complete.json").is_file(), ran.stdout[-2000:]
        assert rows[-1]["round"] == 1 and rows[-1]["clients_sampled"] == 2 and rows[-1]["clients_dropped"] == 0
        assert control.stdout.strip() == "404", control.stdout + control.stderr
        assert "refused POST /v1/control/list-runs" in (server_dir / "logs" / "gateway.log").read_text()
        if hosts.mode == "namespaces":
            assert direct.returncode != 0 and "refused" in direct.stderr.lower(), direct.stderr
        assert restarted.returncode == 0 and "kept from an earlier start" in restarted.stdout
        assert publics[0].read_bytes() == before
        assert not list(server_dir.rglob("node")) and not list(server_dir.rglob("*.pub"))
        for i in range(2):
            assert (tmp_path / f"node-{i}" / "keys" / "node").stat().st_mode & 0o777 == 0o600
    finally:
        _stop(procs)
    for proc in procs:
        assert proc.returncode is not None
