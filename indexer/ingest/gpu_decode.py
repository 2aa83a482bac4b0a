"""Decoding JPEGs on the GPU for CUDA runs of the indexer (nvJPEG, through torchvision.io.decode_jpeg).

NOT MEASURED: no GPU was available when this was written (docs/benchmarks.md). What runs the same
way on CPU tensors is unit-tested there (tests/test_throughput.py): batching, orientation, the
tensor transform's agreement with the PIL one, and every fallback.

Per batch: threads read the files and parse their headers (PIL, no pixel decoding). RGB or
greyscale JPEGs within the pixel limit are decoded in batched calls on the device, turned upright
(EXIF) and resized/cropped there by the model's own geometric transform (torchvision's Resize and
CenterCrop accept tensors: bicubic, antialiased). Every other file, and any file the device decoder
refuses, takes the CPU path (`decode_item`), so what is indexed and every failure reason match the
CPU pipeline. The device's pixels go to `ClipModel.encode_pixels` without leaving it.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.ingest.batches import Decoded, decode_item
from indexer.ingest.sources import SourceItem
from indexer.models.loading import PixelTransform

log = logging.getLogger(__name__)

DEVICE_DECODE_BATCH = 64  # full-size images decoded at once: bounds device memory for large photos


@dataclass
class JpegProbe:
    data: bytes
    width: int  # upright, as decode_image reports it
    height: int
    orientation: int


def probe_jpeg(path: str, max_pixels: int) -> JpegProbe | None:
    """The file's bytes and header facts when the device decoder can take it, else None (CPU path)."""
    try:
        data = Path(path).read_bytes()
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: our own limit applies
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
                if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                    return None  # CMYK, MPO and friends: the CPU path handles them
                width, height = im.size
                orientation = int(Image.Image.getexif(im).get(0x0112, 1))
    except Exception:  # unreadable, not a JPEG, broken header: the CPU path says why
        return None
    if width * height > max_pixels or orientation not in range(1, 9):
        return None
    if orientation >= 5:
        width, height = height, width
    return JpegProbe(data, width, height, orientation)


def upright(image: Any, orientation: int) -> Any:
    """A (C, H, W) tensor turned the way EXIF `orientation` displays it (as PIL's transposes do)."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip((-2, -1))
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip((-2, -1))
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def decode_jpegs(blobs: Sequence[bytes], device: str) -> list[Any]:
    """(3, H, W) uint8 tensors on `device`, None for each blob the decoder refused."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec on every call
        warnings.simplefilter("ignore")
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except Exception:  # one bad file fails the whole batched call: retry one by one
            decoded: list[Any] = []
            for tensor in tensors:
                try:
                    decoded.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
                except Exception:
                    decoded.append(None)
            return decoded


def tensor_transform_ok(transform: PixelTransform) -> bool:
    """Whether the model's geometric transform takes (3, H, W) uint8 tensors like PIL images."""
    import numpy as np
    import torch

    probe = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    try:
        expected = np.asarray(transform(probe))
        out = transform(torch.from_numpy(np.array(probe)).permute(2, 0, 1))
    except Exception as exc:
        log.info("GPU decoding off: the model's transform does not take tensors (%s)", exc)
        return False
    ok = isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    return ok and tuple(out.permute(1, 2, 0).shape) == expected.shape


def device_decoded_batches(
    items: Sequence[SourceItem],
    transform: PixelTransform,
    max_pixels: int,
    batch_size: int,
    draft_size: int | None,
    device: str,
    threads: int,
) -> Iterator[list[Any]]:
    """Like pipeline.decoded_batches, with JPEGs decoded and resized on `device` (pixels stay there)."""
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="read") as pool:
        pending: deque[tuple[list[SourceItem], list[Future[JpegProbe | None]]]] = deque()
        queued = iter(chunks)

        def read_ahead() -> None:
            chunk = next(queued, None)
            if chunk is not None:
                pending.append((chunk, [pool.submit(probe_jpeg, item.path, max_pixels) for item in chunk]))

        read_ahead()
        read_ahead()
        while pending:
            chunk, futures = pending.popleft()
            read_ahead()  # the next files are read while this batch decodes and encodes
            probes = [future.result() for future in futures]
            yield decode_chunk(chunk, probes, transform, max_pixels, draft_size, device, pool)


def decode_chunk(
    chunk: Sequence[SourceItem],
    probes: Sequence[JpegProbe | None],
    transform: PixelTransform,
    max_pixels: int,
    draft_size: int | None,
    device: str,
    pool: ThreadPoolExecutor,
) -> list[Any]:
    """One batch: device decoding where the probe allowed it, the CPU path for the rest, input order."""
    results: list[Any] = [None] * len(chunk)
    candidates = [i for i, probe in enumerate(probes) if probe is not None]
    for start in range(0, len(candidates), DEVICE_DECODE_BATCH):
        part = candidates[start : start + DEVICE_DECODE_BATCH]
        images = decode_jpegs([probes[i].data for i in part], device)  # type: ignore[union-attr]
        for i, image in zip(part, images, strict=True):
            probe = probes[i]
            if image is None or probe is None:
                continue
            try:
                pixels = transform(upright(image, probe.orientation)).permute(1, 2, 0)
            except Exception:
                continue
            results[i] = Decoded(chunk[i], pixels, None, probe.width, probe.height)
    on_cpu = [i for i, result in enumerate(results) if result is None]
    decoded = pool.map(lambda i: decode_item(chunk[i], transform, max_pixels, draft_size), on_cpu)
    for i, result in zip(on_cpu, decoded, strict=True):
        results[i] = result
    return results
