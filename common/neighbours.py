"""Busy neighbour processes for benchmarks: what an edge node's other services do to a client's CPU.

`busy_neighbours(n)` starts n single-threaded Python processes that spin (`while True` with nothing to wait on,
each one core's worth of load) and stops them when the block ends, also on an exception or Ctrl-C. Should this
process die without running its `finally` (SIGKILL, SIGTERM without a handler), each neighbour notices within
a few milliseconds that its parent changed and exits on its own: none is left burning a core.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# Spin, and look at the parent every ~10^5 iterations (a few ms): once it is gone (reparented), stop. The parent's
# pid comes as an argument: read in the child, it would be the new parent's had the old one died during start-up.
SPIN = ("import os, sys\nparent = int(sys.argv[1])\nwhile os.getppid() == parent:\n"
        "    for _ in range(100_000):\n        pass\n")
STOP_TIMEOUT_S = 5.0


@contextmanager
def busy_neighbours(count: int) -> Iterator[list[int]]:
    """Run the block beside `count` busy processes (their pids are yielded); every one is stopped after it."""
    if count < 0:
        raise ValueError(f"neighbours={count} must be >= 0")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if procs:
            log.info("started %d busy neighbour(s): pids %s", len(procs), [p.pid for p in procs])
        yield [p.pid for p in procs]
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate every process, wait for it (kill it after STOP_TIMEOUT_S): none outlives the call."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if procs:
        log.info("stopped %d busy neighbour(s)", len(procs))


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
