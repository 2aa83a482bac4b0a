"""fp32 indexing on onnxruntime: the image tower of the query export (indexer.models.onnx_export), run by the
indexer on the CPU for long runs (indexer.ingest.pipeline.embed_here), with the same embeddings as torch's.
Such a run makes the export before it encodes (the end of the run would make it anyway)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import ModelLoadError

log = logging.getLogger(__name__)

# Below this many images, tracing the tower (~3 s for ViT-B-32 on 2 cores) costs more than it saves.
ONNX_MIN_IMAGES = 256
ONNX_MIN_COSINE = 0.9999


def onnx_image_encoder(
    clip: Any, home: Path | None, probe: np.ndarray
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The fp32 image tower of `clip` (an models.loading.ClipModel on the CPU) under onnxruntime, or None.

    Measured in docs/benchmarks.md: onnxruntime's kernels run ViT-B-32's image tower at 1.4-2x the rate of
    eager torch on this CPU, with the same fp32 arithmetic (cosine >= 0.9999999). The tower is the query
    export's (`models.onnx_export.ensure_export` under `home`, which the index run leaves for torch-free
    queries anyway: made here, before the encoding rather than after it, it serves both), or without a
    home or an exportable model (random weights), the same tower traced in memory. Either way it is
    checked on `probe` (a few model-ready images) against the torch encoder first; any failure or
    disagreement keeps torch, with one warning."""
    try:
        import onnxruntime as ort

        from indexer.limits import usable_cpus

        model = _image_tower(clip, home)
        options = ort.SessionOptions()
        options.intra_op_num_threads = usable_cpus()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decoding needs cores too
        options.log_severity_level = 3
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        def encode(pixels: np.ndarray) -> np.ndarray:
            features = session.run(None, {"pixels": np.ascontiguousarray(pixels, dtype=np.uint8)})[0]
            return (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32, copy=False)

        agreement = float((encode(probe) * clip.encode_pixels(probe, torch_only=True)).sum(axis=1).min())
        if agreement < ONNX_MIN_COSINE:
            raise ModelLoadError(f"onnxruntime's image embeddings agree to cosine {agreement:.6f} only")
        return encode
    except Exception as exc:  # the torch encoder stays: slower, never wrong
        log.warning("indexing with torch's image encoder: its onnxruntime copy failed (%s)", exc)
        return None


def _image_tower(clip: Any, home: Path | None) -> str | bytes:
    """The path of the query export's image tower under `home` (exported now when missing), else the
    tower traced in memory (ONNX bytes)."""
    if home is not None:
        from indexer.models.encoders import read_meta
        from indexer.models.onnx_export import ensure_export

        directory = ensure_export(clip, home)
        if directory is not None and (read_meta(directory) or {}).get("image"):
            return str(directory / "image.onnx")
    return _traced_image_tower(clip)


def _traced_image_tower(clip: Any) -> bytes:
    import io

    import torch

    from indexer.models.onnx_export import OPSET, _ImageTower

    buffer = io.BytesIO()
    size = clip.input_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on code paths the query export checked
        torch.onnx.export(
            _ImageTower(clip).eval(), (torch.zeros((2, size, size, 3), dtype=torch.uint8),), buffer,
            input_names=["pixels"], output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    return buffer.getvalue()
