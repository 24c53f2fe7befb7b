"""Registration on demand (server/registration.py): only sampled, unknown nodes are queried, once per run."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from flwr.app import Error, Message
from flwr.common.constant import SUPERLINK_NODE_ID

from common.names import GLOBAL
from server.clients import sample_nodes
from server.registration import Registry
from server.validate import ValidationConfig
from tests.fed_fakes import set_task_identity
from tests.fed_replies import registration_reply

VALIDATION = ValidationConfig(max_norm=20.0, adapter_keys=("region",), metric_keys=("region",))


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


class RecordingGrid:
    """Answers queries with `answer(node, msg)` and records which nodes were asked."""

    def __init__(self, answer: Callable[[int, Message], list[Message]]) -> None:
        self.answer = answer
        self.asked: list[int] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            self.asked.append(msg.metadata.dst_node_id)
            out.extend(self.answer(msg.metadata.dst_node_id, msg))
        return out


def honest(node: int, msg: Message) -> list[Message]:
    """Node n holds partition n - 1000, in region EU or NA, with n % 7 training pairs (0: an empty partition)."""
    region = "region=EU" if node % 2 else "region=NA"
    pairs = node % 7
    return [registration_reply(msg, node - 1000, [region], {GLOBAL: pairs, region: pairs}, 3)]


def test_only_sampled_unknown_nodes_are_queried_once() -> None:
    """1,000 nodes, 10% sampled over 3 rounds: queries go to the sampled nodes only, each node at most once,
    and empty partitions are registered but never handed to a round."""
    # Prepare
    nodes = list(range(1000, 2000))
    grid, registry = RecordingGrid(honest), Registry(VALIDATION, 10)
    # Execute
    cohorts = [registry.resolve(grid, sample_nodes(nodes, 0.1, 0, rnd)) for rnd in (1, 2, 3)]
    again = registry.resolve(grid, sample_nodes(nodes, 0.1, 0, 1))
    # Assert
    sampled = set().union(*(sample_nodes(nodes, 0.1, 0, rnd) for rnd in (1, 2, 3)))
    assert len(grid.asked) == len(set(grid.asked)) == len(sampled) < 300
    assert set(grid.asked) == sampled and registry.queries == len(sampled)
    assert again == cohorts[0]
    for cohort in cohorts:
        assert cohort and all(c.num_examples > 0 for c in cohort)
        assert [c.partition_id for c in cohort] == sorted(c.partition_id for c in cohort)
        assert all(c.segments == (("region=EU",) if c.node_id % 2 else ("region=NA",)) for c in cohort)
    assert registry.usable == sum(1 for n in sampled if n % 7)


def test_refused_nodes_are_not_asked_again_and_failed_ones_are() -> None:
    """A rejected registration is remembered (and counted once); a node that errored is asked next time."""
    # Prepare: node 1 sends an unknown segment key, node 2 errors on its first query, node 3 is honest
    calls: dict[int, int] = {}

    def answer(node: int, msg: Message) -> list[Message]:
        calls[node] = calls.get(node, 0) + 1
        if node == 1:
            return [registration_reply(msg, 1, ["zone=x"], {GLOBAL: 3, "zone=x": 3}, 1)]
        if node == 2 and calls[node] == 1:
            return [Message(Error(0, "data folder missing"), reply_to=msg)]
        return [registration_reply(msg, node, [], {GLOBAL: 5}, 1)]

    grid, registry = RecordingGrid(answer), Registry(VALIDATION, 10)
    # Execute
    first = registry.resolve(grid, [1, 2, 3])
    second = registry.resolve(grid, [1, 2, 3])
    # Assert
    assert [c.node_id for c in first] == [3] and [c.node_id for c in second] == [2, 3]
    assert calls == {1: 1, 2: 2, 3: 1}
    assert dict(registry.reasons) == {"segment-name": 1} and registry.refused == {1: "segment-name"}


def test_a_partition_claimed_in_a_later_cohort_refuses_both_claimants() -> None:
    """Node 11 claims the partition node 10 registered a round earlier: neither is used from then on."""
    # Prepare
    grid = RecordingGrid(lambda node, msg: [registration_reply(msg, 4 if node in (10, 11) else node, [],
                                                               {GLOBAL: 5}, 1)])
    registry = Registry(VALIDATION, 10)
    # Execute
    first = registry.resolve(grid, [10, 12])
    later = registry.resolve(grid, [10, 11, 12])
    third = registry.resolve(grid, [10, 13])
    # Assert
    assert [c.node_id for c in first] == [10, 12]
    assert [c.node_id for c in later] == [12] and [c.node_id for c in third] == [13]
    assert dict(registry.reasons) == {"partition-id": 2} and registry.usable == 2


def test_a_cohort_without_any_valid_registration_stays_empty() -> None:
    """Nodes that answer twice are refused as duplicate senders; nothing unusable reaches a round."""
    # Prepare
    grid = RecordingGrid(lambda node, msg: [registration_reply(msg, node, [], {GLOBAL: 5}, 1)] * 2)
    registry = Registry(VALIDATION, 10)
    # Execute
    cohort = registry.resolve(grid, [5, 6])
    # Assert
    assert cohort == [] and registry.usable == 0
    assert registry.refused == {5: "duplicate-sender", 6: "duplicate-sender"}
    assert registry.reasons["duplicate-sender"] == 4


def test_the_runtimes_node_unavailable_error_counts_as_no_answer() -> None:
    """When a node goes offline the SuperLink answers in its place with an error from SUPERLINK_NODE_ID: the node
    is asked again later, and nothing is counted as an unknown sender."""
    # Prepare: node 7's first query is answered by the runtime (as for a SuperNode that was killed)
    calls: dict[int, int] = {}

    def answer(node: int, msg: Message) -> list[Message]:
        calls[node] = calls.get(node, 0) + 1
        if node == 7 and calls[node] == 1:
            error = Message(Error(5, "node unavailable"), reply_to=msg)
            error.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # what the SuperLink's own reply carries
            return [error]
        return [registration_reply(msg, node, [], {GLOBAL: 5}, 1)]

    grid, registry = RecordingGrid(answer), Registry(VALIDATION, 10)
    # Execute
    first = registry.resolve(grid, [6, 7])
    second = registry.resolve(grid, [6, 7])
    # Assert
    assert [c.node_id for c in first] == [6] and [c.node_id for c in second] == [6, 7]
    assert not registry.reasons and not registry.refused
