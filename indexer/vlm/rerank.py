"""Re-ranking the top N hits with the VLM, never worse than not doing it.

Pointwise: each hit is scored 0-10 in a request of its own (its catalog text can speak only about
itself), requests in parallel up to the client's concurrency. Listwise: all thumbnails in one
request, the model answers an order. The hits the VLM judged are re-ordered among the places they
held (by VLM score, ties by search score); a hit it could not judge (endpoint down, deadline,
4xx/5xx, garbage twice, unreadable image) keeps its place, and hits past N keep theirs after them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from operator import attrgetter
from typing import Any, Literal, TypeVar

from indexer.errors import ImageDecodeError
from indexer.vlm.client import VlmError
from indexer.vlm.parse import parse_order, parse_score
from indexer.vlm.prompts import ORDER_SCHEMA, SCORE_SCHEMA, order_messages, score_messages
from indexer.vlm.stage import Item, PreparedQuery, Query, Stage

Mode = Literal["pointwise", "listwise"]
Status = Literal["ok", "partial", "failed"]
T = TypeVar("T")
_SCORE_TOKENS = 100
_NO_ORDER = "the VLM's answer is not an order of the hits; use a model that follows instructions " \
    "(CLIPSEARCH_VLM_MODEL) or CLIPSEARCH_VLM_MODE=pointwise"


@dataclass
class HitVerdict:
    """What the VLM made of one hit. status: `ok` (judged), `failed` (kept its place; `error` says
    why: connect, timeout, http_429, http_4xx, http_5xx, protocol, unparseable, image, deadline,
    unranked, off) or `skipped` (past the top N)."""

    id: str
    score: float  # the search's own score
    vlm_score: float | None = None  # pointwise: 0-10
    vlm_rank: int | None = None  # listwise: place in the model's order, from 1
    reason: str | None = None
    status: Literal["ok", "failed", "skipped"] = "skipped"
    error: str | None = None
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RerankOutcome:
    hits: list[HitVerdict]  # in the final order
    status: Status
    reason: str | None
    ms: float
    mode: Mode
    top_n: int

    @property
    def order(self) -> list[str]:
        return [hit.id for hit in self.hits]

    def verdict(self, item_id: str) -> HitVerdict:
        return next(hit for hit in self.hits if hit.id == item_id)

    def summary(self) -> dict[str, Any]:
        """The `"rerank"` object of an API answer."""
        return {"status": self.status, "reason": self.reason, "ms": round(self.ms, 1), "mode": self.mode,
                "top_n": self.top_n}

    def apply(self, results: Sequence[T], key: Callable[[T], str] = attrgetter("id")) -> list[T]:
        """`results` (the hits given, any type with an id) in the final order."""
        by_id = {key(result): result for result in results}
        return [by_id[item_id] for item_id in self.order]


def clip_order(
    items: Sequence[Item], mode: Mode, top_n: int, error: VlmError, started: float
) -> RerankOutcome:
    """Every hit where the search put it, each of the top N failed with `error`."""
    hits = [_failed(item, error.cause, index < top_n) for index, item in enumerate(items)]
    return _outcome(hits[:top_n], hits, mode, top_n, started, first_message=str(error))


async def rerank(stage: Stage, query: Query, items: Sequence[Item], mode: Mode, top_n: int,
                 deadline_s: float) -> RerankOutcome:
    started = time.monotonic()
    top = list(items[:top_n])
    try:
        model, prepared = await asyncio.wait_for(_start(stage, query), deadline_s)
    except asyncio.TimeoutError:
        return clip_order(items, mode, top_n, _deadline_error(deadline_s), started)
    except (VlmError, ImageDecodeError) as exc:
        error = exc if isinstance(exc, VlmError) else VlmError(f"the query image: {exc}", "image")
        return clip_order(items, mode, top_n, error, started)
    remaining = deadline_s - (time.monotonic() - started)
    if mode == "listwise":
        judged = await _listwise(stage, model, prepared, top, remaining)
    else:
        judged = await _pointwise(stage, model, prepared, top, remaining)
    first = next((v.reason for v in judged if v.status == "failed"), None)
    for verdict in judged:
        if verdict.status == "failed":
            verdict.reason = None  # the message went to the outcome's reason; per hit, the error kind
    ranked = _reordered(judged, listwise=mode == "listwise")
    rest = [HitVerdict(item.id, item.score) for item in items[top_n:]]
    return _outcome(judged, ranked + rest, mode, top_n, started, first_message=first)


async def _start(stage: Stage, query: Query) -> tuple[str, PreparedQuery]:
    return await stage.client.model(), await stage.prepare(query)


# --- pointwise ---------------------------------------------------------------------------------


async def _pointwise(stage: Stage, model: str, query: PreparedQuery, top: list[Item],
                     remaining: float) -> list[HitVerdict]:
    tasks = [asyncio.ensure_future(_score(stage, model, query, item)) for item in top]
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.0, remaining))
    verdicts = []
    for item, task in zip(top, tasks, strict=True):
        if task.done():
            verdicts.append(task.result())
        else:
            task.cancel()  # closes its connection: the server stops working for nobody
            stage.metrics.count("errors", "deadline")
            verdicts.append(_failed(item, "deadline", True, str(_deadline_error(remaining))))
    await asyncio.gather(*tasks, return_exceptions=True)
    return verdicts


async def _score(stage: Stage, model: str, query: PreparedQuery, item: Item) -> HitVerdict:
    key = stage.answer_key(model, "score", query, item.id)
    cached = stage.cached(key, "score")
    if cached is not None:
        score, reason = cached
        return HitVerdict(item.id, item.score, vlm_score=score, reason=reason, status="ok", cached=True)
    try:
        candidate = await stage.candidate(item)
        messages = score_messages(query.text, query.image_url, candidate)
        for _ in range(2):  # one retry on an unparseable answer
            answer = await stage.client.complete(messages, op="score", max_tokens=_SCORE_TOKENS,
                                                 schema=SCORE_SCHEMA)
            parsed = parse_score(answer.text)
            if parsed is not None:
                stage.answers.put(key, parsed)
                return HitVerdict(item.id, item.score, vlm_score=parsed[0], reason=parsed[1], status="ok")
            stage.metrics.count("errors", "unparseable")
        return _failed(item, "unparseable", True, f"the VLM's answer is not a score ({answer.text[:100]!r}); "
                       "use a model that follows instructions (CLIPSEARCH_VLM_MODEL)")
    except ImageDecodeError as exc:
        stage.metrics.count("errors", "image")
        return _failed(item, "image", True, f"image of {item.id}: {exc}")
    except VlmError as exc:
        return _failed(item, exc.cause, True, str(exc))


# --- listwise ----------------------------------------------------------------------------------


async def _listwise(stage: Stage, model: str, query: PreparedQuery, top: list[Item],
                    remaining: float) -> list[HitVerdict]:
    key = stage.answer_key(model, "order", query, tuple(item.id for item in top))
    cached = stage.cached(key, "order")
    if cached is not None:
        return _ranked(top, cached, cached=True)
    try:
        return await asyncio.wait_for(_order(stage, query, top, key), max(0.0, remaining))
    except asyncio.TimeoutError:
        stage.metrics.count("errors", "deadline")
        error = _deadline_error(remaining)
        return [_failed(item, "deadline", True, str(error)) for item in top]
    except VlmError as exc:
        return [_failed(item, exc.cause, True, str(exc)) for item in top]


async def _order(stage: Stage, query: PreparedQuery, top: list[Item], key: tuple) -> list[HitVerdict]:
    shown, unreadable = [], {}
    for item, candidate in zip(top, await asyncio.gather(*(_candidate(stage, i) for i in top)), strict=True):
        if isinstance(candidate, ImageDecodeError):
            unreadable[item.id] = f"image of {item.id}: {candidate}"
        else:
            shown.append((item, candidate))
    order: list[int] | None = None
    if shown:
        messages = order_messages(query.text, query.image_url, [c for _, c in shown])
        for _ in range(2):
            answer = await stage.client.complete(messages, op="order", max_tokens=16 + 8 * len(shown),
                                                 schema=ORDER_SCHEMA)
            order = parse_order(answer.text, len(shown))
            if order is not None:
                break
            stage.metrics.count("errors", "unparseable")
    ids = [shown[i][0].id for i in order] if order else []
    if ids and not unreadable:
        stage.answers.put(key, ids)
    verdicts = _ranked(top, ids, cached=False)
    for verdict in verdicts:
        if verdict.id in unreadable:
            verdict.error, verdict.reason = "image", unreadable[verdict.id]
        elif verdict.status == "failed" and not order:
            verdict.error, verdict.reason = "unparseable", _NO_ORDER
    return verdicts


async def _candidate(stage: Stage, item: Item) -> Any:
    try:
        return await stage.candidate(item)
    except ImageDecodeError as exc:
        stage.metrics.count("errors", "image")
        return exc


def _ranked(top: list[Item], ids: list[str], cached: bool) -> list[HitVerdict]:
    rank = {item_id: place for place, item_id in enumerate(ids, 1)}
    return [
        HitVerdict(item.id, item.score, vlm_rank=rank[item.id], status="ok", cached=cached)
        if item.id in rank else _failed(item, "unranked", True, "the VLM's order left this hit out")
        for item in top
    ]


# --- the final order and the outcome --------------------------------------------------------------


def _reordered(judged: list[HitVerdict], listwise: bool) -> list[HitVerdict]:
    """Judged hits re-ordered among the places they held; the others stay where they are."""
    places = [i for i, verdict in enumerate(judged) if verdict.status == "ok"]
    if listwise:
        best_first = sorted((judged[i] for i in places), key=lambda v: v.vlm_rank or 0)
    else:  # ties by search score, then by the search's order (sorted is stable)
        best_first = sorted((judged[i] for i in places), key=lambda v: (-(v.vlm_score or 0.0), -v.score))
    final = list(judged)
    for place, verdict in zip(places, best_first, strict=True):
        final[place] = verdict
    return final


def _failed(item: Item, error: str, in_top: bool, reason: str | None = None) -> HitVerdict:
    if not in_top:
        return HitVerdict(item.id, item.score)
    return HitVerdict(item.id, item.score, status="failed", error=error, reason=reason)


def _deadline_error(deadline_s: float) -> VlmError:
    return VlmError(f"not judged within the re-rank's deadline ({deadline_s:.3g} s for the requests); raise "
                    "CLIPSEARCH_VLM_DEADLINE_S or CLIPSEARCH_VLM_CONCURRENCY, or lower CLIPSEARCH_VLM_TOP_N",
                    "deadline")


def _outcome(judged: list[HitVerdict], final: list[HitVerdict], mode: Mode, top_n: int, started: float,
             first_message: str | None) -> RerankOutcome:
    failed = [v for v in judged if v.status == "failed"]
    status: Status = "ok" if not failed else ("failed" if len(failed) == len(judged) else "partial")
    reason = None
    if failed:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in Counter(v.error for v in failed).most_common())
        reason = f"{len(failed)} of {len(judged)} hits not re-ranked ({kinds}): {first_message}"
    return RerankOutcome(final, status, reason, (time.monotonic() - started) * 1000, mode, top_n)
