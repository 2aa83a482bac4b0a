"""`Vlm`: the VLM stage as the API and the CLI use it, from any thread, without touching asyncio.

It owns an event loop in a thread of its own, where every request to the endpoint runs (so a
deadline cancels requests rather than abandoning threads, and one semaphore bounds them for the
whole process), plus the caches and the metrics. Re-ranking never raises for the VLM's sake: any
failure gives the search's order back with a status. Explaining raises VlmError (Unavailable) or
ImageDecodeError (BadInput), as the caller asked for it explicitly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any

from indexer.errors import BadInput
from indexer.settings import Settings
from indexer.vlm import explain as explaining
from indexer.vlm import rerank as reranking
from indexer.vlm.cache import LruCache
from indexer.vlm.client import VlmClient, VlmError, base_url
from indexer.vlm.metrics import VlmMetrics
from indexer.vlm.rerank import Mode, RerankOutcome
from indexer.vlm.stage import Item, Query, Stage
from indexer.vlm.thumbnails import ImageSource

log = logging.getLogger(__name__)
Images = Mapping[str, ImageSource] | Callable[[str], ImageSource] | None
_THUMBNAILS_KEPT = 512  # about 40 kB each at 512 px
_GRACE_S = 5.0  # beyond a deadline, how long a caller waits for the loop before giving up on it
# What a failed re-rank says of the endpoint: it is down, or it answered (badly, or "too many").
_DOWN_CAUSES = frozenset({"connect", "timeout", "http_5xx", "deadline", "protocol"})
_ANSWERED = frozenset({"http_429", "http_4xx", "unparseable", "unranked"})


class Vlm:
    def __init__(self, settings: Settings):
        """The stage as `settings.vlm` says (off without a URL); thumbnails within the same
        `max_image_pixels` as every decode."""
        self.settings = settings
        self.metrics = VlmMetrics()
        self.enabled = bool(settings.vlm.url)
        self._state: dict[str, Any] = {"status": "unknown", "error": None, "at": None}
        if not self.enabled:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="clipsearch-vlm", daemon=True)
        self._thread.start()
        self.client = VlmClient(settings.vlm.url or "", settings.vlm.model, settings.vlm.api_key,
                                settings.vlm.timeout_s, settings.vlm.concurrency, self.metrics)
        self._stage = Stage(
            self.client, LruCache(settings.vlm.cache_size), LruCache(_THUMBNAILS_KEPT), self.metrics,
            concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1), "clipsearch-vlm-thumb"),
            settings.vlm.thumbnail_px, settings.max_image_pixels,
        )

    # --- re-ranking ---------------------------------------------------------------------------

    def rerank(self, query: str | Query, hits: Sequence[Any], images: Images = None, *,
               mode: Mode | None = None, top_n: int | None = None,
               deadline_s: float | None = None) -> RerankOutcome:
        """The hits (search results in the search's order: objects or mappings with `id`, `score`,
        and optionally `uri`, `metadata`, `path`) re-ranked. `images`: each hit's image by id, as a
        mapping or a function called (in a worker thread) only for hits that need a thumbnail;
        default: the hit's `path`, else its `uri`, as a file."""
        mode = mode or self.settings.vlm.mode
        if mode not in ("pointwise", "listwise"):
            raise BadInput(f"re-rank mode must be pointwise or listwise, not {mode!r}")
        top_n = max(0, self.settings.vlm.top_n if top_n is None else top_n)
        deadline = self.settings.vlm.deadline_s if deadline_s is None else deadline_s
        items = [_item(hit, images) for hit in hits]
        started = time.monotonic()
        if not self.enabled:
            return reranking.clip_order(items, mode, top_n, _off(), started)
        try:
            outcome = self._run(reranking.rerank(self._stage, _query(query), items, mode, top_n, deadline),
                                deadline + _GRACE_S)
        except concurrent.futures.TimeoutError:
            outcome = reranking.clip_order(items, mode, top_n, VlmError("the VLM stage is stuck", "deadline"),
                                           started)
        except Exception as exc:  # never worse than no VLM, whatever went wrong
            log.exception("re-ranking failed")
            outcome = reranking.clip_order(items, mode, top_n, VlmError(f"internal error: {exc}", "internal"),
                                           started)
        self.metrics.count("reranks", outcome.status)
        self.metrics.observe("rerank_seconds", outcome.ms / 1000)
        errors = {hit.error for hit in outcome.hits if hit.status == "failed"}
        if outcome.status != "failed" or errors & _ANSWERED:
            self._note("up", outcome.reason)
        elif errors & _DOWN_CAUSES:
            self._note("down", outcome.reason)
        return outcome

    # --- explanations -------------------------------------------------------------------------

    def explain(self, query: str | Query, hit: Any, image: ImageSource | None = None, *,
                deadline_s: float | None = None) -> Iterator[str]:
        """The explanation of one hit, in pieces as the VLM writes them (nothing is sent before the
        first `next`). Raises VlmError or ImageDecodeError, also after some pieces."""
        if not self.enabled:
            raise _off()
        item = _item(hit, {_field(hit, "id"): image} if image is not None else None)
        deadline = self.settings.vlm.timeout_s if deadline_s is None else deadline_s
        return self._pieces(_query(query), item, deadline)

    def explain_text(self, query: str | Query, hit: Any, image: ImageSource | None = None, *,
                     deadline_s: float | None = None) -> str:
        return "".join(self.explain(query, hit, image, deadline_s=deadline_s)).strip()

    def explain_many(self, query: str | Query, hits: Sequence[Any], images: Images = None, *,
                     deadline_s: float | None = None) -> dict[str, str | None]:
        """Whole explanations of several hits, in parallel; None where one failed or came too late."""
        items = [_item(hit, images) for hit in hits]
        if not self.enabled:
            return {item.id: None for item in items}
        deadline = self.settings.vlm.deadline_s if deadline_s is None else deadline_s
        try:
            return self._run(explaining.explain_all(self._stage, _query(query), items, deadline),
                             deadline + _GRACE_S)
        except Exception:  # explanations are extras: a failure costs them, not the search
            log.exception("explaining failed")
            return {item.id: None for item in items}

    def _pieces(self, query: Query, item: Item, deadline: float) -> Iterator[str]:
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

        async def pump() -> None:
            try:
                async with contextlib.aclosing(explaining.explain(self._stage, query, item)) as explained:
                    async for piece in explained:
                        pieces.put(("piece", piece))
                pieces.put(("end", None))
            except asyncio.CancelledError:
                pieces.put(("error", VlmError(f"the explanation took longer than {deadline:g} s; raise "
                                              "CLIPSEARCH_VLM_TIMEOUT_S", "deadline")))
                raise
            except Exception as exc:
                pieces.put(("error", exc))

        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(pump(), deadline), self._loop)
        try:
            while True:
                kind, value = pieces.get(timeout=deadline + _GRACE_S)
                if kind == "piece":
                    yield value
                elif kind == "end":
                    self._note("up", None)
                    return
                else:
                    if isinstance(value, VlmError):
                        self._note("down" if value.cause in _DOWN_CAUSES else "up", str(value))
                    raise value
        finally:
            future.cancel()  # the reader left early (a client gone): stop generating for nobody

    # --- health -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """{"enabled", "url", "model", "status": off|unknown|up|down, "error", "checked_at"} from the
        last requests; no network (see probe)."""
        url = base_url(self.settings.vlm.url) if self.settings.vlm.url else None
        model = self.client.model_name if self.enabled else self.settings.vlm.model
        status = "off" if not self.enabled else self._state["status"]
        return {"enabled": self.enabled, "url": url, "model": model, "status": status,
                "error": self._state["error"], "checked_at": self._state["at"]}

    def probe(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Ask the endpoint for its models now; health() afterwards."""
        if self.enabled:
            try:
                self._run(asyncio.wait_for(self.client.models(), timeout_s), timeout_s + _GRACE_S)
                self._run(self.client.model(), timeout_s + _GRACE_S)  # resolved now, if it was not set
                self._note("up", None)
            except (VlmError, asyncio.TimeoutError, concurrent.futures.TimeoutError) as exc:
                self._note("down", str(exc) or f"no answer to /models within {timeout_s:g} s; check "
                           "CLIPSEARCH_VLM_URL")
        return self.health()

    def _note(self, status: str, error: str | None) -> None:
        self._state = {"status": status, "error": error, "at": time.time()}

    # --- life -------------------------------------------------------------------------------

    def clear_cache(self) -> None:
        if self.enabled:
            self._stage.answers.clear()
            self._stage.thumbnails.clear()

    def close(self) -> None:
        if not self.enabled or self._loop.is_closed():
            return
        with contextlib.suppress(Exception):  # closing: nothing left to save
            self._run(self.client.aclose(), 5)
            # generators left unfinished are closed now, while their loop still runs
            self._run(self._loop.shutdown_asyncgens(), 5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._stage.executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Vlm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


def _off() -> VlmError:
    return VlmError("the VLM stage is off: set CLIPSEARCH_VLM_URL to an OpenAI-compatible endpoint", "off")


def _query(query: str | Query) -> Query:
    return query if isinstance(query, Query) else Query(text=str(query))


def _field(hit: Any, name: str, default: Any = None) -> Any:
    return hit.get(name, default) if isinstance(hit, Mapping) else getattr(hit, name, default)


def _item(hit: Any, images: Images) -> Item:
    item_id = str(_field(hit, "id"))
    image: Any
    if callable(images):
        image = functools.partial(images, item_id)
    elif images is not None and item_id in images:
        image = images[item_id]
    else:
        image = _field(hit, "path") or _field(hit, "uri") or None
    return Item(item_id, float(_field(hit, "score", 0.0) or 0.0), image, str(_field(hit, "uri", "") or ""),
                _field(hit, "metadata", None) or {})
