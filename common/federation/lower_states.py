"""The text model's frozen lower-layer states on the node's disk, behind its in-memory `LowerCache`.

With adapters only in the top layers (`adapter-layers`), each text's lower-layer states never change
(common/rec/model.py `LowerCache`), but a ClientApp process lives for one message in a deployment, so the memory
cache starts empty at every message. `DiskLowerCache` is a `LowerCache` that, on a memory miss, reads the text's
states from the node's cache file (common/federation/node_cache.py, kind `lower-states`: one safetensors file per
backbone content hash, number of frozen layers and device kind, each text's (T, H) float32 tensor under
"<max_len>:<digest of the text>"), and remembers what it computed so that `flush` (after each message) writes
the merged file back atomically. A tensor that is not what its name promises (dtype, rank, width, finite
values) counts as a miss and the file is rewritten; an unreadable file is deleted and rebuilt.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.federation.node_cache import NodeCache, _digest, backbone_fingerprint, text_digest
from common.rec.model import LowerCache

log = logging.getLogger(__name__)

KIND = "lower-states"
OFF = NodeCache(Path(os.devnull), 0)


def entry_name(text: str, max_len: int) -> str:
    return f"{max_len}:{text_digest(text)}"


@dataclass
class DiskLowerCache(LowerCache[tuple[str, int]]):
    """A `LowerCache` backed by one node-cache file (`disk`, `key`) of tensors `width` wide."""

    disk: NodeCache = OFF
    key: str = ""
    width: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    disk_hits: int = 0
    new: dict[str, torch.Tensor] = field(default_factory=dict)  # computed here, not yet on disk
    _file: Any = None  # the open safetensors file (read lazily, tensor by tensor)
    _names: frozenset[str] = frozenset()
    _broken: bool = False

    def __post_init__(self) -> None:
        self._open()

    def _open(self) -> None:
        self._file, self._names = None, frozenset()
        if not self.disk.enabled or not self.disk.path(KIND, self.key).is_file():
            return
        from safetensors import safe_open

        try:  # a damaged or hostile file raises here: it is rebuilt, never trusted
            self._file = safe_open(str(self.disk.path(KIND, self.key)), framework="pt", device="cpu")
            self._names = frozenset(self._file.keys())
        except Exception as exc:  # noqa: BLE001 - any failure to parse means "not cached"
            self.disk.discard(KIND, self.key, f"unreadable ({exc})")

    def _from_disk(self, name: str) -> torch.Tensor | None:
        if name not in self._names:
            return None
        try:
            value = self._file.get_tensor(name)
        except Exception as exc:  # noqa: BLE001
            log.warning("node cache: lower-states entry unreadable (%s)", exc)
            value = None
        if (value is None or value.dtype != torch.float32 or value.ndim != 2 or value.shape[1] != self.width
                or value.shape[0] < 1 or not bool(torch.isfinite(value).all())):
            self._broken = True  # rewrite the file without it at the next flush
            return None
        return value

    def get(self, key: tuple[str, int]) -> torch.Tensor | None:
        value = super().get(key)
        if value is not None:
            return value
        found = self._from_disk(entry_name(*key))
        if found is None:
            return None
        self.disk_hits += 1
        self.misses -= 1  # served after all: count it as a hit
        self.hits += 1
        found = found.to(self.device)
        LowerCache.put(self, key, found)
        return found

    def put(self, key: tuple[str, int], value: torch.Tensor) -> None:
        if key not in self.entries:
            self.new[entry_name(*key)] = value
        super().put(key, value)

    def flush(self) -> bool:
        """Write the file with what was computed since the last flush merged in; True when written."""
        if not self.disk.enabled or not (self.new or self._broken):
            return False
        merged: dict[str, torch.Tensor] = {}
        for name in self._names:
            value = self._from_disk(name)
            if value is not None:
                merged[name] = value
        merged.update({name: t.detach().float().cpu() for name, t in self.new.items()})
        budget = self.disk.max_bytes
        size = 0
        kept: dict[str, torch.Tensor] = {}
        for name, value in merged.items():  # what is on disk first, then the new entries, up to the bound
            size += value.numel() * value.element_size()
            if size > budget:
                break
            kept[name] = value
        self._file = None  # release the mapping before the file is replaced
        written = self.disk.save(KIND, self.key, kept)
        self.new.clear()
        self._broken = False
        self._open()
        return written


def namespace_key(backbone: str, frozen_layers: int, device: torch.device, disk: NodeCache) -> str:
    """The cache file of one backbone (content hash), number of frozen layers and device kind (a GPU's float
    results differ from a CPU's in the last bits)."""
    return _digest(KIND, backbone_fingerprint(backbone, disk.root), str(frozen_layers), device.type)


def attach(model: Any, backbone: str, disk: NodeCache) -> None:
    """Give `model` (a RecModel with top-layer adapters) a disk-backed lower cache, once; a no-op without one."""
    current = model.lower_cache
    if isinstance(current, DiskLowerCache) or not disk.enabled or not model.caches_lower_layers:
        if isinstance(current, DiskLowerCache):
            current.device = model.device
        return
    frozen = model.adapted.frozen_layers
    model.lower_cache = DiskLowerCache(max_bytes=current.max_bytes, entries=current.entries, size=current.size,
                                       disk=disk, key=namespace_key(backbone, frozen, model.device, disk),
                                       width=int(model.backbone.hidden_size), device=model.device)


def flush(model: Any) -> None:
    """Persist what `model`'s disk-backed lower cache computed during this message (a no-op otherwise)."""
    cache = getattr(model, "lower_cache", None)
    if isinstance(cache, DiskLowerCache):
        cache.flush()
