"""Small hand-made user records for the recommendation tests (no generator, no files, milliseconds)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CATEGORIES = ("hiking boots", "board games", "garden tools", "coffee makers")
# Contexts use other words than item texts, so matching them has to be learned (no shared tokens).
CUES = ("mountain trail", "dice strategy", "lawn flowers", "espresso beans")
REGIONS = ("Europe", "North America")


@dataclass
class FakeRecord:
    """The fields of common.data.examples.UserRecord that common.rec reads."""

    user_id: str
    segments: dict[str, str]
    context_text: str
    train_pairs: list[tuple[str, str]]
    valid_item: str
    test_item: str
    valid_negatives: list[str]
    test_negatives: list[str]
    valid_context_text: str = ""
    train_segments: list[dict[str, str]] = field(default_factory=list)
    valid_segments: dict[str, str] = field(default_factory=dict)

    @property
    def train_positives(self) -> list[str]:
        return [item for _, item in self.train_pairs]


def make_dataset(n_users: int = 24, n_items: int = 120, negatives: int = 19, seed: int = 0
                 ) -> tuple[list[FakeRecord], dict[str, str]]:
    """Users who buy within one category; contexts carry the category's cue words, items its name."""
    rnd = random.Random(seed)
    items = {f"p{i:03d}": f"item {i} {CATEGORIES[i % 4]} model {i % 7}" for i in range(n_items)}
    records = []
    for u in range(n_users):
        cat = u % 4
        mine = [p for i, p in enumerate(sorted(items)) if i % 4 == cat]
        rnd.shuffle(mine)
        others = [p for i, p in enumerate(sorted(items)) if i % 4 != cat]
        region = REGIONS[u % 2]
        season = "holiday" if u % 3 == 0 else "regular"
        pairs = [(f"{CUES[cat]} fan, visit {j}", mine[j + 1]) for j in range(3)]
        records.append(FakeRecord(
            user_id=f"u{u}", segments={"region": region, "season": season},
            context_text=f"{CUES[cat]} fan, visit 4", train_pairs=pairs,
            valid_item=mine[4], test_item=mine[5],
            valid_negatives=rnd.sample(others, negatives), test_negatives=rnd.sample(others, negatives),
            valid_context_text=f"{CUES[cat]} fan, visit 3",
            train_segments=[{"region": region, "season": "regular"}] * len(pairs),
            valid_segments={"region": region, "season": "regular"},
        ))
    return records, items
