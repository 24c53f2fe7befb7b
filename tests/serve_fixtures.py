"""Shared by the serving tests: a tiny arch=seq run written as the ServerApp writes its checkpoints (no Flower),
the federation's own scores for a request, and a real uvicorn server on a free loopback port in a thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import uvicorn
from starlette.types import ASGIApp

from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation import seq_task
from common.federation.arch import arch_for
from common.names import CHECKPOINTS_DIR, GLOBAL, SEQ
from common.protocol import FedConfig
from common.rec.seq_train import score_catalog
from server.checkpoint import Checkpoint, save_checkpoint
from simulations.bench.compare import model_from_banks

SERVED = ("region=Europe", "region=Asia-Pacific")
HELD_BACK = "season=winter"  # has a bank, but the server did not serve it after the round
BANKS = (GLOBAL, *SERVED, HELD_BACK)


def make_data(folder: Path, products: int = 60) -> Path:
    """A synthetic marketplace of 40 users and `products` products."""
    write_marketplace(generate_marketplace(40, products, seed=3), folder)
    return folder


def serve_cfg(data_dir: Path) -> FedConfig:
    return FedConfig.from_run_config({"arch": SEQ, "seq-dim": 16, "seq-max-len": 20, "backbone": "tiny",
                                      "data-dir": str(data_dir)})


def write_round(run: Path, cfg: FedConfig, server_round: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """A checkpoint as server/app.py writes it, of seeded random banks (so every bank changes the ranking)."""
    texts = seq_task.catalog_texts(cfg.data_dir)
    model = arch_for(SEQ).build(cfg, BANKS, texts)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    banks = {name: seq_task.arrays(model, [name]) for name in BANKS}
    state = {"run_config": cfg.to_run_config(), "served_segments": sorted(SERVED), "history": []}
    save_checkpoint(run / CHECKPOINTS_DIR, Checkpoint(server_round, banks, state))
    return banks


def reference_scores(cfg: FedConfig, banks: dict[str, dict[str, np.ndarray]], history: list[str],
                     segments: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """The federation's own scores (the model a client builds from these banks) for one request."""
    model = model_from_banks(cfg, banks, seq_task.catalog_texts(cfg.data_dir), SERVED)
    return model.catalog, score_catalog(model, [history], [segments])[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_thread(app: ASGIApp) -> Iterator[int]:
    """`app` served by uvicorn on a free 127.0.0.1 port in a daemon thread; yields the port, stops on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
