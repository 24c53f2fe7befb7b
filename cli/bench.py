"""`fedadapt bench <benchmark>`: measurements that are reported, not asserted (timings vary by machine).

    fedadapt bench adapters [--backbone PATH|tiny] [--json] [--repeats N]
    fedadapt bench quality --data T [--modes M,M|''] [--history session|event] [--protocol project|literature]
        [--cold-items FRACTION] --out R
    fedadapt bench client [--backbone minilm|tiny|PATH] [--pairs 256] [--repeats N] [--data DIR] [--neighbour N]
    fedadapt bench secagg [--clients 10,50,100] [--modes off,segment,segment-hidden] [--arch text|seq]
    fedadapt bench throughput [--device auto|cpu|cuda] [--batch-sizes 256,1024] [--precision fp32,bf16] [--json]
    fedadapt bench serve --run RUN [--concurrency 1,8,32] [--requests 400] [--catalog 100000] [--swap] [--json]

Each benchmark is one `Benchmark` record in BENCHMARKS (name, help, a function adding its options, and
`run(args) -> int`); adding one is a new module plus one `register_benchmark` call below. Nothing here knows
the `fedadapt` CLI beyond the `add_parser(subparsers)` / `run(args)` contract.
"""

# The docstring above is also `fedadapt bench --help`'s description. The measurements themselves live in
# simulations/ (bench_adapters, bench_federation, compare); each `run` below parses its options into one call.

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cli.parse import fraction
from common.data.protocols import DEFAULT_PROTOCOL, PROTOCOLS, Protocol
from common.defaults import (
    ADAPTER_KIND,
    SEQ_ID_DROPOUT,
    SEQ_LR_SCHEDULE,
    SEQ_LR_SCHEDULES,
    SEQ_MASK,
    SEQ_MASK_BY,
    arch_defaults,
)
from common.device import DEVICES
from common.names import ARCHS, DEFAULT_HISTORY, DEFAULT_SEGMENT_KEYS, HISTORIES
from simulations.bench.adapters import AdapterBenchOptions, bench_adapters, format_table
from simulations.bench.client import ROWS, ClientBenchOptions, bench_client, format_client_table
from simulations.bench.compare import compare, comparison_table, write_comparison
from simulations.bench.federation import (
    ML1M_ITEMS,
    bench_bytes,
    bench_demo,
    bench_scale,
    format_bytes,
    format_scale,
)
from simulations.bench.quality import QualityOptions, quality_table, run_quality, write_quality


@dataclass(frozen=True)
class Benchmark:
    """One `fedadapt bench NAME`: its help line, the options it adds, and what runs it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> None:
    """Add a benchmark; a second one under the same name is refused rather than silently replacing the first."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _configure_adapters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=None, metavar="PATH|tiny",
                        help="backbone folder, or 'tiny' for the test BERT (default: the offline MiniLM)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--repeats", type=_positive_int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--batch", type=_positive_int, default=32, help="examples per batch")
    parser.add_argument("--tokens", type=_positive_int, default=64, help="tokens per example")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds to measure (default: all built-in)")


def _run_adapters(args: argparse.Namespace) -> int:
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip()) if args.kinds else None
    options = AdapterBenchOptions(
        backbone=args.backbone, batch=args.batch, tokens=args.tokens, repeats=args.repeats, kinds=kinds
    )
    result = bench_adapters(options)
    if args.json:
        print(json.dumps({"kinds": {kind: row.as_json() for kind, row in result.rows.items()}}))
    else:
        print(format_table(result))
    return 0


def _configure_client(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=None, metavar="minilm|tiny|PATH",
                        help="backbone of every row (default: the offline MiniLM)")
    parser.add_argument("--pairs", type=_positive_int, default=256,
                        help="training pairs of the benchmarked users (whole users of one shard until reached)")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="timed updates per row (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates per row before the timed ones")
    parser.add_argument("--data", type=Path, default=None,
                        help="marketplace folder, e.g. MovieLens-1M (default: demo-sized synthetic data)")
    parser.add_argument("--users", type=_positive_int, default=1000, help="synthetic users (without --data)")
    parser.add_argument("--products", type=_positive_int, default=400, help="synthetic products (without --data)")
    parser.add_argument("--clients", type=_positive_int, default=10, help="partitions of the per-segment partition")
    parser.add_argument("--partition", type=int, default=0, help="the partition whose users are benchmarked")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="auto takes CUDA when torch sees a GPU")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: the CPUs this process may use that others leave free; "
                             "FEDADAPT_THREADS sets it too)")
    parser.add_argument("--neighbour", "--neighbours", dest="neighbours", type=int, default=0, metavar="N",
                        help="run the rows beside N busy processes (started and stopped by the benchmark)")
    parser.add_argument("--eval-users", type=_positive_int, default=64, help="validation users scored per row")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _run_client(args: argparse.Namespace) -> int:
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip())
    options = ClientBenchOptions(backbone=args.backbone, pairs=args.pairs, repeats=args.repeats,
                                 warmup=args.warmup, data=args.data,
                                 users=args.users, products=args.products, clients=args.clients,
                                 partition=args.partition, device=args.device,
                                 threads=args.threads, neighbours=args.neighbours,
                                 eval_users=args.eval_users, rows=rows)
    result = bench_client(options)
    print(json.dumps(result.as_json()) if args.json else format_client_table(result.as_json()))
    return 0


def _configure_compare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="the marketplace folder both runs trained on")
    parser.add_argument("--central", required=True, type=Path, help="a `fedadapt train` run folder")
    parser.add_argument("--federated", required=True, type=Path, help="a `fedadapt simulate` run folder")
    parser.add_argument("--eval-users", type=int, default=None,
                        help="as given to fedadapt train (default: the central run's number of evaluation users)")
    parser.add_argument("--seed", type=int, default=0, help="as given to fedadapt train")
    parser.add_argument("--round", type=int, default=None, help="checkpoint round (default: the last complete)")
    parser.add_argument("--out", type=Path, default=None, help="folder for table.md and comparison.json")


def _run_compare(args: argparse.Namespace) -> int:
    result = compare(args.data, args.central, args.federated, args.eval_users, args.seed, args.round)
    print(comparison_table(result))
    if args.out is not None:
        print(f"table: {write_comparison(result, args.out)}")
    return 0


def _parse_quality_modes(text: str) -> list[str]:
    """Like `fedadapt train --mode`, but '' is allowed: the library baselines alone."""
    from cli.train import parse_modes

    return parse_modes(text) if text.strip() else []


_cold_fraction = fraction("cold-items")


def _configure_quality(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="marketplace folder (fedadapt data generate/load)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for quality.json, quality.md and the modes' runs (modes/)")
    parser.add_argument("--modes", type=_parse_quality_modes, default="no-adapter,global-adapter,segment-adapters",
                        metavar="MODE[,MODE...]", help="project modes to train and score ('' for none)")
    parser.add_argument("--skip-baselines", action="store_true", help="leave out popularity, item-kNN, BPR, ALS")
    parser.add_argument("--federated", type=Path, default=None, metavar="RUN",
                        help="also score this `fedadapt simulate` run's last checkpoint (same data, history, seed)")
    parser.add_argument("--history", choices=HISTORIES, default=DEFAULT_HISTORY,
                        help="what a context may hold (as for fedadapt train); 'event' for rating logs")
    parser.add_argument("--backbone", default=None, help="local model folder, or 'tiny' (default: offline MiniLM)")
    parser.add_argument("--arch", choices=ARCHS, default="text",
                        help="the modes' model: text two-tower, or seq (sequential hybrid; fedadapt train --arch)")
    parser.add_argument("--adapter", default=ADAPTER_KIND,
                        help="adapter kind of the adapter modes (arch text) and of --seq-text-adapters")
    parser.add_argument("--segments", default=",".join(DEFAULT_SEGMENT_KEYS),
                        help="segment keys that get adapters, comma-separated")
    parser.add_argument("--min-segment-users", type=_positive_int, default=20,
                        help="fewer training users: no segment adapter")
    parser.add_argument("--epochs", type=_positive_int, default=None,
                        help="passes over the training data (per stage); default 2 (text), 20 (seq)")
    parser.add_argument("--lr", type=_positive_float, default=None,
                        help="learning rate of the modes' training; default text 3e-3 (every layer adapted), seq 1e-3")
    parser.add_argument("--batch-size", type=_positive_int, default=None,
                        help="text: pairs per step (16); seq: users per step (128)")
    parser.add_argument("--seq-dim", type=_positive_int, default=64, help="seq: item and user vector width")
    parser.add_argument("--seq-text-adapters", type=int, default=0,
                        help="seq: item text vectors from the backbone with --adapter adapters in its top N layers "
                             "(0: frozen text vectors)")
    parser.add_argument("--seq-max-len", type=_positive_int, default=200,
                        help="seq: most recent interactions the user tower reads")
    parser.add_argument("--seq-mask-by", choices=SEQ_MASK_BY, default=SEQ_MASK,
                        help="seq: what keeps an item in the training softmax (touched, chosen, text: fedadapt train)")
    parser.add_argument("--seq-lr-schedule", choices=SEQ_LR_SCHEDULES, default=SEQ_LR_SCHEDULE,
                        help="seq: constant rate, or a short warm-up then cosine decay to 0")
    parser.add_argument("--seq-id-dropout", type=fraction("seq-id-dropout"), default=SEQ_ID_DROPOUT,
                        help="seq: probability a training step scores an item by its text alone (0 <= p < 1)")
    parser.add_argument("--pairs-per-user", type=_positive_int, default=None, help="cap on pairs per user per epoch")
    parser.add_argument("--max-users", type=_positive_int, default=None,
                        help="modes train on a seeded sample of this many users (the baselines fit every user)")
    parser.add_argument("--eval-users", type=_positive_int, default=None,
                        help="score a seeded sample of this many users (every row the same users)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL,
                        help="project: positives as `fedadapt train` cuts them; literature: every event an "
                             "interaction, leave-one-out by time, full-catalog ranking as the headline")
    parser.add_argument("--cold-items", type=_cold_fraction, default=0.0, metavar="FRACTION",
                        help="hold this seeded fraction of the catalog out of training entirely (0 <= FRACTION < 1); "
                             "users whose test item is held out are scored as the item=cold row")
    parser.add_argument("--json", action="store_true", help="print quality.json instead of the table")


def _run_quality(args: argparse.Namespace) -> int:
    options = QualityOptions(  # argparse runs --modes' default through _parse_quality_modes too: a list
        data=args.data, out=args.out, modes=tuple(args.modes), baselines=not args.skip_baselines, history=args.history,
        backbone=args.backbone, adapter=args.adapter, arch=args.arch, seq_dim=args.seq_dim,
        seq_max_len=args.seq_max_len, seq_text_adapters=args.seq_text_adapters, seq_id_dropout=args.seq_id_dropout,
        seq_mask_by=args.seq_mask_by, seq_lr_schedule=args.seq_lr_schedule,
        segment_keys=tuple(k.strip() for k in args.segments.split(",") if k.strip()),
        min_segment_users=args.min_segment_users, epochs=int(args.epochs or arch_defaults(args.arch).central_epochs),
        lr=args.lr, batch_size=args.batch_size,
        pairs_per_user=args.pairs_per_user, max_users=args.max_users, eval_users=args.eval_users, seed=args.seed,
        federated=args.federated, protocol=Protocol(args.protocol, args.cold_items),
    )
    result = run_quality(options)
    table = write_quality(result, args.out)
    print(json.dumps(result, default=str) if args.json else f"{quality_table(result)}\ntable: {table}")
    return 0


def _configure_bytes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="minilm", help="minilm, tiny or a backbone folder")
    parser.add_argument("--kinds", default="lora,bottleneck,parallel,hyper,mixture,prompt,task_attention,seq",
                        help="adapter kinds, and 'seq' for arch=seq's banks")
    parser.add_argument("--seq-items", type=_positive_int, default=ML1M_ITEMS,
                        help="catalog size of the seq row (default: MovieLens-1M's 3,883 items)")
    parser.add_argument("--seq-dim", type=_positive_int, default=64, help="seq-dim of the seq row")
    parser.add_argument("--seq-max-len", type=_positive_int, default=200, help="seq-max-len of the seq row")


def _run_bytes(args: argparse.Namespace) -> int:
    backbone = "" if args.backbone == "minilm" else args.backbone  # "": the offline MiniLM package
    kinds = [k for k in args.kinds.split(",") if k]
    print(format_bytes(bench_bytes(backbone, kinds, args.seq_items, args.seq_dim, args.seq_max_len)))
    return 0


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results/bench-demo")


def _run_demo(args: argparse.Namespace) -> int:
    print(json.dumps(bench_demo(Path(args.out)), indent=1))
    return 0


def _configure_scale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="10,1000", help="comma-separated numbers of virtual clients")
    parser.add_argument("--out", default="results/bench-scale")


def _run_scale(args: argparse.Namespace) -> int:
    print(format_scale(bench_scale([int(c) for c in args.clients.split(",")], Path(args.out))))
    return 0


def _configure_deploy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=_positive_int, default=4, help="SuperNodes / virtual clients")
    parser.add_argument("--rounds", type=_positive_int, default=2)
    parser.add_argument("--backbone", default="tiny", help="tiny, minilm or a backbone folder")
    parser.add_argument("--arch", choices=("text", "seq"), default="text", help="the federation's model")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the ClientApp cold-start rows")
    parser.add_argument("--out", default="results/bench-deploy")


def _run_deploy(args: argparse.Namespace) -> int:
    import json

    from simulations.bench.deploy import bench_deploy, format_deploy

    backbone = "" if args.backbone == "minilm" else args.backbone
    result = bench_deploy(Path(args.out), args.nodes, args.rounds, backbone, args.arch, not args.no_cold_start)
    (Path(args.out) / "bench-deploy.json").write_text(json.dumps(result, indent=1, default=str))
    print(format_deploy(result))
    return 0


def _configure_cold_start(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="marketplace folder (e.g. results/bench-deploy/sim/data)")
    parser.add_argument("--backbone", default="minilm", help="tiny, minilm or a backbone folder")
    parser.add_argument("--nodes", type=_positive_int, default=4, help="node 0 of this many gets its shard")
    parser.add_argument("--out", default="results/bench-cold-start")


def _run_cold_start(args: argparse.Namespace) -> int:
    import json

    from simulations.bench.cold_start import bench_cold_start, format_cold_start
    from simulations.bench.deploy import CONFIG, machine

    if not Path(args.data).is_dir():
        raise SystemExit(f"--data {args.data} is not a folder")
    backbone = "" if args.backbone == "minilm" else args.backbone
    before = machine()
    config = {k: v for k, v in CONFIG.items() if k != "eval-in-train"}
    rows = [bench_cold_start(Path(args.data), Path(args.out), arch, backbone, args.nodes, config)
            for arch in ("seq", "text")]
    machines = {"machine_before": before, "machine_after": machine()}
    (Path(args.out) / "bench-cold-start.json").write_text(json.dumps({"rows": rows, **machines}, indent=1))
    print(format_cold_start(rows))
    for when, m in machines.items():
        print(f"{when.replace('_', ' ')}: {m['cpus']} CPUs ({m['cpu_model']}), load average "
              + " ".join(f"{x:.2f}" for x in m["load_avg"]))
    return 0


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _configure_secagg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=_int_list, default=(10, 50, 100), help="cohort sizes (default 10,50,100)")
    parser.add_argument("--modes", default="off,segment,segment-hidden", help="secure-aggregation modes to compare")
    parser.add_argument("--arch", choices=ARCHS, default="text", help="whose bank shapes (text: LoRA)")
    parser.add_argument("--backbone", default="tiny", help="tiny, or a backbone folder (bank shapes only)")
    parser.add_argument("--seq-items", type=_positive_int, default=ML1M_ITEMS,
                        help="catalog size of --arch seq (default: MovieLens-1M's 3,883 items)")
    parser.add_argument("--regions", type=_positive_int, default=4, help="region banks")
    parser.add_argument("--seasons", type=_positive_int, default=4, help="season banks")
    parser.add_argument("--degree", type=int, default=0, help="secagg-degree: 0 complete graph, k k-regular")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def _run_secagg(args: argparse.Namespace) -> int:
    from simulations.bench.secagg import SecAggBenchOptions, bench_secagg, format_secagg

    options = SecAggBenchOptions(clients=args.clients, modes=tuple(m.strip() for m in args.modes.split(",") if m),
                                 arch=args.arch, backbone=args.backbone, regions=args.regions, seasons=args.seasons,
                                 seq_items=args.seq_items, degree=args.degree)
    rows = bench_secagg(options)
    print(json.dumps(rows) if args.json else format_secagg(rows))
    return 0


def _configure_throughput(parser: argparse.ArgumentParser) -> None:
    from simulations.bench.throughput import PRECISIONS, ROWS

    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto takes CUDA when torch sees a GPU")
    parser.add_argument("--batch-sizes", type=_int_list, default=(256, 1024), help="pairs per step (seq: users)")
    parser.add_argument("--precision", default=",".join(PRECISIONS),
                        help="comma-separated of fp32, bf16 (bf16: autocast around every row's loop)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=_positive_int, default=20, help="timed steps per row, batch and precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the timed ones")
    parser.add_argument("--backbone", default="minilm", metavar="minilm|tiny|PATH", help="backbone of every row")
    parser.add_argument("--data", type=Path, default=None,
                        help="marketplace folder (default: synthetic data generated in memory)")
    parser.add_argument("--users", type=_positive_int, default=2000, help="synthetic users (without --data)")
    parser.add_argument("--products", type=_positive_int, default=400, help="synthetic products (without --data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _run_throughput(args: argparse.Namespace) -> int:
    from simulations.bench.throughput import ThroughputOptions, bench_throughput, format_throughput

    def names(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    options = ThroughputOptions(device=args.device, batch_sizes=tuple(args.batch_sizes),
                                precisions=names(args.precision), rows=names(args.rows), steps=args.steps,
                                warmup=args.warmup, backbone=args.backbone, data=args.data, users=args.users,
                                products=args.products)
    result = bench_throughput(options).as_json()
    print(json.dumps(result) if args.json else format_throughput(result))
    return 0


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    from simulations.bench.serve import VARIANTS

    parser.add_argument("--run", required=True, type=Path, help="an arch=seq run folder (as for `fedadapt serve`)")
    parser.add_argument("--data", type=Path, default=None, help="the run's data folder (default: its run config's)")
    parser.add_argument("--users", type=_positive_int, default=500, help="test users sampled (quality and load)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrent clients per load level")
    parser.add_argument("--requests", type=_positive_int, default=400, help="requests per variant and level")
    parser.add_argument("--catalog", type=int, default=0, help="synthetic item vectors for the scale part (0: skip)")
    parser.add_argument("--dim", type=_positive_int, default=64, help="width of the synthetic item vectors")
    parser.add_argument("--queries", type=_positive_int, default=200, help="scale part: single queries timed")
    parser.add_argument("--ann-min-items", type=int, default=0,
                        help="catalog size from which the hnsw variants use the index (default 0: always)")
    parser.add_argument("--ef-search", type=_positive_int, default=128, help="HNSW search breadth (default 128)")
    parser.add_argument("--skip-load", action="store_true", help="quality (and scale) only, no HTTP load")
    parser.add_argument("--load-only", action="store_true", help="HTTP load (and scale) only, no quality part")
    parser.add_argument("--swap", action="store_true", help="also a bank swap under load (highest concurrency)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")


def _run_serve(args: argparse.Namespace) -> int:
    import sys

    from simulations.bench.serve import ServeBenchOptions, bench_serve, format_serve

    options = ServeBenchOptions(run=args.run, data=args.data, users=args.users,
                                variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                                concurrency=tuple(int(c) for c in args.concurrency.split(",") if c.strip()),
                                requests=args.requests, catalog=args.catalog, dim=args.dim, queries=args.queries,
                                ann_min_items=args.ann_min_items, skip_load=args.skip_load, load_only=args.load_only,
                                swap=args.swap, ef_search=args.ef_search)
    result = bench_serve(options, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result) if args.json else format_serve(result))
    return 0


for _benchmark in (
    Benchmark("adapters", "size, int8 size and step time of every adapter kind on a backbone",
              _configure_adapters, _run_adapters),
    Benchmark("fed-vs-central",
              "score a federated run's adapters on the users and candidates of a `fedadapt train` run",
              _configure_compare, _run_compare),
    Benchmark("quality", "library baselines (popularity, item-kNN, BPR, ALS) and the project's modes on the same "
              "users and candidates, sampled and full-catalog HR@10 / NDCG@10", _configure_quality, _run_quality),
    Benchmark("bytes", "bytes per client-round up/down against the backbone's fp32 size",
              _configure_bytes, _run_bytes),
    Benchmark("client", "one client update: a naive Flower+PEFT client, the per-example loop and ours (text, seq) "
              "on the same shard, seconds per 256 pairs and NDCG@10", _configure_client, _run_client),
    Benchmark("fed-demo", "the demo preset: wall time per round, client updates per minute",
              _configure_demo, _run_demo),
    Benchmark("scale", "peak RSS of the whole simulation with N virtual clients (10%% sampled)",
              _configure_scale, _run_scale),
    Benchmark("deploy", "the same federation simulated and deployed (TLS, node auth): round time, bytes as the app "
              "and the SuperLink count them, one SuperNode's RSS and start-up", _configure_deploy, _run_deploy),
    Benchmark("cold-start", "a fresh ClientApp process from spawn to its first training batch, seq and text, with an "
              "empty and a warm node cache", _configure_cold_start, _run_cold_start),
    Benchmark("secagg", "round time and bytes per client with secure aggregation off / segment / segment-hidden "
              "(the protocol's own cost: synthetic deltas, in-process grid)", _configure_secagg, _run_secagg),
    Benchmark("throughput", "training pairs per second of one loop: naive PEFT LoRA vs ours (text, seq) per batch "
              "size and precision, same device and process", _configure_throughput, _run_throughput),
    Benchmark("serve", "fedadapt serve under loopback load (exact/int8/HNSW/edge: latency, requests/s, memory), "
              "int8 NDCG@10 and HNSW recall@10 against exact, and a large synthetic catalog",
              _configure_serve, _run_serve),
):
    register_benchmark(_benchmark)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `bench` with one sub-subcommand per registered benchmark."""
    parser = subparsers.add_parser("bench", help="benchmarks (reported, not asserted)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for benchmark in BENCHMARKS.values():
        benchmark.configure(benches.add_parser(benchmark.name, help=benchmark.help, description=benchmark.help))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark."""
    return BENCHMARKS[args.benchmark].run(args)
