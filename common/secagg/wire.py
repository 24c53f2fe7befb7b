"""The wire format of the secure-aggregation stages, shared by both shells (client/secure.py, server/secure.py).

Each stage's request and reply is a config record ("config") whose fields are listed in FIELDS with their
types; the masked vectors of the masked-input reply travel in the array record ("arrays") as unsigned integer
arrays. Every message names its stage and round ("secagg-stage", "secagg-round"); a payload is decoded only if
it holds exactly the listed fields with the listed types (ProtocolError names the first problem), so a reply
from another stage or round, or one with extra or missing fields, never reaches the protocol code.

No Flower import: the shells build the records from these plain mappings, and `read_vectors` reads anything
shaped like Flower's `Array` (dtype, shape, data, numpy()).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from common.secagg.client import ADVERTISE, CONSISTENCY, MASK, SHARE, UNMASK
from common.secagg.errors import ProtocolError, StaleMessage

STAGE = "secagg-stage"
ROUND = "secagg-round"
COHORT_SIZE = "secagg-cohort-size"  # the advertise (train) request: the most summands, for the fixed-point scale
COHORT_PREFIX = "cohort/"  # share-keys and masked-input requests: "cohort/<vector name>" -> its members
IDS, BLOBS, INT, BYTES, STRS = "ids", "blobs", "int", "bytes", "strs"
FIELDS: dict[str, dict[str, dict[str, str]]] = {
    ADVERTISE: {"request": {COHORT_SIZE: INT},
                "reply": {"c-pk": BYTES, "s-pk": BYTES, "b-commit": BYTES, "commit-names": STRS, "commits": BLOBS,
                          "id-pk": BYTES, "signature": BYTES}},
    SHARE: {"request": {"roster-ids": IDS, "roster-c": BLOBS, "roster-s": BLOBS, "roster-commit": BLOBS,
                        "roster-id": BLOBS, "roster-sig": BLOBS, "vector-names": STRS},
            "reply": {"receivers": IDS, "ciphertexts": BLOBS}},
    MASK: {"request": {"u2": IDS, "senders": IDS, "ciphertexts": BLOBS, "vector-names": STRS}, "reply": {}},
    CONSISTENCY: {"request": {"survivors": IDS}, "reply": {"signature": BYTES}},
    UNMASK: {"request": {"survivors": IDS, "dropped": IDS, "signers": IDS, "signatures": BLOBS},
             "reply": {"owners": IDS, "names": STRS, "shares": BLOBS}},
}
_CHECKS = {
    IDS: lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v),
    BLOBS: lambda v: isinstance(v, list) and all(isinstance(x, bytes) for x in v),
    STRS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
    BYTES: lambda v: isinstance(v, bytes),
}


def group_id(server_round: int, stage: str, purpose: str = "") -> str:
    """Distinct per stage, round and purpose (a round's training and its evaluation, server/secure_eval.py), so a
    reply can be matched to the exact request it answers."""
    return f"secagg-{purpose}-r{server_round}-{stage}" if purpose else f"secagg-r{server_round}-{stage}"


def stage_config(stage: str, server_round: int, payload: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The config-record fields of a request or reply; the payload must hold exactly the stage's fields."""
    fields = FIELDS[stage][kind]
    extra = [k for k in payload if k not in fields and not (kind == "request" and k.startswith(COHORT_PREFIX))]
    missing = [k for k in fields if k not in payload]
    if extra or missing:
        raise ValueError(f"{stage} {kind}: unexpected fields {extra}, missing {missing}")
    return {STAGE: stage, ROUND: server_round, **payload}


def read_config(config: Mapping[str, Any], stage: str, server_round: int, kind: str) -> dict[str, Any]:
    """The payload of a stage message, checked field by field; ProtocolError names the problem."""
    if config.get(STAGE) != stage:
        raise StaleMessage(f"message is for stage {config.get(STAGE)!r}, expected {stage!r}")
    if config.get(ROUND) != server_round:
        raise StaleMessage(f"message is for round {config.get(ROUND)!r}, expected {server_round}")
    fields = FIELDS[stage][kind]
    payload = {k: v for k, v in config.items() if k not in (STAGE, ROUND)}
    for key, value in payload.items():
        kind_of = IDS if (kind == "request" and key.startswith(COHORT_PREFIX)) else fields.get(key)
        if kind_of is None:
            raise ProtocolError(f"{stage} {kind} has an unexpected field {key!r}")
        if not _CHECKS[kind_of](value):
            raise ProtocolError(f"{stage} {kind} field {key!r} has the wrong type")
    missing = [k for k in fields if k not in payload]
    if missing:
        raise ProtocolError(f"{stage} {kind} lacks {missing}")
    return payload


def stage_in(config: Mapping[str, Any]) -> tuple[str, int] | None:
    """(stage, round) of a server message's config when it drives a secure stage; None for an ordinary one."""
    stage, rnd = config.get(STAGE), config.get(ROUND)
    if stage is None:
        return None
    if stage not in FIELDS or not isinstance(rnd, int) or isinstance(rnd, bool):
        raise ProtocolError(f"unknown secure-aggregation stage {stage!r} or round {rnd!r}")
    return str(stage), rnd


def read_vectors(arrays: Mapping[str, Any], lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The masked vectors of a masked-input reply (`arrays`: name -> Flower Array): exactly the expected
    names, 1-D unsigned ints of the expected lengths; the header is checked before any bytes are decoded."""
    if set(arrays) != set(lengths):
        raise ProtocolError(f"masked-input reply carries {sorted(arrays)[:5]}, expected {sorted(lengths)[:5]}")
    out = {}
    for name, array in arrays.items():
        length = lengths[name]
        if array.dtype not in ("uint32", "uint64") or tuple(array.shape) != (length,):
            raise ProtocolError(f"{name}: {array.dtype} {tuple(array.shape)}, expected unsigned ({length},)")
        if not isinstance(array.data, bytes) or len(array.data) > 8 * length + 4096:
            raise ProtocolError(f"{name}: not {length} words of bytes")
        try:
            value = array.numpy()
        except (ValueError, TypeError, EOFError, OSError) as exc:
            raise ProtocolError(f"{name}: corrupt array ({exc})") from exc
        if value.dtype.kind != "u" or value.shape != (length,):
            raise ProtocolError(f"{name}: decodes to {value.dtype} {value.shape}")
        out[name] = value
    return out
