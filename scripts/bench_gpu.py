"""bench_gpu: indexing throughput on one CUDA GPU, and FAISS-GPU exact search, in one command.

Run by scripts/bench_gpu.sh (see there for the machine it needs). Steps, each timed, the whole run
kept under --budget seconds (480: 8 minutes; a step that would start after that is skipped and said so):

1. builds --images JPEGs (20,000) from the shared photos: resized copies, varied (scale, crop, mirror,
   JPEG quality), written by one process per core;
2. for each model (ViT-B-32, ViT-L-14; random weights: the compute of trained ones) and batch size
   (256, 512), with GPU JPEG decoding on and off (CLIPSEARCH_GPU_DECODE): `index_sources` from the
   files to the vectors in a fresh embedded store, images/s end to end, the GPU's utilisation
   sampled every 50 ms by pynvml in a thread; and the split: the same files decoded alone (the
   pipeline's decode path, nothing encoded) and one decoded batch encoded alone, as images/s;
3. FAISS exact search (GpuIndexFlatIP) over 1M and 10M random unit vectors of the ViT-B-32 size:
   1000 queries at once and one at a time, k=10 (faiss-gpu when installed; said so when not).

--dry-run: the same steps on the CPU with the tiny test model and small counts (tests/test_bench_gpu.py
runs it in CI): 32 images, batch 16, FAISS-CPU over 10k and 20k vectors with 100 queries, torch on one
thread (a busy CI machine stalls multi-threaded OpenMP regions).

Results: WORKDIR/results.json, and the section "## GPU benchmark (bench_gpu)" of --out (docs/benchmarks.md;
not written by a dry run unless --out is given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a file: the repository importable
from scripts import benchlib as bench  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SECTION = "## GPU benchmark (bench_gpu)"
log = bench.logger("bench_gpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, small counts (CI)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs to build [20000; dry run 48]")
    parser.add_argument("--models", nargs="+", default=None, help="[ViT-B-32 ViT-L-14; dry run tiny]")
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="[256 512; dry run 8 16]")
    parser.add_argument("--vectors", nargs="+", type=int, default=None,
                        help="FAISS sizes [1000000 10000000; dry run 10000 50000]")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    parser.add_argument("--workdir", type=Path, default=None, help="[a temporary folder, removed after]")
    parser.add_argument("--out", type=Path, default=None, help=f"doc to write [{bench.DOC}; dry run: none]")
    args = parser.parse_args()
    dry = args.dry_run
    if dry:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; see the module doc
    started = time.monotonic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    import torch

    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        sys.exit("bench_gpu: PyTorch sees no CUDA GPU (use --dry-run to exercise the steps on the CPU)")
    run: dict[str, Any] = {
        "command": "scripts/bench_gpu.sh " + " ".join(sys.argv[1:]), "dry_run": dry, "device": device,
        "machine": bench.machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": bench.loadavg(), "skipped": [], "index": [], "faiss": {},
    }  # fmt: skip

    def left() -> float:
        return args.budget - (time.monotonic() - started)

    count = args.images or (32 if dry else 20_000)
    folder = workdir / "jpegs"
    seconds = _timed(lambda: build_jpegs(folder, count))
    run["jpegs"] = {"count": count, "seconds": seconds, "bytes": bench.disk_bytes(folder)}
    log(f"{count} JPEGs in {seconds:.1f} s")

    models = args.models or (["tiny"] if dry else ["ViT-B-32", "ViT-L-14"])
    batches = args.batches or ([16] if dry else [256, 512])
    for name in models:
        if left() < 30:
            run["skipped"].append(f"{name}: out of time")
            continue
        model = _model(name, device, workdir)
        for batch in batches:
            for gpu_decode in (True, False):
                if left() < 20:
                    run["skipped"].append(f"{name} batch {batch} gpu_decode={gpu_decode}: out of time")
                    continue
                result = index_run(model, folder, workdir / "home", batch, gpu_decode)
                run["index"].append({"model": name, "batch": batch, "gpu_decode": gpu_decode, **result})
                log(f"{name} batch {batch} gpu_decode={gpu_decode}: {result['images_per_s']:.0f} img/s, "
                    f"GPU {result['gpu_util']}%")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    sizes = args.vectors or ([10_000, 20_000] if dry else [1_000_000, 10_000_000])
    run["faiss"] = faiss_search(sizes, 512, dry, left, queries=100 if dry else 1000)
    run["seconds"] = time.monotonic() - started
    run["load_after"] = bench.loadavg()
    (workdir / "results.json").write_text(json.dumps(run, indent=2, default=str))
    section = render(run)
    print(section)
    out = args.out or (None if dry else bench.DOC)
    if out is not None:
        bench.write_section(out, SECTION, section)
        log(f"wrote {out}")
    log(f"done in {run['seconds']:.0f} s; results in {workdir / 'results.json'}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


# --- 1. the JPEGs ----------------------------------------------------------------------------------


def build_jpegs(folder: Path, count: int) -> None:
    """`count` varied JPEGs from the shared photos, one process per core."""
    sources = sorted(str(p) for p in bench.IMAGES.glob("*.JPEG"))
    if not sources:
        sys.exit(f"bench_gpu: no photos at {bench.IMAGES}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    jobs = [(sources, str(folder), start, min(count, start + 500)) for start in range(0, count, 500)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_write_jpegs, jobs))


def _write_jpegs(job: tuple[list[str], str, int, int]) -> None:
    from PIL import Image, ImageOps

    sources, folder, start, stop = job
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        with Image.open(sources[i % len(sources)]) as im:
            image = im.convert("RGB")
        scale = rng.uniform(0.6, 1.4)
        w, h = max(64, int(image.width * scale)), max(64, int(image.height * scale))
        image = image.resize((w, h), Image.Resampling.BILINEAR)
        cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        image.save(Path(folder) / f"{i:06d}.jpg", quality=int(rng.integers(75, 96)))


# --- 2. indexing ------------------------------------------------------------------------------------


def _model(name: str, device: str, workdir: Path) -> Any:
    from indexer.models.loading import load_model

    if name == "tiny":
        config, checkpoint = bench.random_checkpoint("tiny", workdir / "tiny-clip.pt")
        return load_model(config, str(checkpoint), device)
    return load_model(name, "", device)  # random weights, drawn at load: nothing to download


class GpuSampler:
    """The GPU's utilisation (%) every `every` seconds, from pynvml in a thread; None without it."""

    def __init__(self, every: float = 0.05) -> None:
        self.samples: list[int] = []
        self.every = every
        self.handle = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception:  # no pynvml (pip install nvidia-ml-py) or no NVIDIA driver: not measured
            self.handle = None

    def __enter__(self) -> GpuSampler:
        if self.handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.handle is not None:
            self._thread.join()

    @property
    def mean(self) -> float | str:
        return round(float(np.mean(self.samples)), 1) if self.samples else "n/a"


def index_run(model: Any, folder: Path, home: Path, batch: int, gpu_decode: bool) -> dict[str, Any]:
    """End to end into a fresh embedded store; then decoding alone and encoding alone (the split)."""
    import torch

    from indexer.ingest import pipeline
    from indexer.ingest.sources import walk_folder
    from indexer.settings import Settings

    shutil.rmtree(home, ignore_errors=True)
    settings = Settings(home=home, model=model.identity.model, pretrained=model.identity.pretrained,
                        device=model.device, batch_size=batch, gpu_decode=gpu_decode, workers=0)
    with GpuSampler() as sampler:
        started = time.perf_counter()
        report = pipeline.index_sources(settings, [folder], "bench", model=model, progress=False)
        seconds = time.perf_counter() - started
    shutil.rmtree(home, ignore_errors=True)
    items = list(walk_folder(folder, []))
    workers = pipeline.workers_for(settings, model.device)
    started = time.perf_counter()
    first = None
    for decoded in pipeline._batches(settings, model, items, batch, workers):  # the index run's decode path
        first = first or decoded
    decode_rate = len(items) / (time.perf_counter() - started)
    pixels = pipeline._stack([d.pixels for d in first if d.pixels is not None])
    model.encode_pixels(pixels)  # warm-up (kernels, autotuning)
    repeats = 3
    started = time.perf_counter()
    for _ in range(repeats):
        model.encode_pixels(pixels)
    if model.device.startswith("cuda"):
        torch.cuda.synchronize()
    encode_rate = repeats * len(pixels) / (time.perf_counter() - started)
    return {
        "embedded": report.embedded, "failed": report.failed, "seconds": seconds,
        "images_per_s": report.embedded / seconds, "gpu_util": sampler.mean,
        "decode_images_per_s": decode_rate, "encode_images_per_s": encode_rate, "decode_workers": workers,
    }  # fmt: skip


# --- 3. FAISS ---------------------------------------------------------------------------------------


def faiss_search(sizes: list[int], dim: int, dry: bool, left: Any, queries: int = 1000) -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"skipped": "faiss is not installed"}
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if not dry and not gpu:
        return {"skipped": f"faiss {faiss.__version__} has no GPU support here: pip install faiss-gpu-cu12"}
    import torch

    device = "cuda" if gpu else "cpu"
    results: dict[str, Any] = {"kind": "GpuIndexFlatIP" if gpu else "IndexFlatIP (CPU: dry run)", "runs": []}
    resources = faiss.StandardGpuResources() if gpu else None
    if gpu:
        import faiss.contrib.torch_utils  # noqa: F401  (indexes take torch tensors where they live)
    generator = torch.Generator(device=device).manual_seed(0)
    for size in sizes:
        if left() < 15:
            results["runs"].append({"vectors": size, "skipped": "out of time"})
            continue
        started = time.perf_counter()
        index = faiss.GpuIndexFlatIP(resources, dim) if gpu else faiss.IndexFlatIP(dim)
        for start in range(0, size, 1_000_000):  # in chunks: bounded temporary memory
            chunk = torch.randn(min(1_000_000, size - start), dim, device=device, generator=generator)
            chunk = torch.nn.functional.normalize(chunk, dim=1)
            index.add(chunk if gpu else chunk.numpy())
        build = time.perf_counter() - started
        asked = torch.randn(queries, dim, device=device, generator=generator)
        asked = torch.nn.functional.normalize(asked, dim=1)
        results["runs"].append({"vectors": size, "build_s": build,
                                **_search_times(index, asked if gpu else asked.numpy(), gpu)})
        del index
    return results


def _search_times(index: Any, queries: Any, gpu: bool) -> dict[str, float]:
    index.search(queries[:10], 10)  # warm-up
    best = min(_timed(lambda: _sync(index.search(queries, 10), gpu)) for _ in range(3))
    single = [_timed(lambda i=i: _sync(index.search(queries[i : i + 1], 10), gpu)) for i in range(20)]
    return {"queries": len(queries), "batch_ms": best * 1000, "qps_batched": len(queries) / best,
            "single_p50_ms": float(np.median(single)) * 1000}


def _sync(result: Any, gpu: bool) -> Any:
    if gpu:
        import torch

        torch.cuda.synchronize()
    return result


# --- the report -------------------------------------------------------------------------------------


def render(run: dict[str, Any]) -> str:
    m = run["machine"]
    lines = [
        SECTION, "",
        "Written by `scripts/bench_gpu.sh`; re-running it replaces this section."
        + (" DRY RUN: CPU, tiny model, small counts: no GPU figures." if run["dry_run"] else ""),
        "", "```", run["command"], "```", "",
        f"Run started {run['started']}, {run['seconds']:.0f} s in all. "
        + bench.machine_line(m, run["load_before"], run["load_after"]), "",
        f"{run['jpegs']['count']} JPEGs built from the shared photos in {run['jpegs']['seconds']:.1f} s "
        f"({run['jpegs']['bytes'] / 2**20:.0f} MiB). Random weights (the compute of trained ones). images/s: "
        f"from the files to the vectors in a fresh embedded store (`index_sources`); decode alone: the "
        f"run's decode path with nothing encoded; encode alone: one decoded batch, encoded 3 times; GPU %: "
        f"pynvml's utilisation, sampled every 50 ms during the run.", "",
        "| model | batch | GPU JPEG decode | images/s | GPU % | decode alone, img/s | encode alone, img/s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in run["index"]:
        lines.append(
            f"| {r['model']} | {r['batch']} | {'on' if r['gpu_decode'] else 'off'} | "
            f"{r['images_per_s']:.0f} | {r['gpu_util']} | {r['decode_images_per_s']:.0f} | "
            f"{r['encode_images_per_s']:.0f} |"
        )
    f = run["faiss"]
    lines += ["", "FAISS exact search (inner product on unit vectors, 512-d, k=10; a batch of queries at "
              "once, and 20 one at a time):", ""]
    if "skipped" in f:
        lines.append(f"Not run: {f['skipped']}.")
    else:
        lines += [f"Index: {f['kind']}.", "",
                  "| vectors | build s | queries in a batch | batch ms | queries/s | one query p50 ms |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in f["runs"]:
            if "skipped" in r:
                lines.append(f"| {r['vectors']:,} | skipped: {r['skipped']} | | | | |")
            else:
                lines.append(f"| {r['vectors']:,} | {r['build_s']:.1f} | {r['queries']} | "
                             f"{r['batch_ms']:.1f} | {r['qps_batched']:.0f} | {r['single_p50_ms']:.2f} |")
    if run["skipped"]:
        lines += ["", "Skipped to stay within the time budget: " + "; ".join(run["skipped"]) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
