"""ClipModel.encode_texts encodes only the tokens up to the last end-of-text token of a batch (see
indexer.models.loading.causal_text_pool); it must give what open_clip's own encode_text gives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from indexer.models.encoders import TEXT_GROUP, length_groups
from indexer.models.loading import ClipModel, ModelIdentity, _normalise, causal_text_pool

QUERIES = [
    "",
    "dog",
    "a photo of a red car parked next to a tree",
    "Ünïcödé, punctuation!? and   spaces; two sentences. Here is the second one.",
    " ".join(f"word{i}" for i in range(120)),  # longer than the context: truncated to all 77 tokens
]


def _reference(model: ClipModel, texts: list[str]) -> np.ndarray:
    tokens = model._tokenizer(texts)
    with torch.inference_mode():
        return _normalise(model._model.encode_text(tokens))


def _check_agrees(model: ClipModel) -> None:
    assert model._text_pool is not None, "the prefix path is not used: this test would prove nothing"
    for text in QUERIES:  # one at a time: each its own prefix length, 77 for the long one
        np.testing.assert_allclose(model.encode_texts([text]), _reference(model, [text]), atol=1e-5, rtol=0)
    # A batch: the prefix is as long as its longest member; the others pool at their own EOT.
    np.testing.assert_allclose(model.encode_texts(QUERIES), _reference(model, QUERIES), atol=1e-5, rtol=0)
    np.testing.assert_allclose(model.encode_texts(QUERIES[1:3]), _reference(model, QUERIES[1:3]), atol=1e-5)
    # More rows than a length group (label prompts): encoded in groups of similar length, each to its own
    # last EOT, and answered in the order given.
    many = [f"a photo of {'a big ' * (i % 11)}{QUERIES[i % 4]}" for i in range(2 * TEXT_GROUP + 7)]
    assert len(length_groups(np.array([len(m) for m in many]))) == 3
    np.testing.assert_allclose(model.encode_texts(many), _reference(model, many), atol=1e-5, rtol=0)


def test_prefix_encoding_equals_encode_text_on_the_tiny_model(tiny_model: ClipModel) -> None:
    _check_agrees(tiny_model)


@pytest.fixture(scope="module")
def vit_b_32() -> ClipModel:
    import open_clip

    torch.manual_seed(0)
    clip, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    identity = ModelIdentity("ViT-B-32", "", "ViT-B-32", "", 512)
    return ClipModel(clip, preprocess, open_clip.get_tokenizer("ViT-B-32"), identity, "cpu")


@pytest.mark.slow  # a full-size ViT-B-32: about a minute on 2 cores; the tiny model's twin stays fast
def test_prefix_encoding_equals_encode_text_on_vit_b_32(vit_b_32: ClipModel) -> None:
    _check_agrees(vit_b_32)


def test_the_long_query_really_uses_the_whole_context(vit_b_32: ClipModel) -> None:
    tokens = vit_b_32._tokenizer([QUERIES[-1]])
    assert int(tokens.argmax(dim=-1)) == tokens.shape[1] - 1


def _without_causal_mask(model: Any) -> None:
    model.attn_mask = None


def _bidirectional_mask(model: Any) -> None:
    model.attn_mask = torch.zeros_like(model.attn_mask)


def _last_token_pooling(model: Any) -> None:
    model.text_pool_type = "last"


@pytest.mark.parametrize("change", [_without_causal_mask, _bidirectional_mask, _last_token_pooling])
def test_models_where_padding_may_matter_fall_back_to_encode_text(
    tiny_model: ClipModel, change: Any
) -> None:
    import copy

    model = copy.deepcopy(tiny_model._model)
    change(model)
    assert causal_text_pool(model) is None
    assert causal_text_pool(tiny_model._model) == "argmax"
    fallback = ClipModel(model, tiny_model.preprocess, tiny_model._tokenizer, tiny_model.identity, "cpu")
    np.testing.assert_allclose(fallback.encode_texts(QUERIES), _reference(fallback, QUERIES), atol=1e-6)
