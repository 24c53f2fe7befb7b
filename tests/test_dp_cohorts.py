"""Issue 23, leak 4: with DP the cohorts must be secret, or the accountant's subsampling amplification is void.

The attack: anyone who knows the run seed (the server, every client: it is in the run config) recomputes who was
sampled in each round. Before the fix both DP runs below drew the same cohorts from rng(seed, round); now a DP
run draws them from OS entropy, a run without DP stays reproducible from its seed, and the drawn cohorts are kept
in the checkpoint, through a resume.

The runs are server/app.py's FederatedRun over the in-process grid with a hand-made ClientApp (registration,
zero deltas), so that only the sampling is under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from common.federation.records import from_record
from common.names import GLOBAL
from common.protocol import ARRAYS, FedConfig
from server.app import FederatedRun
from server.checkpoint import latest_complete_round, load_checkpoint
from server.clients import sample_nodes
from simulations.runner.inprocess_grid import InProcessGrid
from tests.fed_fakes import set_task_identity
from tests.fed_replies import registration_reply, train_reply

NODES = 20


def _app() -> ClientApp:
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        return registration_reply(msg, int(context.node_config["partition-id"]), [], {GLOBAL: 10}, 5)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        sent = from_record(msg.content.array_records[ARRAYS])
        return train_reply(msg, {k: np.zeros_like(v) for k, v in sent.items()}, {GLOBAL: 10})

    return app


def _run(out: Path, rounds: int, dp: bool, **extra: object) -> dict[str, list[int]]:
    """The cohorts (partition ids per round) the last checkpoint records."""
    set_task_identity()
    noise = {"dp_noise_multiplier": 1.0, "dp_clip": 1.0} if dp else {}
    cfg = FedConfig(num_server_rounds=rounds, out_dir=str(out), backbone="tiny", fraction_train=0.25,
                    fraction_evaluate=0.0, seed=0, **noise, **extra)  # type: ignore[arg-type]
    nodes = {100 + pid: {"partition-id": pid, "num-partitions": NODES} for pid in range(NODES)}
    FederatedRun(cfg, InProcessGrid(_app(), nodes, cfg.to_run_config())).run()
    ckpt = load_checkpoint(out / "checkpoints", latest_complete_round(out / "checkpoints"))
    return ckpt.state["cohorts"]


def test_private_draws_differ_and_seeded_draws_repeat() -> None:
    nodes = list(range(100))
    seeded = [sample_nodes(nodes, 0.1, 0, 1) for _ in range(2)]
    private = [sample_nodes(nodes, 0.1, 0, 1, private=True) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert private[0] != private[1]  # equal with probability 1 / C(100, 10) ~ 6e-14
    assert all(len(c) == 10 and c == sorted(set(c)) and set(c) <= set(nodes) for c in private)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dp-cohorts")


def test_two_dp_runs_with_the_same_seed_sample_differently(root: Path) -> None:
    a, b = _run(root / "dp-a", 3, dp=True), _run(root / "dp-b", 3, dp=True)
    assert sorted(a) == sorted(b) == ["1", "2", "3"]
    assert all(len(a[r]) == len(b[r]) == 5 for r in a)
    assert a != b  # 5 of 20 in each of 3 rounds: equal with probability 15,504^-3


def test_a_run_without_dp_stays_reproducible(root: Path) -> None:
    a, b = _run(root / "plain-a", 3, dp=False), _run(root / "plain-b", 3, dp=False)
    assert a == b and sorted(a) == ["1", "2", "3"]


def test_a_resumed_dp_run_keeps_the_cohorts_it_drew(root: Path) -> None:
    out = root / "dp-resume"
    first = _run(out, 4, dp=True, stop_after_round=2)
    assert sorted(first) == ["1", "2"]
    resumed = _run(out, 4, dp=True, resume=True)
    assert sorted(resumed) == ["1", "2", "3", "4"]
    assert {r: resumed[r] for r in ("1", "2")} == first
    history = load_checkpoint(out / "checkpoints", 4).state["history"]
    assert [line["round"] for line in history] == [0, 1, 2, 3, 4]
    assert history[-1]["epsilon"] > history[2]["epsilon"] > 0  # the accountant continued across the resume
