"""Decoding files into model-ready pixel batches: in worker processes, or one batch ahead on a thread.

Every failure becomes a reason on its item, never an exception: one bad file never stops a run.
Used by the ingest pipeline, re-embedding, and the GPU decoder's per-file CPU fallback.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context, parent_process
from typing import Any

import numpy as np

from indexer.errors import ImageDecodeError
from indexer.ingest.decode import decode_image
from indexer.ingest.hashes import image_hashes
from indexer.ingest.photo_metadata import photo_metadata
from indexer.ingest.sources import SourceItem
from indexer.models.loading import PixelTransform


@dataclass
class Decoded:
    item: SourceItem
    pixels: Any  # uint8 (H, W, 3) ready for the model (a device tensor when GPU-decoded), None on failure
    reason: str | None = None
    width: int = 0
    height: int = 0
    photo: dict[str, Any] | None = None  # ingest.photo_metadata's fields; None when not read (GPU path)
    hashes: dict[str, str] | None = None  # sha256 and phash (indexer.ingest.hashes); None on the GPU path


# --- decoding, in worker processes ---------------------------------------------------------

_worker_transform: PixelTransform | None = None
_worker_max_pixels: int = 0
_worker_draft_size: int | None = None


def _init_worker(transform: PixelTransform, max_pixels: int, draft_size: int | None = None) -> None:
    global _worker_transform, _worker_max_pixels, _worker_draft_size
    _worker_transform, _worker_max_pixels, _worker_draft_size = transform, max_pixels, draft_size
    _exit_with_parent()


def _exit_with_parent() -> None:
    """A worker outlives a parent killed by SIGKILL (no pool shutdown runs) and would wait for work
    forever, holding its memory (~1 GB with torch imported): exit as soon as the parent is gone,
    even if that happened while this worker was still starting."""
    parent = parent_process()

    def wait_then_exit() -> None:
        assert parent is not None
        parent.join()  # returns when the parent's end of a pipe closes: when it exits, however it exits
        os._exit(1)

    if parent is not None:
        threading.Thread(target=wait_then_exit, name="exit-with-parent", daemon=True).start()


def decode_item(
    item: SourceItem, transform: PixelTransform, max_pixels: int, draft_size: int | None = None
) -> Decoded:
    """Decode one file to model-ready pixels; any failure becomes a reason, never an exception.

    `draft_size`: let libjpeg decode large JPEGs at a reduced scale with both sides >= draft_size."""
    try:
        image = decode_image(item.path, max_pixels=max_pixels, draft_size=draft_size)
        width, height = image.info.get("original_size", image.size)
        pixels = np.asarray(transform(image), dtype=np.uint8)
        photo, hashes = photo_metadata(image, item.uri), image_hashes(item.path, image)
        return Decoded(item, pixels, None, width, height, photo=photo, hashes=hashes)
    except ImageDecodeError as exc:
        return Decoded(item, None, str(exc))
    except Exception as exc:  # a worker must report, not die: one bad file never stops a run
        return Decoded(item, None, f"{type(exc).__name__}: {exc}")


def _decode_chunk(items: list[SourceItem]) -> list[Decoded]:
    assert _worker_transform is not None
    return [decode_item(item, _worker_transform, _worker_max_pixels, _worker_draft_size) for item in items]


def decoded_batches(
    items: Sequence[SourceItem],
    transform: PixelTransform,
    max_pixels: int,
    batch_size: int,
    workers: int,
    draft_size: int | None = None,
) -> Iterator[list[Decoded]]:
    """Decoded items in batches of `batch_size`, in input order, with a bounded number in flight.

    workers <= 1: in this process, one batch ahead on a thread (PIL decodes and resizes without
    holding the GIL, so this overlaps the encoder at no process start-up cost); more: processes."""
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    if workers <= 1 or len(chunks) <= 1:

        def decode_chunk(chunk: list[SourceItem]) -> list[Decoded]:
            return [decode_item(item, transform, max_pixels, draft_size) for item in chunk]

        if not chunks:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as ahead:
            upcoming = ahead.submit(decode_chunk, chunks[0])
            for next_chunk in chunks[1:]:
                current, upcoming = upcoming, ahead.submit(decode_chunk, next_chunk)
                yield current.result()
            yield upcoming.result()
        return
    # spawn, not fork: the parent holds torch's thread pools, which do not survive a fork.
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(transform, max_pixels, draft_size),
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
