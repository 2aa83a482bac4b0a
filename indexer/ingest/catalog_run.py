"""Syncing a product catalog into a collection, incrementally by content.

Each image of each row is one point, its id derived from (catalog file, product id, image), its
payload {"uri": the image's path or URL, "path": the local file (the fetch cache for a URL),
"fingerprint", "catalog": the catalog's absolute path, "metadata": {the id column (under its own
name), text columns, other columns, width, height}}. The id column and the text columns are declared
searchable (their words are in the keyword document), the id column the collection's newest id field
(items are addressed by its value). A `--field` override that changes a declared type converts the
stored values in place first (indexer.stores.retype). The fingerprint is the image's (size and
mtime of a file, sha256 of a download) plus a hash of the row's text, so on a re-run:
- a point whose image or text changed is embedded again;
- a point whose metadata alone changed gets its payload replaced (`set_payloads`), no embedding;
- points of this catalog that are no longer in it (or whose image now fails) are deleted.
Bad rows and failed images are recorded in the collection's failures under
"<catalog>#row=<n>" (what `clipsearch status` lists); the rest index.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

from indexer.errors import CollectionBusy, CollectionNotFound
from indexer.ingest.batches import decoded_batches
from indexer.ingest.bounds import indexable_fields
from indexer.ingest.catalog import Catalog, ColumnMapping, is_catalog, read_catalog
from indexer.ingest.fetch import Fetcher
from indexer.ingest.pipeline import (
    IndexReport,
    batch_size_for,
    collection_models,
    embed_all,
    index_sources,
    workers_for,
)
from indexer.ingest.progress import IndexTracker, Progress
from indexer.ingest.sources import SourceItem
from indexer.limits import usable_cpus
from indexer.locking import collection_lock
from indexer.models.loading import ClipModel, load_model, set_torch_threads
from indexer.schema import V1_IMAGE_FIELDS, CollectionSchema
from indexer.settings import Settings
from indexer.stores import Record, VectorStore, open_store
from indexer.stores.retype import retype_field

_POINT_NAMESPACE = uuid.UUID("0b7c4e52-3f0e-4d8a-9a8e-5c1f2d7b6a91")
_IMAGE_DERIVED = tuple(V1_IMAGE_FIELDS)  # what the decoder, not the catalog, says about a point


@dataclass
class CatalogReport(IndexReport):
    updated: int = 0  # points whose metadata alone changed: payload replaced, nothing embedded
    downloaded: int = 0  # images fetched over the network (the rest came from the revalidated cache)
    fetch_seconds: float = 0.0  # spent fetching and revalidating images by URL
    # Columns kept with the items, not indexed: past CLIPSEARCH_LIMITS_INDEXED_FIELDS, named by no --field.
    unindexed: list[str] = field(default_factory=list)
    # what a user should know: types some values did not fit (with counts), fields whose type changed
    notes: list[str] = field(default_factory=list)


def point_id(catalog: Path, product_id: str, image: str) -> str:
    """The stable id of one image of one product of one catalog."""
    return str(uuid.uuid5(_POINT_NAMESPACE, "\n".join((str(catalog), product_id, image))))


def failure_key(catalog: Path, row: int) -> str:
    return f"{catalog}#row={row}"


def index_catalog(
    settings: Settings,
    catalog_path: str | os.PathLike[str],
    mapping: ColumnMapping,
    collection: str | None = None,
    model: ClipModel | None = None,
    progress: Progress = True,
) -> CatalogReport:
    """Bring `collection` in line with a catalog file. A new collection gets the given model (or the
    settings'); an existing one uses the models recorded with it. `progress`: as index_sources's."""
    collection = collection or settings.collection
    tracker = IndexTracker.of(progress)
    started = time.perf_counter()
    with collection_lock(settings.home, collection):
        store, catalog, models = _open(settings, collection, catalog_path, mapping, model)
        try:
            if not any(m.device.startswith("cuda") for m in models.values()):
                set_torch_threads(usable_cpus())
            with Fetcher(settings) as fetcher:
                report = sync_catalog(settings, store, models, catalog, fetcher, tracker)
        finally:
            store.close()
        from indexer.models.onnx_export import export_for_queries  # imports torch: only where indexing runs

        export_for_queries(settings.home, models.values())  # the queries that follow need no torch
    report.seconds = time.perf_counter() - started
    if tracker is not progress:  # the run is this one (not part of a larger one): its last call
        tracker.finish(report)
    return report


def _open(
    settings: Settings, collection: str, path: str | os.PathLike[str], mapping: ColumnMapping,
    model: ClipModel | None,
) -> tuple[VectorStore, Catalog, dict[str, ClipModel]]:
    """The store, the catalog read against its declared fields, the model of each vector. The catalog
    is read before a new collection is made, so a wrong column name creates nothing."""
    try:
        store: VectorStore | None = open_store(settings, collection)
    except CollectionNotFound:
        store = None
    except CollectionBusy as exc:
        raise CollectionBusy(
            f"collection {collection!r} is open in another process (a running `clipsearch serve`); stop "
            f"it and index again, or index into another --collection"
        ) from exc
    try:
        catalog = read_catalog(path, mapping, store.schema.fields if store else None, settings.limits)
        if store is None:
            s = settings
            model = model or load_model(s.model, s.pretrained, s.device, s.precision)
            store = open_store(settings, collection, create=CollectionSchema.new(model.identity))
        return store, catalog, collection_models(settings, store.schema, model)
    except BaseException:
        if store is not None:
            store.close()
        raise


@dataclass
class _Point:
    id: str
    row: int
    item: SourceItem
    metadata: dict[str, Any]


def sync_catalog(
    settings: Settings,
    store: VectorStore,
    models: dict[str, ClipModel],
    catalog: Catalog,
    fetcher: Fetcher,
    progress: Progress,
) -> CatalogReport:
    """The sync on an open store (the caller holds the collection lock and checked the models)."""
    report = CatalogReport(collection=store.name, notes=list(catalog.notes))
    for name, (old, new) in catalog.changes.items():
        # this catalog's own points get their values from the file just read
        converted = retype_field(store, name, new, lambda r: r.payload.get("catalog") == str(catalog.path))
        report.notes.append(f"field {name!r} changed from {old} to {new} (stored values converted: "
                            f"{converted})")
    fields = {**{k: v for k, v in V1_IMAGE_FIELDS.items() if k not in catalog.fields}, **catalog.fields}
    missing, report.unindexed = indexable_fields(
        store.schema.fields, fields, settings.limits.indexed_fields, (*catalog.named_fields, *V1_IMAGE_FIELDS)
    )
    schema = store.schema.with_fields(missing).with_roles(catalog.searchable, catalog.id_field)
    if schema != store.schema:
        store.set_schema(schema)

    problems: dict[int, list[str]] = {bad.row: [bad.reason] for bad in catalog.bad}
    points = _plan(catalog, fetcher, problems, report)
    source = str(catalog.path)
    stored = {r.id: r.payload for r in store.scan() if r.payload.get("catalog") == source}

    to_embed: list[_Point] = []
    payloads: dict[str, dict[str, Any]] = {}
    for point in points:
        old = stored.get(point.id)
        if old is None or old.get("fingerprint") != point.item.fingerprint:
            to_embed.append(point)
            continue
        derived = {k: old.get("metadata", {})[k] for k in _IMAGE_DERIVED
                   if k in old.get("metadata", {}) and k not in catalog.fields}
        payload = _payload(point, source, derived)
        if payload != old:
            payloads[point.id] = payload
    planned = {p.id for p in points}
    vanished = [id_ for id_ in stored if id_ not in planned]
    store.delete(vanished)
    store.set_payloads(payloads)
    report.removed, report.updated = len(vanished), len(payloads)
    report.unchanged = len(points) - len(to_embed) - len(payloads)

    _embed(settings, store, models, to_embed, source, problems, stored, report, IndexTracker.of(progress))

    info = store.read_info()
    prefix = failure_key(catalog.path, 0).removesuffix("0")
    failed = {key: entry for key, entry in info.get("failed", {}).items() if not key.startswith(prefix)}
    for row, reasons in sorted(problems.items()):
        failed[failure_key(catalog.path, row)] = {"reason": "; ".join(reasons), "row": row}
    report.failed = len(problems)
    report.failures = [
        {"uri": failure_key(catalog.path, row), "reason": "; ".join(reasons)}
        for row, reasons in sorted(problems.items())
    ]
    store.write_info({**info, "failed": failed})
    store.flush()
    return report


def _plan(catalog: Catalog, fetcher: Fetcher, problems: dict[int, list[str]],
          report: CatalogReport) -> list[_Point]:
    """Every image of every good row as a point to be: local files stat'ed, URLs fetched (or
    revalidated) all at once; an image that fails is a problem of its row, the row's others stay."""
    urls = [image for row in catalog.rows for image in row.images if _is_url(image)]
    started = time.perf_counter()
    fetched = fetcher.fetch_all(urls)
    report.fetch_seconds = round(time.perf_counter() - started, 3)
    report.downloaded = sum(1 for f in fetched.values() if f.downloaded)
    points = []
    for row in catalog.rows:
        text = hashlib.sha256(catalog.text_of(row).encode("utf-8")).hexdigest()[:16]
        for image in row.images:
            if _is_url(image):
                got = fetched[image]
                if not got.ok:
                    problems.setdefault(row.row, []).append(f"image {image}: {got.reason}")
                    continue
                local, image_print = str(got.path), f"sha256:{got.sha256}"
            else:
                try:
                    stat = os.stat(image)
                except OSError as exc:
                    reason = "file not found" if isinstance(exc, FileNotFoundError) else exc.strerror
                    problems.setdefault(row.row, []).append(f"image {image}: {reason}")
                    continue
                if not S_ISREG(stat.st_mode):
                    problems.setdefault(row.row, []).append(f"image {image}: not a regular file")
                    continue
                local, image_print = image, f"{stat.st_size}:{stat.st_mtime_ns}"
            item = SourceItem(uri=image, path=local, fingerprint=f"{image_print}|text:{text}")
            points.append(_Point(point_id(catalog.path, row.product_id, image), row.row, item, row.metadata))
    return points


def _is_url(image: str) -> bool:
    return not os.path.isabs(image)  # read_catalog made every path absolute and left URLs as they were


def _payload(point: _Point, catalog: str, derived: dict[str, Any]) -> dict[str, Any]:
    return {
        "uri": point.item.uri,
        "path": point.item.path,
        "fingerprint": point.item.fingerprint,
        "catalog": catalog,
        "metadata": {**derived, **point.metadata},
    }


def _embed(
    settings: Settings,
    store: VectorStore,
    models: dict[str, ClipModel],
    points: list[_Point],
    catalog: str,
    problems: dict[int, list[str]],
    stored: dict[str, Any],
    report: CatalogReport,
    tracker: IndexTracker,
) -> None:
    """Decode and embed the points in batches (the folder pipeline's decoders and models), writing
    each batch on one writer thread while the next one is encoded."""
    primary = models[store.schema.active]
    batch_size, workers = batch_size_for(settings, primary.device), workers_for(settings, primary.device)
    items = [p.item for p in points]
    batches = decoded_batches(items, primary.pixel_transform, settings.max_image_pixels, batch_size, workers,
                              primary.draft_size)
    tracker.begin(catalog, len(points), f"indexing {store.name}")
    done = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        last_write: Future[None] | None = None
        for batch in batches:
            mine, done = points[done : done + len(batch)], done + len(batch)
            good = [(p, d) for p, d in zip(mine, batch, strict=True) if d.pixels is not None]
            stale = []
            for p, d in zip(mine, batch, strict=True):
                if d.pixels is None:
                    problems.setdefault(p.row, []).append(f"image {p.item.uri}: {d.reason}")
                    if p.id in stored:
                        stale.append(p.id)  # an image that went bad loses its old vector
            records = []
            if good:
                vectors = embed_all(settings, models, primary, [d for _, d in good])
                for i, (p, d) in enumerate(good):
                    derived = {"width": d.width, "height": d.height}
                    derived = {k: v for k, v in derived.items() if k not in p.metadata}
                    records.append(Record(p.id, {name: v[i] for name, v in vectors.items()},
                                          _payload(p, catalog, derived)))
            if last_write is not None:
                last_write.result()
            last_write = writer.submit(_write, store, records, stale)
            report.embedded += len(records)
            report.removed += len(stale)
            tracker.advance(len(records), len(batch) - len(records))
        if last_write is not None:
            last_write.result()


def _write(store: VectorStore, records: list[Record], stale: list[str]) -> None:
    if records:
        store.upsert(records)
    if stale:
        store.delete(stale)


# --- the `index` command's sources: folders and catalogs ------------------------------------------


def index_paths(
    settings: Settings,
    sources: Sequence[str | os.PathLike[str]],
    mapping: ColumnMapping | None = None,
    collection: str | None = None,
    progress: Progress = True,
) -> IndexReport:
    """Index folders and image files (one folder sync) and catalog files (one sync each) into one
    collection; one report, the counts summed. `progress`: tqdm bars (True), or a callback with
    IndexProgress (indexer.ingest.progress) over the whole run, its last call with the report's counts."""
    tracker = IndexTracker.of(progress)
    catalogs = [Path(s) for s in sources if is_catalog(s) and Path(s).is_file()]
    folders = [s for s in sources if Path(s) not in catalogs]
    reports: list[IndexReport] = []
    if folders:
        reports.append(index_sources(settings, folders, collection, progress=tracker))
    for path in catalogs:
        mapping = mapping or ColumnMapping()
        reports.append(index_catalog(settings, path, mapping, collection, progress=tracker))
    if len(reports) == 1:
        tracker.finish(reports[0])
        return reports[0]
    total = CatalogReport(collection=reports[0].collection)
    for report in reports:
        for name in ("embedded", "unchanged", "removed", "failed", "seconds", "updated", "downloaded"):
            setattr(total, name, getattr(total, name) + getattr(report, name, 0))
        total.failures.extend(report.failures)
        total.unindexed.extend(n for n in getattr(report, "unindexed", []) if n not in total.unindexed)
        total.notes.extend(getattr(report, "notes", []))
    tracker.finish(total)
    return total
