"""Sequential hybrid recommender: frozen text vectors + collaborative item rows + a causal user tower.

Why a second architecture next to the two-tower `RecModel`: on a real rating log (MovieLens-1M) the two-tower
text model lost to popularity and matrix factorisation, because what predicts the next item there is who liked
what and in which order, not the words of a title. This model keeps what the text gives (cold items) and adds
what the log gives:

- **item vectors** e_i = text_proj(t_i) + row_i: t_i is the frozen backbone's mean-pooled vector of the item's
  text, computed once per (backbone, catalog) and cached (`frozen_item_vectors`); `text_proj` is a trainable
  projection of it (with `SeqConfig.text_adapters` = K > 0, t_i comes from the backbone with trainable adapters
  in its top K layers instead, common/rec/text_tower.py, and those adapters are part of the global bank);
  `row_i` is a trainable collaborative row, zero at init. With `id_dropout` a training step
  scores its targets against a table where each row (and free bias, `id_dropout_bias`) is dropped with that
  probability, so text alone has to rank the next item and an item without a row is ranked like the others;
- **item prior** p_i = w . t_i + b_i: what the item's text predicts plus a free per-item bias (popularity the
  model can use and unlearn), both zero at init;
- an item with no training event keeps row_i = 0 and b_i = 0 when training masks it out of the softmax
  (`SeqTrainConfig.mask_unseen`, central training's default), and is then scored by its text alone against
  warm items (tests/test_rec_seq_typed.py); under a full softmax its row and bias only ever move down as a
  negative, which buries it (among such items the text still decides the order, tests/test_rec_seq.py);
- **user tower**: a causal Transformer (pre-norm, SASRec-like) over the user's most recent `max_len`
  interactions of any type in time order (`UserRecord.typed_events`: view, click, cart, purchase, rating
  1..5); an event's input is its item's vector plus a learned embedding of its type, with learned positions
  counted back from the most recent event; the user vector is the output at the last position. Older events
  than `max_len` are dropped. Targets stay positives (`common.rec.seq_train`);
- **segment banks** ("region=EU", ...): a residual bottleneck on the user vector (zero-initialised
  up-projection: identity at init) and a per-item bias delta (what that segment likes more or less than
  everyone). A request routes through the global bank and the banks of its own segments; the residuals add.

Scores are dot products u . e_i + b_i (+ the routed segments' bias deltas), over the whole catalog.

Everything trainable lives in named banks with the flat `"<bank>::<path>"` state keys the federation uses, so
the server aggregates these banks exactly like adapter banks. The backbone is never trained and never sent;
the text vectors are recomputed by each party from its own copy of the backbone and the public catalog.
The global bank is dense: the full softmax gives every item row a gradient, so a client's update touches every
row (the set of rows it sends reveals nothing; their values are what secure aggregation has to hide).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.backbone import Backbone
from common.data.typed_events import EVENT_TOKENS
from common.defaults import SEQ_ID_DROPOUT
from common.names import GLOBAL, make_key, segment_name, split_key
from common.rec.text_tower import TextTower, TextTowerConfig

log = logging.getLogger(__name__)

PAD = 0  # item index 0 is padding; catalog item j (sorted ids) is index j + 1
TYPE_INDEX = {token: k + 1 for k, token in enumerate(EVENT_TOKENS)}  # event type token -> index (0: padding)


@dataclass(frozen=True)
class SeqConfig:
    """Shape of the sequential model (the same on every party of a federation)."""

    dim: int = 64  # item / user vector width
    layers: int = 2
    heads: int = 2
    max_len: int = 200  # most recent interactions (typed events) the user tower reads
    dropout: float = 0.2
    segment_rank: int = 16  # bottleneck width of a segment bank
    seed: int = 0
    # probability that a training step scores an item by its text alone (its collaborative row zeroed), so the
    # text projection carries what predicts the next item and an item with no row is not a stranger
    id_dropout: float = SEQ_ID_DROPOUT
    id_dropout_bias: bool = True  # a dropped item loses its free bias too: its text prior alone places it
    # item text vectors from the backbone with trainable adapters of this kind in its top `text_adapters` layers
    # (common/rec/text_tower.py); 0 = the frozen backbone's vectors
    text_adapters: int = 0
    text_adapter_kind: str = "lora"

    def __post_init__(self) -> None:
        for name in ("dim", "layers", "heads", "max_len", "segment_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"seq {name} must be >= 1, got {getattr(self, name)}")
        if self.text_adapters < 0:
            raise ValueError(f"seq text_adapters must be >= 0 (0 = frozen text vectors), got {self.text_adapters}")
        if self.dim % self.heads:
            raise ValueError(f"seq dim {self.dim} must be a multiple of heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"seq dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"seq id_dropout must be in [0, 1), got {self.id_dropout}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Block(nn.Module):
    """Pre-norm Transformer block with causal attention through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout.p if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # (B, h, T, d/h)
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.ff2(self.dropout(F.gelu(self.ff1(self.norm2(x))))))


class GlobalBank(nn.Module):
    """Item table (text projection, collaborative rows, prior) and the causal user tower."""

    def __init__(self, cfg: SeqConfig, n_items: int, text_dim: int) -> None:
        super().__init__()
        self.text_proj = nn.Linear(text_dim, cfg.dim)
        self.item_rows = nn.Parameter(torch.zeros(n_items + 1, cfg.dim))
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        # the prior an item's text predicts; zero at init. No bias: a constant on every logit cancels in the
        # softmax, so its gradient is float noise that Adam turns into steps of either sign.
        self.text_prior = nn.Linear(text_dim, 1, bias=False)
        nn.init.zeros_(self.text_prior.weight)
        self.event_types = nn.Parameter(torch.randn(len(EVENT_TOKENS) + 1, cfg.dim) * 0.02)  # row 0: padding
        self.positions = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)


class SegmentBank(nn.Module):
    """A segment's residual bottleneck on the user vector and its item-bias delta; identity at init."""

    def __init__(self, cfg: SeqConfig, n_items: int) -> None:
        super().__init__()
        self.down = nn.Linear(cfg.dim, cfg.segment_rank)
        self.up = nn.Linear(cfg.segment_rank, cfg.dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(users)))


def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=4).digest(), "little")


def catalog_fingerprint(catalog: Sequence[str], item_texts: Mapping[str, str]) -> str:
    h = hashlib.blake2b(digest_size=12)
    for item in catalog:
        h.update(item.encode() + b"\0" + item_texts[item].encode() + b"\0")
    return h.hexdigest()


_TEXT_VECTORS: dict[tuple[str, str, int], torch.Tensor] = {}


@torch.no_grad()
def frozen_item_vectors(backbone: Backbone, catalog: Sequence[str], item_texts: Mapping[str, str],
                        max_len: int = 64, batch_size: int = 64) -> torch.Tensor:
    """(len(catalog), H) unit text vectors of the frozen backbone, computed once per process and catalog."""
    from common.rec.model import RecModel

    key = (backbone.source, catalog_fingerprint(catalog, item_texts), max_len)
    if key not in _TEXT_VECTORS:
        encoder = RecModel(backbone, None, max_len=max_len)
        encoder.to_device(encoder.device)  # where the shared weights are; this tree's own buffers follow them
        vectors = encoder.item_embeddings(list(catalog), item_texts, (), batch_size=batch_size)
        _TEXT_VECTORS.clear()  # one catalog per process in practice; never hold several
        _TEXT_VECTORS[key] = torch.stack([vectors[i] for i in catalog])
        log.info("encoded %d item texts with the frozen backbone", len(catalog))
    return _TEXT_VECTORS[key]


def item_text_inputs(backbone: Backbone, cfg: SeqConfig, catalog: Sequence[str], item_texts: Mapping[str, str],
                     max_len: int = 64) -> tuple[torch.Tensor, TextTower | None]:
    """What a `SeqRecModel` reads item texts through: the frozen vectors (`cfg.text_adapters` 0), or zeros of the
    same shape and a text tower with adapters in the backbone's top `cfg.text_adapters` layers (lower-layer
    states are computed only when the tower first runs, so a party that needs only the bank shapes pays
    nothing for them)."""
    if not cfg.text_adapters:
        return frozen_item_vectors(backbone, catalog, item_texts, max_len=max_len), None
    tower = TextTower(backbone, TextTowerConfig(layers=cfg.text_adapters, kind=cfg.text_adapter_kind,
                                                max_len=max_len, seed=cfg.seed), [item_texts[i] for i in catalog])
    return torch.zeros(len(catalog), backbone.hidden_size), tower


class SeqRecModel(nn.Module):
    """Named banks over a fixed catalog; `text_vectors` (N, H) from `frozen_item_vectors` (or zeros on a
    party that only needs the bank shapes, e.g. the server building the initial state). With `text_tower`
    (common/rec/text_tower.py, for `cfg.text_adapters` > 0) the item text vectors come from the backbone's
    adapted top layers instead, and the tower's adapters are part of the global bank."""

    def __init__(self, cfg: SeqConfig, catalog: Sequence[str], text_vectors: torch.Tensor,
                 names: Sequence[str] = (GLOBAL,), user_levels: Sequence[str] = (GLOBAL,),
                 text_tower: TextTower | None = None) -> None:
        super().__init__()
        if (text_tower is not None) != (cfg.text_adapters > 0):
            raise ValueError(f"seq text_adapters={cfg.text_adapters} needs a text tower exactly when it is > 0")
        self.text_tower = text_tower
        if text_vectors.ndim != 2 or text_vectors.shape[0] != len(catalog):
            raise ValueError(f"text vectors {tuple(text_vectors.shape)} do not match a catalog of {len(catalog)}")
        if len(set(catalog)) != len(catalog):
            raise ValueError("catalog ids must be unique")
        self.cfg = cfg
        self.catalog = list(catalog)
        self.index = {item: j + 1 for j, item in enumerate(self.catalog)}
        self.text_vectors: torch.Tensor
        self.register_buffer("text_vectors", torch.cat([torch.zeros(1, text_vectors.shape[1]),
                                                        text_vectors.float().cpu()]), persistent=False)
        self.user_levels = tuple(user_levels)
        self.banks = nn.ModuleList()
        self._names: list[str] = []
        self.serving: frozenset[str] | None = None
        for name in names:
            self.add_adapter(name)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Where the banks and the text vectors are (`model.to(device)` moves both)."""
        return self.text_vectors.device

    # -- banks (the same surface as AdaptedModel, so the federation treats both alike) ----------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self._names)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def add_adapter(self, name: str) -> None:
        if name in self._names:
            raise ValueError(f"bank {name!r} already exists")
        if name != GLOBAL and not self._names:
            raise ValueError(f"the {GLOBAL!r} bank must come first, got {name!r}")
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(_seed_for(self.cfg.seed, name))
        n, h = len(self.catalog), self.text_vectors.shape[1]
        bank: nn.Module = GlobalBank(self.cfg, n, h) if name == GLOBAL else SegmentBank(self.cfg, n)
        torch.random.set_rng_state(generator_state)
        if name == GLOBAL and self.text_tower is not None:
            bank.text_adapters = self.text_tower.adapters  # seeded by the tower's own config
        bank.to(self.text_vectors.device)  # a bank added after the model moved lives where the model is
        bank.train(self.training)
        self.banks.append(bank)
        self._names.append(name)

    def bank(self, name: str) -> nn.Module:
        if name not in self._names:
            raise ValueError(f"unknown bank {name!r}; known banks: {', '.join(self._names)}")
        return self.banks[self._names.index(name)]

    def segment_bank(self, name: str) -> SegmentBank:
        bank = self.bank(name)
        if not isinstance(bank, SegmentBank):
            raise ValueError(f"bank {name!r} is not a segment bank")
        return bank

    @property
    def global_bank(self) -> GlobalBank:
        bank = self.bank(GLOBAL)
        assert isinstance(bank, GlobalBank)
        return bank

    def adapter_state(self, names: Sequence[str] | None = None, trainable_only: bool = True) -> dict[str, torch.Tensor]:
        selected = self._names if names is None else list(names)
        return {make_key(name, path): p.detach().clone()
                for name in selected for path, p in self.bank(name).named_parameters()}

    def load_adapter_state(self, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
        """Copy `state` into the banks it names; nothing is copied unless every key and shape fits."""
        targets: dict[str, torch.Tensor] = {}
        named = {split_key(k)[0] for k in state}
        unknown = sorted(n for n in named if n not in self._names)
        if unknown:
            raise ValueError(f"unknown bank(s) {unknown[:5]}; known banks: {', '.join(self._names)}")
        for name in named:
            targets.update((make_key(name, p), t) for p, t in self.bank(name).named_parameters())
        extra, missing = sorted(set(state) - set(targets)), sorted(set(targets) - set(state))
        if extra or (strict and missing):
            raise ValueError(f"state does not match banks {sorted(named)}: unexpected {extra[:3]}, "
                             f"missing {missing[:3]}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(targets[key].shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(targets[key].shape)}")
        with torch.no_grad():
            for key, value in state.items():
                targets[key].copy_(value)

    def trainable_parameters(self, names: Sequence[str]) -> list[nn.Parameter]:
        chosen = set(names)
        params: list[nn.Parameter] = []
        for name in self._names:
            for p in self.bank(name).parameters():
                p.requires_grad_(name in chosen)
                if name in chosen:
                    params.append(p)
        return params

    def routable(self) -> set[str]:
        names = set(self._names)
        return names if self.serving is None else names & self.serving

    def segment_adapters(self) -> list[str]:
        return sorted(self.routable() - {GLOBAL})

    @property
    def segment_keys(self) -> tuple[str, ...]:
        return tuple(level for level in self.user_levels if level != GLOBAL)

    def routes(self, segments: Mapping[str, str]) -> list[str]:
        """The segment banks one request passes through (its own segments' banks that exist and are served)."""
        available = self.routable()
        out = []
        for key in self.segment_keys:
            if key in segments:
                name = segment_name(key, segments[key])
                if name in available:
                    out.append(name)
        return out

    # -- computation ----------------------------------------------------------------------------------
    def item_text_vectors(self, focus: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1, H) item text vectors, row 0 (padding) zero: the frozen ones, or the text tower's. `focus`: the
        item indices of a training batch (the only ones the tower passes gradients through)."""
        if self.text_tower is None:
            return self.text_vectors
        rows = None if focus is None else focus[focus != PAD] - 1
        vectors = self.text_tower.vectors(rows)
        return torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])

    def id_keep(self) -> torch.Tensor | None:
        """(N+1,) 0/1 mask of the items a training step keeps the collaborative row (and, with
        `id_dropout_bias`, the free bias) of, each dropped with probability `id_dropout`; None when not training.
        The table a step scores its targets against uses it (a dropped item is ranked through its text only);
        the user tower's input keeps every row."""
        if not self.training or self.cfg.id_dropout == 0:
            return None
        n = self.text_vectors.shape[0]
        return (torch.rand(n, device=self.text_vectors.device) >= self.cfg.id_dropout).to(self.text_vectors.dtype)

    def item_table(self, keep: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1, d) item vectors; row 0 (padding) is zero; `keep` (from `id_keep`) zeroes dropped rows. `text`:
        this step's `item_text_vectors` (computed once per step: the text tower's are costly and stateful)."""
        g = self.global_bank
        rows: torch.Tensor = g.item_rows if keep is None else g.item_rows * keep.unsqueeze(1)
        table = g.text_proj(self.item_text_vectors() if text is None else text) + rows
        return table * (torch.arange(table.shape[0], device=table.device) > 0).unsqueeze(1).to(table.dtype)

    def item_prior(self, keep: torch.Tensor | None = None, text: torch.Tensor | None = None,
                   fixed: torch.Tensor | None = None) -> torch.Tensor:
        """(N+1,) prior of each item: what its text predicts plus its free bias (zero for an item never trained
        on when training masks unseen items, so a new item gets the prior of its text); `keep` drops the free
        bias of the items it drops when `id_dropout_bias`; `fixed` (0/1) drops it whatever `id_dropout_bias`
        (items a training run ranks by their text only, `SeqTrainConfig.mask_by` "text")."""
        g = self.global_bank
        free = g.item_bias if keep is None or not self.cfg.id_dropout_bias else g.item_bias * keep
        free = free if fixed is None else free * fixed
        return g.text_prior(self.item_text_vectors() if text is None else text).squeeze(1) + free

    def type_indices(self, tokens: Sequence[str]) -> list[int]:
        try:
            return [TYPE_INDEX[t] for t in tokens]
        except KeyError as err:
            raise ValueError(f"event type {err.args[0]!r} is unknown; known: {', '.join(EVENT_TOKENS)}") from None

    def indices(self, items: Sequence[str]) -> list[int]:
        try:
            return [self.index[i] for i in items]
        except KeyError as err:
            raise ValueError(f"item {err.args[0]!r} is not in the model's catalog of {len(self.catalog)}") from None

    def encode_sequences(self, seqs: torch.Tensor, table: torch.Tensor,
                         types: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) item indices, left-padded with PAD, and their (B, T) event type indices (None: every event a
        purchase) -> (B, T, d) user states (causal: position t sees <= t). An event's input is its item's
        vector plus its type's embedding."""
        g = self.global_bank
        b, t = seqs.shape
        if t > self.cfg.max_len:
            raise ValueError(f"sequences of {t} items exceed max_len {self.cfg.max_len}")
        real = seqs != PAD
        if types is None:
            types = torch.where(real, TYPE_INDEX["purchase"], 0)
        if types.shape != seqs.shape:
            raise ValueError(f"event types {tuple(types.shape)} do not match sequences {tuple(seqs.shape)}")
        x = (table[seqs] + g.event_types[types]) * math.sqrt(self.cfg.dim) + g.positions[:t].flip(0)
        x = F.dropout(x, self.cfg.dropout, self.training)
        causal = torch.ones(t, t, dtype=torch.bool, device=seqs.device).tril()
        eye = torch.eye(t, dtype=torch.bool, device=seqs.device)
        mask = causal & (real.unsqueeze(1) | eye)  # (B, T, T); a pad sees itself only
        mask = mask.unsqueeze(1)
        for block in g.blocks:
            x = block(x, mask)
        return g.norm(x)

    def personalise(self, users: torch.Tensor, routes: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add each row's segment residuals; returns (users, segment bias deltas: (rows, N+1), or (1, N+1) zeros
        when no row is routed). A bank runs on its own rows only, and the bias deltas are one matrix product."""
        names = sorted({n for r in routes for n in r})
        if not names:
            return users, torch.zeros(1, self.text_vectors.shape[0], device=users.device)
        column = {name: k for k, name in enumerate(names)}
        pairs = [(row, column[name]) for row, route in enumerate(routes) for name in route]
        gate = torch.zeros(users.shape[0], len(names), dtype=users.dtype, device=users.device)
        gate[torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])] = 1.0
        banks = [self.segment_bank(name) for name in names]
        # all routed banks at once: (P, K*r) hidden units, each bank's block kept only on its own rows
        down = torch.cat([b.down.weight for b in banks])  # (K*r, d)
        down_bias = torch.cat([b.down.bias for b in banks])
        up = torch.cat([b.up.weight.T for b in banks])  # (K*r, d)
        up_bias = torch.stack([b.up.bias for b in banks])  # (K, d)
        hidden = F.gelu(users @ down.T + down_bias) * gate.repeat_interleave(self.cfg.segment_rank, dim=1)
        out = users + hidden @ up + gate @ up_bias
        bias = gate @ torch.stack([b.item_bias for b in banks])
        return out, bias

    def logits(self, users: torch.Tensor, table: torch.Tensor, bias: torch.Tensor,
               prior: torch.Tensor | None = None) -> torch.Tensor:
        """(U, N+1) scores; the padding column is -inf."""
        scores = users @ table.T + (self.item_prior() if prior is None else prior) + bias
        scores[:, PAD] = float("-inf")
        return scores


def window(items: Sequence[int], max_len: int) -> list[int]:
    """The most recent `max_len` items (what the user tower reads of a long history)."""
    return list(items[-max_len:])


def left_pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    width = max((len(r) for r in rows), default=1) or 1
    return torch.tensor([[PAD] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
