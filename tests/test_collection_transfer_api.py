"""eval, folder exports, restore and copy through a real server on loopback and the real client
(clipsearch.connect's RemoteCollection): who may call them (restore and copy write: the full key),
what they answer against the same collection opened in this process, and what they refuse (an archive
over the server's limit, one that is not an archive, a path the server did not index, an archive member
outside the export folder) with a 4xx or the client's error, never a 500 or a file written."""

from __future__ import annotations

import csv
import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from clipsearch.client import RemoteCollection
from indexer.collection import Collection
from indexer.curation.export import unpack_folder
from indexer.errors import BadInput, Conflict, Forbidden, NotFound
from indexer.ingest.pipeline import index_sources
from indexer.settings import Settings
from search_api import create_app
from tests.helpers import assert_error, copy_photos, make_settings, serve

FULL, READ = "full-key", "read-key"
RESTORE_LIMIT = 1024 * 1024


@dataclass
class Served:
    url: str
    settings: Settings
    photos: Path

    def remote(self, name: str = "photos", key: str | None = FULL) -> RemoteCollection:
        return RemoteCollection(self.url, name, key=key)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path, tiny_checkpoint: Path,
           tiny_model: Any) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("transfer")
    photos = copy_photos(imagenet_dir, root / "photos", 12)
    settings = make_settings(root / "home", tiny_checkpoint, collection="photos",
                             api={"key": FULL, "read_keys": [READ], "max_restore_bytes": RESTORE_LIMIT})
    index_sources(settings, [photos], model=tiny_model, progress=False)
    with serve(create_app(settings, model=tiny_model)) as url:
        yield Served(url, settings, photos)


def labelled_csv(folder: Path, photos: Path) -> Path:
    """A CSV of path,label over the indexed photos: two classes, by the file's name."""
    path = folder / "labels.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        for number, photo in enumerate(sorted(photos.iterdir())):
            writer.writerow([str(photo), "even" if number % 2 == 0 else "odd"])
    return path


def ranked(results: Any) -> list[tuple[str, float]]:
    return sorted(((hit.id, round(hit.score, 5)) for hit in results), key=lambda pair: (-pair[1], pair[0]))


# --- restore and copy ---------------------------------------------------------------------------------


def test_restore_and_copy_write_so_a_read_key_gets_403_and_no_key_401(served: Served) -> None:
    for path, body in (("restore", {"content": b"x"}), ("copy", {"json": {"to_collection": "nope"}})):
        url = f"{served.url}/v1/collections/photos/{path}"
        assert_error(httpx.post(url, headers={"X-API-Key": READ}, **body), 403, "may only read")
        assert_error(httpx.post(url, **body), 401, "API key")
    with pytest.raises(Forbidden):
        served.remote("nope", key=READ).copy("nope-copy")
    assert "nope-copy" not in [c["name"] for c in httpx.get(
        f"{served.url}/v1/collections", headers={"X-API-Key": READ}).json()["collections"]]


def test_a_snapshot_restores_through_the_server_and_answers_as_the_original(served: Served,
                                                                            tmp_path: Path) -> None:
    original = served.remote()
    snapshot = original.snapshot(tmp_path / "photos.tar")
    restored = served.remote("restored")
    made = restored.restore(tmp_path / "photos.tar")
    assert (made.collection, made.points, made.vectors) == ("restored", snapshot.points, snapshot.vectors)
    assert ranked(restored.search("a bird", k=5)) == ranked(original.search("a bird", k=5))
    with pytest.raises(Conflict, match="already exists"):
        restored.restore(tmp_path / "photos.tar")
    again = restored.restore(tmp_path / "photos.tar", replace=True)
    assert again.points == snapshot.points
    assert restored.status().count == snapshot.points


def test_a_restore_over_the_size_limit_is_413_and_makes_nothing(served: Served, tmp_path: Path) -> None:
    url = f"{served.url}/v1/collections/too-big/restore"
    detail = assert_error(httpx.post(url, content=b"\0" * (RESTORE_LIMIT + 1), headers={"X-API-Key": FULL}),
                          413, str(RESTORE_LIMIT))
    assert "CLIPSEARCH_API_MAX_RESTORE_BYTES" in detail
    too_big = tmp_path / "too-big.tar"  # through the client: the error of a bad input
    too_big.write_bytes(b"\0" * (RESTORE_LIMIT + 1))
    with pytest.raises(BadInput, match="CLIPSEARCH_API_MAX_RESTORE_BYTES"):
        served.remote("too-big").restore(too_big)
    with pytest.raises(NotFound):
        served.remote("too-big").status()


def test_a_restore_of_what_is_not_a_snapshot_is_400_and_makes_nothing(served: Served, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar archive at all" * 100)
    with pytest.raises(BadInput):
        served.remote("garbage").restore(garbage)
    answer = httpx.post(f"{served.url}/v1/collections/garbage/restore", content=b"",
                        headers={"X-API-Key": FULL})
    assert_error(answer, 400)
    with pytest.raises(NotFound):
        served.remote("garbage").status()


def test_a_copy_through_the_server_answers_as_the_original_in_its_store_and_in_another(
    served: Served,
) -> None:
    original = served.remote()
    twin = original.copy("twin")
    assert (twin.collection, twin.store, twin.points) == ("twin", "edge", original.status().count)
    assert ranked(served.remote("twin").search("a dog", k=4)) == ranked(original.search("a dog", k=4))
    into_faiss = original.copy("in-faiss", to_store="faiss")
    assert (into_faiss.store, into_faiss.points) == ("faiss", twin.points)
    with Collection.open("in-faiss", served.settings.with_flags(store="faiss")) as faiss_copy:
        assert faiss_copy.search("a dog", k=4).ids == original.search("a dog", k=4).ids
    with pytest.raises(BadInput, match="onto itself"):
        original.copy()
    with pytest.raises(BadInput, match="CLIPSEARCH_QDRANT_URL"):  # a store this server has no place for
        original.copy("nowhere", to_store="qdrant")
    with pytest.raises(Conflict):
        original.copy("twin")


# --- eval ---------------------------------------------------------------------------------------------


def rounded(value: Any) -> Any:
    """A JSON document with its floats to 5 places (two processes' sums may differ in the last bits)."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def test_eval_through_the_server_answers_as_a_local_collection_of_the_same_photos(
    served: Served, tmp_path: Path, tiny_checkpoint: Path, tiny_model: Any,
) -> None:
    data = labelled_csv(tmp_path, served.photos)
    through = served.remote(key=READ).eval(data)  # it only reads: a read key may
    local_settings = make_settings(tmp_path / "local", tiny_checkpoint, collection="photos")
    index_sources(local_settings, [served.photos], model=tiny_model, progress=False)
    with Collection.open("photos", local_settings) as local:
        here = local.eval(data)
    assert rounded(through) == rounded(here)
    assert set(through) == {"zero_shot", "text_to_image", "image_to_image"}
    assert sum(row["count"] for row in through["zero_shot"]["per_class"].values()) == 12


def test_eval_never_reads_a_path_the_server_did_not_index(served: Served, tmp_path: Path) -> None:
    """A real image on the server's disk that is not indexed, and paths that climb out: not one of them
    is read, so none has an embedding."""
    elsewhere = copy_photos(served.photos, tmp_path / "elsewhere", 2)
    paths = [str(p) for p in elsewhere.iterdir()] + [f"{served.photos}/../../../etc/passwd"]
    with pytest.raises(BadInput, match="none of the DATA images has an embedding"):
        served.remote().eval_labelled(paths, ["a", "b", "c"])


def test_eval_takes_at_most_the_ids_limit_of_paths(served: Served) -> None:
    limit = served.settings.limits.ids
    body = {"paths": [f"/p/{n}.jpg" for n in range(limit + 1)], "labels": ["x"] * (limit + 1)}
    answer = httpx.post(f"{served.url}/v1/collections/photos/eval", headers={"X-API-Key": FULL}, json=body)
    assert "CLIPSEARCH_LIMITS_IDS" in assert_error(answer, 400)
    with pytest.raises(BadInput, match="one label per path"):
        served.remote().eval_labelled(["/a.jpg", "/b.jpg"], ["x"])


# --- folder exports -----------------------------------------------------------------------------------


def test_a_folder_export_comes_as_copies_of_the_indexed_files(served: Served, tmp_path: Path) -> None:
    served.remote().label(["bird", "dog", "fish"], run="kind")
    remote = served.remote(key=READ)  # an export only reads
    done = remote.export(tmp_path / "tree", "imagefolder", run="kind")
    files = sorted(p for p in (tmp_path / "tree").rglob("*") if p.is_file())
    assert done.items == len(files) == 12 and done.out == str(tmp_path / "tree")
    originals = {p.read_bytes() for p in served.photos.iterdir()}
    assert all(not p.is_symlink() and p.read_bytes() in originals for p in files)
    with pytest.raises(BadInput, match="not empty"):
        remote.export(tmp_path / "tree", "imagefolder", run="kind")
    fiftyone = remote.export(tmp_path / "fo", "fiftyone", run="kind")
    assert fiftyone.items == 12 and (tmp_path / "fo" / "labels.json").is_file()


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("bad", [
    _member("../escaped.jpg"),
    _member("cat/../../escaped.jpg"),
    _member("/tmp/escaped-absolute.jpg"),
    _member("cat/link.jpg", tarfile.SYMTYPE, "/etc/passwd"),
    _member("cat/hard.jpg", tarfile.LNKTYPE, "../escaped.jpg"),
    _member("cat/fifo", tarfile.FIFOTYPE),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink", "hardlink", "fifo"])
def test_an_export_archive_with_a_member_outside_the_folder_is_refused_whole(tmp_path: Path,
                                                                             bad: tarfile.TarInfo) -> None:
    """What a client unpacks comes from a server: a member that would land outside `out`, a link or a
    device refuses the whole archive, and nothing is written (not even the good member before it)."""
    archive = tmp_path / "export.tar"
    archive.write_bytes(_tar([(_member("cat/good.jpg"), b"jpeg"), (bad, b"evil")]))
    out = tmp_path / "deep" / "out"
    out.parent.mkdir()
    with pytest.raises(BadInput, match="not a plain file or folder"):
        unpack_folder(archive, out)
    assert not out.exists() and not (tmp_path / "deep" / "escaped.jpg").exists()
    assert not Path("/tmp/escaped-absolute.jpg").exists()


def test_an_export_archive_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "export.tar"
    archive.write_bytes(b"<html>a proxy's error page</html>")
    with pytest.raises(BadInput, match="not a readable tar archive"):
        unpack_folder(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["export.tar"]
