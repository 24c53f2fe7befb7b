"""A trained run as the service sees it: its run config, its checkpoint folder and the public catalog.

`fedadapt serve --run RUN` points at a run folder that `fedadapt simulate` (or the deployment's ServerApp) wrote:
RUN/checkpoints/round-NNNN/ holds the banks and, in state.json, the run config they were trained under. The catalog
(ids, texts the model encodes, and titles a person reads) comes from the run's data folder, read exactly as a
client reads it, so the item order and the frozen text vectors are the ones the banks were trained against.
Only arch=seq runs are served today (its user tower reads a history, which is what a request carries).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.names import CHECKPOINTS_DIR, SEQ
from common.protocol import FedConfig
from common.rec.seq_model import catalog_fingerprint
from server.checkpoint import STATE_FILE, latest_complete_round, round_dir


@dataclass(frozen=True)
class ServedRun:
    """What every bank set of the run shares: the config, where its checkpoints land, and the catalog."""

    folder: Path
    checkpoints: Path
    cfg: FedConfig
    item_texts: dict[str, str]
    titles: dict[str, str]
    catalog: tuple[str, ...]  # the model's item order (sorted ids, as every party builds it)
    fingerprint: str


def checkpoints_of(folder: Path) -> Path:
    """RUN/checkpoints, or RUN itself when it is the checkpoint folder."""
    return folder / CHECKPOINTS_DIR if (folder / CHECKPOINTS_DIR).is_dir() else folder


def load_run(folder: str | Path, data: str | Path | None = None) -> ServedRun:
    """Read the run config of the latest complete round under `folder` and the catalog of its data folder
    (`data` overrides the run config's data-dir, e.g. for a run folder copied to another machine)."""
    from common.data.examples import build_item_texts
    from common.data.schema import read_marketplace

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    root = checkpoints_of(folder)
    last = latest_complete_round(root)
    if last is None:
        raise FileNotFoundError(f"{folder}: no complete checkpoint (round-NNNN/{STATE_FILE}) under {root}")
    try:
        run_config = dict(json.loads((round_dir(root, last) / STATE_FILE).read_text())["run_config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{round_dir(root, last) / STATE_FILE}: no run config ({type(exc).__name__}: {exc})") from exc
    if data is not None:
        run_config["data-dir"] = str(data)
    cfg = FedConfig.from_run_config(run_config)
    if cfg.arch != SEQ:  # serving is built on the seq model's user tower (tests/test_layout.py lists why)
        raise ValueError(f"{folder}: a run of arch={cfg.arch!r}; serving supports arch={SEQ!r} runs only")
    if not cfg.data_dir or not Path(cfg.data_dir).is_dir():
        raise FileNotFoundError(f"{folder}: the run's data folder {cfg.data_dir!r} is not here; pass --data DATA")
    products = read_marketplace(cfg.data_dir).products
    texts = build_item_texts(products)
    titles = dict(zip(products["product_id"], products["product_name"], strict=True))
    catalog = tuple(sorted(texts))
    return ServedRun(folder=folder, checkpoints=root, cfg=cfg, item_texts=texts, titles=titles, catalog=catalog,
                     fingerprint=catalog_fingerprint(catalog, texts))
