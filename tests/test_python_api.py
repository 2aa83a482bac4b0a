"""The Python API: one notebook-style scenario run against a local collection (`clipsearch.open`) and
against a real `clipsearch serve` on loopback (`clipsearch.connect`), answering the same; and the two
Collection classes having one interface (indexer.collection.CollectionAPI).

Each side gets its own home, built the same way (the same photos, catalog and tiny model), so that the
scenario's writes (a label run, item edits, a second vector) start from equal collections.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import clipsearch
from clipsearch.client import RemoteCollection
from indexer.collection import Collection, CollectionAPI
from indexer.errors import BadInput, InvalidFilter, NotFound
from indexer.settings import Settings
from tests.clirun import CLI, REPO, cli_home, run_json, wait_for
from tests.helpers import copy_photos, png_bytes

COLLECTION = "shop"


def make_catalog(folder: Path, imagenet: Path) -> Path:
    """A product catalog of 12 other photos: id, image, title, price, brand."""
    folder.mkdir(parents=True, exist_ok=True)
    brands = ["acme", "zenith", "orbit"]
    rows = []
    pool = copy_photos(imagenet, folder.parent / "pool", 40)
    for number, photo in enumerate(sorted(pool.iterdir())[-12:]):
        image = folder / f"p{number}{photo.suffix}"
        shutil.copy(photo, image)
        rows.append({"sku": f"SKU-{number:03d}", "image": image.name, "title": f"{photo.stem} item {number}",
                     "price": f"{10 + 7 * number}.5", "brand": brands[number % 3]})
    path = folder / "catalog.csv"
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def build(home: Path, checkpoint: Path, photos: Path, catalog: Path) -> None:
    """The collection a scenario starts from: the photos and the catalog, indexed by the library."""
    with cli_home(home, checkpoint):
        with clipsearch.open(COLLECTION) as shop:
            report = shop.index([photos])
            assert report.embedded == len(list(photos.iterdir())) and report.failed == 0
            catalogued = shop.index([catalog], id_column="sku", text_columns=["title"])
            assert catalogued.embedded == 12


def scenario(shop: CollectionAPI, photos: Path, out: Path, wide_model: tuple[str, str],
             other: Callable[[str], CollectionAPI]) -> dict[str, Any]:
    """What a newcomer's notebook does after docs/python.md; every answer kept for comparison.
    `other(name)`: another collection, the way `shop` was opened or connected."""
    answers: dict[str, Any] = {}

    def ranked(results: Any) -> list[tuple[str, float]]:
        """Best first; hits of equal score (the copied photo and its original) in id order, since the
        order of exact ties is the store's own."""
        pairs = [(hit.id, hit.score) for hit in results]
        return sorted(pairs, key=lambda pair: (-round(pair[1], 5), pair[0]))

    answers["text"] = ranked(shop.search("a small bird on a branch", k=5))
    cheap = shop.search("a fish", where=["price < 60", "brand in (acme, zenith)"], k=5, facets=["brand"])
    assert cheap.hits and all(hit.metadata["price"] < 60 for hit in cheap)
    answers["filtered"], answers["facets"] = ranked(cheap), cheap.facets
    first = answers["text"][0][0]
    answers["like"] = ranked(shop.search(like=first, k=4))
    answers["image"] = ranked(shop.search(image=sorted(photos.iterdir())[0], k=3))
    answers["algebra"] = ranked(shop.search(query=[(1.0, "a fish"), (-0.5, "a dog")], k=4))
    answers["page2"] = ranked(shop.search("a fish", k=3, offset=3))
    answers["mmr"] = ranked(shop.search("an animal", k=4, diversity=0.5, mode="vector"))
    answers["recommend"] = ranked(shop.recommend([first], [answers["text"][1][0]], k=3))
    answers["classify"] = [[(s.label, s.score) for s in c.labels]
                           for c in shop.classify([sorted(photos.iterdir())[1]], ["bird", "fish", "dog"])]

    run = shop.label(["bird", "fish", "dog", "snake"], run="kind", threshold=0.0)
    assert run.labeled == shop.status().count
    answers["label"] = (run.labeled, run.counts, shop.label_counts("kind").counts)
    page = shop.review_items("kind", max(run.counts, key=run.counts.get), limit=3)
    reviewed = shop.review("kind", [page.items[0].id], "change", "snake")
    answers["review"] = [(item.id, item.effective_label) for item in reviewed]

    duplicates = shop.duplicates()
    assert any(group.kind == "exact" for group in duplicates)  # the copied photo
    answers["duplicates"] = [(g.kind, g.ids, g.scores) for g in duplicates]

    exported = shop.export(out / "labels.coco.json", "coco", run="kind", where="brand = acme")
    coco = json.loads((out / "labels.coco.json").read_text())
    assert exported.items == len(coco["images"]) > 0
    answers["coco"] = ([image["clipsearch_id"] for image in coco["images"]],
                       [(a["image_id"], a["category_id"], a["score"]) for a in coco["annotations"]],
                       [c["name"] for c in coco["categories"]])

    tree = shop.export(out / "tree", "imagefolder", run="kind", where="brand = acme")
    names = sorted(p.relative_to(out / "tree").as_posix() for p in (out / "tree").rglob("*") if p.is_file())
    assert tree.items == len(names) > 0
    answers["imagefolder"] = (tree.items, tree.labelled, names)

    labelled = out / "labelled"  # an ImageFolder tree of links to indexed photos: eval follows them
    for number, photo in enumerate(sorted(photos.iterdir())[:12]):
        (labelled / ("even" if number % 2 == 0 else "odd")).mkdir(parents=True, exist_ok=True)
        (labelled / ("even" if number % 2 == 0 else "odd") / photo.name).symlink_to(photo)
    answers["eval"] = shop.eval(labelled)
    assert set(answers["eval"]) == {"zero_shot", "text_to_image", "image_to_image"}

    created = shop.put_item("SKU-NEW", png_bytes((64, 48)), metadata={"price": 12.5, "brand": "acme"},
                            text={"title": "a red square"})
    assert (created.action, created.embedded) == ("created", True)
    patched = shop.patch_item("SKU-NEW", {"price": 9.0})
    item = shop.get_item("SKU-NEW")
    assert item.metadata["price"] == 9.0 and item.metadata["item_id"] == "SKU-NEW"
    answers["items"] = (created.point_id, patched.action, item.metadata,
                        ranked(shop.search("a red square", where="price < 10", k=2)))
    assert shop.delete_item("SKU-NEW").action == "deleted"
    with pytest.raises(NotFound):  # locally ItemNotFound, a NotFound; through a server, of its kind
        shop.get_item("SKU-NEW")
    with pytest.raises(InvalidFilter):
        shop.search("x", where="price <")
    with pytest.raises(BadInput):
        shop.search("x", like=first)

    vectors = shop.reembed(*wide_model, name="wide")
    assert {v.name: v.state for v in vectors} == {"default": "ready", "wide": "ready"}
    answers["wide"] = ranked(shop.search("a small bird on a branch", k=5, vector="wide"))
    assert shop.activate("wide").active == "wide"
    answers["activated"] = ranked(shop.search("a small bird on a branch", k=5))
    answers["status"] = (shop.status().count, [(v.name, v.count, v.active) for v in shop.vectors()])

    copied = shop.copy("shop-copy")
    assert (copied.collection, copied.points) == ("shop-copy", answers["status"][0])
    shop.snapshot(out / "shop.tar")
    with other("shop-restored") as restored:
        made = restored.restore(out / "shop.tar")
        assert made.points == copied.points
        answers["restored"] = ranked(restored.search("a small bird on a branch", k=5))
    with other("shop-copy") as twin:
        answers["copied"] = ranked(twin.search("a small bird on a branch", k=5))
    assert answers["restored"] == answers["copied"] == answers["activated"]
    return answers


def assert_same(local: Any, remote: Any, where: str = "answers") -> None:
    """Equal, with floats to 1e-5."""
    if isinstance(local, float) or isinstance(remote, float):
        assert remote == pytest.approx(local, abs=1e-5), where
    elif isinstance(local, dict):
        assert set(local) == set(remote), where
        for key in local:
            assert_same(local[key], remote[key], f"{where}.{key}")
    elif isinstance(local, (list, tuple)):
        assert len(local) == len(remote), where
        for number, (a, b) in enumerate(zip(local, remote, strict=True)):
            assert_same(a, b, f"{where}[{number}]")
    else:
        assert local == remote, where


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("data") / "photos", 24)
    first = sorted(folder.iterdir())[0]
    shutil.copy(first, folder / f"zz-copy{first.suffix}")  # an exact duplicate
    return folder


@pytest.fixture
def served(tmp_path: Path, tiny_checkpoint: Path) -> Iterator[tuple[Path, Path]]:
    """(home, checkpoint) for a server started by `serve_home`."""
    yield tmp_path / "served", tiny_checkpoint


def serve_home(home: Path, checkpoint: Path) -> Iterator[str]:
    with cli_home(home, checkpoint, COLLECTION=COLLECTION):
        process = subprocess.Popen([*CLI, "serve", "--port", "0"], cwd=REPO, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        settings = Settings()
        from indexer.locking import server_address

        try:
            wait_for(lambda: server_address(settings.collection_dir(COLLECTION)) is not None
                     or process.poll() is not None, 120, "the server to start")
            assert process.poll() is None, process.communicate()[1]
            url = server_address(settings.collection_dir(COLLECTION))
            assert url is not None
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


@pytest.mark.slow
def test_one_script_answers_the_same_locally_and_through_a_server(
    tmp_path: Path, tiny_checkpoint: Path, photos: Path, imagenet_dir: Path, wide: tuple[str, str],  # noqa: F811
) -> None:
    catalog = make_catalog(tmp_path / "catalog", imagenet_dir)
    local_home, served_home = tmp_path / "local", tmp_path / "served"
    build(local_home, tiny_checkpoint, photos, catalog)
    build(served_home, tiny_checkpoint, photos, catalog)

    with cli_home(local_home, tiny_checkpoint), clipsearch.open(COLLECTION) as shop:
        assert isinstance(shop, CollectionAPI)
        local = scenario(shop, photos, tmp_path / "out-local", wide, clipsearch.open)

    for url in serve_home(served_home, tiny_checkpoint):
        with clipsearch.connect(url, collection=COLLECTION) as remote_shop:
            assert isinstance(remote_shop, CollectionAPI)
            remote = scenario(remote_shop, photos, tmp_path / "out-remote", wide,
                              lambda name, url=url: clipsearch.connect(url, collection=name))
            snapshot = remote_shop.snapshot(tmp_path / "remote.tar")
            assert snapshot.points == remote["status"][0]
            with pytest.raises(NotFound):
                clipsearch.connect(url, collection="nothing-here").status()

    assert local["text"] and local["duplicates"] and local["coco"][1]
    assert_same(local, remote)


def test_the_local_and_remote_collections_have_one_interface() -> None:
    """Every public method of the protocol exists on both classes with the very same signature."""
    wanted = {name for name in dir(CollectionAPI) if not name.startswith("_") and callable(
        getattr(CollectionAPI, name))}
    assert {"search", "label", "duplicates", "export", "put_item", "reembed", "snapshot"} <= wanted
    for cls in (Collection, RemoteCollection):
        public = {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}
        assert wanted <= public, f"{cls.__name__} lacks {sorted(wanted - public)}"
        for name in wanted:
            assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(CollectionAPI, name)), \
                f"{cls.__name__}.{name}"
    # Beyond the protocol, only construction differs: open() locally, the URL and client remotely.
    extra = {name for name in dir(RemoteCollection) if not name.startswith("_")} - wanted - {"url", "name"}
    assert extra == set(), extra


def test_settings_are_keyword_overrides_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    with clipsearch.open("notes", home=tmp_path / "home", store="faiss") as notes:
        assert notes.settings.store == "faiss" and notes.settings.home == tmp_path / "home"
        assert notes.name == "notes"
    with pytest.raises(BadInput, match="unknown settings: homes"):
        clipsearch.open("notes", homes=tmp_path)


def test_results_become_data_frames_when_pandas_is_there(tmp_path: Path, tiny_checkpoint: Path,
                                                         photos: Path) -> None:
    pandas = pytest.importorskip("pandas")
    with cli_home(tmp_path / "home", tiny_checkpoint), clipsearch.open("frames") as frames:
        frames.index([photos])
        table = frames.search("a bird", k=4).to_pandas()
        assert isinstance(table, pandas.DataFrame)
        assert list(table.columns) == ["id", "uri", "score", "metadata"] and len(table) == 4
        assert table["score"].is_monotonic_decreasing


def test_the_command_line_sees_what_the_python_api_wrote(tmp_path: Path, tiny_checkpoint: Path,
                                                         photos: Path) -> None:
    with cli_home(tmp_path / "home", tiny_checkpoint), clipsearch.open("both") as both:
        both.index([photos])
        ranked = [hit.id for hit in both.search("a bird", k=3)]
        both.close()
        assert [r["id"] for r in run_json("search", "a bird", "-k", "3", "--collection", "both")["results"]] \
            == ranked
