"""Registration on demand: the server learns a node's partition, segments and counts the first time it samples it.

Routing needs each addressed client's segment adapter names, and validation needs its registered counts (the
ceiling of every later reply, server/clients.py). Flower's server cannot read a node's `node_config`, so a node
says them in its reply to a "query" message (checked by server/validate.py `parse_registration`).

Asking every node before round 1 cost one ClientApp message per node (about 12 minutes for 1,000 virtual
clients on 2 cores). Instead, `Registry.resolve(grid, nodes)` queries only the nodes of a sampled cohort that
the server does not know yet, in one `send_and_receive`, and keeps their `ClientInfo` for the rest of the run.
The work before round 1 is proportional to the cohorts (train + evaluation), not to the federation, and the
server learns the segments of the nodes it samples rather than of every node.

What a run keeps (node ids are assigned per run, so nothing is kept across runs):
- accepted registrations, by node id;
- refused nodes (a registration rejected for one of server/validate.py's reasons, or a node that answered
  twice), never asked again this run;
- claimed partition ids: a node claiming a partition id that an earlier node holds is refused together with
  that node ("partition-id" for both: one of them lies and the server cannot tell which). A holder refused
  this way keeps whatever it already contributed to the banks in earlier rounds;
- a node that replied with an error or not at all is simply asked again the next time it is sampled.
Nodes with no usable training pairs are registered but left out of every cohort (logged once).

This is one separate step: a mode in which the server must not learn segments can skip or replace it, since
everything after it only reads `ClientInfo`s.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Protocol

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore import log

from common.protocol import CONFIG
from server.clients import ClientInfo
from server.validate import Rejected, ValidationConfig, parse_registration, screen_senders

REGISTER_GROUP = "register"


class QueryGrid(Protocol):
    """The part of Flower's Grid that registration uses."""

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        ...


@dataclass
class Registry:
    """The run's registrations, filled cohort by cohort (see the module docstring for what is kept and why)."""

    validation: ValidationConfig
    timeout: float
    known: dict[int, ClientInfo] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)  # node id -> rejection reason
    reasons: Counter[str] = field(default_factory=Counter)  # every rejection of the run, by reason
    queries: int = 0  # query messages sent so far
    seconds: float = 0.0  # wall time spent registering so far
    _holders: dict[int, int] = field(default_factory=dict)  # partition id -> node id holding it
    _disputed: set[int] = field(default_factory=set)  # partition ids claimed twice: nobody holds them

    @property
    def usable(self) -> int:
        """Registered nodes with training pairs (the ones cohorts can use)."""
        return sum(1 for c in self.known.values() if c.num_examples > 0)

    def resolve(self, grid: QueryGrid, nodes: Iterable[int]) -> list[ClientInfo]:
        """The usable clients among `nodes`, sorted by partition id; queries the nodes not seen yet first."""
        nodes = list(nodes)
        ask = sorted({n for n in nodes if n not in self.known and n not in self.refused})
        if ask:
            self._query(grid, ask)
        found = [self.known[n] for n in set(nodes) if n in self.known and self.known[n].num_examples > 0]
        return sorted(found, key=lambda c: c.partition_id)

    def _query(self, grid: QueryGrid, nodes: list[int]) -> None:
        messages = [Message(RecordDict({CONFIG: ConfigRecord({})}), n, MessageType.QUERY, group_id=REGISTER_GROUP)
                    for n in nodes]
        self.queries += len(messages)
        t0 = time.monotonic()
        replies = list(grid.send_and_receive(messages, timeout=self.timeout))
        self.seconds += time.monotonic() - t0
        single, reasons, answered = screen_senders(replies, nodes)
        self.reasons.update(reasons)
        for node in sorted(answered - set(single)):
            self.refused[node] = "duplicate-sender"
        admitted = 0
        for node, msg in sorted(single.items()):
            if msg.has_error():
                log(WARNING, "node %d failed the registration query: %s", node, msg.error.reason)
                continue
            try:
                info = parse_registration(msg, self.validation)
            except Rejected as exc:
                self._refuse(node, exc.reason)
                log(WARNING, "node %d: registration rejected (%s)", node, exc)
                continue
            admitted += self._admit(info)
        log(INFO, "registered %d of %d queried node(s); %d known, %d refused", admitted, len(nodes),
            len(self.known), len(self.refused))

    def _refuse(self, node: int, reason: str) -> None:
        self.refused[node] = reason
        self.reasons[reason] += 1

    def _admit(self, info: ClientInfo) -> int:
        pid = info.partition_id
        holder = self._holders.pop(pid, None)
        if holder is not None or pid in self._disputed:
            self._disputed.add(pid)
            self._refuse(info.node_id, "partition-id")
            if holder is not None:
                del self.known[holder]
                self._refuse(holder, "partition-id")
            log(WARNING, "partition id %d claimed by more than one node: every claimant refused", pid)
            return 0
        self._holders[pid] = info.node_id
        self.known[info.node_id] = info
        if info.num_examples <= 0:
            log(WARNING, "partition %d has no usable users and is left out of sampling", pid)
        return 1
