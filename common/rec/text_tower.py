"""Item text tower of the sequential model: the frozen backbone with trainable adapters in its top layers.

Why: with frozen text vectors (`seq_model.frozen_item_vectors`) the words of an item's text place it once and for
all; only a linear projection on top learns from the log. Here the top `layers` transformer layers of the backbone
carry adapters of one kind (LoRA by default) that train with the rest of the seq model's global bank, so what the
log says about items can reshape how their texts are read, and an item nobody has interacted with yet (a new
product) is still placed by that learned reading of its text.

The backbone stays frozen and is never part of the state: the adapter modules are registered under the global
bank (`GlobalBank.text_adapters`), so their tensors are `"global::text_adapters.<site>.<tensor>"` keys that
federate and aggregate like every other bank tensor, while the backbone is held outside the module tree.

Cost (the crux on 2 CPU cores):
- the layers below the first adapter map a text to the same hidden states every time: they run once per process
  and (backbone fingerprint, split layer, max_len, text) (`LOWER_STATES`), over the text's real tokens only;
- scoring (no gradient) runs the adapted top layers over the whole catalog once per adapter-weight version
  (`TextTower.vectors` caches it until an optimizer step or a load changes the adapters);
- a training step passes gradients only through the items of its batch (`focus`: inputs and targets), at most
  `grad_items` of them (a sample when more); every other item's vector comes from a table computed without
  gradient at the start of each epoch (`model.train(True)`, which `train_seq` calls per epoch and which a
  federated client's training starts with, so a table never outlives the weights a round loaded) and, with
  `refresh_steps` > 0, every that many steps within an epoch.

Measured on MovieLens-1M (3,883 item texts of about 24 tokens, MiniLM): one adapted layer over the whole catalog
is about 330 GFLOP, so re-encoding it with gradients at every step was out of reach on 2 cores; see README.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.adapters import AdaptedModel, AdapterConfig
from common.backbone import Backbone
from common.names import GLOBAL
from common.rec.model import LowerCache

log = logging.getLogger(__name__)

TOWER_ADAPTER = GLOBAL  # the tower's one adapter inside its AdaptedModel (the hyper kind's hypernet owner)


@dataclass(frozen=True)
class TextTowerConfig:
    """Shape (layers, kind, rank, max_len, seed: the same on every party) and training cost knobs of the tower."""

    layers: int = 2  # top backbone layers with adapters
    kind: str = "lora"
    rank: int = 16
    max_len: int = 64  # token limit of an item text
    seed: int = 0
    grad_items: int = 128  # items per training step that get gradients (0: every item of the batch)
    refresh_steps: int = 0  # steps between no-gradient re-encodings of the catalog within an epoch; 0: per epoch
    chunk: int = 256  # items per upper-layer forward

    def __post_init__(self) -> None:
        for name in ("layers", "rank", "max_len", "chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"text tower {name} must be >= 1, got {getattr(self, name)}")
        for name in ("grad_items", "refresh_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"text tower {name} must be >= 0, got {getattr(self, name)}")

    def adapter_config(self) -> AdapterConfig:
        return AdapterConfig(kind=self.kind, rank=self.rank, alpha=float(self.rank), top_layers=self.layers,
                             seed=self.seed)


# (backbone fingerprint, split layer, max_len, text) -> (T, H) states entering the first adapted layer
LOWER_STATES: LowerCache[tuple[str, int, int, str]] = LowerCache()
_FINGERPRINTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def backbone_fingerprint(model: nn.Module) -> str:
    """A digest of every weight and buffer of the backbone (once per model object): two backbones with the same
    source name but other weights (two seeds of the tiny test BERT) never share cached states."""
    found = _FINGERPRINTS.get(model)
    if found is None:
        h = hashlib.blake2b(digest_size=12)
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        found = _FINGERPRINTS[model] = h.hexdigest()
    return found


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, H) unit vectors: the mean of `hidden` over the real tokens (the frozen vectors' pooling)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0), dim=-1)


class TextTower:
    """The adapted top layers over cached lower-layer states of a fixed catalog's texts.

    `texts` (catalog order) may be None on a party that only needs the adapters' shapes and seeded values (the
    server building the initial state); `vectors` then refuses to run. `adapters` is the module the seq model's
    global bank registers: its parameters are the tower's whole trainable state.
    """

    def __init__(self, backbone: Backbone, cfg: TextTowerConfig, texts: Sequence[str] | None) -> None:
        self.cfg = cfg
        self.backbone = backbone
        self.adapted = AdaptedModel(backbone, cfg.adapter_config(), names=[TOWER_ADAPTER])
        if self.adapted.frozen_layers == 0:
            raise ValueError(f"seq text adapters of kind {cfg.kind!r} reach below the top {cfg.layers} layers (prompt "
                             "tokens or an encoder that cannot be split); use a kind such as lora or bottleneck")
        if not self.adapted.identity_at_init:
            raise ValueError(f"seq text adapters of kind {cfg.kind!r} change the text vectors at init; use a kind "
                             "that starts as the identity (lora, bottleneck, ...)")
        self.adapters = TowerAdapters({_module_name(path): module for path, module in self._owners()})
        self.texts = list(texts) if texts is not None else None
        self._lower: list[torch.Tensor] | None = None
        self._table: torch.Tensor | None = None  # (N, H), no gradient
        self._table_version: tuple[object, ...] | None = None
        self._stale_steps = 0

    def _owners(self) -> list[tuple[str, nn.Module]]:
        """Every module that holds the tower adapter's tensors, by site path (a shared module by its kind)."""
        from common.adapters.base import module_key

        key = module_key(TOWER_ADAPTER)
        owners = [(w.site.path, w.adapters[key]) for w in self.adapted.wrappers]
        if key in self.adapted.shared:
            owners.append((self.adapted.kind.name, self.adapted.shared[key]))
        return owners

    @property
    def hidden_size(self) -> int:
        return self.backbone.hidden_size

    @property
    def device(self) -> torch.device:
        return next(iter(self.adapters.parameters())).device

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    # -- lower layers -------------------------------------------------------------------------------------
    def lower_states(self) -> list[torch.Tensor]:
        """Each catalog text's (T, H) states entering the first adapted layer (from `LOWER_STATES` or computed)."""
        if self.texts is None:
            raise ValueError("this text tower was built without the catalog's texts (bank shapes only)")
        if self._lower is None:
            self._lower = encode_lower(self.backbone, self.adapted, self.texts, self.cfg.max_len)
        return self._lower

    def _sync_device(self) -> torch.device:
        """The adapters' device; the backbone (shared weights) is moved there when it is elsewhere."""
        device = self.device
        if next(self.adapted.backbone.parameters()).device != device:
            self.adapted.to(device)
        return device

    # -- upper layers -------------------------------------------------------------------------------------
    def encode(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), H) unit vectors of the catalog items at 0-based positions `rows`, through the adapted top
        layers; gradients flow to the adapters when enabled. Items are run in length-sorted chunks."""
        lower = self.lower_states()
        device = self._sync_device()
        positions = rows.tolist()
        order = sorted(range(len(positions)), key=lambda k: lower[positions[k]].shape[0])
        parts: list[torch.Tensor] = []
        placed: list[int] = []
        for start in range(0, len(order), self.cfg.chunk):
            chunk = order[start:start + self.cfg.chunk]
            states = [lower[positions[k]] for k in chunk]
            lengths = torch.tensor([s.shape[0] for s in states], device=device)
            mask = (torch.arange(int(lengths.max()), device=device) < lengths[:, None]).long()
            padded = nn.utils.rnn.pad_sequence(states, batch_first=True).to(device)
            hidden = self.adapted.forward_from(padded, mask, [TOWER_ADAPTER])
            parts.append(_mean_pool(hidden, mask))
            placed.extend(chunk)
        out = torch.cat(parts)
        inverse = torch.empty(len(placed), dtype=torch.long, device=device)
        inverse[torch.tensor(placed, device=device)] = torch.arange(len(placed), device=device)
        return out[inverse]

    def _version(self) -> tuple[object, ...]:
        """Changes whenever an adapter tensor is written (optimizer step, load, move): the table's cache key."""
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def table(self) -> torch.Tensor:
        """(N, H) every item's vector without gradient, cached for the current adapter weights."""
        version = self._version()
        if self._table is None or self._table_version != version:
            with torch.no_grad():
                self._table = self.encode(torch.arange(len(self.lower_states())))
            self._table_version = version
            self._stale_steps = 0
        return self._table

    def vectors(self, focus: torch.Tensor | None = None) -> torch.Tensor:
        """(N, H) item text vectors.

        Without gradient (scoring, or the adapters frozen): the exact table of the current weights. In training,
        the items in `focus` (0-based catalog positions; at most `grad_items` of them, sampled) are encoded with
        gradient and the rest come from the no-gradient table of the epoch's start (or of the last `refresh_steps`
        refresh); with `focus` None every item is encoded with gradient.
        """
        training = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if not training:
            return self.table()
        if focus is None:
            return self.encode(torch.arange(len(self.lower_states())))
        refresh = self.cfg.refresh_steps and self._stale_steps >= self.cfg.refresh_steps
        if self._table is None or self.adapters.epoch_started or refresh:
            self.adapters.epoch_started = False
            base = self.table()  # re-encoded (no gradient) unless computed for exactly the current weights
        else:
            base = self._table  # from earlier in the epoch: stale by fewer steps than an epoch (or refresh_steps)
        self._stale_steps += 1
        rows = focus.unique().cpu()
        if self.cfg.grad_items and len(rows) > self.cfg.grad_items:
            rows = rows[torch.randperm(len(rows))[:self.cfg.grad_items]]
        fresh = self.encode(rows)
        return base.index_put((rows.to(base.device),), fresh)


class TowerAdapters(nn.ModuleDict):
    """The tower's adapter modules (what the global bank registers); switching them to training mode marks the
    start of an epoch, after which the first training step re-encodes the catalog's no-gradient table."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__(modules)
        self.epoch_started = False

    def train(self, mode: bool = True) -> TowerAdapters:
        super().train(mode)
        if mode:
            self.epoch_started = True
        return self


def _module_name(path: str) -> str:
    """An nn.ModuleDict key for a dotted site path ('encoder.layer.4.attention.self.query')."""
    return path.replace(".", "_")


def encode_lower(backbone: Backbone, adapted: AdaptedModel, texts: Sequence[str], max_len: int,
                 chunk: int = 64) -> list[torch.Tensor]:
    """Each text's (T, H) lower-layer states over its real tokens, cached in `LOWER_STATES` per backbone
    fingerprint, split layer, max_len and text; only the texts not cached run through the lower layers."""
    fingerprint = backbone_fingerprint(backbone.model)
    at = adapted.frozen_layers
    found: dict[str, torch.Tensor] = {}
    for text in dict.fromkeys(texts):
        cached = LOWER_STATES.get((fingerprint, at, max_len, text))
        if cached is not None:
            found[text] = cached
    missing = sorted((t for t in dict.fromkeys(texts) if t not in found), key=len)
    device = next(adapted.backbone.parameters()).device
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        batch = backbone.tokenizer(part, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        states = adapted.lower_states(ids, mask)
        for row, text in enumerate(part):
            found[text] = states[row, :int(mask[row].sum())].float().cpu().clone()
            LOWER_STATES.put((fingerprint, at, max_len, text), found[text])
    if missing:
        log.info("encoded %d item texts through the backbone's %d frozen lower layers", len(missing), at)
    return [found[t] for t in texts]
