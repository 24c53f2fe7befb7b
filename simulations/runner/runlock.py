"""One run per run folder: an exclusive `flock` on RUN/.lock, held for the whole `fedadapt simulate` command.

Two runs writing into one folder interleave checkpoints and metrics.jsonl and both report success, so the
second must fail at once. `flock` is released by the kernel when the last descriptor of the lock file closes,
so a killed run never leaves a stale lock behind; the watchdog (simulations/runner/reaper.py) is handed a copy of the
descriptor, which keeps the folder locked until the last process of a killed run is gone. The file itself is
never deleted: unlinking a lock file lets a waiting process lock the old inode while a new one locks a new
file. It holds the PID of the command that took the lock, for the error message of the next one.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.errors import UserError

LOCK_FILE = ".lock"


class RunFolderBusy(UserError):
    """Another run holds the folder's lock (the CLI prints it as one line, exit status 2)."""


class RunLock:
    """`with RunLock(folder) as lock:` creates the folder and holds its lock; `lock.fd` is the descriptor."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(f"{self.folder} is in use by another run (started by pid {holder}); wait for it "
                                "to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
