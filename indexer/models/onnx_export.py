"""Exporting a model's text and image towers to ONNX, so that queries run without torch.

`ensure_export(clip, home)` writes `<home>/models/<key>/` (indexer.models.encoders.export_dir) once per model
identity: at the end of an index run, or on first use by a query process that has no export yet. The
export is checked before it is kept: the ported tokenizer and image geometry must give exactly
open_clip's tokens and pixels, and the ONNX embeddings must agree with the torch model's to cosine
0.9999 at several batch sizes and text lengths. A model that cannot be exported (an unusual tokenizer
or preprocessing, a tower the tracer cannot follow) keeps answering queries on torch; the reason is
logged once and kept beside the exports, and not retried until torch or open_clip change.

The towers are traced with the legacy exporter (opset 17). nn.MultiheadAttention fixes the batch and
sequence sizes it was traced with into its reshapes, so copies of the towers are traced with it
rebuilt as the int8 fast path's LinearSelfAttention (same arithmetic, shapes taken from its input).
The text tower takes a dynamic sequence axis and is run over the tokens up to the end token only,
exactly like the torch path (indexer.models.loading.causal_text_pool).
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch  # this module is imported only to export, which needs torch and open_clip

from indexer.errors import ModelLoadError
from indexer.models.encoders import (
    FORMAT,
    META,
    VOCAB,
    OnnxEncoder,
    ResizeCrop,
    export_dir,
    exportable,
    read_meta,
)

log = logging.getLogger(__name__)

OPSET = 17
MIN_COSINE = 0.9999
_CLEAN_NAMES = {
    "_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"
}
# Texts the self-check tokenizes and embeds: short and long, punctuation, entities, non-ASCII, over-long.
CHECK_TEXTS = [
    "a photo of a dog",
    "A red car parked on the street at night, next to a WOODEN bench!",
    "café crème &amp; croissants — “Paris” 2024",
    "l'été à la plage, 海边的日落, собака",
    "tabs\tand\nnew lines   and  spaces",
    " ".join(["a very long caption that goes on"] * 20),
]


def versions() -> dict[str, str]:
    found = {}
    for package in ("torch", "open_clip_torch", "onnx", "onnxruntime"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = ""
    return found


def failure_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".failed.json")


def ensure_export(clip: Any, home: Path) -> Path | None:
    """The directory of `clip`'s export under `home`, made now if missing; None, with one warning,
    when it cannot be made (queries then stay on torch)."""
    identity = clip.identity
    if not exportable(identity):
        return None
    directory = export_dir(home, identity)
    if read_meta(directory) is not None:
        return directory
    failed = failure_path(directory)
    try:
        earlier = json.loads(failed.read_text())
    except (OSError, ValueError):
        earlier = None
    if earlier is not None and earlier.get("versions") == versions():
        log.warning("queries on %s run on torch: its ONNX export failed earlier (%s); delete %s to retry",
                    identity.describe(), earlier.get("reason"), failed)
        return None
    try:
        started = time.perf_counter()
        export(clip, directory)
        log.info("exported %s to ONNX in %.1f s: %s", identity.describe(), time.perf_counter() - started,
                 directory)
        failed.unlink(missing_ok=True)
        return directory
    except Exception as exc:  # any failure leaves the torch path serving; say why once
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        log.warning("queries on %s run on torch: the ONNX export failed: %s", identity.describe(), reason)
        try:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(json.dumps({"reason": reason, "versions": versions()}))
        except OSError:
            pass
        return None


def export_for_queries(home: Path, models: Iterable[Any]) -> None:
    """At the end of an index run: export each distinct model of the collection (`ensure_export`), so
    that the queries that follow never need torch. Best effort: a failure is logged, never raised."""
    seen: set[tuple[str, str, str]] = set()
    for clip in models:
        key = (clip.identity.architecture, clip.identity.weights, clip.identity.precision)
        if key not in seen:
            seen.add(key)
            ensure_export(clip, home)


def export(clip: Any, directory: Path) -> None:
    """Export `clip` (an indexer.models.loading.ClipModel) into `directory`, checked; see the module doc."""
    text_meta = _text_meta(clip)
    preprocess = _preprocess_spec(clip)
    with_image = clip.identity.precision == "fp32"  # int8: image queries stay on torch's int8 encoder
    directory.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    work.chmod(0o755)  # mkdtemp makes it private; a server running as another user reads it too
    try:
        from open_clip.tokenizer import default_bpe

        shutil.copyfile(default_bpe(), work / VOCAB)
        tokens = np.asarray(clip._tokenizer(CHECK_TEXTS[:2]))
        length = int(tokens.argmax(axis=-1).max()) + 1
        towers: dict[str, torch.nn.Module] = {"text": _TextTower(clip)}
        with torch.no_grad():
            _export(towers["text"], torch.from_numpy(tokens[:, :length]), work / "text.onnx", "tokens",
                    {0: "batch", 1: "length"})
            if with_image:
                towers["image"] = _ImageTower(clip)
                size = clip.input_size
                pixels = torch.zeros((2, size, size, 3), dtype=torch.uint8)
                _export(towers["image"], pixels, work / "image.onnx", "pixels", {0: "batch"})
        meta = {
            "format": FORMAT,
            "identity": clip.identity.to_dict(),
            "text": text_meta,
            "image": with_image,
            "preprocess": preprocess.to_spec(),
            "input_size": clip.input_size,
            "draft_size": clip.draft_size,
            "logit_scale": clip.logit_scale,
            "opset": OPSET,
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / META).write_text(json.dumps(meta, indent=2))
        meta["check"] = check_export(clip, work, towers)
        (work / META).write_text(json.dumps(meta, indent=2))
        try:
            os.rename(work, directory)
        except OSError:
            if read_meta(directory) is None:  # not another process's complete export: a real failure
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_export(clip: Any, directory: Path, towers: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Compare the export in `directory` with `clip`: the same tokens and pixels exactly, embeddings to
    MIN_COSINE, at batch sizes 1 and more (and text lengths short and full). Returns the lowest cosines;
    raises ModelLoadError when anything disagrees. `towers`: the modules exported, the reference on a
    device other than the CPU (whose torch path runs in fp16)."""
    encoder = OnnxEncoder(directory, clip.identity, threads=1)
    theirs = np.asarray(clip._tokenizer(CHECK_TEXTS))
    if not np.array_equal(encoder.tokenizer(CHECK_TEXTS), theirs):
        raise ModelLoadError("the ported tokenizer disagrees with open_clip's")
    got = np.concatenate([encoder.encode_texts(CHECK_TEXTS[:1]), encoder.encode_texts(CHECK_TEXTS[1:])])
    if clip.device == "cpu":
        expected = clip.encode_texts(CHECK_TEXTS)
    else:
        with torch.no_grad():
            length = int(theirs.argmax(axis=-1).max()) + 1
            expected = _unit(towers["text"](torch.from_numpy(theirs[:, :length])))
    found = {"text_cosine_min": float((got * expected).sum(axis=1).min())}
    if "image" in towers:
        pictures = check_images(clip.input_size)
        pixels = []
        for picture in pictures:
            ours = np.asarray(encoder.pixel_transform(picture))
            if not np.array_equal(ours, np.asarray(clip.pixel_transform(picture))):  # shapes too
                raise ModelLoadError(f"the ported preprocessing disagrees with open_clip's at {picture.size}")
            pixels.append(ours)
        batch = np.stack(pixels)
        got = np.concatenate([encoder.encode_pixels(batch[:1]), encoder.encode_pixels(batch[1:])])
        if clip.device == "cpu" and clip.identity.precision == "fp32":
            expected = clip.encode_pixels(batch)
        else:
            with torch.no_grad():
                expected = _unit(towers["image"](torch.from_numpy(batch)))
        found["image_cosine_min"] = float((got * expected).sum(axis=1).min())
    worst = min(found.values())
    if not worst >= MIN_COSINE:  # also catches NaN
        raise ModelLoadError(f"ONNX embeddings differ from the torch model's (lowest cosine {worst:.6f})")
    return found


def check_images(size: int) -> list[Any]:
    """Synthetic RGB images around `size`: portrait, landscape, exactly the size, smaller, odd sides."""
    from PIL import Image

    rng = np.random.default_rng(0)
    shapes = [(size, size), (3 * size + 1, 2 * size - 3), (size - 7, 4 * size),
              (size // 2 + 1, size // 3 + 2), (5 * size, 5 * size + 2)]
    pictures = []
    for width, height in shapes:
        y, x = np.mgrid[0:height, 0:width]
        ramps = [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256]
        smooth = np.stack(ramps, axis=-1)
        noise = rng.integers(0, 64, (height, width, 3))
        pictures.append(Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8), "RGB"))
    return pictures


def _unit(features: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(features.float(), dim=-1).numpy()


def _export(module: Any, example: Any, path: Path, name: str, axes: dict[int, str]) -> None:
    import warnings

    with warnings.catch_warnings():  # the tracer's warnings describe code paths we checked (above)
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=[name], output_names=["features"],
            dynamic_axes={name: axes, "features": {0: "batch"}}, opset_version=OPSET, dynamo=False,
        )


def _text_meta(clip: Any) -> dict[str, Any]:
    """What the ported tokenizer needs, after checking the model's tokenizer is the one it ports."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = clip._tokenizer
    if type(tokenizer) is not SimpleTokenizer or tokenizer.reduction_fn is not None:
        raise ModelLoadError(f"tokenizer {type(tokenizer).__name__} is not CLIP's plain BPE tokenizer")
    if len(tokenizer.encoder) != 49408:
        raise ModelLoadError("the tokenizer has extra special tokens")
    clean = _CLEAN_NAMES.get(getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise ModelLoadError(f"unknown tokenizer cleaning {tokenizer.clean_fn!r}")
    model = clip._model
    pool = clip._text_pool
    if pool is None:
        raise ModelLoadError("the text tower is not a causal one pooled at its end token")
    return {"context_length": int(tokenizer.context_length), "clean": clean, "pool": pool,
            "eos_id": getattr(model, "text_eos_id", None)}


def _preprocess_spec(clip: Any) -> ResizeCrop:
    """open_clip's eval geometry (clip.pixel_transform, torchvision) as a ResizeCrop."""
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    size = resize_to = crop = None
    interpolation = ""
    for step in clip.pixel_transform.transforms:
        if isinstance(step, Resize) and not interpolation and step.max_size is None:
            modes = {InterpolationMode.BICUBIC: "bicubic", InterpolationMode.BILINEAR: "bilinear"}
            if step.interpolation not in modes:
                raise ModelLoadError(f"unsupported resize interpolation {step.interpolation}")
            interpolation = modes[step.interpolation]
            if isinstance(step.size, int) or len(step.size) == 1:
                size = int(step.size if isinstance(step.size, int) else step.size[0])
            else:
                resize_to = (int(step.size[0]), int(step.size[1]))
        elif isinstance(step, CenterCrop) and crop is None:
            crop = (int(step.size[0]), int(step.size[1]))
        elif type(step).__name__ != "MaybeConvertMode" and getattr(step, "__name__", "") != "_convert_to_rgb":
            raise ModelLoadError(f"unsupported preprocessing step {step!r}")
    if not interpolation:
        raise ModelLoadError("the preprocessing has no resize")
    return ResizeCrop(size, resize_to, crop, interpolation)


def _traceable(module: Any) -> Any:
    """A CPU copy of `module` with every nn.MultiheadAttention rebuilt as LinearSelfAttention."""
    from indexer.models.int8 import LinearSelfAttention, _replaceable

    module = copy.deepcopy(module).cpu()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _replaceable(child):
                setattr(parent, name, LinearSelfAttention.from_mha(child))
    return module.eval()


class _TextTower(torch.nn.Module):
    """ClipModel.text_features over exactly the tokens given, as a module to trace."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        model = clip._model
        self.token_embedding = _traceable(model.token_embedding)
        self.positional_embedding = torch.nn.Parameter(_cpu(model.positional_embedding))
        self.transformer = _traceable(model.transformer)
        self.ln_final = _traceable(model.ln_final)
        projection = model.text_projection
        if isinstance(projection, torch.nn.Module):
            self.text_projection = _traceable(projection)
        else:
            self.text_projection = None if projection is None else torch.nn.Parameter(_cpu(projection))
        self.register_buffer("attn_mask", _cpu(model.attn_mask), persistent=False)
        self.text_eos_id = getattr(model, "text_eos_id", None)
        self._features = clip.text_features

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._features(tokens, self)


class _ImageTower(torch.nn.Module):
    """ClipModel.encode_pixels before normalising: uint8 (N, H, W, 3) in, features out."""

    def __init__(self, clip: Any) -> None:
        super().__init__()
        self.visual = _traceable(clip._model.visual)
        self.register_buffer("mean", _cpu(clip._mean), persistent=False)
        self.register_buffer("std", _cpu(clip._std), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.permute(0, 3, 1, 2).float().div(255.0)
        return self.visual((batch - self.mean) / self.std)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().clone()
