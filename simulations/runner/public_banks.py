"""segment-hidden's bank list (run-config `secagg-banks`): the segment values a data set can produce.

In segment-hidden mode the server must send every client every segment bank without learning which are its
own, so the list of banks is part of the run's public configuration, like the model architecture: a
deployment publishes its segment schema (the regions it serves, the seasons on its calendar). `fedadapt
simulate` derives it from the data it runs on: each user-column segment key's distinct values, and the
calendar's seasons for the interaction key "season". A bank no client holds is harmless (no contributor, never
applied); a client whose segment is missing from the list routes its users through the global bank only.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.data.schema import Marketplace
from common.data.seasons import SEASONS
from common.names import segment_name
from common.protocol import check_segment_name

SEASON_KEY = "season"  # the interaction segment key (simulations/runner/preflight.py INTERACTION_SEGMENT_KEYS)


def public_banks(market: Marketplace, keys: Sequence[str]) -> list[str]:
    """Sorted segment bank names for `keys` over the market's users (and the calendar's seasons); values a
    client would refuse as a segment name are left out."""
    names: set[str] = set()
    for key in keys:
        if key == SEASON_KEY:
            values: Sequence[str] = SEASONS
        elif key in market.users.columns:
            values = sorted({str(v) for v in market.users[key].dropna().unique() if str(v)})
        else:
            continue
        for value in values:
            try:
                names.add(check_segment_name(segment_name(key, value), tuple(keys)))
            except ValueError:
                continue
    return sorted(names)
