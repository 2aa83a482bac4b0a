#!/usr/bin/env python3
"""bench_search_threads: what the edge store's search thread count costs one search.

Builds an edge collection of --points vectors as bench_filtered builds them (its data and `build`;
with --reuse, a build of the same size already under --root, bench_filtered's included), then, in
alternating rounds, opens it in a fresh process once per --threads count (the store's
`search_threads`, replaced in that process) and runs --queries searches one after another,
unfiltered and with a filter keeping 1% of the points: p50/p95 wall-clock ms, and the process's CPU
ms per search (the shard's search threads included). The default compares 8, what Qdrant Edge
started on its own on a 2-CPU machine before the store gave a count, with 1, what the store gives
there. Writes the section "## Store search threads (bench_search_threads)" of docs/benchmarks.md,
one subsection per size (--no-write: print only).

    .venv/bin/python scripts/bench_search_threads.py --points 100
    .venv/bin/python scripts/bench_search_threads.py --points 1000000 --root /tmp/e1m --reuse
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import bench_filtered as filtered  # noqa: E402
from scripts import benchlib as bench  # noqa: E402

HEADING = "## Store search threads (bench_search_threads)"
INTRO = """Written by `scripts/bench_search_threads.py`: one edge search, one after another, with the shard's
search pool at each thread count (8: what Qdrant Edge started on its own on this 2-CPU machine); CPU
is the whole process's, so it counts the pool's threads too. A server answering many queries at once
pays that CPU once per query."""
KEEP_1_PERCENT = 10  # bucket < 10 keeps 10/1000 of the points
log = bench.logger("bench_search_threads")


def cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def measure(built: Path, asked: np.ndarray, threads: int) -> dict[str, Any]:
    """In a fresh process: open the build with `threads` search threads, time the searches `asked`."""
    from indexer.stores import edge, open_store
    from indexer.stores.filters import FieldCondition, Filter, Range

    edge.search_threads = lambda: threads  # this process only
    store = open_store(filtered.store_settings("edge", built), "filtered")
    results: dict[str, Any] = {}
    try:
        for cell, where in (("all", None),
                            ("1%", Filter(must=[FieldCondition(key="metadata.bucket",
                                                               range=Range(lt=KEEP_1_PERCENT))]))):
            for query in asked[:5]:  # warm: the first calls page in
                store.search(query, filtered.K, filter=where)
            times = []
            cpu_before = cpu_seconds()
            for query in asked:
                started = time.perf_counter()
                store.search(query, filtered.K, filter=where)
                times.append(1000 * (time.perf_counter() - started))
            results[cell] = {**bench.percentiles(times, (50, 95)),
                             "cpu_ms": 1000 * (cpu_seconds() - cpu_before) / len(asked)}
    finally:
        store.close()
    return results


def measure_in_child(built: Path, asked: np.ndarray, threads: int) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (built, asked, threads))


def subsection(points: int, runs: dict[str, list[dict[str, Any]]], command: str, machine: dict[str, Any],
               load: tuple[list[float], list[float]], rounds: int, queries: int) -> str:
    lines = [f"### {points:,} points", "", f"Command: `{command}`", "",
             bench.machine_line(machine, *load), "",
             f"{rounds} round(s), the thread counts in alternating order; {queries} queries per cell "
             "and round; medians over the rounds.", "",
             "| search threads | all: p50 ms | all: p95 ms | all: CPU ms per search | 1%: p50 ms "
             "| 1%: p95 ms | 1%: CPU ms per search |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rounds_done in runs.items():
        cells = []
        for cell in ("all", "1%"):
            for key in ("p50", "p95", "cpu_ms"):
                cells.append(f"{np.median([r[cell][key] for r in rounds_done]):.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100, help="points in the collection [100]")
    parser.add_argument("--dim", type=int, default=512, help="vector width [512]")
    parser.add_argument("--threads", type=int, nargs="+", default=[8, 1],
                        help="search thread counts to compare [8 1]")
    parser.add_argument("--queries", type=int, default=500, help="searches per cell and round [500]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the order [3]")
    parser.add_argument("--root", type=Path, default=None, help="working folder [a temporary one]")
    parser.add_argument("--reuse", action="store_true",
                        help="use a build of this size under --root when there is one (bench_filtered's too)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args(argv)
    if args.points < 1 or args.queries < 1 or args.rounds < 1 or min(args.threads) < 1:
        parser.error("--points, --queries, --rounds and --threads must be positive")
    load_before = bench.loadavg()
    root = args.root or Path(tempfile.mkdtemp(prefix="bench_search_threads-"))
    built = root / f"edge-{args.points}"
    try:
        asked = filtered.query_vectors(args.dim, args.queries)
        if not (args.reuse and (built / filtered.BUILT_FILE).is_file()):
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir(parents=True)
            log(f"building {args.points} points")
            vectors, buckets, _ = filtered.data(args.points, args.dim, args.queries)
            filtered.build("edge", built, vectors, buckets)
            del vectors, buckets
        runs = bench.alternate({
            str(threads): lambda round_, threads=threads: measure_in_child(built, asked, threads)
            for threads in args.threads
        }, args.rounds)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    text = subsection(args.points, runs, bench.command_line("bench_search_threads.py", argv), bench.machine(),
                      (load_before, bench.loadavg()), args.rounds, args.queries)
    print(text)
    if not args.no_write:
        bench.write_subsection(bench.DOC, HEADING, INTRO, f"### {args.points:,} points", text)
        log(f"updated {bench.DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
