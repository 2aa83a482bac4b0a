"""fp32 indexing on onnxruntime (indexer.models.onnx_images), which long CPU runs use:

- the traced image tower gives torch's embeddings (cosine >= 0.9999) on real photos, at any batch size;
- a query export already under CLIPSEARCH_HOME is used as it is (nothing traced);
- an index run that takes the onnxruntime path stores the same vectors as a torch-only run, and the
  collection stays fp32 (its model's encode_pixels still answers on torch when asked to);
- a tower that disagrees with torch is refused, and the run goes on with torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_settings, photo_copies


def _pixels(model, folder: Path, count: int) -> np.ndarray:
    from indexer.ingest.decode import decode_image

    files = sorted(folder.glob("*.JPEG"))[:count]
    return np.stack([np.asarray(model.pixel_transform(decode_image(f)), dtype=np.uint8) for f in files])


def test_the_traced_tower_gives_torchs_embeddings(tiny_model, imagenet_dir: Path) -> None:
    from indexer.models.onnx_images import onnx_image_encoder

    pixels = _pixels(tiny_model, imagenet_dir, 12)
    encode = onnx_image_encoder(tiny_model, None, pixels[:2])
    assert encode is not None
    expected = tiny_model.encode_pixels(pixels)
    for batch in (pixels[:1], pixels[:5], pixels):
        got = encode(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch), tiny_model.dim)
        assert (got * expected[: len(batch)]).sum(axis=1).min() >= 0.9999


def test_a_query_export_under_home_is_used(tiny_model, imagenet_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.models import onnx_images
    from indexer.models.onnx_export import ensure_export

    assert ensure_export(tiny_model, tmp_path) is not None

    def no_tracing(clip):
        raise AssertionError("traced although an export was there")

    monkeypatch.setattr(onnx_images, "_traced_image_tower", no_tracing)
    pixels = _pixels(tiny_model, imagenet_dir, 4)
    encode = onnx_images.onnx_image_encoder(tiny_model, tmp_path, pixels[:2])
    assert encode is not None
    assert (encode(pixels) * tiny_model.encode_pixels(pixels)).sum(axis=1).min() >= 0.9999


def test_an_index_run_on_onnxruntime_stores_torchs_vectors(tmp_path: Path, imagenet_dir: Path,
                                                           tiny_checkpoint: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.ingest.pipeline import index_sources
    from indexer.models import onnx_images
    from indexer.models.loading import load_model
    from indexer.stores import open_store
    from tests.helpers import TINY_CONFIG

    photo_copies(imagenet_dir, tmp_path / "photos", 20)
    settings = make_settings(tmp_path / "home", tiny_checkpoint)
    vectors = {}
    for name, threshold in (("torch", 10**9), ("onnx", 1)):
        monkeypatch.setattr(onnx_images, "ONNX_MIN_IMAGES", threshold)
        model = load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu")
        index_sources(settings, [tmp_path / "photos"], name, model=model, progress=False)
        assert (model.onnx_images is not None) == (name == "onnx")
        store = open_store(settings, name)
        try:
            assert store.schema.active_vector.precision == "fp32"
            records = store.retrieve([r.id for r in store.scan()], with_vectors=True)
            vectors[name] = {r.id: r.vectors[store.schema.active] for r in records}
        finally:
            store.close()
    assert vectors["torch"].keys() == vectors["onnx"].keys() and len(vectors["onnx"]) == 20
    for id_, vector in vectors["torch"].items():
        assert float(vector @ vectors["onnx"][id_]) >= 0.9999


def test_a_tower_that_disagrees_is_refused(tiny_model, imagenet_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from indexer.models import onnx_images

    monkeypatch.setattr(onnx_images, "ONNX_MIN_COSINE", 1.01)  # no tower can agree that well
    pixels = _pixels(tiny_model, imagenet_dir, 2)
    assert onnx_images.onnx_image_encoder(tiny_model, None, pixels) is None
    assert "indexing with torch's image encoder" in caplog.text and "agree to cosine" in caplog.text
