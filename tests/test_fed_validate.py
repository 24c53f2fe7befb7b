"""Reply validation at the message boundary: one test per rejection reason, plus the accepted cases."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from common.names import GLOBAL
from common.protocol import ARRAYS, CONFIG, METRICS, looks_like_backbone, metric_key
from server.validate import (
    REASONS,
    Rejected,
    ValidationConfig,
    parse_eval_reply,
    parse_registration,
    parse_train_reply,
    screen_senders,
)
from tests.fed_fakes import set_task_identity
from tests.fed_replies import client, eval_reply, eval_sums, force_set, registration_reply, train_reply

SENT = {
    "global::layer.0.down.weight": np.zeros((4, 8), dtype=np.float32),
    "region=EU::layer.0.down.weight": np.zeros((4, 8), dtype=np.float32),
}
CFG = ValidationConfig(max_norm=10.0, adapter_keys=("region", "season"), metric_keys=("region", "season"))
CLIENT = client(7, 3, ("region=EU",), examples=20, eval_users=10)
COUNTS = {GLOBAL: 12, "region=EU": 12}


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _msg(node: int = 7, kind: str = MessageType.TRAIN) -> Message:
    return Message(RecordDict({CONFIG: ConfigRecord({})}), node, kind, group_id="1")


def _good() -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, 0.01, dtype=np.float32) for k, v in SENT.items()}


def _reason(fn: Callable[[], object]) -> str:
    with pytest.raises(Rejected) as info:
        fn()
    return info.value.reason


def _train(delta: dict[str, np.ndarray], counts: dict[str, int] = COUNTS) -> str:
    return _reason(lambda: parse_train_reply(train_reply(_msg(), delta, counts), SENT, CLIENT, CFG))


def test_valid_train_reply_is_accepted_with_per_bank_weights() -> None:
    """A delta with exactly the sent keys, shapes and dtype, finite and small, passes with its bank counts."""
    counts = {GLOBAL: 12, "region=EU": 5}
    update = parse_train_reply(train_reply(_msg(), _good(), counts), SENT, CLIENT, CFG)
    assert update.bank_weights == counts and update.partition_id == 3 and update.loss == 1.0
    np.testing.assert_array_equal(update.delta["global::layer.0.down.weight"], _good()["global::layer.0.down.weight"])


def test_bank_with_no_examples_is_not_weighted() -> None:
    """A bank the client trained no pair of is left out of its weights (it is not in that bank's cohort)."""
    update = parse_train_reply(train_reply(_msg(), _good(), {GLOBAL: 12, "region=EU": 0}), SENT, CLIENT, CFG)
    assert update.bank_weights == {GLOBAL: 12}


def test_backbone_key_is_rejected() -> None:
    """A reply that sneaks a backbone tensor in is refused even if everything else is fine."""
    delta = _good()
    delta["encoder.layer.0.attention.self.query.weight"] = np.zeros((4, 4), dtype=np.float32)
    assert _train(delta) == "backbone-key"
    assert looks_like_backbone("embeddings.word_embeddings.weight")
    assert not looks_like_backbone("global::encoder.layer.0.attention.output.adapter.down.weight")


def test_unexpected_and_missing_keys_are_rejected() -> None:
    """An adapter the server did not send (another segment's) or a partial delta is refused."""
    delta = _good()
    delta["region=NA::layer.0.down.weight"] = np.zeros((4, 8), dtype=np.float32)
    assert _train(delta) == "unexpected-key"
    delta = _good()
    delta.pop("region=EU::layer.0.down.weight")
    assert _train(delta) == "missing-key"


def test_shape_dtype_and_corrupt_bytes_are_checked() -> None:
    """Wrong shape, wrong dtype and bytes that do not decode each give their own reason, never an exception."""
    delta = _good()
    delta["global::layer.0.down.weight"] = np.zeros((8, 4), dtype=np.float32)
    assert _train(delta) == "shape"
    delta = _good()
    delta["global::layer.0.down.weight"] = np.zeros((4, 8), dtype=np.float64)
    assert _train(delta) == "dtype"
    reply = train_reply(_msg(), _good(), COUNTS)
    good = reply.content[ARRAYS]["global::layer.0.down.weight"]
    garbage = Array(good.dtype, good.shape, good.stype, b"\x93NUMPY garbage")
    reply.content[ARRAYS]["global::layer.0.down.weight"] = garbage
    assert _reason(lambda: parse_train_reply(reply, SENT, CLIENT, CFG)) == "corrupt-array"
    huge = {"descr": "<f4", "fortran_order": False, "shape": (10**9,)}  # a header that asks for 4 GB
    fake = Array(good.dtype, good.shape, good.stype, _npy_header(huge) + good.data[128:])
    reply.content[ARRAYS]["global::layer.0.down.weight"] = fake
    assert _reason(lambda: parse_train_reply(reply, SENT, CLIENT, CFG)) == "corrupt-array"


def _npy_header(header: dict[str, object]) -> bytes:
    import io

    fh = io.BytesIO()
    np.lib.format.write_array_header_1_0(fh, header)
    return fh.getvalue()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected(bad: float) -> None:
    """NaN or inf anywhere in the delta is refused."""
    delta = _good()
    delta["region=EU::layer.0.down.weight"][1, 2] = bad
    assert _train(delta) == "non-finite"


def test_norm_bound_is_enforced() -> None:
    """A delta whose L2 norm exceeds the bound is refused; one just below is accepted."""
    delta = {k: np.full(v.shape, 1.0, dtype=np.float32) for k, v in SENT.items()}  # norm = sqrt(64) = 8
    cfg = ValidationConfig(max_norm=8.5)
    assert parse_train_reply(train_reply(_msg(), delta, COUNTS), SENT, CLIENT, cfg) is not None
    assert _reason(lambda: parse_train_reply(train_reply(_msg(), delta, COUNTS), SENT, CLIENT,
                                             ValidationConfig(max_norm=7.5))) == "norm"


@pytest.mark.parametrize("counts", [
    {GLOBAL: 0, "region=EU": 0},  # nothing trained
    {GLOBAL: 21, "region=EU": 5},  # more than registered (20)
    {GLOBAL: 12, "region=EU": 21},
    {GLOBAL: 10**12, "region=EU": 5},  # the attacker's weight
    {GLOBAL: 12},  # a bank's count missing
])
def test_bad_counts_are_rejected(counts: dict[str, object]) -> None:
    """Per-bank counts are ints bounded by the node's registered counts; num-examples is the global count."""
    assert _train(_good(), counts) == "num-examples"  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, 12.0, [12], "12"])
def test_counts_that_are_not_ints_are_rejected(value: object) -> None:
    """A bool, float, list or string where a count belongs is refused, even past Flower's own type checks."""
    reply = train_reply(_msg(), _good(), COUNTS)
    force_set(reply.content[METRICS], "examples/global", value)
    assert _reason(lambda: parse_train_reply(reply, SENT, CLIENT, CFG)) == "num-examples"


def test_forged_train_metrics_are_rejected() -> None:
    """A non-finite loss, an unknown metric or an extra bank count is refused."""
    for patch, reason in (({"train-loss": float("nan")}, "metrics"), ({"accuracy": 1.0}, "metrics"),
                          ({"examples/region=NA": 3}, "num-examples"), ({"num-examples": 11}, "num-examples")):
        reply = train_reply(_msg(), _good(), COUNTS)
        reply.content[METRICS].update(patch)
        assert _reason(lambda r=reply: parse_train_reply(r, SENT, CLIENT, CFG)) == reason, patch


def test_missing_or_extra_records_are_malformed() -> None:
    """No metrics record, or a record the protocol does not have, is refused before anything is decoded."""
    reply = Message(RecordDict({ARRAYS: ArrayRecord({})}), reply_to=_msg())
    assert _reason(lambda: parse_train_reply(reply, SENT, CLIENT, CFG)) == "malformed"
    reply = train_reply(_msg(), _good(), COUNTS)
    reply.content["smuggled"] = ConfigRecord({"x": 1})
    assert _reason(lambda: parse_train_reply(reply, SENT, CLIENT, CFG)) == "malformed"


def test_evaluation_reply_is_bounded() -> None:
    """Sums lie in [0, users], users never exceed what the node registered, segments are well formed."""
    good = eval_sums({"overall": (10, 0.3), "region=EU": (10, 0.3)}, 10)
    rows = parse_eval_reply(eval_reply(_msg(kind=MessageType.EVALUATE), good), CLIENT, CFG)
    assert rows["overall"]["users"] == 10 and rows["region=EU"]["ndcg@10"] == pytest.approx(3.0)
    forged = [
        {**good, metric_key("overall", "ndcg@10"): 1e6},  # the forged NDCG
        eval_sums({"overall": (11, 0.3)}, 11),  # more users than registered
        {**good, metric_key("zone=x", "users"): 1.0},  # an unknown segment key
        {**good, metric_key("overall", "ndcg@10"): float("nan")},
        {k: v for k, v in good.items() if k != metric_key("region=EU", "hr@10")},  # incomplete row
        {**good, "eval-users": 9.0},  # overall row disagrees
        {**good, metric_key("overall", "hr@10"): -0.5},
    ]
    for sums in forged:
        reply = eval_reply(_msg(kind=MessageType.EVALUATE), sums)
        assert _reason(lambda r=reply: parse_eval_reply(r, CLIENT, CFG)) == "eval-metrics", sums
    empty = Message(RecordDict({}), reply_to=_msg(kind=MessageType.EVALUATE))
    assert _reason(lambda: parse_eval_reply(empty, CLIENT, CFG)) == "malformed"


def test_registration_is_validated() -> None:
    """Partition id, segment names and counts are checked; '::' in a segment name cannot abort a run."""
    ok = parse_registration(registration_reply(_msg(kind=MessageType.QUERY), 4, ["region=EU"],
                                               {GLOBAL: 30, "region=EU": 30}, 6), CFG)
    assert ok.partition_id == 4 and ok.segments == ("region=EU",) and ok.bank_examples[GLOBAL] == 30
    cases = [
        ((-1, ["region=EU"], {GLOBAL: 3, "region=EU": 3}, 1), "partition-id"),
        ((True, ["region=EU"], {GLOBAL: 3, "region=EU": 3}, 1), "partition-id"),
        ((1, ["region=EU::x"], {GLOBAL: 3, "region=EU::x": 3}, 1), "segment-name"),
        ((1, ["zone=x"], {GLOBAL: 3, "zone=x": 3}, 1), "segment-name"),
        ((1, ["region=EU"], {GLOBAL: 3, "region=EU": 4}, 1), "counts"),
        ((1, ["region=EU"], {GLOBAL: 10**12, "region=EU": 3}, 1), "counts"),
        ((1, ["region=EU"], {GLOBAL: 3}, 1), "malformed"),
    ]
    for args, reason in cases:
        reply = registration_reply(_msg(kind=MessageType.QUERY), *args)  # type: ignore[arg-type]
        assert _reason(lambda r=reply: parse_registration(r, CFG)) == reason, args


def test_unknown_and_duplicate_senders_are_screened() -> None:
    """Only the single reply of an expected node goes on; a node that answered twice loses both."""
    replies = [train_reply(_msg(7), _good(), COUNTS), train_reply(_msg(8), _good(), COUNTS),
               train_reply(_msg(8), _good(), COUNTS), train_reply(_msg(99), _good(), COUNTS)]
    single, reasons, answered = screen_senders(replies, {7, 8, 9})
    assert set(single) == {7} and answered == {7, 8}
    assert reasons == {"duplicate-sender": 2, "unknown-sender": 1}


def test_reasons_are_listed_and_config_validates() -> None:
    """Every reason is listed once (they are metric names); a non-positive bound is refused."""
    assert len(set(REASONS)) == len(REASONS)
    with pytest.raises(ValueError, match="max_norm"):
        ValidationConfig(max_norm=0)
