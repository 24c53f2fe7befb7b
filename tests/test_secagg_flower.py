"""Our secure sum against Flower's own SecAgg+ (the legacy `SecAggPlusWorkflow` + `secaggplus_mod`), run
in-process on the same vectors through a Grid that delivers every message as a serialized copy."""

from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from common.secagg.fixedpoint import FixedPoint
from common.secagg.inmemory import run_in_memory
from common.secagg.layout import BankLayout, bank_vector, split_bank
from common.secagg.server import RoundSpec
from simulations.runner.inprocess_grid import InProcessGrid
from tests.fed_fakes import set_task_identity

NODES = (11, 12, 13, 14, 15)
LENGTH = 300
CLIP = 1.0
QUANTIZATION_RANGE = 2**22


def _inputs() -> tuple[dict[int, np.ndarray], dict[int, int]]:
    rng = np.random.default_rng(5)
    return ({n: rng.uniform(-0.9, 0.9, LENGTH) for n in NODES},
            {n: int(w) for n, w in zip(NODES, rng.integers(1, 40, len(NODES)), strict=True)})


def _flower_mean(values: dict[int, np.ndarray], weights: dict[int, int]) -> np.ndarray:
    class VectorClient(NumPyClient):
        def __init__(self, node: int) -> None:
            self.node = node

        def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
            return [values[self.node]], weights[self.node], {}

    app = ClientApp(client_fn=lambda ctx: VectorClient(ctx.node_id).to_client(), mods=[secaggplus_mod])
    grid = InProcessGrid(app, {n: {} for n in NODES}, {})
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=len(NODES),
                      min_available_clients=len(NODES), initial_parameters=ndarrays_to_parameters([np.zeros(LENGTH)]))
    context = LegacyContext(Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            config=ServerConfig(num_rounds=1), strategy=strategy)
    workflow = SecAggPlusWorkflow(num_shares=len(NODES), reconstruction_threshold=3, max_weight=max(weights.values()),
                                  clipping_range=CLIP, quantization_range=QUANTIZATION_RANGE)
    DefaultWorkflow(fit_workflow=workflow)(grid, context)
    return context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()[0]


def test_weighted_mean_equals_flowers_legacy_secaggplus() -> None:
    """Same vectors and example counts: our segment-mode weighted mean and Flower's SecAgg+ FedAvg agree within
    the sum of both quantization errors (ours: n * step / 2 / total weight; Flower's: one stochastic rounding
    step 2 * clip / quantization_range per client on values scaled by weight / max_weight, plus the weight
    ratios' own rounding)."""
    # Prepare
    set_task_identity()
    values, weights = _inputs()
    layout = BankLayout("global", ("global::v",), ((LENGTH,),))
    fixed = FixedPoint(bits=64, clip=CLIP, max_weight=float(max(weights.values())), max_clients=len(NODES))
    spec = RoundSpec(run_id=1, server_round=1, cohort=NODES, vectors={"global": (NODES, layout.length)})
    inputs = {n: {"global": fixed.encode(bank_vector(layout, {"global::v": values[n]}, weights[n], CLIP))}
              for n in NODES}
    # Execute
    ours_sum = split_bank(layout, fixed.decode(run_in_memory(spec, inputs).totals["global"]))
    ours = ours_sum.sums["global::v"] / ours_sum.weight
    theirs = _flower_mean(values, weights)
    # Assert
    total = sum(weights.values())
    ratio_total = total / max(weights.values())
    flower_error = len(NODES) * (2 * CLIP / QUANTIZATION_RANGE) / ratio_total + len(NODES) * CLIP / QUANTIZATION_RANGE
    ours_error = len(NODES) * fixed.step / 2 / total
    plain = sum(weights[n] * values[n] for n in NODES) / total
    assert ours_sum.contributors == len(NODES) and ours_sum.weight == total
    assert np.max(np.abs(ours - plain)) <= ours_error + 1e-12
    assert np.max(np.abs(ours - theirs)) <= flower_error + ours_error
