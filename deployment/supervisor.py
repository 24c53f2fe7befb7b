"""Long-running Flower processes of one side (server or node), kept up until the operator stops them.

Each child runs in a session of its own with its output appended to LOGS/<name>.log. A child that exits is started
again after `restart_delay` seconds (the SuperNode exits when its key is not registered yet, and comes back once
it is), like compose's `restart: on-failure`; SIGINT/SIGTERM stop every child (SIGTERM, then SIGKILL) and return.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger(__name__)


@dataclass
class Child:
    """One supervised command."""

    name: str
    cmd: list[str]
    env: Mapping[str, str]
    restart: bool = True
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0


@dataclass
class Supervisor:
    """Starts, restarts and stops the children of one side; logs under `logs`."""

    logs: Path
    restart_delay: float = 10.0
    children: list[Child] = field(default_factory=list)
    _stopping: bool = False

    def add(self, name: str, cmd: list[str], env: Mapping[str, str], restart: bool = True) -> Child:
        child = Child(name, cmd, env, restart)
        self.children.append(child)
        return child

    def start(self, child: Child) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{child.name}.log", "ab") as out:
            child.proc = subprocess.Popen(child.cmd, env=dict(child.env), stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        child.starts += 1
        log.info("%s started (pid %d)%s", child.name, child.proc.pid,
                 "" if child.starts == 1 else f", start {child.starts}")

    def run(self, ready: float = 0.0) -> int:
        """Start every child, keep them up until SIGINT/SIGTERM; 0 once stopped that way, 1 if a child that must
        not restart exited."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for child in self.children:
                self.start(child)
                time.sleep(ready)
            due: dict[str, float] = {}
            while not self._stopping:
                for child in self.children:
                    assert child.proc is not None
                    code = child.proc.poll()
                    if code is None:
                        continue
                    if not child.restart:
                        log.error("%s exited with %s; see %s", child.name, code, self.logs / f"{child.name}.log")
                        return 1
                    if child.name not in due:
                        log.warning("%s exited with %s; restarting in %.0f s (see %s)", child.name, code,
                                    self.restart_delay, self.logs / f"{child.name}.log")
                        due[child.name] = time.monotonic() + self.restart_delay
                    elif time.monotonic() >= due[child.name]:
                        del due[child.name]
                        self.start(child)
                time.sleep(0.5)
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        self._stopping = True

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every child's session, SIGKILL what is left after `grace` seconds."""
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(grace)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
