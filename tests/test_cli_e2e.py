"""The real `clipsearch` command, run as a user would, on real photos.

Specification: index a folder; re-runs embed only new and changed files and drop deleted ones;
searching by any indexed image finds that image first; --json output is one parseable document;
a corrupt file is recorded with its reason while the rest index.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexer.settings import Settings
from tests.helpers import TINY_CONFIG, copy_photos, settings_env

CLI = [sys.executable, "-m", "indexer.cli"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"clipsearch {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json").stdout)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    """One home for the module (indexing is the slow part); CLIPSEARCH_* exported for the CLI."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as env:
        for name, value in settings_env(home, tiny_checkpoint).items():
            env.setenv(name, value)
        yield Settings()


@pytest.fixture(scope="module")
def indexed(settings: Settings, tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("photos"), 40)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    report = run_json("index", str(folder))
    assert report == {**report, "embedded": 40, "unchanged": 0, "removed": 0, "failed": 1}
    return folder


def test_index_records_count_model_and_failures(indexed: Path, tiny_checkpoint: Path) -> None:
    status = run_json("status")
    assert status["collection"] == "default"
    assert status["count"] == 40
    assert status["model"]["architecture"] == TINY_CONFIG.stem
    assert status["model"]["dim"] == 32
    assert status["model"]["pretrained"] == str(tiny_checkpoint)
    [failure] = status["failed"]
    assert failure["uri"] == str(indexed / "broken.jpg")
    assert failure["reason"]


def test_rerun_embeds_only_new_and_changed_and_drops_deleted(
    settings: Settings, tmp_path: Path, imagenet_dir: Path
) -> None:
    indexed = copy_photos(imagenet_dir, tmp_path, 40)
    c = ("--collection", "rerun")
    assert run_json("index", str(indexed), *c)["embedded"] == 40
    assert run_json("index", str(indexed), *c)["embedded"] == 0

    photos = sorted(p for p in indexed.iterdir() if p.suffix == ".JPEG")
    for gone in photos[:5]:
        gone.unlink()
    rewritten = photos[5]
    rewritten.write_bytes(photos[6].read_bytes())  # new content under an old name
    newcomer = sorted(imagenet_dir.glob("*.JPEG"))[100]
    shutil.copy(newcomer, indexed / newcomer.name)

    report = run_json("index", str(indexed), *c)
    assert (report["embedded"], report["removed"], report["unchanged"]) == (2, 5, 34)
    assert run_json("status", *c)["count"] == 40 - 5 + 1

    uris = {hit["uri"] for hit in run_json("search", "a photo", "-k", "100", *c)["results"]}
    assert not uris & {str(p) for p in photos[:5]}
    assert str(indexed / newcomer.name) in uris


def test_every_indexed_image_finds_itself_first(indexed: Path, settings, tiny_model) -> None:
    from indexer.engine import SearchEngine

    photos = sorted(p for p in indexed.iterdir() if p.suffix == ".JPEG")
    [best, *_] = run_json("search", "--image", str(photos[0]), "-k", "3")["results"]
    assert best["uri"] == str(photos[0])
    assert best["score"] == pytest.approx(1.0, abs=1e-3)
    assert set(best) == {"id", "uri", "score", "metadata"}
    assert best["metadata"]["width"] > 0

    with SearchEngine(settings, model=tiny_model) as engine:  # the same search, in-process, for all 40
        for photo in photos:
            from indexer.decode import decode_image

            [hit, *_] = engine.search_image(decode_image(photo), 2)
            assert (hit.uri, round(hit.score, 3)) == (str(photo), 1.0)
            [by_id, *_] = engine.search_similar(hit.id, 2)
            assert by_id.id == hit.id


def test_text_search_agrees_with_brute_force(indexed: Path, settings, tiny_model) -> None:
    from indexer.stores import open_store

    results = run_json("search", "a dog on the beach", "-k", "10")["results"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    store = open_store(settings, "default")
    try:
        records = store.retrieve([r.id for r in store.scan()], with_vectors=True)
    finally:
        store.close()
    query = tiny_model.encode_texts(["a dog on the beach"])[0]
    scores = np.stack([r.vector for r in records]) @ query
    expected = [records[i].id for i in np.argsort(-scores)[:10]]
    assert [r["id"] for r in results] == expected
    assert [r["score"] for r in results] == pytest.approx(sorted(scores, reverse=True)[:10], abs=1e-4)


def test_classify_scores_labels_best_first(indexed: Path) -> None:
    photos = sorted(p for p in indexed.iterdir() if p.suffix == ".JPEG")[:2]
    rows = run_json("classify", *map(str, photos), "--labels", "cat, dog,car,,dog")
    assert [row["uri"] for row in rows] == [str(p) for p in photos]
    for row in rows:
        assert sorted(x["label"] for x in row["labels"]) == ["car", "cat", "dog"]
        scores = [x["score"] for x in row["labels"]]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_another_model_on_the_same_collection_is_refused(indexed: Path, tmp_path: Path) -> None:
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(TINY_CONFIG.stem).state_dict(), other)
    done = run("index", str(indexed), "--pretrained", str(other), check=False)
    assert done.returncode == 1
    assert "was built with" in done.stderr
    assert "Traceback" not in done.stderr


def test_user_errors_are_one_line_not_tracebacks(settings: Settings, tmp_path: Path) -> None:
    missing = run("search", "anything", "--collection", "nothing-here", check=False)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    offline = run(
        "index",
        str(tmp_path),
        "--model",
        "ViT-B-32",
        "--pretrained",
        "laion2b_s34b_b79k",
        "--collection",
        "offline",
        check=False,
    )
    assert offline.returncode == 1
    assert "--pretrained" in offline.stderr and "Traceback" not in offline.stderr
