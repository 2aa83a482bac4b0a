"""Crash safety of `clipsearch index`, with the real command killed by SIGKILL at random moments.

Specification: whenever an index run dies, the collection still opens, and what it holds is a
consistent part of what an uninterrupted run would write (each record whole, with its vector and
fingerprint, nothing half-written, no duplicates). Re-running then ends in exactly the state of
an uninterrupted run: the same ids, the same vectors, the same recorded failures. This holds for
a first run into an empty collection and for a re-run over a changed folder. A killed run leaves
nothing behind that lasts: no half-created store, no decode worker processes.

Rounds (default 3) can be raised for a longer soak: CLIPSEARCH_CRASH_ROUNDS=20.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.durable import RESERVE_FILE
from indexer.settings import Settings
from indexer.stores import open_store
from tests.clirun import CLI, REPO, cli_home, run, run_json, wait_for
from tests.corpus import noise
from tests.helpers import copy_photos

ROUNDS = int(os.environ.get("CLIPSEARCH_CRASH_ROUNDS", "3"))
PHOTOS = 120
# Vectors of the same image embedded in a different batch may differ in the last bits of float32.
VECTOR_ATOL = 1e-5


@dataclass
class Snapshot:
    """Everything a collection holds, read back through the store interface."""

    count: int
    ids: list[str]
    vectors: dict[str, np.ndarray]
    payloads: dict[str, dict[str, Any]]
    failed: dict[str, str]


def snapshot(settings: Settings, collection: str) -> Snapshot:
    store = open_store(settings, collection)  # raises if a crash left it unreadable
    try:
        ids = [record.id for record in store.scan()]
        records = store.retrieve(ids, with_vectors=True)
        info = store.read_info()
        return Snapshot(
            count=store.count(),
            ids=ids,
            vectors={r.id: r.vectors["default"] for r in records},
            payloads={r.id: r.payload for r in records},
            failed={uri: entry["reason"] for uri, entry in info.get("failed", {}).items()},
        )
    finally:
        store.close()


def same_record(got: Snapshot, want: Snapshot, id_: str) -> bool:
    return got.payloads[id_] == want.payloads[id_] and np.allclose(
        got.vectors[id_], want.vectors[id_], rtol=0, atol=VECTOR_ATOL
    )


def assert_same_state(got: Snapshot, want: Snapshot) -> None:
    assert got.count == len(got.ids) == len(set(got.ids)), "duplicates or a wrong count"
    assert set(got.ids) == set(want.ids), (
        f"missing {len(set(want.ids) - set(got.ids))}, extra {len(set(got.ids) - set(want.ids))}"
    )
    different = [id_ for id_ in got.ids if not same_record(got, want, id_)]
    assert not different, f"{len(different)} records differ, e.g. {got.payloads[different[0]]['uri']}"
    assert got.failed == want.failed


def assert_consistent_part(got: Snapshot, *allowed: Snapshot) -> None:
    """After a crash: no duplicates, and every record is whole: equal to one an uninterrupted run
    of the old or the new folder state writes (so nothing half-written or mixed)."""
    assert got.count == len(got.ids) == len(set(got.ids)), "duplicates or a wrong count"
    for id_ in got.ids:
        assert any(id_ in want.payloads and same_record(got, want, id_) for want in allowed), (
            f"record {got.payloads[id_].get('uri')} matches no uninterrupted run"
        )


def shard_dir(settings: Settings, collection: str) -> Path:
    return settings.collection_dir(collection) / "shard"


class Progress:
    """Follows the progress bar an index run prints on stderr: images done out of how many."""

    BAR = re.compile(rb"\| *(\d+)/(\d+) \[")

    def __init__(self, process: subprocess.Popen) -> None:
        self.done, self.total = 0, -1  # total stays -1 until the bar appears
        self._process = process
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stderr is not None
        for chunk in iter(lambda: os.read(self._process.stderr.fileno(), 4096), b""):
            for match in self.BAR.finditer(chunk):
                self.done, self.total = int(match[1]), int(match[2])

    def reached(self, fraction: float) -> bool:
        return self.total >= 0 and self.done >= fraction * self.total


def start_index(folder: Path, collection: str, *options: str) -> tuple[subprocess.Popen, Progress]:
    process = subprocess.Popen(
        [*CLI, "index", str(folder), "--collection", collection, *options],  # no --json: it shows progress
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return process, Progress(process)


def index_and_kill(folder: Path, collection: str, rng: random.Random) -> float | None:
    """Start an index run and SIGKILL it at a random point of its writing: once the progress bar
    shows a random fraction of its images done (the bar lags a little; 1.0: in the final
    bookkeeping), plus a random fraction of a second. Returns that fraction, or None when the run
    finished before the kill."""
    fraction = rng.random()
    process, progress = start_index(folder, collection)
    try:
        wait_for(lambda: progress.reached(fraction) or process.poll() is not None, 300, "progress")
        time.sleep(rng.uniform(0.0, 0.3))
    finally:
        process.kill()
        process.wait()
    return fraction if process.returncode == -signal.SIGKILL else None


def kill_somewhere(folder: Path, collection: str, rng: random.Random) -> float:
    """Kill an index run at a random point; try again (at another) when it finished first."""
    for _ in range(5):
        fraction = index_and_kill(folder, collection, rng)
        if fraction is not None:
            return fraction
    raise AssertionError(f"index runs over {folder} kept finishing before they could be killed")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    # Small batches: many commit points for a kill to fall between.
    with cli_home(tmp_path_factory.mktemp("home"), tiny_checkpoint, BATCH_SIZE="8") as settings:
        yield settings


def add_bad_files(folder: Path) -> None:
    """Failures, spread among the photos by name, so that they too must survive a crash."""
    photos = sorted(folder.glob("*.JPEG"))
    (folder / "n02000000_text.jpg").write_text("not a photo")
    (folder / "n09000000_truncated.jpg").write_bytes(photos[0].read_bytes()[:2000])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("photos"), PHOTOS)
    add_bad_files(folder)
    return folder


@pytest.fixture(scope="module")
def reference(settings: Settings, photos: Path) -> Snapshot:
    """An uninterrupted run over the same folder."""
    run("index", str(photos), "--collection", "reference")
    state = snapshot(settings, "reference")
    assert state.count == PHOTOS and len(state.failed) == 2
    return state


@pytest.mark.parametrize("seed", range(ROUNDS))
def test_a_first_run_killed_and_rerun_equals_an_uninterrupted_one(
    settings: Settings, photos: Path, reference: Snapshot, seed: int
) -> None:
    want = reference
    collection = f"crash-{seed}"
    rng = random.Random(seed)
    kills = []
    for _ in range(1 + seed % 2):  # odd rounds are killed twice before they may finish
        kills.append(kill_somewhere(photos, collection, rng))
        if shard_dir(settings, collection).exists():
            assert_consistent_part(snapshot(settings, collection), want)

    report = run_json("index", str(photos), "--collection", collection)
    assert report["embedded"] + report["unchanged"] == PHOTOS
    assert_same_state(snapshot(settings, collection), want)
    # A kill while the store was being created leaves a temporary shard; the next creation removes it.
    # less the creation lock and the disk reserve
    left = {p.name for p in settings.collection_dir(collection).iterdir()} - {".create.lock", RESERVE_FILE}
    assert left == {"info.json", "shard"}
    print(f"seed {seed}: killed at {[round(k, 2) for k in kills]} of the images, then {report}")


def test_a_rerun_over_a_changed_folder_killed_and_rerun_equals_an_uninterrupted_one(
    settings: Settings, tmp_path: Path, imagenet_dir: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 60)
    add_bad_files(folder)
    run("index", str(folder), "--collection", "changed-ref")
    run("index", str(folder), "--collection", "changed-crash")
    before = snapshot(settings, "changed-ref")

    photos = sorted(folder.glob("*.JPEG"))
    for gone in photos[::10]:  # 6 deleted
        gone.unlink()
    for i, rewritten in enumerate(photos[1:30:6]):  # 5 rewritten with other content
        rewritten.write_bytes(photos[41 + i].read_bytes())
    for extra in sorted(imagenet_dir.glob("*.JPEG"))[500:520]:  # 20 added
        shutil.copy2(extra, folder / extra.name)
    photos[2].write_bytes(b"garbage now")  # a good file goes bad
    (folder / "n02000000_text.jpg").unlink()  # a failed file disappears

    run("index", str(folder), "--collection", "changed-ref")
    after = snapshot(settings, "changed-ref")
    kill_somewhere(folder, "changed-crash", random.Random(1234))
    assert_consistent_part(snapshot(settings, "changed-crash"), before, after)

    run("index", str(folder), "--collection", "changed-crash")
    assert_same_state(snapshot(settings, "changed-crash"), after)
    assert after.count == 60 - 6 - 1 + 20

    newcomer = str(folder / sorted(imagenet_dir.glob("*.JPEG"))[510].name)
    c = ("--collection", "changed-crash")
    [best, *rest] = run_json("search", "--image", newcomer, "-k", "5", *c)["results"]
    assert best["uri"] == newcomer and best["score"] > 0.99
    assert len(rest) == 4


def test_a_store_half_created_by_a_killed_run_is_cleaned_up(settings: Settings, tmp_path: Path) -> None:
    # A kill while the shard is being created leaves its temporary directory, which nothing would
    # ever finish; the next creation removes those of processes that no longer exist.
    gone = subprocess.Popen(["true"])
    gone.wait()
    half = settings.collection_dir("half") / f"shard.creating-{gone.pid}"
    half.mkdir(parents=True)
    (half / "edge_config.json").write_text("{")
    (tmp_path / "photos").mkdir()
    noise().save(tmp_path / "photos" / "a.png")

    assert run_json("index", str(tmp_path / "photos"), "--collection", "half")["embedded"] == 1
    left = {p.name for p in settings.collection_dir("half").iterdir()} - {".create.lock", RESERVE_FILE}
    assert left == {"info.json", "shard"}


def child_pids(pid: int) -> set[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return {int(child) for task in tasks for child in (task / "children").read_text().split()}


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds child processes in Linux's /proc")
def test_a_killed_run_leaves_no_decode_worker_behind(settings: Settings, photos: Path) -> None:
    process, progress = start_index(photos, "workers", "--workers", "2")
    try:
        wait_for(lambda: progress.done >= 16 or process.poll() is not None, 300, "decoding in workers")
        children = child_pids(process.pid)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert len(children) >= 2, "two decode workers (and multiprocessing's resource tracker)"
    wait_for(lambda: not any(running(pid) for pid in children), 30, "the orphaned decode workers to exit")
