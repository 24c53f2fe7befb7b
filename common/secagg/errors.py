"""The two ways a secure-aggregation round goes wrong: one message is bad, or the whole round cannot finish."""

from __future__ import annotations


class ProtocolError(Exception):
    """One party's message is malformed, replayed, from another round or fails authentication: that message
    is dropped (its sender counts as dropped out) and the round goes on."""


class StaleMessage(ProtocolError):
    """A message for another stage or round than the one in progress (a replay, or a straggler): dropped."""


class SecAggAbort(Exception):
    """The round cannot recover the sums (fewer than the threshold of clients left, or a secret without enough
    shares): nothing of this round may be applied."""
