"""Specification of the ingest speed-ups: what each one may change in the embeddings, and what it must not.

- JPEG draft (DCT-scaled) decoding at 2x the model's input side agrees with a full decode;
- the int8 fast path (`--precision int8`) stays within cosine 0.99 of fp32 and is never mixed
  with fp32 vectors in one collection;
- the GPU JPEG path (indexer.ingest.gpu_decode) runs its logic here on CPU tensors: orientation, the
  tensor transform, batching with per-file fallback to the CPU path, identical failure reasons.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.ingest.batches import decode_item, decoded_batches
from indexer.ingest.decode import decode_image
from indexer.ingest.pipeline import index_sources
from indexer.ingest.sources import SourceItem
from indexer.models.loading import ModelIdentity, ModelMismatchError, load_model


def largest_photos(folder: Path, count: int) -> list[Path]:
    return sorted(folder.glob("*.JPEG"), key=lambda p: -min(Image.open(p).size))[:count]


def drafted(photos: list[Path], draft_size: int) -> list[Path]:
    """The photos a draft decode actually shrinks."""
    return [p for p in photos if decode_image(p, draft_size=draft_size).size != Image.open(p).size]


def item(path: Path) -> SourceItem:
    return SourceItem(uri=str(path), path=str(path), fingerprint="x")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth, photo-like test image (noise would make every resampling difference look large)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **params)
    return buffer.getvalue()


# --- JPEG draft decoding -----------------------------------------------------------------------


def test_draft_decodes_large_jpegs_smaller_and_keeps_the_original_size(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: the upright size swaps the sides
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg(photo((1600, 1200)), exif=exif))

    full, drafted = decode_image(path), decode_image(path, draft_size=448)
    assert full.size == (1200, 1600)
    assert drafted.size == (600, 800)  # 1/2 scale: both sides stay >= 448
    assert drafted.info["original_size"] == full.info["original_size"] == (1200, 1600)
    assert decode_image(path, draft_size=100).size == (150, 200)  # 1/8, the largest DCT scale
    odd = tmp_path / "odd.jpg"
    odd.write_bytes(jpeg(photo((1601, 1200))))
    assert decode_image(odd, draft_size=100).size == (1601, 1200)  # no scale divides 1601: a full decode
    png = tmp_path / "big.png"
    photo((1600, 1200)).save(png)
    assert decode_image(png, draft_size=448).size == (1600, 1200)  # only JPEGs have a draft mode

    decoded = decode_item(item(path), lambda im: im.resize((32, 32)), 10**9, draft_size=448)
    assert (decoded.width, decoded.height) == (1200, 1600)  # metadata records the file's size


def test_draft_at_twice_the_model_side_agrees_with_full_decode(imagenet_dir: Path, tiny_model) -> None:
    """Embeddings: the tiny model (64 px input, so the draft shrinks most large photos, by 2x to 8x)."""
    draft = tiny_model.draft_size
    photos = drafted(largest_photos(imagenet_dir, 24), draft)
    assert len(photos) >= 8
    full = tiny_model.encode_images([decode_image(p) for p in photos])
    fast = tiny_model.encode_images([decode_image(p, draft_size=draft) for p in photos])
    assert cosines(full, fast).min() >= 0.999


def test_draft_keeps_vit_b_32_inputs_close_to_full_decode(imagenet_dir: Path) -> None:
    """Pixels, independent of weights: ViT-B-32's own resize and crop (224 px) after a 448 px draft."""
    import open_clip

    from indexer.models.loading import _split_preprocess

    geometric, _, _ = _split_preprocess(open_clip.image_transform(224, is_train=False))
    photos = drafted(largest_photos(imagenet_dir, 24), 448)
    assert photos, "the sample set has photos large enough for a 448 px draft"
    for p in photos:
        full = np.asarray(geometric(decode_image(p)), dtype=np.float64)
        fast = np.asarray(geometric(decode_image(p, draft_size=2 * 224)), dtype=np.float64)
        psnr = 10 * np.log10(255.0**2 / ((full - fast) ** 2).mean())
        assert psnr >= 40, p.name


# --- the int8 fast path ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit_b_32_pair():
    """ViT-B-32 with the same random weights, fp32 and int8 (the architecture the path is for)."""
    import torch

    torch.manual_seed(0)
    fp32 = load_model("ViT-B-32", "none", "cpu")
    torch.manual_seed(0)
    int8 = load_model("ViT-B-32", "none", "cpu", precision="int8")
    return fp32, int8


@pytest.mark.slow  # a full-size ViT-B-32: about a minute on 2 cores; the tiny model's twin stays fast
def test_int8_fast_path_agrees_with_fp32_on_vit_b_32(vit_b_32_pair, imagenet_dir: Path) -> None:
    fp32, int8 = vit_b_32_pair
    assert (fp32.identity.precision, int8.identity.precision) == ("fp32", "int8")
    assert fp32.identity.same_model(int8.identity)  # same weights: queries load either
    photos = sorted(imagenet_dir.glob("*.JPEG"))[:16]
    pixels = np.stack([np.asarray(fp32.pixel_transform(decode_image(p))) for p in photos])
    exact, fast = fp32.encode_pixels(pixels), int8.encode_pixels(pixels)
    assert cosines(exact, fast).min() >= 0.99
    texts = ["a photo of a dog", "a red car"]
    np.testing.assert_allclose(fp32.encode_texts(texts), int8.encode_texts(texts), atol=1e-6)


def test_int8_fast_path_agrees_with_fp32_on_the_tiny_model(tiny_checkpoint: Path, tiny_model) -> None:
    from tests.helpers import TINY_CONFIG

    int8 = load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu", precision="int8")
    images = [photo((320, 240), seed) for seed in range(8)]
    assert cosines(tiny_model.encode_images(images), int8.encode_images(images)).min() >= 0.99


def test_unknown_precisions_are_refused(tiny_checkpoint: Path) -> None:
    from indexer.models.loading import ModelLoadError
    from tests.helpers import TINY_CONFIG

    with pytest.raises(ModelLoadError, match="precision"):
        load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu", precision="fp8")


def test_a_collection_never_mixes_fp32_and_int8(settings, tmp_path: Path, tiny_checkpoint: Path) -> None:
    from tests.helpers import TINY_CONFIG

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        (folder / f"{seed}.jpg").write_bytes(jpeg(photo((200, 150), seed)))
    int8 = load_model(str(TINY_CONFIG), str(tiny_checkpoint), "cpu", precision="int8")

    assert index_sources(settings, [folder], "exact", progress=False).embedded == 3
    with pytest.raises(ModelMismatchError, match="fp32 image embeddings"):
        index_sources(settings, [folder], "exact", model=int8, progress=False)

    assert index_sources(settings, [folder], "fast", model=int8, progress=False).embedded == 3
    with pytest.raises(ModelMismatchError, match="int8 image embeddings"):
        index_sources(settings, [folder], "fast", progress=False)
    assert index_sources(settings, [folder], "fast", model=int8, progress=False).unchanged == 3


def test_collections_recorded_before_precision_existed_read_as_fp32() -> None:
    old = {"model": "ViT-B-32", "pretrained": "x", "architecture": "ViT-B-32", "weights": "x", "dim": 512}
    assert ModelIdentity.from_dict(old).precision == "fp32"
    assert ModelIdentity.from_dict({**old, "precision": "int8"}).to_dict()["precision"] == "int8"


# --- in-process decoding ahead of the encoder ----------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 5, 16])
def test_decode_thread_yields_every_batch_in_order(tmp_path: Path, count: int) -> None:
    paths = []
    for i in range(count):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(jpeg(photo((40 + i, 30), i)))
    batches = list(decoded_batches([item(p) for p in paths], lambda im: im.resize((8, 8)), 10**9, 4, 1, 64))
    assert [len(b) for b in batches] == [min(4, count - i) for i in range(0, count, 4)]
    assert [d.item.path for b in batches for d in b] == [str(p) for p in paths]
    assert [d.width for b in batches for d in b] == [40 + i for i in range(count)]


# --- the GPU JPEG path, run on CPU tensors -------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_matches_pil_for_every_exif_orientation(orientation: int) -> None:
    import torch

    from indexer.ingest.decode import _UPRIGHT
    from indexer.ingest.gpu_decode import upright

    array = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    method = _UPRIGHT.get(orientation)
    expected = np.asarray(image.transpose(method) if method is not None else image)
    turned = upright(torch.from_numpy(array).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(turned, expected)


def test_tensor_transform_is_detected(tiny_model) -> None:
    from indexer.ingest.gpu_decode import tensor_transform_ok

    assert tensor_transform_ok(tiny_model.pixel_transform)
    assert not tensor_transform_ok(lambda image: image.convert("L"))  # PIL-only


def test_device_decoder_retries_one_by_one_and_marks_refusals(tmp_path: Path) -> None:
    from indexer.ingest.gpu_decode import decode_jpegs

    good = jpeg(photo((64, 48)))
    decoded = decode_jpegs([good, b"\xff\xd8\xff\xe0 not a jpeg", good], "cpu")
    assert decoded[1] is None
    assert [tuple(t.shape) for t in (decoded[0], decoded[2])] == [(3, 48, 64), (3, 48, 64)]


def test_device_batches_match_the_cpu_path_and_fall_back_per_file(tmp_path: Path, tiny_model) -> None:
    """device="cpu" runs every line of the GPU path; only nvJPEG itself is left untested."""
    from indexer.ingest.gpu_decode import device_decoded_batches

    exif = Image.Exif()
    exif[0x0112] = 8
    files = {
        "plain.jpg": jpeg(photo((320, 240), 1)),
        "rotated.jpg": jpeg(photo((320, 240), 2), exif=exif),
        "grey.jpg": jpeg(photo((200, 300), 3).convert("L")),
        "progressive.jpg": jpeg(photo((300, 200), 4), progressive=True),
        "cmyk.jpg": jpeg(photo((120, 90), 5).convert("CMYK")),
        "broken.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
        "truncated.jpg": jpeg(photo((320, 240), 6))[:300],
        "huge.jpg": jpeg(photo((1000, 1000), 7)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    png = tmp_path / "picture.png"
    photo((240, 320), 8).save(png)
    items = [item(tmp_path / name) for name in files] + [item(png)]
    transform, limit = tiny_model.pixel_transform, 500_000  # huge.jpg is over the limit

    batches = list(device_decoded_batches(items, transform, limit, 4, 128, "cpu", threads=2))
    assert [len(b) for b in batches] == [4, 4, 1]
    on_device = [d for b in batches for d in b]
    on_cpu = [decode_item(i, transform, limit, 128) for i in items]
    assert [d.item.path for d in on_device] == [i.path for i in items]
    decoded_by = {Path(d.item.path).name: type(d.pixels).__name__ for d in on_device if d.pixels is not None}
    assert decoded_by == {
        **dict.fromkeys(["plain.jpg", "rotated.jpg", "grey.jpg", "progressive.jpg"], "Tensor"),
        **dict.fromkeys(["cmyk.jpg", "picture.png"], "ndarray"),  # the CPU path
    }
    for gpu, cpu in zip(on_device, on_cpu, strict=True):
        assert (gpu.reason, gpu.width, gpu.height) == (cpu.reason, cpu.width, cpu.height), gpu.item.path
        assert (gpu.pixels is None) == (cpu.pixels is None)
    pairs = zip(on_device, on_cpu, strict=True)
    good = [(np.asarray(g.pixels), c.pixels) for g, c in pairs if c.pixels is not None]
    assert len(good) == 6
    assert all(g.shape == c.shape for g, c in good)
    device_vectors = tiny_model.encode_pixels(np.stack([g for g, _ in good]))
    cpu_vectors = tiny_model.encode_pixels(np.stack([c for _, c in good]))
    assert cosines(device_vectors, cpu_vectors).min() >= 0.999  # tensor bicubic vs PIL bicubic


# --- sizing to the device ------------------------------------------------------------------------


def test_batches_and_workers_are_sized_to_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from indexer.ingest import pipeline
    from indexer.settings import Settings

    monkeypatch.setattr(pipeline, "usable_cpus", lambda: 16)
    auto = Settings(batch_size=0, workers=0)
    assert (pipeline.batch_size_for(auto, "cpu"), pipeline.batch_size_for(auto, "cuda:0")) == (64, 256)
    assert (pipeline.workers_for(auto, "cpu"), pipeline.workers_for(auto, "cuda")) == (4, 16)
    monkeypatch.setattr(pipeline, "usable_cpus", lambda: 2)
    assert pipeline.workers_for(auto, "cpu") == 1  # a decode thread beside the encoder
    explicit = Settings(batch_size=8, workers=3)
    assert (pipeline.batch_size_for(explicit, "cuda"), pipeline.workers_for(explicit, "cuda")) == (8, 3)


def test_mixed_batches_stack_onto_the_tensors_device() -> None:
    import torch

    from indexer.ingest.pipeline import _stack

    arrays = [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(3)]
    assert isinstance(_stack(arrays), np.ndarray)
    mixed = _stack([arrays[0], torch.from_numpy(arrays[1]), arrays[2]])
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (3, 4, 4, 3)
    assert mixed[:, 0, 0, 0].tolist() == [0, 1, 2]
