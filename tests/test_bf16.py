"""The bf16 image encoder (`--precision bf16`) and the quicker model load behind `clipsearch index`:

- bf16 image embeddings within cosine 0.999 of fp32 on real photos; text embeddings stay exact;
- a bf16 collection records its precision and refuses fp32 vectors (and the reverse), like int8;
- a model loaded from a checkpoint file without drawing random initial weights is open_clip's own
  model: every parameter and buffer equal, the same embeddings;
- an unknown precision is a clear error naming the flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import TINY_CONFIG, make_settings, photo_copies


@pytest.fixture(scope="module")
def bf16_model(tiny_checkpoint: Path):
    from indexer.models.loading import load_model

    return load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu", precision="bf16")


def _images(folder: Path, count: int) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*.JPEG"))[:count]]


def test_bf16_images_agree_with_fp32_and_text_stays_exact(bf16_model, tiny_model, imagenet_dir: Path) -> None:
    images = _images(imagenet_dir, 16)
    fp32, bf16 = tiny_model.encode_images(images), bf16_model.encode_images(images)
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-5)
    cosines = (fp32 * bf16).sum(axis=1)
    assert cosines.min() >= 0.999, cosines.min()
    assert not np.array_equal(fp32, bf16)  # it did run in bf16
    texts = ["a photo of a dog", "a red car at night"]
    assert np.array_equal(bf16_model.encode_texts(texts), tiny_model.encode_texts(texts))
    assert bf16_model.identity.precision == "bf16" and bf16_model.identity.same_model(tiny_model.identity)


def test_a_bf16_collection_never_takes_fp32_vectors(tmp_path: Path, imagenet_dir: Path,
                                                     tiny_checkpoint: Path) -> None:
    from indexer.errors import ModelMismatchError
    from indexer.ingest.pipeline import index_sources
    from indexer.stores import open_store

    photo_copies(imagenet_dir, tmp_path / "photos", 6)
    bf16 = make_settings(tmp_path / "home", tiny_checkpoint, precision="bf16")
    assert index_sources(bf16, [tmp_path / "photos"], progress=False).embedded == 6
    store = open_store(bf16, bf16.collection)
    try:
        assert store.schema.active_vector.precision == "bf16"
    finally:
        store.close()
    fp32 = make_settings(tmp_path / "home", tiny_checkpoint, precision="fp32")
    with pytest.raises(ModelMismatchError, match="bf16 image embeddings.*--precision bf16"):
        index_sources(fp32, [tmp_path / "photos"], progress=False)

    other = make_settings(tmp_path / "home", tiny_checkpoint, collection="exact")
    index_sources(other, [tmp_path / "photos"], progress=False)
    with pytest.raises(ModelMismatchError, match="fp32 image embeddings.*--precision fp32"):
        index_sources(make_settings(tmp_path / "home", tiny_checkpoint, collection="exact", precision="bf16"),
                      [tmp_path / "photos"], progress=False)


def test_the_quick_load_is_open_clips_model(tiny_checkpoint: Path, imagenet_dir: Path) -> None:
    import open_clip
    import torch

    from indexer.models.loading import load_model

    ours = load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu")
    theirs, _, preprocess = open_clip.create_model_and_transforms(
        ours.identity.architecture, pretrained=str(tiny_checkpoint)
    )
    mine, reference = ours._model.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(mine[key], value), key
    buffers = dict(theirs.named_buffers())  # non-persistent ones too (the causal mask)
    assert dict(ours._model.named_buffers()).keys() == buffers.keys()
    for name, buffer in ours._model.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    images = _images(imagenet_dir, 4)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(theirs.eval().encode_image(torch.stack(
            [preprocess(image) for image in images])), dim=-1).numpy()
    assert np.allclose(ours.encode_images(images), expected, atol=1e-5)


def test_an_unknown_precision_names_the_flag(tiny_checkpoint: Path) -> None:
    from indexer.errors import ModelLoadError
    from indexer.models.loading import load_model

    with pytest.raises(ModelLoadError, match=r"precision .fp8.: use fp32, int8, bf16 \(--precision\)"):
        load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu", precision="fp8")
