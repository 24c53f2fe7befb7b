"""Federated adapters against the centralized baselines, on the same data, seed and evaluation users.

    fedadapt train --data DATA --mode all --seed S --eval-users N --out CENTRAL
    fedadapt simulate --data DATA --seed S ... --out FED
    fedadapt bench fed-vs-central --data DATA --central CENTRAL --federated FED --out TABLE_DIR

Federated evaluation runs on the clients, on their own anonymized shards, whose pseudonyms seed different
sampled negatives than the raw tables do: its figures are not comparable with `fedadapt train`'s. Here the
federated run's last complete checkpoint is loaded into the same model the clients use (the two-tower text
model, or for a run with arch=seq the sequential model on this machine's own frozen text vectors of the catalog)
and scored on exactly the users and candidates `fedadapt train` scored (same data folder, same seed, same
sample of evaluation users), so every row of the table ranks the same 1 + 99 items for the same people. The
central runs may be of either arch: every row scores the same candidates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.names import CHECKPOINTS_DIR, GLOBAL, SUMMARY_FILE, TEXT
from common.rec.experiment import TABLE_FILE, markdown_table

if TYPE_CHECKING:
    from common.protocol import FedConfig
    from common.rec.user_record import RecordLike

COMPARISON_FILE = "comparison.json"  # every row's metrics and the federated checkpoint's round and adapters


def central_summaries(folder: Path) -> dict[str, dict[str, Any]]:
    """mode -> summary.json of a `fedadapt train` run folder (one mode at the top, several in sub-folders)."""
    files = [folder / SUMMARY_FILE] if (folder / SUMMARY_FILE).is_file() else sorted(folder.glob(f"*/{SUMMARY_FILE}"))
    if not files:
        raise ValueError(f"{folder}: no {SUMMARY_FILE} of a `fedadapt train` run (in it or in a sub-folder)")
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            summary = json.loads(path.read_text())
            out[str(summary["mode"])] = summary
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a fedadapt train summary ({exc})") from exc
    return out


def model_from_banks(cfg: FedConfig, banks: Mapping[str, Mapping[str, np.ndarray]],
                     item_texts: Mapping[str, str] | None = None, served: Sequence[str] | None = None) -> Any:
    """The model of a federated run (its arch's, built as a client builds it) holding every bank of `banks`
    (bank -> flat state), routing only through global and `served` (every bank when None). The catalog is
    `item_texts` (read from the run's data-dir when None, by the archs that need one). Refuses banks whose keys
    or shapes do not fit the run's config and catalog."""
    from common.federation.arch import arch_for

    arch = arch_for(cfg.arch)
    names = [GLOBAL, *sorted(n for n in banks if n != GLOBAL)]
    model = arch.build(cfg, names, item_texts)
    arch.load_state(model, names, {k: v for bank in banks.values() for k, v in bank.items()})
    if served is not None:
        model.serving = frozenset({GLOBAL, *served})
    return model


def score(model: Any, records: Sequence[RecordLike], item_texts: Mapping[str, str]) -> dict[str, Any]:
    """Sampled test metrics of a federated model (either arch) on `records`: held-out item vs its 99 negatives."""
    from common.federation.arch import arch_of

    return arch_of(model).evaluate(model, records, item_texts)


def federated_model(run_folder: Path, data: Path, server_round: int | None = None,
                    item_texts: Mapping[str, str] | None = None) -> tuple[Any, dict[str, Any]]:
    """The model a client of the run's arch would build, holding every bank of the run's
    checkpoint and routing only through the global bank and the segments the server served after that round
    (held-back segments' users get the global bank alone, as in the federation's own evaluation). `item_texts`:
    the catalog of `data` when the caller already has it (seq reads it from `data` otherwise)."""
    from common.protocol import FedConfig
    from server.checkpoint import load_checkpoint

    root = run_folder / CHECKPOINTS_DIR if (run_folder / CHECKPOINTS_DIR).is_dir() else run_folder
    ckpt = load_checkpoint(root, server_round)
    cfg = FedConfig.from_run_config({**ckpt.state["run_config"], "data-dir": str(data)})
    names = [GLOBAL, *sorted(n for n in ckpt.banks if n != GLOBAL)]
    served = ckpt.state.get("served_segments")  # absent in checkpoints written before it was recorded: serve all
    info = {"round": ckpt.round, "adapters": names, "served": served, "run_config": ckpt.state["run_config"],
            "arch": cfg.arch}
    return model_from_banks(cfg, ckpt.banks, item_texts, served), info


def compare(data: Path, central: Path, federated: Path, eval_users: int | None, seed: int,
            server_round: int | None = None) -> dict[str, Any]:
    """Central summaries + the federated checkpoint scored on the same evaluation users."""
    from common.rec.baselines import MODES
    from common.rec.experiment import eval_sample, load_examples

    summaries = central_summaries(central)
    for mode, summary in summaries.items():
        trained_on = summary.get("data")
        if trained_on is not None and Path(trained_on).resolve() != data.resolve():
            raise ValueError(f"central run {mode} was trained on {trained_on}, not on --data {data}")
    histories = {str(s.get("history", "session")) for s in summaries.values()}
    if len(histories) != 1:
        raise ValueError(f"the central runs cut contexts differently ({sorted(histories)}); compare one at a time")
    history = histories.pop()
    records, item_texts = load_examples(data, seed=seed, history=history)
    for mode, summary in summaries.items():
        users = summary.get("users", {}).get("eval")
        run_seed = summary.get("train_config", {}).get("seed")
        if eval_users is None:  # default: the central run's own sample size
            eval_users = users
        if run_seed != seed or users != min(eval_users or 0, len(records)):
            raise ValueError(f"central run {mode} used seed {run_seed} and {users} evaluation users; this "
                             f"comparison uses seed {seed} and --eval-users {eval_users}: they must match")
    eval_records = eval_sample(records, eval_users, seed)
    model, info = federated_model(federated, data, server_round, item_texts)
    fed_history = info["run_config"].get("history", "session")
    if fed_history != history:
        raise ValueError(f"the federated run cut contexts by {fed_history!r}, the central runs by {history!r}")
    metrics = score(model, eval_records, item_texts)
    popularity = next(iter(summaries.values()))["popularity"]
    order = {mode: i for i, mode in enumerate(MODES)}
    rows = {mode: summaries[mode]["metrics"] for mode in sorted(summaries, key=lambda m: (order.get(m, len(order)), m))}
    # The table's label only: text rows keep the label every earlier table has; other archs name themselves.
    label = "federated" if info["arch"] == TEXT else f"federated {info['arch']}"
    rows[f"{label} (round {info['round']})"] = metrics
    return {"rows": rows, "popularity": popularity, "federated": {**info, "metrics": metrics},
            "eval_users": len(eval_records)}


def comparison_table(result: dict[str, Any]) -> str:
    """The Markdown table of a `compare` result: every central mode and the federated run, popularity last."""
    return markdown_table(result["rows"], result["popularity"])


def write_comparison(result: dict[str, Any], out: Path) -> Path:
    """Write OUT/table.md and OUT/comparison.json for a `compare` result; returns the table's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE_FILE).write_text(comparison_table(result))
    (out / COMPARISON_FILE).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    return out / TABLE_FILE
