"""The banks a service ranks with: one immutable bank set per checkpoint round, segment banks in an LRU bounded
in bytes, and a new round picked up without a restart.

Why this shape: the global bank (user tower and item table) is needed by every request, so a bank set holds it
loaded, with the item table computed once. Segment banks ("region=EU", ...) are needed only by their segment's
requests; there can be many, so they are read from the round's checkpoint on first use and kept in an LRU whose
bound is in bytes (what memory a deployment can give), not in entries.

Swap: `BankStore.current()` looks for a newer complete round (server/checkpoint.py renames a round into place
only once every file is written, so a round being written is invisible), builds the whole new bank set aside, and
only then replaces the reference. A request takes the reference once and uses that set throughout, so it ranks
with one round's banks from start to end, never a mix and never a half-loaded bank. Segment banks are cached per
(round, bank), so an old round's entries cannot leak into a new round's request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from safetensors.numpy import load_file

from common.federation import seq_task
from common.federation.backbones import backbone_for
from common.names import GLOBAL, KEY_SEP
from common.rec.seq_model import SegmentBank, SeqRecModel
from server.checkpoint import STATE_FILE, latest_complete_round, round_dir
from serving.retrieval import Retrieval, RetrievalOptions, quantize_tower
from serving.run import ServedRun

V = TypeVar("V")
log = logging.getLogger(__name__)


class ByteLRU(Generic[V]):
    """Least-recently-used values whose summed sizes stay within `max_bytes` (thread-safe). A value larger than
    the whole bound is handed out but never kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, key: Hashable, load: Callable[[], tuple[V, int]]) -> V:
        """The cached value of `key`, or `load()`'s (value, size in bytes), cached while it fits."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value, size = load()  # outside the lock: a slow read never blocks requests for cached banks
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return value
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped
                self.evictions += 1
        return value


@dataclass(frozen=True)
class BankSet:
    """One round's banks: the loaded global bank, its item side (vectors in the served precision and the index,
    built once here), the user tower that runs requests, and where each segment bank's file is."""

    round: int
    model: SeqRecModel  # holds the global bank only; segment banks come from the store's LRU
    table: torch.Tensor  # (N+1, d) fp32 item vectors, row 0 padding
    retrieval: Retrieval  # the item vectors as served (fp32 or int8) and the HNSW index if one applies
    tower: SeqRecModel  # `model`, or its int8 copy (precision int8)
    files: dict[str, tuple[str, str | None]]  # bank -> (file in the round folder, its SHA-256 or None)
    served: frozenset[str]  # segment banks the server served after this round (held-back ones are not routed)
    folder: Path

    @property
    def segment_banks(self) -> list[str]:
        return sorted(n for n in self.files if n != GLOBAL)


def _read_bank(bank_set_folder: Path, name: str, fname: str, digest: str | None) -> dict[str, torch.Tensor]:
    """One bank's tensors, keys without the '<bank>::' prefix; refuses a file whose SHA-256 differs."""
    path = bank_set_folder / fname
    with open(path, "rb") as fh:
        if digest is not None and hashlib.file_digest(fh, "sha256").hexdigest() != digest:
            raise ValueError(f"{path}: SHA-256 differs from the one recorded in {STATE_FILE}")
    prefix = f"{name}{KEY_SEP}"
    arrays = load_file(str(path))
    if not all(k.startswith(prefix) for k in arrays):
        raise ValueError(f"{path}: holds tensors of a bank other than {name!r}")
    return {k[len(prefix):]: torch.from_numpy(v) for k, v in arrays.items()}


class BankStore:
    """The current bank set of a run, refreshed when a newer round lands, and an LRU of segment banks."""

    def __init__(self, run: ServedRun, cache_bytes: int = 256 << 20, refresh_seconds: float = 1.0,
                 options: RetrievalOptions | None = None) -> None:
        self.run = run
        self.options = options or RetrievalOptions()
        self.builds = 0  # bank sets built (one per round swapped in): the item side is never rebuilt per request
        self.cache: ByteLRU[SegmentBank] = ByteLRU(cache_bytes)
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._damaged: int | None = None  # a newer round that failed to load (not retried until another lands)
        self._current = self._build(self._latest())

    def _latest(self) -> int:
        last = latest_complete_round(self.run.checkpoints)
        if last is None:
            raise FileNotFoundError(f"no complete checkpoint under {self.run.checkpoints}")
        return last

    def _build(self, server_round: int) -> BankSet:
        folder = round_dir(self.run.checkpoints, server_round)
        state = json.loads((folder / STATE_FILE).read_text())
        digests = state.get("sha256", {})
        files = {name: (fname, digests.get(fname)) for fname, name in state["bank_files"].items()}
        if GLOBAL not in files:
            raise ValueError(f"{folder}: no {GLOBAL!r} bank")
        cfg, texts = self.run.cfg, self.run.item_texts
        backbone = backbone_for(cfg.backbone)
        model = seq_task.new_model(cfg, texts, seq_task.model_text_vectors(cfg, backbone, texts), backbone=backbone)
        weights = _read_bank(folder, GLOBAL, *files[GLOBAL])
        model.load_adapter_state({f"{GLOBAL}{KEY_SEP}{k}": v for k, v in weights.items()})
        model.eval()
        with torch.no_grad():
            table = model.item_table()
            retrieval = Retrieval.build(table, model.item_prior(), self.options)  # text prior + free bias
        tower = model if self.options.precision == "fp32" else quantize_tower(model)
        served = state.get("served_segments")  # absent in old checkpoints: serve every bank
        segments = {n for n in files if n != GLOBAL}
        self.builds += 1
        return BankSet(round=server_round, model=model, table=table, retrieval=retrieval, tower=tower,
                       files=files, folder=folder,
                       served=frozenset(segments if served is None else set(served) & segments))

    def current(self) -> BankSet:
        """The newest complete round's bank set (checked at most every `refresh_seconds`)."""
        now = time.monotonic()
        if now - self._checked >= self.refresh_seconds:
            with self._lock:
                self._checked = now
                latest = self._latest()
                if latest > self._current.round and latest != self._damaged:
                    try:
                        self._current = self._build(latest)  # built aside, then one reference assignment
                    except (OSError, ValueError, KeyError) as exc:  # a damaged round: keep serving the last good one
                        self._damaged = latest
                        log.warning("round %d under %s not loaded (%s); still serving round %d", latest,
                                    self.run.checkpoints, exc, self._current.round)
        return self._current

    def segment(self, bank_set: BankSet, name: str) -> SegmentBank:
        """Segment bank `name` of `bank_set`'s round, from the LRU or its checkpoint file."""

        def load() -> tuple[SegmentBank, int]:
            bank = SegmentBank(bank_set.model.cfg, len(bank_set.model.catalog))
            weights = _read_bank(bank_set.folder, name, *bank_set.files[name])
            bank.load_state_dict(weights, strict=True)
            bank.eval()
            return bank, sum(p.numel() * p.element_size() for p in bank.parameters())

        return self.cache.get((bank_set.round, name), load)
