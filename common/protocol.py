"""The federation's wire and configuration contract, defined once for client, server and simulation.

No Flower import here: these are plain names and a typed view of the run config, so `common/` stays usable
without the federation stack. Record names and keys follow Flower's conventions ("arrays", "config",
"metrics", "num-examples") so the messages read like any Flower app's.

Messages (Flower Message API):
- query   server -> every node once at start: "who are you?"; reply config record: partition-id + the
          node's segment adapter names (see server/strategy.py on what this reveals).
- train   server -> sampled node: arrays = current global + the node's segment adapters (full weights),
          config = round hyper-parameters; reply: arrays = DELTA for exactly those keys, metrics with
          num-examples and training loss, config with the segment adapter names it trained.
- evaluate server -> node: arrays as for train; reply metrics: per-segment sums of ndcg/hr and counts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.names import ADAPTER_KINDS, DEFAULT_SERVER_LR, KEY_SEP, PARTITION_MODES, STRATEGIES

# Record names inside a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
REPLY_RECORDS = frozenset({ARRAYS, CONFIG, METRICS})

# Keys.
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
SEGMENTS = "segments"  # list of segment adapter names, e.g. ["region=EU", "season=holiday"]
SERVER_ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
LR = "lr"
PROXIMAL_MU = "proximal-mu"
TRAIN_LOSS = "train-loss"
EVAL_USERS = "eval-users"

# The mixture kind personalises through its learned gate: its experts and gate are one global adapter,
# averaged across every client, rather than one mixture per segment.
GLOBAL_ONLY_KINDS = frozenset({"mixture"})


# Names of a Hugging Face encoder's own tensors; an adapter key always starts with "<adapter name>::".
_BACKBONE_PATTERN = re.compile(
    r"^(bert\.|roberta\.|model\.)?(encoder\.layer\.|embeddings\.|pooler\.|word_embeddings|position_embeddings)"
)


def looks_like_backbone(key: str) -> bool:
    """True for keys that name backbone tensors rather than "<adapter name>::<param path>" adapter tensors."""
    return KEY_SEP not in key or bool(_BACKBONE_PATTERN.match(key))


def metric_key(segment: str, name: str) -> str:
    """Flat metric key for per-segment sums: "seg/region=EU/ndcg@10" (segment "overall" for all users)."""
    return f"seg/{segment}/{name}"


def parse_metric_key(key: str) -> tuple[str, str] | None:
    """(segment, metric name) for a key made by `metric_key`, None otherwise."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != "seg":
        return None
    return parts[1], parts[2]


def segment_adapter_names(segments: Mapping[str, str], keys: tuple[str, ...]) -> list[str]:
    """The adapter names of a client's segments for the configured keys, e.g. ["region=EU"]."""
    return [f"{k}={segments[k]}" for k in keys if k in segments and segments[k] != ""]


@dataclass(frozen=True)
class FedConfig:
    """The run config (`[tool.flwr.app.config]` + `--run-config`), parsed once into typed fields.

    Field names are the kebab-case keys with '_' for '-'. Strings stand for "none" with "" because Flower's
    run config only carries bool/int/float/str.
    """

    num_server_rounds: int = 3
    seed: int = 0
    data_dir: str = ""
    out_dir: str = ""
    client_state_dir: str = ""  # where each client keeps its own secrets (see common/federation/client_data.py)
    backbone: str = "tiny"
    adapter_kind: str = "lora"
    segment_keys: str = "region,season"
    partition_mode: str = "per-segment"
    strategy: str = "fedavg"
    server_lr: float = 0.0  # 0: the strategy's default (common.names.DEFAULT_SERVER_LR)
    proximal_mu: float = 0.0
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_segment_clients: int = 2
    local_epochs: int = 1
    batch_size: int = 16
    lr: float = 3e-3  # measured best of 1e-3 / 3e-3 for LoRA on MiniLM (common/rec/train.py)
    max_len: int = 64
    max_train_users: int = 0
    max_eval_users: int = 0
    max_delta_norm: float = 100.0
    resume: bool = False
    stop_after_round: int = 0
    client_threads: int = 1
    round_timeout: float = 3600.0

    def __post_init__(self) -> None:
        positive = ("num_server_rounds", "local_epochs", "batch_size", "max_len", "client_threads")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.fraction_train == 0:
            raise ValueError("fraction-train must be > 0, got 0")
        if self.adapter_kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter-kind {self.adapter_kind!r} is not one of {', '.join(ADAPTER_KINDS)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition-mode {self.partition_mode!r} is not one of {', '.join(PARTITION_MODES)}")
        if self.strategy == "fedprox" and not self.proximal_mu > 0:
            raise ValueError("strategy fedprox needs proximal-mu > 0 (with 0 it is FedAvg); set --proximal-mu")
        if self.strategy != "fedprox" and self.proximal_mu != 0:
            raise ValueError(f"proximal-mu={self.proximal_mu} is used only by strategy fedprox, not {self.strategy}")
        if not (self.server_lr >= 0 and math.isfinite(self.server_lr)):
            raise ValueError(f"server-lr must be >= 0 (0: the strategy's default), got {self.server_lr}")
        for name in ("lr", "max_delta_norm", "round_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.min_segment_clients < 1:
            raise ValueError(f"min-segment-clients must be >= 1, got {self.min_segment_clients}")
        if self.stop_after_round < 0 or self.max_train_users < 0 or self.max_eval_users < 0:
            raise ValueError("stop-after-round, max-train-users and max-eval-users must be >= 0")
        for key in self.segment_key_tuple:
            if not key.isidentifier():
                raise ValueError(f"segment key {key!r} in segment-keys={self.segment_keys!r} is not a column name")

    @property
    def effective_server_lr(self) -> float:
        """server-lr, or the strategy's default when it is 0."""
        return self.server_lr or DEFAULT_SERVER_LR[self.strategy]

    @property
    def segment_key_tuple(self) -> tuple[str, ...]:
        """The segment keys metrics are reported by."""
        return tuple(k.strip() for k in self.segment_keys.split(",") if k.strip())

    @property
    def adapter_segment_keys(self) -> tuple[str, ...]:
        """The segment keys that get their own adapters: none for GLOBAL_ONLY_KINDS."""
        return () if self.adapter_kind in GLOBAL_ONLY_KINDS else self.segment_key_tuple

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FedConfig:
        """Typed config from Flower's run config; unknown keys are an error (a typo must not be ignored)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown run-config key {key!r}")
            default = known[name].default
            if isinstance(default, bool):
                kwargs[name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                kwargs[name] = int(value)
            elif isinstance(default, float):
                kwargs[name] = float(value)
            else:
                kwargs[name] = str(value)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The kebab-case mapping Flower expects (for `--run-config` files and the checkpoint)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
