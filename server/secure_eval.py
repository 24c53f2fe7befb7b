"""Secure evaluation: in a secure run the server learns evaluation metrics only as sums over the evaluation cohort.

Why and what is summed: common/secagg/evaluation.py. The round is the training round's SecAgg+ machinery
(server/secure.py `SecureRound`, its own group ids: purpose "eval") started by EVALUATE messages that carry the
banks to evaluate, as plain evaluation does; each client evaluates, keeps its encoded rows and replies with keys
only (client/secure_eval.py). After unmask the server decodes one sum per row: OVERALL over every surviving
client, and in segment mode one per segment over its registered members, a row with fewer than
max(2, min-segment-clients) members being neither uploaded nor learned: the clients check it against their own
configuration (client/secure_eval.py `eval_rules`) at masked input, and at unmask withhold the self-mask shares of
a row whose members dropped below it after upload. The round is SecAgg+ with everything the training round has
against a server that cheats: per-row mask graphs and self-mask seeds, and under secagg-identities signed key
advertisements and the consistency stage (signatures naming the evaluation, so none is valid in training).
Fewer evaluation clients than that, or an aborted round, gives a metrics line without evaluation figures and
`secagg_eval_aborted` saying why.

What it does not hide: the evaluation cohort and who dropped out (as for training), and the sums themselves: they
carry no DP noise and are not counted in epsilon (README, Privacy). A server that deviates from the protocol,
sending one client other banks than the rest in two evaluations that are otherwise alike, can difference the two
sums; clients do not check that they all evaluate the same banks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common.names import OVERALL
from common.protocol import ARRAYS, CONFIG, FedConfig
from common.secagg.client import ADVERTISE
from common.secagg.errors import SecAggAbort
from common.secagg.evaluation import EVAL_BITS, ROW, eval_fixed_point, eval_min_members, pooled_metrics, row_names
from common.secagg.server import RoundSpec
from common.secagg.wire import COHORT_SIZE, group_id, stage_config
from server.clients import ClientInfo
from server.secure import SecureRound, SecureSettings
from server.strategy import AdapterBankStrategy

log = logging.getLogger(__name__)

PURPOSE = "eval"


class SecureEvaluation(SecureRound):
    """One secure evaluation of one cohort; `evaluate` returns the metrics line's evaluation fields."""

    def __init__(self, grid: Grid, cfg: FedConfig, timeout: float) -> None:
        # the base class keeps an rng for central DP noise, which evaluation never draws
        super().__init__(grid, SecureSettings.from_config(cfg), timeout, np.random.default_rng(), purpose=PURPOSE)
        self.cfg = cfg

    def evaluate(self, strategy: AdapterBankStrategy, cohort: list[ClientInfo], rnd: int, run_id: int
                 ) -> dict[str, Any]:
        minimum = eval_min_members(self.cfg)
        if len(cohort) < minimum:
            reason = f"{len(cohort)} evaluation client(s), fewer than {minimum}: no sum is learned"
            log.warning("secure evaluation %d: %s", rnd, reason)
            return {"eval_clients": 0, "secagg_eval_aborted": reason}
        members: dict[str, list[int]] = {}
        for client in cohort:
            for name in row_names(self.settings.mode, client.segments):
                members.setdefault(name, []).append(client.node_id)
        nodes = tuple(sorted(c.node_id for c in cohort))
        spec = RoundSpec(run_id, rnd, nodes, {n: (tuple(sorted(m)), len(ROW)) for n, m in members.items()},
                         EVAL_BITS, self.settings.threshold_fraction, self.settings.degree, min_members=minimum,
                         identities=self.settings.identities)
        messages = [self._advertise(m, len(cohort), rnd) for m in strategy.evaluate_messages(cohort, rnd)]
        try:
            server = self._protocol(spec, messages, rnd)
            totals = server.totals()
        except SecAggAbort as exc:
            log.warning("secure evaluation %d aborted: %s", rnd, exc)
            return {"eval_clients": 0, "secagg_eval_aborted": str(exc)}
        fixed = eval_fixed_point(self.cfg, len(cohort))
        out = pooled_metrics({name: fixed.decode(total) for name, total in totals.items()})
        out["secagg_eval_aborted"] = "" if OVERALL in totals else f"the {OVERALL} row was not summed"
        out["secagg_eval_dropped_by_stage"] = dict(self.traffic.dropped)
        return out

    def _advertise(self, msg: Message, cohort_size: int, rnd: int) -> Message:
        """The strategy's evaluate message with the advertise stage's fields and the evaluation's group id."""
        config = dict(msg.content.config_records[CONFIG])
        config.update(stage_config(ADVERTISE, rnd, {COHORT_SIZE: cohort_size}, "request"))
        content = RecordDict({ARRAYS: msg.content.array_records[ARRAYS], CONFIG: ConfigRecord(config)})
        return Message(content, msg.metadata.dst_node_id, MessageType.EVALUATE,
                       group_id=group_id(rnd, ADVERTISE, PURPOSE))
