"""The ingest pipeline: compare sources with the store, decode new and changed files in worker
processes, embed them in batches, write them, and drop what disappeared.

Every batch is written as soon as it is embedded, each record carrying its file's fingerprint,
so a run that is interrupted loses at most the batches in flight: the next run finds the rest
already stored and unchanged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from indexer.decode import ImageDecodeError, decode_image
from indexer.locking import collection_lock
from indexer.models import ClipModel, ModelIdentity, PixelTransform, check_same_model, load_model
from indexer.settings import Settings
from indexer.sources import SourceItem, WalkProblem, walk_folder
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

    def summary(self) -> dict[str, Any]:
        report = asdict(self)
        report.pop("failures")
        report["seconds"] = round(self.seconds, 3)
        return report


@dataclass
class Decoded:
    item: SourceItem
    pixels: np.ndarray | None  # uint8 (H, W, 3) ready for the model, None on failure
    reason: str | None = None
    width: int = 0
    height: int = 0


# --- decoding, in worker processes ---------------------------------------------------------

_worker_transform: PixelTransform | None = None
_worker_max_pixels: int = 0


def _init_worker(transform: PixelTransform, max_pixels: int) -> None:
    global _worker_transform, _worker_max_pixels
    _worker_transform, _worker_max_pixels = transform, max_pixels


def decode_item(item: SourceItem, transform: PixelTransform, max_pixels: int) -> Decoded:
    """Decode one file to model-ready pixels; any failure becomes a reason, never an exception."""
    try:
        image = decode_image(item.path, max_pixels=max_pixels)
        width, height = image.size
        pixels = np.asarray(transform(image), dtype=np.uint8)
        return Decoded(item, pixels, None, width, height)
    except ImageDecodeError as exc:
        return Decoded(item, None, str(exc))
    except Exception as exc:  # a worker must report, not die: one bad file never stops a run
        return Decoded(item, None, f"{type(exc).__name__}: {exc}")


def _decode_chunk(items: list[SourceItem]) -> list[Decoded]:
    assert _worker_transform is not None
    return [decode_item(item, _worker_transform, _worker_max_pixels) for item in items]


def decoded_batches(
    items: Sequence[SourceItem], transform: PixelTransform, max_pixels: int, batch_size: int, workers: int
) -> Iterator[list[Decoded]]:
    """Decoded items in batches of `batch_size`, in input order, with a bounded number in flight."""
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield [decode_item(item, transform, max_pixels) for item in chunk]
        return
    # spawn, not fork: the parent holds torch's thread pools, which do not survive a fork.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(transform, max_pixels),
    ) as pool:
        pending: list[Future[list[Decoded]]] = []
        queued = iter(chunks)
        for chunk in queued:  # keep 2 chunks per worker queued so no worker waits and memory stays bounded
            pending.append(pool.submit(_decode_chunk, chunk))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.pop(0).result()
            next_chunk = next(queued, None)
            if next_chunk is not None:
                pending.append(pool.submit(_decode_chunk, next_chunk))
            yield done


# --- planning and writing ------------------------------------------------------------------


def _under(uri: str, roots: Iterable[str]) -> bool:
    return any(uri == root or uri.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _walk_sources(sources: Sequence[str | Path], problems: list[WalkProblem]) -> dict[str, SourceItem]:
    items: dict[str, SourceItem] = {}
    for source in sources:
        for item in walk_folder(Path(source), problems):
            items.setdefault(item.id, item)
    return items


def _record(decoded: Decoded, vector: np.ndarray) -> Record:
    item = decoded.item
    metadata = {"width": decoded.width, "height": decoded.height}
    payload = {"uri": item.uri, "path": item.path, "fingerprint": item.fingerprint, "metadata": metadata}
    return Record(id=item.id, vector=vector, payload=payload)


def prepare_store(settings: Settings, collection: str, identity: ModelIdentity) -> VectorStore:
    """Open (or create) the collection for this model; refuse a collection built with another."""
    store = open_store(settings, collection, dim=identity.dim)
    info = store.read_info()
    if "model" in info:
        try:
            check_same_model(ModelIdentity.from_dict(info["model"]), identity, collection)
        except Exception:
            store.close()
            raise
    else:
        store.write_info({**info, "model": identity.to_dict(), "failed": {}})
    return store


def index_sources(
    settings: Settings,
    sources: Sequence[str | Path],
    collection: str | None = None,
    model: ClipModel | None = None,
    progress: bool = True,
) -> IndexReport:
    """Bring `collection` in line with `sources`: embed new and changed files, drop vanished ones."""
    collection = collection or settings.collection
    started = time.perf_counter()
    roots = [os.path.abspath(source) for source in sources]
    with collection_lock(settings.home, collection):
        model = model or load_model(settings.model, settings.pretrained, settings.device)
        store = prepare_store(settings, collection, model.identity)
        try:
            report = _sync(settings, store, model, roots, progress)
        finally:
            store.close()
    report.seconds = time.perf_counter() - started
    return report


def _sync(
    settings: Settings, store: VectorStore, model: ClipModel, roots: list[str], progress: bool
) -> IndexReport:
    report = IndexReport(collection=store.name)
    problems: list[WalkProblem] = []
    items = _walk_sources(roots, problems)
    stored = {record.id: record.payload for record in store.scan()}

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

    workers = settings.workers or os.cpu_count() or 1
    bar = tqdm(
        total=len(to_embed), unit="img", desc=f"indexing {store.name}", disable=not progress, smoothing=0.1
    )
    # One writer thread: the store write of batch n overlaps the encoding of batch n+1.
    with ThreadPoolExecutor(max_workers=1) as writer:
        last_write: Future[None] | None = None
        batches = decoded_batches(
            to_embed, model.pixel_transform, settings.max_image_pixels, settings.batch_size, workers
        )
        for batch in batches:
            good = [d for d in batch if d.pixels is not None]
            bad = [d for d in batch if d.pixels is None]
            for d in bad:
                failed[d.item.uri] = {"reason": d.reason or "unknown error"}
            stale = [
                d.item.id for d in bad if d.item.id in stored
            ]  # a file that went bad loses its old vector
            records = []
            if good:
                vectors = model.encode_pixels(np.stack([d.pixels for d in good]))
                records = [_record(d, v) for d, v in zip(good, vectors, strict=True)]
                for d in good:
                    failed.pop(d.item.uri, None)
            if last_write is not None:
                last_write.result()
            last_write = writer.submit(_write, store, records, stale)
            report.embedded += len(records)
            bar.update(len(batch))
        if last_write is not None:
            last_write.result()
    bar.close()

    report.failed = len([uri for uri in failed if _under(uri, roots)])
    report.failures = [{"uri": uri, "reason": entry["reason"]} for uri, entry in sorted(failed.items())]
    store.write_info({**info, "failed": failed})
    store.flush()
    return report


def _write(store: VectorStore, records: list[Record], stale: list[str]) -> None:
    if records:
        store.upsert(records)
    if stale:
        store.delete(stale)
