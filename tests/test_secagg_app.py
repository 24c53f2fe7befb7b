"""The whole app in one process: server/app.py's FederatedRun and client/app.py's ClientApp (tiny backbone, real
training and evaluation) over the in-process Grid, plain and in both secure modes, same seed, same client
secrets; arch text in all three modes, arch seq plain and segment-hidden."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from client.app import app as client_app
from common.data.schema import write_marketplace
from common.data.synthetic import generate_marketplace
from common.federation.task import client_data
from common.protocol import FedConfig
from server.app import FederatedRun
from server.checkpoint import latest_complete_round, load_checkpoint
from simulations.runner.inprocess_grid import InProcessGrid
from tests.bank_checks import assert_trained_close
from tests.fed_fakes import set_task_identity
from tests.test_secagg_rounds import _strings

pytestmark = pytest.mark.slow  # starts real Flower processes (`make check` leaves it out)

CLIENTS = 3
ROUNDS = 2


def _run(root: Path, mode: str, banks: str = "", arch: str = "text"
         ) -> tuple[dict[str, dict[str, np.ndarray]], list[Message]]:
    set_task_identity()
    cfg = FedConfig(num_server_rounds=ROUNDS, data_dir=str(root / "data"), out_dir=str(root / f"{arch}-{mode}"),
                    backbone="tiny", min_segment_clients=2, lr=0.005 if arch == "text" else 0.001, batch_size=8,
                    secure_aggregation=mode, secagg_banks=banks, client_state_dir=str(root / "state"), arch=arch)
    replies: list[Message] = []

    def keep(msg: Message, reply: Message) -> list[Message]:
        replies.append(reply)
        return [reply]

    nodes = {100 + pid: {"partition-id": pid, "num-partitions": CLIENTS} for pid in range(CLIENTS)}
    FederatedRun(cfg, InProcessGrid(client_app, nodes, cfg.to_run_config(), intercept=keep)).run()
    ckpt = Path(cfg.out_dir) / "checkpoints"
    last = latest_complete_round(ckpt)
    assert last == ROUNDS
    return load_checkpoint(ckpt, last).banks, replies


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secagg-app")


@pytest.fixture(scope="module")
def runs(root: Path) -> dict[str, tuple[dict[str, dict[str, np.ndarray]], list[Message]]]:
    write_marketplace(generate_marketplace(120, 300, seed=3), root / "data")
    plain, plain_replies = _run(root, "off")
    probe = FedConfig(data_dir=str(root / "data"), backbone="tiny", client_state_dir=str(root / "state"))
    names = sorted({s for pid in range(CLIENTS) for s in client_data(probe, pid, CLIENTS).segment_names})
    return {"off": (plain, plain_replies), "segment": _run(root, "segment"),
            "segment-hidden": _run(root, "segment-hidden", ",".join(names)),
            "seq-off": _run(root, "off", arch="seq"),
            "seq-segment-hidden": _run(root, "segment-hidden", ",".join(names), arch="seq")}


@pytest.mark.parametrize("mode", ["segment", "segment-hidden", "seq-segment-hidden"])
def test_secure_runs_end_with_the_plain_runs_banks(runs: dict, root: Path, mode: str) -> None:
    """After 2 rounds of real training, every array of every bank of a secure run equals the plain run's (text:
    LoRA banks; seq: the sequential model's banks, item rows and biases included) up to 1% of how far training
    moved it (tests/bank_checks.py says why not bit-exact)."""
    plain_key = "seq-off" if mode.startswith("seq") else "off"
    plain, _ = runs[plain_key]
    secure, _ = runs[mode]
    start = load_checkpoint(root / ("seq-off" if mode.startswith("seq") else "text-off") / "checkpoints", 0).banks
    moved = {b for b in plain if all(np.linalg.norm(v - start[b][k]) > 0 for k, v in plain[b].items())}
    assert "global" in moved and len(moved) > 2  # banks with one member among the 3 clients stay (min 2)
    assert_trained_close(secure, plain, start, label=mode)


def test_hidden_mode_never_sends_a_segment_name(runs: dict) -> None:
    """Registration, secure stages and evaluation: no reply of a segment-hidden run names a segment, while
    the plain run's registration does (the check can see one)."""
    segment_words = [w for r in runs["off"][1] for w in _strings(r.content) if "region=" in w or "season=" in w]
    assert segment_words
    hidden = [w for r in runs["segment-hidden"][1] for w in _strings(r.content)]
    assert hidden and not [w for w in hidden if "region" in w or "season" in w]
