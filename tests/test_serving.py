"""`fedadapt serve` (serving/): a tiny arch=seq run written as the ServerApp writes its checkpoints (no Flower),
served through FastAPI's TestClient: each endpoint, replies equal to the seq model's own scores, fallback to the
global bank for unknown segment values, every bad input class answered 4xx with a message, the hot swap to a
newer round (and never to a half-written or damaged one), the byte-bounded LRU of segment banks, and the real
command on a free port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cli.main import main
from common.names import CHECKPOINTS_DIR, GLOBAL
from common.protocol import FedConfig
from common.rec.seq_model import catalog_fingerprint
from server.checkpoint import Checkpoint, round_dir, save_checkpoint
from serving.app import create_app
from serving.banks import BankStore, ByteLRU
from serving.recommend import Recommender
from serving.run import load_run
from tests.serve_fixtures import (
    BANKS,
    HELD_BACK,
    SERVED,
    free_port,
    make_data,
    reference_scores,
    serve_cfg,
    write_round,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("serve-data") / "data")


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("serve-run") / "run"
    cfg = serve_cfg(data_dir)
    banks = write_round(run, cfg, 2, seed=1)
    store = BankStore(load_run(run), refresh_seconds=0)
    return {"run": run, "cfg": cfg, "banks": banks, "store": store,
            "client": TestClient(create_app(Recommender(store)))}


def _history(served: dict[str, Any], n: int = 5) -> list[str]:
    return list(served["store"].run.catalog[3:3 + n])


def test_recommend_ranks_as_the_seq_model_does(served: dict[str, Any]) -> None:
    """The reply's ids and scores are the seq model's own full-catalog scores for the same request (routed through
    the served segment bank), seen items left out, best first; titles are the products' names."""
    history, segments = _history(served), {"region": "Europe"}
    r = served["client"].post("/recommend", json={"segments": segments, "history": history, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["round"] == 2 and body["banks"] == [GLOBAL, "region=Europe"] and body["fallbacks"] == {}
    catalog, scores = reference_scores(served["cfg"], served["banks"], history, segments)
    scores[[catalog.index(i) for i in history]] = -np.inf
    best = np.argsort(-scores, kind="stable")[:7]
    assert [it["id"] for it in body["items"]] == [catalog[j] for j in best]
    np.testing.assert_allclose([it["score"] for it in body["items"]], scores[best], rtol=1e-4, atol=1e-4)
    titles = served["store"].run.titles
    assert all(it["title"] == titles[it["id"]] and it["title"] for it in body["items"])
    assert not set(history) & {it["id"] for it in body["items"]}
    no_segment = served["client"].post("/recommend", json={"history": history, "k": 7}).json()
    assert [it["id"] for it in no_segment["items"]] != [it["id"] for it in body["items"]]  # the bank matters


def test_history_types_reach_the_user_tower(served: dict[str, Any]) -> None:
    """Event types change the user vector as the seq model was trained (a viewed item is not a purchase); all
    purchases is what an untyped history means."""
    history, client = _history(served), served["client"]

    def vector(types: list[str] | None) -> list[float]:
        body: dict[str, Any] = {"history": history, "k": 5, "include_vector": True}
        if types is not None:
            body["history_types"] = types
        r = client.post("/recommend", json=body)
        assert r.status_code == 200, r.text
        return list(r.json()["user_vector"])

    untyped = vector(None)
    np.testing.assert_allclose(vector(["purchase"] * len(history)), untyped, rtol=1e-5, atol=1e-6)
    viewed = vector(["view"] * len(history))
    assert not np.allclose(viewed, untyped, atol=1e-4)


def test_unknown_segment_value_falls_back_to_global_and_says_so(served: dict[str, Any]) -> None:
    """A segment value without a bank, and a held-back segment's bank, rank as the global bank alone; the reply
    names each fallback and why."""
    history = _history(served)
    plain = served["client"].post("/recommend", json={"history": history}).json()
    for segments, bank, why in (({"region": "Mars"}, "region=Mars", "no bank"),
                                ({"season": "winter"}, HELD_BACK, "held back")):
        r = served["client"].post("/recommend", json={"history": history, "segments": segments})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["banks"] == [GLOBAL] and why in body["fallbacks"][bank]
        assert body["items"] == plain["items"]


def test_vector_endpoint_composes_with_the_user_tower(served: dict[str, Any]) -> None:
    """The personalised user vector of /recommend, sent to /recommend/vector with the same segments, gives the
    same ranking: the two halves of the edge/cloud split compose to the all-in-one answer."""
    body = {"history": _history(served, 8), "segments": {"region": "Asia-Pacific"}, "k": 10,
            "exclude_history": False, "include_vector": True}
    whole = served["client"].post("/recommend", json=body).json()
    assert len(whole["user_vector"]) == 16
    r = served["client"].post("/recommend/vector", json={"vector": whole["user_vector"],
                                                         "segments": {"region": "Asia-Pacific"}, "k": 10})
    assert r.status_code == 200, r.text
    halves = r.json()
    assert [i["id"] for i in halves["items"]] == [i["id"] for i in whole["items"]]
    np.testing.assert_allclose([i["score"] for i in halves["items"]], [i["score"] for i in whole["items"]],
                               rtol=1e-5, atol=1e-5)
    assert halves["banks"] == whole["banks"] == [GLOBAL, "region=Asia-Pacific"]


def test_health_and_metadata(served: dict[str, Any]) -> None:
    client, run = served["client"], served["store"].run
    assert client.get("/health").json() == {"status": "ok", "round": 2}
    meta = client.get("/metadata").json()
    assert meta["round"] == 2 and meta["banks"] == sorted(BANKS) and meta["served"] == sorted(SERVED)
    assert meta["catalog"] == {"items": 60, "fingerprint": catalog_fingerprint(run.catalog, run.item_texts)}
    assert meta["user_vector_dim"] == 16 and meta["segment_keys"] == ["region", "season"]


BAD_REQUESTS: list[tuple[str, str, Any, str]] = [
    ("bad json", "/recommend", b'{"history": [', "JSON"),
    ("not an object", "/recommend", b"[1, 2]", "body"),
    ("unknown field", "/recommend", {"history": [], "user": "u1"}, "user"),
    ("k zero", "/recommend", {"k": 0}, "k"),
    ("huge k", "/recommend", {"k": 10**9}, "k"),
    ("k as text", "/recommend", {"k": "10"}, "k"),
    ("history of 100,000 events", "/recommend", {"history": ["p000001"] * 100_000}, "history"),
    ("unknown item", "/recommend", {"history": ["p000001", "p999999"]}, "p999999"),
    ("unknown segment key", "/recommend", {"segments": {"colour": "red"}}, "colour"),
    ("segment value not text", "/recommend", {"segments": {"region": 3}}, "region"),
    ("types of another length", "/recommend", {"history": ["p000001"], "history_types": ["view", "view"]},
     "history_types"),
    ("unknown event type", "/recommend", {"history": ["p000001"], "history_types": ["like"]}, "like"),
    ("vector of the wrong width", "/recommend/vector", {"vector": [0.5] * 3}, "16"),
    ("vector with NaN", "/recommend/vector", b'{"vector": [NaN, 1.0]}', "vector"),
    ("empty vector", "/recommend/vector", {"vector": []}, "vector"),
    ("vector unknown field", "/recommend/vector", {"vector": [0.0] * 16, "history": []}, "history"),
]


@pytest.mark.parametrize(("path", "payload", "named"), [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_4xx_with_a_message(served: dict[str, Any], path: str, payload: Any, named: str) -> None:
    """Every malformed request is refused 4xx with a message naming the problem, and never echoes the input."""
    client = served["client"]
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=payload)
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and named in detail
    assert len(r.content) < 5000
    assert client.get("/health").status_code == 200  # the service is still up


def test_new_round_swaps_in_whole_and_half_written_or_damaged_rounds_are_ignored(data_dir: Path,
                                                                                  tmp_path: Path) -> None:
    """A newer complete round is picked up without a restart and answers with all of its banks; a round still
    being written (server/checkpoint.py's .tmp- folder) or one whose files fail their SHA-256 is never served."""
    cfg, run = serve_cfg(data_dir), tmp_path / "run"
    write_round(run, cfg, 1, seed=1)
    store = BankStore(load_run(run), refresh_seconds=0)
    client = TestClient(create_app(Recommender(store)))
    request: dict[str, Any] = {"history": list(store.run.catalog[:4]), "segments": {"region": "Europe"}, "k": 5}
    first = client.post("/recommend", json=request).json()
    assert first["round"] == 1

    half = run / CHECKPOINTS_DIR / ".tmp-round-0002-123" / "banks"
    half.mkdir(parents=True)
    (half / "000.safetensors").write_bytes(b"partial")
    assert client.post("/recommend", json=request).json() == first

    banks = write_round(run, cfg, 2, seed=2)
    second = client.post("/recommend", json=request).json()
    assert second["round"] == 2 and second["items"] != first["items"]
    catalog, scores = reference_scores(cfg, banks, request["history"], request["segments"])
    scores[[catalog.index(i) for i in request["history"]]] = -np.inf
    assert [i["id"] for i in second["items"]] == [catalog[j] for j in np.argsort(-scores, kind="stable")[:5]]

    write_round(run, cfg, 3, seed=3)
    damaged = round_dir(run / CHECKPOINTS_DIR, 3) / "banks" / "000.safetensors"
    blob = bytearray(damaged.read_bytes())
    blob[-1] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    assert client.post("/recommend", json=request).json() == second
    assert client.get("/health").json()["round"] == 2


def test_byte_lru_evicts_least_recently_used() -> None:
    cache: ByteLRU[str] = ByteLRU(100)
    cache.get("a", lambda: ("A", 60))
    cache.get("b", lambda: ("B", 30))
    assert cache.get("a", lambda: ("never loaded", 1)) == "A"  # a is now the most recent
    cache.get("c", lambda: ("C", 30))  # 120 bytes > 100: b, the least recently used, goes
    assert "a" in cache and "c" in cache and "b" not in cache
    assert (cache.bytes, cache.evictions) == (90, 1)
    assert cache.get("big", lambda: ("BIG", 101)) == "BIG" and "big" not in cache  # larger than the bound
    with pytest.raises(ValueError, match="cache size"):
        ByteLRU(-1)


def test_segment_banks_are_evicted_by_bytes_and_answers_stay_right(served: dict[str, Any]) -> None:
    """A store whose bound holds one segment bank keeps one, evicting as requests alternate segments, and every
    answer equals the unbounded store's."""
    big = served["store"]
    one = big.segment(big.current(), "region=Europe")
    size = sum(p.numel() * p.element_size() for p in one.parameters())
    small = BankStore(big.run, cache_bytes=size, refresh_seconds=0)
    tight, roomy = TestClient(create_app(Recommender(small))), served["client"]
    for region in ("Europe", "Asia-Pacific", "Europe"):
        request = {"history": _history(served), "segments": {"region": region}}
        assert tight.post("/recommend", json=request).json() == roomy.post("/recommend", json=request).json()
        assert len(small.cache) == 1 and small.cache.bytes <= size
    assert small.cache.evictions == 2
    assert tight.get("/metadata").json()["cache"]["evictions"] == 2


def test_load_run_refuses_what_it_cannot_serve(data_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A missing run, a run without checkpoints, a text-arch run and a missing data folder are one-line errors."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        load_run(tmp_path / "empty")
    text_cfg = FedConfig.from_run_config({"arch": "text", "data-dir": str(data_dir)})
    save_checkpoint(tmp_path / "text" / CHECKPOINTS_DIR,
                    Checkpoint(1, {GLOBAL: {f"{GLOBAL}::w": np.zeros(2, np.float32)}},
                               {"run_config": text_cfg.to_run_config()}))
    with pytest.raises(ValueError, match="serving supports arch='seq'"):
        load_run(tmp_path / "text")
    run = tmp_path / "seq"
    write_round(run, serve_cfg(data_dir), 1, seed=0)
    with pytest.raises(FileNotFoundError, match="pass --data"):
        load_run(run, tmp_path / "elsewhere")
    assert main(["serve", "--run", str(tmp_path / "text")]) == 2
    assert "serving supports arch='seq'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--run", str(run), "--port", "70000"])


def _outward_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


@pytest.mark.slow
def test_fedadapt_serve_answers_on_a_free_port(served: dict[str, Any], tmp_path: Path) -> None:
    """The real command: uvicorn on 127.0.0.1, /health and a bad request over TCP, stopped by its PID; with the
    default host a stranger reaching this machine's outward address on the same port is refused."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed in finally, after the process
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--run", str(served["run"]),
                             "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as reply:
                    assert json.loads(reply.read()) == {"status": "ok", "round": 2}
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.5)
        bad = urllib.request.Request(f"{base}/recommend", data=b'{"k": 0}', method="POST",
                                     headers={"content-type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=5)
        assert err.value.code == 422 and "k" in json.loads(err.value.read())["detail"]
        outward = _outward_address()
        if outward is not None:  # the attacker: the same port from outside loopback
            with pytest.raises(ConnectionRefusedError), socket.create_connection((outward, port), timeout=5):
                pass
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
