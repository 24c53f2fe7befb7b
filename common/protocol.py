"""The federation's wire and configuration contract, defined once for client, server and simulation.

No Flower import here: these are plain names and a typed view of the run config, so `common/` stays usable
without the federation stack. Record names and keys follow Flower's conventions ("arrays", "config",
"metrics", "num-examples") so the messages read like any Flower app's.

Messages (Flower Message API):
- query   server -> a node the first time the server samples it (once per run, server/registration.py):
          "who are you?"; reply config record: partition-id, the node's segment adapter names, its training
          pairs per bank ("examples/<bank>") and its number of evaluation users (see server/strategy.py on
          what this reveals).
- train   server -> sampled node: arrays = current global + the node's segment adapters (full weights),
          config = round hyper-parameters; reply: arrays = DELTA for exactly those keys, metrics with
          num-examples, the pairs it trained per bank ("examples/<bank>": each bank is weighted by the
          client's examples in that bank; arch=seq counts next-item training targets) and the training loss.
          With DP in distributed mode the config also carries "dp-shares/<bank>" (t) for each bank sent, and the
          delta comes back clipped and noised (common/privacy/dp.py); with DP every bank weighs 1 per client.
- evaluate server -> node: arrays = global + the segment banks the server serves; reply metrics: per-segment
          sums of ndcg/hr/coverage and user counts. With secure aggregation on, the evaluate message starts a
          secure round instead and the sums leave the node only masked (server/secure_eval.py).
Every reply is untrusted: server/validate.py checks each against this contract and what the node registered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from common.defaults import ADAPTER_KIND, ADAPTER_LAYERS, BACKBONE, ROUNDS, arch_defaults
from common.device import DEVICES
from common.names import (
    ADAPTER_KINDS,
    ARCHS,
    DEFAULT_HISTORY,
    DEFAULT_SEGMENT_KEYS,
    DEFAULT_SERVER_LR,
    DEFAULT_SERVER_MOMENTUM,
    FEDAVG,
    FEDAVGM,
    FEDPROX,
    GLOBAL_ONLY_KINDS,
    HISTORIES,
    KEY_SEP,
    PARTITION_MODES,
    PER_SEGMENT,
    SEGMENT_SEP,
    SEGMENT_VALUE_CHARS,
    SEQ,
    SEQ_HEADS,
    STRATEGIES,
    TEXT,
    segment_name,
)
from common.privacy.dp import DPConfig, encoding_range
from common.privacy.user_level import USER, check_user_level

SECAGG_CLIP_RANGE_DEFAULT = 1.0

# Record names inside a message's RecordDict.
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
# a train reply's evaluation of the state it received, when the train config asks for it (eval-in-train)
EVAL_RECORD = "eval-metrics"
REPLY_RECORDS = frozenset({ARRAYS, CONFIG, METRICS, EVAL_RECORD})

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
EVAL_IN_TRAIN = "eval-in-train"  # train config: evaluate the received state before training, reply in EVAL_RECORD
EVAL_SKIP = "eval-skip"  # train config: the held-back banks among those sent, not routed through in that evaluation
BANK_EXAMPLES_PREFIX = "examples/"  # "examples/<bank>": training pairs routed through that bank
DP_SHARES_PREFIX = "dp-shares/"  # train config, distributed DP: "dp-shares/<bank>" = t (common/privacy/dp.py)
EVAL_METRICS = ("ndcg@10", "hr@10", "coverage")  # what a client's evaluation reply sums per segment

# A segment adapter name is "<segment key>=<value>"; values come from client data, so they are constrained to
# what is safe inside state keys ("::"), metric keys ("/") and file metadata.
_SEGMENT_VALUE = re.compile(rf"^[{SEGMENT_VALUE_CHARS}]{{1,64}}$")

# Names of a Hugging Face encoder's own tensors; an adapter key always starts with "<adapter name>::".
_BACKBONE_PATTERN = re.compile(
    r"^(bert\.|roberta\.|model\.)?(encoder\.layer\.|embeddings\.|pooler\.|word_embeddings|position_embeddings)"
)


def looks_like_backbone(key: str) -> bool:
    """True for keys that name backbone tensors rather than "<adapter name>::<param path>" adapter tensors."""
    return KEY_SEP not in key or bool(_BACKBONE_PATTERN.match(key))


@dataclass(frozen=True)
class RoundHParams:
    """Per-round training hyper-parameters, sent by the server in the train message's config record."""

    server_round: int
    epochs: int
    batch_size: int
    lr: float
    proximal_mu: float

    @classmethod
    def from_run(cls, cfg: FedConfig, server_round: int) -> RoundHParams:
        """What the server sends in round `server_round` of a run with config `cfg`."""
        return cls(server_round, cfg.local_epochs, cfg.batch_size, cfg.lr, cfg.proximal_mu)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], cfg: FedConfig) -> RoundHParams:
        """Parse a train message's config record (the run config fills what it lacks); errors name the key."""
        values: dict[str, Any] = {}
        for key, name, cast, default in ((SERVER_ROUND, "server_round", int, 0),
                                         (LOCAL_EPOCHS, "epochs", int, cfg.local_epochs),
                                         (BATCH_SIZE, "batch_size", int, cfg.batch_size),
                                         (LR, "lr", float, cfg.lr),
                                         (PROXIMAL_MU, "proximal_mu", float, cfg.proximal_mu)):
            raw = config.get(key, default)
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"train config {key}={raw!r} is not a number")
            values[name] = cast(raw)
        hp = cls(**values)
        if hp.epochs < 1 or hp.batch_size < 1 or not (hp.lr > 0 and math.isfinite(hp.lr)) or not (
                hp.proximal_mu >= 0 and math.isfinite(hp.proximal_mu)):
            raise ValueError(f"train config out of range: {hp}")
        return hp

    def to_config(self) -> dict[str, int | float]:
        return {SERVER_ROUND: self.server_round, LOCAL_EPOCHS: self.epochs, BATCH_SIZE: self.batch_size,
                LR: self.lr, PROXIMAL_MU: self.proximal_mu}


def _flag(key: str, value: object) -> bool:
    """A run-config boolean: true/false, 1/0, yes/no; anything else names the key (never quietly false)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"run-config {key}={value!r} is not a boolean (true or false)")


def bank_examples_key(bank: str) -> str:
    return f"{BANK_EXAMPLES_PREFIX}{bank}"


def dp_shares_key(bank: str) -> str:
    return f"{DP_SHARES_PREFIX}{bank}"


def parse_dp_shares(config: Mapping[str, Any], banks: Iterable[str], max_shares: int) -> dict[str, int]:
    """t per bank from a train config (distributed DP); ValueError naming the key when one is missing, not an
    integer, or outside [1, max_shares]. A client caps t at the federation's size: a server that asked for a
    larger t would get replies with too little noise."""
    shares: dict[str, int] = {}
    for bank in sorted(banks):
        key = dp_shares_key(bank)
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_shares:
            raise ValueError(f"train config {key}={value!r} is not an integer in [1, {max_shares}]")
        shares[bank] = value
    return shares


def check_segment_name(name: object, keys: tuple[str, ...]) -> str:
    """`name` if it is "<key>=<value>" for one of `keys` with a safe value; ValueError naming the problem."""
    if not isinstance(name, str):
        raise ValueError(f"segment name {name!r} is not a string")
    key, sep, value = name.partition(SEGMENT_SEP)
    if not sep or key not in keys:
        raise ValueError(f"segment name {name[:80]!r} is not '<key>=<value>' for a segment key in {list(keys)}")
    if not _SEGMENT_VALUE.match(value) or KEY_SEP in value:
        raise ValueError(f"segment value {value[:80]!r} is empty, longer than 64 or has characters other than "
                         "letters, digits, space and _.&'()+,-")
    return name


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
    return [segment_name(k, segments[k]) for k in keys if k in segments and segments[k] != ""]


@dataclass(frozen=True)
class FedConfig:
    """The run config (`[tool.flwr.app.config]` + `--run-config`), parsed once into typed fields.

    Field names are the kebab-case keys with '_' for '-'. Strings stand for "none" with "" because Flower's
    run config only carries bool/int/float/str.

    `arch` picks the model every party builds (common/names.py ARCHS): "text" is the two-tower text model with
    adapter banks of kind `adapter-kind`; "seq" is the sequential hybrid model (common/rec/seq_model.py) with
    `seq-dim` wide item/user vectors over each user's `seq-max-len` most recent interactions. For seq,
    `adapter-kind` is ignored (its banks are its own, and every configured segment key gets banks),
    `batch-size` counts users per step (default 32: more local steps per round, see README), `lr` is the Adam
    rate (default 1e-3),
    `local-epochs` are passes over the client's users, `history` still builds the records but seq reads
    each record's `typed_events`, and `max-len` is the token limit of the frozen item-text vectors.
    """

    num_server_rounds: int = ROUNDS
    seed: int = 0
    data_dir: str = ""
    out_dir: str = ""
    client_state_dir: str = ""  # where each client keeps its own secrets (see common/federation/client_data.py)
    backbone: str = BACKBONE  # "" = the offline MiniLM; "tiny" = a random test BERT; or a model folder
    arch: str = TEXT
    adapter_kind: str = ADAPTER_KIND
    adapter_layers: int = ADAPTER_LAYERS  # arch=text: adapters in the last N layers only (common/defaults.py)
    lower_cache_mb: int = 1024  # arch=text: memory a client process may keep lower-layer states in; 0 = no cache
    # disk a client may fill with frozen-weight results across messages and runs (common/federation/node_cache.py,
    # under client-state-dir/cache); a node's own node config may set it; 0 = no disk cache
    node_cache_mb: int = 1024
    segment_keys: str = ",".join(DEFAULT_SEGMENT_KEYS)
    partition_mode: str = PER_SEGMENT
    history: str = DEFAULT_HISTORY  # what a context may hold (common/data/examples.py): "event" or "session"
    strategy: str = FEDAVG
    server_lr: float = 0.0  # 0: the strategy's default (common.names.DEFAULT_SERVER_LR)
    # fedavgm: the server's heavy-ball momentum on the mean client delta, in [0, 1); 0: DEFAULT_SERVER_MOMENTUM
    server_momentum: float = 0.0
    proximal_mu: float = 0.0
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # evaluate the incoming state in the train message of the next round (one message per node per round;
    # server/app.py); with secure aggregation evaluation keeps its own secure round
    eval_in_train: bool = False
    min_segment_clients: int = 2
    # 0 = the arch's default (common/defaults.py ARCH_DEFAULTS), resolved when the config is built
    local_epochs: int = 0
    batch_size: int = 0
    lr: float = 0.0
    max_len: int = 64
    seq_dim: int = 64  # arch=seq: item / user vector width (a multiple of SEQ_HEADS)
    seq_max_len: int = 200  # arch=seq: most recent interactions the user tower reads
    seq_text_adapters: int = 0  # arch=seq: top backbone layers with adapter-kind adapters on item texts; 0 = frozen
    # arch=seq: a folder of `fedadapt train --arch seq` (banks.safetensors + seq.json) the run's banks start from
    # instead of the seeded identity, e.g. a model pre-trained on public data; "" = the seeded start
    init_banks: str = ""
    max_train_users: int = 0
    max_eval_users: int = 0
    # Bound on one client's whole-delta L2 norm (server/validate.py). It fits both archs: honest arch=seq deltas
    # on MovieLens-1M (dim 64, batch 128 users, lr 1e-3, one local epoch, global + 10 segment banks) measured
    # 2.4 for a client of 603 users (5 steps) and 13.1 for one client holding all 6,035 users (48 steps). Adam
    # moves each weight by roughly lr per step, so the norm grows with the steps a client takes (about
    # lr * steps * sqrt(params) at worst): raise it for clients that take hundreds of steps per round.
    max_delta_norm: float = 100.0
    max_client_examples: int = 1_000_000  # the most training pairs (or evaluation users) one client may register
    resume: bool = False
    stop_after_round: int = 0
    client_threads: int = 0  # torch threads per client update; 0: the CPUs free of other load (common/threads.py)
    client_cpus: int = 0  # the most threads client-threads=0 takes; simulate: --cpus-per-client; 0: affinity
    device: str = "cpu"  # auto | cpu | cuda (common/device.py); simulate also asks Flower for a GPU per client
    negative_pool: bool = True  # arch=text: sampled negatives encoded once per epoch without gradient (TrainConfig)
    round_timeout: float = 3600.0
    # Client-level differential privacy (common/privacy/dp.py says the guarantee; README, Privacy): 0 noise = off.
    dp_noise_multiplier: float = 0.0  # sigma: noise std on each bank sum / dp-clip
    dp_clip: float = 0.0  # C: bound on one client's whole-update L2 norm (required with noise)
    dp_mode: str = "central"  # central: the server adds the noise; distributed: each client adds a share
    dp_delta: float = 1e-5  # at most 1/N for federations of up to 100,000 clients (a tenth of it for 10,000)
    dp_dropout_tolerance: float = 0.0  # distributed: fraction of a bank's sampled clients that may drop out
    target_epsilon: float = 0.0  # 0: none; else stop (or warn) before a round that would exceed it
    # User-level DP across silos (common/privacy/user_level.py; README, User-level DP): dp-unit=user protects one
    # user: each silo Poisson-samples its users at dp-user-rate, takes dp-user-steps SGD steps at dp-user-lr per
    # sampled user from the round's banks, clips each user's whole update to dp-clip and sums (secure aggregation
    # required); dp-user-max caps the users one silo may weigh in a bank (the secure encoding's weight bound).
    dp_unit: str = "client"
    dp_user_rate: float = 0.0
    dp_user_steps: int = 1
    dp_user_lr: float = 1.0
    dp_user_max: int = 100_000
    target_epsilon_action: str = "stop"  # stop | warn
    # Secure aggregation (common/secagg/, server/secure.py; README, Privacy): off | segment | segment-hidden.
    secure_aggregation: str = "off"
    # |delta coordinate| bound before fixed-point encoding (clients clip to it); without DP only: with DP the range
    # is derived from dp-clip and the noise (secagg_encoding_range), so that no noise is ever clipped
    secagg_clip_range: float = SECAGG_CLIP_RANGE_DEFAULT
    secagg_bits: int = 64  # masks live in Z_(2^bits); <= 32 halves the upload but needs small weights
    secagg_threshold_fraction: float = 0.6  # Shamir t = ceil(fraction * share holders): survives 40% drop-outs
    secagg_degree: int = 0  # mask graph: 0 = complete (every pair); k >= 2 = k-regular ring (SecAgg+)
    secagg_banks: str = ""  # segment-hidden: the run's public list of segment banks, e.g. "region=EU,season=holiday"
    # Registry of the clients' identity keys (common/secagg/identity.py): clients sign their keys and survivor
    # lists and check their peers'; "" = the server is trusted to relay them. A node's own config may set it.
    secagg_identities: str = ""

    def __post_init__(self) -> None:
        self._resolve_arch_defaults()
        positive = ("num_server_rounds", "local_epochs", "batch_size", "max_len", "seq_dim", "seq_max_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.fraction_train == 0:
            raise ValueError("fraction-train must be > 0, got 0")
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.seq_dim % SEQ_HEADS:
            raise ValueError(f"seq-dim must be a multiple of the seq model's {SEQ_HEADS} attention heads, "
                             f"got {self.seq_dim}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r} is not one of {', '.join(DEVICES)}")
        if self.adapter_kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter-kind {self.adapter_kind!r} is not one of {', '.join(ADAPTER_KINDS)}")
        if self.adapter_layers < 0:
            raise ValueError(f"adapter-layers must be >= 0 (0 = every layer), got {self.adapter_layers}")
        if self.seq_text_adapters < 0:
            raise ValueError(f"seq-text-adapters must be >= 0 (0 = frozen item text vectors), got "
                             f"{self.seq_text_adapters}")
        if self.init_banks and self.arch != SEQ:
            raise ValueError(f"init-banks needs arch=seq (a seq model's banks), got arch={self.arch}")
        if self.lower_cache_mb < 0:
            raise ValueError(f"lower-cache-mb must be >= 0 (0 = no cache), got {self.lower_cache_mb}")
        if self.node_cache_mb < 0:
            raise ValueError(f"node-cache-mb must be >= 0 (0 = no disk cache), got {self.node_cache_mb}")
        for name, zero in (("client_threads", "follow the free CPUs"), ("client_cpus", "every CPU")):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0 (0 = {zero}), got {getattr(self, name)}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.history not in HISTORIES:
            raise ValueError(f"history {self.history!r} is not one of {', '.join(HISTORIES)}")
        if self.partition_mode not in PARTITION_MODES:
            raise ValueError(f"partition-mode {self.partition_mode!r} is not one of {', '.join(PARTITION_MODES)}")
        if self.strategy == FEDPROX and not self.proximal_mu > 0:
            raise ValueError("strategy fedprox needs proximal-mu > 0 (with 0 it is FedAvg); set --proximal-mu")
        if self.strategy != FEDPROX and self.proximal_mu != 0:
            raise ValueError(f"proximal-mu={self.proximal_mu} is used only by strategy fedprox, not {self.strategy}")
        if not (self.server_lr >= 0 and math.isfinite(self.server_lr)):
            raise ValueError(f"server-lr must be >= 0 (0: the strategy's default), got {self.server_lr}")
        if not 0 <= self.server_momentum < 1:  # also refuses NaN
            raise ValueError(f"server-momentum must be in [0, 1) (0: fedavgm's default {DEFAULT_SERVER_MOMENTUM}), "
                             f"got {self.server_momentum}")
        if self.server_momentum and self.strategy != FEDAVGM:
            raise ValueError(f"server-momentum={self.server_momentum} is used only by strategy fedavgm, "
                             f"not {self.strategy}")
        for name in ("lr", "max_delta_norm", "round_timeout"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal-mu must be >= 0, got {self.proximal_mu}")
        if self.min_segment_clients < 1:
            raise ValueError(f"min-segment-clients must be >= 1, got {self.min_segment_clients}")
        if self.max_client_examples < 1:
            raise ValueError(f"max-client-examples must be >= 1, got {self.max_client_examples}")
        if self.stop_after_round < 0 or self.max_train_users < 0 or self.max_eval_users < 0:
            raise ValueError("stop-after-round, max-train-users and max-eval-users must be >= 0")
        if self.dp_clip and not self.dp_noise_multiplier:
            raise ValueError(f"dp-clip={self.dp_clip} is used only with dp-noise-multiplier > 0 (DP is off)")
        check_user_level(self.dp_unit, self.dp_user_rate, self.dp_user_steps, self.dp_user_lr, self.dp_user_max,
                         noise_multiplier=self.dp_noise_multiplier, secure_aggregation=self.secure_aggregation,
                         arch=self.arch)
        _ = self.dp  # DPConfig validates the dp-* and target-epsilon keys, naming each
        self._check_secure_aggregation()
        for key in self.segment_key_tuple:
            if not key.isidentifier():
                raise ValueError(f"segment key {key!r} in segment-keys={self.segment_keys!r} is not a column name")

    def _resolve_arch_defaults(self) -> None:
        """lr, batch-size and local-epochs of 0 become the arch's defaults; an unknown arch is named first."""
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        arch = arch_defaults(self.arch)
        for name, value in (("lr", arch.lr_for(self.adapter_layers)), ("batch_size", arch.batch_size),
                            ("local_epochs", arch.local_epochs)):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, value)  # frozen: set once, while the config is being built

    def _check_secure_aggregation(self) -> None:
        from common.secagg.fixedpoint import FixedPoint  # numpy only
        from common.secagg.graph import threshold_for
        from common.secagg.layout import SECURE_MODES, SEGMENT_HIDDEN

        if self.secure_aggregation not in SECURE_MODES:
            raise ValueError(f"secure-aggregation {self.secure_aggregation!r} is not one of {', '.join(SECURE_MODES)}")
        if self.secagg_degree < 0 or self.secagg_degree == 1:
            raise ValueError(f"secagg-degree must be 0 (complete graph) or >= 2, got {self.secagg_degree}")
        threshold_for(2, self.secagg_threshold_fraction)  # names secagg-threshold-fraction outside (0.5, 1]
        if self.dp.enabled and self.secagg_clip_range != SECAGG_CLIP_RANGE_DEFAULT:
            raise ValueError(f"secagg-clip-range={self.secagg_clip_range} is used only without DP: with "
                             "dp-noise-multiplier > 0 the encoding range is derived from dp-clip and the noise "
                             f"({self.secagg_encoding_range:g} here) so that secure aggregation never clips noise")
        if self.secure_aggregation != "off":  # enough precision for 1,000 clients a round, else name the key
            try:
                FixedPoint(self.secagg_bits, self.secagg_encoding_range, self.secagg_max_weight, 1000)
            except ValueError as exc:
                if not self.dp.enabled:
                    raise
                raise ValueError(f"{exc} (with DP the values go up to dp-clip x (1 + 12 x dp-noise-multiplier) in "
                                 "distributed mode, dp-clip in central mode: raise secagg-bits or lower them)"
                                 ) from exc
        if self.secure_aggregation != "off" and self.min_segment_clients < 2:
            raise ValueError(f"min-segment-clients={self.min_segment_clients} with secure-aggregation="
                             f"{self.secure_aggregation}: a bank summed over one client is that client's update; "
                             "secure aggregation needs min-segment-clients >= 2")
        if self.secagg_banks and self.secure_aggregation != SEGMENT_HIDDEN:
            raise ValueError("secagg-banks is used only with secure-aggregation=segment-hidden")
        for name in self.secagg_bank_tuple:
            check_segment_name(name, self.adapter_segment_keys)

    @property
    def secagg_max_weight(self) -> float:
        """The most one client may weigh in a bank of a secure sum: 1 with DP, dp-user-max with user-level DP
        (a silo weighs its users), else max-client-examples."""
        if self.dp.user_level:
            return float(self.dp_user_max)
        return 1.0 if self.dp.enabled else float(self.max_client_examples)

    @property
    def secagg_encoding_range(self) -> float:
        """The per-coordinate range of a secure sum's fixed-point encoding, the same on client and server:
        secagg-clip-range without DP; with DP the bound of an honest privatized update (common/privacy/dp.py
        encoding_range), so that the noise is never clipped."""
        return encoding_range(self.dp) if self.dp.enabled else self.secagg_clip_range

    @property
    def secagg_bank_tuple(self) -> tuple[str, ...]:
        """segment-hidden: the segment banks every client receives (the server never learns whose they are)."""
        return tuple(sorted({b.strip() for b in self.secagg_banks.split(",") if b.strip()}))

    @property
    def dp(self) -> DPConfig:
        """The differential-privacy settings (`dp.enabled` is False when dp-noise-multiplier is 0)."""
        return DPConfig(self.dp_noise_multiplier, self.dp_clip, self.dp_mode, self.dp_delta, self.target_epsilon,
                        self.target_epsilon_action, self.dp_dropout_tolerance,
                        self.dp_user_rate if self.dp_unit == USER else 0.0)

    @property
    def effective_server_lr(self) -> float:
        """server-lr, or the strategy's default when it is 0."""
        return self.server_lr or DEFAULT_SERVER_LR[self.strategy]

    @property
    def effective_server_momentum(self) -> float:
        """fedavgm: server-momentum, or DEFAULT_SERVER_MOMENTUM when it is 0; every other strategy: 0."""
        if self.strategy != FEDAVGM:
            return 0.0
        return self.server_momentum or DEFAULT_SERVER_MOMENTUM

    @property
    def segment_key_tuple(self) -> tuple[str, ...]:
        """The segment keys metrics are reported by."""
        return tuple(k.strip() for k in self.segment_keys.split(",") if k.strip())

    # The two properties below are the run config's facts about which keys an arch reads. They branch on the
    # arch here, not in common/federation/arch.py, because this module stays torch-free: the preflight and the
    # ServerApp read them before (or without) importing any model. Only the text arch has adapter kinds and
    # adapter layers in a backbone; seq ignores adapter-kind and adapter-layers.
    @property
    def adapter_segment_keys(self) -> tuple[str, ...]:
        """The segment keys that get their own adapters (banks): none for the text arch's GLOBAL_ONLY_KINDS;
        all of them for seq, which ignores adapter-kind."""
        if self.arch == TEXT and self.adapter_kind in GLOBAL_ONLY_KINDS:
            return ()
        return self.segment_key_tuple

    @property
    def backbone_adapter_layers(self) -> int:
        """How many top layers of the backbone carry adapters (0 = every layer, or none for seq, which only
        reads frozen text vectors): what the preflight checks the backbone's depth against."""
        return self.adapter_layers if self.arch == TEXT else self.seq_text_adapters

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
                kwargs[name] = _flag(key, value)
            elif isinstance(default, int | float):
                try:
                    kwargs[name] = type(default)(value)
                except (TypeError, ValueError):
                    kind = "an integer" if type(default) is int else "a number"
                    raise ValueError(f"run-config {key}={value!r} is not {kind}") from None
            else:
                kwargs[name] = str(value)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """The kebab-case mapping Flower expects (for `--run-config` files and the checkpoint)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
