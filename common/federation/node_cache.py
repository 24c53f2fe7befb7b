"""A node's disk cache of what it computes from frozen weights, kept across messages and runs.

Flower 1.42 starts a new ClientApp process for every message in a deployment, so anything kept in process
memory (common/federation/cache.py) lives for one message. What depends only on the frozen backbone and public
texts is the same in every message of every run, so the node keeps it on its own disk instead:

- `item-vectors`: the seq model's frozen item-text vectors, (N, H), per (backbone, catalog texts, max-len);
- `lower-states`: the text model's frozen lower layers' states per text, per (backbone, frozen layers, max-len,
  device kind); one file per namespace, holding each text's (T, H) tensor under the digest of the text.

Files live in `<client-state-dir>/cache/` (the node's state folder in a deployment: `fedadapt deploy node
--state DIR` puts it under DIR/client/; in simulation `<data-dir>/.fedadapt-clients/cache/`). Each file name is
a digest of everything that determines its content: the backbone's content hash (`backbone_fingerprint`), the
texts and the shape parameters, so a changed text or backbone misses and is recomputed. Files are safetensors
(no pickles are ever loaded), written to a temporary file and renamed into place (a reader sees a whole file or
none), and the folder is bounded by `node-cache-mb`: the least recently used files are deleted beyond it. A file
that does not parse, or holds other names, shapes or dtypes than the key promises, is deleted and rebuilt;
it never stops the client.

Nothing here imports transformers: a client that finds its vectors on disk never loads the backbone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_DIRNAME = "cache"
SUFFIX = ".safetensors"
FINGERPRINT_DIR = "backbones"  # memo of content hashes by file signature (size, mtime, inode)
TINY = "tiny"  # common.backbone.TINY, repeated so that this module never imports transformers


def _digest(*parts: str | bytes, size: int = 16) -> str:
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def text_digest(text: str) -> str:
    """The name a text's tensor has in a cache file."""
    return _digest(text)


def _backbone_folder(path: str) -> Path:
    if path:
        return Path(path)
    from common.backbone import default_backbone_path  # the offline MiniLM package (no transformers import)

    return default_backbone_path()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _signature(folder: Path, files: Iterable[Path]) -> str:
    rows = []
    for f in files:
        st = f.stat()
        rows.append(f"{f.relative_to(folder)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}")
    return _digest(str(folder.resolve()), *rows)


_FINGERPRINTS: dict[tuple[str, str], str] = {}


def backbone_fingerprint(path: str, memo_dir: Path | None = None) -> str:
    """A content hash of the backbone `path` ("tiny", "" = the offline MiniLM, or a model folder).

    Hashing MiniLM's 90 MB takes most of a second, so the hash is memoised by the folder's file signature
    (names, sizes, modification times, inodes) in this process and, with `memo_dir`, on disk: a file that
    changes changes its signature and is hashed again. "tiny" is built from code: its hash covers the module that
    defines it and torch's version (its random initialisation).
    """
    if path == TINY:
        source = Path(__file__).resolve().parents[1] / "backbone.py"
        return _digest(TINY, source.read_bytes(), torch.__version__)
    folder = _backbone_folder(path)
    if not folder.is_dir():
        raise ValueError(f"backbone path {folder} is not a folder")
    files = _files(folder)
    signature = _signature(folder, files)
    key = (str(folder), signature)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    memo = memo_dir / FINGERPRINT_DIR / signature if memo_dir is not None else None
    if memo is not None:
        try:
            text = memo.read_text(encoding="ascii").strip()
            if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
                _FINGERPRINTS[key] = text
                return text
        except (OSError, UnicodeDecodeError):
            pass
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(str(f.relative_to(folder)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    value = h.hexdigest()
    _FINGERPRINTS[key] = value
    if memo is not None:
        try:
            _write_atomic(memo, value.encode())
        except OSError as exc:
            log.debug("cannot memoise the backbone hash in %s: %s", memo, exc)
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class NodeCache:
    """One node's cache folder and its size bound in bytes (0: nothing is read or written)."""

    root: Path
    max_bytes: int

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def path(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key}{SUFFIX}"

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors of file (kind, key), or None when it is absent or unreadable (an unreadable file is
        deleted, so it is rebuilt). Loading marks the file used (its mtime) for the size bound."""
        if not self.enabled:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        from safetensors.torch import load_file

        try:
            tensors = load_file(path)
            os.utime(path)
        except Exception as exc:  # noqa: BLE001 - a damaged or hostile file of any kind means "not cached"
            self.discard(kind, key, f"unreadable ({exc})")
            return None
        return tensors

    def discard(self, kind: str, key: str, reason: str) -> None:
        """Delete a file that failed its checks (it will be rebuilt)."""
        log.warning("node cache: %s %s is %s; rebuilding it", kind, key, reason)
        self.path(kind, key).unlink(missing_ok=True)

    def save(self, kind: str, key: str, tensors: Mapping[str, torch.Tensor]) -> bool:
        """Write file (kind, key) atomically, then delete the least recently used files beyond the bound.
        A file larger than the whole bound is not written. False when nothing was written."""
        if not self.enabled:
            return False
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            log.info("node cache: %s %s (%d bytes) exceeds node-cache-mb; not kept", kind, key, size)
            return False
        from safetensors.torch import save

        data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})
        try:
            _write_atomic(self.path(kind, key), data)
        except OSError as exc:  # a full or read-only disk costs speed, never the round
            log.warning("node cache: cannot write %s: %s", self.path(kind, key), exc)
            return False
        self.evict(keep=self.path(kind, key))
        return True

    def files(self) -> list[Path]:
        return sorted(self.root.glob(f"*{SUFFIX}")) if self.root.is_dir() else []

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def evict(self, keep: Path | None = None) -> None:
        """Delete the least recently used cache files until the folder fits the bound (never `keep`)."""
        entries = []
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:  # another process evicted it
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size


def node_cache(client_state_dir: str, data_dir: str, max_mb: int) -> NodeCache:
    """The cache under the client's state folder (`client-state-dir`, else `<data-dir>/.fedadapt-clients`);
    turned off (max 0) when no state folder can be written."""
    from common.federation.client_secret import resolve_state_dir

    try:
        root = resolve_state_dir(client_state_dir, data_dir) / CACHE_DIRNAME
    except ValueError as exc:
        log.info("node cache off: %s", exc)
        return NodeCache(Path(os.devnull), 0)
    return NodeCache(root, max(0, max_mb) << 20)
