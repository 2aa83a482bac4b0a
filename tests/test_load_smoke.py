"""The API under concurrent mixed load: the load driver of scripts/bench_load.py, briefly, in-test.

Specification: many clients at once, each sending text searches (distinct and repeated texts), image
searches (real photos uploaded) and classifications (real photos, random labels) back to back, with
the API key: every request is answered 200 with the right content (k results best first; the uploaded
photo among the top hits; exactly the labels sent, best first, summing to 1). No 5xx, no 503, no
timeout, no reset connection. Correctness under concurrency only: nothing here asserts timings.
The engine admits queued calls in arrival order, so no request waits behind later ones.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from indexer.models.loading import ClipModel
from search_api.engines import FifoLock
from tests.helpers import Served, indexed_server

KEY = "load-smoke-key"
PHOTOS = 30


def _bench_load() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench_load.py"
    spec = importlib.util.spec_from_file_location("bench_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


bench_load = _bench_load()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
           tiny_model: ClipModel) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("load-smoke")
    with indexed_server(root, imagenet_dir, tiny_checkpoint, tiny_model, PHOTOS, api_key=KEY) as served:
        yield served


@pytest.mark.parametrize("clients, seconds", [(10, 5.0), (50, 3.0)])
def test_mixed_load_is_answered_right_every_time(served: Served, clients: int, seconds: float) -> None:
    work = bench_load.Workload([(str(p), p.read_bytes()) for p in served.photos], PHOTOS, k=5,
                               headers={"X-API-Key": KEY})
    result = asyncio.run(bench_load.run_load(served.url, work, clients, seconds, timeout=60, seed=clients))
    assert not result.errors, result.errors.most_common(5)
    done = Counter(sample.operation for sample in result.samples)
    assert set(done) == set(bench_load.OPERATIONS), done
    assert min(done.values()) >= 3 and len(result.samples) >= clients, done  # every kind, all at once
    stats = result.stats()
    assert stats["all"]["requests"] == len(result.samples) and stats["all"]["errors"] == 0


def test_engine_lock_admits_waiters_in_arrival_order() -> None:
    lock = FifoLock()
    order: list[str] = []

    def call(name: str) -> None:
        with lock:
            order.append(name)

    lock.__enter__()  # a running engine call
    threads = []
    for index in range(8):  # requests queueing up behind it, one after another
        thread = threading.Thread(target=call, args=(f"waiter {index}",))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 10
        while len(lock._waiters) < index + 1:  # wait until this one is queued before starting the next
            assert time.monotonic() < deadline
            time.sleep(0.001)
    lock.__exit__(None, None, None)
    call("late arrival")  # arrives as the lock is handed over: it must not go ahead of the queue
    for thread in threads:
        thread.join(10)
    assert order == [f"waiter {index}" for index in range(8)] + ["late arrival"]
