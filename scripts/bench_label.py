"""bench_label: label-run speed over synthetic collections, and eval of the tiny test model on CIFAR-10.

Label runs: for each --sizes N, a collection of N random unit vectors (--dim, default 512 as ViT-B-32)
is built in a temporary home (not timed as part of the run), then labelled with --labels random label
embeddings (1000 by default, top-3) by `curation.labels.label_store`, the code `clipsearch label` runs,
given the label embeddings so that no text encoder is timed. Reported: the whole run (reading every
vector from the store, scoring, writing every payload, flushing) with its stages, and separately the
matrix part alone (`top_labels` over the same number of in-memory vectors).

Eval: the tiny test model (tests/tiny-clip.json, fixed random weights) embeds the 10,000 CIFAR-10 test
images and is evaluated as `clipsearch eval DATA --model ...` does. Random weights: chance level is the
expected answer (top-1 ~0.10, top-5 ~0.50); the point is the cost and that the numbers are sane.

    .venv/bin/python scripts/bench_label.py --sizes 100000 1000000 --stores edge faiss
    .venv/bin/python scripts/bench_label.py --sizes            # the eval only
    .venv/bin/python scripts/bench_label.py --sizes 100000 --stores edge --compare-rebuild --skip-eval
    .venv/bin/python scripts/bench_label.py --sizes 100000 --stores edge faiss --command cifar10 imagenet \
        --skip-eval

--command LABELS...: time `clipsearch label --labels L` itself, a subprocess timed whole (start-up, the
model, encoding the label prompts, the run, close), once per label set given, over a collection built
as above but under the identity of --model (default ViT-B-32) with fixed random weights, so that the
command loads that model and encodes its label prompts as it would for a user's collection.

Searches during and after each run: a thread searches the open store (k=10, random unit queries) all
through the run, and the collection is opened again after it (as the next `clipsearch search` or a
server opens it) for --queries more; each reports p50/p95 and recall@10 against exact search (numpy
over the same vectors). --compare-rebuild labels two copies of one build: one as the store does it now,
one as it did before (edge: building the index at the end of the run, `store.optimize()`, as every
flush and close did after payload updates until the store stopped rebuilding for them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from scripts import benchlib as bench  # noqa: E402

SECTION = "## Label runs (bench_label)"
COMMAND_SECTION = "## The label command, timed whole (bench_label --command)"
EVAL_SECTION = "## Eval of the tiny test model on CIFAR-10 (bench_label)"
CIFAR = bench.REPO.parent / "shared" / "data" / "cifar10-test" / "test"
BUILD_BATCH = 10_000
log = bench.logger("bench_label")


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def build(settings: Any, size: int, dim: int, seed: int, identity: Any = None) -> float:
    """A collection of `size` random unit vectors with image-like payloads, under `identity` (a
    ModelIdentity; default: a synthetic one); seconds it took."""
    from indexer.schema import CollectionSchema, ModelIdentity
    from indexer.stores import Record, open_store
    from indexer.stores.base import canonical_id

    if identity is None:
        identity = ModelIdentity(model="synthetic", pretrained="", architecture="synthetic", weights="",
                                 dim=dim)
    dim = identity.dim
    schema = CollectionSchema.new(identity, fields={"width": "integer", "height": "integer"})
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    store = open_store(settings, "bench", create=schema)
    try:
        for start in range(0, size, BUILD_BATCH):
            vectors = unit_rows(rng, min(BUILD_BATCH, size - start), dim)
            store.upsert([
                Record(canonical_id(f"00000000-0000-0000-0000-{start + i:012d}"), {"default": v},
                       {"uri": f"/photos/{start + i}.jpg", "path": f"/photos/{start + i}.jpg",
                        "fingerprint": str(start + i), "metadata": {"width": 640, "height": 480}})
                for i, v in enumerate(vectors)
            ])
            log(f"built {start + len(vectors):,}/{size:,}")
        store.flush()
    finally:
        store.close()
    return time.perf_counter() - started


def built_vectors(size: int, dim: int, seed: int) -> np.ndarray:
    """The vectors `build` wrote, drawn again."""
    rng = np.random.default_rng(seed)
    return np.vstack([unit_rows(rng, min(BUILD_BATCH, size - start), dim)
                      for start in range(0, size, BUILD_BATCH)])


class Searcher:
    """Searches a store with random unit queries, checking each against exact search over `vectors`."""

    def __init__(self, vectors: np.ndarray, seed: int) -> None:
        self.vectors, self.rng = vectors, np.random.default_rng(seed)
        self.ms: list[float] = []
        self.recalls: list[float] = []

    def one(self, store: Any) -> None:
        query = unit_rows(self.rng, 1, self.vectors.shape[1])[0]
        clock = time.perf_counter()
        hits = store.search(query, 10)
        self.ms.append(1000 * (time.perf_counter() - clock))
        truth = set(np.argpartition(-(self.vectors @ query), 10)[:10].tolist())
        found = {int(h.id[-12:]) for h in hits}  # the ids end in the row number
        self.recalls.append(len(truth & found) / 10)

    def summary(self) -> dict[str, float]:
        return {"queries": len(self.ms), **bench.percentiles(self.ms, (50, 95)),
                "recall": float(np.mean(self.recalls)) if self.recalls else float("nan")}


def label_run(settings: Any, labels: list[str], label_vectors: np.ndarray, vectors: np.ndarray,
              queries: int, rebuild: bool = False) -> dict[str, Any]:
    from indexer.curation.labels import label_store
    from indexer.stores import open_store

    store = open_store(settings, "bench")
    during, running = Searcher(vectors, seed=11), threading.Event()
    running.set()

    def search_meanwhile() -> None:
        while running.is_set():
            during.one(store)
            time.sleep(0.05)

    searcher = threading.Thread(target=search_meanwhile, daemon=True)
    if getattr(store, "concurrent_reads", False):
        searcher.start()
    try:
        report = label_store(store, None, labels, label_vectors=label_vectors, logit_scale=100.0, top_k=3,
                             threshold=0.2, progress=False)
    finally:
        running.clear()
        if searcher.is_alive():
            searcher.join()
        clock = time.perf_counter()
        if rebuild and hasattr(store, "optimize"):
            store.optimize()  # as before: the index built again for the points the payloads moved
        store.close()  # part of what a user waits for: the command ends after it
        closed = time.perf_counter() - clock
    after = Searcher(vectors, seed=12)
    store = open_store(settings, "bench")
    try:
        after.one(store)  # the first search after opening pages the store in: not counted
        after.ms.clear()
        after.recalls.clear()
        for _ in range(queries):
            after.one(store)
    finally:
        store.close(**({"optimize": False} if hasattr(store, "optimize") else {}))
    return {"seconds": report.seconds + closed, "labeled": report.labeled, "unsure": report.unsure,
            "timings": {**report.timings, "close": closed}, "during": during.summary(),
            "after": after.summary(), "rebuild": rebuild}


def matrix_only(size: int, dim: int, label_vectors: np.ndarray, seed: int) -> float:
    """Seconds of `top_labels` alone over `size` vectors, made in chunks (not timed)."""
    from indexer.curation.labels import BATCH, top_labels

    rng = np.random.default_rng(seed)
    spent = 0.0
    for start in range(0, size, BATCH * 16):
        rows = unit_rows(rng, min(BATCH * 16, size - start), dim)
        clock = time.perf_counter()
        top_labels(rows, label_vectors, 100.0, 3)
        spent += time.perf_counter() - clock
    return spent


def bench_sizes(args: argparse.Namespace) -> list[dict[str, Any]]:
    from tests.helpers import make_settings

    rng = np.random.default_rng(1)
    labels = [f"label {i}" for i in range(args.labels)]
    label_vectors = unit_rows(rng, args.labels, args.dim)
    results = []
    for store, size in ((store, size) for store in args.stores for size in args.sizes):
        with tempfile.TemporaryDirectory(prefix="bench-label-") as home:
            # A flat FAISS index: the build is not what is measured, and a label run never searches.
            overrides: dict[str, Any] = {"store": store, "faiss": {"index": "flat"}}
            if store == "qdrant":
                overrides["qdrant"] = {"path": Path(home) / "qdrant"}
            settings = make_settings(Path(home) / "home", Path(home) / "unused.pt", **overrides)
            built = build(settings, size, args.dim, seed=size)
            vectors = built_vectors(size, args.dim, seed=size)
            variants = [False, True] if args.compare_rebuild and store == "edge" else [False]
            pristine = Path(home) / "pristine"
            if len(variants) > 1:
                shutil.copytree(settings.home, pristine)
            for rebuild in variants:
                if rebuild:
                    shutil.rmtree(settings.home)
                    shutil.copytree(pristine, settings.home)
                log(f"{size:,} vectors built in {built:.0f} s; labelling"
                    + (" (rebuild at the end)" if rebuild else ""))
                run = label_run(settings, labels, label_vectors, vectors, args.queries, rebuild)
                matrix = matrix_only(size, args.dim, label_vectors, seed=size)
                results.append({"store": store, "size": size, "build": built, "matrix": matrix, **run})
                log(f"{store} {size:,}: whole run {run['seconds']:.1f} s, matrix alone {matrix:.1f} s, "
                    "stages "
                    + ", ".join(f"{k} {v:.1f} s" for k, v in run["timings"].items())
                    + f"; searches during {run['during']}, after {run['after']}")
    for size in args.matrix_sizes:
        matrix = matrix_only(size, args.dim, label_vectors, seed=size)
        results.append({"store": "(none)", "size": size, "matrix": matrix})
        log(f"matrix alone over {size:,}: {matrix:.1f} s")
    return results


def bench_command(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`clipsearch label --labels L` timed whole, per store, size and label set in --command."""
    import json
    import subprocess

    from indexer.models.loading import load_model
    from tests.helpers import make_settings

    results = []
    for store, size in ((store, size) for store in args.stores for size in args.sizes):
        with tempfile.TemporaryDirectory(prefix="bench-label-command-") as folder:
            model, checkpoint = bench.random_checkpoint(args.model, Path(folder) / "weights.pt")
            identity = load_model(model, str(checkpoint), "cpu").identity
            home = Path(folder) / "home"
            settings = make_settings(home, checkpoint, model=model, store=store, faiss={"index": "flat"})
            built = build(settings, size, identity.dim, seed=size, identity=identity)
            env = bench.subprocess_env(CLIPSEARCH_HOME=str(home), CLIPSEARCH_MODEL=model,
                                       CLIPSEARCH_PRETRAINED=str(checkpoint), CLIPSEARCH_DEVICE="cpu",
                                       CLIPSEARCH_STORE=store, CLIPSEARCH_FAISS_INDEX="flat")
            for labels in args.command:
                log(f"{store} {size:,} (built in {built:.0f} s): clipsearch label --labels {labels}")
                clock = time.perf_counter()
                done = subprocess.run(bench.cli("label", "-c", "bench", "--labels", labels, "--json"),
                                      cwd=bench.REPO, env=env, capture_output=True, text=True, check=False)
                seconds = time.perf_counter() - clock
                if done.returncode != 0:
                    raise SystemExit(f"clipsearch label failed:\n{done.stderr[-3000:]}")
                report = json.loads(done.stdout)
                if report["labeled"] + report["unsure"] != size:
                    raise SystemExit(f"clipsearch label did not label every item: {report}")
                results.append({"store": store, "size": size, "labels": labels, "seconds": seconds,
                                "build": built, "report": report})
                log(f"  {seconds:.1f} s whole; its report: {report}")
    return results


def render_command(args: argparse.Namespace, runs: list[dict[str, Any]], machine: str) -> str:
    lines = [COMMAND_SECTION, "", f"Command: `{bench.command_line('bench_label.py')}`", "", machine, "",
             f"`clipsearch label -c bench --labels L --json` run as a subprocess and timed whole: process "
             f"start, loading the collection's model ({args.model}, fixed random weights), encoding the "
             "label prompts (8 templates a label), reading every vector, scoring, writing every payload, "
             "closing the store. The collection: random unit vectors under that model's identity, built "
             "beforehand (not timed). Target: a 100k label run on the default store (edge) <= 60 s whole.",
             "", "| store | items | labels | whole command | items/s | (build) |",
             "|---|---:|---|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['store']} | {r['size']:,} | {r['labels']} | {r['seconds']:.1f} s "
                     f"| {r['size'] / r['seconds']:,.0f} | {r['build']:.0f} s |")
    return "\n".join(lines) + "\n"


def bench_eval() -> dict[str, Any]:
    from indexer.curation.evaluate import Embedded, embed_images, load_dataset, prompt_name, run_eval
    from indexer.curation.labels import load_templates, prompt_embeddings
    from indexer.models.loading import load_model
    from indexer.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as folder:
        config, checkpoint = bench.random_checkpoint("tiny", Path(folder) / "tiny.pt")
        started = time.perf_counter()
        model = load_model(config, str(checkpoint), "cpu")
        data = load_dataset(CIFAR)
        images = embed_images(model, data.paths, Settings().max_image_pixels, 256, 1, progress=False)
        embedded = time.perf_counter() - started
        classes = prompt_embeddings(model, [prompt_name(c) for c in data.classes], load_templates("cifar10"))
        evaluated = run_eval(data, [Embedded("tiny (random weights)", images, classes)])
    seconds = time.perf_counter() - started
    log(f"eval: {seconds:.0f} s ({embedded:.0f} s embedding)")
    return {"seconds": seconds, "embedding": embedded, "images": evaluated["images"],
            "result": evaluated["systems"][0]["result"]}


def render(args: argparse.Namespace, sizes: list[dict[str, Any]], machine: str) -> str:
    lines = [SECTION, "", f"Command: `{bench.command_line('bench_label.py')}`", "", machine, "",
             f"Label runs over random unit vectors ({args.dim}-d), {args.labels} labels, top-3: the whole "
             "run as `clipsearch label` does it (read every vector from the store, score, write every "
             "payload, flush, close; the label embeddings are given, so no text encoder runs), its stages, "
             "and the matrix part alone (`top_labels`: float32 products and softmax in batches of 4096) "
             "over as many in-memory vectors. Target: 1M x 1000 in under 2 minutes on 2 cores.", "",
             "| store | vectors | whole run | items/s | read | score + payloads | write | close "
             "| matrix alone | (build) | searches during: n, p50 / p95 ms, recall@10 "
             "| searches after: n, p50 / p95 ms, recall@10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]

    def searches(found: dict[str, float]) -> str:
        if not found["queries"]:
            return "not measured"
        return f"{found['queries']}, {found['p50']:.1f} / {found['p95']:.1f}, {found['recall']:.4f}"

    for r in sizes:
        if "timings" not in r:  # --matrix-sizes: the matrix part alone
            lines.append(f"| (none) | {r['size']:,} | | | | | | | {r['matrix']:.1f} s | | | |")
            continue
        t = r["timings"]
        speed = f"{r['size'] / r['seconds']:,.0f}"
        name = r["store"] + (" (index rebuilt at the end, as before)" if r["rebuild"] else "")
        cells = [name, f"{r['size']:,}", f"{r['seconds']:.1f} s", speed,
                 *(f"{t[stage]:.1f} s" for stage in ("read", "score", "write", "close")),
                 f"{r['matrix']:.1f} s", f"{r['build']:.0f} s", searches(r["during"]), searches(r["after"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_eval(evaluated: dict[str, Any], machine: str) -> str:
    r = evaluated["result"]
    zs, t2i, i2i = r["zero_shot"], r["text_to_image"], r["image_to_image"]
    values = (zs["top1"], zs["top5"], *t2i.values(), *i2i.values())
    return "\n".join([
        EVAL_SECTION, "", f"Command: `{bench.command_line('bench_label.py')}`", "", machine, "",
        f"The tiny test model (tests/tiny-clip.json, fixed random weights) on the {evaluated['images']:,} "
        f"CIFAR-10 test images with the CIFAR-10 prompt ensemble, as `clipsearch eval DATA --model ...` "
        f"runs it: {evaluated['seconds']:.0f} s in all ({evaluated['embedding']:.0f} s loading the model and "
        "embedding the images). With random weights, chance level is the expected answer (10 classes: "
        "zero-shot top-1 0.10, top-5 0.50, text-to-image recall@1 0.10); image-to-image can sit above "
        "chance, since even random convolutions keep some colour statistics. Meaningful numbers need "
        "trained weights.", "",
        "| zero-shot top-1 | top-5 | text-to-image R@1 | R@5 | R@10 | image-to-image R@1 | R@5 | R@10 "
        "| mAP |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(f"{v:.4f}" for v in values) + " |",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--matrix-sizes", type=int, nargs="*", default=[],
                        help="Sizes to time the matrix part alone at (no store), e.g. 1000000.")
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--stores", choices=["edge", "faiss", "qdrant"], nargs="+", default=["edge"])
    parser.add_argument("--skip-eval", action="store_true", help="Only the label runs.")
    parser.add_argument("--compare-rebuild", action="store_true",
                        help="edge: label two copies of one build, as now and with the index rebuilt "
                             "at the end (as before).")
    parser.add_argument("--queries", type=int, default=50, help="Searches after each run [50].")
    parser.add_argument("--command", nargs="+", metavar="LABELS", default=[],
                        help="Time `clipsearch label --labels LABELS` whole instead, once per label set "
                             "(comma-separated labels or a built-in set: cifar10, imagenet).")
    parser.add_argument("--model", default="ViT-B-32",
                        help="--command: the collection's model, fixed random weights [ViT-B-32].")
    parser.add_argument("--out", type=Path, default=bench.DOC, help="The Markdown file for the section.")
    args = parser.parse_args()
    load_before = bench.loadavg()
    if args.command:
        runs = bench_command(args)
        machine = bench.machine_line(bench.machine(), load_before, bench.loadavg())
        section = render_command(args, runs, machine)
        print(section)
        bench.write_section(args.out, COMMAND_SECTION, section)
    elif args.sizes or args.matrix_sizes:
        sizes = bench_sizes(args)
        section = render(args, sizes, bench.machine_line(bench.machine(), load_before, bench.loadavg()))
        print(section)
        bench.write_section(args.out, SECTION, section)
    if not args.skip_eval:
        load_before = bench.loadavg()
        evaluated = bench_eval()
        section = render_eval(evaluated, bench.machine_line(bench.machine(), load_before, bench.loadavg()))
        print(section)
        bench.write_section(args.out, EVAL_SECTION, section)


if __name__ == "__main__":
    main()
