"""Dynamic batching of query encoding (indexer.models.batching), in the library and in the server.

Specification:
- concurrent text queries, and separately image queries, share encoder calls: while one call runs,
  the queries that arrive wait and then go together in one call of up to `query_batch` items;
- the answers are those of the same queries asked one at a time (ids equal, scores equal to 1e-5);
- a query alone is encoded at once: its own call, and no waiting for company;
- `query_batch` 1 turns batching off: one encoder call per query;
- the text-embedding cache still answers repeated texts without encoding them;
- an encoder error reaches every query of its batch, and the next batch works.

Concurrency is made certain, not timed: the first encoder call of a test is held until the other
queries are queued behind it (`Gate`), then released; every count asserted follows from that.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from indexer.models.batching import BatchingEncoder, Coalescer
from indexer.models.loading import ClipModel, ModelCache
from indexer.schema import CollectionSchema
from indexer.search.engine import SearchEngine
from indexer.settings import Settings
from indexer.stores import Record, open_store
from search_api import create_app
from tests.helpers import make_settings, png_bytes, serve

TEXTS = [f"a photo of thing number {i}" for i in range(8)]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]


class Gate:
    """Holds a tower's first encoder call until `behind` more calls are queued, then lets everything
    run: the real encoder answers every call."""

    def __init__(self, coalescer: Coalescer, behind: int) -> None:
        self.coalescer, self.behind = coalescer, behind
        self.encode: Callable[[list[Any]], np.ndarray] = coalescer._run
        self.first = True
        coalescer._run = self

    def __call__(self, items: list[Any]) -> np.ndarray:
        if self.first:
            self.first = False
            deadline = time.monotonic() + 60
            while self.coalescer.queued() < self.behind:
                assert time.monotonic() < deadline, "the other queries never queued"
                time.sleep(0.005)
        return self.encode(items)


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls in threads started together; their results in order (errors re-raised)."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    if errors:
        raise errors[0]
    return results


def collection(settings: Settings, model: ClipModel, n: int = 300) -> None:
    """A real edge collection recording the tiny model, with seeded random unit vectors."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((n, model.identity.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = open_store(settings, settings.collection, create=CollectionSchema.new(model.identity))
    store.upsert([Record(f"00000000-0000-0000-0000-{i:012d}", {"default": vectors[i]},
                         {"uri": f"/p/{i}", "path": f"/p/{i}", "fingerprint": str(i)}) for i in range(n)])
    store.close()


def answers(outcome: Any) -> list[tuple[str, float]]:
    return [(r.id, r.score) for r in outcome.results]


def assert_same(got: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert np.allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


@pytest.fixture
def engine_for(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel
) -> Iterator[Callable[..., SearchEngine]]:
    """SearchEngines over one collection, each with its own ModelCache (so its own encoder counts)."""
    opened: list[SearchEngine] = []
    collection(make_settings(tmp_path / "home", tiny_checkpoint), tiny_model)

    def make(**overrides: Any) -> SearchEngine:
        settings = make_settings(tmp_path / "home", tiny_checkpoint, **overrides)
        models = ModelCache.for_settings(settings)
        models.add(tiny_model)
        for engine in opened:  # an embedded collection opens in one store at a time
            engine.close()
        opened.clear()
        opened.append(SearchEngine(settings, models=models))
        return opened[-1]

    yield make
    for engine in opened:
        engine.close()


def encoder_of(engine: SearchEngine) -> BatchingEncoder:
    encoder = engine.model_for()[1]
    assert isinstance(encoder, BatchingEncoder)
    return encoder


def test_concurrent_text_queries_share_one_encoder_call_and_answer_as_alone(engine_for) -> None:
    engine = engine_for(query_batch=16)
    alone = [answers(engine.search_text(text, 5)) for text in TEXTS]  # one at a time: fills the cache
    engine = engine_for(query_batch=16)  # a fresh engine: an empty text cache, fresh counts
    texts = encoder_of(engine).texts
    calls, items = texts.stats.calls, texts.stats.items  # the engine's warm-up query
    Gate(texts, behind=len(TEXTS) - 1)
    together = concurrently([lambda t=t: answers(engine.search_text(t, 5)) for t in TEXTS])
    for got, expected in zip(together, alone, strict=True):
        assert_same(got, expected)
    # The first query's call ran alone and held the tower until the other seven queued: one call for them.
    assert (texts.stats.calls - calls, texts.stats.items - items) == (2, len(TEXTS))
    assert texts.stats.largest == len(TEXTS) - 1


def test_concurrent_image_queries_batch_apart_from_texts(engine_for) -> None:
    engine = engine_for(query_batch=4)
    pictures = [png_bytes((64, 48), colour) for colour in COLOURS]
    alone = [answers(engine.search_image(picture, 5)) for picture in pictures]
    encoder = encoder_of(engine)
    images_before = encoder.images.stats.calls
    assert images_before == len(pictures)
    Gate(encoder.images, behind=len(pictures) - 1)
    together = concurrently([lambda p=p: answers(engine.search_image(p, 5)) for p in pictures])
    for got, expected in zip(together, alone, strict=True):
        assert_same(got, expected)
    stats = encoder.images.stats
    # 1 held call, then the 5 queued ones in batches of at most query_batch=4: 4 + 1.
    assert stats.calls - images_before == 3 and stats.largest == 4
    assert encoder.texts.stats.calls == 1  # the engine's warm-up text only: the towers queue apart


def test_a_query_alone_is_encoded_at_once_without_waiting(engine_for) -> None:
    engine = engine_for(query_batch=16, query_batch_wait_ms=100)
    texts = encoder_of(engine).texts
    warm = texts.stats.calls
    for text in TEXTS:
        engine.search_text(text, 5)
    assert texts.stats.calls - warm == len(TEXTS)  # its own call each
    assert texts.stats.largest == 1
    assert texts.stats.waits == 0  # never waited for company


def test_query_batch_1_turns_batching_off(engine_for) -> None:
    engine = engine_for(query_batch=1)
    texts = encoder_of(engine).texts
    warm = texts.stats.calls
    Gate(texts, behind=len(TEXTS) - 1)
    concurrently([lambda t=t: engine.search_text(t, 5) for t in TEXTS])
    assert texts.stats.calls - warm == len(TEXTS) and texts.stats.largest == 1


def test_the_text_cache_answers_repeats_without_the_encoder(engine_for) -> None:
    engine = engine_for(query_batch=16)
    texts = encoder_of(engine).texts
    first = [answers(engine.search_text(text, 5)) for text in TEXTS[:3]]
    calls = texts.stats.calls
    again = concurrently([lambda t=t: answers(engine.search_text(t, 5)) for t in TEXTS[:3] * 4])
    assert texts.stats.calls == calls
    for got, expected in zip(again, first * 4, strict=True):
        assert got == expected
    assert engine.text_cache.hits >= 12


def test_an_encoder_error_reaches_its_whole_batch_and_the_next_batch_works(tiny_model: ClipModel) -> None:
    from indexer.models.batching import QueryBatching

    failing = {"on": True}

    def encode(texts: list[str]) -> np.ndarray:
        if failing["on"] and any("bad" in t for t in texts):
            raise RuntimeError("encoder failed")
        return tiny_model.encode_texts(texts)

    coalescer = Coalescer(encode, QueryBatching(max_batch=8, max_wait_s=0.0))
    Gate(coalescer, behind=3)
    calls = [lambda: coalescer.encode(["first"]), lambda: coalescer.encode(["bad one"]),
             lambda: coalescer.encode(["two"]), lambda: coalescer.encode(["three"])]
    results: list[Any] = [None] * 4  # which call leads is up to the threads: each keeps its own outcome

    def catch(i: int) -> Callable[[], None]:
        def run() -> None:
            try:
                results[i] = calls[i]()
            except RuntimeError as exc:
                results[i] = exc
        return run

    concurrently([catch(i) for i in range(4)])
    failed = [i for i, r in enumerate(results) if isinstance(r, RuntimeError)]
    assert 1 in failed  # the bad text's own batch failed, with the encoder's error
    assert all(isinstance(results[i], np.ndarray) and results[i].shape == (1, tiny_model.identity.dim)
               for i in range(4) if i not in failed)
    assert np.allclose(coalescer.encode(["first"]), tiny_model.encode_texts(["first"]), atol=1e-6)


# --- in the server ---------------------------------------------------------------------------------


def test_concurrent_http_text_queries_are_batched_and_answer_as_alone(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel
) -> None:
    settings = make_settings(tmp_path / "home", tiny_checkpoint, query_batch=16)
    collection(settings, tiny_model)
    app = create_app(settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        def ask(text: str) -> list[tuple[str, float]]:
            response = http.post("/v1/search", json={"text": text, "k": 5})
            assert response.status_code == 200, response.text
            return [(r["id"], r["score"]) for r in response.json()["results"]]

        alone = [ask(text) for text in TEXTS]
        engine = app.state.engines.loaded()
        engine.text_cache = type(engine.text_cache)()  # forget them: every query below is encoded again
        texts = encoder_of(engine).texts
        before = texts.stats.calls
        Gate(texts, behind=len(TEXTS) - 1)
        clients = [httpx.Client(base_url=url, timeout=60) for _ in TEXTS]
        try:
            together = concurrently([
                lambda c=c, t=t: [(r["id"], r["score"]) for r in c.post(
                    "/v1/search", json={"text": t, "k": 5}).raise_for_status().json()["results"]]
                for c, t in zip(clients, TEXTS, strict=True)])
        finally:
            for client in clients:
                client.close()
    for got, expected in zip(together, alone, strict=True):
        assert_same(got, expected)
    # Encoding runs outside the collection's lock: the seven requests queued behind the held call.
    assert texts.stats.calls - before == 2 and texts.stats.largest == len(TEXTS) - 1


def test_classify_prompts_come_from_the_text_cache_the_second_time(engine_for) -> None:
    engine = engine_for(query_batch=16)
    texts = encoder_of(engine).texts
    picture = png_bytes((64, 48), COLOURS[0])
    first = engine.classify([picture], ["cat", "dog", "car"])
    calls = texts.stats.calls
    again = engine.classify([picture], ["dog", "car", "cat"])
    assert texts.stats.calls == calls  # 24 prompts, all cached
    assert dict(again[0]) == pytest.approx(dict(first[0]), abs=1e-6)
    assert abs(sum(score for _, score in again[0]) - 1.0) < 1e-5
