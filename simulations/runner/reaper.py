"""Stop every process a run started, also when the command that started them is killed with SIGKILL.

How Flower 1.42 lays out a simulation's processes (`ps -eo pid,ppid,pgid,sid,cmd` during a run):

    fedadapt simulate                   the CLI
    |- flower-superlink                 a session of its own (we start it with start_new_session)
    |  `- flower-superexec              started by the SuperLink in yet another session
    |     `- flwr-simulation            runs the ServerApp and starts Ray: gcs_server, raylet, dashboard,
    |        `- ray processes           agents and the ray::ClientAppActor workers, all in superexec's session
    `- flwr run --stream                a session of its own

So stopping the SuperLink's process group leaves superexec and the simulation running (they go on, finish
the rounds and write into the run folder), and PR_SET_PDEATHSIG reaches only a direct child. What all of
them share is the environment, which every process inherits from its parent: every process of a run carries
`FEDADAPT_RUN_TOKEN=<random>`, found by reading `/proc/<pid>/environ` (Linux; other users' processes are
unreadable and skipped). That alone is not enough: Ray's agents (ray::DashboardAgent, ray::RuntimeEnvAgent)
set their process title over the memory that /proc shows as their environment, and were seen without the
token, orphaned and alive after every other process of the run had gone. So `run_pids` also takes every
process in a session whose leader carries the token (superexec's session holds the simulation and all of
Ray), and `kill_marked` SIGTERMs them all and SIGKILLs what is left after a grace period.

`Watchdog` covers the case where the CLI cannot clean up itself (SIGKILL, a crash): it starts
`python -m simulations.runner.reaper` in a session of its own (so a Ctrl-C in the terminal does not reach it) with a
pipe whose write end only the CLI holds. However the CLI ends, the kernel closes that end; the watchdog reads
EOF, runs `kill_marked`, deletes the folders it was given (FLWR_HOME, Ray's temporary folder) and exits. It
keeps the file descriptors it was handed (the run folder's lock) open until then, so the run folder stays
locked until the last process of the run is gone.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

TOKEN_VAR = "FEDADAPT_RUN_TOKEN"
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # where `python -m simulations.runner.reaper` is importable
READY = b"ready\n"  # the watchdog's one line on stdout: its signal handlers are in place, it is waiting


def new_token() -> str:
    """A value of TOKEN_VAR that no other run on the machine has."""
    return secrets.token_hex(8)


def marked_pids(token: str) -> list[int]:
    """PIDs of the live processes whose environment holds TOKEN_VAR=token (never this process)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:  # gone meanwhile, another user's, or a kernel thread
            continue
        if needle in environ.split(b"\0"):  # a zombie's environ is empty: it is dead already
            found.append(int(entry.name))
    return sorted(found)


def _session(pid: int) -> int | None:
    """The session id of `pid` (field 6 of /proc/<pid>/stat), None if it is gone or a zombie (dead already,
    waiting for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
    return None if fields[0] in ("Z", "X") else int(fields[3])


def run_pids(token: str, sessions: set[int]) -> list[int]:
    """The marked processes and every process in a session led by one (never this process or its session).

    `sessions` collects the sessions seen so far and is updated in place, so that the members of a session
    are still found after its leader has died.
    """
    marked = marked_pids(token)
    own = os.getsid(0)
    sessions.update(pid for pid in marked if _session(pid) == pid and pid != own)
    members = {int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _session(int(e.name)) in sessions}
    return sorted((set(marked) | members) - {os.getpid()})


def _signal_all(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _wait_gone(token: str, sessions: set[int], seconds: float) -> list[int]:
    """Poll until no process of the run is left or `seconds` pass; returns those still alive."""
    deadline = time.monotonic() + seconds
    alive = run_pids(token, sessions)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = run_pids(token, sessions)
    return alive


def kill_marked(token: str, grace: float = 2.0) -> list[int]:
    """SIGTERM every process of the run (`run_pids`), SIGKILL whatever is left after `grace` seconds; returns
    the PIDs found.

    SIGTERM lets the SuperLink and superexec shut down cleanly (a fraction of a second); a Ray worker busy
    training (ray::ClientAppActor) was seen to outlive it by over 5 s, so a long grace only delays the exit.
    SIGKILL is repeated until none is left (for up to 10 s), because a dying parent can still have spawned a
    child (a Ray worker) that the first pass did not see. RuntimeError if processes survive all that.
    """
    sessions: set[int] = set()
    pids = run_pids(token, sessions)
    seen = set(pids)
    _signal_all(pids, signal.SIGTERM)
    alive = _wait_gone(token, sessions, grace)
    deadline = time.monotonic() + 10.0
    while alive and time.monotonic() < deadline:
        seen.update(alive)
        _signal_all(alive, signal.SIGKILL)
        alive = _wait_gone(token, sessions, 1.0)
    if alive:
        raise RuntimeError(f"processes {alive} of run {token} survived SIGKILL")
    return sorted(seen)


def remove_folders(folders: Sequence[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


class Watchdog:
    """The CLI's handle on a `python -m simulations.runner.reaper` process (see the module docstring)."""

    def __init__(self, token: str, remove: Sequence[Path] = (), hold_fds: Sequence[int] = (),
                 grace: float = 2.0) -> None:
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}  # it must never find itself
        cmd = [sys.executable, "-m", "simulations.runner.reaper", "--grace", str(grace), token, *map(str, remove)]
        self.process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                        cwd=PACKAGE_PARENT, start_new_session=True, pass_fds=tuple(hold_fds))
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()  # nothing may start before the watchdog guards it
        self.process.stdout.close()
        if ready != READY:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the run's watchdog did not start (exit status {self.process.returncode})")

    def close(self, timeout: float = 60.0) -> None:
        """Let the watchdog do its sweep now (the run's processes should be gone already) and wait for it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.wait(timeout)


def _wait_for_eof() -> None:
    """Block until the CLI's end of the pipe closes; SIGTERM/SIGINT/SIGHUP to the watchdog end the wait too."""

    def stop_waiting(signum: int, frame: object) -> None:
        raise InterruptedError

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop_waiting)
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.close()
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except InterruptedError:
        pass
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # nothing may cut the sweep short


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.runner.reaper", description=__doc__.split("\n")[0])
    parser.add_argument("token", help=f"the run's {TOKEN_VAR} value")
    parser.add_argument("folders", nargs="*", type=Path, help="folders to delete once the processes are gone")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    _wait_for_eof()
    kill_marked(args.token, args.grace)
    remove_folders(args.folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
