"""The edge half of the edge/cloud split: the user tower runs where the history is, and only the personalised
user vector (and, if the caller allows, the segment values) leaves the device for the service's
POST /recommend/vector.

Why this shape: the history is what the federation keeps on the device, so serving keeps it there too. The cloud
cannot leave the history's items out of its answer without seeing them, so the edge asks for k plus as many items
as the history holds and drops the history's items itself; the result is the all-in-one answer
(tests/test_serving_edge.py compares them). Segment values are sent only with `send_segments=True`: they add the
segment banks' item-bias deltas (the item side of a segment bank), which only the cloud holds; without them the
cloud ranks with the global item bias and the edge's personalised vector.

The tower is either a `Recommender` over a copy of the run folder (the service's own code, fp32 or int8) or an
`EdgeTower` read from the small file `fedadapt serve --export-edge` writes (serving/export.py: int8 item rows, the
tower, the segment banks; no backbone, no texts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import torch

from serving.app import MAX_K
from serving.export import EdgeTower
from serving.recommend import Query, Recommender


class EdgeRecommender:
    """`recommend(segments, history, k)` with the history kept here and only a vector sent to `cloud_url`."""

    def __init__(self, tower: Recommender | EdgeTower, cloud_url: str, send_segments: bool = True,
                 client: httpx.Client | None = None) -> None:
        self.tower = tower
        self.send_segments = send_segments
        self.client = client or httpx.Client(base_url=cloud_url, timeout=30)

    @torch.no_grad()
    def user_vector(self, segments: Mapping[str, str], history: Sequence[str]) -> list[float]:
        """The personalised user vector of this history and these segment values, computed here."""
        if isinstance(self.tower, EdgeTower):
            return self.tower.user_vector(segments, history)
        bank_set = self.tower.store.current()
        users, _, _, _ = self.tower.user_vectors(bank_set, [Query(segments, history)])
        return [float(v) for v in users[0].tolist()]

    def request_body(self, segments: Mapping[str, str], history: Sequence[str], k: int) -> dict[str, Any]:
        """Exactly what leaves the device for one recommendation (the test inspects it)."""
        return {"vector": self.user_vector(segments, history),
                "segments": dict(segments) if self.send_segments else {},
                "k": min(MAX_K, k + len(set(history)))}

    def close(self) -> None:
        self.client.close()

    def recommend(self, segments: Mapping[str, str], history: Sequence[str], k: int = 10) -> dict[str, Any]:
        """The service's reply for a vector request, with the history's own items dropped here, cut to k."""
        reply = self.client.post("/recommend/vector", json=self.request_body(segments, history, k))
        if reply.status_code != 200:
            raise ValueError(f"the service refused the request ({reply.status_code}): {reply.text[:500]}")
        body: dict[str, Any] = reply.json()
        seen = set(history)
        body["items"] = [item for item in body["items"] if item["id"] not in seen][:k]
        return body
