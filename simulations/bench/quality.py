"""`fedadapt bench quality`: the library baselines and the project's modes on one split, one set of candidates.

    fedadapt bench quality --data T [--modes no-adapter,global-adapter,segment-adapters] [--federated RUN] --out R

Rows: popularity, item-kNN, BPR, ALS (`common.rec.library_baselines`, tuned on validation items only) and each
mode trained by `common.rec.experiment.run_experiment` (its summaries in R/modes/). Every row is scored on the
same evaluation users (`eval_sample`) and the same candidates (a `--federated` run's last checkpoint too, rebuilt
as the model its clients would build), with two protocols: sampled (test item vs its
99 negatives) and full catalog (test item vs every item the user never touched). Two checks refuse a table
whose rows would not be comparable: the popularity ranking `run_experiment` reports must equal the one
recomputed here on this command's users (same users, same negatives), and the mode's model, rebuilt from its
saved adapters, must reproduce `run_experiment`'s sampled figures before its full-catalog row is trusted.

A sequential-model mode (`--arch seq`) adds a row "<mode> (no history)": the same requests scored as users
with no history at all, so only the item prior and the segment banks rank (the cold-start user).

Per-segment rows add two labels to the users' own segments: user=cold|warm (at most COLD_USER_MAX training
positives) and item=cold|warm (the test item is no user's training or validation positive: what the baselines'
final fit saw).

`--protocol literature` and `--cold-items FRACTION` (common/data/protocols.py) change the records every row is
built from: every event an interaction, and/or a seeded fraction of the catalog held out of training entirely,
whose test users form the item=cold row. Both are recorded in quality.json and quality.md; a trained mode or a
federated run cut with another protocol is refused.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.data.protocols import LITERATURE, Protocol
from common.defaults import SEQ_ID_DROPOUT, SEQ_LR_SCHEDULE, SEQ_MASK
from common.names import DEFAULT_HISTORY, DEFAULT_SEGMENT_KEYS, OVERALL

if TYPE_CHECKING:
    from common.backbone import Backbone
    from common.data.examples import UserRecord
    from common.rec.experiment import ExperimentConfig
    from common.rec.model import ItemCache, RecModel
    from common.rec.seq_model import SeqRecModel

log = logging.getLogger(__name__)

QUALITY_JSON = "quality.json"
QUALITY_TABLE = "quality.md"
MODES_DIR = "modes"  # R/modes/<mode>/summary.json (+ adapters), as `fedadapt train --out R/modes` writes them
COLD_USER_MAX = 5  # training positives at or below which a user counts as cold
COLD_KEYS = ("user", "item")  # segment keys the cold/warm labels use
REPLAY_TOLERANCE = 1e-6  # a rebuilt model must reproduce run_experiment's sampled metrics this closely
UNSCORABLE_MODES = ("full-finetune",)  # run_experiment keeps no weights of these to score the full catalog


@dataclass(frozen=True)
class QualityOptions:
    """One `fedadapt bench quality` run; the mode options mean what they mean for `fedadapt train`."""

    data: Path
    out: Path
    modes: tuple[str, ...] = ("no-adapter", "global-adapter", "segment-adapters")
    baselines: bool = True  # run the library baselines
    history: str = DEFAULT_HISTORY
    backbone: str | None = None
    adapter: str = "lora"
    arch: str = "text"  # the modes' model (common.names.ARCHS)
    seq_dim: int = 64
    seq_max_len: int = 200
    seq_text_adapters: int = 0
    seq_id_dropout: float = SEQ_ID_DROPOUT
    seq_mask_by: str = SEQ_MASK  # SeqTrainConfig.mask_by
    seq_lr_schedule: str = SEQ_LR_SCHEDULE  # SeqTrainConfig.lr_schedule
    segment_keys: tuple[str, ...] = DEFAULT_SEGMENT_KEYS
    min_segment_users: int = 20
    epochs: int = 2
    # None: the arch's central default (common/defaults.py), as for `fedadapt train`
    lr: float | None = None
    batch_size: int | None = None
    pairs_per_user: int | None = None
    max_users: int | None = None  # modes train on a seeded sample; the baselines fit every user (a factor
    # model needs a row for each scored user)
    eval_users: int | None = None
    seed: int = 0
    federated: Path | None = None  # a `fedadapt simulate` run on the same data: its last checkpoint is a row
    protocol: Protocol = Protocol()  # which events are interactions, and the item-cold split

    def __post_init__(self) -> None:
        if not self.modes and not self.baselines and self.federated is None:
            raise ValueError("nothing to compare: no modes and the library baselines skipped")
        if self.federated is not None and not self.protocol.is_default:
            raise ValueError(f"--federated: a `fedadapt simulate` run splits with the project protocol and no "
                             f"cold items; this command uses {self.protocol.to_dict()}, so its users and "
                             "candidates would differ")
        bad = [m for m in self.modes if m in UNSCORABLE_MODES]
        if bad:
            raise ValueError(f"mode(s) {bad} keep no weights on disk to score on the full catalog; "
                             "run them with `fedadapt train` (sampled protocol only)")


def cold_labels(records: Sequence[UserRecord], scored: Sequence[UserRecord],
                held_out: frozenset[str] = frozenset()) -> list[dict[str, str]]:
    """user=cold|warm and item=cold|warm for each of `scored`; an item is warm when some record has it as a
    training or validation positive (the interactions the baselines' final fit and the modes may learn from)
    and it is not one of the cold split's `held_out` items."""
    known = {item for r in records for item in (*r.train_items, r.valid_item)} - held_out
    return [{"user": "cold" if len(r.train_items) <= COLD_USER_MAX else "warm",
             "item": "warm" if r.test_item in known else "cold"} for r in scored]


def labelled(scored: Sequence[UserRecord], labels: Sequence[Mapping[str, str]]) -> list[UserRecord]:
    """Copies of the records whose segments also carry the cold/warm labels (routing ignores unknown keys)."""
    clash = sorted({k for r in scored for k in r.segments if k in COLD_KEYS})
    if clash:
        raise ValueError(f"the users table already has column(s) {clash}, which the cold/warm rows use")
    return [replace(r, segments={**r.segments, **extra}) for r, extra in zip(scored, labels, strict=True)]


def trained_model(summary: Mapping[str, Any], folder: Path, backbone: Backbone, cache: ItemCache,
                  item_texts: Mapping[str, str]) -> RecModel | SeqRecModel:
    """The model a `run_experiment` mode ended with, from its summary and the adapters it saved in `folder`."""
    from common.adapters.storage import read_adapter_folder
    from common.rec.baselines import routing_plan
    from common.rec.model import RecModel
    from common.rec.seq_modes import load_banks

    # Arch branch kept: a central run's saved folder (`fedadapt train`) has each arch's own format.
    if summary.get("arch") == "seq":
        return load_banks(folder / "adapters", backbone, item_texts)
    mode, max_len = str(summary["mode"]), int(summary["train_config"]["max_len"])
    if mode == "no-adapter" or not summary["adapters"]:  # local-only without a silo big enough: bare backbone
        return RecModel(backbone, None, max_len=max_len, item_cache=cache)
    config, names, state = read_adapter_folder(folder / "adapters")
    plan = routing_plan(mode, summary["segments"], summary["item_tower"])
    model = RecModel(backbone, config, names, plan, max_len=max_len, item_cache=cache)
    assert model.adapted is not None
    model.adapted.load_adapter_state(state, strict=True)
    return model


def _same(a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str] = ("hr@10", "ndcg@10")) -> bool:
    return all(math.isclose(float(a[k]), float(b[k]), abs_tol=REPLAY_TOLERANCE) for k in keys)


def _experiment_config(opts: QualityOptions) -> ExperimentConfig:
    from common.adapters import AdapterConfig
    from common.rec.experiment import ExperimentConfig
    from common.rec.seq_model import SeqConfig
    from common.rec.seq_train import SeqTrainConfig
    from common.rec.train import TrainConfig

    tuned: dict[str, Any] = {k: v for k, v in (("lr", opts.lr), ("batch_size", opts.batch_size)) if v is not None}
    train = TrainConfig(epochs=opts.epochs, pairs_per_user=opts.pairs_per_user, seed=opts.seed,
                        **(tuned if opts.arch == "text" else {}))
    return ExperimentConfig(
        arch=opts.arch, seq=SeqConfig(dim=opts.seq_dim, max_len=opts.seq_max_len, seed=opts.seed,
                                      text_adapters=opts.seq_text_adapters, text_adapter_kind=opts.adapter,
                                      id_dropout=opts.seq_id_dropout),
        seq_train=SeqTrainConfig(epochs=opts.epochs, seed=opts.seed, mask_by=opts.seq_mask_by,
                                 lr_schedule=opts.seq_lr_schedule, **(tuned if opts.arch == "seq" else {})),
        data=opts.data, out=opts.out / MODES_DIR, modes=opts.modes, adapter=AdapterConfig(kind=opts.adapter,
        seed=opts.seed), train=train, segment_keys=opts.segment_keys, min_segment_users=opts.min_segment_users,
        backbone=opts.backbone,
        max_users=opts.max_users, eval_users=opts.eval_users, seed=opts.seed, history=opts.history,
        protocol=opts.protocol,
    )


def _score(model: RecModel | SeqRecModel, scored: Sequence[UserRecord], item_texts: Mapping[str, str],
           full: bool) -> dict[str, Any]:
    from common.federation.arch import arch_of

    return arch_of(model).evaluate(model, scored, item_texts, full_catalog=full)


def mode_rows(opts: QualityOptions, scored: Sequence[UserRecord], item_texts: Mapping[str, str],
              reference: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Train every mode through `run_experiment`, then score its model on `scored` with both protocols.

    `reference` is the popularity ranking `run_experiment` must report if it scored the same users and
    candidates (`evaluate_popularity` on `scored`, fitted on every record)."""
    from common.backbone import load_backbone
    from common.rec.experiment import run_experiment
    from common.rec.model import ItemCache
    from common.rec.seq_model import SeqRecModel
    from common.rec.seq_train import evaluate_seq

    backbone, cache = load_backbone(opts.backbone), ItemCache()
    rows: dict[str, dict[str, Any]] = {}
    for result in run_experiment(_experiment_config(opts)):
        theirs, ours = result.popularity, reference
        if theirs["users"] != ours["users"] or not _same(theirs[OVERALL], ours[OVERALL], ("hr@10", "ndcg@10", "mrr")):
            raise ValueError(f"mode {result.mode} was scored on other users or candidates than the baselines "
                             f"(popularity {theirs[OVERALL]} there, {ours[OVERALL]} here)")
        summary = json.loads(result.summary_path.read_text())
        if Protocol.from_dict(summary.get("protocol")) != opts.protocol:
            raise ValueError(f"mode {result.mode} was cut with protocol {summary.get('protocol')}, this command "
                             f"with {opts.protocol.to_dict()}")
        start = time.perf_counter()
        model = trained_model(summary, result.summary_path.parent, backbone, cache, item_texts)
        sampled = _score(model, scored, item_texts, full=False)
        if not _same(sampled[OVERALL], result.metrics[OVERALL]):
            raise ValueError(f"mode {result.mode}: the model rebuilt from {result.summary_path.parent} scores "
                             f"{sampled[OVERALL]}, run_experiment measured {result.metrics[OVERALL]}")
        full = _score(model, scored, item_texts, full=True)
        seconds = {**summary["seconds"], "rescore": time.perf_counter() - start}
        rows[result.mode] = {"kind": "mode", "sampled": sampled, "full": full, "seconds": seconds,
                             "params": {"adapter": summary["adapter"], "arch": summary.get("arch", "text"),
                                        "seq": summary.get("seq"), "backbone": summary["backbone"],
                                        "adapters": summary["adapters"], "train_config": summary["train_config"]},
                             "summary": str(result.summary_path)}
        # Arch branch kept: only the seq model reads a history it can be scored without (cold start: the same
        # requests with the history taken away); the text model reads the request's context text instead.
        if isinstance(model, SeqRecModel):
            cold = {protocol: evaluate_seq(model, scored, full_catalog=protocol == "full", with_history=False)
                    for protocol in ("sampled", "full")}
            rows[f"{result.mode} (no history)"] = {"kind": "no-history", **cold, "seconds": {"total": 0.0},
                                                    "params": {}, "summary": str(result.summary_path)}
    return rows


def federated_row(opts: QualityOptions, scored: Sequence[UserRecord],
                  item_texts: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The federated run's last checkpoint as the model a client would build, scored on the same users and
    candidates with both protocols. Refuses a run that used another history or seed (other splits/negatives)."""
    from simulations.bench.compare import federated_model

    assert opts.federated is not None
    start = time.perf_counter()
    model, info = federated_model(opts.federated, opts.data, item_texts=item_texts)
    run_config = info["run_config"]
    theirs = (str(run_config.get("history", "session")), int(run_config.get("seed", 0)))
    if theirs != (opts.history, opts.seed):
        raise ValueError(f"federated run {opts.federated} used history={theirs[0]}, seed={theirs[1]}; this command "
                         f"history={opts.history}, seed={opts.seed}: its splits and candidates would differ")
    sampled, full = (_score(model, scored, item_texts, full=f) for f in (False, True))
    label = f"federated {info['arch']} (round {info['round']})"
    return {label: {"kind": "federated", "sampled": sampled, "full": full,
                    "seconds": {"total": time.perf_counter() - start},
                    "params": {"round": info["round"], "arch": info["arch"], "banks": len(info["adapters"])},
                    "summary": str(opts.federated)}}


def cold_split_summary(protocol: Protocol, cold: frozenset[str], records: Sequence[UserRecord],
                       eval_records: Sequence[UserRecord]) -> dict[str, Any] | None:
    """What quality.json says about the cold split (None without one); refuses a split whose evaluation users
    have no cold test item, since its cold row would be empty."""
    from common.data.protocols import ColdSplitError, cold_test_users

    if not protocol.cold_items:
        return None
    scored = cold_test_users(eval_records, cold)
    if scored == 0:
        raise ColdSplitError(f"cold-items {protocol.cold_items}: none of the {len(eval_records)} evaluation users "
                             f"has one of the {len(cold)} held-out items as test item; use a bigger fraction or "
                             "more evaluation users")
    return {"fraction": protocol.cold_items, "items": len(cold), "test_users": cold_test_users(records, cold),
            "eval_test_users": scored}


def run_quality(opts: QualityOptions) -> dict[str, Any]:
    """Every row of the comparison, as written to R/quality.json."""
    from common.data.protocols import load_split
    from common.rec.evaluate import evaluate_popularity
    from common.rec.experiment import eval_sample
    from common.rec.library_baselines import run_library_baselines

    started = time.perf_counter()
    split = load_split(opts.data, opts.protocol, seed=opts.seed, history=opts.history)
    records, item_texts = split.records, split.item_texts
    if not records:
        raise ValueError(f"{opts.data}: no user has enough positives for a train/valid/test split")
    eval_records = eval_sample(records, opts.eval_users, opts.seed)
    cold_split = cold_split_summary(opts.protocol, split.cold_items, records, eval_records)
    position = {id(r): i for i, r in enumerate(records)}
    scored = labelled(eval_records, cold_labels(records, eval_records, split.cold_items))
    # what `fedadapt train` reports as popularity: fitted on training pairs (positives with a context) only
    train_pairs_popularity = evaluate_popularity(scored, item_texts, fit_records=records)
    rows: dict[str, dict[str, Any]] = {}
    if opts.baselines:
        fitted = run_library_baselines(records, sorted(item_texts), [position[id(r)] for r in eval_records],
                                       [r.segments for r in scored], seed=opts.seed)
        rows.update({name: {"kind": "library", **result.as_json()} for name, result in fitted.items()})
    if opts.modes:
        rows.update(mode_rows(opts, scored, item_texts, train_pairs_popularity))
    if opts.federated is not None:
        rows.update(federated_row(opts, scored, item_texts))
    return {
        "data": str(opts.data), "history": opts.history, "seed": opts.seed, "protocol": opts.protocol.to_dict(),
        "cold_split": cold_split,
        "users": {"total": len(records), "eval": len(eval_records)}, "items": len(item_texts),
        "cold_user_max": COLD_USER_MAX, "rows": rows, "train_pairs_popularity": train_pairs_popularity,
        "seconds": time.perf_counter() - started,
    }


def _pair(row: Mapping[str, Any], protocol: str, label: str) -> str:
    block = row[protocol][OVERALL] if label == OVERALL else row[protocol]["segments"].get(label)
    return "-" if block is None else f"{block['hr@10']:.3f} / {block['ndcg@10']:.3f}"


def quality_table(result: Mapping[str, Any]) -> str:
    """Two Markdown tables: overall (both protocols, seconds, chosen parameters), then per segment NDCG@10
    with one column per method (a segment per column would run to ~50 columns on MovieLens-1M)."""
    rows: Mapping[str, Mapping[str, Any]] = result["rows"]
    lines = ["| method | sampled HR@10 / NDCG@10 | full-catalog HR@10 / NDCG@10 | seconds | parameters |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        shown = ", ".join(f"{k}={v}" for k, v in _shown_params(row).items()) or "-"
        lines.append(f"| {name} | {_pair(row, 'sampled', OVERALL)} | {_pair(row, 'full', OVERALL)} | "
                     f"{row['seconds']['total']:.1f} | {shown} |")
    first = next(iter(rows.values()))
    users = {label: int(block["users"]) for label, block in first["sampled"]["segments"].items()}
    cold = result.get("cold_split")
    if cold:
        lines += ["", f"Item-cold split: {cold['items']} of {result['items']} items ({cold['fraction']:g} of the "
                  f"catalog) held out of training; {cold['eval_test_users']} evaluation users have one as test "
                  "item (the cold row also holds test items nobody trained on by chance).",
                  "", f"| method | warm items ({users.get('item=warm', 0)} users), sampled / full-catalog "
                  f"HR@10 / NDCG@10 | cold items ({users.get('item=cold', 0)} users), sampled / full-catalog "
                  "HR@10 / NDCG@10 |", "|---|---|---|"]
        lines += [f"| {name} | {_pair(row, 'sampled', 'item=warm')}, {_pair(row, 'full', 'item=warm')} | "
                  f"{_pair(row, 'sampled', 'item=cold')}, {_pair(row, 'full', 'item=cold')} |"
                  for name, row in rows.items()]
    lines += ["", "NDCG@10 per segment, sampled / full catalog:", "",
              "| segment (users) | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for label, n in users.items():
        cells = [f"{_cell(row, 'sampled', label)} / {_cell(row, 'full', label)}" for row in rows.values()]
        lines.append(f"| {label} ({n}) | " + " | ".join(cells) + " |")
    protocol = result.get("protocol") or Protocol().to_dict()
    lines += ["", f"{result['users']['eval']} evaluation users of {result['users']['total']}, "
              f"{result['items']} items, protocol {protocol['name']}, cold-items {protocol['cold_items']:g}, "
              f"history={result['history']}, seed {result['seed']}; "
              f"user=cold: at most {result['cold_user_max']} training positives; item=cold: the test item is "
              "nobody's training or validation positive.",
              *(["Literature protocol: every event is an interaction, leave-one-out by time; the full-catalog "
                 "column (seen items excluded) is the one to set beside published figures."]
                if protocol["name"] == LITERATURE else []),
              f"`fedadapt train`'s popularity (fitted on training pairs only, without the validation item): sampled "
              f"{_pair(result, 'train_pairs_popularity', OVERALL)}.",
              "Seconds: library rows tune, refit and score both protocols; mode rows train and score the sampled "
              "protocol as `fedadapt train` does (re-scoring both from the saved adapters comes on top)."]
    return "\n".join(lines) + "\n"


def _shown_params(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A library row's chosen grid point; a trained mode's adapter kind, epochs and adapter count."""
    if row["kind"] in ("library", "no-history", "federated"):
        return row["params"]
    params = row["params"]
    if params.get("arch") == "seq":
        return {"arch": "seq", "dim": params["seq"]["dim"], "epochs": params["train_config"]["epochs"],
                "banks": len(params["adapters"])}
    if not params["adapter"]:
        return {}
    return {"adapter": params["adapter"]["kind"], "epochs": params["train_config"]["epochs"],
            "adapters": len(params["adapters"])}


def _cell(row: Mapping[str, Any], protocol: str, label: str) -> str:
    block = row[protocol]["segments"].get(label)
    return "-" if block is None else f"{block['ndcg@10']:.3f}"


def write_quality(result: Mapping[str, Any], out: Path) -> Path:
    """Write R/quality.json and R/quality.md; returns the table's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / QUALITY_JSON).write_text(json.dumps(result, indent=1, default=str))  # unsorted: rows keep their order
    (out / QUALITY_TABLE).write_text(quality_table(result))
    log.info("quality table in %s", out / QUALITY_TABLE)
    return out / QUALITY_TABLE

