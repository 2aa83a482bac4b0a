"""A full disk is an error of its kind, never a crash (issue 18, point 3), on a real small filesystem.

The embedded store writes through memory-mapped, sparsely preallocated files: on a full disk a write
to one of their pages kills the process with SIGBUS (`Bus error`, exit 135, nothing on stderr), and
loading a shard writes a few small files. The tests mount a small ext4 filesystem (a loop device,
no root reserve, so "full" means full even for root) and run the real CLI and server on it.

Specification:
- `index` on a filesystem with less free space than CLIPSEARCH_MIN_FREE_DISK_MB (default 64) is refused
  before anything is written: exit 10, one line naming the folder, what is free and what is needed;
- with the disk filled up after a first run: `index` of more photos is refused the same way; `status`,
  `search` and `check` go on working with what was acknowledged; a server keeps answering searches
  and refuses writes with 507 and the same sentence;
- once space is freed, the next `index` completes and the collection checks ok.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer.errors import ERROR_KINDS, ErrorKind
from tests.clirun import cli_home, run, run_json
from tests.helpers import copy_photos, serve

DISK_FULL = ERROR_KINDS[ErrorKind.DISK_FULL]


def mount_small_ext4(image: Path, mountpoint: Path, megabytes: int) -> None:
    """A loop-mounted ext4 of `megabytes`, with no blocks reserved for root; skips when not permitted."""
    if shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        pytest.skip("mkfs.ext4 or mount is not installed")
    with image.open("wb") as f:
        f.truncate(megabytes << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 filesystem here: {made.stderr.strip()}")
    mountpoint.mkdir()
    mount = ["mount", "-o", "loop", str(image), str(mountpoint)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a filesystem is not permitted here (needs root and loop devices): "
                    f"{mounted.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB filesystem: room for the exported test model (15 MB) and a small collection."""
    mountpoint = tmp_path / "disk"
    mount_small_ext4(tmp_path / "disk.img", mountpoint, 48)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(disk: Path) -> Path:
    """Write one file until the filesystem has no free block left; the file."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(disk).free < 64 << 10
    return filler


def assert_disk_full_line(done: subprocess.CompletedProcess[str], folder: Path, needed_mb: int) -> None:
    assert done.returncode == DISK_FULL.exit_code, (done.returncode, done.stderr)
    assert done.stderr.startswith("error: disk full: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(folder) in done.stderr and f"needs at least {needed_mb} MB free" in done.stderr
    assert "CLIPSEARCH_MIN_FREE_DISK_MB" in done.stderr and done.stdout == ""


def test_index_on_a_disk_below_the_free_space_floor_is_refused_before_writing(
    small_disk: Path, tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path
) -> None:
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 4)
    with cli_home(small_disk / "home", tiny_checkpoint):
        done = run("index", str(photos), "--json", check=False)
    assert_disk_full_line(done, small_disk / "home" / "collections" / "default", 64)
    assert not (small_disk / "home" / "collections" / "default" / "shard").exists()


def test_a_full_disk_refuses_writes_in_one_line_reads_go_on_and_the_next_run_completes(
    small_disk: Path, tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: object
) -> None:
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 12)
    more = tmp_path / "more"
    more.mkdir()
    for photo in sorted(imagenet_dir.glob("*.JPEG"))[100:120]:
        shutil.copy2(photo, more / photo.name)
    collection = small_disk / "home" / "collections" / "default"
    with cli_home(small_disk / "home", tiny_checkpoint, MIN_FREE_DISK_MB="4") as settings:
        assert run_json("index", str(photos))["embedded"] == 12
        filler = fill(small_disk)

        for _ in range(2):  # and again: a refused run leaves nothing that breaks the next one
            assert_disk_full_line(run("index", str(photos), str(more), "--json", check=False), collection, 4)
        assert run_json("status")["count"] == 12
        results = run_json("search", "a bird", "-k", "50")["results"]
        assert len(results) == 12 and {r["uri"] for r in results} == {str(p) for p in photos.iterdir()}
        assert "is ok: 12 points" in run("check").stdout

        # A server on the full disk answers searches and refuses writes with the same sentence.
        from search_api import create_app

        app = create_app(settings, model=tiny_model)
        with serve(app) as url, httpx.Client(base_url=url, timeout=60) as c:
            found = c.post("/v1/search", json={"text": "a bird", "k": 50})
            assert found.status_code == 200 and len(found.json()["results"]) == 12
            photo = sorted(more.iterdir())[0]
            with photo.open("rb") as image:
                upload = {"file": (photo.name, image, "image/jpeg")}
                put = c.put("/v1/collections/default/items/sku-1", files=upload)
            assert put.status_code == DISK_FULL.http_status, put.text
            assert put.json()["detail"].startswith("disk full: ")
            again = c.post("/v1/search", json={"text": "a bird", "k": 50})
            assert again.json()["results"] == found.json()["results"]

        filler.unlink()
        report = run_json("index", str(photos), str(more))
        assert (report["embedded"], report["unchanged"]) == (20, 12)
        assert run_json("status")["count"] == 32
        assert run_json("check")["ok"] is True
