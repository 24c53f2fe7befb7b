"""Real deployments (deployment/local.py): a SuperLink and SuperNodes as separate processes on 127.0.0.1,
TLS and node authentication on, tiny backbone. Each ClientApp message spawns a process, so these are few and
small: one clean run (with an intruder whose key is not registered), one with faults inside a round (a node
killed, a node whose reply breaks what it registered), and a killed ServerApp resumed from its checkpoint.
Measured on the shared 2-core machine under a load average of about 18: 252 s, 173 s and 556 s (the last before
its evaluation was switched off); far less on an idle machine, where a round takes seconds, not a minute.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from deployment.local import Deployment, DeployOptions, deploy_local, node_config
from deployment.node_auth import write_node_keys
from server.checkpoint import latest_complete_round
from simulations.runner.reaper import marked_pids
from simulations.runner.run import SimulationFailed

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

CONFIG = {"min-segment-clients": 1, "batch-size": 8, "max-train-users": 12, "max-eval-users": 12}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("deploy-data")
    write_marketplace(generate_marketplace(150, 300, seed=5), folder)
    return folder


def _opts(out: Path, data: Path, rounds: int = 2, **config: Any) -> DeployOptions:
    return DeployOptions(out=out, data=data, clients=3, rounds=rounds, backbone="tiny", quiet=True, timeout=600,
                         config={**CONFIG, **config})


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_nothing_left(dep: Deployment) -> None:
    assert marked_pids(dep.token) == []
    assert all(p.poll() is not None for p in [*dep.nodes.values(), dep.superlink] if p is not None)


def test_deployment_with_tls_and_node_auth_writes_the_run_and_refuses_an_unregistered_node(
        market: Path, tmp_path: Path) -> None:
    """3 authenticated nodes over TLS run 2 rounds and RUN/ holds what `simulate` writes; a 4th node whose key
    was never registered is refused by the SuperLink and never takes part; no process is left afterwards."""
    # Prepare
    seen: list[Deployment] = []

    def start_intruder(dep: Deployment) -> None:
        keys = write_node_keys(dep.node_dir(9) / "keys", "node")  # generated, never registered
        dep.start_node(9, node_config(0, 3, dep.node_dir(0) / "data", dep.node_dir(9) / "state"), keys)
        seen.append(dep)

    # Execute
    summary = deploy_local(_opts(tmp_path / "run", market), on_started=start_intruder)
    # Assert
    run, dep = tmp_path / "run", seen[0]
    rows = _metrics(run)
    assert [r["round"] for r in rows] == [0, 1, 2] and summary["rounds"] == 2
    assert all(r["clients_sampled"] == 3 and r["clients_dropped"] == 0 for r in rows[1:])
    assert rows[0]["clients_registered"] == 3 and rows[0]["registration_queries"] == 3
    for name in ("summary.json", "summary.md", "run-complete.json", "run_config.toml"):
        assert (run / name).is_file(), name
    assert latest_complete_round(run / "checkpoints") == 2
    assert (run / "deploy" / "tls" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (run / "deploy" / "nodes" / "node-1" / "keys" / "node").stat().st_mode & 0o777 == 0o600
    intruder_log = (run / "deploy" / "logs" / "node-9.log").read_text(errors="replace")
    assert "Failed to activate SuperNode" in intruder_log  # the SuperLink's refusal (HTTP 412), then exit 305
    assert "Received" not in intruder_log and "Start `flwr-clientapp` process" not in intruder_log
    _assert_nothing_left(dep)


def test_a_killed_node_and_a_reply_over_its_registration_do_not_stop_the_round(market: Path,
                                                                             tmp_path: Path) -> None:
    """Round 2: node 2's SuperNode is killed while the round runs and node 1's data grew after it registered
    (its train reply claims more pairs than registered). The round completes with node 0, and metrics.jsonl
    logs the drop and the rejection with its reason."""
    # Prepare: IID shards over one segment key, so the grown folder routes through the same banks
    run = tmp_path / "run"
    opts = _opts(run, market, rounds=2, **{"partition-mode": "iid", "segment-keys": "region", "fraction-evaluate": 0.0,
                                           "round-timeout": 120.0, "max-train-users": 0})
    deps: list[Deployment] = []

    def on_line(line: str) -> None:
        if "[fedadapt] round 1/" in line:
            dep = deps[0]
            os.killpg(dep.nodes[2].pid, signal.SIGKILL)  # the SuperNode and any ClientApp it started
            grown = dep.node_dir(1) / "data"
            shutil.rmtree(grown)
            shutil.copytree(market, grown)  # every user, where node 1 registered a third of them

    # Execute
    deploy_local(opts, on_started=deps.append, on_line=on_line)
    # Assert
    rows = _metrics(run)
    first, second = rows[-2], rows[-1]
    assert first["round"] == 1 and first["clients_replied"] == 3 and first["clients_rejected"] == 0
    assert second["round"] == 2 and second["clients_sampled"] == 3
    assert second["clients_dropped"] == 1 and second["rejected_reasons"] == {"num-examples": 1}
    assert second["bank_contributors"]["global"] == 1
    assert (run / "run-complete.json").is_file()
    _assert_nothing_left(deps[0])


def test_a_killed_serverapp_resumes_from_its_last_checkpoint(market: Path, tmp_path: Path) -> None:
    """The ServerApp process is killed once round 1's checkpoint is on disk: the deployment fails loudly and
    stops everything; `--resume` on a fresh deployment continues with round 2 and nothing is lost. The second
    deployment reuses the first one's CA, server key and node keys, and the SuperLink's state where the nodes
    are already registered."""
    # Prepare
    run = tmp_path / "run"
    deps: list[Deployment] = []

    def kill_serverapp_after_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while latest_complete_round(run / "checkpoints") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert deps[0].superlink is not None
        for proc in psutil.Process(deps[0].superlink.pid).children(recursive=True):
            if "flwr-serverapp" in " ".join(proc.cmdline()):
                proc.kill()

    def on_line(line: str) -> None:
        if "[fedadapt] round 1/" in line:
            threading.Thread(target=kill_serverapp_after_checkpoint, daemon=True).start()

    # Execute
    with pytest.raises(SimulationFailed, match="did not finish"):
        deploy_local(_opts(run, market, **{"fraction-evaluate": 0.0}), on_started=deps.append, on_line=on_line)
    killed_at = latest_complete_round(run / "checkpoints")
    _assert_nothing_left(deps[0])
    kept = {p: p.read_bytes() for p in [run / "deploy" / "tls" / "ca.pem", run / "deploy" / "tls" / "server.key",
                                        *(run / "deploy" / "nodes").glob("node-*/keys/node")]}
    resumed = _opts(run, market, **{"fraction-evaluate": 0.0})
    resumed.resume = True
    deploy_local(resumed, on_started=deps.append)
    # Assert
    rows = _metrics(run)
    assert killed_at == 1 and [r["round"] for r in rows] == [0, 1, 2]
    assert latest_complete_round(run / "checkpoints") == 2 and (run / "run-complete.json").is_file()
    assert "resuming after round 1" in (run / "deploy" / "logs" / "flwr.log").read_text()
    assert len(kept) == 5 and all(p.read_bytes() == data for p, data in kept.items())  # kept across runs
    assert len(list((run / "deploy" / "flwr" / "registered").iterdir())) == 3  # each node registered once
    _assert_nothing_left(deps[1])
