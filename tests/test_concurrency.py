"""Concurrency, with the real `clipsearch` command: one writer per collection, and searches that
keep answering while the collection is written.

Specification:
- a second `clipsearch index` (or `serve --watch`) on a collection being indexed is refused at once
  (exit 1), naming the collection and the pid of the run that holds it; once that run is killed
  (SIGKILL) the next run proceeds: the lock dies with its holder, and a lock file left on disk
  blocks nothing;
- an embedded collection opens in one process at a time, so `clipsearch index` on a collection
  that another process has open fails with a message saying so and pointing to `serve --watch`;
- `clipsearch serve --watch FOLDER` indexes the folder into the collection it serves, through the
  same open store: every search answers (200, well-formed) while files are added; searches see the
  new files batch by batch; after each sync, new files find themselves and deleted ones are gone;
  meanwhile `clipsearch index` on that collection is refused, naming the server. Stopping the
  server interrupts a sync between batches; the next server finishes it.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from indexer.settings import Settings
from indexer.sources import item_id
from tests.clirun import CLI, REPO, cli_home, lock_holder, run, run_json, start, wait_for
from tests.corpus import noise
from tests.helpers import copy_photos


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    with cli_home(tmp_path_factory.mktemp("home"), tiny_checkpoint, BATCH_SIZE="4") as settings:
        yield settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def holds_lock(settings: Settings, collection: str, process: subprocess.Popen) -> bool:
    return lock_holder(settings, collection).startswith(f"{process.pid} ")


# --- one writer at a time ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_run(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A slow index run (150 photos, one at a time), holding the lock of collection "busy"."""
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("many"), 150)
    first = start("index", str(folder), "--collection", "busy", "--batch-size", "1", "--json")
    try:
        wait_for(lambda: holds_lock(settings, "busy", first) or first.poll() is not None, 120, "the lock")
        assert first.poll() is None, first.communicate()[1]
        yield first, folder
    finally:
        first.kill()
        first.communicate()


def test_a_second_index_run_is_refused_at_once_naming_the_holder(
    long_run: tuple[subprocess.Popen, Path],
) -> None:
    first, folder = long_run
    second = run("index", str(folder), "--collection", "busy", check=False)
    assert first.poll() is None, "the refusal must not wait for the first run to end"
    assert second.returncode == 1
    message = second.stderr.strip()
    assert message.startswith("error: collection 'busy' is being written by another process")
    assert f"pid {first.pid}: clipsearch index" in message
    assert "Traceback" not in message


def test_serve_watch_is_refused_as_well(long_run: tuple[subprocess.Popen, Path]) -> None:
    first, folder = long_run
    command = ("serve", "--collection", "busy", "--watch", str(folder), "--port", str(free_port()))
    refused = run(*command, check=False, timeout=120)
    assert first.poll() is None
    assert refused.returncode == 1
    assert f"error: collection 'busy' is being written by another process (pid {first.pid}" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_after_the_holder_is_killed_the_next_run_proceeds(
    settings: Settings, long_run: tuple[subprocess.Popen, Path]
) -> None:
    first, folder = long_run
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert holds_lock(settings, "busy", first), "the dead run's lock file is still on disk"

    report = run_json("index", str(folder), "--collection", "busy")  # flock died with its holder
    assert report["embedded"] + report["unchanged"] == 150
    assert run_json("status", "--collection", "busy")["count"] == 150


def test_a_stale_lock_file_blocks_nothing(settings: Settings, tmp_path: Path) -> None:
    lock = settings.home / "locks" / "stale.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("4194304 clipsearch index\nwait for it to finish, or stop it\n")  # no such process
    for i in range(3):
        noise(seed=i).save(tmp_path / f"{i}.png")
    assert run_json("index", str(tmp_path), "--collection", "stale")["embedded"] == 3


def test_index_refuses_a_collection_open_in_another_process(settings: Settings, tmp_path: Path) -> None:
    from indexer.stores import open_store

    noise().save(tmp_path / "a.png")
    run("index", str(tmp_path), "--collection", "held")
    store = open_store(settings, "held")  # this test's process holds it, as a server would
    try:
        refused = run("index", str(tmp_path), "--collection", "held", check=False)
    finally:
        store.close()
    assert refused.returncode == 1
    assert "collection 'held' is open in another process" in refused.stderr
    assert "clipsearch serve --watch FOLDER" in refused.stderr
    assert "Traceback" not in refused.stderr


# --- serve --watch: searches answer while the server indexes --------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    folder: Path
    spare: list[Path]  # photos not in the folder yet

    def count(self) -> int:
        collections = httpx.get(f"{self.url}/v1/collections", timeout=30).json()["collections"]
        return next(c["count"] for c in collections if c["name"] == "watched")


@pytest.fixture(scope="module")
def server(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path
) -> Iterator[Server]:
    """`clipsearch serve --watch` over a folder of 20 photos, syncing every half second."""
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("watched"), 20)
    spare = sorted(imagenet_dir.glob("*.JPEG"))[300:380]
    port = free_port()
    log = tmp_path_factory.mktemp("log") / "serve.log"
    command = [*CLI, "serve", "--collection", "watched", "--port", str(port)]
    command += ["--watch", str(folder), "--interval", "0.5"]
    with open(log, "w") as output:  # a file, not a pipe: nobody reads the access log while it runs
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", folder, spare)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()[-3000:]}")
        try:
            return server.count() == 20  # the first sync is done
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 180, "the server and its first sync", every=0.2)
    except BaseException:
        process.kill()
        raise
    yield server
    process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: stop the watcher, close the store
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_index_is_refused_while_serve_watch_writes_the_collection(server: Server) -> None:
    refused = run("index", str(server.folder), "--collection", "watched", check=False)
    assert refused.returncode == 1
    assert f"(pid {server.process.pid}: clipsearch serve --watch)" in refused.stderr
    assert "add the folder there" in refused.stderr
    assert "Traceback" not in refused.stderr


@dataclass
class Searcher:
    """Fires searches one after another until stopped, remembering every answer."""

    url: str
    answers: list[tuple[int, Any]] = field(default_factory=list)  # (status, body)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                response = client.post("/v1/search", json={"text": "a photo of an animal", "k": 1000})
                body = response.json() if response.headers.get("content-type") == "application/json" else None
                self.answers.append((response.status_code, body))

    def __enter__(self) -> Searcher:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def well_formed(body: Any, folder: Path) -> bool:
    results = body["results"]
    scores = [hit["score"] for hit in results]
    return (
        scores == sorted(scores, reverse=True)
        and all(set(hit) >= {"id", "uri", "score", "metadata"} for hit in results)
        and all(hit["id"] == item_id(hit["uri"]) and hit["uri"].startswith(f"{folder}/") for hit in results)
        and len({hit["id"] for hit in results}) == len(results)
    )


def test_searches_answer_throughout_while_the_server_indexes(server: Server) -> None:
    added = server.spare[:60]
    with Searcher(server.url) as searcher:
        for photo in added:
            shutil.copy2(photo, server.folder / photo.name)
        wait_for(lambda: server.count() == 80, 180, "the 60 new photos to be indexed", every=0.2)
        time.sleep(0.5)  # a few more searches after the last write
    answers = searcher.answers

    assert len(answers) > 20
    bad = [(code, body) for code, body in answers if code != 200 or not well_formed(body, server.folder)]
    assert not bad, f"{len(bad)} of {len(answers)} searches failed, e.g. {json.dumps(bad[0])[:500]}"
    seen = [len(body["results"]) for _, body in answers]
    assert seen == sorted(seen), "a search saw fewer images than one before it"
    assert seen[-1] == 80
    # Searches ran while the writing did: some saw the collection part-way through the sync.
    assert any(20 < n < 80 for n in seen), f"no search saw a partly written collection: {sorted(set(seen))}"
    print(f"{len(answers)} searches; collection sizes they saw: {sorted(set(seen))}")


def test_after_a_sync_new_files_find_themselves_and_deleted_ones_are_gone(server: Server) -> None:
    new = server.spare[60:70]
    for photo in new:
        shutil.copy2(photo, server.folder / photo.name)
    gone = sorted(server.folder.glob("*.JPEG"))[:5]
    for photo in gone:
        photo.unlink()
    expected = len(list(server.folder.glob("*.JPEG")))  # 85: reached once the deletes and embeds are done
    wait_for(lambda: server.count() == expected, 180, "the sync", every=0.2)

    with httpx.Client(base_url=server.url, timeout=60) as client:
        for photo in new:
            uri = str(server.folder / photo.name)
            response = client.post("/v1/search", json={"image_id": item_id(uri), "k": 1})
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["uri"] == uri
        photo = new[0]
        upload = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
        [best] = client.post("/v1/search/image", files=upload, data={"k": "1"}).json()["results"]
        assert best["uri"] == str(server.folder / photo.name)
        everything = client.post("/v1/search", json={"text": "x", "k": 1000}).json()["results"]
    assert {hit["uri"] for hit in everything} == {str(p) for p in server.folder.glob("*.JPEG")}
    assert not {str(p) for p in gone} & {hit["uri"] for hit in everything}


def test_stopping_the_server_interrupts_a_sync_which_the_next_server_finishes(
    settings: Settings, tiny_model: Any, tmp_path: Path, imagenet_dir: Path
) -> None:
    from fastapi.testclient import TestClient

    from search_api.app import create_app

    folder = copy_photos(imagenet_dir, tmp_path / "photos", 150)
    watched = settings.model_copy(update={"collection": "stopping", "batch_size": 1})

    def count(client: TestClient) -> int:
        collections = client.get("/v1/collections").json()["collections"]
        return next((c["count"] for c in collections if c["name"] == "stopping"), 0)

    app = create_app(watched, tiny_model, watch=[folder], watch_interval=0.2)
    with TestClient(app) as client:  # runs the app's startup and, on leaving, its shutdown
        wait_for(lambda: count(client) >= 10, 120, "the first sync to write something", every=0.05)
    first = app.state.watcher
    assert first.syncs == 0, "the server stopped before its first sync could finish"

    app = create_app(watched, tiny_model, watch=[folder], watch_interval=0.2)
    with TestClient(app) as client:
        wait_for(lambda: app.state.watcher.syncs >= 1, 120, "the next server's first sync")
        report = app.state.watcher.last_report
        assert count(client) == 150
    assert report.unchanged >= 10 and report.embedded + report.unchanged == 150
