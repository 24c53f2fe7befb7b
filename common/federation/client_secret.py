"""A client's own random secret: drawn once, kept in the client's state folder, never derived from anything
the server knows.

The secret keys the client's pseudonyms (HMAC-SHA256, common/data/anonymize.py). Were it derived from the run
config (seed, partition id) the server could recompute it and undo every pseudonym; drawn with
`secrets.token_bytes` and stored only on the client, it cannot. Pseudonyms are then stable across rounds and
across runs that reuse the state folder (a resumed run reads the same secret), and differ between machines or
fresh state folders.

Where it lives: `<state dir>/partition-<id>/anonymization.key` (64 hex characters, mode 0600). The state dir is
the run config's `client-state-dir`; when that is empty, `<data dir>/.fedadapt-clients` if the data folder is
writable, otherwise an error asks for `client-state-dir` (a read-only data folder is common on a device and a
secret must never silently land in a temporary folder that a reboot wipes, which would change every pseudonym).
Honesty about simulation: all virtual clients share one machine, so "its own disk" is one folder per
partition that the server process could read too; in a deployment each node resolves the same
`client-state-dir` on its own disk, so each keeps its own folder and the server has no access to it. (The
ClientApp reads only the run config; a per-node `client-state-dir` in the node config is not consulted.)
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_BYTES = 32
SECRET_FILE = "anonymization.key"
DEFAULT_STATE_DIRNAME = ".fedadapt-clients"


def resolve_state_dir(client_state_dir: str, data_dir: str) -> Path:
    """The configured state folder, or `<data_dir>/.fedadapt-clients` when none is set and it can be written."""
    if client_state_dir:
        return Path(client_state_dir).expanduser()
    default = Path(data_dir) / DEFAULT_STATE_DIRNAME
    try:
        default.mkdir(mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=default):
            pass
    except OSError as exc:
        raise ValueError(f"client-state-dir is empty and {default} cannot be written ({exc.strerror or exc}); "
                         f"set the run config's client-state-dir to a folder where each client may keep its "
                         f"secret, e.g. --run-config \"client-state-dir='/var/lib/fedadapt'\"") from exc
    return default


def secret_path(state_dir: Path, partition_id: int) -> Path:
    """Where partition `partition_id` keeps its secret under `state_dir`."""
    if partition_id < 0:
        raise ValueError(f"partition_id must be >= 0, got {partition_id}")
    return Path(state_dir) / f"partition-{partition_id}" / SECRET_FILE


def client_secret(state_dir: Path, partition_id: int) -> bytes:
    """This partition's secret: read from its key file, or drawn and written atomically on first use.

    Creation is exclusive: the new secret is written to a temp file (0600) and hard-linked into place, which
    fails if the file already exists, so when two worker processes race on one partition both end up reading
    the one secret that won.
    """
    path = secret_path(state_dir, partition_id)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_random_file(path, SECRET_BYTES)
    return _read(path)


def create_random_file(path: Path, nbytes: int) -> None:
    """Write `nbytes` random bytes as hex to `path` unless it exists: a 0600 temp file hard-linked into place,
    so when two processes race both end up reading the one file that won (the folder must exist)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_bytes(nbytes).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            log.info("drew a new random key at %s", path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        os.unlink(tmp)


def _read(path: Path) -> bytes:
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"{path}: corrupt client secret (expected {SECRET_BYTES * 2} hex characters, found "
                         f"{len(text)} characters); restore it from a backup, or delete it to draw a new one "
                         f"(every pseudonym of this client then changes)")
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path, path.stat().st_mode & 0o777)
    return secret
