"""`GET /` (serving/page.py): the page is served with the service, its reply shape is what the page reads
(`show_history`), and, where Chromium is installed, a real headless browser loads a user's link and shows the
history and the recommendations with their titles; skipped with the reason where it is not."""

from __future__ import annotations

import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.banks import BankStore
from serving.recommend import Recommender
from serving.run import load_run
from tests.serve_fixtures import make_data, serve_cfg, uvicorn_thread, write_round

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def recommender(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    run = tmp_path_factory.mktemp("page-run") / "run"
    write_round(run, serve_cfg(make_data(tmp_path_factory.mktemp("page-data") / "data")), 1, seed=5)
    return Recommender(BankStore(load_run(run), refresh_seconds=0))


def test_the_page_is_served_and_the_reply_carries_what_it_shows(recommender: Recommender) -> None:
    client = TestClient(create_app(recommender))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'fetch("/recommend"' in page.text and "show_history: true" in page.text
    assert "innerHTML" not in page.text  # titles go in as text only
    catalog, titles = recommender.store.run.catalog, recommender.store.run.titles
    history = list(catalog[:25])  # longer than the tower's window of 20
    body = client.post("/recommend", json={"history": history, "k": 3, "show_history": True}).json()
    assert body["history"] == [{"id": i, "title": titles[i]} for i in history[-20:]]
    assert "history" not in client.post("/recommend", json={"history": history, "k": 3}).json()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_a_headless_browser_shows_a_users_history_and_recommendations(recommender: Recommender,
                                                                      tmp_path: Path) -> None:
    assert CHROMIUM is not None
    catalog, titles = recommender.store.run.catalog, recommender.store.run.titles
    history = list(catalog[5:9])
    expected = recommender.recommend({"region": "Europe"}, history, 5)
    query = urllib.parse.urlencode({"history": ",".join(history), "segments": "region=Europe", "k": "5"})
    with uvicorn_thread(create_app(recommender)) as port:
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                              "--virtual-time-budget=10000", "--dump-dom", f"http://127.0.0.1:{port}/?{query}"],
                             capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'data-done="yes"' in dom
    for item in expected.items:
        assert f"<td>{item.id}</td>" in dom and item.title in dom
    assert all(titles[i] in dom for i in history)
    assert "region=Europe" in dom
