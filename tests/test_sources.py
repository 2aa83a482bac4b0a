"""Walking folders: which files count as images, and how each keeps a stable identity."""

from __future__ import annotations

import os
from pathlib import Path

from indexer.ingest.sources import SourceItem, WalkProblem, item_id, source_roots, walk_folder


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def uris(items: list[SourceItem]) -> list[str]:
    return [item.uri for item in items]


def test_walks_recursively_in_a_stable_order_keeping_only_image_extensions(tmp_path: Path) -> None:
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "sub/deeper/d.JPEG", "notes.txt", "raw.cr2", "e.tiff"]:
        touch(tmp_path / name)
    found = uris(list(walk_folder(tmp_path)))
    expected = ["a.PNG", "b.jpg", "e.tiff", "sub/c.webp", "sub/deeper/d.JPEG"]
    assert found == [str(tmp_path / name) for name in expected]


def test_skips_hidden_files_hidden_folders_and_junk_folders(tmp_path: Path) -> None:
    touch(tmp_path / "keep.jpg")
    for name in [
        ".hidden.jpg",
        ".thumbnails/t.jpg",
        "@eaDir/keep.jpg/SYNOFILE_THUMB_M.jpg",
        "__MACOSX/._keep.jpg",
    ]:
        touch(tmp_path / name)
    assert uris(list(walk_folder(tmp_path))) == [str(tmp_path / "keep.jpg")]


def test_ids_come_from_the_absolute_path_and_survive_relative_roots(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path / "p.jpg")
    monkeypatch.chdir(tmp_path.parent)
    [relative] = walk_folder(Path(tmp_path.name))
    [absolute] = walk_folder(tmp_path)
    assert relative.uri == absolute.uri == str(tmp_path / "p.jpg")
    assert relative.id == absolute.id == item_id(str(tmp_path / "p.jpg"))
    assert item_id(str(tmp_path / "q.jpg")) != relative.id


def test_fingerprint_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    photo = touch(tmp_path / "p.jpg", b"first")
    [before] = walk_folder(tmp_path)
    photo.write_bytes(b"second version")
    os.utime(photo, ns=(before_ns := 10**18, before_ns))
    [after] = walk_folder(tmp_path)
    assert (after.id, after.fingerprint != before.fingerprint) == (before.id, True)


def test_a_single_file_can_be_a_source(tmp_path: Path) -> None:
    photo = touch(tmp_path / "only.png")
    assert uris(list(walk_folder(photo))) == [str(photo)]


def test_symlink_loops_and_dangling_links_are_reported_not_fatal(tmp_path: Path) -> None:
    touch(tmp_path / "real.jpg")
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder link back to the root: not followed
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "self.jpg").symlink_to(tmp_path / "self.jpg")
    problems: list[WalkProblem] = []
    found = uris(list(walk_folder(tmp_path, problems)))
    assert found == [str(tmp_path / "real.jpg")]
    assert sorted(Path(p.uri).name for p in problems) == ["dangling.jpg", "self.jpg"]
    assert all(p.reason for p in problems)


def test_a_photo_reached_through_symlinks_is_one_item_under_its_real_path(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "photos"
    touch(real / "2024" / "a.jpg")
    touch(real / "b.jpg")
    (tmp_path / "Pictures").symlink_to(real)  # the folder a user indexes is a link
    (real / "b-again.jpg").symlink_to(real / "b.jpg")  # a second name for one file, inside the root
    outside = touch(tmp_path / "elsewhere" / "c.jpg")
    (real / "c.jpg").symlink_to(outside)  # a link out of the root keeps its own path
    through_link = uris(list(walk_folder(tmp_path / "Pictures")))
    direct = uris(list(walk_folder(real)))
    expected = sorted([str(real / "2024" / "a.jpg"), str(real / "b.jpg"), str(real / "b.jpg"),
                       str(real / "c.jpg")])
    assert sorted(through_link) == sorted(direct) == expected
    assert source_roots([tmp_path / "Pictures"]) == [str(real), str(tmp_path / "Pictures")]
    assert source_roots([real, real]) == [str(real)]
