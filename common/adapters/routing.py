"""Routing: which named adapters each example of a batch passes through, compiled once per forward pass.

`Routing` is what a caller gives `AdaptedModel`: a list of levels applied in order (global, then segments), or
one adapter name. A level is either one adapter name for the whole batch or a per-example list of names, where
None skips that level for that example. `build_plan` compiles it into a `BatchPlan` that groups the rows of
each per-example level by name once, so every wrapped module runs each adapter on one gathered sub-batch and
scatters the result back, instead of looping over examples.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

RoutingLevel = str | Sequence[str | None]  # one adapter name for the batch, or a name (or None) per example
Routing = str | Sequence[RoutingLevel]


@dataclass(frozen=True)
class Level:
    """One routing level. Either `name` (whole batch) or `groups` ((name, row indices) pairs) is set."""

    name: str | None
    groups: tuple[tuple[str, Tensor], ...]
    covered: Tensor  # (B,) bool: rows that pass through some adapter at this level

    @property
    def empty(self) -> bool:
        return self.name is None and not self.groups

    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.name is not None else tuple(name for name, _ in self.groups)


@dataclass
class BatchPlan:
    """`Routing` compiled for one batch: its levels, with the rows of each grouped by adapter name.

    The forward pass adds what every wrapped module needs besides: the attention mask the encoder sees and each
    kind's per-adapter precomputation (`AdapterKind.prepare`).
    """

    levels: tuple[Level, ...]
    batch_size: int
    mask: Tensor | None = None  # (B, T) bool over the sequence the encoder sees (prompts included)
    prepared: dict[str, object] = field(default_factory=dict)

    def names(self) -> list[str]:
        """Adapter names in use, first use first."""
        seen: dict[str, None] = {}
        for level in self.levels:
            seen.update(dict.fromkeys(level.names()))
        return list(seen)


class Router:
    """Carries the plan of the forward pass in progress to every wrapper; None means 'backbone only'.

    Wrappers hold a reference to one Router instead of receiving the plan through the backbone's forward
    signature, which we do not own.
    """

    def __init__(self) -> None:
        self.plan: BatchPlan | None = None


def build_plan(
    routing: Routing | None, batch_size: int, known: Collection[str], device: torch.device
) -> BatchPlan | None:
    """Validate `routing` against the known adapter names and group per-example levels by name."""
    if routing is None:
        return None
    levels_in: Sequence[RoutingLevel] = [routing] if isinstance(routing, str) else routing
    if not isinstance(levels_in, Sequence):
        raise ValueError(f"routing must be a list of levels, got {type(routing).__name__}")
    if len(levels_in) == 0:
        return None
    levels = tuple(_build_level(i, level, batch_size, known, device) for i, level in enumerate(levels_in))
    return BatchPlan(levels=levels, batch_size=batch_size)


def _check_name(name: str, where: str, known: Collection[str]) -> None:
    if name not in known:
        raise ValueError(f"routing {where}: unknown adapter {name!r}; known adapters: {', '.join(sorted(known))}")


def _build_level(
    index: int, level: RoutingLevel, batch_size: int, known: Collection[str], device: torch.device
) -> Level:
    where = f"level {index}"
    if isinstance(level, str):
        _check_name(level, where, known)
        return Level(level, (), torch.ones(batch_size, dtype=torch.bool, device=device))
    if not isinstance(level, Sequence):
        raise ValueError(f"routing {where} must be an adapter name or a per-example list, got {type(level).__name__}")
    if len(level) != batch_size:
        raise ValueError(f"routing {where} has {len(level)} entries for a batch of {batch_size} examples")
    rows: dict[str, list[int]] = {}
    for row, name in enumerate(level):
        if name is None:
            continue
        if not isinstance(name, str):
            raise ValueError(f"routing {where}, example {row}: expected an adapter name or None, got {name!r}")
        _check_name(name, f"{where}, example {row}", known)
        rows.setdefault(name, []).append(row)
    covered = torch.zeros(batch_size, dtype=torch.bool)
    for indices in rows.values():
        covered[indices] = True
    covered = covered.to(device)
    if len(rows) == 1 and bool(covered.all()):
        return Level(next(iter(rows)), (), covered)
    groups = tuple((name, torch.tensor(indices, dtype=torch.long, device=device)) for name, indices in rows.items())
    return Level(None, groups, covered)
