"""The edge file (serving/export.py): what `fedadapt serve --export-edge` writes is enough to compute a user's
vector on the device (no backbone, no texts, no catalog-sized float tensor), and that vector sent to the cloud
ranks as the all-in-one service does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from cli.main import main
from serving.app import create_app
from serving.banks import BankStore
from serving.edge import EdgeRecommender
from serving.export import ITEMS_Q, ITEMS_SCALE, EdgeTower, export_edge
from serving.recommend import Recommender
from serving.retrieval import RetrievalOptions
from serving.run import load_run
from tests.serve_fixtures import SERVED, make_data, serve_cfg, uvicorn_thread, write_round


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export-run") / "run"
    write_round(folder, serve_cfg(make_data(tmp_path_factory.mktemp("export-data") / "data")), 1, seed=6)
    return folder


def test_the_edge_file_holds_the_tower_and_int8_rows_only(run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.safetensors"
    assert main(["serve", "--run", str(run), "--export-edge", str(path)]) == 0
    assert "wrote" in capsys.readouterr().out
    store = BankStore(load_run(run), refresh_seconds=0)
    rows = len(store.run.catalog) + 1
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    assert str(tensors[ITEMS_Q].dtype) == "torch.int8" and tuple(tensors[ITEMS_Q].shape) == (rows, 16)
    catalog_sized = sorted(k for k, t in tensors.items() if rows in t.shape)
    assert catalog_sized == sorted([ITEMS_Q, ITEMS_SCALE])  # no item bias, no fp32 item rows
    assert {k.split("::")[0] for k in tensors if "::" in k} == {"global", *SERVED}
    with pytest.raises(ValueError, match="no served bank"):
        export_edge(store, tmp_path / "x.safetensors", ["season=winter"])  # held back: not for the edge
    with pytest.raises(ValueError, match="not an edge file"):
        bad = tmp_path / "bad.safetensors"
        import torch
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(bad))
        EdgeTower(bad)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_exported_tower_composes_with_the_cloud(run: Path, tmp_path: Path, precision: str) -> None:
    """The edge file's tower gives the service's own user vector to within the quantisation of the file's int8
    item rows (fp32 tower: 1% of the vector's largest value; int8 tower, whose segment banks run int8 too where the
    service's run fp32: 5%), and through /recommend/vector at least 8 of the service's top 10."""
    options = RetrievalOptions(precision=precision)
    cloud = Recommender(BankStore(load_run(run), refresh_seconds=0, options=options))
    path = tmp_path / "edge.safetensors"
    export_edge(cloud.store, path)
    tower = EdgeTower(path, precision=precision)
    catalog = cloud.store.run.catalog
    cases = [({"region": "Europe"}, list(catalog[2:9])), ({"region": "Asia-Pacific"}, list(catalog[20:45])),
             ({"region": "Mars"}, list(catalog[50:52]))]
    with uvicorn_thread(create_app(cloud)) as port:
        edge = EdgeRecommender(tower, f"http://127.0.0.1:{port}")
        for segments, history in cases:
            whole = cloud.recommend(segments, history, 10, include_vector=True)
            assert whole.user_vector is not None
            vector = tower.user_vector(segments, history)
            tolerance = (0.01 if precision == "fp32" else 0.05) * float(np.abs(whole.user_vector).max())
            np.testing.assert_allclose(vector, whole.user_vector, atol=tolerance)
            split = edge.recommend(segments, history, 10)
            ids, expected = [i["id"] for i in split["items"]], [i.id for i in whole.items]
            assert len(ids) == 10 and len(set(ids) & set(expected)) >= 8, (ids, expected)
            assert split["banks"] == whole.banks
        edge.close()
