"""Every CLI command that reads or changes a collection, tried while `clipsearch serve --watch` holds
it (an embedded collection: open in one process at a time). Each either goes through the server (the
same answer shapes as without one) or is refused with one line of advice about that very command."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from indexer.errors import ERROR_KINDS, ErrorKind
from indexer.locking import server_address
from indexer.settings import Settings
from tests.clirun import cli_home, run, run_json, start, wait_for
from tests.helpers import copy_photos, png_bytes

pytestmark = pytest.mark.slow
COLLECTION = "watched"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
           imagenet_dir: Path) -> Iterator[tuple[Settings, Path, str]]:
    """(settings, watched folder, URL) of `clipsearch serve --watch FOLDER` over a fresh home."""
    root = tmp_path_factory.mktemp("through")
    folder = copy_photos(imagenet_dir, root / "photos", 16)
    first = sorted(folder.iterdir())[0]
    (folder / f"zz-copy{first.suffix}").write_bytes(first.read_bytes())
    with cli_home(root / "home", tiny_checkpoint, COLLECTION=COLLECTION) as settings:
        server = start("serve", "--port", "0", "--watch", str(folder))
        try:
            def synced() -> bool:
                assert server.poll() is None, server.communicate()[1]
                return server_address(settings.collection_dir(COLLECTION)) is not None and \
                    run_json("status")["count"] == 17

            wait_for(synced, 180, "serve --watch to index the folder", every=1.0)
            url = server_address(settings.collection_dir(COLLECTION))
            assert url is not None
            yield settings, folder, url
        finally:
            server.send_signal(signal.SIGINT)
            server.communicate(timeout=60)


def exit_code(kind: ErrorKind) -> int:
    return ERROR_KINDS[kind].exit_code


def refused(*args: str, kind: ErrorKind, advice: str) -> str:
    """The command fails with one `error:` line of the kind's exit code, naming `advice`."""
    done = run(*args, check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == exit_code(kind), done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert advice in lines[0], lines[0]
    return lines[0]


def test_reading_commands_go_through_the_server(served: tuple[Settings, Path, str], tmp_path: Path) -> None:
    settings, folder, _ = served
    assert run_json("status")["count"] == 17
    hits = run_json("search", "a bird", "-k", "3", "--where", "width > 10")["results"]
    assert len(hits) == 3
    assert run_json("vectors")["vectors"][0]["active"] is True
    groups = run_json("duplicates")["groups"]
    assert any(group["kind"] == "exact" for group in groups)
    clusters = run_json("clusters", "-k", "3", "--outliers", "2")
    assert sum(c["size"] for c in clusters["clusters"]) == 17 and len(clusters["outliers"]) == 2
    assert len(run_json("outliers", "--limit", "4")["outliers"]) == 4
    scored = run_json("classify", str(sorted(folder.iterdir())[0]), "--labels", "bird,fish")
    assert [x["label"] for x in scored[0]["labels"]] and sum(x["score"] for x in scored[0]["labels"]) \
        == pytest.approx(1.0, abs=1e-4)
    archive = tmp_path / "through.tar.gz"
    assert run_json("snapshot", str(archive))["points"] == 17 and archive.stat().st_size > 0


def originals(folder: Path) -> list[Path]:
    """The photos the folder began with (not the exact copy, nor what a test added)."""
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(("zz-", "late"))]


def test_every_form_of_search_and_the_report_files_go_through_the_server(
    served: tuple[Settings, Path, str], tmp_path: Path
) -> None:
    settings, folder, _ = served
    browsed = run_json("search", "--where", "width > 10", "--sort", "-width", "-k", "5")
    widths = [hit["metadata"]["width"] for hit in browsed["results"]]
    assert browsed["mode"] == "browse" and len(widths) == 5 and widths == sorted(widths, reverse=True)
    first = browsed["results"][0]["id"]
    liked = [hit["id"] for hit in run_json("search", "--like", first, "-k", "3")["results"]]
    assert len(liked) == 3 and first not in liked
    photo = originals(folder)[1]
    assert run_json("search", "--image", str(photo), "-k", "1")["results"][0]["uri"] == str(photo)
    # A text and an image file in one weighted query: the file goes up as the upload (the text weighs
    # next to nothing, so the photo finds itself first).
    mixed = run_json("search", "0.000001:a bird", "+", str(photo), "-k", "2")["results"]
    assert mixed[0]["uri"] == str(photo) and len(mixed) == 2
    assert run_json("check")["ok"] is True

    keep, remove = tmp_path / "keep.csv", tmp_path / "remove.csv"
    run("duplicates", "--keep-list", str(keep), "--remove-list", str(remove))
    count = run_json("status")["count"]
    kept, removed = (len(path.read_text().splitlines()) - 1 for path in (keep, remove))
    assert removed >= 1 and kept + removed == count
    groups = tmp_path / "groups.jsonl"
    exported = run_json("export", str(groups), "--format", "jsonl", "--duplicates")
    rows = [json.loads(line) for line in groups.read_text().splitlines()]
    assert exported["items"] == len(rows) >= 2
    assert all(row["metadata"]["duplicate_group"] is not None for row in rows)


def test_writing_commands_go_through_the_server(served: tuple[Settings, Path, str], tmp_path: Path) -> None:
    settings, folder, _ = served
    labelled = run_json("label", "--labels", "bird,fish,dog", "--run", "kind", "--where", "width >= 1")
    assert labelled["labeled"] == 17
    some = next(name for name, count in labelled["counts"].items() if count)
    page = run_json("review", "--run", "kind", "--label", some, "-k", "2")
    assert page["items"] and page["counts"]["total"] == 17
    decided = run_json("review", "--run", "kind", "--change", f"{page['items'][0]['id']}=snake")
    assert decided["updated"] == 1 and decided["counts"]["counts"]["snake"] == 1

    exported = run_json("export", str(tmp_path / "kind.coco.json"), "--format", "coco", "--run", "kind",
                        "--where", f"kind = {some}")
    coco = json.loads((tmp_path / "kind.coco.json").read_text())
    assert exported["items"] == len(coco["images"]) > 0
    tree = tmp_path / "tree"  # a folder export comes from the server as an archive, unpacked here
    folder_export = run_json("export", str(tree), "--format", "imagefolder", "--run", "kind")
    files = [p for p in tree.rglob("*") if p.is_file()]
    assert folder_export["items"] == len(files) == 17

    image = tmp_path / "new.png"
    image.write_bytes(png_bytes((40, 30)))
    assert run_json("item", "put", "SKU-1", "--image", str(image), "--metadata", '{"price": 5}')["action"] \
        == "created"
    assert run_json("item", "patch", "SKU-1", "--metadata", '{"price": 4}')["action"] == "updated"
    assert run_json("item", "get", "SKU-1")["metadata"]["price"] == 4
    assert run_json("item", "delete", "SKU-1")["action"] == "deleted"
    refused("item", "get", "SKU-1", kind=ErrorKind.NOT_FOUND, advice="SKU-1")

    count = run_json("status")["count"]
    copied = run_json("copy", "--to-store", "faiss")  # the server copies what it holds
    assert (copied["collection"], copied["store"], copied["points"]) == (COLLECTION, "faiss", count)
    assert copied["source"] == {"collection": COLLECTION, "store": "edge"}
    refused("copy", "--to-store", "faiss", kind=ErrorKind.CONFLICT, advice="--replace")
    archive = tmp_path / "back.tar"
    assert run_json("snapshot", str(archive))["points"] == count
    restored = run_json("restore", str(archive), "--collection", COLLECTION, "--replace")
    assert (restored["collection"], restored["points"]) == (COLLECTION, count)
    assert restored["archive"] == str(archive) and restored["bytes"] == archive.stat().st_size
    assert run_json("status")["count"] == count
    assert len(run_json("search", "a bird", "-k", "2")["results"]) == 2

    (folder / "late.png").write_bytes(png_bytes((50, 50), (10, 200, 10)))
    synced = run_json("index", str(folder))
    assert synced["collection"] == COLLECTION and run_json("status")["count"] == 18


def test_what_cannot_go_through_the_server_says_what_to_do_about_that_command(
    served: tuple[Settings, Path, str], tmp_path: Path
) -> None:
    settings, folder, url = served
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.png").write_bytes(png_bytes((20, 20)))
    refused("index", str(other), kind=ErrorKind.BAD_INPUT, advice="--watch")
    refused("clusters", "--store", kind=ErrorKind.CONFLICT, advice="without --store")
    photos = sorted(p for p in folder.iterdir() if not p.name.startswith("zz-"))
    labelled = tmp_path / "labels.csv"  # two classes over the watched photos, by the paths the server indexed
    labelled.write_text("path,label\n" + "".join(f"{p.resolve()},{'bird' if i % 2 else 'fish'}\n"
                                                  for i, p in enumerate(photos)))
    measured = run_json("eval", str(labelled))  # the stored vectors, measured through the server
    assert set(measured) == {"zero_shot", "text_to_image", "image_to_image"}
    assert sum(c["count"] for c in measured["zero_shot"]["per_class"].values()) == len(photos)
    refused("eval", str(labelled), "--report", str(tmp_path / "report"), kind=ErrorKind.CONFLICT,
            advice="leave out --model and --report")
    line = refused("clusters", "--store", kind=ErrorKind.CONFLICT, advice="clusters")
    assert "--watch" not in line  # about this command, not about indexing
    line = refused("export", str(tmp_path / "q.csv"), "--format", "csv", "--query", "a bird",
                   kind=ErrorKind.CONFLICT, advice="--where")
    assert "--query" in line
    templates = tmp_path / "templates.txt"  # read here; the server is sent the templates themselves
    templates.write_text("a photo of a {}\na drawing of a {}\n")
    by_file = run_json("label", "--labels", "bird,fish", "--templates", str(templates), "--run", "drawn")
    assert by_file["labeled"] == run_json("status")["count"]
    runs = httpx.get(f"{url}/v1/collections/{COLLECTION}/labels", timeout=60).json()["runs"]
    drawn = next(r for r in runs if r["run"] == "drawn")
    assert drawn["templates"] == ["a photo of a {}", "a drawing of a {}"]
    templates.write_text("a photo\n")
    refused("label", "--labels", "bird,fish", "--templates", str(templates), kind=ErrorKind.BAD_INPUT,
            advice="{}")
    refused("check", "--repair", kind=ErrorKind.CONFLICT, advice="--repair")
    catalog = tmp_path / "products.csv"
    catalog.write_text("id,image\nA,a.png\n")
    line = refused("index", str(catalog), kind=ErrorKind.CONFLICT, advice="catalogs")
    assert "stop it" in line


def test_the_commands_without_a_server_answer_in_the_same_shapes(
    tmp_path: Path, tiny_checkpoint: Path, imagenet_dir: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    with cli_home(tmp_path / "home", tiny_checkpoint):
        run("index", str(folder))
        assert len(run_json("outliers", "--limit", "3")["outliers"]) == 3
        labelled = run_json("label", "--labels", "bird,fish", "--where", "width > 1")
        assert labelled["labeled"] == 6
        listed = run_json("review", "--label", next(iter(labelled["counts"])))
        assert listed["counts"]["total"] == 6 and listed["items"]
        image = tmp_path / "new.png"
        image.write_bytes(png_bytes((40, 30)))
        assert run_json("item", "put", "A-1", "--image", str(image))["embedded"] is True
        assert run_json("item", "get", "A-1")["metadata"]["item_id"] == "A-1"
