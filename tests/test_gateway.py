"""The Fleet gateway (deployment/gateway.py) in front of a real SuperLink (TLS, node authentication), on loopback.

The attack it stops: Flower 1.42's SuperLink serves its Control API on the same port as the Fleet API and checks no
account without OIDC, so whoever reaches that port can register their own node key. Shown here succeeding against
the SuperLink's port and failing against the gateway, which forwards `/v1/fleet/*` and `/health` only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployment.gateway import allowed
from deployment.node_auth import write_node_keys
from deployment.tls import write_tls
from simulations.runner.flower import _bin, flower_env, free_port

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)


@pytest.mark.parametrize(("method", "path", "ok"), [
    ("POST", "/v1/fleet/pull-messages", True), ("POST", "/v1/fleet/activate-node", True), ("GET", "/health", True),
    ("POST", "/v1/control/register-node", False), ("POST", "/v1/control/start-run", False),
    ("POST", "/v1/runtime/pull-task", False), ("GET", "/v1/fleet/pull-messages", False),
    ("POST", "/v1/fleet/", False), ("POST", "/v1/fleet/../control/start-run", False),
    ("POST", "/v1/fleet/a/b", False), ("GET", "/docs", False), ("GET", "/openapi.json", False),
])
def test_only_fleet_calls_and_the_health_probe_pass(method: str, path: str, ok: bool) -> None:
    assert allowed(method, path) is ok


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"nothing listens on {port}")


def _connection(home: Path, port: int, ca: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "127.0.0.1:{port}"\n'
                                      f'root-certificates = "{ca}"\n')


def test_a_node_key_registers_through_the_superlinks_port_but_not_through_the_gateway(tmp_path: Path) -> None:
    """`flwr supernode register` (Control API) succeeds when it reaches the SuperLink's own port and is refused
    (404, never forwarded) through the gateway; the gateway's health probe reaches the SuperLink."""
    # Prepare
    tls = write_tls(tmp_path / "tls")
    link_port, gate_port = free_port(), free_port()
    env = flower_env(tmp_path / "flwr")
    logs = {name: tmp_path / f"{name}.log" for name in ("superlink", "gateway")}
    procs = []
    with open(logs["superlink"], "wb") as out:
        procs.append(subprocess.Popen(
            [_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(link_port), "--ssl-ca-certfile",
             str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
             "--enable-supernode-auth", "--isolation", "process", "--database", str(tmp_path / "state.db"),
             "--disable-runtime-dependency-installation"], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
    with open(logs["gateway"], "wb") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "deployment.gateway", "--listen", f"127.0.0.1:{gate_port}", "--upstream",
             f"127.0.0.1:{link_port}", "--ssl-certfile", str(tls.server_cert), "--ssl-keyfile", str(tls.server_key),
             "--ssl-ca-certfile", str(tls.ca_cert)], env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True))
    try:
        _wait_port(link_port, procs[0], logs["superlink"])
        _wait_port(gate_port, procs[1], logs["gateway"])
        keys = [write_node_keys(tmp_path / "keys", f"n{i}") for i in range(2)]
        _connection(tmp_path / "via-link", link_port, tls.ca_cert)
        _connection(tmp_path / "via-gateway", gate_port, tls.ca_cert)

        def register(home: str, key: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run([_bin("flwr"), "supernode", "register", str(key)], capture_output=True, text=True,
                                  env={**env, "FLWR_HOME": str(tmp_path / home)}, timeout=120, check=False)

        # Execute
        through_gateway = register("via-gateway", keys[0].public_key)
        direct = register("via-link", keys[1].public_key)
        health = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(tls.ca_cert),
                                 f"https://127.0.0.1:{gate_port}/health"], capture_output=True, text=True, check=False)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    # Assert
    assert "registered successfully" in direct.stdout, direct.stdout + direct.stderr  # the attack, unguarded
    assert through_gateway.returncode != 0 and "registered successfully" not in through_gateway.stdout
    assert "refused POST /v1/control/" in logs["gateway"].read_text()
    link_log = logs["superlink"].read_text(errors="replace")
    assert link_log.count("POST /v1/control/register-node") == 1  # the direct call only: the refused one never arrived
    assert health.stdout == "200"
