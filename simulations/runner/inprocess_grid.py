"""An in-process Flower Grid: every message goes, as a serialized copy, straight to a ClientApp.

It implements Flower's abstract `Grid` (what a ServerApp and Flower's own legacy workflows talk to), so server
code runs unchanged, one process, no SuperLink: the secure-aggregation benchmark measures the protocol's own
cost with it, and tests drive stages with it. Each node keeps its own `Context` (its `state` persists across
messages, as in a simulation). A handler that raises yields an error reply, as in Flower. `intercept(msg,
reply)` returns the replies that really arrive: none (a drop-out), an altered one, or extra forged ones.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

Intercept = Callable[[Message, Message], list[Message]]


class InProcessGrid(Grid):
    """Nodes `node_configs` (node id -> node config) served by `app`; `sent` keeps every server message."""

    def __init__(self, app: ClientApp, node_configs: dict[int, dict[str, int | str]], run_config: dict[str, Any],
                 run_id: int = 1, intercept: Intercept | None = None) -> None:
        self.app = app
        self.contexts = {node: Context(run_id=run_id, node_id=node, node_config=dict(cfg), state=RecordDict(),
                                       run_config=dict(run_config)) for node, cfg in node_configs.items()}
        self._run = Run.create_empty(run_id)
        self.intercept = intercept
        self.sent: list[Message] = []
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def _deliver(self, msg: Message) -> list[Message]:
        msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
        msg.metadata.__dict__["_run_id"] = self._run.run_id
        self.sent.append(msg)
        received = message_from_proto(message_to_proto(msg))  # a wire copy: nodes never share objects
        try:
            reply = self.app(received, self.contexts[msg.metadata.dst_node_id])
        except Exception as exc:  # a failing ClientApp answers with an error, as Flower does
            reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
        reply = message_from_proto(message_to_proto(reply))
        return self.intercept(msg, reply) if self.intercept else [reply]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            for i, reply in enumerate(self._deliver(msg)):
                key = f"{msg.metadata.dst_node_id}-{time.monotonic_ns()}-{i}"
                self._replies[key] = reply
                ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
