#!/usr/bin/env python3
"""Filtered search at scale: p50 latency and recall@10 against exact search, per backend, for filters
keeping 50%, 10%, 1% and 0.1% of the points; and hybrid (keyword + vector) query latency over HTTP.

    .venv/bin/python scripts/bench_filtered.py                      # 100k, every backend, + HTTP
    .venv/bin/python scripts/bench_filtered.py --sizes 1000000 --backends edge faiss --no-http
    .venv/bin/python scripts/bench_filtered.py --sizes 1000000 --backends faiss --no-http --root R --keep
    .venv/bin/python scripts/bench_filtered.py --sizes 1000000 --backends faiss --no-http --root R --reuse

Vectors: seeded clusters (1000 centres, unit noise), unit length, `--dim` wide; each point has an
integer field `bucket` drawn uniformly from 0-999, and a filter `bucket < N` keeps N/1000 of the
points, whatever their position in the index. Queries are new draws from the same clusters. Exact
answers: numpy over the filtered subset. Each backend is built through the store protocol with the
default settings (int8 quantization with rescoring, hnsw_ef 256), as `clipsearch index` builds it;
Qdrant local mode (qdrant-client's test double for a server) only up to 100k points.

Hybrid over HTTP: a real server (uvicorn on loopback, in this process) over 100k points with the tiny
test model (32-d) and a text field (title words and an SKU); distinct queries, so every one pays
the text encoder. Each run replaces its sections of docs/benchmarks.md (--no-write: print only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import benchlib as bench  # noqa: E402

HEADING = "## Filtered search (bench_filtered)"
KEEPS = (500, 100, 10, 1)  # bucket < N keeps N/1000 of the points
BATCH = 10_000
K = 10
BUILT_FILE = "built.json"  # written when a build finished: --keep and --reuse
log = bench.logger("bench_filtered")


def clustered(n: int, dim: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        count = min(100_000, n - start)
        picked = centres[rng.integers(len(centres), size=count)]
        block = picked + rng.standard_normal((count, dim)).astype(np.float32) * (0.6 / np.sqrt(dim))
        out[start:start + count] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _centres(dim: int) -> np.ndarray:
    centres = np.random.default_rng(1).standard_normal((1000, dim)).astype(np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def query_vectors(dim: int, queries: int) -> np.ndarray:
    """The queries of `data`, without making its points."""
    return clustered(queries, dim, 4, _centres(dim))


def data(n: int, dim: int, queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(n, dim, 2, _centres(dim))
    buckets = np.random.default_rng(3).integers(0, 1000, size=n)
    return vectors, buckets, query_vectors(dim, queries)


def point_ids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def store_settings(kind: str, root: Path, **tuning: Any) -> Any:
    from indexer.settings import Settings

    return Settings(home=root / "home", store=kind, qdrant={"path": root / "qdrant"}, **tuning)


def build(kind: str, root: Path, vectors: np.ndarray, buckets: np.ndarray) -> tuple[Any, float]:
    from indexer.schema import CollectionSchema, ModelIdentity
    from indexer.stores import Record, open_store

    settings = store_settings(kind, root)
    schema = CollectionSchema.new(ModelIdentity("bench", "", "bench", "", vectors.shape[1]),
                                  fields={"bucket": "integer"})
    started = time.perf_counter()
    store = open_store(settings, "filtered", create=schema)
    ids = point_ids(len(vectors))
    for start in range(0, len(vectors), BATCH):
        stop = min(start + BATCH, len(vectors))
        store.upsert([Record(ids[i], {"default": vectors[i]},
                             {"uri": f"/b/{i}", "path": f"/b/{i}", "fingerprint": str(i),
                              "metadata": {"bucket": int(buckets[i])}}) for i in range(start, stop)])
        if stop % 200_000 == 0:
            log(f"  {kind}: {stop} points")
    store.close()  # as `clipsearch index` ends: the index is built (edge) and everything is on disk
    seconds = time.perf_counter() - started
    (root / BUILT_FILE).write_text(json.dumps({"build_s": seconds, "points": len(vectors)}))
    return seconds


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_opened(kind: str, root: Path, size: int, dim: int, queries: int, asked: int,
                   tuning: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process (so that the build's freed memory does not hide the store's): open the built
    collection as a server does, measure every cell, and the resident memory the opened store adds.
    `tuning`: settings (hnsw_ef), and `post_filter` False for FAISS as before issue 17 (the filtered path
    only, its exact part reading vectors from SQLite)."""
    import dataclasses

    from indexer.stores import open_store

    vectors, buckets, all_queries = data(size, dim, queries)
    tuning = dict(tuning)
    post_filter = tuning.pop("post_filter", True)
    before = rss_mib()
    started = time.perf_counter()
    store = open_store(store_settings(kind, root, **tuning), "filtered")
    if not post_filter:
        store.config = dataclasses.replace(store.config, post_filter_max=0, exact_from_index=False)
    store.count()  # edge opens in full before its first answer
    open_s = time.perf_counter() - started
    try:
        rows = measure(store, vectors, buckets, all_queries[:asked])
        return {"rows": rows, "open_s": open_s, "rss_mib": rss_mib() - before}
    finally:
        store.close()


def measure_in_child(kind: str, root: Path, size: int, dim: int, queries: int, asked: int,
                     tuning: dict[str, Any]) -> dict[str, Any]:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure_opened, (kind, root, size, dim, queries, asked, tuning))


def tunings(backend: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The row label and settings of each measurement of one build: --hnsw-ef values, and FAISS without
    post-filtering with --compare-post-filter."""
    found: dict[str, dict[str, Any]] = {}
    for ef in args.hnsw_ef or [None]:
        tuning = {} if ef is None else {"hnsw_ef": ef}
        notes = [] if ef is None else [f"hnsw_ef {ef}"]
        if backend == "faiss" and args.compare_post_filter:
            old = ", ".join([*notes, "as before: filtered path only, vectors from SQLite"])
            found[f"{backend} ({old})"] = {**tuning, "post_filter": False}
        found[f"{backend} ({', '.join(notes)})" if notes else backend] = tuning
    return found


def exact(vectors: np.ndarray, keep: np.ndarray, query: np.ndarray) -> set[int]:
    rows = np.flatnonzero(keep)
    scores = vectors[rows] @ query
    top = np.argpartition(-scores, min(K, len(rows) - 1))[:K]
    return {int(r) for r in rows[top]}


def measure(store: Any, vectors: np.ndarray, buckets: np.ndarray, queries: np.ndarray
            ) -> list[dict[str, Any]]:
    from indexer.stores.filters import FieldCondition, Filter, Range

    rows = []
    for keep_n in KEEPS:
        store_filter = Filter(must=[FieldCondition(key="metadata.bucket", range=Range(lt=keep_n))])
        keep = buckets < keep_n
        store.search(queries[0], K, filter=store_filter)  # warm: the first call pages in
        times, recalls = [], []
        for query in queries:
            started = time.perf_counter()
            hits = store.search(query, K, filter=store_filter)
            times.append(time.perf_counter() - started)
            got = {uuid.UUID(h.id).int - 1 for h in hits}
            truth = exact(vectors, keep, query)
            recalls.append(len(got & truth) / len(truth))
        latency = bench.percentiles([t * 1000 for t in times], (50, 95))
        rows.append({"keep": keep_n / 1000, "kept": int(keep.sum()), **latency, "queries": len(queries),
                     "recall": float(np.mean(recalls)), "worst": float(np.min(recalls))})
    return rows


# --- hybrid over HTTP ------------------------------------------------------------------------------

WORDS = ("red", "blue", "linen", "wool", "dress", "shirt", "boot", "sneaker", "tote", "scarf", "cap", "coat",
         "summer", "winter", "classic", "slim", "oversized", "striped", "plain", "leather")


@contextlib.contextmanager
def http_server(app: Any) -> Iterator[str]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def hybrid_http(root: Path, n: int, queries: int) -> dict[str, Any]:
    import httpx

    from indexer.models.loading import load_model
    from indexer.schema import CollectionSchema
    from indexer.settings import Settings
    from indexer.stores import Record, open_store
    from search_api import create_app

    name, checkpoint = bench.random_checkpoint("tiny", root / "tiny.pt")
    settings = Settings(home=root / "home-http", model=name, pretrained=str(checkpoint), device="cpu")
    model = load_model(name, str(checkpoint), "cpu")
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((n, model.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    schema = CollectionSchema.new(model.identity, fields={"title": "text", "product_id": "keyword"})
    store = open_store(settings, settings.collection, create=schema)
    started = time.perf_counter()
    ids = point_ids(n)
    for start in range(0, n, BATCH):
        records = []
        for i in range(start, min(start + BATCH, n)):
            words = " ".join(WORDS[j] for j in rng.integers(len(WORDS), size=4))
            records.append(Record(ids[i], {"default": vectors[i]}, {
                "uri": f"/p/{i}", "path": f"/p/{i}", "fingerprint": str(i),
                "metadata": {"title": f"{words} SKU-{i:07d}", "product_id": f"P{i}"}}))
        store.upsert(records)
    store.flush()
    store.close()
    build_s = time.perf_counter() - started
    result: dict[str, Any] = {"n": n, "build_s": build_s}
    app = create_app(settings, model=model)
    with http_server(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        for mode in ("hybrid", "vector", "keyword"):
            times, first = [], 0
            for q in range(queries + 1):
                target = int(rng.integers(n))
                words = " ".join(WORDS[j] for j in rng.integers(len(WORDS), size=2))
                text = f"{words} {mode} {q} SKU-{target:07d}"  # distinct: every query is encoded
                started = time.perf_counter()
                answer = client.post("/v1/search", json={"text": text, "k": K, "mode": mode})
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
                if q == 0:
                    continue  # warm-up
                times.append(elapsed * 1000)
                first += answer.json()["results"][0]["id"] == ids[target]
            result[mode] = {**bench.percentiles(times, (50, 95)), "sku_first": first / queries}
            log(f"  http {mode}: p50 {result[mode]['p50']:.1f} ms, SKU first {first}/{queries}")
    return result


# --- the doc -------------------------------------------------------------------------------------


def table(size: int, dim: int, results: dict[str, dict[str, Any]], command: str, machine: dict[str, Any],
          load_before: list[float]) -> str:
    lines = [f"### {size:,} vectors, {dim}-d", "", f"Command: `{command}`", "",
             bench.machine_line(machine, load_before, bench.loadavg()), "",
             "| backend | build s | open s | store RSS MiB | kept | points kept | p50 ms | p95 ms | queries "
             "| recall@10 | worst |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for backend, found in results.items():
        for row in found["rows"]:
            mark = "" if row["recall"] >= 0.99 else " **(below 0.99)**"
            lines.append(f"| {backend} | {found['build_s']:.0f} | {found['open_s']:.1f} | "
                         f"{found['rss_mib']:.0f} | {row['keep']:.1%} | {row['kept']:,} | "
                         f"{row['p50']:.2f} | {row['p95']:.2f} | {row['queries']} | "
                         f"{row['recall']:.4f}{mark} | {row['worst']:.1f} |")
    return "\n".join(lines)


def http_table(found: dict[str, Any], command: str, machine: dict[str, Any], load_before: list[float]) -> str:
    lines = [f"### Hybrid query over HTTP, {found['n']:,} points (tiny model, 32-d)", "",
             f"Command: `{command}`", "", bench.machine_line(machine, load_before, bench.loadavg()), "",
             "| mode | p50 ms | p95 ms | SKU's product first |", "|---|---:|---:|---:|"]
    for mode in ("hybrid", "vector", "keyword"):
        row = found[mode]
        lines.append(f"| {mode} | {row['p50']:.1f} | {row['p95']:.1f} | {row['sku_first']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--backends", nargs="+", default=["edge", "faiss", "qdrant"],
                        choices=["edge", "faiss", "qdrant"])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--qdrant-queries", type=int, default=10,
                        help="Queries per cell for Qdrant local mode, whose every search scans in Python.")
    parser.add_argument("--http-points", type=int, default=100_000)
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--root", type=Path, default=None, help="Working folder [default: a temporary one].")
    parser.add_argument("--hnsw-ef", type=int, nargs="+", default=None,
                        help="Measure each build with these hnsw_ef settings in turn [the default].")
    parser.add_argument("--compare-post-filter", action="store_true",
                        help="FAISS: also measure as before (no post-filtering, vectors read from SQLite).")
    parser.add_argument("--keep", action="store_true",
                        help="Keep each build (ROOT/BACKEND-SIZE) to measure again with --reuse.")
    parser.add_argument("--reuse", action="store_true",
                        help="Measure (and keep) a finished build under --root instead of building again "
                             "(its build time is the one recorded then).")
    args = parser.parse_args(argv)
    machine, load_before = bench.machine(), bench.loadavg()
    if (args.keep or args.reuse) and args.root is None:
        parser.error("--keep and --reuse need --root")
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-filtered-"))
    sections = []
    command = bench.command_line("bench_filtered.py", argv)
    try:
        for size in args.sizes:
            log(f"{size:,} vectors, {args.dim}-d")
            vectors, buckets, queries = data(size, args.dim, args.queries)
            results = {}
            for backend in args.backends:
                if backend == "qdrant" and size > 100_000:
                    log("  qdrant local mode: skipped above 100k (a test double, not a server)")
                    continue
                built = root / f"{backend}-{size}"
                if args.reuse and (built / BUILT_FILE).is_file():
                    build_s = json.loads((built / BUILT_FILE).read_text())["build_s"]
                    log(f"  {backend}: reusing the build in {built} (built in {build_s:.0f} s)")
                else:
                    shutil.rmtree(built, ignore_errors=True)  # an unfinished build is started again
                    build_s = build(backend, built, vectors, buckets)
                    log(f"  {backend}: built in {build_s:.0f} s")
                asked = args.qdrant_queries if backend == "qdrant" else args.queries
                for label, tuning in tunings(backend, args).items():
                    found = measure_in_child(backend, built, size, args.dim, args.queries, asked, tuning)
                    results[label] = {"build_s": build_s, **found}
                    log(f"  {label}: opened in {found['open_s']:.1f} s, +{found['rss_mib']:.0f} MiB resident")
                    for row in found["rows"]:
                        log(f"    keep {row['keep']:.1%}: p50 {row['p50']:.2f} ms, "
                            f"recall {row['recall']:.4f}")
                if not (args.keep or args.reuse):
                    shutil.rmtree(built, ignore_errors=True)
            sections.append(table(size, args.dim, results, command, machine, load_before))
        if not args.no_http:
            log(f"hybrid over HTTP, {args.http_points:,} points")
            found = hybrid_http(root, args.http_points, min(args.queries, 50))
            sections.append(http_table(found, command, machine, load_before))
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    text = "\n\n".join(sections)
    print(text)
    if not args.no_write:
        intro = (
            "Written by `scripts/bench_filtered.py` (each run replaces its own subsections). Filters "
            "`bucket < N` on a uniformly drawn integer field keep 50%, 10%, 1% and 0.1% of the "
            "points; recall@10 against exact search over the filtered subset (numpy), mean over "
            "the queries of each cell (worst query alongside); p50/p95 of `store.search` in this process. "
            "Default settings: int8 quantization with rescoring, hnsw_ef 256. Qdrant local mode is "
            "qdrant-client's test double of a server (it scans in Python, and warns above 20,000 points): "
            "its figures say that filters mean the same there, not how fast a Qdrant server is."
        )
        for section in sections:
            sub = section.split("\n", 1)[0]
            bench.write_subsection(bench.DOC, HEADING, intro, sub, section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
