"""ClientApp cold start: from a fresh interpreter's start to the end of its first training batch.

In a deployment Flower 1.42 starts one ClientApp process per message, so this is paid by every message. Each
measurement spawns a new `python` that does what such a process does with one train message: import the app
module (`client.app`), read the node's settings and data (`node_settings`), and run the train handler on the
received state; a global optimizer hook stamps the first optimizer step (the end of the first training batch).
The figures are wall seconds from spawn, split into phases, plus the child's own CPU seconds up to the first
batch (close to the wall time an idle machine would take: the path is single-threaded but for torch's kernels),
and whether transformers was imported.

"cold" is a node whose cache folder is empty (a first message ever); "warm" is the next process, which finds
what the first one wrote to the node's disk (common/federation/node_cache.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
stamps = {}
import torch.optim.optimizer as _opt
def _first(optimizer, args, kwargs):
    if "first_batch" not in stamps:
        stamps["first_batch"] = time.time()
        stamps["cpu_first_batch"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime + \
            resource.getrusage(resource.RUSAGE_SELF).ru_stime
_opt.register_optimizer_step_post_hook(_first)
stamps["torch"] = time.time()
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from client import app as client_app
stamps["imports"] = time.time()
args = json.loads(sys.argv[1])
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
context = Context(run_id=1, node_id=1, node_config=args["node_config"], state=RecordDict(),
                  run_config=args["run_config"])
client_app.node_settings(context)
stamps["data"] = time.time()
with np.load(args["received"], allow_pickle=False) as z:
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(z[k])) for k in z.files})
message = Message(RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), 1, "train")
reply = client_app.app(message, context)
stamps["reply"] = time.time()
assert not reply.has_error(), reply.error
print(json.dumps({**stamps, "transformers": "transformers" in sys.modules}))
"""


def _received(run_config: dict[str, Any], node_config: dict[str, Any], path: Path) -> None:
    """The starting state a server would send this node, saved for the child (computed here, once)."""
    import numpy as np

    from common.federation import task
    from common.protocol import FedConfig

    cfg = FedConfig.from_run_config({**run_config, **{k: str(v) for k, v in node_config.items()
                                                       if k in ("data-dir", "client-state-dir")}})
    data = task.client_data(cfg, int(node_config["partition-id"]), int(node_config["num-partitions"]),
                            own_data="data-dir" in node_config)
    np.savez(path, **task.initial_state(cfg, data.adapter_names))  # type: ignore[arg-type]


def one_start(run_config: dict[str, Any], node_config: dict[str, Any], received: Path) -> dict[str, Any]:
    """One fresh ClientApp-like process; seconds from spawn to each phase's end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = json.dumps({"run_config": run_config, "node_config": node_config, "received": str(received)})
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, args], capture_output=True, text=True, cwd=str(ROOT), env=env,
                         timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"cold-start child failed: {out.stderr[-2000:]}")
    stamps = json.loads(out.stdout.strip().splitlines()[-1])
    return {"torch_s": stamps["torch"] - t0, "imports_s": stamps["imports"] - t0, "data_s": stamps["data"] - t0,
            "first_batch_s": stamps["first_batch"] - t0, "reply_s": stamps["reply"] - t0,
            "cpu_first_batch_s": stamps["cpu_first_batch"], "transformers": stamps["transformers"]}


def bench_cold_start(data: Path, work: Path, arch: str, backbone: str = "", nodes: int = 4,
                     config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cold (empty node cache) then warm (the next process) start of node 0 of `nodes` on `data`."""
    state = work / f"state-{arch}"
    shutil.rmtree(state, ignore_errors=True)
    run_config = {"arch": arch, "backbone": backbone, "data-dir": str(data), **(config or {})}
    node_config = {"partition-id": 0, "num-partitions": nodes, "client-state-dir": str(state)}
    received = work / f"received-{arch}.npz"
    work.mkdir(parents=True, exist_ok=True)
    _received(run_config, node_config, received)
    shutil.rmtree(state / "cache", ignore_errors=True)  # nothing from preparing the state counts as warm
    cold = one_start(run_config, node_config, received)
    warm = one_start(run_config, node_config, received)
    return {"arch": arch, "backbone": backbone or "minilm", "cold": cold, "warm": warm}


def format_cold_start(rows: list[dict[str, Any]]) -> str:
    lines = ["| arch | backbone | node cache | imports s | + data s | first batch s | (CPU s) | reply s | "
             "transformers imported |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        for state in ("cold", "warm"):
            r = row[state]
            lines.append(f"| {row['arch']} | {row['backbone']} | {state} | {r['imports_s']:.2f} | {r['data_s']:.2f} | "
                         f"{r['first_batch_s']:.2f} | {r['cpu_first_batch_s']:.2f} | {r['reply_s']:.2f} | "
                         f"{'yes' if r['transformers'] else 'no'} |")
    return "\n".join(lines)
