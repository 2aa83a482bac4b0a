"""bench_catalog: ingest of a product catalog whose images are URLs, concurrent against one at a time.

A catalog of --images products (tests/catalogs.py, every image by URL) is served by the loopback
server of the tests (tests/fetch_server.py), which adds --latency seconds (50 ms) to every answer,
as a remote image host would. `index_catalog` ingests it end to end (fetch, decode, embed with the
tiny test model, store) into a fresh home with `fetch.concurrency` = --concurrency against 1; then
the same catalog again, where every image is revalidated (304) and nothing is embedded. Runs
alternate their order over --rounds and the median counts (the machine is shared).

It writes the section "## Catalog ingest by URL (bench_catalog)" of docs/benchmarks.md.

    .venv/bin/python scripts/bench_catalog.py [--images 200] [--concurrency 16] [--rounds 3]
    .venv/bin/python scripts/bench_catalog.py --images 20 --rounds 1 --out /tmp/b.md  # smoke
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from scripts import benchlib as bench  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SECTION = "## Catalog ingest by URL (bench_catalog)"
log = bench.logger("bench_catalog")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server adds per answer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=bench.DOC)
    args = parser.parse_args()

    from indexer.ingest.catalog import ColumnMapping
    from indexer.ingest.catalog_run import index_catalog
    from indexer.models.loading import load_model
    from tests.catalogs import make_catalog
    from tests.fetch_server import fetch_server
    from tests.helpers import make_settings

    load_before = bench.loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_catalog-"))
    config, checkpoint = bench.random_checkpoint("tiny", work / "tiny.pt")
    model = load_model(config, str(checkpoint), "cpu")
    mapping = ColumnMapping.from_flags("sku", ["image"], "title", [])
    modes = {"concurrent": args.concurrency, "one at a time": 1}
    with fetch_server(bench.IMAGES, latency=args.latency) as server:
        catalog = make_catalog(work / "shop", "csv", bench.IMAGES, count=args.images, base_url=server.url,
                               url_every=1, multi_every=0)

        def run(mode: str) -> Any:
            def once(round_: int) -> dict[str, float]:
                home = work / f"home-{round_}-{modes[mode]}"
                settings = make_settings(home, checkpoint, fetch={"allow_private": True,
                                                                 "concurrency": modes[mode]})
                first = index_catalog(settings, catalog.path, mapping, model=model, progress=False)
                again = index_catalog(settings, catalog.path, mapping, model=model, progress=False)
                n = args.images
                assert (first.embedded, first.downloaded, first.failed) == (n, n, 0), first
                assert (again.embedded, again.downloaded) == (0, 0), again
                log(f"round {round_} {mode}: {first.seconds:.2f} s, again {again.seconds:.2f} s")
                return {"first": first.seconds, "first_fetch": first.fetch_seconds, "again": again.seconds,
                        "again_fetch": again.fetch_seconds}

            return once

        results = bench.alternate({mode: run(mode) for mode in modes}, args.rounds)
    machine = bench.machine_line(bench.machine(), load_before, bench.loadavg())
    write(args, results, machine)


def write(args: argparse.Namespace, results: dict[str, list[dict[str, float]]], machine: str) -> None:
    rows = []
    keys = ("first", "first_fetch", "again", "again_fetch")
    median = {mode: {k: statistics.median(r[k] for r in runs) for k in keys}
              for mode, runs in results.items()}
    for mode, m in median.items():
        workers = args.concurrency if mode == "concurrent" else 1
        rows.append(f"| {mode} ({workers} in flight) | {m['first']:.2f} | {m['first_fetch']:.2f} | "
                    f"{args.images / m['first']:.1f} | {m['again']:.2f} | {m['again_fetch']:.2f} |")
    one, many = median["one at a time"], median["concurrent"]
    speedup = {k: one[k] / many[k] for k in keys}
    section = f"""{SECTION}

{args.images} products, each with one image by URL from a loopback server that adds
{args.latency * 1000:.0f} ms to every answer (tests/fetch_server.py over the shared ImageNet photos),
ingested end to end by `index_catalog` (fetch into the cache, decode, embed with the tiny test
model, store in the embedded edge collection) into a fresh home; then the same catalog again, when
every image is revalidated with its ETag (304, nothing downloaded or embedded). Median of
{args.rounds} alternating rounds.

| fetch | first ingest (s) | of which fetching (s) | images/s | re-run (s) | of which revalidating (s) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Concurrent fetching makes the first ingest {speedup['first']:.1f}x faster end to end here (the fetch
stage alone {speedup['first_fetch']:.1f}x; one at a time, the {args.latency * 1000:.0f} ms per image
alone costs {args.images * args.latency:.0f} s), and the re-run {speedup['again']:.1f}x (revalidation
{speedup['again_fetch']:.1f}x: a conditional request per image pays the latency too). The rest of an
ingest (decode, embed, store) is the same in both.

{machine}

Command: `{bench.command_line("bench_catalog.py")}`
"""
    bench.write_section(args.out, SECTION, section)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
