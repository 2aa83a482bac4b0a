"""Explanations: one or two sentences on why a hit matches the query and what does not, streamed from
the VLM as it writes them (`stream: true`) and cached like scores once complete.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from indexer.errors import ImageDecodeError
from indexer.vlm.client import VlmError
from indexer.vlm.prompts import explain_messages
from indexer.vlm.stage import Item, PreparedQuery, Query, Stage

_EXPLAIN_TOKENS = 160


async def explain(stage: Stage, query: Query, item: Item) -> AsyncIterator[str]:
    """The explanation's text in pieces; a cached one comes whole. Raises VlmError (the endpoint) or
    ImageDecodeError (the hit's image)."""
    model = await stage.client.model()
    prepared = await stage.prepare(query)
    async with contextlib.aclosing(_explain(stage, model, prepared, item)) as pieces:
        async for piece in pieces:
            yield piece


async def _explain(stage: Stage, model: str, query: PreparedQuery, item: Item) -> AsyncIterator[str]:
    key = stage.answer_key(model, "explain", query, item.id)
    cached = stage.cached(key, "explain")
    if cached is not None:
        yield cached
        return
    candidate = await stage.candidate(item)
    pieces: list[str] = []
    streamed = stage.client.stream(explain_messages(query.text, query.image_url, candidate),
                                   op="explain", max_tokens=_EXPLAIN_TOKENS)
    async with contextlib.aclosing(streamed):
        async for piece in streamed:
            pieces.append(piece)
            yield piece
    text = "".join(pieces).strip()
    if text:  # only whole explanations are kept: a stream cut short is not cached
        stage.answers.put(key, text)


async def explain_all(
    stage: Stage, query: Query, items: Sequence[Item], deadline_s: float
) -> dict[str, str | None]:
    """Whole explanations of several hits at once (a search with `explain`); None for a hit whose
    explanation failed or was not done by the deadline."""
    started = asyncio.get_running_loop().time()
    try:
        model, prepared = await asyncio.wait_for(_start(stage, query), deadline_s)
    except (asyncio.TimeoutError, VlmError, ImageDecodeError):
        return {item.id: None for item in items}
    remaining = deadline_s - (asyncio.get_running_loop().time() - started)

    async def whole(item: Item) -> str | None:
        try:
            async with contextlib.aclosing(_explain(stage, model, prepared, item)) as pieces:
                return "".join([piece async for piece in pieces]).strip() or None
        except (VlmError, ImageDecodeError):
            return None

    tasks = {item.id: asyncio.ensure_future(whole(item)) for item in items}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=max(0.0, remaining))
    for task in tasks.values():
        if not task.done():
            task.cancel()
            stage.metrics.count("errors", "deadline")
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    return {item_id: task.result() if task.done() and not task.cancelled() else None
            for item_id, task in tasks.items()}


async def _start(stage: Stage, query: Query) -> tuple[str, PreparedQuery]:
    return await stage.client.model(), await stage.prepare(query)
