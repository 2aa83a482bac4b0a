"""Indexing on Ray (indexer.ingest.ray_run, `clipsearch index --ray`), on a real local Ray with 2 CPUs:

- the same collection as the single-process run over the same real photos (one of them corrupt): the
  same ids, payloads (uri, fingerprint, size, hashes), failures, and vectors (cosine >= 0.9999);
- resumable like a local run: items missing from the store (a killed run) and new files are embedded,
  the rest stays, vanished files go; a local run afterwards finds everything unchanged;
- the encoder pool: one actor per GPU, otherwise CPU actors leaving a quarter of the CPUs to decoding;
- the command: `clipsearch index --ray ADDRESS` indexes through Ray (the flag reaches it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.clirun import cli_home, run_json
from tests.helpers import make_settings, photo_copies

ray = pytest.importorskip("ray", reason="clipsearch[ray] is not installed")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _collection(settings, name: str) -> dict[str, tuple[dict, np.ndarray]]:
    from indexer.stores import open_store

    store = open_store(settings, name)
    try:
        records = store.retrieve([r.id for r in store.scan()], with_vectors=True)
        return {r.id: (r.payload, np.asarray(r.vectors[store.schema.active])) for r in records}
    finally:
        store.close()


def test_same_collection_as_the_single_process_run(local_ray, tmp_path: Path, imagenet_dir: Path,
                                                   tiny_checkpoint: Path) -> None:
    from indexer.ingest.pipeline import index_sources
    from indexer.ingest.ray_run import index_on_ray

    photos = photo_copies(imagenet_dir, tmp_path / "photos", 24)
    (tmp_path / "photos" / "broken.jpg").write_bytes(photos[0].read_bytes()[:300])
    settings = make_settings(tmp_path / "home", tiny_checkpoint)

    here = index_sources(settings, [tmp_path / "photos"], "local", progress=False)
    on_ray = index_on_ray(settings, [tmp_path / "photos"], "ray", progress=False)

    assert (on_ray.embedded, on_ray.failed, on_ray.unchanged) == (24, 1, 0)
    assert on_ray.failures == here.failures and on_ray.failures[0]["uri"].endswith("broken.jpg")
    local, remote = _collection(settings, "local"), _collection(settings, "ray")
    assert local.keys() == remote.keys() and len(local) == 24
    for id_, (payload, vector) in local.items():
        assert remote[id_][0] == payload  # uri, path, fingerprint, width/height, hashes, photo fields
        other = remote[id_][1]
        cosine = float(vector @ other) / float(np.linalg.norm(vector) * np.linalg.norm(other))
        assert cosine >= 0.9999, (payload["uri"], cosine)


def test_a_killed_run_resumes_with_what_is_missing(local_ray, tmp_path: Path, imagenet_dir: Path,
                                                    tiny_checkpoint: Path) -> None:
    from indexer.ingest.pipeline import index_sources
    from indexer.ingest.ray_run import index_on_ray
    from indexer.stores import open_store

    photos = photo_copies(imagenet_dir, tmp_path / "photos", 20)
    settings = make_settings(tmp_path / "home", tiny_checkpoint)
    first = index_on_ray(settings, [tmp_path / "photos"], progress=False)
    assert (first.embedded, first.unchanged) == (20, 0)

    vanishing = photos[-1]
    store = open_store(settings, settings.collection)  # what a run killed mid-way leaves: 6 items missing
    try:
        lost = sorted(r.id for r in store.scan() if r.payload["uri"] != str(vanishing.resolve()))[:6]
        store.delete(lost)
    finally:
        store.close()
    vanishing.unlink()
    for extra in sorted(imagenet_dir.glob("*.JPEG"))[20:23]:
        shutil.copy2(extra, tmp_path / "photos" / extra.name)

    again = index_on_ray(settings, [tmp_path / "photos"], progress=False)
    assert (again.embedded, again.unchanged, again.removed) == (6 + 3, 20 - 1 - 6, 1)

    local = index_sources(settings, [tmp_path / "photos"], progress=False)  # the same fingerprints
    assert (local.embedded, local.unchanged, local.removed) == (0, 22, 0)


def test_encoder_pool_sizes() -> None:
    from indexer.ingest.ray_run import encoder_pool

    settings = make_settings(Path("/nonexistent"), Path("/nonexistent"), batch_size=0)
    gpus = encoder_pool({"CPU": 64, "GPU": 8}, settings)
    assert (gpus.actors, gpus.gpus, gpus.device, gpus.batch_size) == (8, 1, "cuda", 256)
    small = encoder_pool({"CPU": 2}, settings)
    assert (small.actors, small.cpus, small.device, small.batch_size) == (1, 1, "cpu", 64)
    big = encoder_pool({"CPU": 32}, settings)
    assert (big.actors, big.cpus) == (3, 8)  # 24 CPUs encode, 8 decode


def test_the_index_command_runs_on_ray(tmp_path: Path, imagenet_dir: Path, tiny_checkpoint: Path) -> None:
    photo_copies(imagenet_dir, tmp_path / "photos", 6)
    with cli_home(tmp_path / "home", tiny_checkpoint, BATCH_SIZE="4"):
        # A Ray of its own in the command's process (this test module's Ray lives in the test process).
        report = run_json("index", str(tmp_path / "photos"), "--ray", "local")
        status = run_json("status")
    assert (report["embedded"], report["failed"]) == (6, 0)
    assert status["count"] == 6
