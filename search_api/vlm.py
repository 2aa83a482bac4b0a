"""The VLM stage in the API: re-rank the hits a search fetched, cut them to k, explain the first ones;
and one hit's explanation, whole or as server-sent events.

Nothing here answers a 5xx for the VLM's sake: every failure of the VLM (off, down, slow, refusing,
babbling) becomes a status in a 200 answer, with the search's own order (indexer.vlm guarantees it
for re-ranking; the explanations are caught here).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.collection import Collection
from indexer.errors import ImageDecodeError
from indexer.results import Hit
from indexer.settings import Settings
from indexer.vlm import Query, Vlm, VlmError
from search_api.schemas import (
    ExplainResponse,
    HitRerank,
    RerankOptions,
    RerankSummary,
    SearchResult,
)

log = logging.getLogger(__name__)
ImageOf = Callable[[str], str | None]


@dataclass(frozen=True)
class VlmAsk:
    """What a search asked of the VLM: a re-rank (of the first top_n hits), explanations, or both."""

    rerank: RerankOptions | None
    explain: bool
    top_n: int

    @classmethod
    def of(cls, rerank: RerankOptions | None, explain: bool, settings: Settings) -> VlmAsk | None:
        if rerank is None and not explain:
            return None
        top_n = rerank.top_n if rerank is not None and rerank.top_n else settings.vlm.top_n
        return cls(rerank, explain, top_n)

    def window(self, k: int, max_k: int) -> int:
        """How many hits to fetch: max(k, top_n) when re-ranking (hits below k may move up)."""
        return max(k, min(self.top_n, max_k)) if self.rerank is not None else k


@dataclass
class VlmAnswer:
    results: list[SearchResult]
    rerank: RerankSummary | None
    timings: dict[str, float]  # seconds: rerank, explain


def item_images(collection: Collection) -> ImageOf:
    """Each hit's image file, from its indexed payload (called in the VLM's worker threads, only for
    hits whose thumbnail is not cached)."""
    return collection.image_file


def run(vlm: Vlm, ask: VlmAsk | None, query: Query, results: Sequence[Hit], images: ImageOf,
        k: int) -> VlmAnswer:
    """The answer's results (the first k, re-ranked and explained as asked) and the re-rank's summary."""
    if ask is None:
        return VlmAnswer([_row(r) for r in results[:k]], None, {})
    timings: dict[str, float] = {}
    ordered, verdicts, summary = list(results), {}, None
    if ask.rerank is not None:
        started = time.perf_counter()
        try:
            outcome = vlm.rerank(query, results, images, mode=ask.rerank.mode, top_n=ask.top_n)
            ordered = outcome.apply(results)
            verdicts = {hit.id: hit for hit in outcome.hits}
            summary = RerankSummary(**outcome.summary())
        except Exception as exc:  # a bug of ours must not cost the search either
            log.exception("re-ranking failed")
            summary = RerankSummary(status="failed", reason=f"internal error: {exc}", ms=0.0,
                                    mode=ask.rerank.mode or vlm.settings.vlm.mode, top_n=ask.top_n)
            verdicts = {r.id: None for r in results}
        timings["rerank"] = time.perf_counter() - started
    ordered = ordered[:k]
    explanations: dict[str, str | None] = {}
    if ask.explain:
        started = time.perf_counter()
        explanations = vlm.explain_many(query, ordered[: ask.top_n], images)
        timings["explain"] = time.perf_counter() - started
    rows = []
    for place, result in enumerate(ordered):
        row = _row(result, explanations.get(result.id))
        if ask.rerank is not None:
            verdict = verdicts.get(result.id)
            if verdict is None:
                row.rerank = HitRerank(status="failed" if place < ask.top_n else "skipped", error="internal")
            else:
                row.vlm_score = verdict.vlm_score
                row.rerank = HitRerank(status=verdict.status, error=verdict.error, rank=verdict.vlm_rank,
                                       reason=verdict.reason, cached=verdict.cached)
        rows.append(row)
    return VlmAnswer(rows, summary, timings)


def _row(result: Hit, explanation: str | None = None) -> SearchResult:
    return SearchResult(id=result.id, uri=result.uri, score=result.score, metadata=result.metadata,
                        explanation=explanation)


# --- one hit's explanation ----------------------------------------------------------------------------


def explain(vlm: Vlm, query: str, hit: dict[str, Any], image: str | None) -> ExplainResponse:
    started = time.monotonic()
    try:
        text = vlm.explain_text(query, hit, image)
    except (VlmError, ImageDecodeError) as exc:
        return ExplainResponse(explanation=None, status="failed", error=_cause(exc), reason=str(exc),
                               ms=_ms(started))
    return ExplainResponse(explanation=text or None, status="ok", ms=_ms(started))


def explain_events(vlm: Vlm, query: str, hit: dict[str, Any], image: str | None) -> Iterator[str]:
    """Server-sent events: `data: {"text": piece}` as the VLM writes, then `event: done` with the whole
    explanation, or `event: error` (at any point: the status line has been sent by then)."""
    started = time.monotonic()
    pieces: list[str] = []
    try:
        for piece in vlm.explain(query, hit, image):
            pieces.append(piece)
            yield sse({"text": piece})
    except (VlmError, ImageDecodeError) as exc:
        yield sse({"error": _cause(exc), "reason": str(exc), "text": "".join(pieces)}, "error")
        return
    except Exception as exc:  # the stream has started: an event is the only way left to say it
        log.exception("explaining failed")
        yield sse({"error": "internal", "reason": f"internal error: {exc}", "text": "".join(pieces)}, "error")
        return
    yield sse({"explanation": "".join(pieces).strip(), "ms": _ms(started)}, "done")


def sse(data: dict[str, Any], event: str | None = None) -> str:
    """One event; JSON keeps newlines of the text out of the framing."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


def _cause(exc: Exception) -> str:
    return exc.cause if isinstance(exc, VlmError) else "image"


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
