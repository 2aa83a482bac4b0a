"""Model upgrades without downtime (issue 7, item 3), through the real API server and the real CLI.

Specification:
- a second model (another architecture: 48-d instead of 32-d, other weights) is embedded into a new
  named vector of a served collection through `POST /v1/collections/{c}/vectors`, while the API keeps
  answering searches on the active vector with no error; `GET .../vectors` shows the progress; the
  vector is activated through the API and the running server answers with it at once (no restart);
  queries may still name the old vector; index runs keep every vector up to date;
- `clipsearch reembed` killed mid-way and run again ends with exactly the vectors of an uninterrupted
  run (bit-identical on CPU); `vectors`, `activate`, `drop-vector` do what they say, on the collection
  directly and, while a server holds it, through that server.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import search_api.jobs
from indexer.ingest.pipeline import index_sources
from indexer.ingest.reembed import fill_vector
from indexer.models.loading import ClipModel, load_model
from indexer.search.options import SearchOptions
from indexer.settings import Settings
from indexer.stores import open_store
from search_api import create_app
from tests.clirun import CLI, REPO, cli_home, run, run_json, wait_for
from tests.helpers import copy_photos, make_settings, serve


def stored_vectors(settings: Settings, name: str) -> dict[str, np.ndarray]:
    store = open_store(settings, settings.collection)
    try:
        ids = [record.id for record in store.scan()]
        return {r.id: r.vectors[name] for r in store.retrieve(ids, with_vectors=[name]) if name in r.vectors}
    finally:
        store.close()


def test_reembed_through_the_api_while_serving_then_activate_without_restart(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: ClipModel, wide: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(tmp_path / "home", tiny_checkpoint, batch_size=4)
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 24)
    index_sources(settings, [photos], model=tiny_model, progress=False)
    # The job is held after its first batch until the test has searched: searches answered mid-job,
    # whatever the machine's speed (the job's own code runs; only its progress callback waits).
    mid_job, searched = threading.Event(), threading.Event()

    def held_fill_vector(*args: Any, on_batch: Any = None, **kwargs: Any) -> Any:
        def on_batch_then_hold(report: Any) -> None:
            on_batch(report)
            if not mid_job.is_set():
                mid_job.set()
                searched.wait(120)

        return fill_vector(*args, on_batch=on_batch_then_hold, **kwargs)

    monkeypatch.setattr(search_api.jobs, "fill_vector", held_fill_vector)
    statuses: list[int] = []
    stop = threading.Event()

    with (
        serve(create_app(settings, model=tiny_model)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):

        def search_all_the_time() -> None:
            while not stop.is_set():
                statuses.append(client.post("/v1/search", json={"text": "a bird", "k": 5}).status_code)

        def vectors() -> dict[str, dict]:
            return {v["name"]: v for v in client.get("/v1/collections/default/vectors").json()["vectors"]}

        searcher = threading.Thread(target=search_all_the_time)
        searcher.start()
        try:
            started = client.post(
                "/v1/collections/default/vectors",
                json={"model": wide[0], "pretrained": wide[1], "name": "wide"},
            )
            assert started.status_code == 202, started.text
            assert mid_job.wait(120), "the re-embedding wrote no batch"
            during = client.post("/v1/search", json={"text": "a bird", "k": 5})
            progress = vectors()["wide"]
            searched.set()
            assert during.status_code == 200 and len(during.json()["results"]) == 5, during.text
            assert progress["state"] == "building" and progress["job"]["state"] == "running", progress
            assert 0 < progress["job"]["embedded"] < 24, progress  # searched while the job was part-way
            wait_for(
                lambda: (vectors()["wide"]["job"] or {}).get("state") == "ready", 120, "the re-embedding"
            )
        finally:
            searched.set()
            stop.set()
            searcher.join()
        assert statuses and set(statuses) == {200}, f"searches during the re-embedding: {set(statuses)}"

        found = vectors()
        assert (
            found["wide"]["state"] == "ready" and found["wide"]["count"] == 24 and found["wide"]["dim"] == 48
        )
        assert found["default"]["active"] and not found["wide"]["active"]

        some_id = client.post("/v1/search", json={"text": "a bird", "k": 1}).json()["results"][0]["id"]
        before = client.post("/v1/search", json={"image_id": some_id, "k": 5}).json()["results"]

        activated = client.post("/v1/collections/default/vectors/wide/activate")
        assert activated.status_code == 200, activated.text
        after = client.post("/v1/search", json={"image_id": some_id, "k": 5}).json()["results"]
        named_wide = client.post("/v1/search", json={"image_id": some_id, "k": 5, "vector": "wide"}).json()
        named_old = client.post("/v1/search", json={"image_id": some_id, "k": 5, "vector": "default"}).json()
        assert after == named_wide["results"] and before == named_old["results"]
        assert after[0]["id"] == some_id and after[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert [r["score"] for r in after] != [r["score"] for r in before]  # another model answers now
        text = client.post("/v1/search", json={"text": "a bird", "k": 3})
        assert text.status_code == 200 and len(text.json()["results"]) == 3

        assert client.post("/v1/collections/default/vectors/nosuch/activate").status_code == 404
        dropped = client.delete("/v1/collections/default/vectors/wide")
        assert dropped.status_code == 400 and "active" in dropped.json()["detail"]

    # What the server embedded is what the wide model gives for these files.
    model = load_model(wide[0], wide[1], "cpu")
    vectors_now = stored_vectors(settings, "wide")
    store = open_store(settings, settings.collection)
    try:
        records = {r.id: r.payload["path"] for r in store.scan()}
    finally:
        store.close()
    from indexer.search.engine import SearchEngine

    with SearchEngine(settings, models=None) as engine:
        for item_id in list(records)[:3]:
            expected = model.encode_images([engine.decode(records[item_id], model)])[0]
            np.testing.assert_allclose(vectors_now[item_id], expected, atol=1e-5)


def test_index_runs_keep_every_vector_up_to_date(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: ClipModel, wide: tuple[str, str]
) -> None:
    from indexer.ingest.reembed import reembed

    settings = make_settings(tmp_path / "home", tiny_checkpoint)
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 10)
    index_sources(settings, [photos], model=tiny_model, progress=False)
    report = reembed(settings, None, wide[0], wide[1], "wide", progress=False)
    assert (report.embedded, report.remaining, report.state) == (10, 0, "ready")
    for photo in sorted(imagenet_dir.glob("*.JPEG"))[10:14]:
        shutil.copy2(photo, photos / photo.name)
    (photos / sorted(p.name for p in photos.iterdir())[0]).unlink()
    again = index_sources(settings, [photos], progress=False)  # no model given: the recorded ones
    assert (again.embedded, again.removed) == (4, 1)
    assert len(stored_vectors(settings, "wide")) == len(stored_vectors(settings, "default")) == 13


def test_a_killed_reembed_resumes_to_the_vectors_of_an_uninterrupted_one(
    tmp_path: Path,
    imagenet_dir: Path,
    tiny_checkpoint: Path,
    tiny_model: ClipModel,
    wide: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    total = 120
    photos = copy_photos(imagenet_dir, tmp_path / "photos", total)
    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # every batch shows on the progress bar: the kill comes early
    with cli_home(tmp_path / "home", tiny_checkpoint, BATCH_SIZE="2") as settings:
        index_sources(settings, [photos], model=tiny_model, progress=False)
        shutil.copytree(tmp_path / "home", tmp_path / "home-uninterrupted")
        reembed_args = ["reembed", "--model", wide[0], "--pretrained", wide[1], "--vector", "wide"]
        process = subprocess.Popen(
            [*CLI, *reembed_args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        progress: list[str] = []
        reader = threading.Thread(target=lambda: progress.extend(iter(lambda: process.stderr.read(1), "")))
        reader.start()
        wait_for(
            lambda: (
                re.search(rf"\b([1-9]\d?)/{total}\b", "".join(progress)) is not None
                or process.poll() is not None
            ),
            120,
            "re-embedding progress",
        )
        process.send_signal(signal.SIGKILL)
        process.wait()
        reader.join()
        partial = stored_vectors(settings, "wide")
        assert 0 < len(partial) < total, f"the kill came too late or too early: {len(partial)} embedded"

        resumed = run_json(*reembed_args)
        assert resumed["embedded"] == total - len(partial) and resumed["state"] == "ready"
        after_kill = stored_vectors(settings, "wide")

    with cli_home(tmp_path / "home-uninterrupted", tiny_checkpoint, BATCH_SIZE="2") as other:
        assert run_json(*reembed_args)["embedded"] == total
        uninterrupted = stored_vectors(other, "wide")
    assert after_kill.keys() == uninterrupted.keys() and len(after_kill) == total
    for item_id, vector in uninterrupted.items():
        np.testing.assert_array_equal(after_kill[item_id], vector)


def test_vector_commands_on_the_collection_and_through_a_server(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, tiny_model: ClipModel, wide: tuple[str, str]
) -> None:
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 8)
    with cli_home(tmp_path / "home", tiny_checkpoint) as settings:
        index_sources(settings, [photos], model=tiny_model, progress=False)
        assert (
            run_json("reembed", "--model", wide[0], "--pretrained", wide[1], "--vector", "wide")["state"]
            == "ready"
        )
        listed = {v["name"]: v for v in run_json("vectors")["vectors"]}
        assert listed["default"]["active"] and listed["wide"]["count"] == 8

        refused = run("drop-vector", "default", check=False)
        assert refused.returncode == 3 and refused.stderr.count("\n") == 1 and "active" in refused.stderr
        run("activate", "wide")
        assert {v["name"] for v in run_json("vectors")["vectors"] if v["active"]} == {"wide"}
        first = run_json("search", "a bird", "-k", "3")["results"]
        assert first == run_json("search", "a bird", "-k", "3", "--vector", "wide")["results"]

        # While a server holds the embedded collection, the same commands go through it.
        server = subprocess.Popen(
            [*CLI, "serve", "--port", "0"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            server_file = settings.collection_dir(settings.collection) / "server.json"
            wait_for(server_file.exists, 60, "the server to hold the collection")
            run("activate", "default")
            assert {v["name"] for v in run_json("vectors")["vectors"] if v["active"]} == {"default"}
            run("drop-vector", "wide")
            assert [v["name"] for v in run_json("vectors")["vectors"]] == ["default"]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        assert not server_file.exists()


def _activated_elsewhere(settings: Settings, wide: tuple[str, str]) -> None:
    """A second store object of the collection (as another process would open it) re-embeds into
    "wide" and activates it under the running engine."""
    from indexer.ingest.reembed import activate, reembed

    reembed(settings, None, wide[0], wide[1], "wide", progress=False)
    other = open_store(settings, settings.collection)
    try:
        activate(other, "wide")
    finally:
        other.close()


def test_an_engine_follows_activation_by_another_process_where_the_store_is_shared(
    tmp_path: Path,
    imagenet_dir: Path,
    tiny_checkpoint: Path,
    tiny_model: ClipModel,
    wide: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Qdrant server is shared (Settings.store_shared): `clipsearch activate` from elsewhere changes the
    schema under a running engine, which follows within SCHEMA_REFRESH_S. qdrant-client's local mode
    stands in for the server: its store objects in one process share one client, as processes share a
    server; being a folder, the settings call it embedded, so the stand-in is declared shared here."""
    import indexer.search.engine as engine_module
    from indexer.search.engine import SearchEngine

    monkeypatch.setattr(engine_module, "SCHEMA_REFRESH_S", 0.0)
    monkeypatch.setattr(Settings, "store_shared", property(lambda self: self.store == "qdrant"))
    settings = make_settings(
        tmp_path / "home", tiny_checkpoint, store="qdrant", qdrant={"path": tmp_path / "qdrant"}
    )
    assert settings.store_shared
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    index_sources(settings, [photos], model=tiny_model, progress=False)
    with SearchEngine(settings) as engine:
        assert engine.schema.active == "default"
        _activated_elsewhere(settings, wide)
        some_id = engine.search_text("a bird", 1).results[0].id
        found = engine.search_similar(some_id, 3)
        assert engine.schema.active == "wide"
        assert found.results[0].id == some_id and found.results[0].score == pytest.approx(1.0, abs=1e-4)
        named = engine.search_similar(some_id, 3, SearchOptions(vector="wide")).results
        # (qdrant-client local mode renormalises stored vectors as it searches: last bits of scores move)
        assert [r.id for r in found.results] == [r.id for r in named]
        assert [r.score for r in found.results] == pytest.approx([r.score for r in named], abs=1e-5)


def test_an_engine_on_an_embedded_store_keeps_the_schema_it_opened(
    tmp_path: Path,
    imagenet_dir: Path,
    tiny_checkpoint: Path,
    tiny_model: ClipModel,
    wide: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An embedded store (local mode, as the settings call it) is changed through the process that holds
    it only: its engine never re-reads the schema, whatever another store object writes meanwhile."""
    import indexer.search.engine as engine_module
    from indexer.search.engine import SearchEngine

    monkeypatch.setattr(engine_module, "SCHEMA_REFRESH_S", 0.0)
    settings = make_settings(
        tmp_path / "home", tiny_checkpoint, store="qdrant", qdrant={"path": tmp_path / "qdrant"}
    )
    assert not settings.store_shared
    photos = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    index_sources(settings, [photos], model=tiny_model, progress=False)
    with SearchEngine(settings) as engine:
        _activated_elsewhere(settings, wide)
        assert engine.search_text("a bird", 1).results
        assert engine.schema.active == "default"
