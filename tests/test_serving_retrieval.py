"""The item side of serving (serving/retrieval.py) and mixed batches (serving/recommend.py): a batch mixing
segments, fallbacks and history lengths answers what its requests answer one by one; the item vectors are built
once per round, never per request; int8 ranks close to fp32; the HNSW index finds what exact search finds, falls
back to exact where it must, and is refused with a clear message when faiss is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from common.rec.seq_model import SeqRecModel
from serving import retrieval
from serving.app import create_app
from serving.banks import BankStore
from serving.recommend import Query, Recommender
from serving.retrieval import MissingLibrary, Retrieval, RetrievalOptions
from serving.run import load_run
from tests.serve_fixtures import make_data, serve_cfg, write_round


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = make_data(tmp_path_factory.mktemp("retrieval-data") / "data")
    folder = tmp_path_factory.mktemp("retrieval-run") / "run"
    write_round(folder, serve_cfg(data), 1, seed=1)
    return folder


@pytest.fixture(scope="module")
def exact(run: Path) -> Recommender:
    return Recommender(BankStore(load_run(run), refresh_seconds=0))


def _queries(rec: Recommender) -> list[Query]:
    catalog = rec.store.run.catalog
    return [Query({"region": "Europe"}, catalog[:3], k=5),
            Query({"region": "Asia-Pacific", "season": "winter"}, catalog[10:35], k=7),  # longer than max_len 20
            Query({"region": "Mars"}, [], k=3),
            Query({}, catalog[40:41], k=10, exclude_history=False, include_vector=True),
            Query({"region": "Europe"}, catalog[5:12], k=4)]


def test_a_mixed_batch_answers_what_single_requests_answer(exact: Recommender) -> None:
    """Rows routed to different segment banks (and to none, and to a fallback), with histories of different
    lengths, scored together: each reply equals the same request sent alone, over HTTP too."""
    queries = _queries(exact)
    batch = exact.recommend_batch(queries)
    for q, together in zip(queries, batch, strict=True):
        alone = exact.recommend(q.segments, q.history, q.k, q.exclude_history, q.include_vector)
        assert [i.id for i in together.items] == [i.id for i in alone.items] and len(alone.items) == q.k
        np.testing.assert_allclose([i.score for i in together.items], [i.score for i in alone.items],
                                   rtol=1e-5, atol=1e-5)
        assert (together.banks, together.fallbacks) == (alone.banks, alone.fallbacks)
    assert batch[0].banks == ["global", "region=Europe"] and batch[2].banks == ["global"]
    assert batch[3].user_vector is not None and batch[0].user_vector is None
    assert [i.id for i in batch[0].items] != [i.id for i in exact.recommend({}, queries[0].history, 5).items]

    client = TestClient(create_app(exact))
    body = {"requests": [{"segments": dict(q.segments), "history": list(q.history), "k": q.k,
                          "exclude_history": q.exclude_history} for q in queries]}
    r = client.post("/recommend/batch", json=body)
    assert r.status_code == 200, r.text
    assert [[i["id"] for i in rep["items"]] for rep in r.json()["replies"]] == \
        [[i.id for i in rec.items] for rec in batch]
    for bad, named in (({"requests": []}, "requests"), ({"requests": [{"k": 0}]}, "k"),
                       ({"requests": [{"history": []}] * 65}, "requests")):
        r = client.post("/recommend/batch", json=bad)
        assert r.status_code == 422 and named in r.json()["detail"]


def test_item_vectors_are_built_once_per_round_not_per_request(run: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"item_table": 0}
    real = SeqRecModel.item_table

    def counted(self: SeqRecModel) -> torch.Tensor:
        calls["item_table"] += 1
        return real(self)

    monkeypatch.setattr(SeqRecModel, "item_table", counted)
    copy = tmp_path / "run"
    cfg = load_run(run).cfg
    write_round(copy, cfg, 1, seed=1)
    store = BankStore(load_run(copy), refresh_seconds=0)
    rec = Recommender(store)
    first = store.current().retrieval
    for q in _queries(rec) * 3:
        rec.recommend_batch([q])
    rec.recommend_vector([0.1] * 16, {"region": "Europe"}, 5)
    assert (calls["item_table"], store.builds) == (1, 1) and store.current().retrieval is first
    write_round(copy, cfg, 2, seed=2)
    rec.recommend_batch(_queries(rec))
    assert (calls["item_table"], store.builds) == (2, 2) and store.current().retrieval is not first


def _overlap(a: list[str], b: list[str]) -> float:
    return len(set(a) & set(b)) / len(a)


def test_int8_ranks_close_to_fp32(run: Path, exact: Recommender) -> None:
    """int8 item rows and user tower: scores within a small fraction of the score spread, and the top 10 mostly
    the same. The bound: per-row int8 error is at most scale/2 = max|row|/254 per coordinate, about 0.5% of a
    score, so only items whose fp32 scores are that close can swap places; on these random banks (scores spread
    over several units) that leaves at least 8 of 10 in common for every user."""
    int8 = Recommender(BankStore(load_run(run), refresh_seconds=0, options=RetrievalOptions(precision="int8")))
    bank_set = int8.store.current()
    assert bank_set.retrieval.kind == "exact-int8" and bank_set.retrieval.items.q.dtype == torch.int8
    assert bank_set.retrieval.items.nbytes < exact.store.current().retrieval.items.nbytes / 3
    catalog = exact.store.run.catalog
    overlaps, errors, spreads = [], [], []
    for start in range(0, 40, 4):
        q = Query({"region": "Europe"} if start % 8 else {}, catalog[start:start + 6], k=10)
        a, b = exact.recommend_batch([q])[0], int8.recommend_batch([q])[0]
        overlaps.append(_overlap([i.id for i in a.items], [i.id for i in b.items]))
        full_a = {i.id: i.score for i in exact.recommend(q.segments, q.history, 60).items}
        full_b = {i.id: i.score for i in int8.recommend(q.segments, q.history, 60).items}
        errors.append(max(abs(full_a[i] - full_b[i]) for i in full_a))
        spreads.append(max(full_a.values()) - min(full_a.values()))
    assert min(overlaps) >= 0.8 and np.mean(overlaps) >= 0.9, overlaps
    assert max(e / s for e, s in zip(errors, spreads, strict=True)) < 0.05, (errors, spreads)


def _random_items(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(n + 1, d, generator=gen)
    table[0] = 0
    return table, torch.randn(n + 1, generator=gen) * 0.1


def test_hnsw_over_a_whole_small_catalog_equals_exact(exact: Recommender, run: Path) -> None:
    """With the index forced on (ann_min_items=0) and candidates covering the catalog, the index path answers
    exactly what exact search does, segment-bias deltas and history exclusions included."""
    pytest.importorskip("faiss")
    options = RetrievalOptions(index="hnsw", ann_min_items=0, overfetch=100)
    ann = Recommender(BankStore(load_run(run), refresh_seconds=0, options=options))
    assert ann.store.current().retrieval.kind == "hnsw-fp32"
    for q in _queries(exact):
        a, b = exact.recommend_batch([q])[0], ann.recommend_batch([q])[0]
        assert [i.id for i in a.items] == [i.id for i in b.items]
        np.testing.assert_allclose([i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-5)


def test_hnsw_recall_at_10_on_a_larger_catalog() -> None:
    """20,000 random item vectors: HNSW's top 10 (after the exact rescoring of its candidates) holds at least 95%
    of exact search's top 10, fp32 and int8 alike; below ann_min_items the index is not built at all."""
    pytest.importorskip("faiss")
    table, bias = _random_items(20_000, 16, seed=0)
    users = torch.randn(50, 16, generator=torch.Generator().manual_seed(1))
    truth = Retrieval.build(table, bias, RetrievalOptions()).top(users, None, 10, [[] for _ in users])
    for precision in ("fp32", "int8"):
        ann = Retrieval.build(table, bias, RetrievalOptions(precision=precision, index="hnsw", ann_min_items=10_000))
        assert ann.kind == f"hnsw-{precision}"
        found = ann.top(users, None, 10, [[] for _ in users])
        recall = np.mean([len(set(t[0]) & set(f[0])) / 10 for t, f in zip(truth, found, strict=True)])
        assert recall >= 0.95, (precision, recall)
    tuned = Retrieval.build(table[:3001], bias[:3001], RetrievalOptions(index="hnsw", ann_min_items=0, ef_search=300))
    assert tuned.index is not None and tuned.index.index.hnsw.efSearch == 300
    small = Retrieval.build(table[:5001], bias[:5001], RetrievalOptions(index="hnsw", ann_min_items=10_000))
    assert small.kind == "exact-fp32" and small.index is None


def test_hnsw_asks_for_room_for_exclusions_and_falls_back_to_exact_when_short() -> None:
    """A user who has seen most of the catalog: the index is asked for k + exclusions candidates, so the answer is
    still 10 unseen items; and when the graph returns fewer usable candidates than k (faiss pads with -1), that row
    is answered by exact search."""
    pytest.importorskip("faiss")
    table, bias = _random_items(300, 8, seed=2)
    user = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    exact_top = Retrieval.build(table, bias, RetrievalOptions()).top(user, None, 300, [[]])[0][0]
    ann = Retrieval.build(table, bias, RetrievalOptions(index="hnsw", ann_min_items=0, overfetch=1))
    exclude = exact_top[:250]
    got = ann.top(user, None, 10, [exclude])[0][0]
    assert len(got) == 10 and not set(got) & set(exclude)
    assert ann.index is not None
    short = torch.tensor([[exact_top[0], exact_top[1], exact_top[252]] + [-1] * 257])  # 1 usable candidate
    ann.index.search = lambda users, n: short  # type: ignore[method-assign]
    assert ann.top(user, None, 10, [exclude])[0][0] == exact_top[250:260]


def test_hnsw_without_faiss_is_refused_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                   run: Path, capsys: Any) -> None:
    from cli.main import main

    monkeypatch.setattr(retrieval, "ANN_LIBRARY", "faiss_is_not_installed_here")
    with pytest.raises(MissingLibrary, match="pip install faiss-cpu"):
        RetrievalOptions(index="hnsw")
    assert RetrievalOptions(index="exact").index == "exact"  # exact needs nothing
    assert main(["serve", "--run", str(run), "--index", "hnsw"]) == 2
    assert "pip install faiss-cpu" in capsys.readouterr().err
    assert main(["serve", "--run", str(run), "--ef-search", "0"]) == 2
    assert "ef_search must be >= 1" in capsys.readouterr().err
    for bad, named in (({"precision": "int4"}, "precision"), ({"index": "ivf"}, "index"), ({"overfetch": 0},
                                                                                          "overfetch")):
        with pytest.raises(ValueError, match=named):
            RetrievalOptions(**bad)
