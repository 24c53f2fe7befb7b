"""`fedadapt bench serve` (simulations/bench/serve.py) on a tiny run: the registered command runs every part and
reports numbers that are consistent with what they measure (not how fast: timings are never asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cli.main import main
from tests.serve_fixtures import make_data, serve_cfg, write_round


@pytest.mark.slow
def test_bench_serve_reports_quality_load_and_scale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    # 150 products: the test users' records need 99 sampled negatives each (common/data/examples.py)
    write_round(run, serve_cfg(make_data(tmp_path / "data", products=150)), 1, seed=1)
    has_faiss = importlib.util.find_spec("faiss") is not None
    variants = ["exact-fp32", "exact-int8", "edge-vector", *(["hnsw-fp32"] if has_faiss else [])]
    argv = ["bench", "serve", "--run", str(run), "--users", "12", "--variants", ",".join(variants),
            "--concurrency", "1,3", "--requests", "9", "--swap", "--json"]
    if has_faiss:
        argv += ["--catalog", "3000", "--dim", "8", "--queries", "10"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)

    quality = result["quality"]
    assert quality["users"] == 12 and quality["items"] == 150
    assert quality["exact-fp32"]["top10_overlap_with_exact_fp32"] == 1.0
    assert quality["exact-int8"]["item_vector_bytes"] < quality["exact-fp32"]["item_vector_bytes"] / 3
    assert quality["int8_ndcg_delta"] == pytest.approx(quality["exact-int8"]["ndcg@10"] -
                                                       quality["exact-fp32"]["ndcg@10"], abs=1e-3)
    for name in quality["variants"]:
        assert 0 <= quality[name]["ndcg@10"] <= quality[name]["hr@10"] <= 1

    rows = result["load"]
    assert [(r["variant"], r["clients"]) for r in rows] == [(v, c) for v in variants for c in (1, 3)]
    for r in rows:
        assert r["requests"] == 9 and r["failed"] == 0 and r["rps"] > 0 and r["rss_mb"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    swap = result["swap"]  # the next round landed while 3 clients sent 27 requests; none failed
    assert (swap["round_before"], swap["round_after"], swap["failed"], swap["requests"]) == (1, 2, 0, 27)
    assert sum(swap["replies_by_round"].values()) == 27 and set(swap["replies_by_round"]) <= {"1", "2"}
    assert not (run / "checkpoints" / "round-0002").exists()  # the swap happened in a copy of the run
    if has_faiss:
        assert 0 <= quality["hnsw-fp32"]["recall@10_vs_exact"] <= 1
        scale = result["scale"]
        assert scale["items"] == 3000 and 0.5 <= scale["hnsw_recall@10"] <= 1
        assert scale["exact"]["p50_ms"] > 0 and scale["hnsw"]["build_s"] >= 0


def test_bench_serve_refuses_an_unknown_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "serve", "--run", str(tmp_path), "--variants", "exact-fp16"]) == 2
    assert "unknown variant(s) ['exact-fp16']" in capsys.readouterr().err
