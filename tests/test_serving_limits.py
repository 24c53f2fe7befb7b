"""Request bodies are capped before they are read (serving/limits.py): a declared Content-Length over the cap is
answered 413 while not one body byte has been sent, a chunked body is cut off with 413 once it passes the cap
(the rest never sent), and a body of exactly the cap is served. Over real sockets to uvicorn, and through the
TestClient for the boundary."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import MAX_BODY_BYTES, create_app
from serving.banks import BankStore
from serving.limits import BodyLimit
from serving.recommend import Recommender
from serving.run import load_run
from tests.serve_fixtures import make_data, serve_cfg, uvicorn_thread, write_round


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    data = make_data(tmp_path_factory.mktemp("limits-data") / "data")
    run = tmp_path_factory.mktemp("limits-run") / "run"
    write_round(run, serve_cfg(data), 1, seed=1)
    return Recommender(BankStore(load_run(run), refresh_seconds=0))


def _reply(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of one HTTP/1.1 reply read off `sock` (the server closes after a 413)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), json.loads(body[:_length(data)])


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":")[1])
    return 1 << 30


def test_a_declared_huge_body_is_refused_before_any_of_it_is_sent(recommender: Recommender) -> None:
    """10 GB declared, nothing sent: a server that read the body first would wait forever (the socket timeout
    turns that into a failure); this one answers 413 at once, naming the limit."""
    with uvicorn_thread(create_app(recommender)) as port, socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 10000000000\r\n\r\n")
        status, body = _reply(sock)
    assert status == 413
    assert body["detail"] == f"request body of 10000000000 bytes exceeds the limit of {MAX_BODY_BYTES} bytes"


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(recommender: Recommender) -> None:
    """Chunked transfer declares no length: the body is counted as it arrives and refused at the cap, without
    the terminating chunk ever being sent (so the server cannot have waited for the whole body)."""
    cap = 50_000
    with uvicorn_thread(create_app(recommender, max_body_bytes=cap)) as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        sock.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"[" + b'"p000001",' * 1000
        for _ in range(cap // len(piece) + 2):  # a little over the cap, never finished
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, body = _reply(sock)
    assert status == 413 and body["detail"] == f"request body exceeds the limit of {cap} bytes"


def test_a_body_of_exactly_the_limit_is_served_and_one_byte_more_is_not(recommender: Recommender) -> None:
    payload = json.dumps({"history": list(recommender.store.run.catalog[:3]), "k": 3}).encode()
    headers = {"content-type": "application/json"}
    exact = TestClient(create_app(recommender, max_body_bytes=len(payload)))
    assert exact.post("/recommend", content=payload, headers=headers).status_code == 200
    tight = TestClient(create_app(recommender, max_body_bytes=len(payload) - 1))
    r = tight.post("/recommend", content=payload, headers=headers)
    assert r.status_code == 413 and str(len(payload) - 1) in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the counting path
        yield payload[:10]
        yield payload[10:]

    r = tight.post("/recommend", content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["detail"] == f"request body exceeds the limit of {len(payload) - 1} bytes"
    assert tight.get("/health").status_code == 200


def test_the_default_limit_admits_the_largest_valid_request(recommender: Recommender) -> None:
    """MAX_BODY_BYTES is above a single request at every field limit (the cap never refuses a valid request)."""
    from serving.app import MAX_HISTORY, MAX_NAME, MAX_SEGMENTS

    largest = {"segments": {f"{i:0{MAX_NAME}d}": "v" * MAX_NAME for i in range(MAX_SEGMENTS)},
               "history": ["x" * MAX_NAME] * MAX_HISTORY, "k": 1000, "exclude_history": False,
               "include_vector": False}
    assert len(json.dumps(largest).encode()) < MAX_BODY_BYTES
    with pytest.raises(ValueError, match="body limit"):
        BodyLimit(create_app(recommender), 0)
