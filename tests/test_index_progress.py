"""`Collection.index(progress=...)`: a callback with IndexProgress over the whole run, called with counts
that only grow and last with the run's report; True gives tqdm bars on stderr (what the CLI shows).
The real indexer on real photos and the tiny model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import clipsearch
from indexer.collection import IndexProgress
from indexer.results import IndexReport
from tests.clirun import cli_home, run
from tests.helpers import copy_photos, png_bytes


def check_run(calls: list[IndexProgress], report: IndexReport) -> None:
    """The contract of every run's calls: counts never go down, done never passes total, one last
    "done" call with the report's counts."""
    assert calls, "the callback was never called"
    assert [c.stage for c in calls[:-1]] == ["embedding"] * (len(calls) - 1)
    for before, after in zip(calls, calls[1:], strict=False):
        assert after.done >= before.done and after.total >= before.total
        assert after.embedded >= before.embedded
    assert all(0 <= c.done <= c.total for c in calls)
    last = calls[-1]
    assert last.stage == "done" and last.done == last.total
    assert (last.embedded, last.failed) == (report.embedded, report.failed)


def test_a_folder_run_reports_each_batch_and_ends_with_the_report(
    tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 7)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    calls: list[IndexProgress] = []
    with cli_home(tmp_path / "home", tiny_checkpoint, BATCH_SIZE="2", WORKERS="1"):
        with clipsearch.open("photos") as photos:
            report = photos.index([folder], progress=calls.append)
    check_run(calls, report)
    assert report.embedded == 7 and report.failed == 1
    assert calls[0].done == 0 and calls[0].total == 8 and calls[0].source == str(folder)
    # 8 files in batches of 2: a call once the folder is walked, one after each batch, then the last.
    assert len(calls) == 1 + 4 + 1
    assert calls[-2].done == 8 and calls[-2].embedded == 7 and calls[-2].failed == 1

    again: list[IndexProgress] = []
    with cli_home(tmp_path / "home", tiny_checkpoint):
        with clipsearch.open("photos") as photos:
            unchanged = photos.index([folder], progress=again.append)
    check_run(again, unchanged)
    assert unchanged.embedded == 0 and unchanged.unchanged == 7
    assert again[-1].total == again[-1].done == 1  # the broken file is tried again; the others are kept


def test_folders_and_a_catalog_are_one_run_whose_total_grows(
    tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 4)
    shelf = tmp_path / "shop"
    shelf.mkdir()
    pool = copy_photos(imagenet_dir, tmp_path / "pool", 12)
    rows = []
    for number, photo in enumerate(sorted(pool.iterdir())[-3:]):
        shutil.copy(photo, shelf / f"p{number}{photo.suffix}")
        rows.append({"sku": f"SKU-{number}", "image": f"p{number}{photo.suffix}", "title": f"item {number}"})
    catalog = shelf / "catalog.csv"
    with catalog.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    calls: list[IndexProgress] = []
    with cli_home(tmp_path / "home", tiny_checkpoint):
        with clipsearch.open("mixed") as mixed:
            report = mixed.index([folder, catalog], id_column="sku", text_columns=["title"],
                                 progress=calls.append)
    check_run(calls, report)
    assert report.embedded == 7
    assert calls[0].total == 4 and calls[0].source == str(folder)
    from_catalog = [c for c in calls if c.source == str(catalog)]
    assert from_catalog and from_catalog[0].total == 7 and from_catalog[0].done == 4
    assert calls[-1].total == 7


def test_progress_true_draws_the_tqdm_bar_on_stderr_and_false_draws_nothing(
    tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 3)
    with cli_home(tmp_path / "home", tiny_checkpoint):
        with clipsearch.open("quiet") as quiet:
            quiet.index([folder])
        assert "indexing" not in capfd.readouterr().err
        with clipsearch.open("shown") as shown:
            shown.index([folder], progress=True)
        assert "indexing shown" in capfd.readouterr().err


def test_the_command_line_draws_the_same_bars_and_none_for_json(
    tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 3)
    with cli_home(tmp_path / "home", tiny_checkpoint, COLLECTION="cli"):
        shown = run("index", str(folder))
        assert "indexing cli" in shown.stderr and "3/3" in shown.stderr
        (folder / "new.png").write_bytes(png_bytes((30, 30)))
        quiet = run("index", str(folder), "--json")
        assert "indexing" not in quiet.stderr and json.loads(quiet.stdout)["embedded"] == 1


def test_a_progress_that_is_neither_a_flag_nor_a_function_is_refused(tmp_path: Path,
                                                                      tiny_checkpoint: Path) -> None:
    from indexer.errors import BadInput

    with cli_home(tmp_path / "home", tiny_checkpoint):
        with clipsearch.open("photos") as photos, pytest.raises(BadInput, match="progress"):
            photos.index([tmp_path], progress="yes")  # type: ignore[arg-type]
