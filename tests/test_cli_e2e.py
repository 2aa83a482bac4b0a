"""The real `clipsearch` command (`python -m clipsearch`), run as a user would, on real photos.

Specification:
- index a folder; re-runs embed only new and changed files and drop deleted ones; a corrupt file is
  recorded with its reason while the rest index; --json output is one parseable document;
- searching by any indexed image finds that image first; text search equals brute force; a search
  may name its vector (`--vector`), and an unknown one is a one-line error;
- `classify` scores labels best first; given good and bad files it names each bad one on stderr,
  still prints the good ones' labels, and exits with the bad-input code;
- errors a user can act on are one line with the exit code of their kind (indexer.errors);
- `serve` takes the model flags of `index`: `serve --watch` into a new collection builds it with them;
- `ui` listens on 127.0.0.1 by default, and its Streamlit child stops with it, whether it is asked
  to stop (SIGTERM) or killed (SIGKILL): the port is free again; the app's Streamlit config hides
  the toolbar's developer options (Deploy, rerun).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.errors import ERROR_KINDS, ErrorKind
from indexer.settings import Settings
from tests.clirun import (
    REPO,
    children_of,
    cli_home,
    is_alive,
    port_is_free,
    run,
    run_json,
    start,
    wait_for,
)
from tests.corpus import noise
from tests.helpers import TINY_CONFIG, copy_photos, free_port


def exit_code(kind: ErrorKind) -> int:
    return ERROR_KINDS[kind].exit_code


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Settings]:
    """One home for the module (indexing is the slow part); CLIPSEARCH_* exported for the CLI."""
    with cli_home(tmp_path_factory.mktemp("home"), tiny_checkpoint) as settings:
        yield settings


@pytest.fixture(scope="module")
def indexed(settings: Settings, tmp_path_factory: pytest.TempPathFactory, imagenet_dir: Path) -> Path:
    folder = copy_photos(imagenet_dir, tmp_path_factory.mktemp("photos"), 40)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    report = run_json("index", str(folder))
    assert report == {**report, "embedded": 40, "unchanged": 0, "removed": 0, "failed": 1}
    return folder


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".JPEG")


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
    [vector] = status["vectors"]
    assert vector["active"] and vector["count"] == 40 and vector["dim"] == 32


def test_rerun_embeds_only_new_and_changed_and_drops_deleted(
    settings: Settings, tmp_path: Path, imagenet_dir: Path
) -> None:
    indexed = copy_photos(imagenet_dir, tmp_path, 40)
    c = ("--collection", "rerun")
    assert run_json("index", str(indexed), *c)["embedded"] == 40
    assert run_json("index", str(indexed), *c)["embedded"] == 0

    photos = photos_in(indexed)
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


def test_every_indexed_image_finds_itself_first(indexed: Path, settings: Settings) -> None:
    from indexer.search.engine import SearchEngine

    photos = photos_in(indexed)
    [best, *_] = run_json("search", "--image", str(photos[0]), "-k", "3")["results"]
    assert best["uri"] == str(photos[0])
    assert best["score"] == pytest.approx(1.0, abs=1e-3)
    assert set(best) == {"id", "uri", "score", "metadata"}
    assert best["metadata"]["width"] > 0

    with SearchEngine(settings) as engine:  # the same search, in-process, for all 40
        for photo in photos:
            [hit, *_] = engine.search_image(photo, 2).results
            assert (hit.uri, round(hit.score, 3)) == (str(photo), 1.0)
            [by_id, *_] = engine.search_similar(hit.id, 2).results
            assert by_id.id == hit.id


def test_text_search_agrees_with_brute_force(indexed: Path, settings: Settings, tiny_model) -> None:
    from indexer.stores import open_store

    results = run_json("search", "a dog on the beach", "-k", "10")["results"]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    store = open_store(settings, "default")
    try:
        active = store.schema.active
        records = list(store.scan(with_vectors=True))
    finally:
        store.close()
    query = tiny_model.encode_texts(["a dog on the beach"])[0]
    scores = np.stack([r.vectors[active] for r in records]) @ query
    expected = [records[i].id for i in np.argsort(-scores)[:10]]
    assert [r["id"] for r in results] == expected
    assert [r["score"] for r in results] == pytest.approx(sorted(scores, reverse=True)[:10], abs=1e-4)


def test_search_names_its_vector(indexed: Path) -> None:
    [vector] = run_json("status")["vectors"]
    default = run_json("search", "a red car", "-k", "5")["results"]
    assert run_json("search", "a red car", "-k", "5", "--vector", vector["name"])["results"] == default

    unknown = run("search", "a red car", "--vector", "no-such-vector", check=False)
    assert unknown.returncode == exit_code(ErrorKind.NOT_FOUND)
    assert unknown.stderr.startswith("error: ") and unknown.stderr.count("\n") == 1
    assert "no-such-vector" in unknown.stderr


def test_command_modules_are_declared_with_the_commands_they_hold() -> None:
    """`clipsearch.cli.COMMAND_MODULES` names the commands of modules imported only when run; each
    module's COMMANDS are exactly those, so none goes missing from `clipsearch --help`."""
    import importlib

    from clipsearch.cli import COMMAND_MODULES

    for module, names in COMMAND_MODULES.items():
        assert sorted(c.name for c in importlib.import_module(module).COMMANDS) == sorted(names), module


def test_a_search_loads_no_command_module_it_does_not_use(indexed: Path) -> None:
    from clipsearch.cli import COMMAND_MODULES

    probe = "import sys, runpy; sys.argv = ['clipsearch', 'search', 'a red car', '--json']\n" \
            "try:\n    runpy.run_module('clipsearch.cli', run_name='__main__')\n" \
            "except SystemExit:\n    pass\n" \
            "print('MODULES', sorted(m for m in sys.modules if m.startswith('clipsearch.')), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert len(json.loads(done.stdout)["results"]) > 0, done.stderr
    loaded = done.stderr.rsplit("MODULES", 1)[1]
    assert not [module for module in COMMAND_MODULES if f"'{module}'" in loaded]


def test_served_connections_send_each_response_at_once() -> None:
    """Nagle's algorithm off on every connection `clipsearch serve` accepts (with it on, delayed ACKs
    held each response ~40 ms)."""
    import socket

    from clipsearch.cli import listening_socket

    with listening_socket("127.0.0.1", 0) as server:
        with socket.create_connection(server.getsockname()[:2]):
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_classify_scores_labels_best_first(indexed: Path) -> None:
    photos = photos_in(indexed)[:2]
    rows = run_json("classify", *map(str, photos), "--labels", "cat, dog,car,,dog")
    assert [row["uri"] for row in rows] == [str(p) for p in photos]
    for row in rows:
        assert sorted(x["label"] for x in row["labels"]) == ["car", "cat", "dog"]
        scores = [x["score"] for x in row["labels"]]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_classify_names_each_bad_file_and_keeps_the_good_ones(indexed: Path, tmp_path: Path) -> None:
    good = photos_in(indexed)[:2]
    empty, text = tmp_path / "empty.jpg", tmp_path / "notes.png"
    empty.write_bytes(b"")
    text.write_text("not a picture")
    files = [good[0], empty, good[1], text]

    done = run("classify", *map(str, files), "--labels", "cat,dog", "--json", check=False)
    assert done.returncode == exit_code(ErrorKind.BAD_INPUT)
    rows = json.loads(done.stdout)
    assert [row["uri"] for row in rows] == [str(p) for p in good]
    alone = run_json("classify", str(good[0]), "--labels", "cat,dog")
    [(labels, scores), (alone_labels, alone_scores)] = [
        ([x["label"] for x in r["labels"]], [x["score"] for x in r["labels"]]) for r in (rows[0], alone[0])
    ]
    assert labels == alone_labels and scores == pytest.approx(alone_scores, abs=1e-5)  # as on its own
    errors = done.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in done.stderr
    assert errors[0].startswith(f"error: {empty}: ") and errors[1].startswith(f"error: {text}: ")

    plain = run("classify", str(good[0]), str(text), "--labels", "cat,dog", check=False)
    assert plain.returncode == exit_code(ErrorKind.BAD_INPUT)
    assert plain.stdout.startswith(f"{good[0]}\t")

    only_bad = run("classify", str(text), "--labels", "cat,dog", check=False)
    assert only_bad.returncode == exit_code(ErrorKind.BAD_INPUT)
    assert only_bad.stderr.startswith(f"error: {text}: ") and only_bad.stderr.count("\n") == 1


def test_another_model_on_the_same_collection_is_refused(indexed: Path, tmp_path: Path) -> None:
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(TINY_CONFIG.stem).state_dict(), other)
    done = run("index", str(indexed), "--pretrained", str(other), check=False)
    assert done.returncode == exit_code(ErrorKind.MODEL_MISMATCH)
    assert "was built with" in done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_user_errors_are_one_line_not_tracebacks(settings: Settings, tmp_path: Path) -> None:
    missing = run("search", "anything", "--collection", "nothing-here", check=False)
    assert missing.returncode == exit_code(ErrorKind.NOT_FOUND)
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "nothing-here" in missing.stderr

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
        timeout=60,
    )
    assert offline.returncode == exit_code(ErrorKind.UNAVAILABLE)
    assert "--pretrained" in offline.stderr and "Traceback" not in offline.stderr


# --- serve --------------------------------------------------------------------------------------


def test_serve_watch_builds_a_new_collection_with_the_model_flags(
    settings: Settings, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No model in the environment: only the flags can bring the (offline) tiny model.
    monkeypatch.delenv("CLIPSEARCH_MODEL")
    monkeypatch.delenv("CLIPSEARCH_PRETRAINED")
    folder = tmp_path / "watched"
    folder.mkdir()
    for seed in range(3):
        noise(seed=seed).save(folder / f"{seed}.png")
    port = free_port()
    server = start(
        "serve", "--port", str(port), "--collection", "watched", "--watch", str(folder),
        "--model", str(TINY_CONFIG), "--pretrained", str(tiny_checkpoint), "--device", "cpu",
    )  # fmt: skip
    try:
        def indexed_all() -> bool:
            assert server.poll() is None, server.communicate()[1]
            try:
                listed = httpx.get(f"http://127.0.0.1:{port}/v1/collections", timeout=5).json()
            except httpx.HTTPError:
                return False
            return any(c["name"] == "watched" and c["count"] == 3 for c in listed["collections"])

        wait_for(indexed_all, 120, "serve --watch to index the folder", every=1.0)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=60)
    status = run_json("status", "--collection", "watched")
    assert status["model"]["pretrained"] == str(tiny_checkpoint)
    assert status["count"] == 3


# --- ui -----------------------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (/proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


def started_ui(port: int) -> tuple[subprocess.Popen[str], int]:
    """`clipsearch ui` listening, and the pid of its Streamlit child."""
    parent = start("ui", "--port", str(port), "--api-url", "http://127.0.0.1:9")

    def listening() -> bool:
        assert parent.poll() is None, parent.communicate()[1]
        return bool(listening_addresses(port))

    wait_for(listening, 120, "the Streamlit child to listen", every=0.2)
    [child] = children_of(parent.pid)
    return parent, child


def stop_all(parent: subprocess.Popen[str], child: int) -> None:
    for pid in (parent.pid, child):
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)
    parent.communicate(timeout=30)


def test_ui_listens_on_loopback_and_stops_with_sigterm() -> None:
    port = free_port()
    parent, child = started_ui(port)
    try:
        assert listening_addresses(port) == {LOOPBACK}  # not every interface
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=30)
        wait_for(lambda: not is_alive(child), 15, "the Streamlit child to stop")
        wait_for(lambda: port_is_free(port), 15, "the port to be free")
    finally:
        stop_all(parent, child)


def test_ui_child_dies_when_the_parent_is_killed() -> None:
    port = free_port()
    parent, child = started_ui(port)
    try:
        parent.kill()  # SIGKILL: no chance to pass anything on
        parent.communicate(timeout=30)
        wait_for(lambda: not is_alive(child), 20, "the orphaned Streamlit child to stop")
        wait_for(lambda: port_is_free(port), 15, "the port to be free")
    finally:
        stop_all(parent, child)


def test_ui_config_hides_the_toolbar_developer_options() -> None:
    """Streamlit itself, run where `clipsearch ui` runs it, reads the app's config."""
    shown = subprocess.run(
        [sys.executable, "-m", "streamlit", "config", "show"],
        cwd=REPO / "ui",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    options = {
        name.strip(): value.strip().strip('"')
        for name, _, value in (line.partition("=") for line in shown.splitlines() if not line.startswith("#"))
        if value
    }
    assert options["toolbarMode"] in {"viewer", "minimal"}
    assert options["gatherUsageStats"] == "false"
