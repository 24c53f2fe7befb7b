"""The edge/cloud split (serving/edge.py) over a real loopback port: the edge's answer equals the all-in-one
answer (history excluded, segment banks applied), and the cloud, recording every byte it is sent, never sees a
history item, nor the segment values when the edge withholds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.app import create_app
from serving.banks import BankStore
from serving.edge import EdgeRecommender
from serving.recommend import Recommender
from serving.run import load_run
from tests.serve_fixtures import make_data, serve_cfg, uvicorn_thread, write_round


class Recorder:
    """A curious cloud: keeps every request body it receives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recorded() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.bodies.append(message.get("body", b""))
            return message

        await self.app(scope, recorded, send)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("edge-run") / "run"
    write_round(folder, serve_cfg(make_data(tmp_path_factory.mktemp("edge-data") / "data")), 1, seed=4)
    return folder


def test_edge_and_cloud_compose_to_the_all_in_one_answer_and_the_cloud_never_sees_the_history(run: Path) -> None:
    cloud = Recommender(BankStore(load_run(run), refresh_seconds=0))
    recorder = Recorder(create_app(cloud))
    catalog = cloud.store.run.catalog
    cases = [({"region": "Europe"}, list(catalog[2:9])), ({"region": "Asia-Pacific"}, list(catalog[20:45])),
             ({"region": "Mars"}, list(catalog[50:52])), ({}, [])]
    with uvicorn_thread(recorder) as port:
        edge = EdgeRecommender(Recommender(BankStore(load_run(run), refresh_seconds=0)), f"http://127.0.0.1:{port}")
        for segments, history in cases:
            whole = cloud.recommend(segments, history, 8)
            split = edge.recommend(segments, history, 8)
            assert [i["id"] for i in split["items"]] == [i.id for i in whole.items]
            np.testing.assert_allclose([i["score"] for i in split["items"]], [i.score for i in whole.items],
                                       rtol=1e-5, atol=1e-5)
            assert split["banks"] == whole.banks and split["fallbacks"] == whole.fallbacks
        seen = b"".join(recorder.bodies)
        assert len(recorder.bodies) == len(cases)
        assert b"history" not in seen
        assert not [i for _, h in cases for i in h if i.encode() in seen]  # no history item reached the cloud
        assert b"Europe" in seen  # segment values are sent when allowed...

        recorder.bodies.clear()
        private = EdgeRecommender(edge.tower, f"http://127.0.0.1:{port}", send_segments=False)
        reply = private.recommend({"region": "Europe"}, list(catalog[2:9]), 8)
        assert reply["banks"] == ["global"] and len(reply["items"]) == 8
        assert b"Europe" not in b"".join(recorder.bodies)  # ...and withheld when not
        edge.close()
        private.close()
