"""`fedadapt bench serve`: the service under load, and what int8 and the ANN index cost in ranking quality.

Three parts, all reported, none asserted (timings depend on the machine and its load):

1. Quality, in-process on the run's own test users (the held-out last item of each sampled user): NDCG@10 and
   HR@10 of fp32 and int8 on the same users, their top-10 overlap, and the HNSW index's recall@10 against exact
   search on the run's catalog (the index forced on, whatever the catalog size).
2. Load, over loopback HTTP: for each variant a real `fedadapt serve` process (exact fp32, exact int8, HNSW fp32,
   HNSW int8, and the edge mode: the user vectors computed beforehand, only /recommend/vector called) and, per
   concurrency level, that many client threads with keep-alive connections sending the sampled users' requests
   back to back; p50/p95/p99 latency, requests/s, failed requests and the server's resident memory. The same
   process and request list serve every variant, so the variants compare; the first variant is the baseline.
3. Swap (`--swap`): exact fp32 under load while the next round lands in a copy of the run folder: failed
   requests and replies per round.
4. Scale: a synthetic catalog of random item vectors (`--catalog`, e.g. 100000 or 1000000), exact vs HNSW in
   fp32: build time, recall@10 and single-query latency, in-process (no HTTP).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

from serving.banks import BankStore
from serving.recommend import Query, Recommender
from serving.retrieval import Retrieval, RetrievalOptions
from serving.run import ServedRun, checkpoints_of, load_run

ROOT = Path(__file__).resolve().parents[2]
VARIANTS: dict[str, dict[str, str]] = {  # name -> `fedadapt serve` options
    "exact-fp32": {"precision": "fp32", "index": "exact"},
    "exact-int8": {"precision": "int8", "index": "exact"},
    "hnsw-fp32": {"precision": "fp32", "index": "hnsw"},
    "hnsw-int8": {"precision": "int8", "index": "hnsw"},
    "edge-vector": {"precision": "fp32", "index": "exact"},  # /recommend/vector with precomputed user vectors
}


@dataclass(frozen=True)
class ServeBenchOptions:
    run: Path
    data: Path | None = None
    users: int = 500  # test users sampled (quality) and requests cycled through (load)
    variants: tuple[str, ...] = tuple(VARIANTS)
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests: int = 400  # per variant and concurrency level
    catalog: int = 0  # synthetic items for the scale part (0: skip)
    dim: int = 64  # their width
    queries: int = 200  # scale part: queries timed
    seed: int = 0
    ann_min_items: int = 0  # the index is forced on for the run's (small) catalog unless raised
    ef_search: int = RetrievalOptions.ef_search
    load_only: bool = False
    skip_load: bool = False
    swap: bool = False  # also measure a bank swap under load (at the highest concurrency)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        if self.users < 1 or self.requests < 1 or min(self.concurrency, default=0) < 1 or self.queries < 1:
            raise ValueError("--users, --requests, --queries and every --concurrency must be >= 1")


@dataclass
class Users:
    """Sampled test users: their request (history before the held-out item, segments) and the held-out item."""

    queries: list[Query]
    targets: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def sample_users(run: ServedRun, n: int, seed: int) -> Users:
    """`n` seeded test users of the run's data (leave-one-out, as the federation evaluates)."""
    from common.rec.experiment import load_examples
    from common.rec.seq_train import history_of

    records, _ = load_examples(Path(run.cfg.data_dir), seed=run.cfg.seed, history=run.cfg.history)
    records = [r for r in records if r.test_item in set(run.catalog)]
    picked = random.Random(seed).sample(records, min(n, len(records)))
    keys = set(run.cfg.adapter_segment_keys)  # a request names only the segment keys the run has banks for
    queries, targets = [], []
    for record in picked:
        history, segments = history_of(record, "test")
        queries.append(Query({k: v for k, v in segments.items() if k in keys}, [item for item, _ in history], k=10,
                             types=[kind for _, kind in history]))
        targets.append(record.test_item)
    return Users(queries, targets)


def _ndcg_hr(replies: Sequence[Sequence[str]], targets: Sequence[str]) -> tuple[float, float]:
    gains = [1 / math.log2(r.index(t) + 2) if t in r else 0.0 for r, t in zip(replies, targets, strict=True)]
    return statistics.fmean(gains), statistics.fmean(1.0 if t in r else 0.0 for r, t in zip(replies, targets,
                                                                                               strict=True))


def _top_ids(rec: Recommender, queries: Sequence[Query], batch: int = 64) -> list[list[str]]:
    out: list[list[str]] = []
    for start in range(0, len(queries), batch):
        out.extend([i.id for i in r.items] for r in rec.recommend_batch(queries[start:start + batch]))
    return out


def _overlap(a: Sequence[Sequence[str]], b: Sequence[Sequence[str]]) -> float:
    return statistics.fmean(len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b, strict=True))


def quality(run: ServedRun, users: Users, variants: Sequence[str], ann_min_items: int,
            ef_search: int = RetrievalOptions.ef_search) -> dict[str, Any]:
    """NDCG@10 / HR@10 of each variant (and of exact fp32, the reference) on the same users, their top-10 overlap
    with exact fp32, and the HNSW variants' recall@10 against exact search in the same precision."""
    names = ["exact-fp32", *(v for v in variants if v not in ("exact-fp32", "edge-vector"))]
    if any(n.startswith("hnsw-") for n in names):  # the recall of hnsw-X is measured against exact-X
        names += [f"exact-{n.split('-')[1]}" for n in names if n.startswith("hnsw-") and f"exact-{n.split('-')[1]}"
                  not in names]
    tops: dict[str, list[list[str]]] = {}
    sizes: dict[str, int] = {}
    for name in names:
        precision, index = VARIANTS[name]["precision"], VARIANTS[name]["index"]
        store = BankStore(run, refresh_seconds=3600,
                          options=RetrievalOptions(precision=precision, index=index, ann_min_items=ann_min_items,
                                                   ef_search=ef_search))
        tops[name] = _top_ids(Recommender(store), users.queries)
        sizes[name] = store.current().retrieval.items.nbytes
    out: dict[str, Any] = {"users": len(users.queries), "items": len(run.catalog), "variants": names,
                           "ef_search": ef_search}
    for name, top in tops.items():
        ndcg, hr = _ndcg_hr(top, users.targets)
        out[name] = {"ndcg@10": round(ndcg, 4), "hr@10": round(hr, 4), "item_vector_bytes": sizes[name],
                     "top10_overlap_with_exact_fp32": round(_overlap(top, tops["exact-fp32"]), 4)}
        if name.startswith("hnsw-"):
            out[name]["recall@10_vs_exact"] = round(_overlap(top, tops[f"exact-{name.split('-')[1]}"]), 4)
    if "exact-int8" in tops:
        out["int8_ndcg_delta"] = round(out["exact-int8"]["ndcg@10"] - out["exact-fp32"]["ndcg@10"], 4)
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """`fedadapt serve` in a child process on a free loopback port, stopped by its PID."""

    def __init__(self, run: Path, data: Path | None, options: dict[str, str], ann_min_items: int,
                 refresh_seconds: float = 3600, ef_search: int = RetrievalOptions.ef_search) -> None:
        self.port = _free_port()
        cmd = [sys.executable, "-m", "cli.main", "serve", "--run", str(run), "--port", str(self.port),
               "--precision", options["precision"], "--index", options["index"],
               "--ann-min-items", str(ann_min_items), "--refresh-seconds", str(refresh_seconds),
               "--ef-search", str(ef_search)]
        if data is not None:
            cmd += ["--data", str(data)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fedadapt serve exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fedadapt serve did not answer /health within 300 s")
            time.sleep(0.3)

    def rss(self) -> int:
        return _rss_bytes(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def load(base: str, path: str, bodies: Sequence[dict[str, Any]], clients: int, requests: int,
         rounds: Counter[int] | None = None) -> dict[str, Any]:
    """`requests` POSTs of `bodies` (cycled) from `clients` threads: latency percentiles (ms), requests/s; with
    `rounds`, also how many replies each checkpoint round gave."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            mine: list[float] = []
            bad = 0
            for n in counter:  # shared iterator: each request index is taken once
                started = time.perf_counter()
                try:
                    reply = client.post(path, json=bodies[n % len(bodies)])
                    ok = reply.status_code == 200
                    if ok and rounds is not None:
                        with lock:
                            rounds[int(reply.json()["round"])] += 1
                except httpx.HTTPError:
                    ok = False
                mine.append(time.perf_counter() - started)
                bad += not ok
            with lock:
                latencies.extend(mine)
                failures[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "failed": failures[0],
            "rps": round(len(latencies) / wall, 1),
            **{f"p{q}_ms": round(_percentile(latencies, q) * 1000, 2) for q in (50, 95, 99)}}


def load_all(options: ServeBenchOptions, run: ServedRun, users: Users,
             log: Callable[[str], None]) -> list[dict[str, Any]]:
    bodies = [{"segments": dict(q.segments), "history": list(q.history), "k": 10} for q in users.queries]
    vectors: list[dict[str, Any]] | None = None
    rows: list[dict[str, Any]] = []
    for name in options.variants:
        server = Server(options.run, options.data, VARIANTS[name], options.ann_min_items,
                        ef_search=options.ef_search)
        try:
            path, payload = "/recommend", bodies
            if name == "edge-vector":  # the edge's half done beforehand: its user vectors (and segments) only
                if vectors is None:
                    with httpx.Client(base_url=server.base, timeout=30) as client:
                        vectors = [{"vector": client.post("/recommend", json={**b, "include_vector": True})
                                    .json()["user_vector"], "segments": b["segments"], "k": 10} for b in bodies]
                path, payload = "/recommend/vector", vectors
            load(server.base, path, payload, 1, min(20, options.requests))  # warm-up
            for clients in options.concurrency:
                row = {"variant": name, **load(server.base, path, payload, clients, options.requests),
                       "rss_mb": round(server.rss() / 2**20, 1)}
                log(json.dumps(row))
                rows.append(row)
        finally:
            server.stop()
    return rows


def swap_under_load(options: ServeBenchOptions, users: Users, clients: int) -> dict[str, Any]:
    """Exact fp32 under load from `clients` threads while a new round lands: a copy of the run's latest round is
    renamed into place as the next round (the way server/checkpoint.py publishes one) once the load is running.
    Reports failed requests, and how many replies each round gave (both rounds answering = the swap happened
    under load)."""
    from common.names import CHECKPOINTS_DIR
    from server.checkpoint import STATE_FILE, latest_complete_round, round_dir

    source = checkpoints_of(options.run)
    last = latest_complete_round(source)
    if last is None:
        raise FileNotFoundError(f"no complete checkpoint under {source}")
    bodies = [{"segments": dict(q.segments), "history": list(q.history), "k": 10} for q in users.queries]
    data = options.data or Path(load_run(options.run).cfg.data_dir)
    with tempfile.TemporaryDirectory(prefix="bench-serve-swap-") as tmp:
        root = Path(tmp) / "run" / CHECKPOINTS_DIR
        shutil.copytree(round_dir(source, last), round_dir(root, last))
        server = Server(root.parent, data, VARIANTS["exact-fp32"], options.ann_min_items, refresh_seconds=0.2)
        rounds: Counter[int] = Counter()
        try:
            load(server.base, "/recommend", bodies, 1, min(20, options.requests))  # warm-up
            rounds.clear()
            result: dict[str, Any] = {}
            worker = threading.Thread(target=lambda: result.update(
                load(server.base, "/recommend", bodies, clients, options.requests * 3, rounds)))
            worker.start()
            time.sleep(1.0)
            staging = root / f".tmp-swap-{os.getpid()}"
            shutil.copytree(round_dir(root, last), staging)
            state = json.loads((staging / STATE_FILE).read_text())
            state["round"] = last + 1
            (staging / STATE_FILE).write_text(json.dumps(state))
            staging.rename(round_dir(root, last + 1))
            worker.join()
            after = httpx.get(f"{server.base}/health", timeout=30).json()["round"]
        finally:
            server.stop()
    return {**result, "round_before": last, "round_after": after,
            "replies_by_round": {str(k): v for k, v in sorted(rounds.items())}}


def scale(options: ServeBenchOptions) -> dict[str, Any]:
    """Exact vs HNSW (fp32) over `options.catalog` random item vectors: build, recall@10, single-query latency."""
    gen = torch.Generator().manual_seed(options.seed)
    table = torch.randn(options.catalog + 1, options.dim, generator=gen)
    table[0] = 0
    bias = torch.randn(options.catalog + 1, generator=gen) * 0.1
    users = torch.randn(options.queries, options.dim, generator=gen)
    out: dict[str, Any] = {"items": options.catalog, "dim": options.dim, "queries": options.queries,
                           "ef_search": options.ef_search}
    tops: dict[str, list[list[int]]] = {}
    for name, retrieval_options in (("exact", RetrievalOptions()),
                                    ("hnsw", RetrievalOptions(index="hnsw", ann_min_items=0,
                                                              ef_search=options.ef_search))):
        started = time.perf_counter()
        retrieval = Retrieval.build(table, bias, retrieval_options)
        built = time.perf_counter() - started
        times, tops[name] = [], []
        for u in users:
            started = time.perf_counter()
            cols, _ = retrieval.top(u.unsqueeze(0), None, 10, [[]])[0]
            times.append(time.perf_counter() - started)
            tops[name].append(cols)
        out[name] = {"build_s": round(built, 2), **{f"p{q}_ms": round(_percentile(times, q) * 1000, 3)
                                                    for q in (50, 95, 99)}}
    out["hnsw_recall@10"] = round(statistics.fmean(len(set(a) & set(b)) / 10
                                                   for a, b in zip(tops["exact"], tops["hnsw"], strict=True)), 4)
    return out


def bench_serve(options: ServeBenchOptions, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    run = load_run(options.run, options.data)
    result: dict[str, Any] = {"run": str(options.run), "machine": {"cpus": os.cpu_count(),
                                                                 "torch_threads": torch.get_num_threads(),
                                                                 "loadavg": os.getloadavg()}}
    users = sample_users(run, options.users, options.seed)
    if not options.load_only:
        result["quality"] = quality(run, users, options.variants, options.ann_min_items, options.ef_search)
        log(json.dumps({"quality": result["quality"]}))
    if not options.skip_load:
        result["load"] = load_all(options, run, users, log)
    if options.swap:
        result["swap"] = swap_under_load(options, users, max(options.concurrency))
        log(json.dumps({"swap": result["swap"]}))
    if options.catalog:
        result["scale"] = scale(options)
        log(json.dumps({"scale": result["scale"]}))
    result["machine"]["loadavg_after"] = os.getloadavg()
    return result


def format_serve(result: dict[str, Any]) -> str:
    lines = [f"run {result['run']}; load average before {result['machine']['loadavg']}, "
             f"after {result['machine']['loadavg_after']}"]
    if "quality" in result:
        q = result["quality"]
        lines += [f"quality on {q['users']} test users, {q['items']} items (HNSW efSearch {q['ef_search']}):",
                  "| variant | NDCG@10 | HR@10 | top-10 overlap with exact fp32 | recall@10 vs exact | item vector "
                  "bytes |", "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {q[name]['ndcg@10']} | {q[name]['hr@10']} | "
                  f"{q[name]['top10_overlap_with_exact_fp32']} | {q[name].get('recall@10_vs_exact', '')} | "
                  f"{q[name]['item_vector_bytes']} |" for name in q["variants"]]
        if "int8_ndcg_delta" in q:
            lines.append(f"int8 NDCG@10 - fp32 NDCG@10: {q['int8_ndcg_delta']}")
    if "load" in result:
        lines += ["| variant | clients | requests/s | p50 ms | p95 ms | p99 ms | failed | server RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['clients']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
                  f"{r['failed']} | {r['rss_mb']} |" for r in result["load"]]
    if "swap" in result:
        w = result["swap"]
        lines.append(f"bank swap under load ({w['clients']} clients, exact fp32): round {w['round_before']} -> "
                     f"{w['round_after']}, replies by round {w['replies_by_round']}, {w['failed']} failed of "
                     f"{w['requests']}, p99 {w['p99_ms']} ms")
    if "scale" in result:
        s = result["scale"]
        lines += [f"scale: {s['items']} random items of width {s['dim']}, {s['queries']} single queries; "
                  f"HNSW recall@10 {s['hnsw_recall@10']}",
                  "| search | build s | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {s[n]['build_s']} | {s[n]['p50_ms']} | {s[n]['p95_ms']} | {s[n]['p99_ms']} |"
                  for n in ("exact", "hnsw")]
    return "\n".join(lines)
