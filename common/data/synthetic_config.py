"""GeneratorConfig: the knobs of the synthetic marketplace's generative process, validated on construction.

Its own module because both halves of the generator read it: `synthetic.py` (what a user wants in a session)
and `synthetic_events.py` (how those sessions show in the click logs and in review text).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from common.data import vocab as V


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the generative process; defaults give the benchmark data set."""

    users: int = 5000
    products: int = 2000
    seed: int = 0
    mean_sessions: float = 4.0  # per user, on top of the 2 every user has
    p_buy: float = 0.6  # a session ends in add_to_cart (and usually purchase)
    p_expand: float = 0.5  # a non-seasonal buying session branches out into the region's next category
    p_repeat_anchor: float = 0.5  # otherwise: back to the anchor, else the latest category branched into
    p_explore: float = 0.1  # ... or a random category (noise every model must live with)
    p_style: float = 0.55  # a bought item has the wanted style (else any style)
    p_regional_style: float = 0.7  # in a new category the wanted style is a regional favourite, not the user's
    p_season: float = 0.6  # a session inside a special season goes to the season's promoted items
    p_review: float = 0.3
    p_pii: float = 0.01  # reviews that leak an email/phone/url/handle, as real reviews do
    last_session_mix: tuple[float, float, float, float] = (0.52, 0.14, 0.12, 0.22)  # regular, bf, prime, holiday

    def __post_init__(self) -> None:
        if self.users < 1 or self.products < len(V.CATEGORY_NAMES) * 2:
            raise ValueError(f"need users >= 1 and products >= {len(V.CATEGORY_NAMES) * 2}, "
                             f"got users={self.users}, products={self.products}")
        for name in (f.name for f in fields(self) if f.name.startswith("p_")):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if abs(sum(self.last_session_mix) - 1.0) > 1e-6:
            raise ValueError(f"last_session_mix must sum to 1, got {self.last_session_mix}")
