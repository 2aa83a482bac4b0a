"""Loading open_clip models by name, config file or checkpoint, and encoding images and text with them.

Callers name a model (`load_model("ViT-B-32", "laion2b_s34b_b79k")`); they never assemble one.
The preprocessing is split in two: the geometric part (resize, crop) runs on PIL images in decode
workers and yields uint8 arrays; the arithmetic part (scale to [0, 1], normalise) runs on the
device, so workers ship 4x fewer bytes and the model's device does the float work.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from indexer.durable import file_sha256
from indexer.errors import ModelLoadError, ModelMismatchError, UnknownModel
from indexer.limits import usable_cpus
from indexer.models.batching import BatchingEncoder, QueryBatching
from indexer.models.encoders import QueryEncoder, encode_by_length
from indexer.schema import ModelIdentity
from indexer.settings import Settings

log = logging.getLogger(__name__)

PixelTransform = Callable[[Any], Any]  # PIL image -> PIL image, picklable for worker processes


DRAFT_FACTOR = 2
PRECISIONS = ("fp32", "int8", "bf16")  # int8 and bf16: approximate image encoders (see load_model)


def check_same_model(recorded: ModelIdentity, requested: ModelIdentity, collection: str) -> None:
    if not recorded.same_model(requested):
        raise ModelMismatchError(
            f"collection {collection!r} was built with {recorded.describe()}, not {requested.describe()}; "
            f"use the same --model/--pretrained, or index into another --collection"
        )


def check_same_precision(recorded: ModelIdentity, requested: ModelIdentity, collection: str) -> None:
    """Image vectors of different encoder precisions (fp32, int8, bf16) are never mixed in one collection."""
    if recorded.precision != requested.precision:
        raise ModelMismatchError(
            f"collection {collection!r} holds {recorded.precision} image embeddings, this run would add "
            f"{requested.precision} ones; use --precision {recorded.precision}, or another --collection"
        )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return device


def query_threads() -> int:
    """Torch intra-op threads for a process that answers queries: half the usable CPUs, 1 to 4.

    A query is a batch of one, whose small matmuls gain little from threads (ViT-B-32 text tower,
    ~10 tokens, 2 idle CPUs: p50 40 ms on 1 thread, 30 ms on 2), while an OpenMP region whose thread
    waits for a busy core stalls at every op (the same with both CPUs loaded by other work: 41 ms on
    1 thread, 595 ms on 2), and idle OpenMP workers spin for a while after each region, slowing the
    store search that follows. Half the CPUs leave room for the store, the server and neighbours;
    on a machine that serves nothing else, OMP_NUM_THREADS=<cpus> buys the last 25%.
    """
    return max(1, min(4, usable_cpus() // 2))


def set_torch_threads(threads: int) -> int:
    """Set torch's intra-op threads (never above the usable CPUs), unless OMP_NUM_THREADS is set:
    that explicit choice wins. Returns the thread count in effect."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(threads, usable_cpus())))
    return torch.get_num_threads()


@lru_cache(maxsize=16)
def checkpoint_sha256(path: str) -> str:
    """file_sha256, remembered: a process resolves the same checkpoint again and again."""
    return file_sha256(path)


def _architecture_name(model: str) -> tuple[str, str]:
    """(architecture name for open_clip, model string to record). Registers config files with open_clip."""
    import open_clip

    path = Path(model).expanduser()
    if model.endswith(".json") or path.is_file():
        if not path.is_file():
            raise UnknownModel(f"model config file not found: {model}")
        open_clip.add_model_config(path.resolve())
        if path.stem not in open_clip.list_models():
            raise UnknownModel(
                f"{model} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)"
            )
        return path.stem, str(path.resolve())
    if model not in open_clip.list_models():
        raise UnknownModel(
            f"unknown model {model!r}: give an open_clip architecture name (e.g. ViT-B-32) "
            f"or the path of a model-config JSON"
        )
    return model, model


def _hashing(pretrained: str) -> Future[str] | None:
    """checkpoint_sha256 of a checkpoint file, started on a thread (hashlib and reads release the GIL: it runs
    beside the open_clip import and model build, ~1 s for ViT-B-32's 600 MB); None for anything else."""
    path = Path(pretrained).expanduser() if pretrained else None
    if path is None or not path.is_file():
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
    try:
        return pool.submit(checkpoint_sha256, str(path.resolve()))
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def _weights(
    architecture: str, pretrained: str, digest: Future[str] | None = None
) -> tuple[str | None, str, str]:
    """(value for open_clip, pretrained to record, weights identity)."""
    import open_clip

    if not pretrained or pretrained == "none":
        return None, "", ""
    path = Path(pretrained).expanduser()
    if path.is_file():
        resolved = str(path.resolve())
        return resolved, resolved, "sha256:" + (digest.result() if digest else checkpoint_sha256(resolved))
    if pretrained in open_clip.list_pretrained_tags_by_model(architecture):
        return pretrained, pretrained, pretrained
    if os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
        raise UnknownModel(f"checkpoint file not found: {pretrained}")
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(architecture)) or "none"
    raise UnknownModel(
        f"{pretrained!r} is neither a checkpoint file nor a pretrained tag of {architecture} (tags: {tags})"
    )


def _split_preprocess(preprocess: Any) -> tuple[PixelTransform, tuple[float, ...], tuple[float, ...]]:
    """Split open_clip's eval transform into (PIL-side geometric part, mean, std)."""
    from torchvision.transforms import Compose, Normalize

    steps = list(preprocess.transforms)
    to_tensor_at = next(i for i, t in enumerate(steps) if type(t).__name__ in ("ToTensor", "MaybeToTensor"))
    normalize = next(t for t in steps[to_tensor_at:] if isinstance(t, Normalize))
    return Compose(steps[:to_tensor_at]), tuple(normalize.mean), tuple(normalize.std)


class ClipModel:
    """An open_clip model ready for inference: normalised image and text embeddings, zero-shot scores."""

    def __init__(self, model: Any, preprocess: Any, tokenizer: Any, identity: ModelIdentity, device: str):
        import torch

        self.identity = identity
        self.device = device
        self.preprocess = preprocess
        self.pixel_transform, mean, std = _split_preprocess(preprocess)
        self._model = model.eval()
        self._tokenizer = tokenizer
        self._text_pool = causal_text_pool(self._model)  # None: encode_texts runs model.encode_text
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.logit_scale = float(model.logit_scale.exp().item())
        # The same fp32 image tower on onnxruntime, set by the indexer for long runs (models.onnx_images).
        self.onnx_images: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def input_size(self) -> int:
        """The longest side of the image the model takes (224 for ViT-B-32)."""
        size = getattr(self._model.visual, "image_size", 224)
        return int(max(size)) if isinstance(size, (tuple, list)) else int(size)

    @property
    def draft_size(self) -> int:
        """Decode large JPEGs at a reduced DCT scale that keeps both sides >= this (decode_image's
        draft_size). Indexing and queries use the same value, so an indexed file sent as a query
        becomes the same model input. 2x the input side keeps a model input within 45 dB PSNR and
        embeddings within cosine 0.9999 of a full decode's on real photos (docs/benchmarks.md)."""
        return DRAFT_FACTOR * self.input_size

    def _autocast(self, images: bool = False) -> Any:
        import contextlib

        import torch

        # A bf16 image tower holds bf16 weights already (load_model). Otherwise mixed precision only
        # where it pays (tensor cores); CPU stays fp32 for exact agreement.
        if images and self.identity.precision == "bf16":
            return contextlib.nullcontext()
        if self.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def encode_pixels(self, pixels: np.ndarray | Any, torch_only: bool = False) -> np.ndarray:
        """Embed a uint8 batch shaped (N, H, W, 3) as produced by `pixel_transform`."""
        import torch

        if self.onnx_images is not None and not torch_only and isinstance(pixels, np.ndarray):
            return self.onnx_images(pixels)

        batch = torch.as_tensor(pixels)
        if self.device.startswith("cuda") and batch.device.type == "cpu":  # GPU-decoded batches are there
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        batch = (batch - self._mean) / self._std
        if self.identity.precision == "bf16":
            batch = batch.to(torch.bfloat16)
        with torch.inference_mode(), self._autocast(images=True):
            features = self._model.encode_image(batch)
        return _normalise(features)

    def encode_images(self, images: list[Any]) -> np.ndarray:
        """Embed decoded RGB PIL images."""
        pixels = np.stack([np.asarray(self.pixel_transform(image), dtype=np.uint8) for image in images])
        return self.encode_pixels(pixels)

    def text_features(self, tokens: Any, model: Any = None) -> Any:
        """Unnormalised text features over exactly `tokens` (no truncation), computed with `model`'s
        modules: this model's by default; the ONNX export passes a copy with traceable attention."""
        if self._text_pool is None:
            raise ModelLoadError(f"{self.identity.describe()}: no causal text tower pooled at its end token")
        return text_features(model if model is not None else self._model, tokens, self._text_pool)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        tokens = self._tokenizer(texts).to(self.device)
        with torch.inference_mode(), self._autocast():
            if self._text_pool is None:
                return _normalise(self._model.encode_text(tokens))
            return _encode_text_prefix(self._model, tokens, self._text_pool)


def causal_text_pool(model: Any) -> str | None:
    """The text pooling of a model whose text embedding provably ignores the tokens after the pooled
    one, or None.

    open_clip's CLIP text tower is a causal transformer (position i attends only to positions <= i)
    that pools at the end-of-text token ('argmax': EOT has the highest id; 'eos': the first EOS id).
    Every per-position step (embedding, layer norm, MLP) and every attention row before the EOT sees
    nothing after it, so the padding that fills a short query up to the 77-token context cannot
    change the result: encoding only the prefix up to the last EOT of a batch gives the same
    embedding (to float rounding) for a fraction of the compute. Anything else (custom or HF text
    towers, bidirectional masks, 'last'/'first' pooling) returns None and is encoded in full.
    """
    import torch
    from open_clip.model import CLIP

    if not isinstance(model, CLIP) or type(model).encode_text is not CLIP.encode_text:
        return None
    pool = getattr(model, "text_pool_type", None)
    if pool not in ("argmax", "eos") or (pool == "eos" and getattr(model, "text_eos_id", None) is None):
        return None
    mask = getattr(model, "attn_mask", None)
    length = model.positional_embedding.shape[0]
    if mask is None or tuple(mask.shape) != (length, length):
        return None
    causal = torch.full((length, length), float("-inf"), device=mask.device).triu_(1)
    return pool if torch.equal(mask.float(), causal) else None


def _encode_text_prefix(model: Any, tokens: Any, pool: str) -> np.ndarray:
    """CLIP.encode_text, normalised, each group of rows of similar length over its prefix up to its
    last EOT position (`encode_by_length`); see above."""
    import torch

    eos_id = getattr(model, "text_eos_id", None)
    ends = tokens.argmax(dim=-1) if pool == "argmax" else (tokens == eos_id).int().argmax(dim=-1)

    def encode(rows: np.ndarray, length: int) -> np.ndarray:
        index = torch.as_tensor(rows, dtype=torch.long, device=tokens.device)
        return _normalise(text_features(model, tokens[index, :length], pool))

    return encode_by_length(ends.cpu().numpy(), encode)


def text_features(model: Any, tokens: Any, pool: str) -> Any:
    """CLIP.encode_text (unnormalised) over exactly the tokens given. Also what the ONNX export traces
    (indexer.models.onnx_export), with the sequence length as a dynamic axis."""
    import torch
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, pool, eos_token_id=getattr(model, "text_eos_id", None))
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
    return x


def _normalise(features: Any) -> np.ndarray:
    import torch

    features = torch.nn.functional.normalize(features.float(), dim=-1)
    return features.cpu().numpy().astype(np.float32, copy=False)


def load_model(model: str, pretrained: str, device: str = "auto", precision: str = "fp32") -> ClipModel:
    """Build an open_clip model from an architecture name or config JSON, with a tag or checkpoint.

    precision="int8" gives the approximate CPU fast path (indexer.models.int8): image embeddings within
    cosine ~0.999 of the fp32 ones, several times faster on CPUs with int8 dot-product instructions;
    precision="bf16" holds the image tower in bfloat16 (cosine ~0.9999; several times faster on CPUs
    with AVX512-BF16 or AMX; on GPUs like fp16 autocast); the text tower stays fp32.
    """
    digest = _hashing(pretrained)  # a checkpoint's sha256 (its identity) on a thread, during the imports
    import open_clip

    architecture, model_recorded = _architecture_name(model)
    weights_arg, pretrained_recorded, weights_id = _weights(architecture, pretrained, digest)
    device = resolve_device(device)
    if precision not in PRECISIONS:
        raise ModelLoadError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)} (--precision)")
    if precision == "int8" and device != "cpu":
        raise ModelLoadError(
            "--precision int8 is the approximate fast path for CPUs; on CUDA the default already runs "
            "in fp16 mixed precision: drop --precision, or add --device cpu"
        )
    if weights_arg and not Path(weights_arg).is_file():
        _check_downloadable(architecture, weights_arg)
    try:
        clip, preprocess = _create(architecture, weights_arg, device)
    except (RuntimeError, OSError, ValueError) as exc:
        if weights_arg and not Path(weights_arg).is_file():
            raise ModelLoadError(
                f"could not get weights {pretrained!r} for {architecture}: {exc}. Offline? Download the "
                f"checkpoint elsewhere and pass its path: --pretrained /path/to/open_clip_model.safetensors"
            ) from exc
        raise ModelLoadError(f"could not load {architecture} with {pretrained!r}: {exc}") from exc
    tokenizer = open_clip.get_tokenizer(architecture)
    dim = int(open_clip.get_model_config(architecture)["embed_dim"])
    identity = ModelIdentity(model_recorded, pretrained_recorded, architecture, weights_id, dim, precision)
    if precision == "int8":
        from indexer.models.int8 import quantize_image_tower

        quantize_image_tower(clip)
    elif precision == "bf16":  # the image tower's weights in bf16 (text stays fp32: exact queries).
        import torch  # Held in bf16 rather than cast per call by autocast: 3-4x fp32 here, not ~1.1x.

        clip.visual.to(torch.bfloat16)
    log.info("loaded %s on %s (%s)", identity.describe(), device, precision)
    return ClipModel(clip, preprocess, tokenizer, identity, device)


def _create(architecture: str, weights: str | None, device: str) -> tuple[Any, Any]:
    """open_clip.create_model_and_transforms, with less start-up for a local checkpoint file: the model
    is built without drawing random initial weights (torch.nn.init's functions do nothing while it is
    built: ~150M normal draws for ViT-B-32, seconds on a small CPU) and the checkpoint's tensors are
    assigned to it instead of copied. open_clip's own checkpoint loading runs (key conversions, strict:
    every parameter and persistent buffer must come from the file); non-persistent buffers (the causal
    mask) are computed at construction as usual. Tags and other sources go through open_clip as is."""
    import functools

    import open_clip
    import torch

    if not weights or not Path(weights).is_file() or Path(weights).suffix in (".npz", ".npy"):
        clip, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=weights, device=device
        )
        return clip, preprocess
    with _initialisation_skipped(), _quiet_random_init_warning():
        clip, _, preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=None, device="cpu"
        )
    clip.load_state_dict = functools.partial(torch.nn.Module.load_state_dict, clip, assign=True)
    try:
        open_clip.load_checkpoint(clip, weights, strict=True)
    finally:
        del clip.load_state_dict
    return clip.to(device), preprocess


_INIT_LOCK = threading.Lock()


class _initialisation_skipped:
    """While a model is built, torch.nn.init's in-place initialisers leave tensors as they are."""

    def __enter__(self) -> None:
        from torch.nn import init

        _INIT_LOCK.acquire()
        self._saved = {
            name: getattr(init, name) for name in dir(init)
            if name.endswith("_") and not name.startswith("_") and callable(getattr(init, name))
        }
        for name in self._saved:
            setattr(init, name, _leave)

    def __exit__(self, *exc: object) -> None:
        from torch.nn import init

        for name, function in self._saved.items():
            setattr(init, name, function)
        _INIT_LOCK.release()


def _leave(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


class _quiet_random_init_warning:
    """open_clip warns on the root logger that a model built without weights is random: not here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)


def load_recorded_model(identity: ModelIdentity, device: str = "auto") -> ClipModel:
    """Reload the model a collection was built with, and check it is still the same weights.

    An int8-built collection gets the int8 image encoder on CPU (image queries then embed as its
    images did); elsewhere the fp32 one, whose embeddings agree with those to cosine ~0.999."""
    precision = identity.precision if resolve_device(device) == "cpu" else "fp32"
    loaded = load_model(identity.model, identity.pretrained, device, precision)
    if not loaded.identity.same_model(identity):
        raise ModelMismatchError(
            f"the checkpoint at {identity.pretrained} changed since the collection was indexed "
            f"({loaded.identity.weights} != {identity.weights})"
        )
    return loaded


# Seconds to wait for a model hub before saying it can't be reached: huggingface_hub's own retries
# take ~50 s offline, printing warnings all the while.
HUB_PROBE_TIMEOUT = 3.0


def _check_downloadable(architecture: str, tag: str) -> None:
    """Fail at once, in one line, when a pretrained tag's weights are not cached and their host is
    out of reach (offline, HF_HUB_OFFLINE=1), instead of open_clip's long retry storm."""
    import socket
    from urllib.parse import urlparse

    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, get_pretrained_cfg

    config = get_pretrained_cfg(architecture, tag)
    repo = (config.get("hf_hub") or "").rstrip("/")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
            if isinstance(try_to_load_from_cache(repo, filename), str):
                return  # cached: open_clip loads it without the network
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    else:
        host, offline = urlparse(config.get("url", "")).hostname or "", False
    if not host:
        return
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT).close()
            return
        except OSError:
            pass
    raise ModelLoadError(
        f"weights {tag!r} for {architecture} are not downloaded and {host} cannot be reached"
        f"{' (HF_HUB_OFFLINE is set)' if offline else ''}; download the checkpoint elsewhere and pass "
        f"its path: --pretrained /path/to/open_clip_model.safetensors (or CLIPSEARCH_PRETRAINED)"
    )


class ModelCache:
    """Loaded models shared by identity: collections (and vectors) built with the same model use one
    copy. Thread-safe; a model is loaded once even when several threads ask for it at once.

    `get` gives the torch model (indexing, re-embedding); `query` gives what answers queries: the ONNX
    export of the model under `home` (indexer.models.encoders; made from the torch model on first use when
    missing), or the torch model when there is no `home`, the weights are random, the device is CUDA,
    or the export cannot be made (one warning; the failure is remembered under `home`)."""

    def __init__(self, device: str = "auto", home: Path | None = None,
                 batching: QueryBatching | None = None) -> None:
        """`batching`: how `query` encoders batch concurrent calls (indexer.models.batching); None: each
        call encodes on its own, in the caller's thread."""
        import threading

        self.device = device
        self.home = Path(home) if home is not None else None
        self.batching = batching
        self._models: dict[tuple[str, str, int, str], ClipModel] = {}
        self._encoders: dict[tuple[str, str, int, str], QueryEncoder] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> ModelCache:
        """A cache on the settings' device and home, its query encoders batching as they say."""
        return cls(settings.device, settings.home, QueryBatching.from_settings(settings))

    @staticmethod
    def _key(identity: ModelIdentity) -> tuple[str, str, int, str]:
        return (identity.architecture, identity.weights, identity.dim, identity.precision)

    def add(self, model: ClipModel) -> ClipModel:
        """Offer an already loaded model (tests, a server given one); it serves its identity."""
        with self._lock:
            return self._models.setdefault(self._key(model.identity), model)

    def get(self, identity: ModelIdentity) -> ClipModel:
        """The model recorded as `identity`, loading it on first use; a model offered for the same
        architecture and weights serves any precision (queries may differ from the index run)."""
        with self._lock:
            return self._torch(identity)

    def _torch(self, identity: ModelIdentity) -> ClipModel:
        found = self._models.get(self._key(identity)) or next(
            (m for m in self._models.values() if m.identity.same_model(identity)), None
        )
        if found is None:
            found = self._models[self._key(identity)] = load_recorded_model(identity, self.device)
        return found

    def query(self, identity: ModelIdentity) -> QueryEncoder:
        """The encoder that answers queries on vectors recorded as `identity` (see the class)."""
        with self._lock:
            key = self._key(identity)
            if key not in self._encoders:
                encoder = self._onnx(identity) or self._torch_for_queries(identity)
                if self.batching is not None:
                    encoder = BatchingEncoder(encoder, self.batching)
                self._encoders[key] = encoder
            return self._encoders[key]

    def _onnx(self, identity: ModelIdentity) -> QueryEncoder | None:
        from indexer.models.encoders import OnnxEncoder, export_dir, exportable, read_meta

        if self.home is None or self.device not in ("auto", "cpu") or not exportable(identity):
            return None
        directory = export_dir(self.home, identity)
        if read_meta(directory) is None:
            try:
                from indexer.models.onnx_export import ensure_export
            except ImportError as exc:  # a query-only install (no clipsearch[index]) cannot export
                raise ModelLoadError(
                    f"{identity.describe()} has no ONNX export in {directory}, and {exc.name} is missing "
                    f"to make one: run `clipsearch index` with clipsearch[index] installed and the same "
                    f"CLIPSEARCH_HOME (the index run exports it), or install clipsearch[index] here"
                ) from exc
            if ensure_export(self._torch(identity), self.home) is None:
                return None
        fallback = (lambda: self.get(identity)) if identity.precision != "fp32" else None
        return OnnxEncoder(directory, identity, min(4, usable_cpus()), image_fallback=fallback)

    def _torch_for_queries(self, identity: ModelIdentity) -> ClipModel:
        model = self._torch(identity)
        set_torch_threads(query_threads())  # process-wide: this process answers queries
        return model

    def loaded(self) -> list[ModelIdentity]:
        with self._lock:
            return [model.identity for model in self._models.values()]
