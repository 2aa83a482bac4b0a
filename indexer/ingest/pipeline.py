"""The ingest pipeline: compare sources with the store, decode new and changed files in worker
processes, embed them in batches, write them, and drop what disappeared.

Every batch is written as soon as it is embedded, each record carrying its file's fingerprint,
so a run that is interrupted loses at most the batches in flight: the next run finds the rest
already stored and unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CollectionBusy, CollectionNotFound, ModelMismatchError
from indexer.ingest.batches import Decoded, decode_item, decoded_batches
from indexer.ingest.decode import IMAGE_EXTENSIONS
from indexer.ingest.progress import IndexTracker, Progress
from indexer.ingest.sources import SourceItem, WalkProblem, item_id, source_roots, walk_folder
from indexer.limits import usable_cpus
from indexer.locking import collection_lock
from indexer.models.loading import (
    ClipModel,
    check_same_model,
    check_same_precision,
    load_model,
    set_torch_threads,
)
from indexer.schema import IMAGE_FIELDS, CollectionSchema, VectorSpec
from indexer.settings import Settings
from indexer.stores import Record, VectorStore, open_store

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    collection: str
    embedded: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def nothing_indexed(self) -> bool:
        """Every row or file failed: nothing embedded, nothing kept unchanged or updated."""
        kept = self.embedded + self.unchanged + getattr(self, "updated", 0)
        return self.failed > 0 and kept == 0

    def summary(self) -> dict[str, Any]:
        report = asdict(self)
        report.pop("failures")
        report["seconds"] = round(self.seconds, 3)
        return report


# --- sizing to the device ------------------------------------------------------------------


def batch_size_for(settings: Settings, device: str) -> int:
    """settings.batch_size, or when 0: 256 on CUDA (fills a large GPU), 64 on CPU."""
    return settings.batch_size or (256 if device.startswith("cuda") else 64)


def workers_for(settings: Settings, device: str) -> int:
    """settings.workers, or when 0: one decode process per core on CUDA (the GPU encodes); on CPU the
    encoder's threads need the cores, and decoding takes ~10% of the work: one per 4 cores, at least 1
    (1: a decode thread in this process). Measured on 2 cores in docs/benchmarks.md."""
    if settings.workers:
        return settings.workers
    cpus = usable_cpus()
    return cpus if device.startswith("cuda") else max(1, cpus // 4)


def _batches(
    settings: Settings, model: ClipModel, items: Sequence[SourceItem], batch_size: int, workers: int
) -> Iterator[list[Decoded]]:
    transform, max_pixels = model.pixel_transform, settings.max_image_pixels
    draft_size = model.draft_size
    if model.device.startswith("cuda") and settings.gpu_decode:
        from indexer.ingest import gpu_decode

        if gpu_decode.tensor_transform_ok(transform):
            return gpu_decode.device_decoded_batches(
                items, transform, max_pixels, batch_size, draft_size, model.device, threads=workers
            )
    return decoded_batches(items, transform, max_pixels, batch_size, workers, draft_size)


def _stack(pixels: list[Any]) -> Any:
    """One (N, H, W, 3) uint8 batch: numpy from CPU decoding, a device tensor when any was GPU-decoded."""
    if all(isinstance(p, np.ndarray) for p in pixels):
        return np.stack(pixels)
    import torch

    device = next(p.device for p in pixels if isinstance(p, torch.Tensor))
    return torch.stack([torch.as_tensor(p).to(device) for p in pixels])


# --- planning and writing ------------------------------------------------------------------


def _under(uri: str, roots: Iterable[str]) -> bool:
    return any(uri == root or uri.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _walk_sources(sources: Sequence[str | Path], problems: list[WalkProblem]) -> dict[str, SourceItem]:
    items: dict[str, SourceItem] = {}
    for source in dict.fromkeys(os.path.realpath(source) for source in sources):  # each folder walked once
        for item in walk_folder(Path(source), problems):
            items.setdefault(item.id, item)
    return items


def _record(decoded: Decoded, vectors: dict[str, np.ndarray]) -> Record:
    item = decoded.item
    metadata = {"width": decoded.width, "height": decoded.height, **(decoded.photo or {})}
    metadata.update(decoded.hashes or {})  # sha256, phash: indexer.curation.duplicates
    payload = {"uri": item.uri, "path": item.path, "fingerprint": item.fingerprint, "metadata": metadata}
    return Record(id=item.id, vectors=vectors, payload=payload)


def _flags_name_a_model(settings: Settings) -> bool:
    return bool({"model", "pretrained"} & settings.model_fields_set)


def collection_models(
    settings: Settings, schema: CollectionSchema, given: ClipModel | None = None
) -> dict[str, ClipModel]:
    """The model of every vector of a collection, for writing: the recorded ones (same precision), or
    for the active vector the one given (a loaded model, or --model/--pretrained), checked against it."""
    active = schema.active_vector
    if given is None and _flags_name_a_model(settings):
        given = load_model(settings.model, settings.pretrained, settings.device, settings.precision)
    if given is not None:
        check_same_model(active.model, given.identity, f"{schema.active!r} vector of this")
        check_same_precision(active.model, given.identity, "this")
    loaded: dict[tuple[str, str, str], ClipModel] = {}
    if given is not None:
        loaded[(given.identity.architecture, given.identity.weights, given.identity.precision)] = given
    models = {}
    for name, spec in schema.vectors.items():
        key = (spec.model.architecture, spec.model.weights, spec.precision)
        if key not in loaded:
            loaded[key] = load_model(spec.model.model, spec.model.pretrained, settings.device, spec.precision)
            if not loaded[key].identity.same_model(spec.model):
                raise ModelMismatchError(
                    f"the checkpoint at {spec.model.pretrained} changed since vector {name!r} was embedded "
                    f"({loaded[key].identity.weights} != {spec.model.weights})"
                )
        models[name] = loaded[key]
    return models


def folder_schema(model: ClipModel) -> CollectionSchema:
    """The schema of a new folder collection: one vector for `model`, the image fields declared."""
    return CollectionSchema.new(model.identity, fields=IMAGE_FIELDS)


def open_for_indexing(
    settings: Settings, collection: str, model: ClipModel | None = None
) -> tuple[VectorStore, dict[str, ClipModel]]:
    """Open (or create) the collection and load the model of each of its vectors. A new collection is
    made with the given model (or the one the settings name) as its one vector."""
    try:
        store = open_store(settings, collection)
    except CollectionNotFound:
        model = model or load_model(settings.model, settings.pretrained, settings.device, settings.precision)
        store = open_store(
            settings, collection, create=CollectionSchema.new(model.identity, fields=IMAGE_FIELDS)
        )
    try:
        return store, collection_models(settings, store.schema, model)
    except BaseException:
        store.close()
        raise


def index_sources(
    settings: Settings,
    sources: Sequence[str | Path],
    collection: str | None = None,
    model: ClipModel | None = None,
    progress: Progress = True,
) -> IndexReport:
    """Bring `collection` in line with `sources`: embed new and changed files into every vector of the
    collection, drop vanished ones. An existing collection uses the models recorded with it.
    `progress`: tqdm bars (True), a callback with IndexProgress, or a larger run's IndexTracker."""
    collection = collection or settings.collection
    tracker = IndexTracker.of(progress)
    started = time.perf_counter()
    roots = source_roots(sources)
    with collection_lock(settings.home, collection):
        try:
            store, models = open_for_indexing(settings, collection, model)
        except CollectionBusy as exc:
            raise CollectionBusy(
                f"collection {collection!r} is open in another process (a running `clipsearch serve`): an "
                f"embedded collection can be open in one process at a time. Let the server index while it "
                f"serves (`clipsearch serve --watch FOLDER`), or stop it and index again"
            ) from exc
        if not any(m.device.startswith("cuda") for m in models.values()):
            set_torch_threads(usable_cpus())  # the encoder takes every core; decoding overlaps it
        try:
            report = sync_store(settings, store, models, roots, tracker)
        finally:
            store.close()
        from indexer.models.onnx_export import export_for_queries  # imports torch: only where indexing runs

        export_for_queries(settings.home, models.values())  # the queries that follow need no torch
    report.seconds = time.perf_counter() - started
    if tracker is not progress:  # the run is this one (not part of a larger one): its last call
        tracker.finish(report)
    return report


ModelOf = Callable[[VectorSpec], ClipModel]  # the model that embeds a vector (added while a sync runs)


def sync_store(
    settings: Settings,
    store: VectorStore,
    models: dict[str, ClipModel],
    roots: Sequence[str | Path],
    progress: Progress,
    embedder: Embedder | None = None,
    model_of: ModelOf | None = None,
    on_progress: Counts | None = None,
) -> IndexReport:
    """The ingest on an already open store with the model of each vector loaded: what `index_sources`
    runs under the collection lock, and `serve --watch` on the store its API searches. The caller
    holds the collection lock and has checked the models (`collection_models`). `embedder`: where
    decoding and encoding run (default `embed_here`; indexer.ingest.ray_run runs them on Ray).
    `model_of`: the model of a vector added while the sync runs (a re-embedding inside the server); by
    default loaded from what the schema records. `progress`: as index_sources's. `on_progress(done,
    total)`: called once the folders are walked, then after each batch."""
    roots = source_roots(roots)
    problems: list[WalkProblem] = []
    items = _walk_sources(roots, problems)
    stored = {record.id: record.payload for record in store.scan()}
    return _bring_in_line(
        settings, store, models, roots, items, stored, problems, IndexTracker.of(progress), embedder,
        model_of, on_progress,
    )


def sync_paths(
    settings: Settings,
    store: VectorStore,
    models: dict[str, ClipModel],
    paths: Sequence[str | Path],
    progress: bool = False,
    model_of: ModelOf | None = None,
) -> IndexReport:
    """`sync_store` for just these paths, without walking the folders or scanning the store: what
    `serve --watch` runs on file events. An image file is embedded if new or changed and dropped if
    gone; an existing folder is walked and its files treated so; a gone path without an image
    extension may have been a folder, so every stored item under it is dropped (that one scans)."""
    paths = sorted(set(source_roots(paths)))
    files = [p for p in paths if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS and not os.path.isdir(p)]
    folders = [p for p in paths if os.path.isdir(p)]
    gone_folders = [p for p in paths if p not in files and not os.path.lexists(p)]
    problems: list[WalkProblem] = []
    items: dict[str, SourceItem] = {}
    for path in [*folders, *(f for f in files if os.path.isfile(f))]:
        with contextlib.suppress(FileNotFoundError):  # gone since its event: the next event says so
            items.update((item.id, item) for item in walk_folder(Path(path), problems))
    # Stored items under a walked folder are looked up by the ids found there: those that vanished
    # unseen are left to the next full sync (their own events usually come first).
    stored = {r.id: r.payload for r in store.retrieve(sorted({item_id(f) for f in files} | set(items)))}
    if gone_folders:
        stored.update({r.id: r.payload for r in store.scan() if _under(r.payload["uri"], gone_folders)})
    roots = [*files, *folders, *gone_folders]
    return _bring_in_line(settings, store, models, roots, items, stored, problems, IndexTracker.of(progress),
                          None, model_of)


def _bring_in_line(
    settings: Settings,
    store: VectorStore,
    models: dict[str, ClipModel],
    roots: Sequence[str],
    items: dict[str, SourceItem],
    stored: dict[str, dict[str, Any]],
    problems: list[WalkProblem],
    tracker: IndexTracker,
    embedder: Embedder | None = None,
    model_of: ModelOf | None = None,
    on_progress: Counts | None = None,
) -> IndexReport:
    """Drop the stored items under `roots` that are not in `items`, embed the new and changed items.
    Every record carries every vector the schema has when it is written, one being built included: a
    vector added meanwhile (a re-embedding in the server) is embedded from the batch's pixels."""
    report = IndexReport(collection=store.name)
    missing = {name: kind for name, kind in IMAGE_FIELDS.items() if name not in store.schema.fields}
    if missing:  # a collection made before these fields existed: declare (and index) them first
        store.set_schema(store.schema.with_fields(missing))
    vanished = [id_ for id_, payload in stored.items() if id_ not in items and _under(payload["uri"], roots)]
    store.delete(vanished)
    report.removed = len(vanished)

    to_embed = [
        item for id_, item in items.items() if stored.get(id_, {}).get("fingerprint") != item.fingerprint
    ]
    report.unchanged = len(items) - len(to_embed)

    info = store.read_info()
    failed: dict[str, dict[str, str]] = {
        uri: entry for uri, entry in info.get("failed", {}).items() if not _under(uri, roots)
    }
    for problem in problems:
        failed[problem.uri] = {"reason": problem.reason}

    primary = models[store.schema.active]
    tracker.begin(", ".join(str(root) for root in roots), len(to_embed), f"indexing {store.name}")
    done = 0
    if on_progress is not None:
        on_progress(done, len(to_embed))
    # One writer thread: the store write of batch n overlaps the encoding of batch n+1.
    with ThreadPoolExecutor(max_workers=1) as writer:
        last_write: Future[None] | None = None
        for batch, vectors in (embedder or embed_here)(settings, models, primary, to_embed):
            good = [d for d in batch if d.pixels is not None]
            bad = [d for d in batch if d.pixels is None]
            for d in bad:
                failed[d.item.uri] = {"reason": d.reason or "unknown error"}
            stale = [
                d.item.id for d in bad if d.item.id in stored
            ]  # a file that went bad loses its old vector
            records = []
            if good:
                vectors = _every_vector(settings, store, models, primary, good, vectors, model_of)
                records = [
                    _record(d, {name: v[i] for name, v in vectors.items()}) for i, d in enumerate(good)
                ]
                for d in good:
                    failed.pop(d.item.uri, None)
            if last_write is not None:
                last_write.result()
            last_write = writer.submit(_write, store, records, stale)
            report.embedded += len(records)
            tracker.advance(len(records), len(bad))
            done += len(batch)
            if on_progress is not None:
                on_progress(done, len(to_embed))
        if last_write is not None:
            last_write.result()

    report.failed = len([uri for uri in failed if _under(uri, roots)])
    report.failures = [{"uri": uri, "reason": entry["reason"]} for uri, entry in sorted(failed.items())]
    store.write_info({**info, "failed": failed})
    store.flush()
    return report


Counts = Callable[[int, int], None]  # (files embedded or failed so far, files to embed in this run)


def _every_vector(
    settings: Settings, store: VectorStore, models: dict[str, ClipModel], primary: ClipModel,
    good: list[Decoded], vectors: dict[str, np.ndarray], model_of: ModelOf | None,
) -> dict[str, np.ndarray]:
    """A batch's vectors for the schema as it is now: a vector added since the sync began is embedded
    here (its model joins `models` for the batches that follow), one dropped meanwhile is left out."""
    specs = store.schema.vectors
    added = {name: spec for name, spec in specs.items() if name not in models}
    for name, spec in added.items():
        models[name] = model_of(spec) if model_of else _load_for(settings, spec)
    if added:
        fresh = embed_all(settings, {name: models[name] for name in added}, primary, good)
        vectors = {**vectors, **fresh}
    return {name: v for name, v in vectors.items() if name in specs}


def _load_for(settings: Settings, spec: VectorSpec) -> ClipModel:
    return load_model(spec.model.model, spec.model.pretrained, settings.device, spec.precision)


Embedded = Iterator[tuple[list[Decoded], dict[str, np.ndarray]]]
# (settings, models by vector name, the active vector's model, items) -> batches of decoded items, each
# with its good items' (pixels not None, in order) vectors by name: where decoding and encoding run.
Embedder = Callable[[Settings, dict[str, ClipModel], ClipModel, Sequence[SourceItem]], Embedded]


def embed_here(
    settings: Settings, models: dict[str, ClipModel], primary: ClipModel, items: Sequence[SourceItem]
) -> Embedded:
    """The local Embedder: decode in this process's workers (or on the GPU), encode with `models`."""
    batch_size, workers = batch_size_for(settings, primary.device), workers_for(settings, primary.device)
    accelerate = primary.device == "cpu" and len(items) >= _onnx_min_images()
    for batch in _batches(settings, primary, items, batch_size, workers):
        good = [d for d in batch if d.pixels is not None]
        if accelerate and good:  # while the next batch decodes
            accelerate = False
            _onnx_image_towers(settings, models, primary, np.stack([d.pixels for d in good[:2]]))
        yield batch, (embed_all(settings, models, primary, good) if good else {})


def _onnx_min_images() -> int:
    from indexer.models.onnx_images import ONNX_MIN_IMAGES

    return ONNX_MIN_IMAGES


def _onnx_image_towers(
    settings: Settings, models: dict[str, ClipModel], primary: ClipModel, probe: np.ndarray
) -> None:
    """Long CPU runs encode fp32 images on onnxruntime (models.onnx_images.onnx_image_encoder: the same
    embeddings, checked on `probe`, at 1.4-2x eager torch's rate here)."""
    from indexer.models.onnx_images import onnx_image_encoder

    for model in {id(m): m for m in models.values()}.values():
        fp32 = model.identity.precision == "fp32" and model.device == "cpu"
        if fp32 and model.onnx_images is None and _same_input(model, primary):
            model.onnx_images = onnx_image_encoder(model, settings.home, probe)


def _same_input(model: ClipModel, other: ClipModel) -> bool:
    """Whether two models take the same pixels (transforms print their steps and sizes)."""
    return model.draft_size == other.draft_size and repr(model.pixel_transform) == repr(other.pixel_transform)


def embed_all(
    settings: Settings, models: dict[str, ClipModel], primary: ClipModel, decoded: list[Decoded]
) -> dict[str, np.ndarray]:
    """Each vector's embeddings of a decoded batch. Pixels decoded for `primary` serve every model that
    takes the same input; another model's input is decoded again here (collections with two models
    of different input sizes, while a re-embedding migrates them)."""
    by_model: dict[int, np.ndarray] = {}
    vectors = {}
    for name, model in models.items():
        if id(model) not in by_model:
            if _same_input(model, primary):
                pixels = _stack([d.pixels for d in decoded])
            else:
                redone = [
                    decode_item(d.item, model.pixel_transform, settings.max_image_pixels, model.draft_size)
                    for d in decoded
                ]
                pixels = np.stack([r.pixels if r.pixels is not None else _blank(model) for r in redone])
            by_model[id(model)] = model.encode_pixels(pixels)
        vectors[name] = by_model[id(model)]
    return vectors


def _blank(model: ClipModel) -> np.ndarray:
    size = model.input_size
    return np.zeros((size, size, 3), dtype=np.uint8)


def _write(store: VectorStore, records: list[Record], stale: list[str]) -> None:
    if records:
        store.upsert(records)
    if stale:
        store.delete(stale)
