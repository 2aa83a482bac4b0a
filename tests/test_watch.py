"""`clipsearch serve --watch FOLDER`: the server keeps its collection in line with the folder while it
serves, reacting to file events; real servers on loopback, the tiny model, real photos.

Specification:
- at start the server syncs the folder in full; then a photo copied into the folder is found by
  search within seconds (the full rescan is 300 s away, so file events found it); a changed photo is
  embedded again; a renamed one is found under its new name only; a deleted one is gone; a folder
  of photos moved in is found, and moved out is gone;
- every sync that changed something logs one INFO line on `search_api.watch` with its trigger
  (start, events, rescan) and counts (embedded, unchanged, removed, failed, seconds); one that changed
  nothing logs at DEBUG; through the real `clipsearch serve` command the line reaches stderr;
- /readyz answers 503 `syncing`, with the files embedded so far and the total, until the first sync
  is done, then 200; the collection's status says the same; the first sync logs its progress;
- /metrics exports the syncs by trigger, the items embedded, removed and failed, the last sync's
  time and duration, and the changed paths waiting for a sync;
- a burst of 20 files waits for the events to be quiet and is synced in one or two syncs;
- every search answers (200, well-formed) while the server indexes, seeing the new files batch
  by batch; meanwhile `clipsearch index` on that collection is refused, naming the server;
- stopping the server while it syncs takes a second or two: the sync stops between two batches and
  the event watcher stops too; the next server finishes what the interrupted sync left.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from indexer.ingest.pipeline import IndexReport
from indexer.ingest.sources import item_id
from indexer.models.loading import ClipModel
from search_api import create_app
from search_api.watch import FolderWatcher
from tests.clirun import CLI, REPO, cli_home, run, served_url, wait_for
from tests.helpers import copy_photos, eventually, make_settings, serve

SOON = 60  # seconds: "within seconds" on a loaded machine, and far below the 300 s rescan, so events did it
SYNC_LINE = re.compile(
    r"watch sync: collection=(\S+) trigger=(start|events|rescan) embedded=(\d+) unchanged=(\d+) "
    r"removed=(\d+) failed=(\d+) seconds=[\d.]+"
)


def photos(imagenet_dir: Path, start: int, count: int) -> list[Path]:
    return sorted(imagenet_dir.glob("*.JPEG"))[start : start + count]


def metric(text: str, name: str) -> float:
    """The value of one sample in Prometheus text format (`name` with its labels, if any)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def size(photo: Path) -> tuple[int, int]:
    with Image.open(photo) as image:
        return image.size


def stored_size(item: httpx.Response) -> tuple[int, int] | None:
    """The width and height the index recorded for an item (None while it is not there)."""
    if item.status_code != 200:
        return None
    metadata = item.json()["metadata"]
    return metadata["width"], metadata["height"]


def syncs(records: list[logging.LogRecord], trigger: str | None = None) -> list[tuple[str, ...]]:
    """(trigger, embedded, unchanged, removed, failed) of each sync line logged, oldest first."""
    found = [m.groups()[1:] for r in records if (m := SYNC_LINE.search(r.getMessage()))]
    return [s for s in found if trigger is None or s[0] == trigger]


# --- in-process servers: uvicorn on loopback in a thread ------------------------------------------


@dataclass
class Watched:
    url: str
    folder: Path
    watcher: FolderWatcher
    started: float  # time.time() before the server started

    def item(self, path: Path) -> httpx.Response:
        return httpx.get(f"{self.url}/v1/collections/watched/items/{item_id(str(path))}", timeout=30)

    def found(self, path: Path) -> bool:
        """Whether searching for the photo's own content finds it first (the API uses what is stored)."""
        upload = {"file": (path.name, path.read_bytes(), "image/jpeg")}
        response = httpx.post(f"{self.url}/v1/search/image", files=upload, data={"k": "1"}, timeout=30)
        assert response.status_code == 200, response.text
        return [hit["uri"] for hit in response.json()["results"]] == [str(path)]

    def stored(self) -> set[str]:
        response = httpx.post(f"{self.url}/v1/search", json={"text": "x", "k": 1000}, timeout=30)
        assert response.status_code == 200, response.text
        return {hit["uri"] for hit in response.json()["results"]}

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text


@pytest.fixture
def watched(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel, imagenet_dir: Path
) -> Iterator[Watched]:
    """A server watching a folder of 3 photos, its start sync done; the rescan is 300 s away."""
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 3)
    settings = make_settings(tmp_path / "home", tiny_checkpoint, collection="watched")
    started = time.time()
    app = create_app(settings, tiny_model, watch=[folder], watch_interval=300)
    with serve(app) as url:
        server = Watched(url, folder, app.state.watcher, started)
        wait_for(lambda: server.watcher.syncs == 1, 60, "the start sync", every=0.05)
        yield server


def soon(condition: Callable[[], bool], what: str) -> float:
    """Seconds until `condition` held, polled; fails after SOON seconds."""
    started = time.monotonic()
    wait_for(condition, SOON, what, every=0.1)
    return time.monotonic() - started


def test_new_changed_renamed_and_deleted_photos_are_synced_within_seconds_on_file_events(
    watched: Watched, imagenet_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="search_api.watch")
    new, other = next((a, b) for a, b in pairwise(photos(imagenet_dir, 100, 20)) if size(a) != size(b))
    photo = Path(shutil.copy2(new, watched.folder / "new.jpg"))
    took = soon(lambda: watched.item(photo).status_code == 200, "the new photo to be indexed")
    assert watched.found(photo)
    print(f"a new photo was searchable after {took:.1f}s")

    shutil.copyfile(other, photo)  # same name, other content: embedded again
    soon(lambda: stored_size(watched.item(photo)) == size(other), "the changed photo to be embedded again")
    assert watched.found(photo)

    renamed = photo.rename(watched.folder / "renamed.jpg")
    soon(lambda: watched.item(renamed).status_code == 200 and watched.item(photo).status_code == 404,
         "the rename")
    assert watched.found(renamed)

    renamed.unlink()
    soon(lambda: watched.item(renamed).status_code == 404, "the deleted photo to be gone")

    # A sync's log line and counters follow its write: wait for them, reading and checking in one step.
    def every_sync_is_logged_and_counted() -> None:
        assert watched.stored() == {str(p) for p in watched.folder.glob("*.JPEG")}
        events = syncs(caplog.records, "events")
        assert ("events", "1", "0", "0", "0") in events  # the new photo: embedded=1, nothing else touched
        assert ("events", "0", "0", "1", "0") in events  # the deleted one
        assert all(trigger == "events" for trigger, *_ in syncs(caplog.records))  # no rescan did it
        lines = [r for r in caplog.records if SYNC_LINE.search(r.getMessage())]
        assert all(r.name == "search_api.watch" and r.levelno == logging.INFO for r in lines)

        text = watched.metrics()
        assert metric(text, 'clipsearch_watch_syncs_total{trigger="start"}') == 1
        events_total = metric(text, 'clipsearch_watch_syncs_total{trigger="events"}')
        assert events_total == watched.watcher.syncs - 1 >= 4
        assert metric(text, 'clipsearch_watch_syncs_total{trigger="rescan"}') == 0
        assert metric(text, "clipsearch_watch_items_embedded_total") == 3 + 3  # start, new, changed, renamed
        assert metric(text, "clipsearch_watch_items_removed_total") == 2  # the old name, the deleted one
        assert metric(text, "clipsearch_watch_items_failed_total") == 0
        assert metric(text, "clipsearch_watch_sync_errors_total") == 0
        assert watched.started <= metric(text, "clipsearch_watch_last_sync_timestamp_seconds") <= time.time()
        assert 0 < metric(text, "clipsearch_watch_last_sync_duration_seconds") < time.time() - watched.started
        assert metric(text, "clipsearch_watch_pending_events") == 0

    eventually(every_sync_is_logged_and_counted, SOON, "the syncs' log lines and counters")


def test_folders_moved_in_are_found_and_moved_out_are_gone(
    watched: Watched, imagenet_dir: Path, tmp_path: Path
) -> None:
    # A folder moved in brings one event for itself and none for its files.
    trip = tmp_path / "outside" / "trip"
    trip.mkdir(parents=True)
    moved = [Path(shutil.copy2(p, trip / p.name)) for p in photos(imagenet_dir, 200, 3)]
    shutil.move(trip, watched.folder / "trip")
    inside = [watched.folder / "trip" / p.name for p in moved]
    soon(lambda: all(watched.item(p).status_code == 200 for p in inside), "the moved-in folder's photos")

    shutil.move(watched.folder / "trip", tmp_path / "elsewhere")
    soon(lambda: all(watched.item(p).status_code == 404 for p in inside), "the moved-out folder's photos")
    assert watched.stored() == {str(p) for p in watched.folder.glob("*.JPEG")}


def test_hidden_and_non_image_files_cause_no_sync(
    watched: Watched, imagenet_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="search_api.watch")
    [photo] = photos(imagenet_dir, 300, 1)
    (watched.folder / ".hidden").mkdir()
    shutil.copy2(photo, watched.folder / ".hidden" / "a.jpg")
    shutil.copy2(photo, watched.folder / ".b.jpg")
    (watched.folder / "notes.txt").write_text("not a photo")
    marker = Path(shutil.copy2(photo, watched.folder / "marker.jpg"))  # synced after the others' events
    soon(lambda: watched.item(marker).status_code == 200, "the marker photo")

    def only_the_marker_was_synced() -> None:  # its sync's log line follows its write
        assert watched.stored() == {str(p) for p in watched.folder.glob("*.JPEG")} | {str(marker)}
        assert [s[1:] for s in syncs(caplog.records, "events")] == [("1", "0", "0", "0")]

    eventually(only_the_marker_was_synced, SOON, "the marker's sync")


def test_a_burst_of_files_is_synced_in_one_or_two_syncs(watched: Watched, imagenet_dir: Path) -> None:
    burst = photos(imagenet_dir, 400, 20)
    staging = watched.folder.parent / "staging"  # the same filesystem: a rename is one quick event
    staging.mkdir()
    staged = [Path(shutil.copy2(photo, staging / photo.name)) for photo in burst]
    for photo in staged:  # the burst arrives within a millisecond or so, not at the speed of 20 copies
        photo.rename(watched.folder / photo.name)
    def indexed_and_counted() -> None:  # a sync's counters follow its write
        assert len(watched.stored()) == 23
        assert watched.watcher.embedded == 23
        events = watched.watcher.syncs_by_trigger["events"]
        assert 1 <= events <= 2, f"20 files took {events} syncs"

    eventually(indexed_and_counted, SOON, "the burst to be indexed")


def test_stopping_while_syncing_interrupts_the_sync_and_the_next_server_finishes(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel, imagenet_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 150)
    settings = make_settings(tmp_path / "home", tiny_checkpoint, collection="watched", batch_size=1)

    def count(url: str) -> int:
        collections = httpx.get(f"{url}/v1/collections", timeout=30).json()["collections"]
        return next((c["count"] for c in collections if c["name"] == "watched"), 0)

    # The start sync is held once 10 files are written, until the server is stopping: the stop comes
    # mid-sync whatever the machine's speed (the watcher's own code runs; only its progress report waits).
    held = threading.Event()
    report_progress = FolderWatcher._on_progress

    def progress_then_hold(watcher: FolderWatcher, done: int, total: int) -> None:
        report_progress(watcher, done, total)
        if done >= 10 and not held.is_set():
            held.set()
            watcher._stopping.wait(120)

    monkeypatch.setattr(FolderWatcher, "_on_progress", progress_then_hold)
    app = create_app(settings, tiny_model, watch=[folder], watch_interval=300)
    with serve(app) as url:
        assert held.wait(120), "the start sync wrote nothing"
        assert count(url) >= 10
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    monkeypatch.undo()
    first: FolderWatcher = app.state.watcher
    # Interrupted between two batches, not after the sync: had stopping not interrupted it, it would
    # have gone on to all 150 files once released.
    assert first.syncs == 0 and first.last_report is None, "the start sync was not interrupted"
    print(f"stopping while syncing took {took:.2f}s")
    alive = [t.name for t in threading.enumerate() if t.name in ("watch", "watch-events")]
    assert not alive, f"still running after the server stopped: {alive}"

    app = create_app(settings, tiny_model, watch=[folder], watch_interval=300)
    with serve(app) as url:
        def start_sync_done() -> IndexReport:  # `syncs` is counted before `last_report` is set
            report = app.state.watcher.last_report
            assert report is not None and count(url) == 150
            return report

        report = eventually(start_sync_done, 120, "the next server's start sync")
    assert report.unchanged >= 10 and report.embedded + report.unchanged == 150


def test_readyz_says_syncing_with_counts_until_the_first_sync_is_done(
    tmp_path: Path, tiny_checkpoint: Path, tiny_model: ClipModel, imagenet_dir: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A load balancer sends no one to a replica that has only part of its folders: /readyz is 503
    `syncing` (with the counts) during the first sync, 200 `ready` after; the sync logs its progress."""
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    settings = make_settings(tmp_path / "home", tiny_checkpoint, collection="watched", batch_size=2)
    # Hold the first sync after its first batch, so that the test reads the state it asserts.
    release, held = threading.Event(), threading.Event()
    progress = FolderWatcher._on_progress

    def gated(self: FolderWatcher, done: int, total: int) -> None:
        progress(self, done, total)
        if 0 < done < total and not release.is_set():
            held.set()
            release.wait(120)

    monkeypatch.setattr(FolderWatcher, "_on_progress", gated)
    caplog.set_level(logging.INFO, logger="search_api.watch")
    app = create_app(settings, tiny_model, watch=[folder], watch_interval=300)
    with serve(app) as url:
        wait_for(held.is_set, 120, "the first sync's first batch", every=0.05)
        ready = httpx.get(f"{url}/readyz", timeout=30)
        status = httpx.get(f"{url}/v1/collections/watched/status", timeout=30).json()
        release.set()
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200, 120, "ready", every=0.05)
        after = httpx.get(f"{url}/readyz", timeout=30).json()
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "syncing" and "2 of 6 files" in body["reason"]
    assert (body["watch"]["state"], body["watch"]["done"], body["watch"]["total"]) == ("syncing", 2, 6)
    assert status["watch"]["state"] == "syncing" and status["watch"]["folders"] == [str(folder)]
    assert after["status"] == "ready"
    assert (after["watch"]["state"], after["watch"]["done"], after["watch"]["total"]) == ("watching", 6, 6)
    lines = [r.getMessage() for r in caplog.records if "first sync" in r.getMessage()]
    assert any("walking" in line for line in lines)
    assert any("0 of 6 files to embed done" in line for line in lines)
    assert any("6 of 6 files to embed done (100%)" in line for line in lines)


# --- the real `clipsearch serve --watch` command ----------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    folder: Path
    log: Path
    spare: list[Path]  # photos not in the folder yet

    def count(self) -> int:
        collections = httpx.get(f"{self.url}/v1/collections", timeout=30).json()["collections"]
        return next(c["count"] for c in collections if c["name"] == "watched")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, imagenet_dir: Path
) -> Iterator[Server]:
    """`clipsearch serve --watch` over a folder of 20 photos, as a user runs it (no -v)."""
    home = tmp_path_factory.mktemp("home")
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("watched"), 20)
    log = tmp_path_factory.mktemp("log") / "serve.log"
    command = [*CLI, "serve", "--collection", "watched", "--port", "0", "--watch", str(folder)]
    # Small batches: searches see them one by one.
    with cli_home(home, tiny_checkpoint, BATCH_SIZE="4") as settings:
        with open(log, "w") as output:  # a file, not a pipe: nobody reads the access log while it runs
            process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        try:
            url = served_url(process, settings, "watched", 180)
        except BaseException:
            process.kill()
            raise
        server = Server(process, url, folder, log, photos(imagenet_dir, 500, 80))

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the server exited: {log.read_text()[-3000:]}")
            try:
                return server.count() == 20  # the start sync is done
            except httpx.TransportError:
                return False

        try:
            wait_for(up, 180, "the server and its start sync", every=0.2)
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


def test_index_of_the_watched_folder_asks_the_server_to_sync_and_of_another_is_refused_with_advice(
    server: Server, tmp_path: Path
) -> None:
    synced = run("index", str(server.folder), "--collection", "watched", "--json")
    report = json.loads(synced.stdout)
    assert report["collection"] == "watched" and report["failed"] == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    refused = run("index", str(other), "--collection", "watched", check=False)
    assert refused.returncode == 3, refused.stderr  # bad input (indexer.errors)
    assert "not a --watch folder of this server" in refused.stderr and "--watch" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_status_through_the_server_says_it_watches_the_folder(server: Server) -> None:
    text = run("status", "--collection", "watched").stdout
    assert f"watch:      watching: {server.folder}" in text
    ready = httpx.get(f"{server.url}/readyz", timeout=30).json()
    assert ready["status"] == "ready" and ready["watch"]["state"] == "watching"


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

    def sizes(self) -> set[int]:
        """How many results the successful searches so far saw."""
        return {len(body["results"]) for code, body in list(self.answers) if code == 200 and body}

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
        # In two halves, each waited for until a search has seen it, so that some search sees the
        # collection part-way (50 of 80) whatever the machine's speed; searches run throughout.
        for half, size in ((added[:30], 50), (added[30:], 80)):
            for photo in half:
                shutil.copy2(photo, server.folder / photo.name)
            wait_for(lambda size=size: size in searcher.sizes() and len(searcher.answers) > 20, 180,
                     f"a search to see {size} photos", every=0.2)
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


def test_new_files_find_themselves_deleted_ones_are_gone_and_the_syncs_are_logged(server: Server) -> None:
    new = server.spare[60:70]
    for photo in new:
        shutil.copy2(photo, server.folder / photo.name)
    gone = sorted(server.folder.glob("*.JPEG"))[:5]
    for photo in gone:
        photo.unlink()
    expected = len(list(server.folder.glob("*.JPEG")))  # 85: reached once the deletes and embeds are done
    wait_for(lambda: server.count() == expected, SOON, "the sync", every=0.2)

    with httpx.Client(base_url=server.url, timeout=60) as client:
        for photo in new:
            uri = str(server.folder / photo.name)
            response = client.post("/v1/search", json={"image_id": item_id(uri), "k": 1})
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["uri"] == uri
        everything = client.post("/v1/search", json={"text": "x", "k": 1000}).json()["results"]
        text = client.get("/metrics").text
    assert {hit["uri"] for hit in everything} == {str(p) for p in server.folder.glob("*.JPEG")}
    assert not {str(p) for p in gone} & {hit["uri"] for hit in everything}

    # The server's stderr, without -v: one line per sync that changed something, and its counts.
    lines = [m.groups() for m in SYNC_LINE.finditer(server.log.read_text())]
    assert lines[0] == ("watched", "start", "20", "0", "0", "0")
    events = [line for line in lines if line[1] == "events"]
    assert events and all(line[0] == "watched" for line in events)
    assert sum(int(line[2]) for line in events) == 70 and sum(int(line[4]) for line in events) == 5
    assert metric(text, "clipsearch_watch_items_embedded_total") == 90
    assert metric(text, "clipsearch_watch_items_removed_total") == 5
    assert metric(text, 'clipsearch_watch_syncs_total{trigger="events"}') == len(events)
