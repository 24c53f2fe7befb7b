"""`fedadapt serve`: recommendations from a trained arch=seq run over HTTP (FastAPI + uvicorn).

    fedadapt serve --run RUN [--data DATA] [--host 127.0.0.1] [--port 8000] [--cache-mb 256]
                   [--precision fp32|int8] [--index exact|hnsw] [--ann-min-items 20000] [--ef-search 128]

Loads the run's latest complete checkpoint and the catalog of its data folder (--data when the run config's
data-dir is not on this machine), then serves POST /recommend, POST /recommend/batch, POST /recommend/vector,
GET /health, GET /metadata and the page GET / (serving/app.py). --precision int8 serves int8 item vectors and
user tower; --index hnsw searches catalogs of at least --ann-min-items items through a faiss HNSW index (exact
search below that, and the default). A newer round written into RUN/checkpoints is picked up without a restart.
Everything is checked before the port opens: a missing run, a text-arch run or a bad port is one line, exit 2.
"""

from __future__ import annotations

import argparse


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.app import create_app
    from serving.banks import BankStore
    from serving.recommend import Recommender
    from serving.retrieval import RetrievalOptions
    from serving.run import load_run

    if args.cache_mb < 0 or args.refresh_seconds < 0:
        raise ValueError("--cache-mb and --refresh-seconds must be >= 0")
    tuning = {} if args.ef_search is None else {"ef_search": args.ef_search}
    options = RetrievalOptions(precision=args.precision, index=args.index, ann_min_items=args.ann_min_items, **tuning)
    served = load_run(args.run, args.data)
    store = BankStore(served, cache_bytes=int(args.cache_mb * (1 << 20)), refresh_seconds=args.refresh_seconds,
                      options=options)
    if args.export_edge is not None:
        from serving.export import export_edge

        size = export_edge(store, args.export_edge)
        print(f"wrote {args.export_edge} ({size} bytes): round {store.current().round}'s int8 item rows, user tower "
              f"and served segment banks, for serving.export.EdgeTower")
        return 0
    print(f"serving {served.folder} round {store.current().round} ({len(served.catalog)} items, "
          f"{store.current().retrieval.kind}) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(create_app(Recommender(store)), host=args.host, port=args.port, log_level="warning")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve recommendations from a trained run (arch=seq) over HTTP",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder of `fedadapt simulate` / `deploy` (with checkpoints/)")
    p.add_argument("--data", default=None, help="the run's data folder (default: the run config's data-dir)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port to bind (default 8000)")
    p.add_argument("--cache-mb", type=float, default=256.0, help="bound of the segment-bank cache in MiB")
    p.add_argument("--refresh-seconds", type=float, default=1.0,
                   help="how often a request checks for a newer checkpoint round (default 1)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="item vectors and user tower in fp32 (default) or int8 (see README Serving for the cost)")
    p.add_argument("--index", choices=("exact", "hnsw"), default="exact",
                   help="exact search (default) or a faiss HNSW index (needs faiss-cpu)")
    p.add_argument("--ann-min-items", type=int, default=20_000,
                   help="with --index hnsw, catalogs below this many items are still searched exactly")
    p.add_argument("--ef-search", type=int, default=None,
                   help="with --index hnsw, the search breadth (default 128): more is slower and finds more of the "
                        "exact top k")
    p.add_argument("--export-edge", metavar="FILE", default=None,
                   help="write what the edge needs (int8 item rows, user tower, segment banks) to FILE and exit")
    p.set_defaults(func=run)
