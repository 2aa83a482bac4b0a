"""bench_query: the query path, per store and collection size.

For each store and size it builds a collection of N synthetic 512-d vectors through the store API
(upsert, then the store's own index build on close), then measures, each in a fresh process:
- build time: upsert + index optimisation;
- recall@10 of the store's search against exact brute force (numpy), over held-out queries;
- resident memory per vector: the RSS growth of a process that opens the store and runs the
  queries, divided by N (anonymous and file-backed parts apart), and the collection's disk size;
- HTTP latency: the real API (search_api.app.create_app under uvicorn, on loopback) with the
  ViT-B-32 architecture (random weights: only the compute matters here), p50/p95 of sequential
  POST /v1/search for distinct texts (each one runs the text encoder) and for one repeated text
  (answered from the text-embedding cache).
It writes the section "## Query benchmark (bench_query)" of docs/benchmarks.md (replacing only that
section; --out names another file) and keeps raw results in WORKDIR/results.json.

    .venv/bin/python scripts/bench_query.py --sizes 100000 1000000 --stores edge faiss qdrant
    .venv/bin/python scripts/bench_query.py --sizes 2000 --stores edge --skip-http --out /tmp/b.md  # smoke
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from indexer.limits import usable_cpus  # noqa: E402
from indexer.models.loading import query_threads  # noqa: E402
from scripts import benchlib as bench  # noqa: E402

DIM = 512
K = 10
COLLECTION = "bench"
SECTION = "## Query benchmark (bench_query)"
UPSERT_BATCH = 2048

# The synthetic data: a mixture of Gaussian clusters on the unit sphere. Uniform random vectors
# would be a poor stand-in for CLIP embeddings: in 512-d every pair of them is nearly orthogonal,
# so "nearest neighbours" are arbitrary and recall numbers mean little. Image embeddings are
# clustered (by subject, style, near-duplicates), share a common direction (CLIP's "cone"), and
# vary within a cluster along few directions. So: 1000 centres around a shared mean, cluster sizes
# from a flat Dirichlet (a few large, many small), each cluster spread along its own random
# 32-d subspace plus a little isotropic noise. Nearest-neighbour cosines come out around 0.85
# (top-1) and 0.80 (10th), typical pairs around 0.2-0.4. Queries are held-out draws from the same
# mixture, as text queries land near the images they describe.
CLUSTERS = 1000
CLUSTER_RANK = 32
MIXTURE_SEED = 0
DATA_STREAM, QUERY_STREAM = 1, 2

TARGETS = {"uncached_p50_ms": 30.0, "cached_p50_ms": 5.0, "recall": 0.98, "bytes_per_vector": 1500}

_NOUNS = ["dog", "cat", "car", "bicycle", "tree", "house", "bird", "boat", "child", "horse", "kite", "chair",
          "mountain", "river", "pizza", "guitar", "train", "bridge", "flower", "laptop", "shoe", "clock"]
_ADJECTIVES = ["red", "small", "old", "happy", "wet", "wooden", "shiny", "blurry", "striped", "sleepy"]
_PLACES = ["on the beach", "in the snow", "at night", "in a kitchen", "next to a window", "in the park",
           "on a city street", "under a bridge", "in a forest", "on a table"]


# --- data ------------------------------------------------------------------------------------


def _mixture() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(MIXTURE_SEED)
    mean = rng.standard_normal(DIM)
    mean /= np.linalg.norm(mean)
    centres = 0.6 * mean + rng.standard_normal((CLUSTERS, DIM)) / np.sqrt(DIM)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((CLUSTERS, CLUSTER_RANK, DIM)) / np.sqrt(DIM * CLUSTER_RANK)
    weights = rng.dirichlet(np.ones(CLUSTERS))
    spread = rng.uniform(0.4, 0.8, CLUSTERS)
    return centres.astype(np.float32), bases.astype(np.float32), weights, spread.astype(np.float32)


def clustered(n: int, stream: int, chunk: int = 65536) -> Iterator[np.ndarray]:
    """n unit vectors from the mixture, in chunks; each chunk seeded by its offset, so any prefix
    of a stream is the same whatever n is."""
    centres, bases, weights, spread = _mixture()
    for start in range(0, n, chunk):
        rng = np.random.default_rng([stream, start])
        m = min(chunk, n - start)
        labels = rng.choice(CLUSTERS, size=m, p=weights)
        z = rng.standard_normal((m, CLUSTER_RANK)).astype(np.float32)
        x = centres[labels] + 0.15 * rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM)
        order = np.argsort(labels, kind="stable")
        bounds = np.flatnonzero(np.diff(labels[order])) + 1
        for group in np.split(order, bounds):
            k = labels[group[0]]
            x[group] += spread[k] * (z[group] @ bases[k])
        yield (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ensure_data(workdir: Path, n: int, queries: int) -> tuple[Path, Path, Path]:
    """(vectors, queries, exact top-K ids) files for size n, made once and reused."""
    vectors = workdir / f"vectors-{n}.npy"
    query_file = workdir / f"queries-{queries}.npy"
    truth = workdir / f"truth-{n}-{queries}.npy"
    if not vectors.exists():
        log(f"generating {n} vectors")
        out = np.lib.format.open_memmap(vectors.with_suffix(".tmp.npy"), "w+", np.float32, (n, DIM))
        at = 0
        for chunk in clustered(n, DATA_STREAM):
            out[at : at + len(chunk)] = chunk
            at += len(chunk)
        out.flush()
        del out
        os.replace(vectors.with_suffix(".tmp.npy"), vectors)
    if not query_file.exists():
        np.save(query_file, np.concatenate(list(clustered(queries, QUERY_STREAM))))
    if not truth.exists():
        log(f"exact top-{K} for {queries} queries over {n} vectors")
        q = np.load(query_file)
        data = np.load(vectors, mmap_mode="r")
        best_ids = np.zeros((len(q), 0), np.int64)
        best_scores = np.zeros((len(q), 0), np.float32)
        for start in range(0, n, 131072):
            scores = q @ np.asarray(data[start : start + 131072]).T
            ids = np.arange(start, start + scores.shape[1])[None, :].repeat(len(q), 0)
            best_scores = np.concatenate([best_scores, scores], axis=1)
            best_ids = np.concatenate([best_ids, ids], axis=1)
            top = np.argpartition(-best_scores, K, axis=1)[:, :K]
            best_scores = np.take_along_axis(best_scores, top, 1)
            best_ids = np.take_along_axis(best_ids, top, 1)
        order = np.argsort(-best_scores, axis=1)
        np.save(truth, np.take_along_axis(best_ids, order, 1))
    return vectors, query_file, truth


def point_id(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def query_texts(count: int) -> list[str]:
    """Distinct, short, realistic queries (10-12 tokens with start and end), each a cache miss."""
    texts = [f"a photo of a {a} {n} {p}" for n, a, p in itertools.product(_NOUNS, _ADJECTIVES, _PLACES)]
    np.random.default_rng(0).shuffle(texts)
    if count > len(texts):
        raise SystemExit(f"at most {len(texts)} distinct queries")
    return texts[:count]


# --- the steps, each run in its own process -------------------------------------------------------


def _settings(spec: dict[str, Any]) -> Any:
    from indexer.settings import Settings

    url = spec.get("qdrant_url")
    qdrant = {"url": url} if url else {"path": spec["qdrant_path"]}
    return Settings(home=spec["home"], store=spec["store"], collection=COLLECTION, device="cpu",
                    qdrant=qdrant)


def _rss() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def step_build(spec: dict[str, Any]) -> dict[str, Any]:
    from indexer.models.loading import checkpoint_sha256
    from indexer.schema import CollectionSchema, ModelIdentity
    from indexer.stores import Record, drop_collection, open_store

    settings = _settings(spec)
    drop_collection(settings, COLLECTION)
    data = np.load(spec["vectors"], mmap_mode="r")
    n = spec["n"]
    checkpoint = str(Path(spec["checkpoint"]).resolve())
    digest = "sha256:" + checkpoint_sha256(checkpoint)
    identity = ModelIdentity("ViT-B-32", checkpoint, "ViT-B-32", digest, DIM)
    schema = CollectionSchema.new(identity)
    started = time.perf_counter()
    store = open_store(settings, COLLECTION, create=schema)
    for start in range(0, n, UPSERT_BATCH):
        chunk = np.asarray(data[start : min(n, start + UPSERT_BATCH)])
        store.upsert([
            Record(point_id(start + i), {schema.active: v}, {"uri": f"synthetic://{start + i}",
                                                              "metadata": {}})
            for i, v in enumerate(chunk)
        ])
        if start // UPSERT_BATCH % 50 == 0:
            seconds = time.perf_counter() - started
            _progress(spec, phase="upsert", upserted=start + len(chunk), seconds=seconds)
    upserted = time.perf_counter()
    _progress(spec, phase="index", upserted=n, upsert_s=upserted - started)
    store.close()  # edge: HNSW + int8 build (optimize); faiss: index build and save; qdrant: nothing left
    done = time.perf_counter()
    return {"upsert_s": upserted - started, "index_s": done - upserted, "build_s": done - started}


def _progress(spec: dict[str, Any], **state: Any) -> None:
    """Where a build is, for the report when it runs out of time."""
    log(f"  {spec['store']}-{spec['n']}: {state}")
    Path(spec["progress"]).write_text(json.dumps({**state, "at": time.strftime("%H:%M:%S")}))


def step_measure(spec: dict[str, Any]) -> dict[str, Any]:
    from indexer.stores import BACKENDS, open_store

    importlib.import_module(BACKENDS[spec["store"]])  # so imports are not counted as the store's memory
    settings = _settings(spec)
    queries = np.load(spec["queries"])
    truth = np.load(spec["truth"])
    gc.collect()
    before = _rss()
    opened_at = time.perf_counter()
    store = open_store(settings, COLLECTION)
    open_s = time.perf_counter() - opened_at
    count = store.count()
    recalls, latencies = [], []
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = store.search(query, K)
        latencies.append(time.perf_counter() - started)
        found = {uuid.UUID(h.id).int - 1 for h in hits}
        recalls.append(len(found & set(expected.tolist())) / K)
    after = _rss()
    store.close()
    n = spec["n"]
    return {
        "count": count,
        "recall": float(np.mean(recalls)),
        **{f"search_{q}_ms": 1000 * v for q, v in bench.percentiles(latencies, (50, 95)).items()},
        "open_s": open_s,
        "rss_bytes": after["VmRSS"] - before["VmRSS"],
        "rss_anon_bytes": after["RssAnon"] - before["RssAnon"],
        "rss_file_bytes": after["RssFile"] - before["RssFile"],
        "rss_per_vector": (after["VmRSS"] - before["VmRSS"]) / n,
        "rss_anon_per_vector": (after["RssAnon"] - before["RssAnon"]) / n,
    }


def step_serve(spec: dict[str, Any]) -> None:
    import uvicorn

    from search_api.app import create_app

    uvicorn.run(create_app(_settings(spec)), host="127.0.0.1", port=spec["port"], log_level="warning")


def run_step(step: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run a step in a fresh interpreter; its last stdout line is its JSON result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), f"_{step}", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=bench.REPO, env=bench.subprocess_env(), stdout=subprocess.PIPE, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{step} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- HTTP --------------------------------------------------------------------------------------


def measure_http(spec: dict[str, Any], requests: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    import httpx

    def serve(port: int) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "_serve", json.dumps({**spec, "port": port})]

    with bench.serving(serve, bench.subprocess_env(**(env or {}))) as server:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            floor = []
            for _ in range(requests):  # the HTTP stack alone, for scale: no engine work
                started = time.perf_counter()
                client.get("/healthz").raise_for_status()
                floor.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            first = _post(client, "warm-up: the first query opens the collection and loads the model")
            open_s = time.perf_counter() - started
            texts = query_texts(requests + 5)
            for text in texts[:5]:  # a few more before measuring: allocator and caches settle
                _post(client, text)
            uncached = [_post(client, text) for text in texts[5:]]
            repeated = "a photo of a dog on the beach"
            _post(client, repeated)
            cached = [_post(client, repeated) for _ in range(requests)]
            metrics = client.get("/metrics").text
        return {
            "healthz_ms_p50": bench.percentiles(floor, (50,))["p50"],
            "first_query_s": open_s,
            "first_query_encode_ms": first["encode_ms"],
            "uncached": _summary(uncached),
            "cached": _summary(cached),
            "cache_hits": bench.metric(metrics, "clipsearch_text_cache_hits_total"),
            "cache_misses": bench.metric(metrics, "clipsearch_text_cache_misses_total"),
            "stage_metrics": "clipsearch_query_stage_duration_seconds" in metrics,
        }


def _post(client: Any, text: str) -> dict[str, float]:
    started = time.perf_counter()
    response = client.post("/v1/search", json={"text": text, "k": K})
    wall = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    if len(body["results"]) != K:
        raise RuntimeError(f"expected {K} results, got {len(body['results'])}")
    return {"wall_ms": 1000 * wall, "took_ms": body["took_ms"], **body["timings"]}


def _summary(samples: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"n": len(samples)}
    for key in ("wall_ms", "took_ms", "encode_ms", "search_ms"):
        out.update(bench.percentiles([s[key] for s in samples], (50, 95), prefix=f"{key}_p"))
    return out


# --- orchestration --------------------------------------------------------------------------


log = bench.logger("bench_query")


def bench_one(args: argparse.Namespace, store: str, n: int, results: dict[str, Any]) -> dict[str, Any]:
    key = f"{store}-{n}"
    entry: dict[str, Any] = {"store": store, "n": n}
    if store == "qdrant" and n > args.qdrant_local_max and not args.qdrant_url:
        entry["skipped"] = (
            "qdrant-client local mode keeps every point as Python objects and answers each query by exact "
            "brute force in Python, and its upsert path is Python too; it is a test double, not a serving "
            "option, so it is run at 100k only (a Qdrant server gets HNSW and int8 like edge)"
        )
        return entry
    home = args.workdir / f"home-{store}-{n}"
    vectors, queries, truth = ensure_data(args.workdir, n, args.queries)
    spec = {"store": store, "n": n, "home": str(home), "vectors": str(vectors), "queries": str(queries),
            "truth": str(truth), "checkpoint": str(args.checkpoint),
            "qdrant_path": str(home / "qdrant-local"), "qdrant_url": args.qdrant_url}
    previous = results.get(key, {})
    built = (home / "collections").exists() or (home / "qdrant-local").exists()
    if args.reuse and previous.get("build") and built:
        entry["build"] = {**previous["build"], "reused": True}
        log(f"{key}: reusing the collection built earlier")
    else:
        log(f"{key}: building")
        spec["progress"] = str(args.workdir / f"progress-{key}.json")
        try:
            entry["build"] = run_step("build", spec, timeout=args.build_timeout * 60)
        except subprocess.TimeoutExpired:
            progress = json.loads(Path(spec["progress"]).read_text())
            entry["timed_out"] = f"build did not finish within {args.build_timeout:g} min"
            entry["observed"] = progress
            log(f"{key}: {entry['timed_out']}: {progress}")
            return entry
        log(f"{key}: built in {entry['build']['build_s']:.0f} s")
    entry["disk_bytes"] = bench.disk_bytes(home)
    entry["measure"] = run_step("measure", spec)
    log(f"{key}: recall@{K} {entry['measure']['recall']:.4f}, "
        f"{entry['measure']['rss_per_vector']:.0f} B/vector resident")
    if args.skip_http:
        return entry
    entry["http"] = measure_http(spec, args.http_queries)
    log(f"{key}: HTTP p50 uncached {entry['http']['uncached']['wall_ms_p50']:.1f} ms, "
        f"cached {entry['http']['cached']['wall_ms_p50']:.1f} ms")
    cpus = usable_cpus()
    if store == "edge" and cpus > query_threads() and "OMP_NUM_THREADS" not in os.environ:
        # The server's default is query_threads() torch threads; the same run with every CPU, side by side.
        entry["http_all_cpus"] = {"threads": cpus, **measure_http(spec, args.http_queries,
                                                                   {"OMP_NUM_THREADS": str(cpus)})}
        log(f"{key}: with {cpus} torch threads: HTTP p50 uncached "
            f"{entry['http_all_cpus']['uncached']['wall_ms_p50']:.1f} ms")
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--stores", nargs="+", default=["edge", "faiss", "qdrant"],
                        choices=["edge", "faiss", "qdrant"])
    parser.add_argument("--queries", type=int, default=500, help="held-out queries for recall@10")
    parser.add_argument("--http-queries", type=int, default=300, help="HTTP requests per measurement")
    bench.add_workdir_options(parser, "bench-query")
    parser.add_argument("--build-timeout", type=float, default=40, help="minutes per build before giving up")
    parser.add_argument("--qdrant-local-max", type=int, default=100_000)
    parser.add_argument("--qdrant-url", default=None, help="benchmark a Qdrant server instead of local mode")
    parser.add_argument("--reuse", action="store_true", help="reuse collections built by an earlier run")
    parser.add_argument("--skip-http", action="store_true", help="measure the stores only, not the API")
    parser.add_argument("--out", type=Path, default=bench.DOC,
                        help=f"the doc whose section is rewritten [{bench.DOC}]")
    parser.add_argument("--no-doc", action="store_true", help="leave the doc alone")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the doc section from WORKDIR/results.json's last run; measure nothing")
    args = parser.parse_args()
    args.workdir, args.checkpoint = bench.workdir_and_checkpoint(args.workdir, "bench-query", args.checkpoint)
    results_file, results = bench.earlier_results(args.workdir)
    if args.render_only:
        bench.write_section(args.out, SECTION, render(results["last_run"], args))
        return
    run = {"machine": bench.machine(), "load_before": bench.loadavg(),
           "started": time.strftime("%Y-%m-%d %H:%M"), "query_threads": query_threads(),
           "command": bench.command_line("bench_query.py"), "entries": []}
    for n in sorted(args.sizes):
        for store in args.stores:
            entry = bench_one(args, store, n, results)
            entry["load_after"] = bench.loadavg()
            results[f"{store}-{n}"] = entry
            run["entries"].append(entry)
            results_file.write_text(json.dumps(results, indent=2))
    run["load_after"] = bench.loadavg()
    results["last_run"] = run
    results_file.write_text(json.dumps(results, indent=2))
    if not args.no_doc:
        bench.write_section(args.out, SECTION, render(run, args))
        log(f"updated {args.out}")


# --- the report ---------------------------------------------------------------------------------


def _size(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def _command(command: str) -> str:
    """Runs before the shared command line were stored without the interpreter."""
    return command if command.startswith(".venv/") else f".venv/bin/python {command}"


def _bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def render(run: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        SECTION,
        "",
        "Written by `scripts/bench_query.py`; re-running it replaces this section. Command:",
        "",
        "```",
        _command(run["command"]),
        "```",
        "",
        f"Run started {run['started']}. "
        + bench.machine_line(run["machine"], run["load_before"], run["load_after"]),
        "",
        "| store | N | build s (upsert + index) | recall@10 | RSS B/vector (anon + file) | disk | "
        "store search p50 ms | HTTP uncached p50 / p95 ms | HTTP cached p50 / p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in run["entries"]:
        head = f"| {e['store']} | {_size(e['n'])} |"
        if "skipped" in e or "timed_out" in e:
            lines.append(f"{head} {e.get('timed_out', 'not run (see notes)')} | | | | | | |")
            continue
        b, ms = e["build"], e["measure"]
        reused = " (earlier run)" if b.get("reused") else ""
        anon = ms["rss_anon_bytes"] / e["n"]
        http = "not measured | not measured"
        if "http" in e:
            u, c = e["http"]["uncached"], e["http"]["cached"]
            http = (f"{u['wall_ms_p50']:.1f} / {u['wall_ms_p95']:.1f} | "
                    f"{c['wall_ms_p50']:.1f} / {c['wall_ms_p95']:.1f}")
        lines.append(
            f"{head} {b['build_s']:.0f} ({b['upsert_s']:.0f} + {b['index_s']:.0f}){reused} | "
            f"{ms['recall']:.4f} | "
            f"{ms['rss_per_vector']:.0f} ({anon:.0f} + {ms['rss_per_vector'] - anon:.0f}) | "
            f"{_bytes(e['disk_bytes'])} | {ms['search_p50_ms']:.2f} | {http} |"
        )
    if any("http" in e for e in run["entries"]):
        lines += ["", "Where the HTTP time goes (server-side medians, ms: encode / search; from the "
                  "response's `timings`, also exported at `/metrics` as "
                  "`clipsearch_query_stage_duration_seconds`):", ""]
    for e in run["entries"]:
        if "http" in e:
            h = e["http"]
            u, c = h["uncached"], h["cached"]
            floor = ""
            if "healthz_ms_p50" in h:
                floor = f"; `GET /healthz` p50 {h['healthz_ms_p50']:.1f} ms (HTTP alone)"
            lines.append(
                f"- {e['store']} {_size(e['n'])}: "
                f"uncached {u['encode_ms_p50']:.1f} / {u['search_ms_p50']:.2f}, "
                f"cached {c['encode_ms_p50']:.2f} / {c['search_ms_p50']:.2f}; text cache at the end "
                f"{h['cache_hits']:.0f} hits, {h['cache_misses']:.0f} misses; the first query after start "
                f"took {h['first_query_s']:.1f} s (opens the collection, loads and warms the model), "
                f"its encode {h['first_query_encode_ms']:.0f} ms{floor}"
            )
    threads = [e for e in run["entries"] if "http_all_cpus" in e]
    if threads:
        lines += ["", f"The text encoder runs on {run.get('query_threads', 1)} torch thread(s) by default "
                  "(`models.loading.query_threads`: half the CPUs). The same edge servers with every CPU "
                  "for the encoder (`OMP_NUM_THREADS`), measured right after:", ""]
        for e in threads:
            a, d = e["http_all_cpus"], e["http"]
            lines.append(
                f"- edge {_size(e['n'])}, {a['threads']} threads: uncached p50 / p95 "
                f"{a['uncached']['wall_ms_p50']:.1f} / {a['uncached']['wall_ms_p95']:.1f} ms "
                f"(encode p50 {a['uncached']['encode_ms_p50']:.1f} ms; default: "
                f"{d['uncached']['wall_ms_p50']:.1f} / {d['uncached']['wall_ms_p95']:.1f} ms, "
                f"encode {d['uncached']['encode_ms_p50']:.1f} ms), "
                f"cached p50 {a['cached']['wall_ms_p50']:.1f} ms"
            )
    lines += ["", *_target_lines(run), "", *_notes(run, args), ""]
    return "\n".join(lines)


def _target_lines(run: dict[str, Any]) -> list[str]:
    edge = [e for e in run["entries"] if e["store"] == "edge" and "http" in e]
    if not edge:
        return []
    e = max(edge, key=lambda x: x["n"])
    http, measured, t = e["http"], e["measure"], TARGETS
    checks = [
        ("uncached text query p50, HTTP", http["uncached"]["wall_ms_p50"], "<=", t["uncached_p50_ms"], "ms"),
        ("cached text query p50, HTTP", http["cached"]["wall_ms_p50"], "<=", t["cached_p50_ms"], "ms"),
        ("recall@10 against exact", measured["recall"], ">=", TARGETS["recall"], ""),
        ("resident memory per vector", measured["rss_per_vector"], "<=", TARGETS["bytes_per_vector"], "B"),
    ]
    lines = [f"Targets, default store (edge) at {_size(e['n'])}:", ""]
    for what, value, op, target, unit in checks:
        met = value <= target if op == "<=" else value >= target
        shown = f"{value:.4f}" if not unit else f"{value:.1f} {unit}"
        lines.append(f"- {what}: {shown} (target {op} {target:g}{' ' + unit if unit else ''}): "
                     f"{'met' if met else 'MISSED'}")
    return lines


def _notes(run: dict[str, Any], args: argparse.Namespace) -> list[str]:
    from indexer.settings import Settings
    from indexer.stores import edge
    from indexer.stores.faiss_store import config_from

    defaults = Settings()
    faiss_config = config_from(defaults)
    notes = [
        "Notes:",
        "",
        f"- Data: {CLUSTERS} Gaussian clusters of unit vectors in {DIM}-d (shared mean direction, sizes from "
        f"a flat Dirichlet, each cluster spread along its own {CLUSTER_RANK}-d subspace), because CLIP "
        "embeddings are clustered and low-dimensional within clusters; uniform random vectors have no "
        f"meaningful neighbours. {args.queries} held-out queries from the same mixture; recall@10 is the "
        "overlap of the store's top 10 with numpy's exact top 10 (cosine).",
        "- Build: upserts through the `VectorStore` API in batches, then `close()`, where each store "
        f"builds its index (edge: `optimize()`, HNSW m={edge.HNSW_M}, ef_construct={edge.HNSW_EF_CONSTRUCT}, "
        f"plus the int8 copies; faiss: its `{faiss_config.kind}` kind, HNSW{faiss_config.hnsw_m} with "
        f"efSearch {faiss_config.hnsw_ef_search} from {_size(faiss_config.auto_hnsw_at)} vectors; qdrant "
        "local mode: no index). Not a measure of image indexing: no images are embedded. Edge builds one "
        "HNSW graph per optimised segment; an earlier run with ef_construct=128 reached only 0.964 "
        "recall@10 at 1M (0.987 even at ef 1024: parts of the graph unreachable), hence 256.",
        "- Memory: RSS growth of a fresh process from before `open_store` to after the recall queries, "
        "over N. *anon* is heap (for edge: the int8 vectors, HNSW links, id maps); *file* is mmap'd "
        "files the queries touched (edge: the float32 originals read by rescoring, the WAL, the store "
        "library's code). File-backed pages are reclaimable page cache and grow with the variety of "
        "queries, up to the size of the originals; the anon part is what the store needs to keep. Edge's "
        "fixed part (a mapped 32 MiB WAL segment, ~20 MiB of library code) weighs heavily at 100k. Disk is "
        "the whole collection directory (edge: originals, int8 copies, HNSW, payloads, WAL; faiss: "
        "SQLite with vectors and payloads plus the index file).",
        "- HTTP: `create_app` under uvicorn on 127.0.0.1, one httpx client, requests one after another "
        f"({args.http_queries} each), k=10, model ViT-B-32 with random weights (same compute as trained "
        "ones). Uncached: distinct texts of 10-12 tokens, each running the text encoder; cached: one text "
        "repeated (the first call, which fills the cache, is not counted). Wall time at the client, so it "
        "includes HTTP and JSON; the server reports its own `took_ms` and stages in each response.",
        "- Text encoder: `ClipModel.encode_texts` runs the causal text tower over the tokens up to the "
        "end-of-text token only (10-12 here, not 77; exact, see `indexer.models.loading.causal_text_pool`), "
        "and the engine encodes one warm-up query at start.",
        f"- Search settings (edge and Qdrant server, `Settings`): `hnsw_ef={defaults.hnsw_ef}`, "
        f"`quantization={defaults.quantization}` (scalar, quantile {edge.INT8_QUANTILE}, in RAM; float32 "
        f"originals on disk), rescoring with `oversampling={defaults.oversampling:g}`.",
    ]
    for e in run["entries"]:
        if "skipped" in e:
            notes.append(f"- {e['store']} at {_size(e['n'])}: not run: {e['skipped']}.")
        if "timed_out" in e:
            notes.append(f"- {e['store']} at {_size(e['n'])}: the {e['timed_out']} and was stopped; "
                         f"its last progress report: {json.dumps(e['observed'])}.")
    return notes


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1].startswith("_"):
        step, spec = sys.argv[1][1:], json.loads(sys.argv[2])
        if step == "serve":
            step_serve(spec)
        else:
            print(json.dumps({"build": step_build, "measure": step_measure}[step](spec)), flush=True)
    else:
        main()
