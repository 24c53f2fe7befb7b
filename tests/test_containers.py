"""docker/compose.yaml for real, in containers, on a machine that reaches no image registry (`make test-containers`;
in `make test` it runs where podman is present and skips with the reason where not).

Recipe of ../shared/CONTAINERS.md: podman with runc, cgroupfs and explicit ulimits; a Debian base made with
mmdebstrap and imported; docker/flwr-local.Dockerfile installs flwr 1.42.0 on it and stands in for Flower's official
images (the SuperLink and SuperNode images are it with their program as entrypoint); docker/superexec.Dockerfile
builds the app's image on it (torch from the host's wheel folder when PyPI's CPU index is out of reach). Images are
kept between runs under the `localhost/fedadapt-test-*` names.

The services of compose.yaml are started the way compose would start them, from the file itself (images,
entrypoints, commands, named volumes, bind mounts, networks with the service names as aliases, published ports,
restart policies, CPU and memory limits): `init` first (until it exits 0), then the SuperLink, the ServerApp's
SuperExec, the Fleet gateway, the SuperNodes and their ClientApp executors. From the host, over the SuperLink's port
published on 127.0.0.1 only: the nodes' public keys are registered and two rounds of the tiny backbone run with TLS
and node authentication; every service's compose health check is run in its container and passes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import main
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from simulations.runner.flower import _bin, flower_env, free_port

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".work" / "containers"
TAG = "localhost/fedadapt-test"
IMAGES = {"FLWR_SUPERLINK_IMAGE": f"{TAG}-superlink:1.42.0", "FLWR_SUPERNODE_IMAGE": f"{TAG}-supernode:1.42.0",
          "FEDADAPT_IMAGE": f"{TAG}-app:1.42.0"}
BASE, FLWR_LOCAL = f"{TAG}-debian:bookworm", f"{TAG}-flwr:1.42.0"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
WHEELS = Path("/opt/wheels")  # a torch CPU wheel on these machines, where download.pytorch.org is out of reach
CONF = "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n" \
       "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n"
START_ORDER = ("init", "superlink", "serverapp", "fleet", "supernode", "clientapp")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("podman") is None or os.geteuid() != 0,
                                 reason="needs podman as root (make test-containers installs it)")]


def podman(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(WORK / "containers.conf")}
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed ({proc.returncode}): "
                             f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def _exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def build_images() -> None:
    """The base, the flwr image, the SuperLink/SuperNode images and the app's image; each only if missing."""
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "containers.conf").write_text(CONF)
    if not _exists(BASE):
        if shutil.which("mmdebstrap") is None:
            pytest.skip("mmdebstrap is missing (make test-containers installs it)")
        tar = WORK / "base.tar"
        subprocess.run(["mmdebstrap", "--variant=minbase", "--mode=root", "bookworm", str(tar),
                        "deb http://deb.debian.org/debian bookworm main",
                        "deb http://deb.debian.org/debian bookworm-updates main",
                        "deb http://deb.debian.org/debian-security bookworm-security main"],
                       check=True, capture_output=True, timeout=900)
        podman("import", "--change", 'CMD ["/bin/bash"]', str(tar), BASE)
        tar.unlink()
    ca = ["-v", f"{HOST_CA}:/host-ca.crt:ro", "--build-arg", "PIP_CERT_FILE=/host-ca.crt"]
    if not _exists(FLWR_LOCAL):
        podman("build", "-f", str(ROOT / "docker" / "flwr-local.Dockerfile"), "--build-arg", f"DEBIAN_BASE={BASE}",
               *ca, "-t", FLWR_LOCAL, str(ROOT / "docker"))
    for program, var in (("superlink", "FLWR_SUPERLINK_IMAGE"), ("supernode", "FLWR_SUPERNODE_IMAGE")):
        if not _exists(IMAGES[var]):
            context = WORK / program
            context.mkdir(exist_ok=True)
            (context / "Containerfile").write_text(f'FROM {FLWR_LOCAL}\nENTRYPOINT ["flower-{program}"]\n')
            podman("build", "-t", IMAGES[var], str(context))
    if not _exists(IMAGES["FEDADAPT_IMAGE"]):
        torch = ["-v", f"{WHEELS}:/wheels:ro", "--build-arg", "TORCH_SOURCE=--find-links /wheels"] \
            if any(WHEELS.glob("torch-2.13.0*cpu*.whl")) else []
        podman("build", "-f", str(ROOT / "docker" / "superexec.Dockerfile"), "--build-arg", f"BASE_IMAGE={FLWR_LOCAL}",
               *torch, *ca, "-t", IMAGES["FEDADAPT_IMAGE"], str(ROOT))


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        return env.get(match.group(1), match.group(3) or "")
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)?([^}]*)\}", one, text)


class Compose:
    """The services of one compose file started with podman the way compose starts them (see the docstring)."""

    def __init__(self, file: Path, project: Path, env: dict[str, str], prefix: str) -> None:
        self.spec: dict[str, Any] = yaml.safe_load(interpolate(file.read_text(), env))
        self.project, self.prefix = project, prefix
        self.started: list[str] = []

    def name(self, thing: str) -> str:
        return f"{self.prefix}-{thing}"

    def up(self) -> None:
        for net, cfg in (self.spec.get("networks") or {}).items():
            podman("network", "create", *(["--internal"] if cfg and cfg.get("internal") else []), self.name(net))
        for volume in self.spec.get("volumes") or {}:
            podman("volume", "create", self.name(volume))
        order = sorted(self.spec["services"], key=lambda s: START_ORDER.index(s.split("-")[0]))
        for service in order:
            self.start(service, self.spec["services"][service])

    def start(self, service: str, svc: dict[str, Any]) -> None:
        args = ["run", "--name", self.name(service)]
        if "entrypoint" in svc:
            args += ["--entrypoint", json.dumps(svc["entrypoint"])]
        if "user" in svc:
            args += ["--user", svc["user"]]
        if svc.get("network_mode") == "none":
            args += ["--network", "none"]
        else:
            for net in svc.get("networks", []):
                args += ["--network", self.name(net)]
            args += ["--network-alias", service]
        for volume in svc.get("volumes", []):
            source, target, *mode = volume.split(":")
            host = str((self.project / source).resolve()) if source.startswith(".") else self.name(source)
            args += ["-v", ":".join([host, target, *mode])]
        for port in svc.get("ports", []):
            args += ["-p", str(port)]
        if svc.get("restart", "no") != "no":  # a SuperNode exits until its key is registered, then joins
            args += ["--restart", svc["restart"]]
        if "cpus" in svc:
            args += ["--cpus", str(svc["cpus"])]
        if "mem_limit" in svc:
            args += ["--memory", str(svc["mem_limit"])]
        for key, value in (svc.get("environment") or {}).items():
            args += ["-e", f"{key}={value}"]
        command = [str(c) for c in svc.get("command", [])]
        self.started.append(self.name(service))
        if service == "init":  # compose: the others wait until it completed successfully
            podman(*args, "--rm", svc["image"], *command)
            self.started.pop()
        else:
            podman(*args, "-d", svc["image"], *command)

    def health(self, service: str) -> int:
        """The exit status of the service's compose health check, run in its container."""
        test = self.spec["services"][service]["healthcheck"]["test"]
        assert test[0] == "CMD"
        return podman("exec", self.name(service), *test[1:], check=False, timeout=60).returncode

    def logs(self, service: str) -> str:
        return podman("logs", self.name(service), check=False).stdout[-3000:]

    def down(self) -> None:
        for container in reversed(self.started):
            podman("rm", "-f", "-t", "2", container, check=False)
        for volume in self.spec.get("volumes") or {}:
            podman("volume", "rm", "-f", self.name(volume), check=False)
        for net in self.spec.get("networks") or {}:
            podman("network", "rm", "-f", self.name(net), check=False)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """docker/ copied, with the README's steps done: certificates, shards, one key pair per node."""
    work = tmp_path / "docker"
    shutil.copytree(ROOT / "docker", work)
    market = tmp_path / "market"
    write_marketplace(generate_marketplace(90, 200, seed=2), market)
    assert main(["deploy", "certs", "--out", str(work / "certs"), "--host", "fleet", "--host", "superlink",
                 "--host", "127.0.0.1", "--host", "localhost"]) == 0
    assert main(["deploy", "shards", "--data", str(market), "--nodes", "3", "--out", str(work / "data")]) == 0
    for i in range(3):
        assert main(["deploy", "node-key", "--state", str(work / "nodes" / f"node-{i}")]) == 0
    (work / "runs").mkdir()
    yield work


def test_compose_runs_two_rounds_in_containers_with_tls_and_node_auth(project: Path) -> None:
    """init hands the volumes to uid 49999, every service starts from compose.yaml's own command, the three nodes
    join through the gateway once registered, and two federated rounds finish (metrics and run-complete.json in the
    bind-mounted runs folder)."""
    # Prepare
    build_images()
    control = free_port()
    compose = Compose(project / "compose.yaml", project, {**IMAGES, "CONTROL_PORT": str(control)},
                      f"fa{os.getpid()}")
    home = project.parent / "flwr"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "c"\n\n[superlink.c]\naddress = "127.0.0.1:{control}"'
                                      f'\nroot-certificates = "{project / "certs" / "ca.pem"}"\n')
    env = flower_env(home)

    def flwr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_bin("flwr"), *args], env=env, capture_output=True, text=True, timeout=900,
                              check=False, cwd=ROOT)

    try:
        # Execute
        compose.up()
        deadline = time.monotonic() + 120
        while flwr("supernode", "ls", "c").returncode != 0 and time.monotonic() < deadline:
            time.sleep(2)
        for i in range(3):
            reg = flwr("supernode", "register", str(project / "nodes" / f"node-{i}" / "keys" / "node.pub"), "c")
            assert reg.returncode == 0, reg.stdout + reg.stderr + compose.logs("superlink")
        deadline = time.monotonic() + 240
        online = 0
        while online < 3 and time.monotonic() < deadline:
            out = flwr("supernode", "ls", "c", "--format", "json").stdout
            nodes = json.loads(out[out.index("{"):]).get("nodes", []) if "{" in out else []
            online = sum(n.get("status") == "online" for n in nodes)
            time.sleep(3)
        assert online == 3, compose.logs("supernode-0") + compose.logs("fleet")
        health = {service: compose.health(service) for service in compose.spec["services"] if service != "init"}
        config = project.parent / "run.toml"
        config.write_text('num-server-rounds = 2\nout-dir = "/runs/test"\nbackbone = "tiny"\nmin-segment-clients = 1\n'
                          'batch-size = 8\nmax-train-users = 8\nmax-eval-users = 8\nfraction-evaluate = 0.0\n')
        ran = flwr("run", ".", "c", "--stream", "--run-config", str(config))
        # Assert
        metrics = project / "runs" / "test" / "metrics.jsonl"
        assert (project / "runs" / "test" / "run-complete.json").is_file(), \
            ran.stdout[-3000:] + compose.logs("serverapp") + compose.logs("clientapp-0")
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["clients_sampled"] == 3
        assert (project / "runs").stat().st_uid == 49999  # init handed the bind mount to the image's user
        assert all(code == 0 for code in health.values()), health  # every compose health check passes
    finally:
        compose.down()
