"""How many torch threads this process computes with: the CPUs it may use that nothing else is busy on.

Why: torch's OpenMP threads wait for each other at the end of every parallel region, so a thread whose core is
taken by another process holds all of them up. On a 2-core machine with one busy neighbour, a client update on 2
threads measured 4.5x slower than on 1 thread (issue 22); on an idle machine 2 threads are 1.8x faster than 1.
Losing a core costs far more than leaving one idle, so the choice is cautious.

The rule (`choose_threads`): start from the CPUs this process may run on (`os.sched_getaffinity`: taskset,
cgroup cpusets, `docker --cpuset-cpus`), at most `cap` of them (a simulation's `--cpus-per-client`), and take
away every CPU that other processes keep busy: their CPU time on those CPUs (/proc/stat, less this process's own
time) per second of wall time, rounded up once it exceeds `IGNORED_LOAD` (a quarter core of background noise
does not cost a thread). At least one thread.

What others use is measured between two decisions (`ThreadPlan.refresh`): the first looks `PROBE_S` seconds
ahead, the next ones over the time since the last, at most every `REFRESH_S` seconds (training calls
`refresh` after each optimizer step, so a neighbour that starts mid-run costs one refresh interval, not the
run). An explicit count always wins: `--threads N`, the run config's `client-threads = N`, else the environment
variable FEDADAPT_THREADS; 0 (or none) means follow the free CPUs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV_THREADS = "FEDADAPT_THREADS"  # a node's own explicit setting, e.g. in a SuperNode's container
IGNORED_LOAD = 0.25  # cores of others' load that do not cost a thread (daemons, a shell, a short burst)
PROBE_S = 0.1  # the first decision of a process measures this long
REFRESH_S = 2.0  # later decisions measure the time since the previous one, at most this often
PROC_STAT = "/proc/stat"


def allowed_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where the OS has no such mask)."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def explicit_threads(threads: int | None) -> int | None:
    """The count asked for: `threads` when > 0, else FEDADAPT_THREADS when set and > 0; None means choose."""
    if threads is not None and threads < 0:
        raise ValueError(f"threads={threads} must be >= 0 (0: follow the free CPUs)")
    if threads:
        return threads
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{ENV_THREADS}={value!r} is not an integer (0 or unset: follow the free CPUs)") from None
    if count < 0:
        raise ValueError(f"{ENV_THREADS}={count} must be >= 0 (0 or unset: follow the free CPUs)")
    return count or None


def choose_threads(allowed: int, others_busy: float, cap: int = 0) -> int:
    """Threads for `allowed` usable CPUs of which other processes keep `others_busy` cores busy (at most `cap`
    when cap > 0): one per CPU left free, a busy share above IGNORED_LOAD costing a whole CPU; at least one."""
    if allowed < 1:
        raise ValueError(f"allowed={allowed} CPUs: a process runs on at least one")
    busy = max(0, math.ceil(others_busy - IGNORED_LOAD))
    usable = min(allowed, cap) if cap > 0 else allowed
    return max(1, min(usable, allowed - busy))


@dataclass(frozen=True)
class CpuSample:
    """Busy seconds of a set of CPUs (everyone's), this process's CPU seconds, and when, at one instant."""

    wall: float
    busy: float
    own: float


def read_busy_seconds(cpus: Iterable[int], path: str = PROC_STAT) -> float | None:
    """Seconds the CPUs `cpus` spent on anything but idle and I/O wait since boot (/proc/stat); None off Linux."""
    wanted = {f"cpu{c}" for c in cpus}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        with open(path, encoding="ascii") as stat:
            lines = [ln.split() for ln in stat if ln.startswith("cpu")]
    except OSError:
        return None
    busy = 0
    for fields in lines:
        if fields[0] in wanted:  # user nice system idle iowait irq softirq steal (guest is inside user)
            ticks = [int(v) for v in fields[1:9]]
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / tick


def sample(cpus: Iterable[int]) -> CpuSample | None:
    """Now: the CPUs' busy seconds and this process's own (all its threads, not its children)."""
    busy = read_busy_seconds(cpus)
    return None if busy is None else CpuSample(time.monotonic(), busy, time.process_time())


def others_busy(before: CpuSample, after: CpuSample) -> float:
    """Cores other processes kept busy between two samples: everyone's busy time less ours, per wall second."""
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


class ThreadPlan:
    """One process's torch thread count: explicit, or re-chosen from the free CPUs at most every REFRESH_S.

    `apply` sets the mode (and the count right away); `refresh` re-chooses in the free-CPUs mode only, so code
    that never called `apply` (a test that set one thread itself) keeps its own setting.
    """

    def __init__(self, set_threads: Callable[[int], None] | None = None,
                 sampler: Callable[[Iterable[int]], CpuSample | None] = sample) -> None:
        self._set = set_threads or _torch_set_num_threads
        self._sampler = sampler
        self._explicit: int | None = None
        self._cap = 0
        self._follow = False
        self._busy = 0.0  # cores others kept busy over the last interval measured
        self._last: CpuSample | None = None
        self.threads = 0  # the count set last (0: none set yet)

    def apply(self, threads: int | None = 0, cap: int = 0) -> int:
        """Use `threads` threads if > 0 (else FEDADAPT_THREADS, else follow the free CPUs, at most `cap`)."""
        if cap < 0:
            raise ValueError(f"cap={cap} must be >= 0 (0: every CPU this process may use)")
        self._explicit, self._cap = explicit_threads(threads), cap
        self._follow = self._explicit is None
        if self._explicit is not None:
            return self._use(self._explicit, "explicit")
        return self.refresh(force=True)

    def refresh(self, force: bool = False) -> int:
        """Re-choose from what others used since the last decision (free-CPUs mode, at most every REFRESH_S)."""
        if not self._follow:
            return self.threads
        if not force and self._last is not None and time.monotonic() - self._last.wall < REFRESH_S:
            return self.threads
        cpus = allowed_cpus()
        before = self._last
        if before is None:  # a process's first decision: look ahead once
            before = self._sampler(cpus)
            time.sleep(PROBE_S)
        now = self._sampler(cpus)
        if before is None or now is None:  # no /proc/stat: every usable CPU
            return self._use(choose_threads(len(cpus), 0.0, self._cap), "no CPU statistics")
        if now.wall - before.wall >= PROBE_S / 2:  # else too short to say anything: the last interval's load
            self._last, self._busy = now, others_busy(before, now)
        return self._use(choose_threads(len(cpus), self._busy, self._cap), f"{self._busy:.2f} cores busy elsewhere")

    def _use(self, threads: int, why: str) -> int:
        if threads != self.threads:
            log.info("torch threads: %d (%s; %d CPUs usable)", threads, why, len(allowed_cpus()))
        self._set(threads)  # also when unchanged: other code (a test, a library) may have set its own count
        self.threads = threads
        return threads


def _torch_set_num_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:  # setting it again, even unchanged, costs the next steps' pool start-up
        torch.set_num_threads(threads)


PLAN = ThreadPlan()  # torch's thread count is per process, and so is this plan
