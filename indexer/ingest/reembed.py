"""Model upgrades without downtime: add a named vector for another model, fill it, switch to it.

`reembed` adds the vector in state "building" and embeds every item that lacks it, batch by batch,
each batch written as soon as it is encoded: a killed run loses at most the batches in flight, and
the next run carries on with the items still missing the vector (deterministic embeddings, so the
result equals an uninterrupted run). Every writer embeds every vector of the schema, one being built
included, and the run scans again for what is missing before it is done: the vector becomes "ready"
only when no item lacks it. Searches keep
using the active vector throughout; `activate` switches in one schema write.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.ingest.batches import decoded_batches
from indexer.ingest.pipeline import batch_size_for, workers_for
from indexer.ingest.sources import SourceItem
from indexer.locking import collection_lock
from indexer.models.loading import ClipModel, check_same_model, load_model
from indexer.schema import VectorSpec, check_name
from indexer.settings import Settings
from indexer.stores import Record, VectorStore, open_store
from indexer.stores.filters import Filter, HasVectorCondition


@dataclass
class ReembedReport:
    collection: str
    vector: str
    embedded: int = 0
    failed: int = 0
    remaining: int = 0
    state: str = "building"
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        report = asdict(self)
        report["seconds"] = round(self.seconds, 3)
        return report


def default_vector_name(model: ClipModel) -> str:
    """A name for a model's vector: its architecture and weights tag (or checkpoint hash prefix)."""
    identity = model.identity
    weights = identity.weights.removeprefix("sha256:")[:8] if identity.weights else "random"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{identity.architecture}-{weights}")
    return check_name(name if name[0].isalpha() else f"v-{name}"[:64], "vector")


def add_vector(store: VectorStore, model: ClipModel, name: str) -> VectorSpec:
    """The vector `name` for `model`: added in state building, or the existing one (same model) to resume."""
    schema = store.schema
    if name in schema.vectors:
        spec = schema.vectors[name]
        check_same_model(spec.model, model.identity, f"{name!r} vector of this")
        return spec
    spec = VectorSpec(name, model.identity, state="building")
    store.set_schema(schema.with_vector(spec))
    return spec


def missing(name: str) -> Filter:
    return Filter(must_not=[HasVectorCondition(has_vector=name)])


def fill_vector(
    settings: Settings,
    store: VectorStore,
    model: ClipModel,
    name: str,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_batch: Any = None,
    settle_s: float = 0.0,
) -> ReembedReport:
    """Embed every item that lacks vector `name` with `model`; mark the vector ready when none is left.

    Other writers may add and change items meanwhile (`serve --watch`, the write API): they embed every
    vector the schema has, this one included, but one that read the schema before the vector was added
    may still write an item without it. So the job scans again for what is missing after each pass, and
    after marking the vector ready, until a scan finds nothing new (back to building if one did).
    Items whose file can no longer be read are counted as failed and left without the vector (the
    vector then stays building: re-index or remove them, then run again). `settle_s`: how long to wait
    for other writers to deal with such items (inside a server that watches folders, a file deleted or
    rewritten during the job is dropped or re-embedded by the watcher's next sync) before saying so."""
    started = time.perf_counter()
    report = ReembedReport(collection=store.name, vector=name)
    unreadable: dict[str, Any] = {}  # id -> fingerprint of items whose file this run could not read
    settle_until: float | None = None
    bar = tqdm(unit="img", desc=f"re-embedding {store.name}:{name}", disable=not progress)
    for _ in range(MAX_PASSES):
        if stop is not None and stop.is_set():
            break
        lacking = list(store.scan(filter=missing(name)))
        # Tried again once rewritten (a file read mid-write); not while it is the same.
        pending = [
            r for r in lacking if r.id not in unreadable or unreadable[r.id] != r.payload.get("fingerprint")
        ]
        if pending:
            bar.total = (bar.total or 0) + len(pending)
            unreadable.update(_embed_pass(settings, store, model, name, pending, report, bar, stop, on_batch))
            continue
        if lacking:  # only unreadable items: files deleted or rewritten meanwhile, whose writer may come
            settle_until = settle_until or time.monotonic() + settle_s
            if time.monotonic() >= settle_until:
                break
            time.sleep(SETTLE_POLL_S)
            continue
        if store.schema.vector(name).state == "ready":
            break
        store.set_schema(store.schema.with_vector_state(name, "ready"))
        if store.count(missing(name)) == 0:  # none written without it while the state changed
            break
        store.set_schema(store.schema.with_vector_state(name, "building"))
    bar.close()
    report.remaining = store.count(missing(name))
    report.state = store.schema.vector(name).state
    store.flush()
    report.seconds = time.perf_counter() - started
    return report


# Passes of fill_vector: each embeds what the one before found missing (written meanwhile by others).
MAX_PASSES = 1000
SETTLE_POLL_S = 0.5


def _embed_pass(
    settings: Settings, store: VectorStore, model: ClipModel, name: str, pending: list[Record],
    report: ReembedReport, bar: tqdm, stop: threading.Event | None, on_batch: Any,
) -> dict[str, Any]:
    """Embed `pending` into vector `name`, batch by batch; id -> fingerprint of the items whose files
    could not be read."""
    unreadable: dict[str, Any] = {}
    todo = [
        SourceItem(uri=r.payload.get("uri", ""), path=r.payload.get("path", ""), fingerprint="")
        for r in pending
    ]
    batch_size, workers = batch_size_for(settings, model.device), workers_for(settings, model.device)
    batches = decoded_batches(
        todo, model.pixel_transform, settings.max_image_pixels, batch_size, workers, model.draft_size
    )
    done = 0
    for batch in batches:  # in input order, so positions map batches back to records
        records = pending[done : done + len(batch)]
        done += len(batch)
        if stop is not None and stop.is_set():
            break
        pairs = list(zip(records, batch, strict=True))
        good = [(r, d) for r, d in pairs if d.pixels is not None]
        unreadable.update((r.id, r.payload.get("fingerprint")) for r, d in pairs if d.pixels is None)
        report.failed += len(batch) - len(good)
        if good:
            vectors = model.encode_pixels(np.stack([d.pixels for _, d in good]))
            # An item rewritten since the scan (a changed file) has been embedded by its writer, this
            # vector included: the pixels read here may be its old ones, so it is left as it is.
            current = {r.id: r.payload.get("fingerprint") for r in store.retrieve([r.id for r, _ in good])}
            fresh = {
                r.id: v for (r, _), v in zip(good, vectors, strict=True)
                if r.id in current and current[r.id] == r.payload.get("fingerprint")
            }
            store.update_vectors(name, fresh)
            report.embedded += len(fresh)
        bar.update(len(batch))
        if on_batch is not None:
            on_batch(report)
    return unreadable


def reembed(
    settings: Settings,
    collection: str | None,
    model: str,
    pretrained: str,
    vector: str | None = None,
    progress: bool = True,
    loaded: ClipModel | None = None,
) -> ReembedReport:
    """`clipsearch reembed`: add (or resume) a vector for another model and fill it, under the
    collection's write lock."""
    collection = collection or settings.collection
    with collection_lock(settings.home, collection, "clipsearch reembed"):
        clip = loaded or load_model(model, pretrained, settings.device)
        store = open_store(settings, collection)
        try:
            name = vector or default_vector_name(clip)
            add_vector(store, clip, name)
            report = fill_vector(settings, store, clip, name, progress)
        finally:
            store.close()
        from indexer.models.onnx_export import export_for_queries  # imports torch: only where indexing runs

        export_for_queries(settings.home, [clip])  # queries on the new vector need no torch
        return report


def activate(store: VectorStore, name: str) -> None:
    """Make `name` the vector queries use unless they name another (one schema write)."""
    store.set_schema(store.schema.with_active(name))


def drop_vector(store: VectorStore, name: str) -> None:
    store.set_schema(store.schema.without_vector(name))
