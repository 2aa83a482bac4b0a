"""Concurrency, with the real `clipsearch` command: one writer per collection, and searches that
keep answering while the collection is written.

Specification:
- a second `clipsearch index` (or `serve --watch`) on a collection being indexed is refused at once
  (exit 1), naming the collection and the pid of the run that holds it; once that run is killed
  (SIGKILL) the next run proceeds: the lock dies with its holder, and a lock file left on disk
  blocks nothing;
- an embedded collection opens in one process at a time, so `clipsearch index` on a collection
  that another process has open fails with a message saying so and pointing to `serve --watch`.

What `clipsearch serve --watch` does while it writes the collection it serves: tests/test_watch.py.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.settings import Settings
from tests.clirun import cli_home, lock_holder, run, run_json, start, wait_for
from tests.corpus import noise
from tests.helpers import copy_photos


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    with cli_home(tmp_path_factory.mktemp("home"), tiny_checkpoint, BATCH_SIZE="4") as settings:
        yield settings


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
    assert second.returncode == 5  # conflict or busy (indexer.errors.ERROR_KINDS)
    message = second.stderr.strip()
    assert message.startswith("error: collection 'busy' is being written by another process")
    assert f"pid {first.pid}: clipsearch index" in message
    assert "Traceback" not in message


def test_serve_watch_is_refused_as_well(long_run: tuple[subprocess.Popen, Path]) -> None:
    first, folder = long_run
    # Refused before it binds (the lock is taken first): any port.
    command = ("serve", "--collection", "busy", "--watch", str(folder), "--port", "0")
    refused = run(*command, check=False, timeout=120)
    assert first.poll() is None
    assert refused.returncode == 5  # conflict or busy
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
    assert refused.returncode == 5  # conflict or busy
    assert "collection 'held' is open in another process" in refused.stderr
    assert "clipsearch serve --watch FOLDER" in refused.stderr
    assert "Traceback" not in refused.stderr
