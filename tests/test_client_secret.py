"""A client's pseudonym key is its own random secret on its own disk: drawn once, read back afterwards, one
winner when processes race, a clear error when corrupt; federation uses it and k-anonymity with FEDERATION_K."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import stat
from pathlib import Path

import pytest

from common.data.anonymize import anonymize_marketplace
from common.data.schema import Marketplace, write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import client_data as client_data_module
from common.federation.client_data import CLIENTS, FEDERATION_K, client_data, client_key
from common.federation.client_secret import (
    DEFAULT_STATE_DIRNAME,
    SECRET_FILE,
    client_secret,
    resolve_state_dir,
    secret_path,
)
from common.protocol import FedConfig


def test_secret_is_drawn_once_private_and_read_back(tmp_path: Path) -> None:
    """First use writes partition-<id>/anonymization.key (0600); later uses read the same bytes."""
    first = client_secret(tmp_path, 3)
    path = tmp_path / "partition-3" / SECRET_FILE
    assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32 and client_secret(tmp_path, 3) == first
    assert client_secret(tmp_path, 4) != first
    assert client_secret(tmp_path / "fresh", 3) != first
    assert sorted(p.name for p in path.parent.iterdir()) == [SECRET_FILE]


def _race(state_dir: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(client_secret(Path(state_dir), 0))


def test_racing_processes_end_up_with_one_secret(tmp_path: Path) -> None:
    """Eight processes creating the same partition's secret at once all return the one stored on disk."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), queue)) for _ in range(8)]
    for p in procs:
        p.start()
    got = {queue.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(timeout=30)
    assert got == {client_secret(tmp_path, 0)}
    assert [p.name for p in (tmp_path / "partition-0").iterdir()] == [SECRET_FILE]


def test_losing_the_race_reads_the_winners_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that saw no key file but lost the link to another process returns the stored secret."""
    winner = client_secret(tmp_path, 2)
    monkeypatch.setattr(Path, "exists", lambda self: False)
    assert client_secret(tmp_path, 2) == winner
    assert [p.name for p in (tmp_path / "partition-2").iterdir()] == [SECRET_FILE]


@pytest.mark.parametrize("content", ["abc123\n", "zz" * 32, "00" * 31, ""])
def test_corrupt_secret_is_an_error_naming_the_file(tmp_path: Path, content: str) -> None:
    """A short, empty or non-hex key file is refused, never silently replaced (pseudonyms would change)."""
    path = secret_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}: corrupt client secret"):
        client_secret(tmp_path, 1)
    assert path.read_text() == content


def test_state_dir_defaults_to_the_data_folder_only_if_writable(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit client-state-dir wins; empty falls back to <data>/.fedadapt-clients; an unwritable data
    folder is an error that tells the user to set client-state-dir."""
    assert resolve_state_dir(str(tmp_path / "mine"), str(tmp_path / "data")) == tmp_path / "mine"
    (tmp_path / "data").mkdir()
    assert resolve_state_dir("", str(tmp_path / "data")) == tmp_path / "data" / DEFAULT_STATE_DIRNAME

    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ValueError, match="set the run config.s client-state-dir"):
        resolve_state_dir("", str(tmp_path / "ro-data"))


def test_key_is_not_derivable_from_the_run_config(tmp_path: Path) -> None:
    """Same seed and partition, fresh state folders: different keys, and neither is the old derived key."""
    a = client_key(FedConfig(data_dir="/d", seed=0, client_state_dir=str(tmp_path / "a")), 0)
    b = client_key(FedConfig(data_dir="/d", seed=0, client_state_dir=str(tmp_path / "b")), 0)
    assert a != b
    assert hashlib.sha256(b"fedadapt-client-key:0:0").digest() not in (a, b)


def _data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    if not folder.exists():
        write_marketplace(generate_marketplace(150, 300, seed=2), folder)
    return folder


def test_pseudonyms_stable_with_the_state_dir_and_fresh_without(tmp_path: Path) -> None:
    """Rebuilding a client (a new round, a resumed run) with the same state folder gives the same pseudonyms;
    another state folder (another machine) gives others."""
    data = str(_data(tmp_path))
    cfg = FedConfig(data_dir=data, partition_mode="iid")
    first = [r.user_id for r in client_data(cfg, 0, 3).records]
    CLIENTS.clear()
    assert [r.user_id for r in client_data(cfg, 0, 3).records] == first
    assert (Path(data) / DEFAULT_STATE_DIRNAME / "partition-0" / SECRET_FILE).is_file()
    other = FedConfig(data_dir=data, partition_mode="iid", client_state_dir=str(tmp_path / "elsewhere"))
    assert not set(r.user_id for r in client_data(other, 0, 3).records) & set(first)


def test_federation_anonymizes_with_k_over_the_combination(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's anonymized users table: every combination of its columns shared by >= FEDERATION_K users,
    region values never generalised."""
    seen: list[Marketplace] = []

    def spy(m: Marketplace, cfg: object) -> Marketplace:
        out = anonymize_marketplace(m, cfg)  # type: ignore[arg-type]
        seen.append(out)
        return out

    monkeypatch.setattr(client_data_module, "anonymize_marketplace", spy)
    cfg = FedConfig(data_dir=str(_data(tmp_path)), partition_mode="iid", client_state_dir=str(tmp_path / "s"))
    client_data(cfg, 1, 3)
    users = seen[0].users
    columns = [c for c in users.columns if c != "user_id"]
    assert FEDERATION_K == 5 and columns == ["region", "age_band"]
    assert (users.groupby(columns).size() >= FEDERATION_K).all()
    assert "other" not in set(users["region"]) and "other" in set(users["age_band"])
