"""bench_rerank: the latency that VLM re-ranking adds to a search, by top N and concurrency.

Each run re-ranks the first N real photos (../shared/data/imagenet-samples, as files: thumbnails
are made from the JPEGs, cold) for one query with `indexer.vlm.Vlm`, timing the whole `rerank`
call: everything the re-rank adds to a search's answer. By default against the fake
OpenAI-compatible server of tests/vlm_server.py in a process of its own, answering every request
after --delay-ms (200): the ideal is ceil(N / concurrency) x delay, and the rest is our overhead
(thumbnails, prompts, HTTP, parsing). Also the same call answered from the cache, and listwise
mode (one request with N images). Configurations alternate within each round, so a drift in the
shared machine's load hits them all alike.

Against the fake server it writes the section "## VLM re-rank benchmark (bench_rerank)" of
docs/benchmarks.md; against a real endpoint (--url) it prints the table, and writes it only to --out.

    .venv/bin/python scripts/bench_rerank.py                                   # the doc's numbers
    .venv/bin/python scripts/bench_rerank.py --sizes 10 --concurrency 4 --rounds 1 --out /tmp/b.md  # smoke
    .venv/bin/python scripts/bench_rerank.py --url http://localhost:8001/v1 \\
        --model Qwen/Qwen2.5-VL-3B-Instruct --sizes 10 20 --concurrency 1 4 --out /tmp/vlm.md
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from indexer.settings import Settings  # noqa: E402
from indexer.vlm import Vlm  # noqa: E402
from scripts import benchlib as bench  # noqa: E402

SECTION = "## VLM re-rank benchmark (bench_rerank)"
QUERY = "a small animal in the water"
log = bench.logger("bench_rerank")


@contextlib.contextmanager
def fake_server(delay_ms: float) -> Iterator[str]:
    """tests/vlm_server.py in its own process (so its work is not timed as ours); yields its URL."""
    process = subprocess.Popen([sys.executable, "-m", "tests.vlm_server", "--delay-ms", str(delay_ms)],
                               cwd=bench.REPO, env=bench.subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the fake VLM server did not start")
        yield url
    finally:
        bench.stop(process)


def photos(count: int) -> list[dict[str, Any]]:
    files = sorted(bench.IMAGES.glob("*.JPEG"))[:count]
    if len(files) < count:
        raise SystemExit(f"need {count} photos in {bench.IMAGES}, found {len(files)}")
    return [{"id": f.stem, "score": 1.0 - i / 1000, "path": str(f), "uri": str(f)}
            for i, f in enumerate(files)]


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    hits = photos(max(args.sizes))
    configs = [("pointwise", n, c) for n in args.sizes for c in args.concurrency]
    configs += [("listwise", n, 1) for n in args.sizes] if args.listwise else []
    vlms = {(mode, c): Vlm(Settings(vlm={"url": url, "model": args.model, "api_key": args.api_key,
                                         "concurrency": c, "mode": mode, "deadline_s": 600,
                                         "timeout_s": 300}))
            for mode, _, c in configs}
    for vlm in vlms.values():  # the model's name and the connections, before any timing
        vlm.probe(timeout_s=30)

    def run(mode: str, n: int, c: int) -> Any:
        def once(round_: int) -> tuple[float, float]:
            vlm = vlms[(mode, c)]
            vlm.clear_cache()  # cold: no thumbnail, no answer kept
            cold = vlm.rerank(QUERY, hits[:n], top_n=n)
            if cold.status != "ok":
                raise RuntimeError(f"{mode} N={n} c={c}: {cold.reason}")
            warm = vlm.rerank(QUERY, hits[:n], top_n=n)
            log(f"{mode} N={n} c={c} round {round_}: {cold.ms:.0f} ms, cached {warm.ms:.1f} ms")
            return cold.ms, warm.ms
        return once

    try:
        runs = bench.alternate({f"{m} {n} {c}": run(m, n, c) for m, n, c in configs}, args.rounds)
    finally:
        for vlm in vlms.values():
            vlm.close()
    return {"configs": configs, "runs": runs}


def table(args: argparse.Namespace, results: dict[str, Any], fake: bool) -> str:
    head = "| mode | N | concurrency | added ms (median) | max | cached ms |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if fake:
        ideal = f" | ideal ({args.delay_ms:g} ms each) | overhead | cached ms |"
        head = head.replace(" | cached ms |", ideal)
        rule += "---:|---:|"
    lines = [head, rule]
    for mode, n, c in results["configs"]:
        cold = [ms for ms, _ in results["runs"][f"{mode} {n} {c}"]]
        warm = [ms for _, ms in results["runs"][f"{mode} {n} {c}"]]
        median = statistics.median(cold)
        row = f"| {mode} | {n} | {c if mode == 'pointwise' else '-'} | {median:.0f} | {max(cold):.0f} |"
        if fake:
            ideal = (math.ceil(n / c) if mode == "pointwise" else 1) * args.delay_ms
            row += f" {ideal:.0f} | {median - ideal:+.0f} |"
        lines.append(row + f" {statistics.median(warm):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50], help="top N values")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=200.0, help="the fake server's answer time")
    parser.add_argument("--url", help="a real OpenAI-compatible endpoint instead of the fake server")
    parser.add_argument("--model", help="its model (default: the first it lists)")
    parser.add_argument("--api-key")
    parser.add_argument("--no-listwise", dest="listwise", action="store_false")
    parser.add_argument("--out", type=Path, help="the doc to write (default: docs/benchmarks.md, fake only)")
    args = parser.parse_args()

    load_before = bench.loadavg()
    with contextlib.nullcontext(args.url) if args.url else fake_server(args.delay_ms) as url:
        results = measure(args, url)
    load_after = bench.loadavg()
    fake = not args.url
    body = table(args, results, fake)
    print(body)
    out = args.out or (bench.DOC if fake else None)
    if out is None:
        return
    against = (f"the fake OpenAI-compatible server of tests/vlm_server.py answering every request in "
               f"{args.delay_ms:g} ms" if fake else f"`{args.url}` (model {args.model or 'as listed'})")
    section = "\n\n".join([
        SECTION,
        f"`{bench.command_line('bench_rerank.py')}`",
        bench.machine_line(bench.machine(), load_before, load_after),
        f"Time a whole `Vlm.rerank` call adds to a search for one query over the top N real photos "
        f"(JPEG files, thumbnails made cold each round), against {against}; {args.rounds} rounds, "
        "configurations alternating. Pointwise sends one request per hit, at most `concurrency` at once "
        "(CLIPSEARCH_VLM_CONCURRENCY); listwise sends one request with all N thumbnails. "
        + ("The ideal is ceil(N / concurrency) x the answer time; overhead is ours: thumbnails, "
           "prompts, HTTP and parsing. " if fake else "")
        + "Cached: the same call again, answered from the cache (no request).",
        body,
        "Against a real endpoint, see docs/vlm.md (`--url`, `--model`, `--api-key`).",
    ])
    bench.write_section(out, SECTION, section + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
