"""Zero-shot classification: labels become text embeddings through a prompt ensemble."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from indexer.models.encoders import QueryEncoder

# A small ensemble in the spirit of CLIP's ImageNet prompts: averaging several phrasings
# makes a label's embedding less sensitive to any one wording.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a low resolution photo of a {}.",
    "a cropped photo of a {}.",
    "a rendering of a {}.",
    "a photo of one {}.",
)


def parse_labels(text: str) -> list[str]:
    """Split "cat, dog,car" into unique, non-empty labels, keeping their order."""
    labels = [label.strip() for label in text.split(",")]
    return list(dict.fromkeys(label for label in labels if label))


TextEncode = Callable[[list[str]], np.ndarray]


def label_embeddings(model: QueryEncoder, labels: list[str], encode: TextEncode | None = None) -> np.ndarray:
    """One normalised embedding per label: the mean of its prompt embeddings, renormalised. `encode`:
    what embeds the prompts (a cache of them, say); the model's text encoder by default."""
    prompts = [template.format(label) for label in labels for template in PROMPT_TEMPLATES]
    per_prompt = (encode or model.encode_texts)(prompts).reshape(len(labels), len(PROMPT_TEMPLATES), -1)
    mean = per_prompt.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def classify_embeddings(
    model: QueryEncoder, image_embeddings: np.ndarray, labels: list[str], encode: TextEncode | None = None
) -> list[list[tuple[str, float]]]:
    """For each image, (label, probability) pairs best first; probabilities sum to 1."""
    if not labels:
        raise ValueError("at least one label is needed")
    logits = model.logit_scale * image_embeddings @ label_embeddings(model, labels, encode).T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return [
        sorted(zip(labels, map(float, row), strict=True), key=lambda pair: pair[1], reverse=True)
        for row in probs
    ]
