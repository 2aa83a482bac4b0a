"""bench_duplicates: the whole `find_duplicates` run over N synthetic items in a real store.

It builds a collection of N synthetic 512-d unit vectors (a mixture of 1000 Gaussian clusters, as CLIP
embeddings cluster) with sha256 and perceptual-hash metadata, plants duplicates among them, then times
one whole duplicate search (curation.duplicates.find_duplicates: loading every vector, one store search
per item, the perceptual-hash range search, grouping) and checks the planted groups were found:
- exact: 1% of items are byte copies of another (same sha256 and vector);
- near: 1% are altered copies (vector + small noise, cosine ~0.99; pHash/dHash with 3 bits flipped).
It writes the section "## Duplicate search (bench_duplicates)" of docs/benchmarks.md (--out: another file).

    .venv/bin/python scripts/bench_duplicates.py --size 100000
    .venv/bin/python scripts/bench_duplicates.py --size 3000 --out /tmp/b.md  # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from scripts import benchlib as bench  # noqa: E402

DIM = 512
SECTION = "## Duplicate search (bench_duplicates)"
BATCH = 2048
log = bench.logger("bench_duplicates")


Planted = dict[int, int]  # copy -> original


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, list[str], list[str], Planted, Planted]:
    """Vectors, sha256 and phash values of n items, and the planted copies: {copy: original} for
    exact and for near ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    x = centres[rng.integers(1000, size=n)] + 0.9 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    codes = rng.integers(0, 2**63, size=(n, 3, 2), dtype=np.uint64) * 2 + rng.integers(0, 2, (n, 3, 2),
                                                                                         dtype=np.uint64)
    sha = [f"{i:064x}" for i in range(n)]
    picks = rng.permutation(n)
    planted = max(1, n // 100)
    exact = {int(c): int(o) for c, o in zip(picks[:planted], picks[planted:2 * planted], strict=True)}
    near = {int(c): int(o) for c, o in zip(picks[2 * planted:3 * planted], picks[3 * planted:4 * planted],
                                          strict=True)}
    for copy, original in exact.items():
        x[copy], codes[copy], sha[copy] = x[original], codes[original], sha[original]
    for copy, original in near.items():
        v = x[original] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
        x[copy] = v / np.linalg.norm(v)
        codes[copy] = codes[original]
        for part in (0, 1):  # 3 bits flipped in the first view's pHash and dHash
            for bit in rng.choice(64, 3, replace=False):
                codes[copy, 0, part] ^= np.uint64(1) << np.uint64(int(bit))
    phash = ["-".join(f"{int(p):016x}{int(d):016x}" for p, d in item) for item in codes]
    return x, sha, phash, exact, near


def build(settings, n: int) -> tuple[float, dict[int, int], dict[int, int], list[str]]:
    from indexer.schema import CollectionSchema, ModelIdentity
    from indexer.stores import Record, open_store

    x, sha, phash, exact, near = synthetic(n)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    schema = CollectionSchema.new(ModelIdentity("synthetic", "", "synthetic", "", DIM),
                                  fields={"width": "integer", "height": "integer", "sha256": "keyword",
                                          "phash": "keyword"})
    started = time.perf_counter()
    store = open_store(settings, "bench", create=schema)
    try:
        for start in range(0, n, BATCH):
            store.upsert([
                Record(ids[i], {"default": x[i]}, {
                    "uri": f"/synthetic/{i}.jpg", "path": f"/synthetic/{i}.jpg", "fingerprint": f"1:{i}",
                    "metadata": {"width": 640, "height": 480, "sha256": sha[i], "phash": phash[i]}})
                for i in range(start, min(start + BATCH, n))
            ])
    finally:
        store.close()  # the store builds its index on close
    return time.perf_counter() - started, exact, near, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--store", choices=["edge", "faiss"], default="edge")
    parser.add_argument("--out", type=Path, default=bench.DOC)
    args = parser.parse_args()

    from indexer.curation.duplicates import find_duplicates
    from indexer.settings import Settings
    from indexer.stores import open_store

    load_before = bench.loadavg()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), store=args.store)
        log(f"building {args.size} items in {args.store}")
        build_s, exact, near, ids = build(settings, args.size)
        store = open_store(settings, "bench")
        try:
            log("finding duplicates")
            started = time.perf_counter()
            report = find_duplicates(store, progress=sys.stderr.isatty())
            run_s = time.perf_counter() - started
        finally:
            store.close()
    uri = {f"/synthetic/{i}.jpg": i for i in range(args.size)}
    together = {(min(uri[g["keep"]], uri[o]), max(uri[g["keep"]], uri[o])) for g in report["groups"]
                for o in g["others"]}
    planted = {(min(c, o), max(c, o)) for c, o in {**exact, **near}.items()}
    found = len(planted & together) / len(planted)
    extra = sum(len(g["others"]) for g in report["groups"]) - len(planted)
    log(f"{run_s:.1f}s, planted pairs found {found:.4f}, extra grouped {extra}")
    machine = bench.machine_line(bench.machine(), load_before, bench.loadavg())
    table = "\n".join([
        "| items | store | build (upsert + index) | duplicate search, whole run | per item "
        "| planted pairs found | extra items grouped |",
        "|---|---|---|---|---|---|---|",
        f"| {args.size:,} | {args.store} | {build_s:.1f} s | {run_s:.1f} s "
        f"| {1000 * run_s / args.size:.2f} ms "
        f"| {found:.4f} | {extra} |",
    ])
    section = f"""{SECTION}

The whole `find_duplicates` run (`clipsearch duplicates` without printing): every vector loaded from the
store, one store search per item (k={10}), the perceptual-hash range search (FAISS binary index, 3
views per item), the CLIP and hash links grouped transitively. Synthetic data: {args.size:,} 512-d vectors
from 1000 clusters, random 64-bit pHash/dHash per view; 1% of items planted as byte copies (same sha256
and vector) and 1% as altered copies (cosine ~0.99 to the original, 3 bits flipped in pHash and dHash).

{table}

Command: `{bench.command_line("bench_duplicates.py")}`

{machine}
"""
    bench.write_section(args.out, SECTION, section)
    log(f"wrote {SECTION!r} to {args.out}")


if __name__ == "__main__":
    main()
