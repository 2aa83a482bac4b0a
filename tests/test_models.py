"""Naming models: architecture names, config files and checkpoints, and the identity they record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.models.loading import ModelLoadError, ModelMismatchError, check_same_model, load_model
from indexer.models.zero_shot import classify_embeddings, parse_labels
from tests.helpers import TINY_CONFIG


def test_a_config_file_and_checkpoint_load_with_a_full_identity(tiny_model, tiny_checkpoint: Path) -> None:
    identity = tiny_model.identity
    assert identity.architecture == "tiny-clip"
    assert identity.model == str(TINY_CONFIG)
    assert identity.pretrained == str(tiny_checkpoint)
    assert identity.weights.startswith("sha256:") and len(identity.weights) == 7 + 64
    assert identity.dim == 32


def test_embeddings_are_unit_length(tiny_model) -> None:
    from PIL import Image

    images = [Image.new("RGB", (80, 50), colour) for colour in ["red", "green", "blue"]]
    for vectors in (tiny_model.encode_images(images), tiny_model.encode_texts(["a", "a dog", "two cats"])):
        assert vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_other_weights_are_a_different_model(tiny_model, tmp_path: Path) -> None:
    import open_clip
    import torch

    torch.manual_seed(7)
    other_path = tmp_path / "other.pt"
    torch.save(open_clip.create_model("tiny-clip").state_dict(), other_path)
    other = load_model(str(TINY_CONFIG), str(other_path), "cpu")
    with pytest.raises(ModelMismatchError, match="was built with"):
        check_same_model(tiny_model.identity, other.identity, "photos")
    check_same_model(tiny_model.identity, tiny_model.identity, "photos")


def test_unknown_names_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model("ViT-Nonexistent-99", "", "cpu")
    with pytest.raises(ModelLoadError, match="config file not found"):
        load_model(str(tmp_path / "missing.json"), "", "cpu")
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_model(str(TINY_CONFIG), str(tmp_path / "missing.pt"), "cpu")
    with pytest.raises(ModelLoadError, match="neither a checkpoint file nor a pretrained tag"):
        load_model("ViT-B-32", "no-such-tag", "cpu")


def test_unreachable_weights_say_how_to_pass_a_local_checkpoint() -> None:
    with pytest.raises(ModelLoadError, match="--pretrained /path/to"):
        load_model("RN50", "openai", "cpu")  # HF_HUB_OFFLINE=1: the download cannot happen


def test_labels_are_split_trimmed_and_deduplicated() -> None:
    assert parse_labels(" cat, dog,,cat , a red car ") == ["cat", "dog", "a red car"]
    assert parse_labels(" , ") == []


def test_zero_shot_scores_are_probabilities_best_first(tiny_model) -> None:
    from PIL import Image

    images = [Image.new("RGB", (64, 64), "white"), Image.new("RGB", (64, 64), "black")]
    rows = classify_embeddings(tiny_model, tiny_model.encode_images(images), ["cat", "dog", "car", "tree"])
    for row in rows:
        assert sorted(label for label, _ in row) == ["car", "cat", "dog", "tree"]
        scores = [score for _, score in row]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        classify_embeddings(tiny_model, tiny_model.encode_images(images), [])
