"""Running `flwr run .` against a SuperLink we start, own and stop ourselves.

Why not Flower's managed local SuperLink: it listens on fixed ports (39091...), stays running after the run
and is shared by everything on the machine, so two runs (or a test and a user) collide. Here each run gets
a SuperLink on a free 127.0.0.1 port, its own FLWR_HOME (the connection lives in `$FLWR_HOME/config.toml`,
written here) and its own Ray temporary folder, runtime dependency installation and the update check switched
off. Every process the run starts (SuperLink, superexec, simulation, Ray, `flwr run`) carries the run's token
in its environment, so `stop()` ends all of them, not only the SuperLink's process group, and a watchdog ends
them if the starting process dies without stopping them (simulations/runner/reaper.py). The FLWR_HOME and Ray
folders (an app copy, a database, logs: ~3 MB a run) are deleted afterwards; a failed run keeps the
SuperLink's output in its run folder.

`flwr run` exits 0 even when the ServerApp failed, so callers check the files the ServerApp writes.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from common.names import FLOWER_ENV
from simulations.runner.reaper import TOKEN_VAR, Watchdog, kill_marked, new_token

log = logging.getLogger(__name__)

CONNECTION = "fedadapt-sim"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RAY_TMP_BASE = "/tmp/fedadapt-ray"  # short: Ray's socket paths under it must stay below 108 bytes


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
    env.update(FLOWER_ENV)
    env.update({
        "FLWR_HOME": str(flwr_home),
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


@dataclass
class SuperLink:
    """A simulation-mode SuperLink on 127.0.0.1:port; `stop()` ends it and every process the run started.

    `hold_fds` are handed to the watchdog, which keeps them open until the run's last process is gone (the
    run folder's lock). FLWR_HOME is deleted on stop only if this object created it.
    """

    flwr_home: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=new_token)
    hold_fds: tuple[int, ...] = ()
    watchdog: Watchdog | None = None

    @property
    def ray_tmpdir(self) -> Path:
        return Path(os.environ.get("RAY_TMPDIR", RAY_TMP_BASE)) / f"run-{self.token}"

    def start(self, timeout: float = 60.0) -> SuperLink:
        self.port = self.port or free_port()
        created = [] if self.flwr_home.exists() else [self.flwr_home]
        self.watchdog = Watchdog(self.token, remove=[*created, self.ray_tmpdir], hold_fds=self.hold_fds)
        write_connection(self.flwr_home, self.port)
        self.env = flower_env(self.flwr_home, {TOKEN_VAR: self.token, "RAY_TMPDIR": str(self.ray_tmpdir)})
        cmd = [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
               "--host", "127.0.0.1", "--port", str(self.port), "--database", str(self.flwr_home / "state.db"),
               "--log-file", str(self.flwr_home / "superlink.log"), "--disable-runtime-dependency-installation"]
        out = open(self.flwr_home / "superlink.out", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        try:
            self._wait_listening(self.process, timeout)
        except BaseException:
            self.stop()
            raise
        log.info("SuperLink pid %d on 127.0.0.1:%d", self.process.pid, self.port)
        return self

    def _wait_listening(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        """Return once the port accepts connections; RuntimeError with the SuperLink's last output otherwise
        (its folder is deleted when it is stopped, so the output goes into the message)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {process.returncode}:\n{self._output_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"flower-superlink did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s:\n"
                           f"{self._output_tail()}")

    def _output_tail(self, lines: int = 15) -> str:
        path = self.flwr_home / "superlink.out"
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else "(no output)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, keep_log: Path | None = None, grace: float = 2.0) -> None:
        """End every process of the run (SIGTERM, SIGKILL after `grace`), copy the SuperLink's output (which
        includes superexec's) to `keep_log` if given, and delete the run's FLWR_HOME and Ray folders."""
        if self.watchdog is None:
            return
        stopped = kill_marked(self.token, grace)
        if self.process is not None:
            self.process.wait(grace)  # reaped: no zombie left behind
        if keep_log is not None and (self.flwr_home / "superlink.out").is_file():
            shutil.copyfile(self.flwr_home / "superlink.out", keep_log)
        self.watchdog.close()
        self.watchdog = None
        log.debug("stopped %d process(es) of run %s: %s", len(stopped), self.token, stopped)

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def flwr_run(link: SuperLink, run_config_toml: Path, num_supernodes: int, cpus_per_client: float = 1.0,
             on_line: Callable[[str], None] | None = None, timeout: float | None = None,
             app_dir: Path = PROJECT_ROOT, log_file: IO[str] | None = None, gpus_per_client: float = 0.0) -> int:
    """`flwr run <app> <connection> --stream` with the run config file; returns its exit status.

    Each output line goes to `log_file` and `on_line` (progress display). The exit status alone does not
    say whether the run succeeded.
    """
    cpus = int(cpus_per_client) if float(cpus_per_client).is_integer() else cpus_per_client
    federation = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus}"
    if gpus_per_client > 0:  # a GPU run (run-config device cuda/auto on a GPU machine)
        federation += f" client-resources-num-gpus={gpus_per_client}"
    cmd = [_bin("flwr"), "run", str(app_dir), CONNECTION, "--stream", "--run-config", str(run_config_toml),
           "--federation-config", federation]
    return stream_command(cmd, link.env, on_line, timeout, app_dir, log_file)


def stream_command(cmd: list[str], env: Mapping[str, str], on_line: Callable[[str], None] | None,
                   timeout: float | None, cwd: Path, log_file: IO[str] | None = None) -> int:
    """Run `cmd` (a `flwr run --stream`) in a session of its own, each output line to `log_file` and
    `on_line`; its exit status. Killed if `timeout` passes or the caller is interrupted."""
    proc = subprocess.Popen(cmd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=str(cwd), start_new_session=True)
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
        if proc.poll() is None:  # interrupted or timed out: it only streams logs, so it may die abruptly
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
