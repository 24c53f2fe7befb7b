"""Running `flwr run .` against a SuperLink we start, own and stop ourselves.

Why not Flower's managed local SuperLink: it listens on fixed ports (39091...), stays running after the run
and is shared by everything on the machine, so two runs (or a test and a user) collide. Here each run gets
a SuperLink on a free 127.0.0.1 port, its own FLWR_HOME (the connection lives in `$FLWR_HOME/config.toml`,
written here), runtime dependency installation and the update check switched off, and the SuperLink is
stopped by its PID when the run ends, whatever happened.

`flwr run` exits 0 even when the ServerApp failed, so callers check the files the ServerApp writes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

CONNECTION = "fedadapt-sim"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    """An executable of this environment (the venv's bin folder), falling back to PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for every Flower process: own home, no dependency installs, no network checks."""
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_TMPDIR": env.get("RAY_TMPDIR", "/tmp/fedadapt-ray"),
        "PYTHONUNBUFFERED": "1",
        # the SuperLink spawns flower-superexec / flwr-serverapp by name: they must be on PATH
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    })
    env.update(extra or {})
    return env


def write_connection(flwr_home: Path, port: int) -> Path:
    """Write `$FLWR_HOME/config.toml` with one insecure loopback connection, the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )
    return path


def _die_with_parent() -> None:
    """preexec_fn: the SuperLink gets SIGTERM if the process that started it dies (even by SIGKILL), so a
    killed test or CLI never leaves a SuperLink behind (Linux prctl PR_SET_PDEATHSIG; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class SuperLink:
    """A simulation-mode SuperLink process on 127.0.0.1:port, owned by this object (stop() kills its PID)."""

    flwr_home: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> SuperLink:
        self.port = self.port or free_port()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        write_connection(self.flwr_home, self.port)
        self.env = flower_env(self.flwr_home)
        cmd = [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(self.port), "--database", str(self.flwr_home / "state.db"),
               "--log-file", str(self.flwr_home / "superlink.log"), "--disable-runtime-dependency-installation"]
        out = open(self.flwr_home / "superlink.out", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
        out.close()
        (self.flwr_home / "superlink.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.process.returncode}; see "
                                   f"{self.flwr_home / 'superlink.out'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    log.info("SuperLink pid %d on 127.0.0.1:%d", self.process.pid, self.port)
                    return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"flower-superlink did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s")

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the SuperLink's process group (it spawns the simulation runtime), SIGKILL after `grace`."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("SuperLink pid %d ignored SIGTERM, killing its group", proc.pid)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        log.info("stopped SuperLink pid %d", proc.pid)

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flwr_run(link: SuperLink, run_config_toml: Path, num_supernodes: int, cpus_per_client: float = 1.0,
             on_line: Callable[[str], None] | None = None, timeout: float | None = None,
             app_dir: Path = PROJECT_ROOT, log_file: IO[str] | None = None) -> int:
    """`flwr run <app> <connection> --stream` with the run config file; returns its exit status.

    Each output line goes to `log_file` and `on_line` (progress display). The exit status alone does not
    say whether the run succeeded.
    """
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else cpus_per_client
    cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(run_config_toml),
           "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus}"]
    proc = subprocess.Popen(cmd, env=link.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(app_dir), start_new_session=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if log_file is not None:
                log_file.write(line)
                log_file.flush()
            if on_line is not None:
                on_line(line.rstrip("\n"))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"flwr run exceeded {timeout:.0f} s")
        return proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
