"""`fedadapt bench <benchmark>`: measurements that are reported, not asserted (timings vary by machine).

    fedadapt bench adapters [--backbone PATH|tiny] [--json] [--repeats N]

Each benchmark is one `Benchmark` record in BENCHMARKS (name, help, a function adding its options, and
`run(args) -> int`); adding one is a new module plus one `register_benchmark` call below. Nothing here knows
the `fedadapt` CLI beyond the `add_parser(subparsers)` / `run(args)` contract.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass

from simulations import compare
from simulations.bench_adapters import AdapterBenchOptions, bench_adapters, format_table
from simulations.bench_federation import FEDERATION_BENCHMARKS


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> None:
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark


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


register_benchmark(
    Benchmark(
        name="adapters",
        help="size, int8 size and step time of every adapter kind on a backbone",
        configure=_configure_adapters,
        run=_run_adapters,
    )
)


register_benchmark(
    Benchmark(
        name="fed-vs-central",
        help="score a federated run's adapters on the users and candidates of a `fedadapt train` run",
        configure=compare.configure,
        run=compare.run,
    )
)


for _name, _help, _configure, _run in FEDERATION_BENCHMARKS:
    register_benchmark(Benchmark(name=_name, help=_help, configure=_configure, run=_run))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks (reported, not asserted)", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for benchmark in BENCHMARKS.values():
        benchmark.configure(benches.add_parser(benchmark.name, help=benchmark.help, description=benchmark.help))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.benchmark].run(args)
