"""What training and evaluation read from a user's record, as a Protocol.

`common.data.examples.UserRecord` is the real thing; training, evaluation, the baselines and a federated
client's data accept anything with these fields (a test's fake too). The Protocol has its own module so that
none of them has to import another just to name it.
"""

from __future__ import annotations

from typing import Protocol


class RecordLike(Protocol):
    """The fields of `common.data.examples.UserRecord` that training and evaluation read.

    Each training pair carries its own context (events before that target's session) and, in
    `train_segments`, its own segments (the season of that interaction), so a pair is routed through the
    season adapter of the time it happened, not of the user's test interaction.
    """

    user_id: str
    segments: dict[str, str]
    context_text: str
    train_pairs: list[tuple[str, str]]
    train_segments: list[dict[str, str]]
    valid_item: str
    test_item: str
    valid_negatives: list[str]
    test_negatives: list[str]
    valid_context_text: str
    valid_segments: dict[str, str]

    @property
    def train_positives(self) -> list[str]: ...
