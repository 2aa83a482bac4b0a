"""What re-ranking and explaining share: the client, the answer and thumbnail caches, the metrics,
and the inputs (a query; the hits as items with their images).

Thumbnails are made in worker threads (decoding a photo takes tens of ms; the event loop must keep
serving the other requests) and cached by item id, as the same hits come back for many queries.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from indexer.errors import ClipsearchError, ImageDecodeError
from indexer.vlm.cache import LruCache
from indexer.vlm.client import VlmClient
from indexer.vlm.metrics import VlmMetrics
from indexer.vlm.prompts import PROMPT_VERSION, Candidate, catalog_data
from indexer.vlm.thumbnails import ImageSource, data_url, thumbnail_jpeg


@dataclass(frozen=True)
class Query:
    """What the search was for: its text, and/or an example image (image search)."""

    text: str = ""
    image: ImageSource | None = None


@dataclass
class Item:
    """One hit: its id, the search's score, what the prompt may say about it, and its image
    (a source, or a function giving one, called in a worker thread only when it is needed)."""

    id: str
    score: float
    image: ImageSource | Callable[[], ImageSource] | None
    uri: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PreparedQuery:
    text: str
    image_url: str | None
    key: Hashable  # what cached answers to this query are keyed by


@dataclass
class Stage:
    client: VlmClient
    answers: LruCache
    thumbnails: LruCache
    metrics: VlmMetrics
    executor: Executor
    thumbnail_px: int
    max_pixels: int

    def answer_key(self, model: str, what: str, query: PreparedQuery, item: Hashable) -> tuple:
        return (model, PROMPT_VERSION, what, query.key, item)

    def cached(self, key: tuple, what: str) -> Any | None:
        value = self.answers.get(key)
        self.metrics.count("cache_hits" if value is not None else "cache_misses", what)
        return value

    async def prepare(self, query: Query) -> PreparedQuery:
        """The query's thumbnail (an ImageDecodeError for a bad one) and cache key."""
        text = " ".join(query.text.split())
        if query.image is None:
            return PreparedQuery(text, None, (text, None))
        jpeg = await self._run(thumbnail_jpeg, query.image, self.thumbnail_px, self.max_pixels)
        return PreparedQuery(text, data_url(jpeg), (text, hashlib.sha256(jpeg).hexdigest()))

    async def candidate(self, item: Item) -> Candidate:
        """The item as the VLM sees it; ImageDecodeError when its image can't be thumbnailed."""
        key = (item.id, self.thumbnail_px)
        url = self.thumbnails.get(key)
        if url is None:
            url = data_url(await self._run(self._thumbnail, item))
            self.thumbnails.put(key, url)
        name, fields = catalog_data(item.uri, item.metadata)
        return Candidate(url, name, fields)

    def _thumbnail(self, item: Item) -> bytes:
        try:
            source = item.image() if callable(item.image) else item.image
        except (ClipsearchError, OSError) as exc:  # the item or its file is gone: that hit's problem only
            raise ImageDecodeError(f"no image for item {item.id}: {exc}") from exc
        if source is None:
            raise ImageDecodeError(f"no image for item {item.id}")
        return thumbnail_jpeg(source, self.thumbnail_px, self.max_pixels)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
