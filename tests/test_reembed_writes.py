"""A vector being re-embedded receives every write that lands meanwhile (issue 18, point 2).

Specification:
- with `clipsearch serve --watch` running, a re-embedding started through the API while files are
  added and changed, and items are written through the write API, ends `ready` with no item lacking
  the new vector: a search on it with a large k finds every item, never a 409;
- a sync whose models were read before a vector was added (the watcher's, mid-sync) still writes that
  vector: it is embedded from the batch's pixels;
- items written without the vector while the job runs (a writer that read the schema before the vector
  was added) are found by the job's next scan: it ends ready only when none lacks it;
- an item whose file cannot be read leaves the job `incomplete`, saying why, with the vector building;
- a vector left building (a stopped or killed server, a killed `clipsearch reembed`) is resumed by the
  next server at its start, and its job says so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from indexer.ingest.decode import decode_image
from indexer.ingest.pipeline import index_sources, sync_paths
from indexer.ingest.reembed import add_vector, fill_vector, missing
from indexer.ingest.sources import item_id
from indexer.models.loading import ClipModel, load_model
from indexer.settings import Settings
from indexer.stores import Record, open_store
from search_api import create_app
from tests.clirun import CLI, REPO, cli_home, served_url, wait_for
from tests.helpers import TINY_CONFIG, copy_photos, serve

JOB_S = 300  # the longest a re-embedding of these few photos may take on a loaded machine


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny architecture with other random weights: another model, for the new vector."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("other") / "tiny-other.pt"
    torch.save(open_clip.create_model(TINY_CONFIG.stem).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def other_model(other_checkpoint: Path) -> ClipModel:
    return load_model(str(TINY_CONFIG), str(other_checkpoint), "cpu")


def job_of(client: httpx.Client, vector: str) -> dict:
    found = {v["name"]: v for v in client.get("/v1/collections/default/vectors").json()["vectors"]}
    return found[vector].get("job") or {}


def test_a_reembedding_while_serve_watch_adds_and_changes_files_ends_ready_with_every_item(
    tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path, other_checkpoint: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 40)
    spare = sorted(imagenet_dir.glob("*.JPEG"))[200:230]
    # Small batches: a long job.
    with cli_home(tmp_path / "home", tiny_checkpoint, BATCH_SIZE="2") as settings:
        server = subprocess.Popen(
            [*CLI, "serve", "--port", "0", "--watch", str(folder), "--interval", "600"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
        )
    try:
        with httpx.Client(base_url=served_url(server, settings), timeout=120) as client:

            def count() -> int:
                try:
                    answer = client.get("/v1/collections/default/status")
                except httpx.TransportError:
                    return -1
                return answer.json()["count"] if answer.status_code == 200 else -1

            wait_for(lambda: count() == 40, 120, "the start sync", every=0.2)
            started = client.post("/v1/collections/default/vectors", json={
                "model": str(TINY_CONFIG), "pretrained": str(other_checkpoint), "name": "v2"})
            assert started.status_code == 202, started.text

            # While it runs: new files, changed files (another photo under the same name), and items
            # written through the API.
            for photo in spare[:20]:
                shutil.copy2(photo, folder / photo.name)
            for target, photo in zip(sorted(folder.glob("*.JPEG"))[:5], spare[20:25], strict=True):
                shutil.copyfile(photo, target)
            for n, photo in enumerate(spare[25:30]):
                with photo.open("rb") as image:
                    put = client.put(f"/v1/collections/default/items/sku-{n}",
                                     files={"file": (photo.name, image, "image/jpeg")})
                assert put.status_code == 200, put.text
            expected = len(list(folder.glob("*.JPEG"))) + 5
            wait_for(lambda: count() == expected, 120, "the watcher to sync the new files", every=0.2)
            wait_for(lambda: job_of(client, "v2").get("state") not in (None, "starting", "running"), JOB_S,
                     "the re-embedding to end", every=0.5)
            job = job_of(client, "v2")
            assert job["state"] == "ready" and job["remaining"] == 0, job

            # Files changed after the job ended are embedded into both vectors by the watcher.
            for photo in sorted(imagenet_dir.glob("*.JPEG"))[300:303]:
                shutil.copy2(photo, folder / photo.name)
            expected += 3
            wait_for(lambda: count() == expected, 120, "the watcher to sync the last files", every=0.2)

            vectors = {v["name"]: v for v in client.get("/v1/collections/default/vectors").json()["vectors"]}
            assert vectors["v2"]["state"] == "ready" and vectors["v2"]["count"] == expected
            found = client.post("/v1/search", json={"text": "a photo", "k": 1000, "vector": "v2"})
            assert found.status_code == 200, found.text
            uris = {hit["uri"] for hit in found.json()["results"]}
            assert {str(p) for p in folder.glob("*.JPEG")} <= uris and len(uris) == expected
            # Each item finds itself on the new vector: its v2 vector is its own image's.
            for hit in found.json()["results"][:10]:
                self_search = client.post("/v1/search", json={"image_id": hit["id"], "k": 1, "vector": "v2"})
                assert self_search.json()["results"][0]["id"] == hit["id"]
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_a_sync_embeds_a_vector_added_after_it_read_its_models(
    settings: Settings, tmp_path: Path, imagenet_dir: Path, tiny_model: ClipModel, other_model: ClipModel
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    index_sources(settings, [folder], model=tiny_model, progress=False)
    store = open_store(settings, settings.collection)
    try:
        models = {"default": tiny_model}  # what a sync read before the vector was added
        add_vector(store, other_model, "v2")
        for photo in sorted(imagenet_dir.glob("*.JPEG"))[100:104]:
            shutil.copy2(photo, folder / photo.name)
        report = sync_paths(settings, store, models, sorted(folder.glob("*.JPEG")),
                            model_of=lambda spec: other_model)
        assert report.embedded == 4
        new_paths = [folder / photo.name for photo in sorted(imagenet_dir.glob("*.JPEG"))[100:104]]
        written = store.retrieve([item_id(str(path)) for path in new_paths], with_vectors=True)
        assert len(written) == 4 and all(set(r.vectors) == {"default", "v2"} for r in written)
        for record in written:  # the other model's embedding of the file, as the job would write it
            expected = encode(settings, other_model, record.payload["path"])
            np.testing.assert_allclose(record.vectors["v2"], expected, atol=1e-5)
        assert store.count(missing("v2")) == 6
    finally:
        store.close()


def test_items_written_without_the_vector_during_the_job_are_embedded_before_it_is_ready(
    settings: Settings, tmp_path: Path, imagenet_dir: Path, tiny_model: ClipModel, other_model: ClipModel
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 8)
    index_sources(settings, [folder], model=tiny_model, progress=False)
    late = sorted(imagenet_dir.glob("*.JPEG"))[100:103]
    store = open_store(settings, settings.collection)
    written: list[str] = []
    try:
        add_vector(store, other_model, "v2")

        def stale_writer(report: object) -> None:
            """After the job's first batch: a writer that read the schema before v2 existed."""
            if written:
                return
            for photo in late:
                copy = folder / photo.name
                shutil.copy2(photo, copy)
                vector = encode(settings, tiny_model, str(copy))
                record_id = f"00000000-0000-4000-8000-00000000000{len(written)}"
                payload = {"uri": str(copy), "path": str(copy), "fingerprint": "x", "metadata": {}}
                store.upsert([Record(record_id, {"default": vector}, payload)])
                written.append(record_id)

        report = fill_vector(settings, store, other_model, "v2", progress=False, on_batch=stale_writer)
        assert len(written) == 3
        assert (report.state, report.remaining, report.embedded) == ("ready", 0, 11)
        assert store.schema.vector("v2").state == "ready" and store.count(missing("v2")) == 0
        assert all("v2" in r.vectors for r in store.retrieve(written, with_vectors=True))
    finally:
        store.close()


def test_an_unreadable_item_leaves_the_job_incomplete_saying_why(
    settings: Settings, tmp_path: Path, imagenet_dir: Path, tiny_model: ClipModel, other_checkpoint: Path
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    index_sources(settings, [folder], model=tiny_model, progress=False)
    sorted(folder.glob("*.JPEG"))[0].unlink()  # gone since indexing: the job cannot read it
    app = create_app(settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        started = client.post("/v1/collections/default/vectors", json={
            "model": str(TINY_CONFIG), "pretrained": str(other_checkpoint), "name": "v2"})
        assert started.status_code == 202, started.text
        wait_for(lambda: job_of(client, "v2").get("state") not in ("starting", "running"), JOB_S, "the job")
        job = job_of(client, "v2")
        assert (job["state"], job["remaining"], job["failed"]) == ("incomplete", 1, 1), job
        assert "could not be read" in job["error"]
        vectors = {v["name"]: v for v in client.get("/v1/collections/default/vectors").json()["vectors"]}
        assert vectors["v2"]["state"] == "building" and vectors["v2"]["count"] == 5


def test_a_vector_left_building_is_resumed_by_the_next_server(
    settings: Settings, tmp_path: Path, imagenet_dir: Path, tiny_model: ClipModel, other_model: ClipModel
) -> None:
    folder = copy_photos(imagenet_dir, tmp_path / "photos", 6)
    index_sources(settings, [folder], model=tiny_model, progress=False)
    store = open_store(settings, settings.collection)
    try:
        add_vector(store, other_model, "v2")  # as a server stopped (or a reembed killed) right after
    finally:
        store.close()
    app = create_app(settings, model=tiny_model)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert job_of(client, "v2").get("resumed") is True
        wait_for(lambda: job_of(client, "v2").get("state") not in ("starting", "running"), JOB_S, "the job")
        assert job_of(client, "v2")["state"] == "ready"
        vectors = {v["name"]: v for v in client.get("/v1/collections/default/vectors").json()["vectors"]}
        assert vectors["v2"]["state"] == "ready" and vectors["v2"]["count"] == 6


def encode(settings: Settings, model: ClipModel, path: str) -> np.ndarray:
    """A file's embedding by `model`, decoded as the index decodes files."""
    picture = decode_image(path, max_pixels=settings.max_image_pixels, draft_size=model.draft_size)
    return model.encode_images([picture])[0]
