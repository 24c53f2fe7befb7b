"""Shopping seasons placed on the calendar, shared by the generator, the loaders and the example builder.

A season is a property of a date, not of a user: the example builder tags each user with the season of the
user's held-out (test) interaction, so the same rule must hold for synthetic and real data alike.
"""

from __future__ import annotations

import numpy as np

REGULAR = "regular"
# (name, (month, day) first day, (month, day) last day), inclusive, checked in this order.
SEASON_WINDOWS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    ("prime_day", (7, 8), (7, 17)),
    ("black_friday", (11, 21), (12, 1)),
    ("holiday", (12, 10), (12, 24)),
)
SEASONS: tuple[str, ...] = (REGULAR, *(name for name, _, _ in SEASON_WINDOWS))


def _month_day_key(month: np.ndarray, day: np.ndarray) -> np.ndarray:
    return month * 100 + day


def season_of(timestamps: np.ndarray | list[int]) -> np.ndarray:
    """Season name for each Unix timestamp (seconds, UTC); `regular` outside every window."""
    ts = np.asarray(timestamps, dtype=np.int64)
    dates = ts.astype("datetime64[s]")
    month = (dates.astype("datetime64[M]").astype(np.int64) % 12) + 1
    day = (dates.astype("datetime64[D]") - dates.astype("datetime64[M]")).astype(np.int64) + 1
    key = _month_day_key(month, day)
    out = np.full(ts.shape, REGULAR, dtype=object)
    for name, (m0, d0), (m1, d1) in SEASON_WINDOWS:
        inside = (key >= m0 * 100 + d0) & (key <= m1 * 100 + d1)
        out[inside & (out == REGULAR)] = name
    return out


def season_window_days(year: int) -> dict[str, tuple[np.datetime64, np.datetime64]]:
    """First and last day (inclusive) of each special season in `year`, for samplers that place events."""
    windows: dict[str, tuple[np.datetime64, np.datetime64]] = {}
    for name, (m0, d0), (m1, d1) in SEASON_WINDOWS:
        windows[name] = (np.datetime64(f"{year}-{m0:02d}-{d0:02d}"), np.datetime64(f"{year}-{m1:02d}-{d1:02d}"))
    return windows
