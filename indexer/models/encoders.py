"""Query-time encoders: text and images to normalised embeddings, for the engine and the API.

Two kinds satisfy `QueryEncoder`: `indexer.models.loading.ClipModel` (open_clip on torch, also the indexer's
encoder) and `OnnxEncoder` here, which runs a model's towers exported by `indexer.models.onnx_export` with
onnxruntime and needs neither torch nor open_clip: its tokenizer and its image preprocessing are ports
of open_clip's on numpy and PIL, checked against the originals when the export is made. A process that
only answers queries (the API server, `clipsearch search`) then never imports torch.

An export lives in `<CLIPSEARCH_HOME>/models/<key>/` (`export_dir`), keyed by the model's identity:
text.onnx, image.onnx (absent for int8 collections, whose image queries stay on torch's int8 encoder),
the BPE vocabulary and meta.json (tokenizer, preprocessing, logit scale, what the self-check measured).
This module imports no other project module but errors and schema (indexer.models.loading imports it).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import logging
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.errors import ModelLoadError
from indexer.schema import ModelIdentity

log = logging.getLogger(__name__)

FORMAT = 1  # bumped when an export's files or meaning change: older exports are then made again
META = "meta.json"
FAILED = "failed.json"  # an export that could not be made: not retried until open_clip or torch change
VOCAB = "bpe_simple_vocab_16e6.txt.gz"


@runtime_checkable
class QueryEncoder(Protocol):
    """What answering queries needs of a model (ClipModel and OnnxEncoder both are one)."""

    identity: ModelIdentity
    logit_scale: float
    pixel_transform: Callable[[Any], Any]  # decoded PIL image -> model-sized PIL image

    @property
    def draft_size(self) -> int: ...

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, images: list[Any]) -> np.ndarray: ...


def export_key(identity: ModelIdentity) -> str:
    """A directory name for the export of `identity`: the architecture for people, a digest for the rest
    (weights, dim, precision: int8 exports carry the text tower only)."""
    fields = [FORMAT, identity.architecture, identity.weights, identity.dim, identity.precision]
    digest = hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity.architecture)[:48]
    return f"{name}-{digest}"


def export_dir(home: Path, identity: ModelIdentity) -> Path:
    return Path(home) / "models" / export_key(identity)


def exportable(identity: ModelIdentity) -> bool:
    """Random weights (no checkpoint, no tag) are drawn anew at each load: nothing to cache."""
    return bool(identity.weights)


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as torch.nn.functional.normalize (eps 1e-12)."""
    features = features.astype(np.float32, copy=False)
    norms = np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    return (features / norms).astype(np.float32, copy=False)


# --- the tokenizer ----------------------------------------------------------------------------------
# Ported from open_clip's SimpleTokenizer (open_clip/tokenizer.py, MIT License, Copyright (c) 2012-2021
# Gabriel Ilharco et al.), itself from OpenAI's CLIP (MIT License, Copyright (c) 2021 OpenAI), without
# its torch import: same vocabulary file, same cleaning, same BPE, so the same token ids.


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map CLIP's BPE works on."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _basic_clean(text: str) -> str:
    # ftfy leaves printable ASCII without entities as it is; skipping it then saves its import (~0.2 s)
    # on a cold `clipsearch search`.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _canonicalize(text: str) -> str:
    import string

    text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split()).strip()


_CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": lambda text: " ".join(_basic_clean(text).split()).strip().lower(),
    "whitespace": lambda text: " ".join(_basic_clean(text).split()).strip(),
    "canonicalize": lambda text: _canonicalize(_basic_clean(text)),
}


class BpeTokenizer:
    """CLIP's byte-level BPE: texts -> int64 token arrays (start, tokens, end, zero padding)."""

    def __init__(self, vocab_path: Path, context_length: int = 77, clean: str = "lower") -> None:
        import regex

        if clean not in _CLEANERS:
            raise ModelLoadError(f"unknown tokenizer cleaning {clean!r} in the ONNX export")
        merges = gzip.open(vocab_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        pairs = [tuple(merge.split()) for merge in merges]
        vocab = list(_bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(pair) for pair in pairs]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {pair: i for i, pair in enumerate(pairs)}
        self.cache = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}
        self.pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot, self.eot = self.encoder["<start_of_text>"], self.encoder["<end_of_text>"]
        self.context_length = context_length
        self.clean = _CLEANERS[clean]

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        byte_map = _bytes_to_unicode()
        ids: list[int] = []
        for token in self.pattern.findall(self.clean(text)):
            token = "".join(byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(token).split(" "))
        return ids

    def __call__(self, texts: list[str]) -> np.ndarray:
        """(len(texts), context_length) int64; a text too long is cut, keeping its end token."""
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot][: self.context_length]
            tokens[-1] = self.eot
            result[row, : len(tokens)] = tokens
        return result


# --- image preprocessing ------------------------------------------------------------------------------

_RESAMPLE = {"bicubic": 3, "bilinear": 2}  # PIL.Image.Resampling values, without importing PIL here


class ResizeCrop:
    """open_clip's eval geometry on PIL images, as torchvision does it: resize (shortest side to `size`,
    or to exactly `resize_to`), centre crop, RGB. Picklable, for decode worker processes."""

    def __init__(self, size: int | None, resize_to: tuple[int, int] | None, crop: tuple[int, int] | None,
                 interpolation: str) -> None:
        self.size, self.resize_to, self.crop, self.interpolation = size, resize_to, crop, interpolation
        self.resample = _RESAMPLE[interpolation]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ResizeCrop:
        pair = (lambda v: tuple(v) if v is not None else None)  # noqa: E731 - JSON lists back to tuples
        return cls(spec["size"], pair(spec["resize_to"]), pair(spec["crop"]), spec["interpolation"])

    def to_spec(self) -> dict[str, Any]:
        return {"size": self.size, "resize_to": self.resize_to, "crop": self.crop,
                "interpolation": self.interpolation}

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        if self.resize_to is not None:
            new_h, new_w = self.resize_to
        else:  # torchvision's _compute_resized_output_size for one size: the long side truncated
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), self.resample)
        if self.crop is not None:
            crop_h, crop_w = self.crop
            top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return image.convert("RGB")


# --- the encoder ---------------------------------------------------------------------------------------


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The export's description, or None when there is no complete export of this format there."""
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == FORMAT else None


class OnnxEncoder:
    """A model's exported towers under onnxruntime. Sessions are made on first use (a text query never
    loads the image tower). Thread-safe: onnxruntime sessions may run concurrently."""

    def __init__(self, directory: Path, identity: ModelIdentity, threads: int = 1,
                 image_fallback: Callable[[], QueryEncoder] | None = None) -> None:
        """`threads`: each tower's intra-op threads. onnxruntime's pool, its threads sleeping when idle,
        gains from a second thread even when the other cores are busy, unlike torch's OpenMP
        (models.query_threads): ViT-B-32 text tower, 12 tokens, this 2-core machine, p50 on 1 / 2
        threads: 14-16 / 10-11 ms idle, 14 / 12-13 ms with one core busy, 20-27 / 15-23 ms with both;
        image tower: 103 / 76 ms loaded. `image_fallback`: the encoder that answers image queries when
        the export has no image tower (an int8 collection's: its images were embedded by torch's int8
        encoder)."""
        meta = read_meta(directory)
        if meta is None:
            raise ModelLoadError(f"no ONNX export of {identity.describe()} in {directory}")
        self.directory = directory
        self.identity = identity
        self.meta = meta
        self.threads = threads
        self.logit_scale = float(meta["logit_scale"])
        self.pixel_transform = ResizeCrop.from_spec(meta["preprocess"])
        self._image_fallback = image_fallback if not meta.get("image") else None
        self._sessions: dict[str, Any] = {}
        self._tokenizer: BpeTokenizer | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.identity.dim

    @property
    def draft_size(self) -> int:
        return int(self.meta["draft_size"])

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    def _session(self, tower: str) -> Any:
        with self._lock:
            if tower not in self._sessions:
                self._sessions[tower] = make_session(self.directory / f"{tower}.onnx", self.threads)
            return self._sessions[tower]

    @property
    def tokenizer(self) -> BpeTokenizer:
        with self._lock:
            if self._tokenizer is None:
                text = self.meta["text"]
                self._tokenizer = BpeTokenizer(self.directory / VOCAB, text["context_length"], text["clean"])
            return self._tokenizer

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts)
        session = self._session("text")
        # The tower is causal and pools at the end token (indexer.models.loading.causal_text_pool).
        return encode_by_length(end_positions(tokens, self.meta["text"]), lambda rows, length: normalise(
            session.run(None, {"tokens": tokens[rows, :length]})[0]))

    def encode_images(self, images: list[Any]) -> np.ndarray:
        if self._image_fallback is not None:
            return self._image_fallback().encode_images(images)
        pixels = np.stack([np.asarray(self.pixel_transform(image), dtype=np.uint8) for image in images])
        return self.encode_pixels(pixels)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch shaped (N, H, W, 3), as ClipModel.encode_pixels."""
        return normalise(self._session("image").run(None, {"pixels": pixels})[0])


# Rows of a text batch are encoded in groups of this many, by length: a batch is otherwise computed to
# its longest row's end. ImageNet labels x 8 templates (end token at 9 on average, at most 20), ViT-B-32
# on torch, 2 cores: 118-120 prompts/s in batches of 512 as they came, 204-212/s in groups of 64 (32:
# 192-206, 128: 192-198; docs/benchmarks.md, "The label command, timed whole").
TEXT_GROUP = 64


def length_groups(ends: np.ndarray, group: int = TEXT_GROUP) -> list[tuple[np.ndarray, int]]:
    """The rows of a batch whose end tokens are at `ends`, in groups of about `group` of similar
    length (one group for a batch of at most `group`): (row indices, prefix length to compute)."""
    if len(ends) <= group:
        return [(np.arange(len(ends)), int(ends.max()) + 1 if len(ends) else 1)]
    order = np.argsort(ends, kind="stable")
    return [(rows, int(ends[rows].max()) + 1) for rows in np.array_split(order, -(-len(ends) // group))]


def encode_by_length(ends: np.ndarray, encode: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """A causal text tower's embeddings of a batch whose rows end (their pooled token) at `ends`: positions
    after a row's end cannot change its result, so each group of rows (`length_groups`) is encoded by
    `encode(rows, length)` over its first `length` positions only. Rows come back in the order given."""
    groups = length_groups(ends)
    parts = [encode(rows, length) for rows, length in groups]
    if len(parts) == 1:  # one group holds every row, in order
        return parts[0]
    features = np.empty((len(ends), parts[0].shape[1]), dtype=np.float32)
    for (rows, _), part in zip(groups, parts, strict=True):
        features[rows] = part
    return features


def end_positions(tokens: np.ndarray, text_meta: dict[str, Any]) -> np.ndarray:
    """Where each row's pooled end token is ('argmax': the highest id; 'eos': the first eos id)."""
    if text_meta["pool"] == "argmax":
        return tokens.argmax(axis=-1)
    return (tokens == text_meta["eos_id"]).argmax(axis=-1)


def make_session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with `threads` intra-op threads that sleep rather than spin when idle
    (spinning threads would slow the store search that follows each encode, and the neighbours)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
        raise ModelLoadError(
            f"could not load the ONNX export {path}: {exc}; delete {path.parent} to export it again"
        ) from exc
