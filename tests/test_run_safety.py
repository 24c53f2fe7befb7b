"""Runs stop, lock and clean up safely: real processes, real signals.

The fast tests build the mechanisms from plain `python -c` processes: `kill_marked` finds a process tree by
the run token (across sessions, through a process that ignores SIGTERM), the watchdog cleans up after a
SIGKILLed parent, the run lock refuses a second holder. The two slow tests each run `fedadapt simulate
--preset smoke` as a subprocess (about 40 s each on 2 cores): one is interrupted with SIGINT after round 1,
and meanwhile a second command on the same folder must fail at once; then resuming it with another config
must be refused; the other is SIGKILLed. Every process of a run is found by a tag the test puts in the
environment (FEDADAPT_TEST_TAG), which every process inherits and which the code under test never reads.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.checkpoint import latest_complete_round, load_checkpoint
from simulations.runner.reaper import TOKEN_VAR, kill_marked, marked_pids, run_pids
from simulations.runner.runlock import RunFolderBusy, RunLock

ROOT = Path(__file__).resolve().parents[1]
TAG = "FEDADAPT_TEST_TAG"


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _live_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()]


def tagged(tag: str, also_in_cmdline: str | None = None) -> list[int]:
    """Live processes with FEDADAPT_TEST_TAG=tag in their environment (or `also_in_cmdline` in their command)."""
    return sorted(pid for pid in _live_pids()
                  if _environ(pid).get(TAG) == tag or (also_in_cmdline and also_in_cmdline in _cmdline(pid)))


def _describe(pids: list[int]) -> str:
    """PID, parent, state and command of each process, for a failure message."""
    lines = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        lines.append(f"{pid} ppid={stat[1]} state={stat[0]} {_cmdline(pid)[:150]}")
    return "\n".join(lines)


def _wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return bool(condition())  # type: ignore[operator]


def _sleeper(env: dict[str, str], code: str = "import time; time.sleep(120)") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def test_kill_marked_ends_a_tree_across_sessions_even_if_sigterm_is_ignored() -> None:
    """A marked session leader that ignores SIGTERM, the grandchild it started in a session of its own, and a
    child whose environment lost the token (as Ray's agents' does) are all ended; an unrelated process is not."""
    # Prepare
    token = uuid.uuid4().hex
    env = {**os.environ, TOKEN_VAR: token}
    stubborn = _sleeper(env, textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
        subprocess.Popen(sleep, start_new_session=True)
        subprocess.Popen(sleep, env={{k: v for k, v in os.environ.items() if k != {TOKEN_VAR!r}}})
        time.sleep(120)
    """))
    bystander = _sleeper(dict(os.environ))
    assert _wait_until(lambda: len(marked_pids(token)) == 2 and len(run_pids(token, set())) == 3, 10)
    # Execute
    killed = kill_marked(token, grace=0.5)
    # Assert
    try:
        assert len(killed) == 3 and stubborn.pid in killed
        assert marked_pids(token) == [] and run_pids(token, set()) == []
        assert stubborn.wait(5) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_watchdog_cleans_up_after_its_parent_is_sigkilled(tmp_path: Path) -> None:
    """A parent that starts a watchdog and a marked process, then dies by SIGKILL: the watchdog kills the
    marked process, deletes the folder it was given and releases the lock it was handed."""
    # Prepare
    token, folder = uuid.uuid4().hex, tmp_path / "flwr-home"
    folder.mkdir()
    parent_code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from pathlib import Path
        from simulations.runner.reaper import TOKEN_VAR, Watchdog
        from simulations.runner.runlock import RunLock
        lock = RunLock(Path({str(tmp_path / 'run')!r})).acquire()
        Watchdog({token!r}, remove=[Path({str(folder)!r})], hold_fds=[lock.fd])
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                         env={{**os.environ, TOKEN_VAR: {token!r}}})
        print("started", flush=True)
        time.sleep(120)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
    assert _wait_until(lambda: len(marked_pids(token)) == 1, 10)
    with pytest.raises(RunFolderBusy):
        RunLock(tmp_path / "run").acquire()
    # Execute
    parent.kill()
    parent.wait()
    # Assert
    assert _wait_until(lambda: not marked_pids(token) and not folder.exists(), 15)
    assert _wait_until(lambda: _lock_free(tmp_path / "run"), 5)


def _lock_free(folder: Path) -> bool:
    try:
        RunLock(folder).acquire().release()
    except RunFolderBusy:
        return False
    return True


def test_run_lock_refuses_a_second_holder_naming_folder_and_pid(tmp_path: Path) -> None:
    """The second lock on a folder fails at once naming the folder and the holder's PID; once released, the
    folder can be locked again (the lock file stays)."""
    # Prepare
    first = RunLock(tmp_path / "run").acquire()
    # Execute
    with pytest.raises(RunFolderBusy) as exc:
        RunLock(tmp_path / "run").acquire()
    first.release()
    again = RunLock(tmp_path / "run").acquire()
    # Assert
    assert str(tmp_path / "run") in str(exc.value) and f"pid {os.getpid()}" in str(exc.value)
    again.release()
    assert (tmp_path / "run" / ".lock").is_file()


# ---- real simulations -------------------------------------------------------------------------------------------


class Cli:
    """`fedadapt simulate` as a subprocess whose output lines are collected by a thread."""

    def __init__(self, tag: str, *args: str) -> None:
        env = {**os.environ, TAG: tag, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen([sys.executable, "-m", "cli.main", "simulate", *args], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"{text!r} not seen; output:\n" + "\n".join(self.lines))

    def finish(self, seconds: float) -> int:
        rc = self.process.wait(seconds)
        time.sleep(0.2)
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return rc


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _run_folders(tag: str) -> set[Path]:
    """FLWR_HOME and RAY_TMPDIR of the run's processes (the folders the run must delete)."""
    envs = [_environ(pid) for pid in tagged(tag)]
    return {Path(env[k]) for env in envs for k in ("FLWR_HOME", "RAY_TMPDIR") if TOKEN_VAR in env and k in env}


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Tags whose processes are SIGKILLed after the test, whatever it asserted."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        for pid in tagged(tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


SMOKE = ("--preset", "smoke", "--rounds", "30")  # far more rounds than the test waits for


@pytest.mark.slow
def test_sigint_stops_every_process_lock_refuses_and_resume_refuses_other_config(
        tmp_path: Path, cleanup: list[str]) -> None:
    """Ctrl-C after round 1 ends every process of the run (SuperLink, superexec, simulation, Ray, flwr run,
    watchdog) before the command exits 130 with one line; nothing is written afterwards, the last checkpoint
    loads, the run's FLWR_HOME and Ray folders are gone. While it ran, a second command on the folder failed at
    once naming the folder and the PID. Resuming it with another adapter or other segments is refused before
    anything starts."""
    # Prepare
    run, tag = tmp_path / "run", uuid.uuid4().hex
    cleanup.append(tag)
    cli = Cli(tag, *SMOKE, "--out", str(run))
    cli.wait_for("round 1/30", 240)
    folders = _run_folders(tag)
    t0 = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "cli.main", "simulate", *SMOKE, "--out", str(run)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    second_s = time.monotonic() - t0
    # Execute
    cli.process.send_signal(signal.SIGINT)
    rc = cli.finish(60)
    # Assert
    assert rc == 130, "\n".join(cli.lines)
    assert tagged(tag, also_in_cmdline=str(run)) == [], _describe(tagged(tag, also_in_cmdline=str(run)))
    assert not any("Traceback" in line for line in cli.lines)
    assert cli.lines[-1].startswith("fedadapt simulate: interrupted by SIGINT; the run's processes are stopped; "
                                    "last checkpoint: round ")
    assert len(folders) == 2 and not any(f.exists() for f in folders)
    assert (run / "superlink.log").is_file()
    assert second.returncode == 2 and second_s < 30
    assert second.stderr.strip() == (f"fedadapt simulate: error: {run} is in use by another run (started by pid "
                                     f"{cli.process.pid}); wait for it to end or choose another --out")
    before = _snapshot(run)
    time.sleep(5)
    assert _snapshot(run) == before and not (run / "run-complete.json").exists()
    last = latest_complete_round(run / "checkpoints")
    assert last is not None and last >= 1 and load_checkpoint(run / "checkpoints").round == last

    for flags, named in ((["--adapter", "bottleneck"], "adapter-kind: 'lora' in the checkpoint, 'bottleneck' now"),
                         (["--segments", "region"], "segment-keys: 'region,season' in the checkpoint, 'region' now")):
        refused = subprocess.run([sys.executable, "-m", "cli.main", "simulate", *SMOKE, "--out", str(run),
                                  "--resume", *flags], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and named in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert _snapshot(run) == before


@pytest.mark.slow
def test_sigkill_of_the_cli_leaves_no_process_and_no_write(tmp_path: Path, cleanup: list[str]) -> None:
    """SIGKILL of the command (no clean-up code of its own can run): the watchdog ends every process of the run
    within seconds, deletes its FLWR_HOME and Ray folders and releases the lock; the ServerApp writes nothing
    more into the run folder."""
    # Prepare
    run, tag = tmp_path / "run", uuid.uuid4().hex
    cleanup.append(tag)
    cli = Cli(tag, *SMOKE, "--out", str(run))
    cli.wait_for("round 0 (before training)", 240)
    folders = _run_folders(tag)
    # Execute
    cli.process.kill()
    cli.finish(10)
    # Assert
    assert _wait_until(lambda: tagged(tag, also_in_cmdline=str(run)) == [], 30), _describe(tagged(tag))
    assert len(folders) == 2 and not any(f.exists() for f in folders)
    assert _wait_until(lambda: _lock_free(run), 15)  # a forked child may close its copy of the lock fd last
    before = _snapshot(run)
    time.sleep(5)
    assert _snapshot(run) == before and not (run / "run-complete.json").exists()
