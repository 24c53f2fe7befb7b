"""Evaluation protocols of `fedadapt bench quality`: which events are interactions, and an item-cold split.

Two protocols (`Protocol.name`):
- "project" (the default, what every older table used): positives are the events of
  `ExampleConfig.positive_events` (cart adds and purchases; on a rating log, ratings >= 4); the last positive is
  the test item, the one before it the validation item. Other events (views, low ratings) only feed contexts
  and are never targets.
- "literature": every event is an interaction and a positive (on a rating log: every rating, whatever its
  value), so the split is the published leave-one-out by time: the user's last interaction is the test item, the
  second to last the validation item, everything before trains. Full-catalog ranking is the headline; it ranks
  the test item against every catalog item the user never interacted with (`candidates`). SASRec/BERT4Rec
  comparisons (Klenitskiy & Vasilev, RecSys 2023; gSASRec, Petrov & Macdonald, RecSys 2023) exclude a user's
  seen items from the full ranking too; on a rating log nobody rates a movie twice, so the exclusion only removes
  the training and validation items, which a next-item model would otherwise be free to rank.

The item-cold split (`Protocol.cold_items`, a fraction of the catalog, drawn with the run's seed) removes the
drawn items from everything a model or baseline learns from, and keeps them only as test items: their users are
the "cold items" row. Precisely (`ExampleConfig.cold_items` in common/data/examples.py does it while building):
- a cold item is never a training positive (`train_items`, `train_pairs`) nor a validation item: a user's cold
  positives before the test item are dropped, and the split is made on the remaining (warm) positives, so the
  validation item is the last warm positive before the test item;
- a cold item is never in a context or history a model reads (every event of a cold item, and its reviews, is
  left out of the text contexts and of the positive histories) nor a validation negative;
- a user whose last positive is a cold item keeps it as the test item (scored in the cold row); a user whose last
  positive is warm is scored as before in the warm rows;
- `seen_items` (evaluation only: what full-catalog ranking and negative sampling skip) keeps cold items the user
  touched, so a user is never asked to rank an item they already interacted with; test negatives may be cold
  items (they are in the catalog a shopper sees).
`check_cold_free` verifies this on the built records, every field a model may read, so a new field that carries
item ids cannot reintroduce a cold item silently.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.data.examples import ExampleConfig, UserRecord, build_examples, build_item_texts
from common.data.schema import EVENT_TYPES, Marketplace
from common.names import DEFAULT_HISTORY

PROJECT = "project"
LITERATURE = "literature"
PROTOCOLS = (PROJECT, LITERATURE)
DEFAULT_PROTOCOL = PROJECT
COLD_SALT = zlib.crc32(b"cold-items")  # the cold draw's own stream: the same seed's negatives stay unrelated
# Record fields only evaluation reads: the test item and its candidates, and what full ranking skips. Every other
# field (training pairs, validation item and negatives, contexts, histories, fields added later) may be model
# input and must be free of cold items.
EVALUATION_FIELDS = frozenset({"user_id", "segments", "test_item", "test_negatives", "seen_items"})


class ColdSplitError(ValueError):
    """A cold split that cannot be measured (no cold item drawn, or no user whose test item is cold)."""


class ColdLeakError(AssertionError):
    """A built record would let a cold item into training or a model's input."""


@dataclass(frozen=True)
class Protocol:
    """How `fedadapt bench quality` cuts its examples: the protocol name and the item-cold fraction."""

    name: str = DEFAULT_PROTOCOL
    cold_items: float = 0.0  # fraction of the catalog held out of training entirely (0: none)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.name!r}")
        if not isinstance(self.cold_items, (int, float)) or math.isnan(self.cold_items) \
                or not 0.0 <= self.cold_items < 1.0:
            raise ValueError(f"cold-items must be a fraction with 0 <= FRACTION < 1, got {self.cold_items!r}")

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_PROTOCOL and self.cold_items == 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cold_items": float(self.cold_items)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Protocol:
        """A saved protocol; a summary written before protocols existed used the default one."""
        return cls() if data is None else cls(str(data["name"]), float(data["cold_items"]))


@dataclass(frozen=True)
class Split:
    """The records of one protocol and the items it held out (empty without a cold split)."""

    records: list[UserRecord]
    item_texts: dict[str, str]
    cold_items: frozenset[str]


def draw_cold_items(catalog: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """round(fraction * catalog size) distinct catalog items, the same for the same catalog, fraction and seed
    (drawn from the sorted ids, so the table's row order does not matter)."""
    ordered = sorted(set(catalog))
    count = round(fraction * len(ordered))
    if fraction > 0 and count == 0:
        raise ColdSplitError(f"cold-items {fraction} of {len(ordered)} catalog items rounds to no item; "
                             "use a bigger fraction")
    picked = np.random.default_rng([seed, COLD_SALT]).choice(len(ordered), size=count, replace=False)
    return frozenset(ordered[int(i)] for i in picked)


def example_config(protocol: Protocol, seed: int, history: str, cold: frozenset[str]) -> ExampleConfig:
    """The ExampleConfig a protocol builds with: literature makes every event type a positive."""
    positives = EVENT_TYPES if protocol.name == LITERATURE else ExampleConfig.positive_events
    return ExampleConfig(seed=seed, history=history, positive_events=tuple(positives), cold_items=cold)


def build_split(market: Marketplace, protocol: Protocol, seed: int, history: str = DEFAULT_HISTORY) -> Split:
    """Records for `protocol` on `market`; with a cold split they are checked cold-free (`check_cold_free`)."""
    catalog = market.products["product_id"].astype(str).tolist()
    cold = draw_cold_items(catalog, protocol.cold_items, seed) if protocol.cold_items else frozenset()
    records = build_examples(market, example_config(protocol, seed, history, cold))
    if cold:
        check_cold_free(records, cold)
    return Split(records, build_item_texts(market.products), cold)


def load_split(folder: Path, protocol: Protocol, seed: int, history: str = DEFAULT_HISTORY) -> Split:
    from common.data.schema import read_marketplace

    return build_split(read_marketplace(folder), protocol, seed, history)


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a field's value (lists, tuples, sets, dict keys and values, nested)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _strings(key)
            yield from _strings(inner)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for inner in value:
            yield from _strings(inner)


def check_cold_free(records: Sequence[UserRecord], cold: frozenset[str]) -> None:
    """Raise ColdLeakError if a cold item id is a value of any record field a model may read (every field but
    EVALUATION_FIELDS), so it holds for fields added after this check was written. Text contexts are checked
    by construction (examples.py drops a cold item's event lines) and by tests on product names."""
    for record in records:
        for f in dataclasses.fields(record):
            if f.name in EVALUATION_FIELDS:
                continue
            leaked = sorted({s for s in _strings(getattr(record, f.name)) if s in cold})
            if leaked:
                raise ColdLeakError(f"user {record.user_id}: cold item(s) {leaked[:3]} in field {f.name!r}")


def cold_test_users(records: Sequence[UserRecord], cold: frozenset[str]) -> int:
    """How many of `records` have a cold test item (the cold row's users)."""
    return sum(r.test_item in cold for r in records)
