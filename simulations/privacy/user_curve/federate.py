"""One point's federation, run in this process, and what its own records say about it.

The run is the real ServerApp (`server.app.FederatedRun`) and ClientApp (`client.app`) over the in-process grid
(`simulations.runner.inprocess_grid.InProcessGrid`: one process, no SuperLink, no Ray), one node per silo:
the same round code a `fedadapt simulate` run executes, without Ray's worker processes (which this shared
machine's memory monitor killed on MovieLens-1M, README). `RunRecord` is read back from the run folder
(metrics.jsonl, the completion marker and the last checkpoint's run config), never from the options, so the
curve reports what the run did: its last epsilon, and per round whether secure aggregation ran (and did not
abort) and under which DP unit.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.names import CHECKPOINTS_DIR, COMPLETE_FILE, METRICS_FILE
from common.protocol import FedConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunRecord:
    """What a finished run folder records (metrics.jsonl lines from round 1, its checkpoint's run config)."""

    folder: Path
    rounds: int  # rounds completed (the marker)
    lines: list[dict[str, Any]]  # metrics.jsonl, rounds >= 1
    run_config: dict[str, Any]  # the last checkpoint's
    seconds: float

    @property
    def epsilon(self) -> float | None:
        """Epsilon after the last round as the run reported it (None: the run had no DP)."""
        value = self.lines[-1].get("epsilon") if self.lines else None
        return float(value) if isinstance(value, int | float) else None

    @property
    def secure_every_round(self) -> bool:
        """Every round ran secure aggregation (segment or segment-hidden) and none aborted."""
        return bool(self.lines) and all(line.get("secure_aggregation") in ("segment", "segment-hidden")
                                        and line.get("secagg_aborted") == "" for line in self.lines)

    @property
    def dp_units(self) -> list[str]:
        """The DP unit each round recorded ("none" for a round without DP)."""
        return [str(line.get("dp_unit", "client" if "epsilon" in line else "none")) for line in self.lines]


def read_run(folder: Path, seconds: float = math.nan) -> RunRecord:
    """The records of a finished run folder; ValueError when it did not complete."""
    from server.checkpoint import load_checkpoint

    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        raise ValueError(f"{folder}: the run did not complete (no {COMPLETE_FILE})")
    rounds = int(json.loads(marker.read_text())["rounds"])
    lines = [json.loads(x) for x in (folder / METRICS_FILE).read_text().splitlines() if x.strip()]
    ckpt = load_checkpoint(folder / CHECKPOINTS_DIR)
    return RunRecord(folder, rounds, [x for x in lines if int(x.get("round", 0)) >= 1], dict(ckpt.state["run_config"]),
                     seconds)


def run_federation(cfg: FedConfig, clients: int) -> RunRecord:
    """Run `cfg` over `clients` in-process silos (partition ids 0..clients-1) and read its records back."""
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app as client_app
    from server.app import FederatedRun
    from simulations.runner.inprocess_grid import InProcessGrid

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # as inside a Flower run
    nodes: dict[int, dict[str, int | str]] = {100 + pid: {"partition-id": pid, "num-partitions": clients}
                                              for pid in range(clients)}
    started = time.perf_counter()
    FederatedRun(cfg, InProcessGrid(client_app, nodes, cfg.to_run_config())).run()
    seconds = time.perf_counter() - started
    log.info("federation %s: %d rounds in %.0f s", Path(cfg.out_dir).name, cfg.num_server_rounds, seconds)
    return read_run(Path(cfg.out_dir), seconds)


def silo_users(cfg: FedConfig, clients: int, raw_ids: list[str]) -> dict[int, set[str]]:
    """partition id -> the raw ids among `raw_ids` whose records the silo holds, read from the silo's own
    (pseudonymous) records: a raw id is found when its pseudonym under that silo's key is one of them."""
    from common.data.anonymize import pseudonym
    from common.federation.client_data import client_data, client_key

    found: dict[int, set[str]] = {}
    for pid in range(clients):
        held = {r.user_id for r in client_data(cfg, pid, clients).records}
        key = client_key(cfg, pid)
        found[pid] = {u for u in raw_ids if pseudonym(u, key) in held}
    return found
