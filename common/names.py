"""The project's vocabulary, defined once: adapter and state-key names, strategy and partition names, run
files, and the environment every Flower process runs with. Plain constants and a few tiny functions, no imports
beyond the standard library, so every layer (adapters, federation, server, CLI) can use them.
"""

from __future__ import annotations

import re

GLOBAL = "global"  # the shared adapter every example passes through
KEY_SEP = "::"  # state keys are "<adapter name>::<param path>", e.g. "region=EU::encoder.layer.0...up.weight"
SEGMENT_SEP = "="  # a segment adapter is "<segment key>=<value>", e.g. "region=EU"
OVERALL = "overall"  # the all-users row of per-segment metrics
DEFAULT_SEGMENT_KEYS = ("region", "season")  # the segment keys that get adapters unless a run names others

FEDAVG, FEDPROX, FEDADAM, FEDAVGM = "fedavg", "fedprox", "fedadam", "fedavgm"
STRATEGIES = (FEDAVG, FEDPROX, FEDADAM, FEDAVGM)
# Server learning rate when the run config leaves it at 0: plain averaging for FedAvg/FedProx/FedAvgM; Flower's
# eta for FedAdam, whose first step is about lr * sign(delta) (1.0 would move every weight by ~1 on the first round).
DEFAULT_SERVER_LR = {FEDAVG: 1.0, FEDPROX: 1.0, FEDADAM: 0.1, FEDAVGM: 1.0}
# FedAvgM's server momentum when the run config leaves server-momentum at 0 (Hsu et al., 2019; Reddi et al., 2021).
DEFAULT_SERVER_MOMENTUM = 0.9
# A light index of the built-in adapter kinds, for the torch-free run config (common/protocol.py, checked by
# the preflight before any torch import). The facts themselves are declared by each kind's own module on its
# registration (common/adapters/<kind>.py); importing common.adapters refuses to start when this index and the
# registry disagree, so it cannot drift. ADAPTER_KINDS: in the order tables list them; GLOBAL_ONLY_KINDS: those
# registered with global_only (federated as the global adapter alone).
ADAPTER_KINDS = ("bottleneck", "parallel", "lora", "hyper", "task_attention", "mixture", "prompt")
GLOBAL_ONLY_KINDS = frozenset({"mixture"})
PER_SEGMENT = "per-segment"  # cross-silo: a client holds the users of one segment value (e.g. one region)
IID = "iid"  # a seeded shuffle of all users dealt round-robin
PARTITION_MODES = (PER_SEGMENT, IID)
# What a target's context may hold (common/data/examples.py): events before the target's session, or before
# the target itself.
HISTORIES = ("session", "event")
DEFAULT_HISTORY = "event"  # everything before the target in time (the real-data issue); "session" stays available
# The recommender a federation trains (run-config `arch`): "text" = the two-tower text model with adapter banks
# (common/rec/model.py), "seq" = the sequential hybrid model with its named banks (common/rec/seq_model.py).
TEXT, SEQ = "text", "seq"
ARCHS = (TEXT, SEQ)
SEQ_HEADS = 2  # attention heads of the federated seq model's user tower (run-config seq-dim must be a multiple)

# Files a run folder holds (the ServerApp writes them; `fedadapt simulate` reads them).
METRICS_FILE = "metrics.jsonl"
COMPLETE_FILE = "run-complete.json"  # the ServerApp really finished every round (`flwr run` exits 0 regardless)
STOPPED_FILE = "run-stopped.json"  # the ServerApp stopped early as configured (stop-after-round)
CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"  # a run's results: `fedadapt train` writes it per mode, `simulate` per run

# Every Flower process we start: no runtime dependency installs (they pull a CUDA torch), no update check
# (it reaches for the network), no model or data hub.
FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


# Characters a segment value may hold: it becomes part of state keys ("::"), metric keys ("/") and file metadata.
SEGMENT_VALUE_CHARS = r"\w .&'()+,-"
_UNSAFE = re.compile(rf"[^{SEGMENT_VALUE_CHARS}]+")


def safe_segment_value(value: str) -> str:
    """`value` with every run of other characters written "-" and cut to 64 characters ("doctor/health care"
    -> "doctor-health care"), so any data column can be a segment."""
    return _UNSAFE.sub("-", value).strip()[:64] or "unknown"


def make_key(name: str, path: str) -> str:
    return f"{name}{KEY_SEP}{path}"


def split_key(key: str) -> tuple[str, str]:
    """'region=EU::encoder.layer.0.output.dense.up.weight' -> ('region=EU', 'encoder.layer.0...')."""
    name, sep, path = key.partition(KEY_SEP)
    if not sep or not name or not path:
        raise ValueError(f"state key {key!r} is not of the form '<adapter name>{KEY_SEP}<param path>'")
    return name, path


def segment_name(key: str, value: str) -> str:
    """The adapter (and metrics label) of one segment value: ('region', 'EU') -> 'region=EU'."""
    return f"{key}{SEGMENT_SEP}{value}"


def split_segment_name(name: str) -> tuple[str, str]:
    """'region=EU' -> ('region', 'EU'); a value may itself contain '='."""
    key, sep, value = name.partition(SEGMENT_SEP)
    if not sep or not key:
        raise ValueError(f"segment name {name!r} is not of the form '<segment key>{SEGMENT_SEP}<value>'")
    return key, value


def bank_of(key: str) -> str:
    """The adapter (bank) a state key belongs to."""
    return split_key(key)[0]
