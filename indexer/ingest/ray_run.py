"""Indexing on Ray (`clipsearch index --ray [ADDRESS]`, extra `clipsearch[ray]`): decoding in CPU tasks
and encoding in actors, as two Ray Data `map_batches` stages, the driver writing each batch to the
collection as it arrives.

Each encoder actor loads the collection's model(s) once and keeps them; where the cluster has GPUs there
is one actor per GPU (`num_gpus=1`), otherwise CPU actors sized to the cluster (`encoder_pool`). The
planning and the writing are the local run's (`indexer.ingest.pipeline.sync_store` with `ray_embedder` as its
Embedder): the same walk, the same fingerprints compared with the store, vanished files dropped,
failures recorded, every batch written as soon as it is embedded. So a killed run re-embeds only what is
missing, and a collection indexed locally one day can be brought up to date on Ray the next.

Across machines every node must read the files at the same paths (a shared filesystem) and have
clipsearch[index,ray] installed; the store is written by the driver only: a Qdrant server or cluster in
production (`CLIPSEARCH_STORE=qdrant`), an embedded store with a Ray on this machine. docs/scaling.md.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CollectionBusy, ModelLoadError
from indexer.ingest.batches import Decoded, decode_item
from indexer.ingest.pipeline import Embedded, Embedder, IndexReport, embed_all, open_for_indexing, sync_store
from indexer.ingest.sources import SourceItem, source_roots
from indexer.locking import collection_lock
from indexer.models.loading import ClipModel, PixelTransform, load_model, set_torch_threads
from indexer.settings import Settings

log = logging.getLogger(__name__)

LOCAL = "local"  # `--ray` without an address: a Ray started on this machine (or RAY_ADDRESS's)
REMOTE_PIXELS = np.zeros(0, dtype=np.uint8)  # a good item's pixels, left with the actor that encoded it


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings both)
    except ImportError as exc:
        raise ModelLoadError(
            f"--ray needs Ray Data ({exc.name} is missing): pip install 'clipsearch[ray]', or index "
            f"without --ray"
        ) from exc
    return ray


def connect(address: str | None = None) -> Any:
    """Ray, connected: as it is when this process already called ray.init (tests, notebooks), else to
    `address` ("auto", "ray://head:10001", "head:6379"), else a Ray on this machine (RAY_ADDRESS wins)."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(
            address=None if address in (None, "", LOCAL) else address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,  # workers' logs stay in Ray's session folder; progress is the driver's
        )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run's own progress bar counts images
    return ray


@dataclass(frozen=True)
class EncoderPool:
    actors: int
    cpus: float  # per actor
    gpus: float  # per actor
    batch_size: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus else "cpu"


def encoder_pool(resources: dict[str, float], settings: Settings) -> EncoderPool:
    """One actor per GPU (a CPU each for its feeding); without GPUs, actors of up to 8 CPU threads that
    take 3/4 of the cluster's CPUs, the rest left to the decode tasks (decoding is ~10% of a CPU
    encoder's work: docs/benchmarks.md)."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus:
        return EncoderPool(gpus, 1, 1, settings.batch_size or 256)
    per_actor = max(1, min(8, cpus // 4))
    return EncoderPool(max(1, (cpus * 3 // 4) // per_actor), per_actor, 0, settings.batch_size or 64)


# --- the two stages ------------------------------------------------------------------------------


def decode_stage(
    batch: dict[str, np.ndarray],
    transform: PixelTransform,
    max_pixels: int,
    draft_size: int | None,
    side: int,
) -> dict[str, np.ndarray]:
    """Ray task: files to model-ready uint8 pixels (zeros where a file failed, with its reason)."""
    count = len(batch["index"])
    pixels = np.zeros((count, side, side, 3), dtype=np.uint8)
    ok = np.zeros(count, dtype=bool)
    meta = np.empty(count, dtype=object)
    for row, path in enumerate(batch["path"]):
        decoded = decode_item(_item(path), transform, max_pixels, draft_size)
        if decoded.pixels is not None and decoded.pixels.shape == pixels.shape[1:]:
            pixels[row], ok[row] = decoded.pixels, True
        elif decoded.pixels is not None:  # a transform that does not crop square: say so, never guess
            decoded.reason = f"decoded to {decoded.pixels.shape}, the model takes {pixels.shape[1:]}"
        meta[row] = pickle.dumps(
            (decoded.reason, decoded.width, decoded.height, decoded.photo, decoded.hashes)
        )
    return {"index": batch["index"], "path": batch["path"], "pixels": pixels, "ok": ok, "meta": meta}


class EncodeStage:
    """Ray actor: the collection's models, loaded once; embeds each decoded batch into every vector."""

    def __init__(self, settings: Settings, specs: dict[str, tuple[str, str, str]], active: str, device: str,
                 threads: int) -> None:
        loaded: dict[tuple[str, str, str], ClipModel] = {}
        self.models = {}
        for name, spec in specs.items():
            if spec not in loaded:
                loaded[spec] = load_model(spec[0], spec[1], device, spec[2])
            self.models[name] = loaded[spec]
        self.primary = self.models[active]
        self.settings = settings
        if device == "cpu":
            set_torch_threads(threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.flatnonzero(batch["ok"])
        decoded = [Decoded(_item(batch["path"][i]), batch["pixels"][i]) for i in good]
        vectors = embed_all(self.settings, self.models, self.primary, decoded) if decoded else {}
        out = {key: batch[key] for key in ("index", "ok", "meta")}  # the pixels stay here
        for name, model in self.models.items():
            column = np.zeros((len(batch["ok"]), model.dim), dtype=np.float32)
            if decoded:
                column[good] = vectors[name]
            out[f"vector:{name}"] = column
        return out


def _item(path: Any) -> SourceItem:
    """The item a stage needs to (re)decode a file: its path (the driver keeps the real items)."""
    return SourceItem(str(path), str(path), "")


def ray_embedder(ray: Any) -> Embedder:
    """An Embedder (ingest.pipeline) that decodes and encodes on the Ray that `ray` is connected to."""

    def embed(
        settings: Settings, models: dict[str, ClipModel], primary: ClipModel, items: Sequence[SourceItem]
    ) -> Embedded:
        if not items:
            return
        pool = encoder_pool(ray.cluster_resources(), settings)
        specs = {
            name: (model.identity.model, model.identity.pretrained, model.identity.precision)
            for name, model in models.items()
        }
        active = next(name for name, model in models.items() if model is primary)
        rows = [{"index": i, "path": item.path} for i, item in enumerate(items)]
        blocks = max(1, -(-len(rows) // pool.batch_size))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            decode_stage,
            fn_kwargs={"transform": primary.pixel_transform, "max_pixels": settings.max_image_pixels,
                       "draft_size": primary.draft_size, "side": primary.input_size},
            batch_size=pool.batch_size, batch_format="numpy", num_cpus=1,
        ).map_batches(
            EncodeStage,
            fn_constructor_kwargs={"settings": settings, "specs": specs, "active": active,
                                   "device": pool.device, "threads": int(pool.cpus)},
            batch_size=pool.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.cpus,
            num_gpus=pool.gpus or None,
        )  # fmt: skip
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
            batch = []
            for index, ok, meta in zip(out["index"], out["ok"], out["meta"], strict=True):
                reason, width, height, photo, hashes = pickle.loads(meta)
                pixels = REMOTE_PIXELS if ok else None
                batch.append(Decoded(items[int(index)], pixels, reason, width, height, photo, hashes))
            good = np.flatnonzero(out["ok"])
            yield batch, {name: out[f"vector:{name}"][good] for name in models}

    return embed


def index_on_ray(
    settings: Settings,
    sources: Sequence[str | Path],
    collection: str | None = None,
    address: str | None = None,
    progress: bool = True,
) -> IndexReport:
    """`indexer.ingest.pipeline.index_sources`, with decoding and encoding on Ray (see the module doc)."""
    collection = collection or settings.collection
    started = time.perf_counter()
    roots = source_roots(sources)
    ray = connect(address)
    # The driver loads the models on its CPU only to check them against the collection: actors encode.
    local = settings.with_flags(device="cpu") if settings.device != "cpu" else settings
    with collection_lock(settings.home, collection):
        try:
            store, models = open_for_indexing(local, collection)
        except CollectionBusy as exc:
            raise CollectionBusy(
                f"collection {collection!r} is open in another process (a running `clipsearch serve`); stop "
                f"it, or index into a Qdrant server (CLIPSEARCH_STORE=qdrant) that both can share"
            ) from exc
        try:
            report = sync_store(settings, store, models, roots, progress, embedder=ray_embedder(ray))
        finally:
            store.close()
        from indexer.models.onnx_export import (
            export_for_queries,  # as a local run does: torch-free queries after
        )

        export_for_queries(settings.home, models.values())
    report.seconds = time.perf_counter() - started
    return report
